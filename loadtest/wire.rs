//! Bytes on the wire, without IO: masked client frames built once, server frames parsed in place,
//! the HTTP response heads of upgrades and POST /rpc, and the few fields the client reads out of
//! event frames (the event name and the publish marker) by scanning instead of parsing JSON.
//!
//! Parsers follow the project's rule (STYLE.md 3): `Ok(None)` means "need more bytes" and consumes
//! nothing; `Err` is a protocol violation by the server.

/// The client's fixed mask key. RFC 6455 §5.3 wants it unpredictable to defeat proxy cache
/// poisoning; loopback has no proxy, and a fixed key lets every frame be built once.
const MASK: [u8; 4] = [0x5a, 0xc3, 0x17, 0x8e];

pub const OPCODE_CONTINUATION: u8 = 0x0;
pub const OPCODE_TEXT: u8 = 0x1;
pub const OPCODE_BINARY: u8 = 0x2;
pub const OPCODE_CLOSE: u8 = 0x8;
pub const OPCODE_PING: u8 = 0x9;
pub const OPCODE_PONG: u8 = 0xA;

/// Largest server message the client accepts (the gateway's default maxPayload is 1 MiB; a hello
/// with a large snapshot stays far below this).
pub const MESSAGE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// A masked client frame (FIN set) carrying `payload` with `opcode`.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        frame.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        frame.push(0x80 | 127);
        frame.extend_from_slice(&(len as u64).to_be_bytes());
    }
    frame.extend_from_slice(&MASK);
    frame.extend(
        payload
            .iter()
            .zip(MASK.iter().cycle())
            .map(|(byte, mask)| byte ^ mask),
    );
    frame
}

pub fn client_text(payload: &[u8]) -> Vec<u8> {
    client_frame(OPCODE_TEXT, payload)
}

/// One parsed server frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    pub fin: bool,
    pub opcode: u8,
    pub head_len: usize,
    pub payload_len: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    MaskedServerFrame,
    ReservedBits,
    TooLarge(u64),
    BadUpgrade(String),
    BadHttp(String),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::MaskedServerFrame => write!(f, "the server sent a masked frame"),
            WireError::ReservedBits => write!(f, "the server set reserved bits"),
            WireError::TooLarge(n) => write!(f, "server message of {n} bytes is over the cap"),
            WireError::BadUpgrade(line) => write!(f, "upgrade refused: {line}"),
            WireError::BadHttp(why) => write!(f, "malformed HTTP response: {why}"),
        }
    }
}

/// Parses the header of the server frame at the start of `bytes` (RFC 6455 §5.2).
pub fn parse_frame_head(bytes: &[u8]) -> Result<Option<FrameHead>, WireError> {
    let (Some(&b0), Some(&b1)) = (bytes.first(), bytes.get(1)) else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(WireError::ReservedBits);
    }
    // > RFC 6455 §5.1: A server MUST NOT mask any frames that it sends to the client.
    if b1 & 0x80 != 0 {
        return Err(WireError::MaskedServerFrame);
    }
    let (head_len, payload_len) = match b1 & 0x7f {
        126 => match bytes.get(2..4) {
            Some(b) => (4, u16::from_be_bytes([b[0], b[1]]) as u64),
            None => return Ok(None),
        },
        127 => match bytes.get(2..10) {
            Some(b) => {
                let mut raw = [0u8; 8];
                raw.copy_from_slice(b);
                (10, u64::from_be_bytes(raw))
            }
            None => return Ok(None),
        },
        n => (2, n as u64),
    };
    if payload_len > MESSAGE_BYTES_MAX as u64 {
        return Err(WireError::TooLarge(payload_len));
    }
    Ok(Some(FrameHead {
        fin: b0 & 0x80 != 0,
        opcode: b0 & 0x0f,
        head_len,
        payload_len: payload_len as usize,
    }))
}

