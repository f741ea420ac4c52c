//! Message assembly for the server side of RFC 6455: fragmentation, interleaved control frames,
//! streaming UTF-8 validation (fail fast), close codes, and the message size limit. Sans-IO: the
//! caller feeds bytes and writes whatever the codec asks it to write.
//!
//! This module owns the inbound state of one connection (at most one partial data message, bounded
//! by the message limit, plus one control frame of at most 125 bytes) and the encoding of outbound
//! server frames. It must never perform IO, never panic on any input, never hold more than those
//! bounds, and never accept what RFC 6455 tells a server to fail the connection for. No extensions
//! are negotiated, so every RSV bit must be zero.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use crate::ws::frame::{apply_mask, server_head, FrameHeader, OpCode, HEADER_BYTES_MAX};

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

/// > RFC 6455 §5.5: All control frames MUST have a payload length of 125 bytes or less
pub const CONTROL_PAYLOAD_BYTES_MAX: usize = 125;

/// The longest close reason that fits a control frame after the two-byte code.
pub const CLOSE_REASON_BYTES_MAX: usize = CONTROL_PAYLOAD_BYTES_MAX - 2;

/// How much buffer space is reserved up front for a data frame whose header announces a length.
/// A client can announce up to the message limit and then send nothing, so memory is reserved
/// only in modest steps and grows with bytes that actually arrived.
const PAYLOAD_RESERVE_BYTES_MAX: u64 = 64 * 1024;

const fn protocol_error(reason: &'static str) -> CodecError {
    CodecError {
        code: CLOSE_PROTOCOL_ERROR,
        reason,
    }
}

const fn invalid_data(reason: &'static str) -> CodecError {
    CodecError {
        code: CLOSE_INVALID_DATA,
        reason,
    }
}

/// The kind of the data message being assembled across fragments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DataKind {
    Text,
    Binary,
}

/// Where the decoder is within the current frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadState {
    /// Collecting header bytes into `Decoder::header_bytes`.
    Header,
    /// Moving payload bytes of an accepted frame into the decoder.
    Payload(PayloadProgress),
}

/// The accepted frame whose payload is arriving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PayloadProgress {
    opcode: OpCode,
    fin: bool,
    mask: [u8; 4],
    /// Payload bytes already received (the masking offset of the next byte).
    received: u64,
    /// Payload bytes still to come.
    remaining: u64,
}

/// Incremental UTF-8 validation across chunk boundaries.
///
/// Holds at most the first three bytes of a code point that is split across chunks. Validation
/// fails as soon as a sequence cannot become valid (`std::str::from_utf8` reports an
/// `error_len()` for a bad byte even when it is the last byte of the input, and it checks each
/// continuation byte against the lead byte, so impossible prefixes such as `F4 90` or `ED A0` are
/// refused right away).
///
/// > RFC 6455 §8.1: When an endpoint is to interpret a byte stream as UTF-8 but finds that the
/// > byte stream is not, in fact, a valid UTF-8 stream, that endpoint MUST _Fail the WebSocket
/// > Connection_.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Utf8Validator {
    pending: [u8; 4],
    pending_len: usize,
}

/// The bytes seen so far can never be valid UTF-8.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid UTF-8")]
pub struct InvalidUtf8;

impl Utf8Validator {
    pub fn new() -> Utf8Validator {
        Utf8Validator::default()
    }

    /// Validates the next chunk of a stream. Errors as soon as an invalid sequence is certain.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), InvalidUtf8> {
        let mut rest = chunk;
        // First finish the code point left over from the previous chunk, one byte at a time:
        // at most three more bytes decide it.
        while self.pending_len > 0 {
            let Some((&next, after)) = rest.split_first() else {
                return Ok(());
            };
            let Some(slot) = self.pending.get_mut(self.pending_len) else {
                return Err(InvalidUtf8);
            };
            *slot = next;
            self.pending_len += 1;
            rest = after;
            let so_far = self.pending.get(..self.pending_len).unwrap_or_default();
            match std::str::from_utf8(so_far) {
                Ok(_) => self.pending_len = 0,
                Err(error) if error.error_len().is_some() => return Err(InvalidUtf8),
                Err(_) => {}
            }
        }
        match std::str::from_utf8(rest) {
            Ok(_) => Ok(()),
            Err(error) if error.error_len().is_some() => Err(InvalidUtf8),
            Err(error) => {
                // An incomplete but so far valid code point at the end: keep it (1..=3 bytes).
                let tail = rest.get(error.valid_up_to()..).unwrap_or_default();
                let Some(slot) = self.pending.get_mut(..tail.len()) else {
                    return Err(InvalidUtf8);
                };
                slot.copy_from_slice(tail);
                self.pending_len = tail.len();
                Ok(())
            }
        }
    }

    /// Ends the stream: an incomplete code point at the end is invalid.
    pub fn finish(&mut self) -> Result<(), InvalidUtf8> {
        let complete = self.pending_len == 0;
        *self = Utf8Validator::default();
        if complete {
            Ok(())
        } else {
            Err(InvalidUtf8)
        }
    }
}

/// Inbound decoder state for one connection. Holds at most one partial message, bounded by
/// `message_bytes_max`.
#[derive(Debug)]
pub struct Decoder {
    message_bytes_max: usize,
    read_state: ReadState,
    /// Header bytes received so far (a header may arrive split across reads).
    header_bytes: [u8; HEADER_BYTES_MAX],
    header_bytes_len: usize,
    /// The data message in progress, unmasked, and its kind; `None` between messages.
    message_kind: Option<DataKind>,
    message_bytes: Vec<u8>,
    message_utf8: Utf8Validator,
    /// The payload of the control frame in progress (≤ 125 bytes).
    control_bytes: Vec<u8>,
}

impl Decoder {
    pub fn new(message_bytes_max: usize) -> Decoder {
        Decoder {
            message_bytes_max,
            read_state: ReadState::Header,
            header_bytes: [0; HEADER_BYTES_MAX],
            header_bytes_len: 0,
            message_kind: None,
            message_bytes: Vec::new(),
            message_utf8: Utf8Validator::new(),
            control_bytes: Vec::new(),
        }
    }

