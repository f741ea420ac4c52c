//! RFC 6455 §5.2 frame headers: parse, format, and (un)masking. No IO and no allocation.
//!
//! This module owns the byte layout of one frame header and the XOR masking of payload bytes. It
//! must never allocate, never perform IO, never panic on any input, and never judge whether a
//! frame is acceptable in context (reserved bits, reserved opcodes, missing masks and control
//! frame rules are the codec's business): it only refuses headers that cannot be read as RFC 6455
//! headers at all.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

/// Frame opcodes (RFC 6455 §5.2). Reserved values are kept as raw numbers by the parser and refused
/// by the codec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    /// Maps a raw 4-bit opcode to a defined one; reserved values (0x3-0x7, 0xB-0xF) give `None`.
    ///
    /// > RFC 6455 §5.2: %x3-7 are reserved for further non-control frames;
    /// > %xB-F are reserved for further control frames
    pub fn from_u8(value: u8) -> Option<OpCode> {
        match value {
            0x0 => Some(OpCode::Continuation),
            0x1 => Some(OpCode::Text),
            0x2 => Some(OpCode::Binary),
            0x8 => Some(OpCode::Close),
            0x9 => Some(OpCode::Ping),
            0xA => Some(OpCode::Pong),
            _ => None,
        }
    }

    /// The 4-bit wire value of this opcode.
    pub fn as_u8(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    /// True for Close, Ping and Pong.
    ///
    /// > RFC 6455 §5.5: Control frames are identified by opcodes where the most significant bit
    /// > of the opcode is 1.
    pub fn is_control(self) -> bool {
        self.as_u8() & 0x8 != 0
    }
}

/// A parsed frame header. `opcode` is the raw 4-bit value so that reserved opcodes reach the codec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    /// RSV1..RSV3 as the low three bits.
    pub rsv: u8,
    pub opcode: u8,
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The 64-bit length had its most significant bit set (RFC 6455 §5.2).
    #[error("64-bit payload length with the high bit set")]
    LengthHighBit,
    /// A length was encoded in a longer form than needed.
    #[error("payload length not minimally encoded")]
    NonMinimalLength,
}

/// Bits of the first header byte.
const FIN_BIT: u8 = 0x80;
const RSV_SHIFT: u8 = 4;
const RSV_BITS: u8 = 0x07;
const OPCODE_BITS: u8 = 0x0F;
/// Bits of the second header byte.
const MASK_BIT: u8 = 0x80;
const LENGTH7_BITS: u8 = 0x7F;
/// The 7-bit length values that announce a 16-bit or a 64-bit extended length.
const LENGTH7_MEANS_16_BIT: u8 = 126;
const LENGTH7_MEANS_64_BIT: u8 = 127;
/// The largest payload length that fits the 7-bit field directly.
const LENGTH7_MAX: u64 = 125;
/// The longest possible header: 2 fixed bytes, 8 length bytes, 4 mask bytes.
pub const HEADER_BYTES_MAX: usize = 14;

