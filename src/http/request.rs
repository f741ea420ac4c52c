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
        HeadLimits { header_count_max: 100, header_bytes_max: 16 * 1024, request_line_bytes_max: 8 * 1024 }
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
        self.headers.iter().find(|h| h.name == name).map(|h| h.value.as_slice())
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
pub fn parse_head(buf: &[u8], limits: &HeadLimits) -> Result<Option<(RequestHead, usize)>, RequestError> {
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
    let version = match line.iter().rposition(|&b| b == b' ') {
        Some(sp) => line.get(sp + 1..).unwrap_or_default(),
        None => return RequestError::Malformed("invalid HTTP version"),
    };
    match version {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor] if major.is_ascii_digit() && minor.is_ascii_digit() => {
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
    let start = v.iter().position(|&b| b != b' ' && b != b'\t').unwrap_or(v.len());
    let end = v.iter().rposition(|&b| b != b' ' && b != b'\t').map_or(start, |i| i + 1);
    v.get(start..end).unwrap_or_default()
}

/// Comma-separated list members, trimmed, empty members dropped (RFC 9110 §5.6.1).
fn list_members(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',').map(trim_ows).filter(|m| !m.is_empty())
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
    v.iter().all(|&b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=:[]".contains(&b))
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
        headers.push(Header { name, value: value.to_vec() });
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
            let value = headers.get(index).map(|h| h.value.as_slice()).unwrap_or_default();
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
        _ => Err(RequestError::Malformed("chunked is not the final transfer coding")),
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
        ChunkedDecoder { body_bytes_max, state: ChunkState::Size, announced: 0 }
    }

    /// Consumes bytes from the front of `input`, appending decoded body bytes to `body`. Returns
    /// how many bytes it consumed and whether the body (with its trailers) is complete.
    pub fn decode(&mut self, input: &[u8], body: &mut Vec<u8>) -> Result<(usize, bool), RequestError> {
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
                        self.announced = self.announced.checked_add(size).ok_or(RequestError::BodyTooLarge)?;
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
                    self.state = if left == 0 { ChunkState::DataEnd } else { ChunkState::Data(left) };
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
        && name.iter().all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        && value.iter().all(|&b| !((b < 0x20 && b != b'\t') || b == 0x7f))
}
