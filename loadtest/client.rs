//! The load client: one thread, raw edge-triggered epoll, many connections.
//!
//! Why raw epoll: a co-located client pays the same kernel cost per read as the server pays per
//! write (PERFORMANCE.md §3, fact 4), so the client must add as little as possible on top. Each
//! connection costs a few dozen bytes while idle: one 64 KiB read buffer is shared by the thread,
//! and a connection keeps only the bytes of a frame that a read split in two. Frames the client
//! sends are built once (masked with a fixed key) and referenced by index.
//!
//! A connection goes Connecting → Upgrading → (Authenticating, for the gateway's `connect`) →
//! Ready, or Closed from any state. Scenarios see only Ready connections, through [`Sink`].
//! Source addresses are spread over 127.x.y.z with IP_BIND_ADDRESS_NO_PORT so that thousands of
//! connections and repeated runs never run out of ephemeral ports (PERFORMANCE.md §2.1).

use crate::sys;
use crate::wire::{self, MessageKind, WireError};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::io::RawFd;

/// The shared read buffer. Reads of this size drain a burst of small frames in one syscall.
const READ_BUFFER_BYTES: usize = 64 * 1024;
/// A read is attempted only with at least this much room after a carried-over partial frame.
const READ_ROOM_MIN: usize = 16 * 1024;
/// A connection's carried-over bytes keep their allocation only below this size.
const PENDING_KEEP_BYTES: usize = 1024;
/// Unsent bytes one connection may hold before the client treats the server as stuck.
const OUT_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Epoll events taken per wait.
const EVENTS_PER_WAIT: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// RFC 6455 client on a path, with a [`Handshake`] after the upgrade.
    WebSocket,
    /// HTTP/1.1 keep-alive, responses framed by Content-Length.
    Http,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    Connecting,
    Upgrading,
    Authenticating,
    Ready,
    Closed,
}

/// Why a connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The server sent a close frame with this code (1005 when it had none) and reason.
    CloseFrame(u16, String),
    /// The server closed TCP without a close frame.
    Eof,
    /// A handshake step failed (connect error, upgrade refused, `connect` answered with an error).
    Handshake(String),
    /// A socket or protocol error after the handshake.
    Error(String),
    /// We closed it.
    Local,
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::CloseFrame(code, reason) => write!(f, "close {code} {reason:?}"),
            CloseReason::Eof => write!(f, "connection closed without a close frame"),
            CloseReason::Handshake(why) => write!(f, "handshake failed: {why}"),
            CloseReason::Error(why) => write!(f, "{why}"),
            CloseReason::Local => write!(f, "closed by the client"),
        }
    }
}

pub struct Conn {
    fd: RawFd,
    pub protocol: Protocol,
    pub state: ConnState,
    /// A paused connection is not read: its receive window fills and the server's sends stall.
    pub paused: bool,
    /// The scenario's label for this connection (its role).
    pub tag: u32,
    /// When the connect started and when the handshake finished (monotonic ns).
    pub opened_ns: u64,
    pub ready_ns: u64,
    path: Path,
    handshake: Handshake,
    /// Bytes of an incomplete frame or response carried to the next read.
    pending: Vec<u8>,
    /// Bytes the socket did not take yet.
    out: Vec<u8>,
    /// Payload of a fragmented message being assembled.
    fragment: Option<Vec<u8>>,
    pub close_reason: Option<CloseReason>,
}

/// What a WebSocket does after the upgrade before it counts as ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handshake {
    /// Nothing (the baseline has no `connect`).
    None,
    /// The gateway's `connect` with the token and no subscription filter: every broadcast.
    Connect,
    /// `connect` with a filter naming no real run, so broadcasts of runs stay away (RPC-only
    /// connections; PROTOCOL.md §13).
    ConnectQuiet,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    Root,
    Publish,
}

/// Frames a sink asks to send while it handles a message, by registered frame index.
#[derive(Default)]
pub struct Outbox {
    sends: Vec<(usize, usize)>,
}