impl FrameHeader {
    /// Parses a header from the front of `buf`. `Ok(None)`: more bytes are needed and nothing was
    /// consumed. `Ok(Some((header, n)))`: the header took `n` bytes.
    ///
    /// Length errors are reported as soon as the length bytes are present, even if the masking key
    /// has not arrived yet, so a bad header is refused without waiting for more input.
    pub fn parse(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, FrameError> {
        let (first_byte, second_byte) = match buf {
            [first, second, ..] => (*first, *second),
            _ => return Ok(None),
        };
        let after_fixed = buf.get(2..).unwrap_or_default();

        let length7 = second_byte & LENGTH7_BITS;
        // > RFC 6455 §5.2: Payload length: 7 bits, 7+16 bits, or 7+64 bits. [...] If 126, the
        // > following 2 bytes interpreted as a 16-bit unsigned integer are the payload length. If
        // > 127, the following 8 bytes interpreted as a 64-bit unsigned integer (the most
        // > significant bit MUST be 0) are the payload length. [...] the minimal number of bytes
        // > MUST be used to encode the length
        let (payload_len, extended_len_bytes) = match length7 {
            LENGTH7_MEANS_16_BIT => {
                let Some(&[high, low]) = after_fixed.first_chunk::<2>() else {
                    return Ok(None);
                };
                let value = u64::from(u16::from_be_bytes([high, low]));
                if value <= LENGTH7_MAX {
                    return Err(FrameError::NonMinimalLength);
                }
                (value, 2usize)
            }
            LENGTH7_MEANS_64_BIT => {
                let Some(bytes) = after_fixed.first_chunk::<8>() else {
                    return Ok(None);
                };
                let value = u64::from_be_bytes(*bytes);
                if value >> 63 != 0 {
                    return Err(FrameError::LengthHighBit);
                }
                if value <= u64::from(u16::MAX) {
                    return Err(FrameError::NonMinimalLength);
                }
                (value, 8usize)
            }
            short => (u64::from(short), 0usize),
        };

        let after_length = after_fixed.get(extended_len_bytes..).unwrap_or_default();
        let masked = second_byte & MASK_BIT != 0;
        let (mask, mask_bytes) = if masked {
            let Some(key) = after_length.first_chunk::<4>() else {
                return Ok(None);
            };
            (Some(*key), 4usize)
        } else {
            (None, 0usize)
        };

        let header = FrameHeader {
            fin: first_byte & FIN_BIT != 0,
            rsv: (first_byte >> RSV_SHIFT) & RSV_BITS,
            opcode: first_byte & OPCODE_BITS,
            mask,
            payload_len,
        };
        Ok(Some((header, 2 + extended_len_bytes + mask_bytes)))
    }

    /// Writes this header into `out` and returns its length (2..=14).
    ///
    /// The length is always written in its minimal form, so a header that `parse` accepted is
    /// reproduced byte for byte. Out-of-range fields are truncated to their wire width (`rsv` to
    /// three bits, `opcode` to four).
    pub fn format(&self, out: &mut [u8; 14]) -> usize {
        let first_byte = if self.fin { FIN_BIT } else { 0 }
            | ((self.rsv & RSV_BITS) << RSV_SHIFT)
            | (self.opcode & OPCODE_BITS);
        let mask_flag = if self.mask.is_some() { MASK_BIT } else { 0 };
        let mut written = write_length(first_byte, mask_flag, self.payload_len, out);
        if let Some(key) = self.mask {
            if let Some(slot) = out.get_mut(written..written + 4) {
                slot.copy_from_slice(&key);
                written += 4;
            }
        }
        written
    }
}

/// Writes the two fixed bytes and the minimal length encoding into the front of `out`; returns the
/// number of bytes written (2, 4 or 10). `out` must hold at least 10 bytes; a shorter one gets
/// only what fits (callers pass fixed-size arrays, so this never happens).
fn write_length(first_byte: u8, mask_flag: u8, payload_len: u64, out: &mut [u8]) -> usize {
    let (scratch, used): ([u8; 10], usize) = if payload_len <= LENGTH7_MAX {
        let length7 = payload_len as u8;
        ([first_byte, mask_flag | length7, 0, 0, 0, 0, 0, 0, 0, 0], 2)
    } else if let Ok(len16) = u16::try_from(payload_len) {
        let [high, low] = len16.to_be_bytes();
        (
            [
                first_byte,
                mask_flag | LENGTH7_MEANS_16_BIT,
                high,
                low,
                0,
                0,
                0,
                0,
                0,
                0,
            ],
            4,
        )
    } else {
        let [b0, b1, b2, b3, b4, b5, b6, b7] = payload_len.to_be_bytes();
        (
            [
                first_byte,
                mask_flag | LENGTH7_MEANS_64_BIT,
                b0,
                b1,
                b2,
                b3,
                b4,
                b5,
                b6,
                b7,
            ],
            10,
        )
    };
    let fitting = used.min(out.len());
    if let (Some(target), Some(source)) = (out.get_mut(..fitting), scratch.get(..fitting)) {
        target.copy_from_slice(source);
    }
    fitting
}

/// The header of an unmasked server frame with FIN set, written into `out`; returns its length
/// (2, 4 or 10 bytes).
///
/// > RFC 6455 §5.1: A server MUST NOT mask any frames that it sends to the client.
pub fn server_head(opcode: OpCode, payload_len: usize, out: &mut [u8; 10]) -> usize {
    write_length(FIN_BIT | opcode.as_u8(), 0, payload_len as u64, out)
}

/// XORs `buf` with `mask`, where `buf[0]` is byte `offset` of the payload (so a payload may be
/// unmasked in pieces as it arrives).
///
/// > RFC 6455 §5.3: Octet i of the transformed data ("transformed-octet-i") is the XOR of octet i
/// > of the original data ("original-octet-i") with octet at index i modulo 4 of the masking key
/// > ("masking-key-octet-j")
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4], offset: u64) {
    // Rotate the key so that its first byte lines up with `buf[0]`.
    let mut key = mask;
    key.rotate_left((offset % 4) as usize);
    let [k0, k1, k2, k3] = key;
    // Eight bytes at a time with one XOR; 8 is a multiple of 4, so the key stays aligned for the
    // tail as well.
    let wide_key = u64::from_ne_bytes([k0, k1, k2, k3, k0, k1, k2, k3]);
    let (wide_chunks, tail) = buf.as_chunks_mut::<8>();
    for chunk in wide_chunks {
        *chunk = (u64::from_ne_bytes(*chunk) ^ wide_key).to_ne_bytes();
    }
    for (byte, key_byte) in tail.iter_mut().zip(key.iter().cycle()) {
        *byte ^= key_byte;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn round_trip(header: FrameHeader) -> Vec<u8> {
        let mut out = [0u8; 14];
        let n = header.format(&mut out);
        let bytes = out[..n].to_vec();
        assert_eq!(
            FrameHeader::parse(&bytes),
            Ok(Some((header, n))),
            "{header:?}"
        );
        // Every strict prefix is incomplete, never an error and never a header.
        for cut in 0..n {
            assert_eq!(
                FrameHeader::parse(&bytes[..cut]),
                Ok(None),
                "{header:?} cut {cut}"
            );
        }
        bytes
    }

    #[test]
    fn format_parse_round_trip_for_boundary_lengths() {
        let cases: [(u64, usize); 6] = [
            (0, 2),
            (125, 2),
            (126, 4),
            (65535, 4),
            (65536, 10),
            (1 << 32, 10),
        ];
        for (payload_len, unmasked_len) in cases {
            for mask in [None, Some([1, 2, 3, 4])] {
                for (fin, rsv, opcode) in [(true, 0, 1), (false, 5, 0), (true, 7, 0xF)] {
                    let header = FrameHeader {
                        fin,
                        rsv,
                        opcode,
                        mask,
                        payload_len,
                    };
                    let bytes = round_trip(header);
                    let expected = unmasked_len + if mask.is_some() { 4 } else { 0 };
                    assert_eq!(bytes.len(), expected, "{header:?}");
                }
            }
        }
        let largest = FrameHeader {
            fin: true,
            rsv: 0,
            opcode: 2,
            mask: Some([9, 9, 9, 9]),
            payload_len: (1 << 63) - 1,
        };
        assert_eq!(round_trip(largest).len(), 14);
    }

    #[test]
    fn parse_reads_known_bytes() {
        // A masked "Hello" text frame from RFC 6455 §5.7.
        let bytes = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let (header, n) = FrameHeader::parse(&bytes).unwrap().unwrap();
        assert_eq!(n, 6);
        assert_eq!(
            header,
            FrameHeader {
                fin: true,
                rsv: 0,
                opcode: 1,
                mask: Some([0x37, 0xfa, 0x21, 0x3d]),
                payload_len: 5
            }
        );
        let mut payload = bytes[6..].to_vec();
        apply_mask(&mut payload, header.mask.unwrap(), 0);
        assert_eq!(payload, b"Hello");
    }

    #[test]
    fn parse_refuses_bad_lengths() {
        let cases: [(&[u8], FrameError); 5] = [
            (&[0x82, 126, 0, 125], FrameError::NonMinimalLength),
            (&[0x82, 126, 0, 0], FrameError::NonMinimalLength),
            (
                &[0x82, 127, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF],
                FrameError::NonMinimalLength,
            ),
            (
                &[0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0],
                FrameError::LengthHighBit,
            ),
            // Refused before the masking key arrives.
            (
                &[0x82, 0xFF, 0xFF, 0, 0, 0, 0, 0, 0, 0],
                FrameError::LengthHighBit,
            ),
        ];
        for (bytes, expected) in cases {
            assert_eq!(FrameHeader::parse(bytes), Err(expected), "{bytes:?}");
        }
    }

    #[test]
    fn server_head_is_unmasked_with_fin() {
        let mut out = [0u8; 10];
        assert_eq!(server_head(OpCode::Text, 5, &mut out), 2);
        assert_eq!(out[..2], [0x81, 5]);
        assert_eq!(server_head(OpCode::Binary, 300, &mut out), 4);
        assert_eq!(out[..4], [0x82, 126, 1, 44]);
        assert_eq!(server_head(OpCode::Pong, 70_000, &mut out), 10);
        assert_eq!(out[..10], [0x8A, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    }

    #[test]
    fn masking_round_trips_in_any_split() {
        let original: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let mask = [0xA1, 0x5B, 0x07, 0xFE];
        let mut whole = original.clone();
        apply_mask(&mut whole, mask, 0);
        // Reference: the RFC's byte-at-a-time definition.
        let reference: Vec<u8> = original
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        assert_eq!(whole, reference);
        for split in [0, 1, 2, 3, 5, 8, 13, 999, 1000] {
            let mut pieces = original.clone();
            let (front, back) = pieces.split_at_mut(split);
            apply_mask(front, mask, 0);
            apply_mask(back, mask, split as u64);
            assert_eq!(pieces, reference, "split {split}");
            apply_mask(&mut pieces, mask, 0);
            assert_eq!(pieces, original, "split {split}");
        }
        apply_mask(&mut [], mask, 7);
    }

    #[test]
    fn opcode_helpers() {
        for raw in 0u8..=0xFF {
            match OpCode::from_u8(raw) {
                Some(opcode) => {
                    assert_eq!(opcode.as_u8(), raw);
                    assert_eq!(opcode.is_control(), raw >= 8);
                }
                None => assert!(matches!(raw, 0x3..=0x7 | 0xB..=0xFF)),
            }
        }
    }
}
