//! Request heads: httparse for syntax, then the semantic checks of RFC 9112 that httparse leaves
//! to us (duplicate or signed Content-Length, CL with TE, unsupported TE, Host rules), and body
//! framing (Content-Length, chunked). Sans-IO: parsers return `Ok(None)` on incomplete input and
//! consume nothing.

/// Limits applied while parsing a head.
#[derive(Clone, Copy, Debug)]
pub struct HeadLimits {
    pub header_count_max: usize,
    /// Bytes of the whole head, request line included, up to and including the blank line.
    pub header_bytes_max: usize,
    pub request_line_bytes_max: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
    Other,
}

/// How the body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    ContentLength(u64),
    Chunked,
}

/// One header: the name lower-cased, the value as sent (trimmed of surrounding whitespace).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: Vec<u8>,
}

/// A parsed and checked request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    pub method: Method,
    /// The raw request target as sent (path and query).
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub headers: Vec<Header>,
    pub framing: BodyFraming,
    /// Whether the connection may carry another request after this one (version default,
    /// `Connection: close` / `keep-alive`).
    pub keep_alive: bool,
    /// `Expect: 100-continue` was sent.
    pub expect_continue: bool,
}

impl RequestHead {
    /// First value of a header by lower-case name.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        todo!("helper {name} {}", self.headers.len())
    }
    /// First value of a header as UTF-8 text (None when absent or not UTF-8).
    pub fn header_str(&self, name: &str) -> Option<&str> {
        todo!("helper {name}")
    }
    /// Number of headers with this lower-case name.
    pub fn header_count(&self, name: &str) -> usize {
        todo!("helper {name}")
    }
    /// The target without its query string.
    pub fn path(&self) -> &str {
        todo!()
    }
    /// The query string without `?`, when present.
    pub fn query(&self) -> Option<&str> {
        todo!()
    }
}

/// Why a head or body was refused. Each maps to one status; the connection is always closed after.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("request line too long")]
    RequestLineTooLong,
    #[error("too many headers")]
    TooManyHeaders,
    #[error("request header block too large")]
    HeadersTooLarge,
    #[error("duplicate or conflicting Content-Length")]
    ConflictingContentLength,
    #[error("invalid Content-Length")]
    InvalidContentLength,
    #[error("Content-Length together with Transfer-Encoding")]
    ContentLengthWithTransferEncoding,
    #[error("unsupported Transfer-Encoding")]
    UnsupportedTransferEncoding,
    #[error("Transfer-Encoding on HTTP/1.0")]
    TransferEncodingOnHttp10,
    #[error("missing Host header")]
    MissingHost,
    #[error("duplicate Host header")]
    DuplicateHost,
    #[error("unsupported HTTP version")]
    UnsupportedVersion,
    #[error("malformed chunked body")]
    MalformedChunk,
    #[error("body too large")]
    BodyTooLarge,
}

impl RequestError {
    /// 400 for malformed input and smuggling vectors, 414, 431, 413, 501 (unknown TE), 505.
    pub fn status(self) -> u16 {
        todo!("helper {self:?}")
    }
}

/// Parses a request head from the front of `buf`. `Ok(None)`: incomplete and within limits
/// (nothing consumed). `Ok(Some((head, n)))`: the head took `n` bytes; the body follows.
pub fn parse_head(buf: &[u8], limits: &HeadLimits) -> Result<Option<(RequestHead, usize)>, RequestError> {
    todo!("helper {} {limits:?}", buf.len())
}

/// Incremental decoder for a `Transfer-Encoding: chunked` body, bounded by `body_bytes_max`.
#[derive(Debug)]
pub struct ChunkedDecoder {
    body_bytes_max: usize,
}

impl ChunkedDecoder {
    pub fn new(body_bytes_max: usize) -> ChunkedDecoder {
        ChunkedDecoder { body_bytes_max }
    }

    /// Consumes bytes from the front of `input`, appending decoded body bytes to `body`. Returns
    /// how many bytes it consumed and whether the body (with its trailers) is complete.
    pub fn decode(&mut self, input: &[u8], body: &mut Vec<u8>) -> Result<(usize, bool), RequestError> {
        todo!("helper {} {} {}", input.len(), body.len(), self.body_bytes_max)
    }
}
