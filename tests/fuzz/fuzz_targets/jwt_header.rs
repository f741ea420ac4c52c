//! Fuzzes JWT verification: the input is a token (lossy UTF-8) sent to JWT authenticators with a
//! fixed config. The properties — never a panic; never `Ok` under a random secret; `Ok` under a
//! known secret only when the token independently verifies — live in
//! `smithers_gateway::auth::jwt::check_fuzz_properties`, shared with the committed-seed replay
//! (`cargo test fuzz_seeds`), so both check the same thing.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    smithers_gateway::auth::jwt::check_fuzz_properties(data);
});