impl Outbox {
    pub fn send(&mut self, conn: usize, frame: usize) {
        self.sends.push((conn, frame));
    }
}

/// What a scenario does with what arrives. Messages are borrowed from the shared read buffer.
pub trait Sink {
    fn on_ready(&mut self, _conn: usize, _tag: u32, _now: u64, _outbox: &mut Outbox) {}
    fn on_message(&mut self, conn: usize, tag: u32, message: &[u8], now: u64, outbox: &mut Outbox);
    fn on_http(
        &mut self,
        _conn: usize,
        _tag: u32,
        _status: u16,
        _body: &[u8],
        _now: u64,
        _outbox: &mut Outbox,
    ) {
    }
    fn on_closed(&mut self, _conn: usize, _tag: u32, _reason: &CloseReason, _now: u64) {}
}

/// Where to connect and how to authenticate.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub address: SocketAddrV4,
    /// The gateway's bearer token; `None` for the baseline, which has no `connect`.
    pub token: Option<String>,
}

/// Counts of what went wrong, with the first message of each kind for the report.
#[derive(Clone, Debug, Default)]
pub struct Failures {
    pub handshakes: u64,
    pub errors: u64,
    pub first: Option<String>,
}

impl Failures {
    fn note(&mut self, what: String) {
        if self.first.is_none() {
            self.first = Some(what);
        }
    }
}

pub struct Client {
    epoll: sys::Epoll,
    pub conns: Vec<Conn>,
    buffer: Vec<u8>,
    events: Vec<libc::epoll_event>,
    endpoint: Endpoint,
    upgrade_root: Vec<u8>,
    upgrade_publish: Vec<u8>,
    connect_frame: Vec<u8>,
    connect_quiet_frame: Vec<u8>,
    frames: Vec<Vec<u8>>,
    outbox: Outbox,
    next_source: u32,
    pub failures: Failures,
    /// Connections opened and not closed.
    pub open: usize,
}

impl Client {
    pub fn new(endpoint: Endpoint) -> io::Result<Client> {
        let host = endpoint.address.to_string();
        let upgrade = |path: &str| {
            format!(
                "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            .into_bytes()
        };
        let connect = |quiet: bool| {
            let mut params = serde_json::json!({
                "minProtocol": 1,
                "maxProtocol": 1,
                "client": {"id": "loadtest", "version": env!("CARGO_PKG_VERSION"), "platform": "loadtest"},
                "auth": {"token": endpoint.token.clone().unwrap_or_default()},
            });
            if quiet {
                params["subscribe"] = serde_json::json!(["loadtest-no-such-run"]);
            }
            let request = serde_json::json!({"type": "req", "id": "connect", "method": "connect", "params": params});
            wire::client_text(request.to_string().as_bytes())
        };
        Ok(Client {
            epoll: sys::Epoll::new()?,
            conns: Vec::new(),
            buffer: vec![0; READ_BUFFER_BYTES],
            events: vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_WAIT],
            upgrade_root: upgrade("/"),
            upgrade_publish: upgrade("/publish"),
            connect_frame: connect(false),
            connect_quiet_frame: connect(true),
            endpoint,
            frames: Vec::new(),
            outbox: Outbox::default(),
            next_source: 0,
            failures: Failures::default(),
            open: 0,
        })
    }

    /// Registers a prebuilt frame (or HTTP request) and returns its index for [`Outbox::send`].
    pub fn register_frame(&mut self, bytes: Vec<u8>) -> usize {
        self.frames.push(bytes);
        self.frames.len() - 1
    }

    /// The next source address: 127.2.0.1 onwards, 250 × 250 × 200 addresses before wrapping.
    fn source_address(&mut self) -> Ipv4Addr {
        let k = self.next_source;
        self.next_source = self.next_source.wrapping_add(1);
        Ipv4Addr::new(
            127,
            2 + ((k / 62_500) % 200) as u8,
            1 + ((k / 250) % 250) as u8,
            1 + (k % 250) as u8,
        )
    }

