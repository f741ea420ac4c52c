//! Criterion benchmark.
fn main() {}
