//! The workflow engine: workflow definitions (`workflow`), frame rendering (`render`), and the
//! engine thread that advances runs (added by the engine work).

pub mod core;
pub mod process;
pub mod render;
pub mod workflow;
