//! The `smithers-gateway` binary: parse flags and config, start the server. Nothing else.
fn main() {}
