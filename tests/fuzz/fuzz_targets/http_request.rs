//! Fuzzes `parse_head` with the default limits and, for chunked requests, the `ChunkedDecoder`
//! (whole and byte by byte), through pipelined requests. The properties live in
//! `smithers_gateway::http::request::check_parse_properties`, shared with the committed-seed
//! replay (`cargo test fuzz_seeds`), so both check the same thing.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    smithers_gateway::http::request::check_parse_properties(data);
});
