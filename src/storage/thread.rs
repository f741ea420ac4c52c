//! The storage thread: owns the only rusqlite Connection (filled by the storage work).

use super::{StorageError, StorageHandle, StorageOptions};

/// Opens the store and starts the storage thread.
pub fn open(
    options: StorageOptions,
) -> Result<(StorageHandle, std::thread::JoinHandle<()>), StorageError> {
    Err(StorageError::Unavailable(format!(
        "storage not built yet: {}",
        options.path.display()
    )))
}
