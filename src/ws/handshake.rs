//! WebSocket upgrade validation and the 101 response (RFC 6455 §4.2). No subprotocol and no
//! extension is ever negotiated: an offered `permessage-deflate` is simply not echoed.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use crate::http::request::{Method, RequestHead};
use base64::Engine;
use sha1::{Digest, Sha1};

/// > RFC 6455 §1.3: the server has to … concatenate this with the Globally Unique Identifier
/// > "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Why an upgrade request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("WebSocket upgrade requires GET over HTTP/1.1")]
    NotGet,
    #[error("missing or invalid Sec-WebSocket-Key")]
    BadKey,
    #[error("unsupported Sec-WebSocket-Version")]
    BadVersion,
    #[error("Connection header lacks upgrade")]
    NoConnectionUpgrade,
}

impl HandshakeError {
    /// 426 with `Sec-WebSocket-Version: 13` for a version mismatch (RFC 6455 §4.4), else 400.
    pub fn status(self) -> u16 {
        match self {
            HandshakeError::BadVersion => 426,
            _ => 400,
        }
    }
}

fn has_token(value: Option<&str>, token: &str) -> bool {
    value.is_some_and(|value| {
        value
            .split(',')
            .any(|part| part.trim().eq_ignore_ascii_case(token))
    })
}

/// True when the request asks for a WebSocket (`Upgrade: websocket`).
pub fn is_upgrade_request(head: &RequestHead) -> bool {
    has_token(head.header_str("upgrade"), "websocket")
}

/// Checks the opening handshake and returns the `Sec-WebSocket-Accept` value.
pub fn accept_key(head: &RequestHead) -> Result<String, HandshakeError> {
    // > RFC 6455 §4.2.1: An HTTP/1.1 or higher GET request
    if head.method != Method::Get || head.version != 1 {
        return Err(HandshakeError::NotGet);
    }
    if !has_token(head.header_str("connection"), "upgrade") {
        return Err(HandshakeError::NoConnectionUpgrade);
    }
    if head.header_str("sec-websocket-version").map(str::trim) != Some("13") {
        return Err(HandshakeError::BadVersion);
    }
    // > RFC 6455 §4.2.1: A |Sec-WebSocket-Key| header field with a base64-encoded value that,
    // > when decoded, is 16 bytes in length.
    let key = head
        .header_str("sec-websocket-key")
        .map(str::trim)
        .ok_or(HandshakeError::BadKey)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(key)
        .map_err(|_| HandshakeError::BadKey)?;
    if decoded.len() != 16 || head.header_count("sec-websocket-key") != 1 {
        return Err(HandshakeError::BadKey);
    }
    Ok(derive_accept(key.as_bytes()))
}

/// `base64(SHA-1(key ++ GUID))`.
pub fn derive_accept(key: &[u8]) -> String {
    let mut hasher = Sha1::new();
    hasher.update(key);
    hasher.update(ACCEPT_GUID);
    base64::engine::general_purpose::STANDARD.encode(hasher.finalize())
}

/// The `101 Switching Protocols` response.
pub fn switching_protocols(accept: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\nX-Smithers-API-Version: v1\r\n\r\n"
    )
    .into_bytes()
}

/// A raw refusal of an upgrade (PROTOCOL.md §5.1): text body, `Connection: close`.
pub fn refusal(status: u16, body: &str) -> Vec<u8> {
    let extra = if status == 426 {
        "Sec-WebSocket-Version: 13\r\n"
    } else {
        ""
    };
    format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nX-Smithers-API-Version: v1\r\n{extra}Connection: close\r\n\r\n{body}",
        crate::http::response::reason_phrase(status),
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of RFC 6455 §1.3.
    #[test]
    fn accept_matches_the_rfc_example() {
        assert_eq!(
            derive_accept(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