    /// Consumes bytes from the front of `input` and returns how many it consumed and the next
    /// complete message, if one completed. It consumes partial frames (payload bytes are moved into
    /// the decoder), so the caller's buffer never has to hold a whole frame. Call again with the
    /// rest while it returns a message.
    ///
    /// Partial headers are consumed too (kept in the decoder), so when no message is returned the
    /// whole of `input` was consumed. A returned message always consumed at least one byte.
    pub fn decode(&mut self, input: &[u8]) -> Result<(usize, Option<Message>), CodecError> {
        let mut consumed = 0usize;
        loop {
            let rest = input.get(consumed..).unwrap_or_default();
            match self.read_state {
                ReadState::Header => {
                    if rest.is_empty() {
                        return Ok((consumed, None));
                    }
                    consumed += self.read_header(rest)?;
                }
                ReadState::Payload(progress) => {
                    consumed += self.read_payload(progress, rest)?;
                    if let ReadState::Payload(still) = self.read_state {
                        if still.remaining > 0 {
                            // Out of input in the middle of a payload.
                            return Ok((consumed, None));
                        }
                        self.read_state = ReadState::Header;
                        if let Some(message) = self.finish_frame(still)? {
                            return Ok((consumed, Some(message)));
                        }
                    }
                }
            }
        }
    }

    /// Bytes held for a partial message (for memory accounting and tests).
    pub fn buffered_bytes(&self) -> usize {
        self.message_bytes.len()
    }

    /// Whether no frame or fragmented message is in progress, so a fresh decoder would continue
    /// identically (an idle connection can drop its decoder).
    pub fn is_between_messages(&self) -> bool {
        matches!(self.read_state, ReadState::Header)
            && self.header_bytes_len == 0
            && self.message_kind.is_none()
    }

    /// Moves header bytes from `rest` (non-empty) into the header buffer; when the header is
    /// complete, checks it and switches to the payload. Returns the bytes consumed from `rest`.
    fn read_header(&mut self, rest: &[u8]) -> Result<usize, CodecError> {
        let already = self.header_bytes_len;
        let room = HEADER_BYTES_MAX.saturating_sub(already);
        let copied = room.min(rest.len());
        if let (Some(target), Some(source)) = (
            self.header_bytes.get_mut(already..already + copied),
            rest.get(..copied),
        ) {
            target.copy_from_slice(source);
        }
        let available = self
            .header_bytes
            .get(..already + copied)
            .unwrap_or_default();
        match FrameHeader::parse(available) {
            Err(_) => Err(protocol_error("malformed frame length")),
            Ok(None) => {
                // The header needs more than `already + copied` bytes, and headers fit in 14, so
                // all of `rest` was copied.
                self.header_bytes_len = already + copied;
                Ok(copied)
            }
            Ok(Some((header, header_len))) => {
                self.header_bytes_len = 0;
                self.begin_frame(header)?;
                Ok(header_len.saturating_sub(already))
            }
        }
    }

    /// Applies the per-frame rules to a complete header and prepares to receive its payload.
    fn begin_frame(&mut self, header: FrameHeader) -> Result<(), CodecError> {
        // > RFC 6455 §5.2: RSV1, RSV2, RSV3: 1 bit each. MUST be 0 unless an extension is
        // > negotiated that defines meanings for non-zero values. If a nonzero value is received
        // > and none of the negotiated extensions defines the meaning of such a nonzero value, the
        // > receiving endpoint MUST _Fail the WebSocket Connection_.
        if header.rsv != 0 {
            return Err(protocol_error("reserved bits set"));
        }
        // > RFC 6455 §5.2: If an unknown opcode is received, the receiving endpoint MUST _Fail
        // > the WebSocket Connection_.
        let Some(opcode) = OpCode::from_u8(header.opcode) else {
            return Err(protocol_error("reserved opcode"));
        };
        // > RFC 6455 §5.1: The server MUST close the connection upon receiving a frame that is
        // > not masked.
        let Some(mask) = header.mask else {
            return Err(protocol_error("client frame not masked"));
        };

        if opcode.is_control() {
            // > RFC 6455 §5.5: All control frames MUST have a payload length of 125 bytes or less
            // > and MUST NOT be fragmented.
            if !header.fin {
                return Err(protocol_error("fragmented control frame"));
            }
            if header.payload_len > CONTROL_PAYLOAD_BYTES_MAX as u64 {
                return Err(protocol_error("control frame payload too long"));
            }
            // Control frames may arrive in the middle of a fragmented message (§5.4) and have
            // their own buffer, so the partial data message is left untouched.
            self.control_bytes.clear();
        } else {
            match (opcode, self.message_kind) {
                // > RFC 6455 §5.4: [...] a fragmented message consists of a single frame with the
                // > FIN bit clear and an opcode other than 0, followed by zero or more frames with
                // > the FIN bit clear and the opcode set to 0, and terminated by a single frame
                // > with the FIN bit set and an opcode of 0.
                (OpCode::Continuation, None) => {
                    return Err(protocol_error("continuation frame without a message"));
                }
                (OpCode::Continuation, Some(_)) => {}
                (_, Some(_)) => {
                    return Err(protocol_error("new data frame inside a fragmented message"));
                }
                (OpCode::Text, None) => self.start_message(DataKind::Text),
                (_, None) => self.start_message(DataKind::Binary),
            }
            // Checked against the header, before any byte of the payload is buffered.
            let message_len_after =
                (self.message_bytes.len() as u64).saturating_add(header.payload_len);
            if message_len_after > self.message_bytes_max as u64 {
                return Err(CodecError {
                    code: CLOSE_TOO_BIG,
                    reason: "message too big",
                });
            }
            let reserve = header.payload_len.min(PAYLOAD_RESERVE_BYTES_MAX) as usize;
            self.message_bytes.reserve(reserve);
        }

        self.read_state = ReadState::Payload(PayloadProgress {
            opcode,
            fin: header.fin,
            mask,
            received: 0,
            remaining: header.payload_len,
        });
        Ok(())
    }

