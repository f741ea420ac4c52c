//! Fuzz target for the server-side message decoder `ws::codec::Decoder`.
//!
//! Owns the decoder's streaming properties: it never panics; `consumed` never exceeds the input it
//! was given; the partial message never exceeds the 64 KiB limit; feeding stops at the first error
//! (the connection is closed then). The first input byte picks the read size (0 = all at once), so
//! split headers, split payloads and split code points are all exercised. It must never depend on
//! anything outside the input. The same checks run on stable over the committed seeds
//! (`cargo test --lib fuzz_seeds_ws`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use smithers_gateway::ws::codec::Decoder;

const MESSAGE_BYTES_MAX: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, stream)) = data.split_first() else {
        return;
    };
    let piece = if selector == 0 {
        stream.len().max(1)
    } else {
        usize::from(selector)
    };
    let mut decoder = Decoder::new(MESSAGE_BYTES_MAX);
    for chunk in stream.chunks(piece) {
        let mut offset = 0;
        loop {
            let rest = &chunk[offset..];
            let Ok((consumed, message)) = decoder.decode(rest) else {
                // Decoding stops on the first error.
                return;
            };
            assert!(consumed <= rest.len(), "consumed more than the input");
            assert!(
                decoder.buffered_bytes() <= MESSAGE_BYTES_MAX,
                "partial message above the limit"
            );
            offset += consumed;
            if message.is_none() || consumed == 0 {
                break;
            }
        }
    }
});