    /// Starts a connection; it becomes Ready (or Closed) through [`Client::poll`].
    pub fn open(
        &mut self,
        protocol: Protocol,
        path: Path,
        handshake: Handshake,
        tag: u32,
    ) -> io::Result<usize> {
        let source = self.source_address();
        let fd = sys::connect_from(source, self.endpoint.address)?;
        let index = self.conns.len();
        if let Err(error) = self.epoll.add(
            fd,
            index as u64,
            (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
        ) {
            sys::close(fd);
            return Err(error);
        }
        self.conns.push(Conn {
            fd,
            protocol,
            state: ConnState::Connecting,
            paused: false,
            tag,
            opened_ns: sys::now_ns(),
            ready_ns: 0,
            path,
            handshake: if self.endpoint.token.is_some() {
                handshake
            } else {
                Handshake::None
            },
            pending: Vec::new(),
            out: Vec::new(),
            fragment: None,
            close_reason: None,
        });
        self.open += 1;
        Ok(index)
    }

    pub fn state(&self, conn: usize) -> ConnState {
        self.conns.get(conn).map_or(ConnState::Closed, |c| c.state)
    }

    /// Closes a connection from our side (no close frame: the scenario is over for it).
    pub fn close(&mut self, conn: usize) {
        self.finish(conn, CloseReason::Local);
    }

    fn finish(&mut self, conn: usize, reason: CloseReason) {
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        if c.state == ConnState::Closed {
            return;
        }
        self.epoll.delete(c.fd);
        sys::close(c.fd);
        c.fd = -1;
        c.state = ConnState::Closed;
        c.pending = Vec::new();
        c.out = Vec::new();
        c.fragment = None;
        c.close_reason = Some(reason);
        self.open -= 1;
    }

    /// Stops reading a connection (its data piles up in the kernel, then at the server).
    pub fn pause(&mut self, conn: usize) {
        if let Some(c) = self.conns.get_mut(conn) {
            c.paused = true;
        }
    }

    /// Resumes reading; what arrived meanwhile is handled now.
    pub fn resume(&mut self, conn: usize, sink: &mut dyn Sink) {
        if let Some(c) = self.conns.get_mut(conn) {
            c.paused = false;
        }
        self.read_ready(conn, sink);
        self.flush_outbox();
    }

    /// Sends bytes on a connection, keeping what the socket does not take for later.
    pub fn send(&mut self, conn: usize, bytes: &[u8]) {
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        if c.state == ConnState::Closed {
            return;
        }
        if !c.out.is_empty() {
            if c.out.len() + bytes.len() > OUT_BYTES_MAX {
                let why =
                    format!("more than {OUT_BYTES_MAX} bytes unsent: the server stopped reading");
                self.failures.errors += 1;
                self.failures.note(why.clone());
                return self.finish(conn, CloseReason::Error(why));
            }
            c.out.extend_from_slice(bytes);
            return;
        }
        let mut written = 0;
        while written < bytes.len() {
            match sys::write(c.fd, bytes.get(written..).unwrap_or_default()) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.failures.errors += 1;
                    self.failures.note(format!("write: {e}"));
                    return self.finish(conn, CloseReason::Error(format!("write: {e}")));
                }
            }
        }
        if let Some(rest) = bytes.get(written..).filter(|r| !r.is_empty()) {
            c.out.extend_from_slice(rest);
        }
    }

    pub fn send_frame(&mut self, conn: usize, frame: usize) {
        let frames = std::mem::take(&mut self.frames);
        if let Some(bytes) = frames.get(frame) {
            self.send(conn, bytes);
        }
        self.frames = frames;
    }

    /// Bytes not yet taken by the socket of `conn`.
    pub fn unsent(&self, conn: usize) -> usize {
        self.conns.get(conn).map_or(0, |c| c.out.len())
    }

    fn flush(&mut self, conn: usize) {
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        if c.out.is_empty() || c.state == ConnState::Closed {
            return;
        }
        let out = std::mem::take(&mut c.out);
        self.send(conn, &out);
    }

    fn flush_outbox(&mut self) {
        if self.outbox.sends.is_empty() {
            return;
        }
        let sends = std::mem::take(&mut self.outbox.sends);
        for &(conn, frame) in &sends {
            self.send_frame(conn, frame);
        }
        let mut sends = sends;
        sends.clear();
        self.outbox.sends = sends;
    }

    /// Waits up to `timeout_ns` for readiness and handles everything that is ready.
    pub fn poll(&mut self, timeout_ns: u64, sink: &mut dyn Sink) -> io::Result<usize> {
        let mut events = std::mem::take(&mut self.events);
        let n = match self.epoll.wait(&mut events, timeout_ns) {
            Ok(n) => n,
            Err(error) => {
                self.events = events;
                return Err(error);
            }
        };
        for event in events.iter().take(n) {
            let conn = event.u64 as usize;
            let flags = event.events;
            let Some(c) = self.conns.get(conn) else {
                continue;
            };
            if c.state == ConnState::Connecting {
                if flags & (libc::EPOLLOUT | libc::EPOLLERR | libc::EPOLLHUP) as u32 == 0 {
                    continue;
                }
                self.connected(conn, sink);
            }
            if flags & libc::EPOLLOUT as u32 != 0 {
                self.flush(conn);
            }
            if flags & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32
                != 0
            {
                self.read_ready(conn, sink);
            }
        }
        self.events = events;
        self.flush_outbox();
        Ok(n)
    }

    fn connected(&mut self, conn: usize, sink: &mut dyn Sink) {
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        if let Err(error) = sys::socket_error(c.fd) {
            self.failures.handshakes += 1;
            self.failures.note(format!("connect: {error}"));
            return self.finish(conn, CloseReason::Handshake(format!("connect: {error}")));
        }
        match c.protocol {
            Protocol::Http => {
                c.state = ConnState::Ready;
                c.ready_ns = sys::now_ns();
                let tag = c.tag;
                sink.on_ready(conn, tag, c.ready_ns, &mut self.outbox);
            }
            Protocol::WebSocket => {
                c.state = ConnState::Upgrading;
                let request = match c.path {
                    Path::Root => std::mem::take(&mut self.upgrade_root),
                    Path::Publish => std::mem::take(&mut self.upgrade_publish),
                };
                let path = c.path;
                self.send(conn, &request);
                match path {
                    Path::Root => self.upgrade_root = request,
                    Path::Publish => self.upgrade_publish = request,
                }
            }
        }
    }

    /// Reads until the socket has nothing more (edge-triggered) or the connection pauses.
    fn read_ready(&mut self, conn: usize, sink: &mut dyn Sink) {
        let mut buffer = std::mem::take(&mut self.buffer);
        while let Some(c) = self.conns.get_mut(conn) {
            if c.state == ConnState::Closed || c.state == ConnState::Connecting || c.paused {
                break;
            }
            let carried = c.pending.len();
            if buffer.len() < carried + READ_ROOM_MIN {
                buffer.resize(carried + READ_BUFFER_BYTES, 0);
            }
            if carried > 0 {
                if let Some(head) = buffer.get_mut(..carried) {
                    head.copy_from_slice(&c.pending);
                }
            }
            let room = buffer.len() - carried;
            let read = sys::read(c.fd, buffer.get_mut(carried..).unwrap_or_default());
            match read {
                Ok(0) => {
                    let reason = match c.state {
                        ConnState::Ready => CloseReason::Eof,
                        _ => {
                            self.failures.handshakes += 1;
                            self.failures.note(
                                "the server closed the connection during the handshake".into(),
                            );
                            CloseReason::Handshake("closed during the handshake".into())
                        }
                    };
                    self.close_with(conn, reason, sink);
                    break;
                }
                Ok(n) => {
                    c.pending.clear();
                    let now = sys::now_ns();
                    let total = carried + n;
                    let bytes = buffer.get(..total).unwrap_or_default();
                    match self.process(conn, bytes, now, sink) {
                        Ok(consumed) => {
                            if let Some(c) = self.conns.get_mut(conn) {
                                if c.state != ConnState::Closed {
                                    c.pending.extend_from_slice(
                                        bytes.get(consumed..).unwrap_or_default(),
                                    );
                                }
                            }
                        }
                        Err(error) => {
                            self.failures.errors += 1;
                            self.failures.note(error.to_string());
                            let reason = match self.state(conn) {
                                ConnState::Ready => CloseReason::Error(error.to_string()),
                                _ => CloseReason::Handshake(error.to_string()),
                            };
                            self.close_with(conn, reason, sink);
                            break;
                        }
                    }
                    // A short read took everything the socket had; new data raises a new edge.
                    if n < room {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.failures.errors += 1;
                    self.failures.note(format!("read: {e}"));
                    self.close_with(conn, CloseReason::Error(format!("read: {e}")), sink);
                    break;
                }
            }
        }
        if buffer.len() > READ_BUFFER_BYTES * 4 {
            buffer.truncate(READ_BUFFER_BYTES);
            buffer.shrink_to_fit();
        }
        self.buffer = buffer;
        if let Some(c) = self.conns.get_mut(conn) {
            if c.pending.is_empty() && c.pending.capacity() > PENDING_KEEP_BYTES {
                c.pending = Vec::new();
            }
        }
    }

    fn close_with(&mut self, conn: usize, reason: CloseReason, sink: &mut dyn Sink) {
        let tag = self.conns.get(conn).map_or(0, |c| c.tag);
        sink.on_closed(conn, tag, &reason, sys::now_ns());
        self.finish(conn, reason);
    }

    /// Handles complete frames (or responses) at the start of `bytes`; returns how many bytes
    /// were consumed. The rest is an incomplete frame carried to the next read.
    fn process(
        &mut self,
        conn: usize,
        bytes: &[u8],
        now: u64,
        sink: &mut dyn Sink,
    ) -> Result<usize, WireError> {
        let Some(c) = self.conns.get(conn) else {
            return Ok(bytes.len());
        };
        if c.protocol == Protocol::Http {
            return self.process_http(conn, bytes, now, sink);
        }
        let mut at = 0;
        loop {
            let Some(c) = self.conns.get_mut(conn) else {
                return Ok(bytes.len());
            };
            match c.state {
                ConnState::Closed => return Ok(bytes.len()),
                ConnState::Upgrading => {
                    let rest = bytes.get(at..).unwrap_or_default();
                    let Some(end) = wire::head_end(rest) else {
                        if rest.len() > 16 * 1024 {
                            return Err(WireError::BadUpgrade("upgrade answer over 16 KiB".into()));
                        }
                        return Ok(at);
                    };
                    wire::check_upgrade(rest.get(..end).unwrap_or_default())?;
                    at += end;
                    match c.handshake {
                        Handshake::None => self.become_ready(conn, now, sink),
                        Handshake::Connect => {
                            c.state = ConnState::Authenticating;
                            let frame = std::mem::take(&mut self.connect_frame);
                            self.send(conn, &frame);
                            self.connect_frame = frame;
                        }
                        Handshake::ConnectQuiet => {
                            c.state = ConnState::Authenticating;
                            let frame = std::mem::take(&mut self.connect_quiet_frame);
                            self.send(conn, &frame);
                            self.connect_quiet_frame = frame;
                        }
                    }
                    continue;
                }
                _ => {}
            }
            let rest = bytes.get(at..).unwrap_or_default();
            let Some(head) = wire::parse_frame_head(rest)? else {
                return Ok(at);
            };
            let total = head.head_len + head.payload_len;
            if rest.len() < total {
                return Ok(at);
            }
            let payload = rest.get(head.head_len..total).unwrap_or_default();
            at += total;
            match head.opcode {
                wire::OPCODE_TEXT | wire::OPCODE_BINARY if head.fin => {
                    self.message(conn, payload, now, sink)
                }
                wire::OPCODE_TEXT | wire::OPCODE_BINARY => {
                    if let Some(c) = self.conns.get_mut(conn) {
                        c.fragment = Some(payload.to_vec());
                    }
                }
                wire::OPCODE_CONTINUATION => {
                    let Some(c) = self.conns.get_mut(conn) else {
                        continue;
                    };
                    let Some(mut fragment) = c.fragment.take() else {
                        continue;
                    };
                    if fragment.len() + payload.len() > wire::MESSAGE_BYTES_MAX {
                        return Err(WireError::TooLarge((fragment.len() + payload.len()) as u64));
                    }
                    fragment.extend_from_slice(payload);
                    if head.fin {
                        self.message(conn, &fragment, now, sink);
                    } else {
                        c.fragment = Some(fragment);
                    }
                }
                wire::OPCODE_CLOSE => {
                    let code = match payload {
                        [a, b, ..] => u16::from_be_bytes([*a, *b]),
                        _ => 1005,
                    };
                    let reason =
                        String::from_utf8_lossy(payload.get(2..).unwrap_or_default()).into_owned();
                    if self.state(conn) != ConnState::Ready {
                        self.failures.handshakes += 1;
                        self.failures
                            .note(format!("closed during the handshake: {code} {reason}"));
                    }
                    self.close_with(conn, CloseReason::CloseFrame(code, reason), sink);
                    return Ok(bytes.len());
                }
                wire::OPCODE_PING => {
                    let pong = wire::client_frame(wire::OPCODE_PONG, payload);
                    self.send(conn, &pong);
                }
                _ => {}
            }
        }
    }

    fn become_ready(&mut self, conn: usize, now: u64, sink: &mut dyn Sink) {
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        c.state = ConnState::Ready;
        c.ready_ns = now;
        let tag = c.tag;
        sink.on_ready(conn, tag, now, &mut self.outbox);
    }

    fn message(&mut self, conn: usize, message: &[u8], now: u64, sink: &mut dyn Sink) {
        let Some(c) = self.conns.get(conn) else {
            return;
        };
        match c.state {
            ConnState::Ready => {
                let tag = c.tag;
                sink.on_message(conn, tag, message, now, &mut self.outbox);
            }
            ConnState::Authenticating => {
                // Only the answer to `connect` matters here; the challenge event is informational.
                if wire::classify(message) != MessageKind::Response {
                    return;
                }
                if wire::find(message, br#""ok":true"#).is_some() {
                    self.become_ready(conn, now, sink);
                } else {
                    let code = wire::string_field(message, "code").unwrap_or("?");
                    let text = wire::string_field(message, "message").unwrap_or("");
                    let why = format!("connect refused: {code} {text}");
                    self.failures.handshakes += 1;
                    self.failures.note(why.clone());
                    self.close_with(conn, CloseReason::Handshake(why), sink);
                }
            }
            _ => {}
        }
    }

    fn process_http(
        &mut self,
        conn: usize,
        bytes: &[u8],
        now: u64,
        sink: &mut dyn Sink,
    ) -> Result<usize, WireError> {
        let mut at = 0;
        while let Some((status, body, total)) =
            wire::parse_http_response(bytes.get(at..).unwrap_or_default())?
        {
            let Some(c) = self.conns.get(conn) else {
                return Ok(bytes.len());
            };
            let tag = c.tag;
            let body = bytes
                .get(at + body.start..at + body.end)
                .unwrap_or_default();
            sink.on_http(conn, tag, status, body, now, &mut self.outbox);
            at += total;
        }
        Ok(at)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        for c in &self.conns {
            if c.state != ConnState::Closed && c.fd >= 0 {
                sys::close(c.fd);
            }
        }
    }
}
