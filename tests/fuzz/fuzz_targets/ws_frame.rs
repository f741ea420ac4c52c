//! Fuzz target for `ws::frame::FrameHeader::parse`.
//!
//! Owns the header properties only: parsing never panics; an accepted header re-formats to exactly
//! the bytes it was read from (the parser accepts only minimal length encodings); `Ok(None)` only
//! when the input is shorter than the header its first two bytes announce. It must never test the
//! codec's rules. The same checks run on stable over the committed seeds
//! (`cargo test --lib fuzz_seeds_ws`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use smithers_gateway::ws::frame::FrameHeader;

/// The header length announced by the second header byte: fixed part, extended length, key.
fn announced_header_len(second: u8) -> usize {
    let extended = match second & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    2 + extended + mask
}

fuzz_target!(|data: &[u8]| {
    match FrameHeader::parse(data) {
        Ok(Some((header, consumed))) => {
            assert!(consumed <= data.len());
            let mut out = [0u8; 14];
            let written = header.format(&mut out);
            assert_eq!(
                &out[..written],
                &data[..consumed],
                "format must reproduce the input"
            );
        }
        Ok(None) => {
            if let [_, second, ..] = *data {
                assert!(
                    data.len() < announced_header_len(second),
                    "complete header reported as incomplete"
                );
            }
        }
        Err(_) => {}
    }
});