    fn start_message(&mut self, kind: DataKind) {
        self.message_kind = Some(kind);
        self.message_bytes.clear();
        self.message_utf8 = Utf8Validator::new();
    }

    /// Moves up to `progress.remaining` payload bytes from `rest` into the decoder, unmasking them
    /// and validating text as it goes. Returns the bytes consumed.
    fn read_payload(
        &mut self,
        progress: PayloadProgress,
        rest: &[u8],
    ) -> Result<usize, CodecError> {
        let take = usize::try_from(progress.remaining)
            .unwrap_or(usize::MAX)
            .min(rest.len());
        let chunk = rest.get(..take).unwrap_or_default();
        let is_control = progress.opcode.is_control();
        let target = if is_control {
            &mut self.control_bytes
        } else {
            &mut self.message_bytes
        };
        let start = target.len();
        target.extend_from_slice(chunk);
        let arrived = target.get_mut(start..).unwrap_or_default();
        apply_mask(arrived, progress.mask, progress.received);
        if !is_control && self.message_kind == Some(DataKind::Text) {
            // Fail fast: an invalid sequence is refused in the fragment where it appears
            // (Autobahn 6.4.x), not when the message completes.
            self.message_utf8
                .feed(arrived)
                .map_err(|InvalidUtf8| invalid_data("invalid UTF-8 in text message"))?;
        }
        self.read_state = ReadState::Payload(PayloadProgress {
            received: progress.received + take as u64,
            remaining: progress.remaining - take as u64,
            ..progress
        });
        Ok(take)
    }

    /// Called when a frame's payload is complete; returns the message it completed, if any.
    fn finish_frame(&mut self, progress: PayloadProgress) -> Result<Option<Message>, CodecError> {
        match progress.opcode {
            OpCode::Ping => Ok(Some(Message::Ping(std::mem::take(&mut self.control_bytes)))),
            OpCode::Pong => Ok(Some(Message::Pong(std::mem::take(&mut self.control_bytes)))),
            OpCode::Close => {
                let payload = std::mem::take(&mut self.control_bytes);
                Ok(Some(Message::Close(parse_close_payload(payload)?)))
            }
            OpCode::Continuation | OpCode::Text | OpCode::Binary => {
                if !progress.fin {
                    return Ok(None);
                }
                let bytes = std::mem::take(&mut self.message_bytes);
                match self.message_kind.take() {
                    Some(DataKind::Text) => {
                        self.message_utf8.finish().map_err(|InvalidUtf8| {
                            invalid_data("text message ends inside a character")
                        })?;
                        Ok(Some(Message::Text(bytes)))
                    }
                    Some(DataKind::Binary) => Ok(Some(Message::Binary(bytes))),
                    // begin_frame refuses a data frame without a message; keep the bytes out.
                    None => Err(protocol_error("continuation frame without a message")),
                }
            }
        }
    }
}

/// Reads a close frame payload: empty, or a two-byte code followed by a UTF-8 reason.
///
/// > RFC 6455 §5.5.1: If there is a body, the first two bytes of the body MUST be a 2-byte
/// > unsigned integer (in network byte order) representing a status code [...]. Following the
/// > 2-byte integer, the body MAY contain UTF-8-encoded data with value /reason/
fn parse_close_payload(payload: Vec<u8>) -> Result<Option<(u16, String)>, CodecError> {
    let Some((&[high, low], reason)) = payload.split_first_chunk::<2>() else {
        return if payload.is_empty() {
            Ok(None)
        } else {
            Err(protocol_error("close payload of one byte"))
        };
    };
    let code = u16::from_be_bytes([high, low]);
    if !is_valid_close_code(code) {
        return Err(protocol_error("invalid close code"));
    }
    let reason = std::str::from_utf8(reason)
        .map_err(|_| invalid_data("close reason is not UTF-8"))?
        .to_owned();
    Ok(Some((code, reason)))
}

/// True when a close code received from a peer is valid on the wire (RFC 6455 §7.4).
///
/// 1000-1003 and 1007-1011 are defined by RFC 6455 §7.4.1; 1012-1014 are registered with IANA
/// (service restart, try again later, bad gateway). 1004 is reserved, and 1005, 1006 and 1015
/// "MUST NOT be set as a status code in a Close control frame by an endpoint". 3000-3999 are for
/// libraries and frameworks, 4000-4999 for private use. Everything else is unassigned.
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Appends a whole unmasked server frame (FIN set) to `out`.
pub fn encode_frame(out: &mut Vec<u8>, opcode: crate::ws::frame::OpCode, payload: &[u8]) {
    let mut head = [0u8; 10];
    let head_len = server_head(opcode, payload.len(), &mut head);
    out.reserve(head_len + payload.len());
    out.extend_from_slice(head.get(..head_len).unwrap_or_default());
    out.extend_from_slice(payload);
}

