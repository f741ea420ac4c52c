//! Worker threads, listeners, connection tasks, shutdown.
