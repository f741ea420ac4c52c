//! Typed reads and writes over a rusqlite transaction (filled by the storage work).
