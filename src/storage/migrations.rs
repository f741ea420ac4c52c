//! Versioned, embedded schema migrations run at start (filled by the storage work).