/// Position of `needle` in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let first = *needle.first()?;
    let mut from = 0;
    while let Some(offset) = haystack.get(from..)?.iter().position(|b| *b == first) {
        let at = from + offset;
        if haystack.get(at..at + needle.len())? == needle {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// The end of an HTTP head (index just past `\r\n\r\n`).
pub fn head_end(bytes: &[u8]) -> Option<usize> {
    find(bytes, b"\r\n\r\n").map(|at| at + 4)
}

/// Checks an upgrade answer's status line: `HTTP/1.1 101`.
pub fn check_upgrade(head: &[u8]) -> Result<(), WireError> {
    let line_end = find(head, b"\r\n").unwrap_or(head.len());
    let line = head.get(..line_end).unwrap_or(head);
    if line.starts_with(b"HTTP/1.1 101") {
        return Ok(());
    }
    Err(WireError::BadUpgrade(
        String::from_utf8_lossy(line).into_owned(),
    ))
}

/// A complete HTTP response at the start of `bytes`: (status, body range, total length).
pub fn parse_http_response(
    bytes: &[u8],
) -> Result<Option<(u16, std::ops::Range<usize>, usize)>, WireError> {
    let Some(end) = head_end(bytes) else {
        if bytes.len() > 64 * 1024 {
            return Err(WireError::BadHttp("head over 64 KiB".into()));
        }
        return Ok(None);
    };
    let head = bytes.get(..end).unwrap_or_default();
    let status = head
        .get(9..12)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| WireError::BadHttp("no status code".into()))?;
    let text = String::from_utf8_lossy(head);
    let length = text
        .split("\r\n")
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .ok_or_else(|| WireError::BadHttp("no Content-Length".into()))?;
    if length > MESSAGE_BYTES_MAX {
        return Err(WireError::TooLarge(length as u64));
    }
    if bytes.len() < end + length {
        return Ok(None);
    }
    Ok(Some((status, end..end + length, end + length)))
}

/// What kind of server message a text frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind<'a> {
    /// An event frame with its name.
    Event(&'a [u8]),
    /// A response frame.
    Response,
    Other,
}

/// Reads the frame type and, for events, the name, by scanning the first bytes. Both the gateway
/// (`{"type":"event","seq":…,"event":"…"`) and the reference order (`{"type":"event","event":…`)
/// put `type` first.
pub fn classify(message: &[u8]) -> MessageKind<'_> {
    if message.starts_with(br#"{"type":"res""#) {
        return MessageKind::Response;
    }
    if !message.starts_with(br#"{"type":"event""#) {
        return MessageKind::Other;
    }
    let Some(at) = find(message, br#""event":""#) else {
        return MessageKind::Other;
    };
    let start = at + 9;
    let Some(rest) = message.get(start..) else {
        return MessageKind::Other;
    };
    match rest.iter().position(|b| *b == b'"') {
        Some(len) => MessageKind::Event(rest.get(..len).unwrap_or_default()),
        None => MessageKind::Other,
    }
}

/// The publish marker every published line starts with: `#lt:<id>;`.
pub const MARKER: &[u8] = b"#lt:";

/// The line loadtest publishes for event `id`, padded with `x` to `line_bytes` (no newline).
pub fn publish_line(id: u64, line_bytes: usize) -> Vec<u8> {
    let mut line = format!("#lt:{id};").into_bytes();
    while line.len() < line_bytes {
        line.push(b'x');
    }
    line
}

/// The id of the first publish marker in `message`, if any.
pub fn marker_id(message: &[u8]) -> Option<u64> {
    let at = find(message, MARKER)?;
    let digits = message.get(at + MARKER.len()..)?;
    let mut id: u64 = 0;
    let mut n_digits = 0;
    for byte in digits.iter().take(20) {
        match byte {
            b'0'..=b'9' => {
                id = id.checked_mul(10)?.checked_add(u64::from(byte - b'0'))?;
                n_digits += 1;
            }
            b';' if n_digits > 0 => return Some(id),
            _ => return None,
        }
    }
    None
}

/// The string value of `"key":"…"` in `message` (first occurrence, no unescaping: the values read
/// this way are ids and codes the server built from plain characters).
pub fn string_field<'a>(message: &'a [u8], key: &str) -> Option<&'a str> {
    let pattern = format!("\"{key}\":\"");
    let at = find(message, pattern.as_bytes())? + pattern.len();
    let rest = message.get(at..)?;
    let len = rest.iter().position(|b| *b == b'"')?;
    std::str::from_utf8(rest.get(..len)?).ok()
}

