//! Structured logging set-up.
