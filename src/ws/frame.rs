//! RFC 6455 §5.2 frame headers: parse, format, and (un)masking. No IO and no allocation.

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
    pub fn from_u8(value: u8) -> Option<OpCode> {
        todo!("helper: map 0x0,0x1,0x2,0x8,0x9,0xA; reserved -> None {value}")
    }
    pub fn as_u8(self) -> u8 {
        todo!()
    }
    pub fn is_control(self) -> bool {
        todo!()
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

impl FrameHeader {
    /// Parses a header from the front of `buf`. `Ok(None)`: more bytes are needed and nothing was
    /// consumed. `Ok(Some((header, n)))`: the header took `n` bytes.
    pub fn parse(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, FrameError> {
        todo!("helper {}", buf.len())
    }

    /// Writes this header into `out` and returns its length (2..=14).
    pub fn format(&self, out: &mut [u8; 14]) -> usize {
        todo!("helper {}", out.len())
    }
}

/// The header of an unmasked server frame with FIN set, written into `out`; returns its length
/// (2, 4 or 10 bytes).
pub fn server_head(opcode: OpCode, payload_len: usize, out: &mut [u8; 10]) -> usize {
    todo!("helper {opcode:?} {payload_len} {}", out.len())
}

/// XORs `buf` with `mask`, where `buf[0]` is byte `offset` of the payload (so a payload may be
/// unmasked in pieces as it arrives).
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4], offset: u64) {
    todo!("helper {} {mask:?} {offset}", buf.len())
}
