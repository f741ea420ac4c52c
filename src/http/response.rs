//! Responses the gateway writes itself: status line, the headers every response carries
//! (PROTOCOL.md §1), and the body. Builds bytes; never does IO.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

pub const CONTENT_TYPE_JSON: &str = "application/json";
pub const CONTENT_TYPE_TEXT: &str = "text/plain; charset=utf-8";
pub const CONTENT_TYPE_HTML: &str = "text/html; charset=utf-8";
pub const CONTENT_TYPE_PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A complete response, encoded by `encode`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub extra_headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: Vec<u8>) -> Response {
        Response {
            status,
            content_type,
            extra_headers: Vec::new(),
            body,
        }
    }

    pub fn json(status: u16, body: Vec<u8>) -> Response {
        Response::new(status, CONTENT_TYPE_JSON, body)
    }

    pub fn text(status: u16, body: &str) -> Response {
        Response::new(status, CONTENT_TYPE_TEXT, body.as_bytes().to_vec())
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.extra_headers.push((name, value.into()));
        self
    }

    /// Status line, headers and body. `keep_alive` picks the `Connection` header; `head_only`
    /// (a HEAD request) keeps `Content-Length` but drops the body.
    pub fn encode(&self, keep_alive: bool, head_only: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(192 + self.body.len());
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(self.status.to_string().as_bytes());
        out.push(b' ');
        out.extend_from_slice(reason_phrase(self.status).as_bytes());
        out.extend_from_slice(b"\r\nContent-Type: ");
        out.extend_from_slice(self.content_type.as_bytes());
        out.extend_from_slice(b"\r\nContent-Length: ");
        out.extend_from_slice(self.body.len().to_string().as_bytes());
        out.extend_from_slice(
            b"\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nX-Smithers-API-Version: v1\r\n",
        );
        for (name, value) in &self.extra_headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(if keep_alive {
            b"Connection: keep-alive\r\n\r\n"
        } else {
            b"Connection: close\r\n\r\n"
        });
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// The interim response sent before reading a body announced with `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        302 => "Found",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        414 => "URI Too Long",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carries_the_gateway_headers() {
        let response = Response::json(404, br#"{"error":1}"#.to_vec()).encode(false, false);
        let text = String::from_utf8_lossy(&response);
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
        for header in [
            "Content-Type: application/json\r\n",
            "Content-Length: 11\r\n",
            "Cache-Control: no-store\r\n",
            "X-Content-Type-Options: nosniff\r\n",
            "X-Smithers-API-Version: v1\r\n",
            "Connection: close\r\n",
        ] {
            assert!(text.contains(header), "{header}");
        }
        assert!(text.ends_with("\r\n\r\n{\"error\":1}"));
        let head = Response::text(200, "abc").encode(true, true);
        assert!(String::from_utf8_lossy(&head).ends_with("Content-Length: 3\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nX-Smithers-API-Version: v1\r\nConnection: keep-alive\r\n\r\n"));
    }
}
