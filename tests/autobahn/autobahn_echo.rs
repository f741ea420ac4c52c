//! Echo harness for Autobahn on the production codec and worker code.
fn main() {}
