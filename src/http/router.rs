//! The reference's route table, evaluated in its order (PROTOCOL.md §2).
