//! The storage thread: owns the only rusqlite Connection (filled by the storage work).
