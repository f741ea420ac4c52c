//! Request heads: httparse for syntax, then the semantic checks of RFC 9112 that httparse leaves
//! to us (duplicate or signed Content-Length, CL with TE, unsupported TE, Host rules), and body
//! framing (Content-Length, chunked). Sans-IO: parsers return `Ok(None)` on incomplete input and
//! consume nothing.
//!
//! This module owns the decision of where a request head ends and how its body is delimited, so
//! it is the gateway's request-smuggling boundary. It must never do IO, never allocate without a
//! bound taken from the limits, never guess when framing is ambiguous (ambiguity is an error and
//! the connection closes), and never panic on any input.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

/// Limits applied while parsing a head.
#[derive(Clone, Copy, Debug)]
pub struct HeadLimits {
    pub header_count_max: usize,
    /// Bytes of the whole head, request line included, up to and including the blank line.
    pub header_bytes_max: usize,
    pub request_line_bytes_max: usize,
}

impl Default for HeadLimits {
    /// The gateway defaults (`GatewayConfig`): 100 headers, a 16 KiB head, an 8 KiB request line.
    fn default() -> Self {
        HeadLimits {
            header_count_max: 100,
            header_bytes_max: 16 * 1024,
            request_line_bytes_max: 8 * 1024,
        }
    }
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

impl Method {
    /// Maps a method token. RFC 9110 §9.1: "The method token is case-sensitive", so `get` is
    /// `Other`, not `Get`.
    fn from_token(token: &str) -> Method {
        match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            _ => Method::Other,
        }
    }
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
        self.headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| h.value.as_slice())
    }
    /// First value of a header as UTF-8 text (None when absent or not UTF-8).
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }
    /// Number of headers with this lower-case name.
    pub fn header_count(&self, name: &str) -> usize {
        self.headers.iter().filter(|h| h.name == name).count()
    }
    /// The target without its query string.
    pub fn path(&self) -> &str {
        match self.target.split_once('?') {
            Some((path, _)) => path,
            None => &self.target,
        }
    }
    /// The query string without `?`, when present.
    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, query)| query)
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
        match self {
            RequestError::Malformed(_)
            | RequestError::ConflictingContentLength
            | RequestError::InvalidContentLength
            | RequestError::ContentLengthWithTransferEncoding
            | RequestError::TransferEncodingOnHttp10
            | RequestError::MissingHost
            | RequestError::DuplicateHost
            | RequestError::MalformedChunk => 400,
            RequestError::RequestLineTooLong => 414,
            RequestError::TooManyHeaders | RequestError::HeadersTooLarge => 431,
            RequestError::BodyTooLarge => 413,
            RequestError::UnsupportedTransferEncoding => 501,
            RequestError::UnsupportedVersion => 505,
        }
    }
}

/// Header arrays up to this many entries live on the stack; larger limits allocate one `Vec`.
const STACK_HEADERS: usize = 128;

/// Parses a request head from the front of `buf`. `Ok(None)`: incomplete and within limits
/// (nothing consumed). `Ok(Some((head, n)))`: the head took `n` bytes; the body follows.
pub fn parse_head(
    buf: &[u8],
    limits: &HeadLimits,
) -> Result<Option<(RequestHead, usize)>, RequestError> {
    check_request_line_length(buf, limits.request_line_bytes_max)?;

    // httparse only ever sees the first `header_bytes_max` bytes: a head that does not end within
    // them is too large whatever follows, and this keeps each call O(limit) however much the
    // caller has buffered (pipelined bodies, a flood).
    let window = buf.get(..limits.header_bytes_max).unwrap_or(buf);

    let mut stack = [httparse::EMPTY_HEADER; STACK_HEADERS];
    let mut heap;
    let slots: &mut [httparse::Header<'_>] = match stack.get_mut(..limits.header_count_max) {
        Some(slots) => slots,
        None => {
            heap = vec![httparse::EMPTY_HEADER; limits.header_count_max];
            &mut heap
        }
    };
    let mut req = httparse::Request::new(slots);
    let n = match req.parse(window) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > limits.header_bytes_max {
                return Err(RequestError::HeadersTooLarge);
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(RequestError::TooManyHeaders),
        Err(httparse::Error::Version) => return Err(version_error(window)),
        Err(e) => return Err(RequestError::Malformed(httparse_reason(e))),
    };
    // `window` is at most `header_bytes_max` long, so `n` is within the limit; kept as a guard in
    // case the windowing above ever changes.
    if n > limits.header_bytes_max {
        return Err(RequestError::HeadersTooLarge);
    }

    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        // Complete implies all three are set; refuse rather than panic if that ever changes.
        return Err(RequestError::Malformed("incomplete request line"));
    };
    let head = check_head(Method::from_token(method), target, version, req.headers)?;
    Ok(Some((head, n)))
}

/// Enforces `request_line_bytes_max` on the request line (without its line terminator), complete
/// or not. RFC 9112 §3: "A server that receives a request-target longer than any URI it wishes to
/// parse MUST respond with a 414 (URI Too Long) status code". Leading empty lines are skipped as
/// httparse does (RFC 9112 §2.2: "a server that is expecting to receive and parse a request-line
/// SHOULD ignore at least one empty line (CRLF) received prior to the request-line"); they count
/// against `header_bytes_max` instead.
fn check_request_line_length(buf: &[u8], max: usize) -> Result<(), RequestError> {
    let mut rest = buf;
    loop {
        if let Some(r) = rest.strip_prefix(b"\r\n") {
            rest = r;
        } else if let Some(r) = rest.strip_prefix(b"\n") {
            rest = r;
        } else {
            break;
        }
    }
    // Look no further than one line of the maximum length plus its CRLF.
    let probe = rest.get(..max.saturating_add(2)).unwrap_or(rest);
    let line = match probe.iter().position(|&b| b == b'\n') {
        Some(end) => probe.get(..end).unwrap_or(probe),
        None => probe,
    };
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() > max {
        return Err(RequestError::RequestLineTooLong);
    }
    Ok(())
}

/// httparse reports any version other than `HTTP/1.0` and `HTTP/1.1` as `Error::Version`. A
/// well-formed `HTTP/x.y` we do not speak is a 505; anything else is a malformed request line.
/// A version split across reads (`HTTP/2` before `.0` arrives) gets the 400: either way the
/// connection closes.
fn version_error(buf: &[u8]) -> RequestError {
    let line_end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    let Some(line) = buf.get(..line_end) else {
        return RequestError::Malformed("invalid HTTP version");
    };
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    // Exactly `method SP request-target SP HTTP-version`: with a third space ("GET /a b HTTP/2.0")
    // the version is not where httparse looked, and the line is malformed rather than versioned.
    let mut parts = line.split(|&b| b == b' ');
    let (Some(_), Some(_), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return RequestError::Malformed("invalid request line");
    };
    match version {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            RequestError::UnsupportedVersion
        }
        _ => RequestError::Malformed("invalid HTTP version"),
    }
}

fn httparse_reason(e: httparse::Error) -> &'static str {
    match e {
        // Includes obs-fold and whitespace between name and colon. RFC 9112 §5.1: "A server MUST
        // reject, with a response status code of 400 (Bad Request), any received request message
        // that contains whitespace between a header field name and colon." RFC 9112 §5.2: a
        // server that receives an obs-fold in a request "MUST either reject the message by
        // sending a 400 (Bad Request) [...]".
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Token => "invalid token in request line",
        httparse::Error::Version => "invalid HTTP version",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Status => "invalid status",
    }
}

