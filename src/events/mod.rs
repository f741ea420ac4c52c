//! Live events: the hub that takes broadcasts from the engine and hands them to the workers.

pub mod hub;