/// Appends a server close frame with `code` and `reason` (reason truncated to fit 123 bytes on a
/// character boundary).
pub fn encode_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut reason_len = reason.len().min(CLOSE_REASON_BYTES_MAX);
    while !reason.is_char_boundary(reason_len) {
        reason_len -= 1;
    }
    let reason_bytes = reason.as_bytes().get(..reason_len).unwrap_or_default();
    let mut head = [0u8; 10];
    let head_len = server_head(OpCode::Close, 2 + reason_bytes.len(), &mut head);
    out.reserve(head_len + 2 + reason_bytes.len());
    out.extend_from_slice(head.get(..head_len).unwrap_or_default());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(reason_bytes);
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x3A, 0x91, 0x07, 0xC4];

    /// A masked client frame.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        raw_frame(fin, 0, opcode, Some(MASK), payload)
    }

    fn raw_frame(fin: bool, rsv: u8, opcode: u8, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
        let header = FrameHeader {
            fin,
            rsv,
            opcode,
            mask,
            payload_len: payload.len() as u64,
        };
        let mut head = [0u8; 14];
        let head_len = header.format(&mut head);
        let mut frame = head[..head_len].to_vec();
        let start = frame.len();
        frame.extend_from_slice(payload);
        if let Some(mask) = mask {
            apply_mask(&mut frame[start..], mask, 0);
        }
        frame
    }

    #[test]
    fn between_messages_only_when_nothing_is_in_progress() {
        let mut decoder = Decoder::new(1024);
        assert!(decoder.is_between_messages());
        let whole = client_frame(true, 1, b"hello");
        // A partial header, then a partial payload: in progress.
        assert!(decoder.decode(&whole[..1]).unwrap().1.is_none());
        assert!(!decoder.is_between_messages());
        assert!(decoder.decode(&whole[1..8]).unwrap().1.is_none());
        assert!(!decoder.is_between_messages());
        assert!(decoder.decode(&whole[8..]).unwrap().1.is_some());
        assert!(decoder.is_between_messages());
        // The first fragment of a message: still in progress until the final one.
        let first = client_frame(false, 1, b"he");
        assert!(decoder.decode(&first).unwrap().1.is_none());
        assert!(!decoder.is_between_messages());
        let last = client_frame(true, 0, b"llo");
        assert_eq!(
            decoder.decode(&last).unwrap().1,
            Some(Message::Text(b"hello".to_vec()))
        );
        assert!(decoder.is_between_messages());
    }

    fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason);
        payload
    }

    /// Feeds `bytes` in pieces of `piece` bytes, collecting messages until the first error.
    fn decode_in_pieces(
        limit: usize,
        bytes: &[u8],
        piece: usize,
    ) -> Result<Vec<Message>, CodecError> {
        let mut decoder = Decoder::new(limit);
        let mut messages = Vec::new();
        for chunk in bytes.chunks(piece.max(1)) {
            let mut offset = 0;
            loop {
                let (consumed, message) = decoder.decode(&chunk[offset..])?;
                assert!(consumed <= chunk.len() - offset);
                assert!(decoder.buffered_bytes() <= limit);
                offset += consumed;
                match message {
                    Some(message) => {
                        assert!(consumed > 0, "a message must consume bytes");
                        messages.push(message);
                    }
                    None => {
                        assert_eq!(
                            offset,
                            chunk.len(),
                            "without a message all input is consumed"
                        );
                        break;
                    }
                }
            }
        }
        Ok(messages)
    }

    /// Decodes whole, byte by byte and in a few odd piece sizes; all must agree.
    fn decode_every_way(limit: usize, bytes: &[u8]) -> Result<Vec<Message>, CodecError> {
        let whole = decode_in_pieces(limit, bytes, bytes.len());
        for piece in [1, 2, 3, 7, 13] {
            assert_eq!(
                decode_in_pieces(limit, bytes, piece),
                whole,
                "piece size {piece}"
            );
        }
        whole
    }

    fn concat(frames: &[Vec<u8>]) -> Vec<u8> {
        frames.concat()
    }

    fn error_code(result: Result<Vec<Message>, CodecError>) -> u16 {
        match result {
            Ok(messages) => panic!("expected an error, decoded {messages:?}"),
            Err(error) => error.code,
        }
    }

    #[test]
    fn valid_streams_decode_the_same_in_any_split() {
        let euro = "€".as_bytes(); // E2 82 AC
        let cases: Vec<(&str, Vec<u8>, Vec<Message>)> = vec![
            (
                "single text",
                client_frame(true, 1, b"Hello"),
                vec![Message::Text(b"Hello".to_vec())],
            ),
            (
                "single binary with 16-bit length",
                client_frame(true, 2, &[7u8; 300]),
                vec![Message::Binary(vec![7u8; 300])],
            ),
            (
                "empty text and empty binary",
                concat(&[client_frame(true, 1, b""), client_frame(true, 2, b"")]),
                vec![Message::Text(vec![]), Message::Binary(vec![])],
            ),
            (
                "fragmented text with a code point split across frames and a ping in between",
                concat(&[
                    client_frame(false, 1, &[b'a', euro[0]]),
                    client_frame(true, 9, b"ping"),
                    client_frame(false, 0, &euro[1..2]),
                    client_frame(false, 0, b""),
                    client_frame(true, 0, &[euro[2], b'z']),
                ]),
                vec![
                    Message::Ping(b"ping".to_vec()),
                    Message::Text("a€z".as_bytes().to_vec()),
                ],
            ),
            (
                "fragmented binary with a pong in between, then a text",
                concat(&[
                    client_frame(false, 2, &[1, 2]),
                    client_frame(true, 10, b""),
                    client_frame(true, 0, &[3]),
                    client_frame(true, 1, b"next"),
                ]),
                vec![
                    Message::Pong(vec![]),
                    Message::Binary(vec![1, 2, 3]),
                    Message::Text(b"next".to_vec()),
                ],
            ),
            (
                "close frames",
                concat(&[
                    client_frame(true, 8, b""),
                    client_frame(true, 8, &close_payload(1000, b"bye")),
                    client_frame(true, 8, &close_payload(4999, "ü".as_bytes())),
                ]),
                vec![
                    Message::Close(None),
                    Message::Close(Some((1000, "bye".to_owned()))),
                    Message::Close(Some((4999, "ü".to_owned()))),
                ],
            ),
            (
                "control frame of exactly 125 bytes",
                client_frame(true, 9, &[b'x'; 125]),
                vec![Message::Ping(vec![b'x'; 125])],
            ),
        ];
        for (name, bytes, expected) in cases {
            assert_eq!(decode_every_way(1 << 16, &bytes), Ok(expected), "{name}");
        }
    }

    #[test]
    fn protocol_rules_are_enforced() {
        let cases: Vec<(&str, Vec<u8>, u16)> = vec![
            (
                "unmasked client frame",
                raw_frame(true, 0, 1, None, b"hi"),
                1002,
            ),
            (
                "rsv1 set",
                raw_frame(true, 0b100, 1, Some(MASK), b"hi"),
                1002,
            ),
            (
                "rsv3 set on a ping",
                raw_frame(true, 0b001, 9, Some(MASK), b""),
                1002,
            ),
            ("reserved opcode 3", client_frame(true, 3, b""), 1002),
            ("reserved opcode 7", client_frame(true, 7, b""), 1002),
            ("reserved opcode 0xB", client_frame(true, 0xB, b""), 1002),
            ("reserved opcode 0xF", client_frame(true, 0xF, b"x"), 1002),
            ("ping of 126 bytes", client_frame(true, 9, &[0; 126]), 1002),
            (
                "close of 126 bytes",
                client_frame(true, 8, &close_payload(1000, &[b'a'; 124])),
                1002,
            ),
            ("fragmented ping", client_frame(false, 9, b""), 1002),
            ("fragmented close", client_frame(false, 8, b""), 1002),
            (
                "continuation without a message",
                client_frame(true, 0, b"x"),
                1002,
            ),
            (
                "continuation after a finished message",
                concat(&[client_frame(true, 2, b"x"), client_frame(true, 0, b"y")]),
                1002,
            ),
            (
                "text inside a fragmented text",
                concat(&[client_frame(false, 1, b"a"), client_frame(true, 1, b"b")]),
                1002,
            ),
            (
                "binary inside a fragmented text",
                concat(&[client_frame(false, 1, b"a"), client_frame(true, 2, b"b")]),
                1002,
            ),
            (
                "non-minimal 16-bit length",
                vec![0x82, 0xFE, 0, 5, 1, 2, 3, 4],
                1002,
            ),
            (
                "64-bit length with the high bit",
                vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0],
                1002,
            ),
            (
                "invalid UTF-8 text",
                client_frame(true, 1, &[b'a', 0xFF]),
                1007,
            ),
            (
                "surrogate in text",
                client_frame(true, 1, &[0xED, 0xA0, 0x80]),
                1007,
            ),
            (
                "text ends inside a character",
                client_frame(true, 1, &[b'a', 0xE2, 0x82]),
                1007,
            ),
            (
                "fragmented text ends inside a character",
                concat(&[
                    client_frame(false, 1, b"a"),
                    client_frame(true, 0, &[0xF0, 0x9F]),
                ]),
                1007,
            ),
            ("close with one byte", client_frame(true, 8, &[3]), 1002),
            (
                "close reason not UTF-8",
                client_frame(true, 8, &close_payload(1000, &[0xC0])),
                1007,
            ),
        ];
        for (name, bytes, code) in cases {
            assert_eq!(
                error_code(decode_every_way(1 << 16, &bytes)),
                code,
                "{name}"
            );
        }
    }

    #[test]
    fn close_codes() {
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999,
            4000, 4999,
        ] {
            assert!(is_valid_close_code(code), "{code}");
            let bytes = client_frame(true, 8, &close_payload(code, b"r"));
            assert_eq!(
                decode_every_way(1 << 16, &bytes),
                Ok(vec![Message::Close(Some((code, "r".to_owned())))])
            );
        }
        // Autobahn 7.9.x and the codes RFC 6455 §7.4.1 forbids on the wire.
        for code in [
            0,
            999,
            1004,
            1005,
            1006,
            1015,
            1016,
            1100,
            2000,
            2999,
            5000,
            u16::MAX,
        ] {
            assert!(!is_valid_close_code(code), "{code}");
            let bytes = client_frame(true, 8, &close_payload(code, b""));
            assert_eq!(
                error_code(decode_every_way(1 << 16, &bytes)),
                1002,
                "{code}"
            );
        }
    }

    #[test]
    fn message_limit_is_checked_at_the_header() {
        let limit = 16;
        assert_eq!(
            decode_every_way(limit, &client_frame(true, 2, &[0; 16])),
            Ok(vec![Message::Binary(vec![0; 16])])
        );
        assert_eq!(
            error_code(decode_every_way(limit, &client_frame(true, 2, &[0; 17]))),
            1009
        );
        let fragmented = concat(&[
            client_frame(false, 1, &[b'a'; 10]),
            client_frame(true, 0, &[b'a'; 7]),
        ]);
        assert_eq!(error_code(decode_every_way(limit, &fragmented)), 1009);
        // Control frames do not count against the limit and do not disturb the partial message.
        let with_ping = concat(&[
            client_frame(false, 2, &[1; 10]),
            client_frame(true, 9, &[2; 100]),
            client_frame(true, 0, &[3; 6]),
        ]);
        let mut expected = vec![1; 10];
        expected.extend_from_slice(&[3; 6]);
        assert_eq!(
            decode_every_way(limit, &with_ping),
            Ok(vec![Message::Ping(vec![2; 100]), Message::Binary(expected)])
        );
        // Refused from the header alone: no payload byte is needed or buffered.
        let mut decoder = Decoder::new(limit);
        let huge_header = [0x82, 0xFF, 0, 0, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4];
        assert_eq!(decoder.decode(&huge_header).map_err(|e| e.code), Err(1009));
        assert_eq!(decoder.buffered_bytes(), 0);
    }

    #[test]
    fn invalid_utf8_fails_fast_inside_a_fragment() {
        // A text frame announcing 1000 bytes; the invalid byte arrives long before the rest.
        let payload: Vec<u8> = b"valid so far "
            .iter()
            .copied()
            .chain([0xF4, 0x90]) // above U+10FFFF: impossible from its second byte
            .chain(std::iter::repeat_n(b'x', 985))
            .collect();
        let frame = client_frame(false, 1, &payload);
        let mut decoder = Decoder::new(1 << 16);
        let head_len = 4 + 4;
        let upto_bad = head_len + 13 + 2;
        assert_eq!(
            decoder.decode(&frame[..upto_bad - 1]),
            Ok((upto_bad - 1, None))
        );
        let error = decoder.decode(&frame[upto_bad - 1..upto_bad]).unwrap_err();
        assert_eq!(error.code, 1007);

        // A lone continuation byte in a later fragment fails before that fragment ends.
        let mut decoder = Decoder::new(1 << 16);
        let first = client_frame(false, 1, "ok ".as_bytes());
        assert_eq!(decoder.decode(&first), Ok((first.len(), None)));
        let second = client_frame(true, 0, &[b'a', 0x80, b'b', b'c']);
        assert_eq!(
            decoder
                .decode(&second[..second.len() - 2])
                .map_err(|e| e.code),
            Err(1007)
        );
    }

    #[test]
    fn utf8_validator_handles_every_split() {
        let text = "aé€😀z".as_bytes();
        for split_a in 0..=text.len() {
            for split_b in split_a..=text.len() {
                let mut validator = Utf8Validator::new();
                validator.feed(&text[..split_a]).unwrap();
                validator.feed(&text[split_a..split_b]).unwrap();
                validator.feed(&text[split_b..]).unwrap();
                validator.finish().unwrap();
            }
        }
        let mut validator = Utf8Validator::new();
        validator.feed(&[0xF0, 0x9F]).unwrap();
        assert_eq!(validator.feed(&[0x41]), Err(InvalidUtf8));
        let mut validator = Utf8Validator::new();
        validator.feed(&[0xF0]).unwrap();
        assert_eq!(validator.finish(), Err(InvalidUtf8));
        // Overlong and out-of-range lead bytes are refused on their own.
        for bad in [[0xC0u8], [0xC1], [0xF5], [0xFF]] {
            assert_eq!(Utf8Validator::new().feed(&bad), Err(InvalidUtf8), "{bad:?}");
        }
    }

    #[test]
    fn partial_frames_are_consumed_and_counted() {
        let mut decoder = Decoder::new(1 << 16);
        let frame = client_frame(false, 2, &[9; 50]);
        assert_eq!(decoder.decode(&frame[..1]), Ok((1, None)));
        assert_eq!(decoder.decode(&frame[1..20]), Ok((19, None)));
        assert_eq!(decoder.buffered_bytes(), 20 - 6);
        assert_eq!(decoder.decode(&frame[20..]), Ok((frame.len() - 20, None)));
        assert_eq!(decoder.buffered_bytes(), 50);
        // Two messages in one buffer: the first call stops after the first.
        let both = concat(&[client_frame(true, 0, b""), client_frame(true, 1, b"x")]);
        let first_len = 6;
        assert_eq!(
            decoder.decode(&both),
            Ok((first_len, Some(Message::Binary(vec![9; 50]))))
        );
        assert_eq!(decoder.buffered_bytes(), 0);
        assert_eq!(
            decoder.decode(&both[first_len..]),
            Ok((both.len() - first_len, Some(Message::Text(b"x".to_vec()))))
        );
        assert_eq!(decoder.decode(&[]), Ok((0, None)));
    }

    #[test]
    fn encoded_frames() {
        let mut out = Vec::new();
        encode_frame(&mut out, OpCode::Text, b"hi");
        assert_eq!(out, [0x81, 2, b'h', b'i']);
        out.clear();
        encode_frame(&mut out, OpCode::Binary, &[0; 70_000]);
        assert_eq!(out[..10], [0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
        assert_eq!(out.len(), 70_010);

        out.clear();
        encode_close(&mut out, 1000, "bye");
        assert_eq!(out, [0x88, 5, 0x03, 0xE8, b'b', b'y', b'e']);

        // 200 two-byte characters: 123 bytes would split one, so 122 are kept.
        let long_reason = "é".repeat(200);
        out.clear();
        encode_close(&mut out, 1001, &long_reason);
        assert_eq!(out[1] as usize, 2 + 122);
        assert_eq!(out.len(), 2 + 2 + 122);
        assert!(std::str::from_utf8(&out[4..]).is_ok());
        out.clear();
        encode_close(&mut out, 1001, &"a".repeat(500));
        assert_eq!(out[1] as usize, CONTROL_PAYLOAD_BYTES_MAX);
    }

    #[test]
    fn encoded_frames_decode_when_masked() {
        // What the server writes is what a client would send, less the mask.
        let mut out = Vec::new();
        encode_close(&mut out, 1000, &"ß".repeat(100));
        let (header, head_len) = FrameHeader::parse(&out).unwrap().unwrap();
        let client = raw_frame(
            header.fin,
            header.rsv,
            header.opcode,
            Some(MASK),
            &out[head_len..],
        );
        let messages = decode_every_way(1 << 16, &client).unwrap();
        assert_eq!(messages, vec![Message::Close(Some((1000, "ß".repeat(61))))]);
    }
}

/// The fuzz targets' properties (`tests/fuzz/fuzz_targets/ws_frame.rs` and `ws_codec_server.rs`),
/// replayed on stable over the committed seeds. Kept in step with the targets by hand: the targets
/// stay self-contained so that `cargo fuzz` needs nothing from the test build.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod fuzz_seeds {
    use super::*;
    use std::path::{Path, PathBuf};

    const FRAME_SEEDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz/seeds/ws_frame");
    const CODEC_SEEDS: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fuzz/seeds/ws_codec_server"
    );
    const MESSAGE_BYTES_MAX: usize = 64 * 1024;

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

    /// Same as the `ws_frame` fuzz target.
    fn frame_property(data: &[u8]) {
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
                    assert!(data.len() < announced_header_len(second));
                }
            }
            Err(_) => {}
        }
    }

    /// Same as the `ws_codec_server` fuzz target. Returns the messages decoded and whether the
    /// stream ended in an error, so the seeds can be checked to cover both outcomes.
    fn codec_property(data: &[u8]) -> (usize, bool) {
        let Some((&selector, stream)) = data.split_first() else {
            return (0, false);
        };
        let piece = if selector == 0 {
            stream.len().max(1)
        } else {
            usize::from(selector)
        };
        let mut decoder = Decoder::new(MESSAGE_BYTES_MAX);
        let mut messages = 0;
        for chunk in stream.chunks(piece) {
            let mut offset = 0;
            loop {
                let rest = &chunk[offset..];
                let Ok((consumed, message)) = decoder.decode(rest) else {
                    return (messages, true);
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
                messages += 1;
            }
        }
        (messages, false)
    }

    fn seed_files(directory: &str) -> Vec<(PathBuf, Vec<u8>)> {
        let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(directory)
            .unwrap_or_else(|error| panic!("seed directory {directory}: {error}"))
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.is_file())
            .map(|path| {
                let bytes = std::fs::read(&path).unwrap();
                (path, bytes)
            })
            .collect();
        files.sort();
        files
    }

    #[test]
    fn fuzz_seeds_ws() {
        let frame_seeds = seed_files(FRAME_SEEDS);
        assert!(
            frame_seeds.len() >= 15,
            "too few ws_frame seeds: {}",
            frame_seeds.len()
        );
        for (path, bytes) in &frame_seeds {
            eprintln!("ws_frame seed {}", path.display());
            frame_property(bytes);
        }
        let codec_seeds = seed_files(CODEC_SEEDS);
        assert!(
            codec_seeds.len() >= 15,
            "too few ws_codec_server seeds: {}",
            codec_seeds.len()
        );
        let (mut clean, mut failed) = (0, 0);
        for (path, bytes) in &codec_seeds {
            eprintln!("ws_codec_server seed {}", path.display());
            let (_, error) = codec_property(bytes);
            if error {
                failed += 1;
            } else {
                clean += 1;
            }
        }
        assert!(
            clean > 0 && failed > 0,
            "seeds should cover clean streams and errors"
        );
    }

    /// Decodes a whole stream with `piece`-sized reads; the outcome must not depend on `piece`.
    fn outcome(stream: &[u8], piece: usize) -> (Vec<Message>, Option<CodecError>) {
        let mut decoder = Decoder::new(MESSAGE_BYTES_MAX);
        let mut messages = Vec::new();
        for chunk in stream.chunks(piece.max(1)) {
            let mut offset = 0;
            loop {
                match decoder.decode(&chunk[offset..]) {
                    Err(error) => return (messages, Some(error)),
                    Ok((consumed, message)) => {
                        offset += consumed;
                        match message {
                            Some(message) => messages.push(message),
                            None => break,
                        }
                    }
                }
            }
        }
        (messages, None)
    }

    /// A stable stand-in for a short fuzzing run: random mutations of every seed (flips,
    /// truncations, insertions, splices) must keep both properties, and the decoder's outcome
    /// must be the same whatever the read size. `WS_MUTATION_ROUNDS` (default 40) runs longer.
    #[test]
    fn mutated_seeds_keep_the_properties() {
        let rounds: u32 = std::env::var("WS_MUTATION_ROUNDS")
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(40);
        let mut seeds: Vec<Vec<u8>> = seed_files(FRAME_SEEDS)
            .into_iter()
            .map(|(_, b)| b)
            .collect();
        seeds.extend(seed_files(CODEC_SEEDS).into_iter().map(|(_, b)| b));
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..rounds {
            for seed in &seeds {
                let mut input = seed.clone();
                for _ in 0..1 + next() % 4 {
                    let position = if input.is_empty() {
                        0
                    } else {
                        (next() as usize) % input.len()
                    };
                    match next() % 4 {
                        0 if !input.is_empty() => input[position] ^= 1 << (next() % 8),
                        1 => input.truncate(position),
                        2 => input.insert(position, next() as u8),
                        _ => {
                            let other = &seeds[(next() as usize) % seeds.len()];
                            input.extend_from_slice(other);
                        }
                    }
                }
                frame_property(&input);
                codec_property(&input);
                let stream = input.get(1..).unwrap_or_default();
                let whole = outcome(stream, stream.len());
                for piece in [1, 2, 5] {
                    assert_eq!(
                        outcome(stream, piece),
                        whole,
                        "round {round} piece {piece} input {input:?}"
                    );
                }
            }
        }
    }

    // ---- Seed generation: `WS_WRITE_SEEDS=1 cargo test --lib committed_fuzz_seeds` rewrites them. ----

    const MASK: [u8; 4] = [0x5D, 0x12, 0xE9, 0x70];

    fn frame(fin: bool, rsv: u8, opcode: u8, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
        let header = FrameHeader {
            fin,
            rsv,
            opcode,
            mask,
            payload_len: payload.len() as u64,
        };
        let mut head = [0u8; 14];
        let head_len = header.format(&mut head);
        let mut bytes = head[..head_len].to_vec();
        let start = bytes.len();
        bytes.extend_from_slice(payload);
        if let Some(mask) = mask {
            apply_mask(&mut bytes[start..], mask, 0);
        }
        bytes
    }

    fn client(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        frame(fin, 0, opcode, Some(MASK), payload)
    }

    fn close(code: u16, reason: &[u8]) -> Vec<u8> {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason);
        client(true, 8, &payload)
    }

    fn header_only(payload_len: u64, mask: Option<[u8; 4]>) -> Vec<u8> {
        let header = FrameHeader {
            fin: true,
            rsv: 0,
            opcode: 2,
            mask,
            payload_len,
        };
        let mut head = [0u8; 14];
        let head_len = header.format(&mut head);
        head[..head_len].to_vec()
    }

    /// Deterministic junk (xorshift), so regenerating gives the same files.
    fn junk(seed: u64, len: usize) -> Vec<u8> {
        let mut state = seed.max(1);
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    fn with_selector(selector: u8, frames: &[Vec<u8>]) -> Vec<u8> {
        let mut bytes = vec![selector];
        bytes.extend(frames.concat());
        bytes
    }

    /// Checks that every generated seed is committed with the same bytes; with
    /// `WS_WRITE_SEEDS=1` it rewrites them instead.
    fn write_seeds(directory: &Path, seeds: &[(&str, Vec<u8>)]) {
        let rewrite = std::env::var("WS_WRITE_SEEDS").as_deref() == Ok("1");
        if rewrite {
            std::fs::create_dir_all(directory).unwrap();
        }
        for (name, bytes) in seeds {
            let path = directory.join(name);
            if rewrite {
                std::fs::write(&path, bytes).unwrap();
            } else {
                let committed = std::fs::read(&path)
                    .unwrap_or_else(|e| panic!("seed {} missing: {e}", path.display()));
                assert_eq!(
                    &committed,
                    bytes,
                    "seed {} differs from its generator",
                    path.display()
                );
            }
        }
    }

    /// The committed seeds are exactly what this generator writes (`WS_WRITE_SEEDS=1` rewrites).
    #[test]
    fn committed_fuzz_seeds_match_the_generator() {
        let euro = "€".as_bytes();
        let frame_seeds: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("one_byte", vec![0x81]),
            ("len0_unmasked", header_only(0, None)),
            ("len0_masked", header_only(0, Some(MASK))),
            ("len125_masked", header_only(125, Some(MASK))),
            ("len126_masked", header_only(126, Some(MASK))),
            ("len65535_unmasked", header_only(65535, None)),
            ("len65536_masked", header_only(65536, Some(MASK))),
            ("len2pow32_masked", header_only(1 << 32, Some(MASK))),
            ("len_max_masked", header_only((1 << 63) - 1, Some(MASK))),
            ("truncated_mask", header_only(5, Some(MASK))[..4].to_vec()),
            ("truncated_len64", header_only(1 << 20, None)[..6].to_vec()),
            (
                "len64_high_bit",
                vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4],
            ),
            ("non_minimal_len16", vec![0x82, 0x7E, 0, 100]),
            (
                "non_minimal_len64",
                vec![0x82, 0xFF, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 1, 2, 3, 4],
            ),
            (
                "rsv_and_reserved_opcode",
                frame(false, 7, 0xB, Some(MASK), b"abc"),
            ),
            (
                "hello_rfc_example",
                vec![
                    0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
                ],
            ),
            ("junk_a", junk(1, 14)),
            ("junk_b", junk(2, 40)),
        ];
        let codec_seeds: Vec<(&str, Vec<u8>)> = vec![
            ("text_whole", with_selector(0, &[client(true, 1, b"Hello")])),
            (
                "text_bytewise",
                with_selector(1, &[client(true, 1, b"Hello, world")]),
            ),
            (
                "binary_len16",
                with_selector(7, &[client(true, 2, &junk(3, 300))]),
            ),
            (
                "fragmented_text_split_code_point_with_ping",
                with_selector(
                    3,
                    &[
                        client(false, 1, &[b'a', euro[0]]),
                        client(true, 9, b"ping"),
                        client(false, 0, &euro[1..2]),
                        client(true, 0, &euro[2..]),
                    ],
                ),
            ),
            (
                "fragmented_binary_with_pong",
                with_selector(
                    5,
                    &[
                        client(false, 2, &[1; 20]),
                        client(true, 10, b"p"),
                        client(true, 0, &[2; 20]),
                    ],
                ),
            ),
            ("close_empty", with_selector(0, &[client(true, 8, b"")])),
            (
                "close_normal_reason",
                with_selector(2, &[close(1000, b"bye")]),
            ),
            ("close_one_byte", with_selector(0, &[client(true, 8, &[3])])),
            ("close_code_1005", with_selector(0, &[close(1005, b"")])),
            ("close_code_999", with_selector(0, &[close(999, b"x")])),
            (
                "close_reason_bad_utf8",
                with_selector(1, &[close(1000, &[0xCE, 0xBA, 0xFF])]),
            ),
            (
                "text_bad_utf8",
                with_selector(0, &[client(true, 1, &[b'a', 0xFF, b'b'])]),
            ),
            (
                "text_bad_utf8_fail_fast_partial",
                with_selector(4, &[client(true, 1, &[0xF4, 0x90, 0x80])[..8].to_vec()]),
            ),
            (
                "text_incomplete_code_point_at_end",
                with_selector(
                    0,
                    &[client(false, 1, b"a"), client(true, 0, &[0xF0, 0x9F, 0x98])],
                ),
            ),
            (
                "unmasked_text",
                with_selector(0, &[frame(true, 0, 1, None, b"hi")]),
            ),
            (
                "rsv1_set",
                with_selector(0, &[frame(true, 4, 1, Some(MASK), b"hi")]),
            ),
            (
                "reserved_opcode",
                with_selector(0, &[client(true, 0xB, b"")]),
            ),
            (
                "ping_too_long",
                with_selector(9, &[client(true, 9, &[0; 126])]),
            ),
            (
                "ping_fragmented",
                with_selector(0, &[client(false, 9, b"")]),
            ),
            (
                "continuation_without_start",
                with_selector(0, &[client(true, 0, b"x")]),
            ),
            (
                "text_inside_fragmented_text",
                with_selector(0, &[client(false, 1, b"a"), client(true, 1, b"b")]),
            ),
            (
                "oversize_len64",
                with_selector(0, &[header_only(1 << 40, Some(MASK))]),
            ),
            (
                "just_over_limit",
                with_selector(0, &[header_only(65537, Some(MASK))]),
            ),
            (
                "len64_high_bit",
                with_selector(
                    0,
                    &[vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]],
                ),
            ),
            (
                "non_minimal_len16",
                with_selector(0, &[vec![0x82, 0xFE, 0, 1, 1, 2, 3, 4, 0]]),
            ),
            ("junk_a", junk(4, 64)),
            ("junk_b", junk(5, 200)),
            (
                "junk_after_valid",
                with_selector(0, &[client(true, 1, b"ok"), junk(6, 32)]),
            ),
        ];
        write_seeds(Path::new(FRAME_SEEDS), &frame_seeds);
        write_seeds(Path::new(CODEC_SEEDS), &codec_seeds);
    }
}
