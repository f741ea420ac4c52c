//! Fuzzes cron expressions: parse, then next-fire from fixed instants. The properties — never a
//! panic, never an unbounded search, a next fire strictly later and on a whole second — live in
//! `smithers_gateway::cron::schedule::check_fuzz_properties`, shared with the committed-seed
//! replay (`cargo test fuzz_seeds`), so both check the same thing.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    smithers_gateway::cron::schedule::check_fuzz_properties(data);
});