/// The unsigned integer value of `"key":N` in `message` at or after `from`.
pub fn number_field(message: &[u8], key: &str, from: usize) -> Option<u64> {
    let pattern = format!("\"{key}\":");
    let at = find(message.get(from..)?, pattern.as_bytes())? + from + pattern.len();
    let rest = message.get(at..)?;
    let len = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(rest.get(..len)?).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![0x80 | opcode];
        if payload.len() < 126 {
            frame.push(payload.len() as u8);
        } else {
            frame.push(126);
            frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        frame.extend_from_slice(payload);
        frame
    }

    #[test]
    fn client_frames_unmask_to_the_payload() {
        for len in [0usize, 5, 125, 126, 300, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let frame = client_frame(OPCODE_TEXT, &payload);
            assert_eq!(frame[0], 0x81);
            assert_eq!(frame[1] & 0x80, 0x80);
            let (head, length) = match frame[1] & 0x7f {
                126 => (4, u16::from_be_bytes([frame[2], frame[3]]) as usize),
                127 => (
                    10,
                    u64::from_be_bytes(frame[2..10].try_into().unwrap()) as usize,
                ),
                n => (2, n as usize),
            };
            assert_eq!(length, len);
            let mask = &frame[head..head + 4];
            let unmasked: Vec<u8> = frame[head + 4..]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            assert_eq!(unmasked, payload);
        }
    }

    #[test]
    fn frame_heads_need_more_bytes_without_consuming() {
        let frame = server_frame(OPCODE_TEXT, &[b'a'; 300]);
        assert_eq!(parse_frame_head(&frame[..1]), Ok(None));
        assert_eq!(parse_frame_head(&frame[..3]), Ok(None));
        let head = parse_frame_head(&frame).unwrap().unwrap();
        assert_eq!((head.head_len, head.payload_len, head.fin), (4, 300, true));
        assert_eq!(
            parse_frame_head(&[0x81, 0x85, 0, 0, 0, 0]),
            Err(WireError::MaskedServerFrame)
        );
        assert_eq!(
            parse_frame_head(&[0xC1, 0x00]),
            Err(WireError::ReservedBits)
        );
        let mut huge = vec![0x81, 127];
        huge.extend_from_slice(&(u64::MAX).to_be_bytes());
        assert!(matches!(
            parse_frame_head(&huge),
            Err(WireError::TooLarge(_))
        ));
    }

    #[test]
    fn classifies_gateway_and_reference_orders() {
        let gateway = br##"{"type":"event","seq":3,"stateVersion":9,"event":"task.output","payload":{"output":"#lt:42;xx"}}"##;
        assert_eq!(classify(gateway), MessageKind::Event(b"task.output"));
        assert_eq!(marker_id(gateway), Some(42));
        let reference =
            br##"{"type":"event","event":"task.output","payload":{"output":"#lt:7;"},"seq":1}"##;
        assert_eq!(classify(reference), MessageKind::Event(b"task.output"));
        assert_eq!(marker_id(reference), Some(7));
        assert_eq!(
            classify(br#"{"type":"res","id":"c","ok":true}"#),
            MessageKind::Response
        );
        assert_eq!(marker_id(b"#lt:;"), None);
        assert_eq!(marker_id(b"#lt:12x"), None);
        assert_eq!(marker_id(b"#lt:99999999999999999999999;"), None);
    }

    #[test]
    fn publish_lines_have_the_requested_length() {
        let line = publish_line(12345, 200);
        assert_eq!(line.len(), 200);
        assert_eq!(marker_id(&line), Some(12345));
        assert_eq!(publish_line(1, 2), b"#lt:1;");
    }

    #[test]
    fn http_responses_are_framed_by_content_length() {
        let response = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(parse_http_response(&response[..20]), Ok(None));
        assert_eq!(
            parse_http_response(&response[..response.len() - 1]),
            Ok(None)
        );
        let (status, body, total) = parse_http_response(response).unwrap().unwrap();
        assert_eq!(
            (status, &response[body], total),
            (200, &b"hello"[..], response.len())
        );
        assert!(parse_http_response(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
    }

    #[test]
    fn fields_are_read_by_scanning() {
        let message = br#"{"type":"res","id":"h3","ok":true,"payload":{"runId":"lt-1","seq":17}}"#;
        assert_eq!(string_field(message, "id"), Some("h3"));
        assert_eq!(string_field(message, "runId"), Some("lt-1"));
        assert_eq!(number_field(message, "seq", 0), Some(17));
        assert_eq!(number_field(message, "missing", 0), None);
        assert_eq!(
            check_upgrade(b"HTTP/1.1 101 Switching Protocols\r\n\r\n"),
            Ok(())
        );
        assert!(check_upgrade(b"HTTP/1.1 503 Service Unavailable\r\n\r\n").is_err());
    }
}
