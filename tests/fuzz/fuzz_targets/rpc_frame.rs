//! Fuzzes RPC frame parsing (simd-json, the protocol's bounds, method-name and id rules) on both
//! transports. The properties live in `smithers_gateway::rpc::frame::check_parse_properties`,
//! shared with the committed-seed replay (`cargo test fuzz_seeds`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    smithers_gateway::rpc::frame::check_parse_properties(data);
});
