//! Message assembly for the server side of RFC 6455: fragmentation, interleaved control frames,
//! streaming UTF-8 validation (fail fast), close codes, and the message size limit. Sans-IO: the
//! caller feeds bytes and writes whatever the codec asks it to write.

/// A complete inbound message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// A text message; its bytes were validated as UTF-8.
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// A close frame: `None` for an empty payload, else the code and the (UTF-8) reason.
    Close(Option<(u16, String)>),
}

/// A protocol violation: the server sends a close frame with `code` and drops the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("websocket protocol error {code}: {reason}")]
pub struct CodecError {
    /// 1002 protocol error, 1007 invalid payload data, 1009 message too big.
    pub code: u16,
    pub reason: &'static str,
}

/// Close codes: normal, going away, protocol error, invalid data, policy, too big, try again later.
pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
pub const CLOSE_INVALID_DATA: u16 = 1007;
pub const CLOSE_POLICY: u16 = 1008;
pub const CLOSE_TOO_BIG: u16 = 1009;
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;

/// Inbound decoder state for one connection. Holds at most one partial message, bounded by
/// `message_bytes_max`.
#[derive(Debug)]
pub struct Decoder {
    message_bytes_max: usize,
}

impl Decoder {
    pub fn new(message_bytes_max: usize) -> Decoder {
        Decoder { message_bytes_max }
    }

    /// Consumes bytes from the front of `input` and returns how many it consumed and the next
    /// complete message, if one completed. It consumes partial frames (payload bytes are moved into
    /// the decoder), so the caller's buffer never has to hold a whole frame. Call again with the
    /// rest while it returns a message.
    pub fn decode(&mut self, input: &[u8]) -> Result<(usize, Option<Message>), CodecError> {
        todo!("helper {} {}", input.len(), self.message_bytes_max)
    }

    /// Bytes held for a partial message (for memory accounting and tests).
    pub fn buffered_bytes(&self) -> usize {
        todo!()
    }
}

/// True when a close code received from a peer is valid on the wire (RFC 6455 §7.4).
pub fn is_valid_close_code(code: u16) -> bool {
    todo!("helper {code}")
}

/// Appends a whole unmasked server frame (FIN set) to `out`.
pub fn encode_frame(out: &mut Vec<u8>, opcode: crate::ws::frame::OpCode, payload: &[u8]) {
    todo!("helper {opcode:?} {} {}", out.len(), payload.len())
}

/// Appends a server close frame with `code` and `reason` (reason truncated to fit 123 bytes on a
/// character boundary).
pub fn encode_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    todo!("helper {} {code} {reason}", out.len())
}