/// Trims optional whitespace (SP / HTAB) from both ends of a field value (RFC 9110 §5.5).
fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |i| i + 1);
    v.get(start..end).unwrap_or_default()
}

/// Comma-separated list members, trimmed, empty members dropped (RFC 9110 §5.6.1).
fn list_members(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',')
        .map(trim_ows)
        .filter(|m| !m.is_empty())
}

/// `Content-Length = 1*DIGIT`, parsed by hand: `str::parse` would accept `+5`, and RFC 9112 §6.3
/// asks that "Recipients MUST anticipate potentially large decimal numerals and prevent parsing
/// errors due to integer conversion overflows or precision loss due to integer representation"
/// (RFC 9110 §8.6), hence the checked arithmetic.
fn parse_content_length(v: &[u8]) -> Result<u64, RequestError> {
    if v.contains(&b',') {
        // RFC 9112 §6.3 would let us collapse "5, 5" into 5. As an origin server we refuse any
        // list: a front end that picked a different member is exactly the smuggling we prevent.
        return Err(RequestError::ConflictingContentLength);
    }
    if v.is_empty() {
        return Err(RequestError::InvalidContentLength);
    }
    let mut n: u64 = 0;
    for &b in v {
        if !b.is_ascii_digit() {
            return Err(RequestError::InvalidContentLength);
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or(RequestError::InvalidContentLength)?;
    }
    Ok(n)
}

/// `Host = uri-host [ ":" port ]`: reg-name, IPv4 or an IP literal in brackets, all of which use
/// only these bytes. An empty value is allowed (RFC 9112 §3.2: a target without authority is sent
/// with "a Host header field with an empty field value").
fn host_is_valid(v: &[u8]) -> bool {
    v.iter()
        .all(|&b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=:[]".contains(&b))
}

/// The semantic checks of RFC 9112 on a syntactically valid head, and its framing.
fn check_head(
    method: Method,
    target: &str,
    version: u8,
    raw_headers: &[httparse::Header<'_>],
) -> Result<RequestHead, RequestError> {
    let mut headers = Vec::with_capacity(raw_headers.len());
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding: Option<usize> = None;
    let mut host_seen = false;
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    let mut expect_continue = false;

    for raw in raw_headers {
        let name = raw.name.to_ascii_lowercase();
        let value = trim_ows(raw.value);
        match name.as_str() {
            "content-length" => {
                // RFC 9112 §6.3: "If a message is received without Transfer-Encoding and with an
                // invalid Content-Length header field, then the message framing is invalid and
                // the recipient MUST treat it as an unrecoverable error [...]. If this is a
                // request message, the server MUST respond with a 400 (Bad Request) status code
                // and then close the connection." Two field lines, even identical, are refused:
                // we never pick one of several framings.
                if content_length.is_some() {
                    return Err(RequestError::ConflictingContentLength);
                }
                content_length = Some(parse_content_length(value)?);
            }
            "transfer-encoding" => {
                // Two field lines would be one list (RFC 9110 §5.3), but intermediaries disagree
                // on combining them; refuse rather than guess.
                if transfer_encoding.is_some() {
                    return Err(RequestError::Malformed("duplicate Transfer-Encoding"));
                }
                transfer_encoding = Some(headers.len());
            }
            "host" => {
                // RFC 9112 §3.2: "A server MUST respond with a 400 (Bad Request) status code to
                // any HTTP/1.1 request message that lacks a Host header field and to any request
                // message that contains more than one Host header field line or a Host header
                // field with an invalid field value."
                if host_seen {
                    return Err(RequestError::DuplicateHost);
                }
                if !host_is_valid(value) {
                    return Err(RequestError::Malformed("invalid Host header"));
                }
                host_seen = true;
            }
            "connection" => {
                for option in list_members(value) {
                    if option.eq_ignore_ascii_case(b"close") {
                        conn_close = true;
                    } else if option.eq_ignore_ascii_case(b"keep-alive") {
                        conn_keep_alive = true;
                    }
                }
            }
            // RFC 9110 §10.1.1: "A server that receives a 100-continue expectation in an
            // HTTP/1.0 request MUST ignore that expectation."
            "expect" if version == 1 && value.eq_ignore_ascii_case(b"100-continue") => {
                expect_continue = true;
            }
            _ => {}
        }
        headers.push(Header {
            name,
            value: value.to_vec(),
        });
    }

    let framing = match transfer_encoding {
        Some(index) => {
            // RFC 9112 §6.1: "A server or client that receives an HTTP/1.0 message containing a
            // Transfer-Encoding header field MUST treat the message as if the framing is faulty,
            // even if a Content-Length is present, and close the connection after processing the
            // message."
            if version == 0 {
                return Err(RequestError::TransferEncodingOnHttp10);
            }
            // RFC 9112 §6.1: "A server MAY reject a request that contains both Content-Length
            // and Transfer-Encoding or process such a request in accordance with the
            // Transfer-Encoding alone. Regardless, the server MUST close the connection after
            // responding to such a request to avoid the potential attacks." We reject.
            if content_length.is_some() {
                return Err(RequestError::ContentLengthWithTransferEncoding);
            }
            let value = headers
                .get(index)
                .map(|h| h.value.as_slice())
                .unwrap_or_default();
            check_transfer_encoding(value)?;
            BodyFraming::Chunked
        }
        // RFC 9112 §6.3: "If a valid Content-Length header field is present without
        // Transfer-Encoding, its decimal value defines the expected message body length in
        // octets."
        None => match content_length {
            Some(n) => BodyFraming::ContentLength(n),
            // RFC 9112 §6.3: "If this is a request message and none of the above are true, then
            // the message body length is zero (no message body is present)."
            None => BodyFraming::None,
        },
    };

    // RFC 9112 §3.2, quoted above: HTTP/1.1 requires Host; HTTP/1.0 predates it.
    if version == 1 && !host_seen {
        return Err(RequestError::MissingHost);
    }

    // RFC 9112 §9.3: "If the "close" connection option is present, the connection will not persist
    // after the current response; else, If the received protocol is HTTP/1.1 (or later), the
    // connection will persist after the current response; else, If the received protocol is
    // HTTP/1.0, the "keep-alive" connection option is present, [...] the connection will persist
    // after the current response; otherwise, the connection will close after the current
    // response."
    let keep_alive = !conn_close && (version == 1 || conn_keep_alive);

    Ok(RequestHead {
        method,
        target: target.to_owned(),
        version,
        headers,
        framing,
        keep_alive,
        expect_continue,
    })
}

/// Only `chunked` alone is supported.
fn check_transfer_encoding(value: &[u8]) -> Result<(), RequestError> {
    let codings: Vec<&[u8]> = list_members(value).take(16).collect();
    let is_chunked = |c: &&[u8]| c.eq_ignore_ascii_case(b"chunked");
    match codings.split_last() {
        Some((last, earlier)) if is_chunked(last) => {
            // RFC 9112 §6.1: "A sender MUST NOT apply the chunked transfer coding more than once
            // to a message body".
            if earlier.iter().any(is_chunked) {
                return Err(RequestError::Malformed("chunked applied more than once"));
            }
            if !earlier.is_empty() {
                // RFC 9112 §6.1: "A server that receives a request message with a transfer
                // coding it does not understand SHOULD respond with 501 (Not Implemented)."
                return Err(RequestError::UnsupportedTransferEncoding);
            }
            Ok(())
        }
        // RFC 9112 §6.3: "If a Transfer-Encoding header field is present in a request and the
        // chunked transfer coding is not the final encoding, the message body length cannot be
        // determined reliably; the server MUST respond with the 400 (Bad Request) status code and
        // then close the connection." An empty value has no final coding either.
        _ => Err(RequestError::Malformed(
            "chunked is not the final transfer coding",
        )),
    }
}

/// Longest chunk-size line we accept, extensions included. RFC 9112 §7.1.1: "A server ought to
/// limit the total length of chunk extensions received in a request to an amount reasonable for
/// the services provided [...] and generate an appropriate 4xx (Client Error) response if that
/// amount is exceeded."
const CHUNK_SIZE_LINE_MAX: usize = 4096;
/// Total bytes of trailer lines we skip before refusing the body.
const TRAILERS_MAX: usize = 8 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkState {
    /// Expecting a chunk-size line.
    Size,
    /// Inside chunk data with this many bytes left.
    Data(u64),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// After the last chunk: trailer lines, having skipped this many bytes of them.
    Trailers(usize),
    Done,
}

/// Incremental decoder for a `Transfer-Encoding: chunked` body, bounded by `body_bytes_max`.
#[derive(Debug)]
pub struct ChunkedDecoder {
    body_bytes_max: usize,
    state: ChunkState,
    /// Body bytes announced so far (by chunk sizes), checked against `body_bytes_max` before any
    /// data is buffered.
    announced: u64,
}

impl ChunkedDecoder {
    pub fn new(body_bytes_max: usize) -> ChunkedDecoder {
        ChunkedDecoder {
            body_bytes_max,
            state: ChunkState::Size,
            announced: 0,
        }
    }

    /// Consumes bytes from the front of `input`, appending decoded body bytes to `body`. Returns
    /// how many bytes it consumed and whether the body (with its trailers) is complete.
    pub fn decode(
        &mut self,
        input: &[u8],
        body: &mut Vec<u8>,
    ) -> Result<(usize, bool), RequestError> {
        let mut pos = 0usize;
        loop {
            let rest = input.get(pos..).unwrap_or_default();
            match self.state {
                ChunkState::Done => return Ok((pos, true)),
                ChunkState::Size => {
                    let Some((line_len, size)) = self.size_line(rest)? else {
                        return Ok((pos, false));
                    };
                    pos += line_len;
                    if size == 0 {
                        // RFC 9112 §7.1: "The chunked transfer coding is complete when a chunk
                        // with a chunk-size of zero is received, possibly followed by a trailer
                        // section, and finally terminated by an empty line."
                        self.state = ChunkState::Trailers(0);
                    } else {
                        self.announced = self
                            .announced
                            .checked_add(size)
                            .ok_or(RequestError::BodyTooLarge)?;
                        if self.announced > self.body_bytes_max as u64 {
                            return Err(RequestError::BodyTooLarge);
                        }
                        self.state = ChunkState::Data(size);
                    }
                }
                ChunkState::Data(left) => {
                    if rest.is_empty() {
                        return Ok((pos, false));
                    }
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(rest.len());
                    body.extend_from_slice(rest.get(..take).unwrap_or_default());
                    pos += take;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                }
                ChunkState::DataEnd => match rest {
                    // RFC 9112 §7.1: `chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF`;
                    // a bare LF is accepted as for the head (RFC 9112 §2.2), nothing else.
                    [b'\r', b'\n', ..] => {
                        pos += 2;
                        self.state = ChunkState::Size;
                    }
                    [b'\n', ..] => {
                        pos += 1;
                        self.state = ChunkState::Size;
                    }
                    [] | [b'\r'] => return Ok((pos, false)),
                    _ => return Err(RequestError::MalformedChunk),
                },
                ChunkState::Trailers(seen) => {
                    let budget = TRAILERS_MAX.saturating_sub(seen);
                    let probe = rest.get(..budget.saturating_add(1)).unwrap_or(rest);
                    let Some(nl) = probe.iter().position(|&b| b == b'\n') else {
                        if probe.len() > budget {
                            return Err(RequestError::MalformedChunk);
                        }
                        return Ok((pos, false));
                    };
                    let line = probe.get(..nl).unwrap_or_default();
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    pos += nl + 1;
                    if line.is_empty() {
                        self.state = ChunkState::Done;
                        return Ok((pos, true));
                    }
                    // Trailer fields are skipped, never merged into the head (RFC 9110 §6.5.1
                    // lets us discard them), but they must still look like field lines so that a
                    // desynchronised peer is caught here rather than later.
                    if !trailer_line_is_valid(line) {
                        return Err(RequestError::MalformedChunk);
                    }
                    let seen = seen + nl + 1;
                    if seen > TRAILERS_MAX {
                        return Err(RequestError::MalformedChunk);
                    }
                    self.state = ChunkState::Trailers(seen);
                }
            }
        }
    }

    /// Parses one chunk-size line from the front of `rest`: `Ok(None)` when it is not complete
    /// yet, else its length with terminator and the chunk size.
    fn size_line(&self, rest: &[u8]) -> Result<Option<(usize, u64)>, RequestError> {
        let probe = rest.get(..CHUNK_SIZE_LINE_MAX + 1).unwrap_or(rest);
        let Some(nl) = probe.iter().position(|&b| b == b'\n') else {
            if probe.len() > CHUNK_SIZE_LINE_MAX {
                return Err(RequestError::MalformedChunk);
            }
            return Ok(None);
        };
        let with_crlf = probe.get(..nl).is_some_and(|l| l.ends_with(b"\r"));
        let line = probe.get(..nl).unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        // RFC 9112 §7.1: `chunk-size = 1*HEXDIG`. httparse reads an empty size as 0, which would
        // end the body early.
        if !line.first().is_some_and(u8::is_ascii_hexdigit) {
            return Err(RequestError::MalformedChunk);
        }
        // httparse accepts any byte inside extensions, bare CR and LF included; a line break
        // hidden there is read differently by other parsers, so no CTL other than HTAB.
        if line.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(RequestError::MalformedChunk);
        }
        // httparse wants CRLF; give it one when the peer sent a bare LF (a short, bounded copy).
        let parsed = if with_crlf {
            httparse::parse_chunk_size(probe.get(..=nl).unwrap_or_default())
        } else {
            let mut owned = Vec::with_capacity(line.len() + 2);
            owned.extend_from_slice(line);
            owned.extend_from_slice(b"\r\n");
            httparse::parse_chunk_size(&owned)
        };
        match parsed {
            // RFC 9112 §7.1: "Recipients MUST anticipate potentially large hexadecimal numerals
            // and prevent parsing errors due to integer conversion overflows"; httparse refuses
            // more than 16 digits and we bound the total by `body_bytes_max`.
            Ok(httparse::Status::Complete((_, size))) => Ok(Some((nl + 1, size))),
            Ok(httparse::Status::Partial) | Err(_) => Err(RequestError::MalformedChunk),
        }
    }
}

/// `field-name ":" OWS field-value OWS` with a token name and no CTL but HTAB in the value.
fn trailer_line_is_valid(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    let (name, value) = line.split_at(colon);
    !name.is_empty()
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        && value
            .iter()
            .all(|&b| !((b < 0x20 && b != b'\t') || b == 0x7f))
}

/// Properties shared by the `http_request` fuzz target and the committed seed replay
/// (`fuzz_seeds_http`); panics when one is violated. Parses pipelined heads with the default
/// limits and, for each, checks the head against itself re-parsed alone, then decodes a chunked
/// body both in one call and byte by byte and requires the same outcome. Not part of the API.
#[doc(hidden)]
pub fn check_parse_properties(buf: &[u8]) {
    let limits = HeadLimits::default();
    let mut rest = buf;
    // Every head takes at least one byte, so the loop ends; the cap keeps fuzz runs fast.
    for _ in 0..32 {
        let (head, n) = match parse_head(rest, &limits) {
            Ok(Some(found)) => found,
            Ok(None) => {
                assert!(
                    rest.len() <= limits.header_bytes_max,
                    "Ok(None) past header_bytes_max"
                );
                return;
            }
            Err(e) => {
                assert!(
                    matches!(e.status(), 400 | 413 | 414 | 431 | 501 | 505),
                    "unexpected status for {e:?}"
                );
                return;
            }
        };
        assert!(
            n > 0 && n <= rest.len(),
            "head length {n} outside 1..={}",
            rest.len()
        );
        assert!(n <= limits.header_bytes_max, "head of {n} bytes accepted");
        let Some((head_bytes, after)) = rest.split_at_checked(n) else {
            panic!("head length {n} past the buffer");
        };
        assert_eq!(
            parse_head(head_bytes, &limits),
            Ok(Some((head.clone(), n))),
            "head alone differs"
        );
        if let Some(short) = head_bytes.get(..n - 1) {
            assert_eq!(
                parse_head(short, &limits),
                Ok(None),
                "a strict prefix of a head is not incomplete"
            );
        }
        assert!(head.version <= 1);
        assert!(
            head.version == 0 || head.header_count("host") == 1,
            "HTTP/1.1 without exactly one Host"
        );
        assert!(head.header_count("content-length") <= 1);
        assert!(head.header_count("transfer-encoding") <= 1);
        for h in &head.headers {
            assert!(
                !h.name.bytes().any(|b| b.is_ascii_uppercase()),
                "header name not lower-cased"
            );
            assert_eq!(
                trim_ows(&h.value),
                h.value.as_slice(),
                "header value not trimmed"
            );
        }
        let body_len = match head.framing {
            BodyFraming::None => 0,
            BodyFraming::ContentLength(len) => {
                assert!(head.header_count("transfer-encoding") == 0);
                match usize::try_from(len) {
                    Ok(len) if len <= after.len() => len,
                    _ => return,
                }
            }
            BodyFraming::Chunked => {
                assert!(head.version == 1 && head.header_count("content-length") == 0);
                match check_chunked_properties(after) {
                    Some(consumed) => consumed,
                    None => return,
                }
            }
        };
        rest = after.get(body_len..).unwrap_or_default();
        if rest.is_empty() {
            return;
        }
    }
}

/// Decodes `input` in one call and byte by byte; both must agree. Returns the bytes the body took
/// when it is complete.
fn check_chunked_properties(input: &[u8]) -> Option<usize> {
    const BODY_MAX: usize = 64 * 1024;
    let mut whole = ChunkedDecoder::new(BODY_MAX);
    let mut whole_body = Vec::new();
    let whole_result = whole.decode(input, &mut whole_body);
    if let Ok((consumed, _)) = whole_result {
        assert!(
            consumed <= input.len(),
            "chunked decoder consumed {consumed} of {}",
            input.len()
        );
    }
    assert!(
        whole_body.len() <= BODY_MAX,
        "decoded body past body_bytes_max"
    );

    let mut split = ChunkedDecoder::new(BODY_MAX);
    let mut split_body = Vec::new();
    let mut pending = Vec::new();
    let mut total = 0usize;
    let mut split_result = Ok((0, false));
    for &b in input {
        pending.push(b);
        match split.decode(&pending, &mut split_body) {
            Ok((consumed, complete)) => {
                assert!(
                    consumed <= pending.len(),
                    "chunked decoder consumed past its input"
                );
                pending.drain(..consumed);
                total += consumed;
                split_result = Ok((total, complete));
                if complete {
                    break;
                }
            }
            Err(e) => {
                split_result = Err(e);
                break;
            }
        }
    }
    assert_eq!(
        whole_result, split_result,
        "chunked decoding depends on fragmentation"
    );
    if whole_result.is_ok() {
        assert_eq!(
            whole_body, split_body,
            "chunked body depends on fragmentation"
        );
    }
    match whole_result {
        Ok((consumed, true)) => Some(consumed),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[derive(Debug)]
    enum Want {
        Incomplete,
        Err(RequestError),
        /// Any error with this status (the exact httparse reason does not matter).
        Status(u16),
        Head {
            method: Method,
            target: &'static str,
            version: u8,
            framing: BodyFraming,
            keep_alive: bool,
            expect_continue: bool,
        },
    }

    fn head(method: Method, target: &'static str, version: u8) -> Want {
        Want::Head {
            method,
            target,
            version,
            framing: BodyFraming::None,
            keep_alive: version == 1,
            expect_continue: false,
        }
    }

    fn get11() -> Want {
        head(Method::Get, "/", 1)
    }

    impl Want {
        fn framing(mut self, f: BodyFraming) -> Want {
            if let Want::Head { framing, .. } = &mut self {
                *framing = f;
            }
            self
        }
        fn keep_alive(mut self, k: bool) -> Want {
            if let Want::Head { keep_alive, .. } = &mut self {
                *keep_alive = k;
            }
            self
        }
        fn expect_continue(mut self) -> Want {
            if let Want::Head {
                expect_continue, ..
            } = &mut self
            {
                *expect_continue = true;
            }
            self
        }
    }

    fn check(input: &[u8], want: Want) {
        check_limits(&HeadLimits::default(), input, want);
    }

    fn check_limits(limits: &HeadLimits, input: &[u8], want: Want) {
        let got = parse_head(input, limits);
        let shown = String::from_utf8_lossy(input.get(..input.len().min(200)).unwrap());
        match (&want, &got) {
            (Want::Incomplete, Ok(None)) => {}
            (Want::Err(e), Err(g)) if e == g => {}
            (Want::Status(s), Err(g)) if *s == g.status() => {}
            (
                Want::Head {
                    method,
                    target,
                    version,
                    framing,
                    keep_alive,
                    expect_continue,
                },
                Ok(Some((h, n))),
            ) if h.method == *method
                && h.target == *target
                && h.version == *version
                && h.framing == *framing
                && h.keep_alive == *keep_alive
                && h.expect_continue == *expect_continue
                && *n == input.len() => {}
            _ => panic!("input {shown:?}: want {want:?}, got {got:?}"),
        }
    }

    /// `GET / HTTP/1.1` with Host and the given extra header lines.
    fn req11(extra: &str) -> Vec<u8> {
        format!("GET / HTTP/1.1\r\nHost: example.com\r\n{extra}\r\n").into_bytes()
    }

    #[test]
    fn heads() {
        use RequestError::*;
        let cases: Vec<(Vec<u8>, Want)> = vec![
            // Valid requests.
            (req11(""), get11()),
            (
                b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
                head(Method::Get, "/health", 1),
            ),
            (b"GET / HTTP/1.1\nHost: a\n\n".to_vec(), get11()),
            (b"GET / HTTP/1.1\r\nHost: a\n\r\n".to_vec(), get11()),
            (b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(), get11()),
            (b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(), get11()),
            (
                b"GET / HTTP/1.0\r\n\r\n".to_vec(),
                head(Method::Get, "/", 0),
            ),
            (
                b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
                head(Method::Head, "/", 1),
            ),
            (
                b"PUT /x HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
                head(Method::Put, "/x", 1),
            ),
            (
                b"PATCH /x HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
                head(Method::Patch, "/x", 1),
            ),
            (
                b"DELETE /x HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
                head(Method::Delete, "/x", 1),
            ),
            (
                b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
                head(Method::Options, "*", 1),
            ),
            (
                b"PROPFIND / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
                head(Method::Other, "/", 1),
            ),
            // Methods are case-sensitive (RFC 9110 §9.1).
            (
                b"get / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
                head(Method::Other, "/", 1),
            ),
            (
                b"GET http://a/b?c HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
                head(Method::Get, "http://a/b?c", 1),
            ),
            (b"GET / HTTP/1.1\r\nHost:\r\n\r\n".to_vec(), get11()),
            (
                b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n".to_vec(),
                get11(),
            ),
            (req11("X-Empty:\r\n"), get11()),
            (req11("X-Empty: \t \r\n"), get11()),
            (req11("X-Obs: café\r\n"), get11()),
            // Expect.
            (req11("Expect: 100-continue\r\n"), get11().expect_continue()),
            (
                req11("Expect: 100-Continue \r\n"),
                get11().expect_continue(),
            ),
            (req11("Expect: something-else\r\n"), get11()),
            (
                b"GET / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n".to_vec(),
                head(Method::Get, "/", 0),
            ),
            // Keep-alive.
            (req11("Connection: close\r\n"), get11().keep_alive(false)),
            (
                req11("Connection: Upgrade, CLOSE\r\n"),
                get11().keep_alive(false),
            ),
            (req11("Connection: keep-alive\r\n"), get11()),
            (
                req11("Connection: upgrade\r\nConnection: close\r\n"),
                get11().keep_alive(false),
            ),
            (
                b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".to_vec(),
                head(Method::Get, "/", 0).keep_alive(true),
            ),
            (
                b"GET / HTTP/1.0\r\nConnection: Keep-Alive, x\r\n\r\n".to_vec(),
                head(Method::Get, "/", 0).keep_alive(true),
            ),
            (
                b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n".to_vec(),
                head(Method::Get, "/", 0),
            ),
            (
                b"GET / HTTP/1.0\r\nConnection: keep-alivex\r\n\r\n".to_vec(),
                head(Method::Get, "/", 0),
            ),
            // Request line and version.
            (b"GET /\r\nHost: a\r\n\r\n".to_vec(), Want::Status(400)),
            (b"GET / \r\nHost: a\r\n\r\n".to_vec(), Want::Status(400)),
            (b"GET\r\n\r\n".to_vec(), Want::Status(400)),
            (
                b"GET / HTTP/1.2\r\nHost: a\r\n\r\n".to_vec(),
                Want::Err(UnsupportedVersion),
            ),
            (
                b"GET / HTTP/2.0\r\nHost: a\r\n\r\n".to_vec(),
                Want::Err(UnsupportedVersion),
            ),
            (
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
                Want::Err(UnsupportedVersion),
            ),
            (
                b"GET / HTTP/0.9\r\n\r\n".to_vec(),
                Want::Err(UnsupportedVersion),
            ),
            (
                b"GET / HTTP/1.1x\r\nHost: a\r\n\r\n".to_vec(),
                Want::Status(400),
            ),
            (
                b"GET / HTTP/11\r\nHost: a\r\n\r\n".to_vec(),
                Want::Status(400),
            ),
            (
                b"GET / http/1.1\r\nHost: a\r\n\r\n".to_vec(),
                Want::Status(400),
            ),
            (
                b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n".to_vec(),
                Want::Status(400),
            ),
            (
                b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
                Want::Status(400),
            ),
            (
                b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
                Want::Status(400),
            ),
            (
                b"GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
                Want::Status(400),
            ),
            (
                b" GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
                Want::Status(400),
            ),
            (
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
                Want::Status(400),
            ),
            (b"\r\r\nGET / HTTP/1.1\r\n".to_vec(), Want::Status(400)),
            (
                b"GET / HTTP/1.1\r\r\nHost: a\r\n\r\n".to_vec(),
                Want::Status(400),
            ),
            // Header syntax (httparse).
            (req11("Ho st: a\r\n"), Want::Status(400)),
            (req11("X-A : a\r\n"), Want::Status(400)),
            (req11("X-A\t: a\r\n"), Want::Status(400)),
            (req11(": a\r\n"), Want::Status(400)),
            (req11("X\x00: a\r\n"), Want::Status(400)),
            (req11("X-A: a\x00b\r\n"), Want::Status(400)),
            (req11("X-A: a\x01b\r\n"), Want::Status(400)),
            (req11("X-A: a\x7fb\r\n"), Want::Status(400)),
            (req11("X-A: a\rb\r\n"), Want::Status(400)),
            (req11("X-A: a\r\n b\r\n"), Want::Status(400)),
            (req11("X-A: a\r\n\tb\r\n"), Want::Status(400)),
            (
                b"GET / HTTP/1.1\r\n Host: a\r\n\r\n".to_vec(),
                Want::Status(400),
            ),
            (req11("X-A\r\n"), Want::Status(400)),
            // Host (RFC 9112 §3.2).
            (b"GET / HTTP/1.1\r\n\r\n".to_vec(), Want::Err(MissingHost)),
            (
                b"GET / HTTP/1.1\r\nX-Host: a\r\n\r\n".to_vec(),
                Want::Err(MissingHost),
            ),
            (req11("Host: example.com\r\n"), Want::Err(DuplicateHost)),
            (req11("HOST: other\r\n"), Want::Err(DuplicateHost)),
            (
                b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(),
                Want::Err(DuplicateHost),
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n".to_vec(),
                Want::Status(400),
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n".to_vec(),
                Want::Status(400),
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a@b\r\n\r\n".to_vec(),
                Want::Status(400),
            ),
            // Content-Length (RFC 9112 §6.3).
            (
                req11("Content-Length: 5\r\n"),
                get11().framing(BodyFraming::ContentLength(5)),
            ),
            (
                req11("Content-Length: 0\r\n"),
                get11().framing(BodyFraming::ContentLength(0)),
            ),
            (
                req11("content-LENGTH: 007\r\n"),
                get11().framing(BodyFraming::ContentLength(7)),
            ),
            (
                req11("Content-Length:  5 \r\n"),
                get11().framing(BodyFraming::ContentLength(5)),
            ),
            (
                req11("Content-Length:\t5\t\r\n"),
                get11().framing(BodyFraming::ContentLength(5)),
            ),
            (
                req11("Content-Length: 18446744073709551615\r\n"),
                get11().framing(BodyFraming::ContentLength(u64::MAX)),
            ),
            (
                req11("Content-Length: 18446744073709551616\r\n"),
                Want::Err(InvalidContentLength),
            ),
            (
                req11("Content-Length: 99999999999999999999999\r\n"),
                Want::Err(InvalidContentLength),
            ),
            (
                req11("Content-Length: -5\r\n"),
                Want::Err(InvalidContentLength),
            ),
            (
                req11("Content-Length: +5\r\n"),
                Want::Err(InvalidContentLength),
            ),
            (
                req11("Content-Length: -0\r\n"),
                Want::Err(InvalidContentLength),
            ),
            (
                req11("Content-Length: abc\r\n"),
                Want::Err(InvalidContentLength),
            ),
            (
                req11("Content-Length: 0x5\r\n"),
                Want::Err(InvalidContentLength),
            ),
            (
                req11("Content-Length: 5a\r\n"),
                Want::Err(InvalidContentLength),
            ),
            (
                req11("Content-Length: 5 5\r\n"),
                Want::Err(InvalidContentLength),
            ),
            (
                req11("Content-Length: 5.0\r\n"),
                Want::Err(InvalidContentLength),
            ),
            (
                req11("Content-Length: \r\n"),
                Want::Err(InvalidContentLength),
            ),
            (
                req11("Content-Length: ٥\r\n"),
                Want::Err(InvalidContentLength),
            ),
            (
                req11("Content-Length: 5, 5\r\n"),
                Want::Err(ConflictingContentLength),
            ),
            (
                req11("Content-Length: 5,\r\n"),
                Want::Err(ConflictingContentLength),
            ),
            (
                req11("Content-Length: 5\r\nContent-Length: 5\r\n"),
                Want::Err(ConflictingContentLength),
            ),
            (
                req11("Content-Length: 5\r\nContent-Length: 6\r\n"),
                Want::Err(ConflictingContentLength),
            ),
            (
                req11("Content-Length: 5\r\ncontent-length: 5\r\n"),
                Want::Err(ConflictingContentLength),
            ),
            // Transfer-Encoding (RFC 9112 §6.1, §6.3).
            (
                req11("Transfer-Encoding: chunked\r\n"),
                get11().framing(BodyFraming::Chunked),
            ),
            (
                req11("transfer-encoding:  Chunked \r\n"),
                get11().framing(BodyFraming::Chunked),
            ),
            (
                req11("Transfer-Encoding: CHUNKED\r\n"),
                get11().framing(BodyFraming::Chunked),
            ),
            (
                req11("Transfer-Encoding: gzip, chunked\r\n"),
                Want::Err(UnsupportedTransferEncoding),
            ),
            (
                req11("Transfer-Encoding: x-custom, chunked\r\n"),
                Want::Err(UnsupportedTransferEncoding),
            ),
            (
                req11("Transfer-Encoding: chunked, gzip\r\n"),
                Want::Status(400),
            ),
            (req11("Transfer-Encoding: gzip\r\n"), Want::Status(400)),
            (req11("Transfer-Encoding: identity\r\n"), Want::Status(400)),
            (req11("Transfer-Encoding: \r\n"), Want::Status(400)),
            (
                req11("Transfer-Encoding: chunked, chunked\r\n"),
                Want::Status(400),
            ),
            (req11("Transfer-Encoding: xchunked\r\n"), Want::Status(400)),
            (
                req11("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"),
                Want::Status(400),
            ),
            (
                req11("Transfer-Encoding: \x0bchunked\r\n"),
                Want::Status(400),
            ),
            (req11("Transfer-Encoding : chunked\r\n"), Want::Status(400)),
            (
                req11("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n"),
                Want::Err(ContentLengthWithTransferEncoding),
            ),
            (
                req11("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"),
                Want::Err(ContentLengthWithTransferEncoding),
            ),
            (
                req11("CONTENT-LENGTH: 5\r\ntransfer-ENCODING: Chunked\r\n"),
                Want::Err(ContentLengthWithTransferEncoding),
            ),
            (
                req11("content-length: 0\r\nTRANSFER-ENCODING: chunked\r\n"),
                Want::Err(ContentLengthWithTransferEncoding),
            ),
            (
                b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
                Want::Err(TransferEncodingOnHttp10),
            ),
            (
                b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
                    .to_vec(),
                Want::Err(TransferEncodingOnHttp10),
            ),
            (
                b"POST / HTTP/1.0\r\nContent-Length: 5\r\n\r\n".to_vec(),
                head(Method::Post, "/", 0).framing(BodyFraming::ContentLength(5)),
            ),
        ];
        for (input, want) in cases {
            check(&input, want);
        }
    }

    /// Every strict prefix of a valid head is incomplete, whichever byte it stops at (method,
    /// target, version, line ends, header name, value, the final blank line).
    #[test]
    fn prefixes_are_incomplete() {
        let valid: [&[u8]; 5] = [
            b"GET /path?q=1 HTTP/1.1\r\nHost: example.com\r\nX-Name: some value\r\n\r\n",
            b"POST /v1/rpc/getRun HTTP/1.1\nHost: a\nContent-Length: 2\nExpect: 100-continue\n\n",
            b"\r\n\nDELETE / HTTP/1.0\r\n\r\n",
            b"PROPFIND * HTTP/1.1\r\nHost:\r\nX-Empty:\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        ];
        for request in valid {
            for end in 0..request.len() {
                check(&request[..end], Want::Incomplete);
            }
            assert!(
                matches!(parse_head(request, &HeadLimits::default()), Ok(Some((_, n))) if n == request.len())
            );
        }
    }

    #[test]
    fn header_count_limit() {
        let many = |n: usize| {
            let mut s = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
            for i in 1..n {
                s.push_str(&format!("X-{i}: v\r\n"));
            }
            s.push_str("\r\n");
            s.into_bytes()
        };
        let limits = HeadLimits::default();
        check_limits(&limits, &many(100), get11());
        check_limits(&limits, &many(101), Want::Err(RequestError::TooManyHeaders));
        // Past the count even before the head is complete.
        let mut partial = many(101);
        partial.truncate(partial.len() - 2);
        check_limits(&limits, &partial, Want::Err(RequestError::TooManyHeaders));
        // Limits above the stack array take the heap path.
        let big = HeadLimits {
            header_count_max: 300,
            header_bytes_max: 64 * 1024,
            request_line_bytes_max: 8192,
        };
        check_limits(&big, &many(300), get11());
        check_limits(&big, &many(301), Want::Err(RequestError::TooManyHeaders));
        let none = HeadLimits {
            header_count_max: 0,
            ..limits
        };
        check_limits(&none, b"GET / HTTP/1.0\r\n\r\n", head(Method::Get, "/", 0));
        check_limits(
            &none,
            b"GET / HTTP/1.0\r\nA: b\r\n\r\n",
            Want::Err(RequestError::TooManyHeaders),
        );
    }

    #[test]
    fn request_line_limit() {
        let limits = HeadLimits::default();
        // "GET " + target + " HTTP/1.1" is exactly `len` bytes.
        let line = |len: usize| format!("GET /{} HTTP/1.1", "a".repeat(len - 14)).into_bytes();
        assert_eq!(line(8192).len(), 8192);
        let complete = |len: usize| [line(len), b"\r\nHost: a\r\n\r\n".to_vec()].concat();
        assert!(matches!(parse_head(&complete(8192), &limits), Ok(Some((_, n))) if n == 8192 + 13));
        check_limits(
            &limits,
            &complete(8193),
            Want::Err(RequestError::RequestLineTooLong),
        );
        // Incomplete lines: refused as soon as they pass the limit, not before.
        check_limits(&limits, &line(8192), Want::Incomplete);
        check_limits(
            &limits,
            &[line(8192), b"\r".to_vec()].concat(),
            Want::Incomplete,
        );
        check_limits(
            &limits,
            &line(8193),
            Want::Err(RequestError::RequestLineTooLong),
        );
        check_limits(
            &limits,
            &vec![b'G'; 9000],
            Want::Err(RequestError::RequestLineTooLong),
        );
        // Leading empty lines do not count against the request line.
        let mut led = b"\r\n\r\n".to_vec();
        led.extend_from_slice(&line(8192));
        check_limits(&limits, &led, Want::Incomplete);
    }

    #[test]
    fn header_bytes_limit() {
        let limits = HeadLimits::default();
        // A head of exactly `len` bytes, blank line included.
        let sized = |len: usize| {
            let fixed = "GET / HTTP/1.1\r\nHost: a\r\nX-Pad: \r\n\r\n".len();
            format!(
                "GET / HTTP/1.1\r\nHost: a\r\nX-Pad: {}\r\n\r\n",
                "p".repeat(len - fixed)
            )
            .into_bytes()
        };
        assert_eq!(sized(16384).len(), 16384);
        check_limits(&limits, &sized(16384), get11());
        check_limits(
            &limits,
            &sized(16385),
            Want::Err(RequestError::HeadersTooLarge),
        );
        let partial = sized(16386);
        check_limits(&limits, &partial[..16384], Want::Incomplete);
        check_limits(
            &limits,
            &partial[..16385],
            Want::Err(RequestError::HeadersTooLarge),
        );
        // Leading empty lines count against the head.
        let mut flood = vec![b'\n'; 16384];
        check_limits(&limits, &flood, Want::Incomplete);
        flood.push(b'\n');
        check_limits(&limits, &flood, Want::Err(RequestError::HeadersTooLarge));
        // A complete head is found even when much more is buffered behind it.
        let mut long = sized(100);
        long.extend(vec![b'x'; 40_000]);
        let (_, n) = parse_head(&long, &limits).unwrap().unwrap();
        assert_eq!(n, 100);
    }

    #[test]
    fn pipelined() {
        let buf = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /b?x=1 HTTP/1.1\r\nHost: a\r\n\r\nGET /c";
        let limits = HeadLimits::default();
        let (first, n) = parse_head(buf, &limits).unwrap().unwrap();
        assert_eq!(first.method, Method::Post);
        assert_eq!(first.framing, BodyFraming::ContentLength(3));
        assert_eq!(&buf[n..n + 3], b"abc");
        let (second, m) = parse_head(&buf[n + 3..], &limits).unwrap().unwrap();
        assert_eq!(
            (second.method, second.path(), second.query()),
            (Method::Get, "/b", Some("x=1"))
        );
        assert_eq!(parse_head(&buf[n + 3 + m..], &limits), Ok(None));
        check_parse_properties(buf);
    }

    #[test]
    fn accessors() {
        let input = b"GET /a/b?x=1&y=?2 HTTP/1.1\r\nHost: a\r\nX-Dup: 1\r\nx-dup: 2\r\nX-Bin: \xff\r\nX-Trim: \t v w \t\r\n\r\n";
        let (h, _) = parse_head(input, &HeadLimits::default()).unwrap().unwrap();
        assert_eq!(h.path(), "/a/b");
        assert_eq!(h.query(), Some("x=1&y=?2"));
        assert_eq!(h.header("x-dup"), Some(&b"1"[..]));
        assert_eq!(h.header_count("x-dup"), 2);
        assert_eq!(h.header_count("missing"), 0);
        assert_eq!(h.header("X-Dup"), None, "lookups take lower-case names");
        assert_eq!(h.header_str("x-bin"), None);
        assert_eq!(h.header("x-bin"), Some(&b"\xff"[..]));
        assert_eq!(h.header_str("x-trim"), Some("v w"));
        assert_eq!(h.header_str("host"), Some("a"));
        let (plain, _) = parse_head(b"GET /p HTTP/1.0\r\n\r\n", &HeadLimits::default())
            .unwrap()
            .unwrap();
        assert_eq!((plain.path(), plain.query()), ("/p", None));
        let (empty_q, _) = parse_head(b"GET /p? HTTP/1.0\r\n\r\n", &HeadLimits::default())
            .unwrap()
            .unwrap();
        assert_eq!((empty_q.path(), empty_q.query()), ("/p", Some("")));
    }

    #[test]
    fn statuses() {
        use RequestError::*;
        let cases = [
            (Malformed("x"), 400),
            (ConflictingContentLength, 400),
            (InvalidContentLength, 400),
            (ContentLengthWithTransferEncoding, 400),
            (TransferEncodingOnHttp10, 400),
            (MissingHost, 400),
            (DuplicateHost, 400),
            (MalformedChunk, 400),
            (RequestLineTooLong, 414),
            (TooManyHeaders, 431),
            (HeadersTooLarge, 431),
            (UnsupportedTransferEncoding, 501),
            (UnsupportedVersion, 505),
            (BodyTooLarge, 413),
        ];
        for (e, s) in cases {
            assert_eq!(e.status(), s, "{e:?}");
        }
    }

    /// Expected chunked outcome: bytes consumed, complete, decoded body; or the error.
    type ChunkWant<'a> = Result<(usize, bool, &'a [u8]), RequestError>;

    /// Decodes `input` in one call, then again byte by byte (which must agree), and compares with
    /// the expected (consumed, complete, body) or error.
    fn check_chunked(
        input: &[u8],
        body_max: usize,
        want: Result<(usize, bool, &[u8]), RequestError>,
    ) {
        let mut decoder = ChunkedDecoder::new(body_max);
        let mut body = Vec::new();
        let got = decoder
            .decode(input, &mut body)
            .map(|(n, done)| (n, done, body.as_slice()));
        assert_eq!(got, want, "input {:?}", String::from_utf8_lossy(input));

        let mut decoder = ChunkedDecoder::new(body_max);
        let mut body = Vec::new();
        let mut pending = Vec::new();
        let mut total = 0;
        let mut split = Ok((0, false));
        for &b in input {
            pending.push(b);
            match decoder.decode(&pending, &mut body) {
                Ok((n, done)) => {
                    pending.drain(..n);
                    total += n;
                    split = Ok((total, done));
                    if done {
                        break;
                    }
                }
                Err(e) => {
                    split = Err(e);
                    break;
                }
            }
        }
        let split = split.map(|(n, done)| (n, done, body.as_slice()));
        assert_eq!(
            split,
            want,
            "byte by byte: {:?}",
            String::from_utf8_lossy(input)
        );
    }

    #[test]
    fn chunked() {
        use RequestError::{BodyTooLarge, MalformedChunk};
        const MAX: usize = 1 << 20;
        let all = |s: &[u8]| s.len();
        let cases: Vec<(Vec<u8>, usize, ChunkWant<'_>)> = vec![
            (
                b"5\r\nhello\r\n0\r\n\r\n".to_vec(),
                MAX,
                Ok((all(b"5\r\nhello\r\n0\r\n\r\n"), true, b"hello")),
            ),
            (
                b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n".to_vec(),
                MAX,
                Ok((26, true, b"hello world")),
            ),
            (b"0\r\n\r\n".to_vec(), MAX, Ok((5, true, b""))),
            (b"000\r\n\r\n".to_vec(), MAX, Ok((7, true, b""))),
            (
                b"A\r\n0123456789\r\na\r\n0123456789\r\n0\r\n\r\n".to_vec(),
                MAX,
                Ok((35, true, b"01234567890123456789")),
            ),
            // Bytes after the body belong to the next request.
            (
                b"1\r\nx\r\n0\r\n\r\nGET / HTTP/1.1\r\n".to_vec(),
                MAX,
                Ok((11, true, b"x")),
            ),
            // Extensions are ignored (RFC 9112 §7.1.1).
            (
                b"5;a=b;c\r\nhello\r\n0;last=\"yes\"\r\n\r\n".to_vec(),
                MAX,
                Ok((32, true, b"hello")),
            ),
            (
                b"5 ;a=b\r\nhello\r\n0\r\n\r\n".to_vec(),
                MAX,
                Ok((20, true, b"hello")),
            ),
            // Trailers are skipped.
            (
                b"5\r\nhello\r\n0\r\nX-T: 1\r\nY:\r\n\r\n".to_vec(),
                MAX,
                Ok((27, true, b"hello")),
            ),
            // Bare LF line ends.
            (b"5\nhello\n0\n\n".to_vec(), MAX, Ok((11, true, b"hello"))),
            (
                b"5;e\nhello\n0\nT: v\n\n".to_vec(),
                MAX,
                Ok((18, true, b"hello")),
            ),
            // Incomplete: partial lines are not consumed; data is.
            (b"".to_vec(), MAX, Ok((0, false, b""))),
            (b"5".to_vec(), MAX, Ok((0, false, b""))),
            (b"5\r".to_vec(), MAX, Ok((0, false, b""))),
            (b"5\r\nhel".to_vec(), MAX, Ok((6, false, b"hel"))),
            (b"5\r\nhello\r".to_vec(), MAX, Ok((8, false, b"hello"))),
            (
                b"5\r\nhello\r\n0\r\nX-T: 1".to_vec(),
                MAX,
                Ok((13, false, b"hello")),
            ),
            (
                b"5\r\nhello\r\n0\r\nX-T: 1\r\n".to_vec(),
                MAX,
                Ok((21, false, b"hello")),
            ),
            // Size limits.
            (
                b"5\r\nhello\r\n0\r\n\r\n".to_vec(),
                5,
                Ok((15, true, b"hello")),
            ),
            (b"5\r\nhello\r\n0\r\n\r\n".to_vec(), 4, Err(BodyTooLarge)),
            (
                b"5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n".to_vec(),
                8,
                Err(BodyTooLarge),
            ),
            (b"ffffffffffffffff\r\n".to_vec(), MAX, Err(BodyTooLarge)),
            (b"fffffffffffffffff\r\n".to_vec(), MAX, Err(MalformedChunk)),
            // Malformed sizes.
            (b"g\r\n".to_vec(), MAX, Err(MalformedChunk)),
            (b"0x5\r\nhello\r\n".to_vec(), MAX, Err(MalformedChunk)),
            (b"\r\n".to_vec(), MAX, Err(MalformedChunk)),
            (b";ext\r\n".to_vec(), MAX, Err(MalformedChunk)),
            (b"-5\r\n".to_vec(), MAX, Err(MalformedChunk)),
            (b"+5\r\n".to_vec(), MAX, Err(MalformedChunk)),
            (b" 5\r\n".to_vec(), MAX, Err(MalformedChunk)),
            (b"5 5\r\n".to_vec(), MAX, Err(MalformedChunk)),
            (b"5\r\r\n".to_vec(), MAX, Err(MalformedChunk)),
            (b"5;a\rb\r\nhello\r\n".to_vec(), MAX, Err(MalformedChunk)),
            (b"5;a\x00\r\nhello\r\n".to_vec(), MAX, Err(MalformedChunk)),
            (
                [b"5;".as_slice(), &[b'e'; 5000]].concat(),
                MAX,
                Err(MalformedChunk),
            ),
            (
                [b"5;".as_slice(), &[b'e'; 5000], b"\r\nhello\r\n"].concat(),
                MAX,
                Err(MalformedChunk),
            ),
            // Data not followed by a line end.
            (
                b"5\r\nhelloX\r\n0\r\n\r\n".to_vec(),
                MAX,
                Err(MalformedChunk),
            ),
            (b"5\r\nhello\rX".to_vec(), MAX, Err(MalformedChunk)),
            (b"5\r\nhello world\r\n".to_vec(), MAX, Err(MalformedChunk)),
            // Trailers.
            (
                b"0\r\nnot a field\r\n\r\n".to_vec(),
                MAX,
                Err(MalformedChunk),
            ),
            (b"0\r\n: v\r\n\r\n".to_vec(), MAX, Err(MalformedChunk)),
            (b"0\r\nX: a\x01\r\n\r\n".to_vec(), MAX, Err(MalformedChunk)),
            (
                [b"0\r\nX: ".as_slice(), &[b'a'; 9000]].concat(),
                MAX,
                Err(MalformedChunk),
            ),
            (
                [
                    b"0\r\n".as_slice(),
                    &b"X: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n"
                        .repeat(130),
                    b"\r\n",
                ]
                .concat(),
                MAX,
                Err(MalformedChunk),
            ),
        ];
        for (input, max, want) in cases {
            check_chunked(&input, max, want);
        }
    }

    #[test]
    fn chunked_done_consumes_nothing_more() {
        let mut decoder = ChunkedDecoder::new(100);
        let mut body = Vec::new();
        assert_eq!(decoder.decode(b"0\r\n\r\n", &mut body), Ok((5, true)));
        assert_eq!(decoder.decode(b"GET", &mut body), Ok((0, true)));
        assert!(body.is_empty());
    }

    #[test]
    fn chunked_large_body_in_pieces() {
        let mut wire = Vec::new();
        let mut expected = Vec::new();
        for i in 0..50u8 {
            let chunk = vec![i; 1000 + usize::from(i)];
            wire.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            wire.extend_from_slice(&chunk);
            wire.extend_from_slice(b"\r\n");
            expected.extend_from_slice(&chunk);
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        let mut decoder = ChunkedDecoder::new(1 << 20);
        let mut body = Vec::new();
        let mut pending = Vec::new();
        let mut done = false;
        for piece in wire.chunks(777) {
            pending.extend_from_slice(piece);
            let (n, complete) = decoder.decode(&pending, &mut body).unwrap();
            pending.drain(..n);
            done = complete;
        }
        assert!(done && pending.is_empty());
        assert_eq!(body, expected);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod fuzz_seeds {
    /// Replays every committed seed of the `http_request` fuzz target through the same property
    /// checks the target runs, so regressions show in `cargo test` without a fuzzer.
    #[test]
    fn fuzz_seeds_http() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz/seeds/http_request");
        let mut replayed = 0;
        for entry in std::fs::read_dir(dir).expect("seed directory") {
            let path = entry.expect("seed entry").path();
            if !path.is_file() {
                continue;
            }
            let data = std::fs::read(&path).expect("seed file");
            let outcome = std::panic::catch_unwind(|| super::check_parse_properties(&data));
            assert!(
                outcome.is_ok(),
                "property violated by seed {}",
                path.display()
            );
            replayed += 1;
        }
        assert!(replayed >= 20, "only {replayed} seeds under {dir}");
    }
}
