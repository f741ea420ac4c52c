//! One WebSocket connection after the upgrade (PROTOCOL.md §5–6, §12–15).
//!
//! Three tasks share one `Session`: the main task reads and decodes frames and handles requests;
//! the writer task drains the outbound queue, everything queued in one write per turn; the timer
//! task enforces the authentication deadline and sends `tick` events. The outbound queue is
//! bounded in bytes: past the bound its frames are discarded and the socket is closed with 1013.
//!
//! Invariant: once the session has finished, its outbound queue is empty and no task writes.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::http_conn::auth_rpc_error;
use super::notify::Notify;
use super::worker::{ConnControl, EventSink, StopReason, WorkerContext};
use super::Service;
use crate::auth::Principal;
use crate::error::{ErrorCode, RpcError};
use crate::events::hub::Broadcast;
use crate::rpc::connect;
use crate::rpc::dispatch::{self, CallContext, Transport};
use crate::rpc::frame::{
    self, encode_event_body, encode_event_head, encode_response_error, encode_response_ok,
    INVALID_FRAME_ID,
};
use crate::rpc::methods;
use crate::rpc::Value;
use crate::state::{Slot, SlotKind};
use crate::ws::codec::{self, Decoder, Message};
use crate::ws::frame::{server_head, OpCode};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, OwnedWriteHalf, Splitable};
use monoio::net::TcpStream;
use std::cell::{Cell, RefCell};
use std::collections::{HashSet, VecDeque};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How long a closing socket waits for the peer's close frame before dropping the connection.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// How long one queued batch may take to leave before the peer is considered gone.
const WRITE_STALL: Duration = Duration::from_secs(30);
const READ_CHUNK_BYTES: usize = 8 * 1024;

#[derive(Debug, Default)]
struct Outbound {
    frames: VecDeque<Vec<u8>>,
    bytes: usize,
    /// A close frame to send after the queued frames; nothing is queued after it.
    close: Option<(u16, String)>,
    /// Drop the connection without writing anything more (authentication deadline).
    abort: bool,
    finished: bool,
}

struct Session {
    context: Rc<WorkerContext>,
    control: Rc<ConnControl>,
    /// The upgrade request's headers that authentication may read.
    headers: Vec<(String, String)>,
    principal: RefCell<Option<Principal>>,
    slot: RefCell<Option<Slot>>,
    subscribe: RefCell<Option<HashSet<String>>>,
    seq: Cell<u64>,
    out: RefCell<Outbound>,
    writer_wake: Notify,
    /// Wakes a writer blocked on a peer that stopped reading, so it gives up at once.
    abort_wake: Notify,
    timer_wake: Notify,
    /// Bumped by every successful connect so the tick timer restarts.
    tick_generation: Cell<u64>,
    /// Registration with the worker's broadcast delivery, from the first successful connect.
    sink_id: Cell<Option<u64>>,
}

impl EventSink for Session {
    /// PROTOCOL.md §13: authenticated sockets only; events without a run, or a null or empty
    /// filter, or a filter holding the run, are delivered.
    fn deliver(&self, broadcast: &Broadcast) {
        if !self.is_authenticated() || self.is_closing() {
            return;
        }
        if let (Some(run_id), Some(filter)) = (&broadcast.run_id, self.subscribe.borrow().as_ref())
        {
            if !filter.is_empty() && !filter.contains(run_id) {
                return;
            }
        }
        let seq = self.seq.get() + 1;
        self.seq.set(seq);
        let mut bytes = Vec::with_capacity(48 + broadcast.body.len());
        encode_event_head(&mut bytes, seq, broadcast.state_version);
        bytes.extend_from_slice(&broadcast.body);
        self.context
            .state
            .counters
            .events_sent
            .fetch_add(1, Ordering::Relaxed);
        self.enqueue_text(&bytes);
    }
}

impl Session {
    fn is_authenticated(&self) -> bool {
        self.principal.borrow().is_some()
    }

    fn is_closing(&self) -> bool {
        let out = self.out.borrow();
        out.close.is_some() || out.abort || out.finished
    }

    fn enqueue_text(&self, payload: &[u8]) {
        self.enqueue_data(OpCode::Text, payload);
    }

    /// Queues one data message. Past the byte bound the queue is discarded and the socket closes
    /// with 1013 (PROTOCOL.md §15).
    fn enqueue_data(&self, opcode: OpCode, payload: &[u8]) {
        let mut out = self.out.borrow_mut();
        if out.close.is_some() || out.abort || out.finished {
            return;
        }
        let mut head = [0u8; 10];
        let head_len = server_head(opcode, payload.len(), &mut head);
        let frame_bytes = head_len + payload.len();
        if out.bytes + frame_bytes > self.context.state.config.outbound_bytes_max {
            out.frames.clear();
            out.bytes = 0;
            out.close = Some((codec::CLOSE_TRY_AGAIN_LATER, "event backpressure".into()));
            self.context
                .state
                .counters
                .outbound_overflow_closes
                .fetch_add(1, Ordering::Relaxed);
            drop(out);
            tracing::debug!("outbound queue over its bound; closing with 1013");
            self.writer_wake.notify();
            self.control.wake.notify();
            return;
        }
        let mut frame = Vec::with_capacity(frame_bytes);
        frame.extend_from_slice(head.get(..head_len).unwrap_or_default());
        frame.extend_from_slice(payload);
        out.bytes += frame_bytes;
        out.frames.push_back(frame);
        debug_assert!(out.bytes <= self.context.state.config.outbound_bytes_max);
        drop(out);
        self.writer_wake.notify();
    }

    fn enqueue_control(&self, opcode: OpCode, payload: &[u8]) {
        let mut out = self.out.borrow_mut();
        if out.close.is_some() || out.abort || out.finished {
            return;
        }
        let mut frame = Vec::with_capacity(payload.len() + 2);
        codec::encode_frame(&mut frame, opcode, payload);
        out.bytes += frame.len();
        out.frames.push_back(frame);
        drop(out);
        self.writer_wake.notify();
    }

    fn request_close(&self, code: u16, reason: &str) {
        let mut out = self.out.borrow_mut();
        if out.close.is_none() && !out.abort {
            out.close = Some((code, reason.to_string()));
        }
        drop(out);
        self.writer_wake.notify();
    }

    fn respond_ok(&self, id: &str, payload: &Value) {
        self.enqueue_text(&encode_response_ok(id, payload));
    }

    fn respond_error(&self, id: &str, error: &RpcError) {
        self.context
            .state
            .counters
            .rpc_errors
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(code = error.code.as_str(), message = %error.message, "request refused");
        self.enqueue_text(&encode_response_error(id, error));
    }

    /// Sends an event to this connection only: numbered with the next `seq`, carrying the current
    /// `stateVersion` without incrementing it.
    fn send_event(&self, name: &str, payload: &Value) {
        let seq = self.seq.get() + 1;
        self.seq.set(seq);
        let mut bytes = Vec::with_capacity(96);
        encode_event_head(&mut bytes, seq, self.context.state.state_version());
        bytes.extend_from_slice(&encode_event_body(name, payload));
        self.context
            .state
            .counters
            .events_sent
            .fetch_add(1, Ordering::Relaxed);
        self.enqueue_text(&bytes);
    }

    async fn handle_text(self: &Rc<Self>, bytes: Vec<u8>) {
        let state = &self.context.state;
        state.counters.ws_messages.fetch_add(1, Ordering::Relaxed);
        let request = match frame::parse_ws_request(bytes, state.config.message_bytes_max) {
            Ok(request) => request,
            Err(error) => return self.respond_error(INVALID_FRAME_ID, &error),
        };
        if request.method == "connect" {
            return self.handle_connect(&request.id, &request.params).await;
        }
        let principal = self.principal.borrow().clone();
        let Some(principal) = principal else {
            return self.respond_error(
                &request.id,
                &RpcError::new(ErrorCode::Unauthorized, "Connect first"),
            );
        };
        // Auto-subscribe adds the run only to a filter that exists: an unfiltered socket already
        // sees every run (docs/DECISIONS.md; the reference narrows it instead).
        let subscriber = |run_id: &str| {
            if let Some(filter) = self.subscribe.borrow_mut().as_mut() {
                filter.insert(run_id.to_string());
            }
        };
        let context = CallContext {
            state,
            principal: &principal,
            transport: Transport::WebSocket,
            subscriber: Some(&subscriber),
        };
        match dispatch::dispatch(&context, &request.method, &request.params).await {
            Ok(payload) => self.respond_ok(&request.id, &payload),
            Err(error) => self.respond_error(&request.id, &error),
        }
    }

    /// PROTOCOL.md §6.2–6.4.
    async fn handle_connect(self: &Rc<Self>, id: &str, params: &Value) {
        let state = &self.context.state;
        let request = match connect::validate(params, state.config.protocol) {
            Ok(request) => request,
            Err(error) => return self.respond_error(id, &error),
        };
        let was_authenticated = self.is_authenticated();
        // Gates and credentials again, now with the connect token (PROTOCOL.md §3).
        let authenticated = state.authenticator.authenticate(
            &self.headers,
            request.token.as_deref(),
            crate::clock::now_ms(),
        );
        let principal = match authenticated {
            Ok(principal) => principal,
            Err(error) => {
                state.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
                self.respond_error(id, &auth_rpc_error(&error));
                if !was_authenticated {
                    self.request_close(codec::CLOSE_POLICY, "authentication failed");
                }
                return;
            }
        };
        if !was_authenticated {
            let Some(slot) =
                Slot::try_acquire(state, SlotKind::Authenticated, state.config.connections_max)
            else {
                self.respond_error(
                    id,
                    &RpcError::new(
                        ErrorCode::ConnectionLimit,
                        "Gateway connection limit reached",
                    ),
                );
                self.request_close(codec::CLOSE_TRY_AGAIN_LATER, "connection limit reached");
                return;
            };
            // Replacing the pre-auth slot releases it.
            *self.slot.borrow_mut() = Some(slot);
        }
        let session_token = uuid::Uuid::new_v4().to_string();
        let (runs, approvals) = match &state.storage {
            Some(storage) => {
                let runs = methods::snapshot_runs(storage).await;
                let approvals = methods::pending_approvals(storage, None, None, usize::MAX).await;
                match (runs, approvals) {
                    (Ok(runs), Ok(approvals)) => (runs, approvals),
                    (Err(error), _) | (_, Err(error)) => return self.respond_error(id, &error),
                }
            }
            None => (Vec::new(), Vec::new()),
        };
        let hello = connect::hello(state, &principal, &session_token, runs, approvals);
        if self.sink_id.get().is_none() {
            let sink: Rc<dyn EventSink> = self.clone();
            self.sink_id.set(Some(self.context.add_sink(sink)));
        }
        tracing::debug!(role = %principal.role, user = ?principal.user_id, "connected");
        *self.principal.borrow_mut() = Some(principal);
        *self.subscribe.borrow_mut() = request.subscribe;
        self.respond_ok(id, &hello);
        self.tick_generation.set(self.tick_generation.get() + 1);
        self.timer_wake.notify();
    }

    /// The reader is done: the writer sends what is queued (and the close frame) and ends.
    fn finish(&self) {
        if let Some(id) = self.sink_id.take() {
            self.context.remove_sink(id);
        }
        self.out.borrow_mut().finished = true;
        self.writer_wake.notify();
        self.timer_wake.notify();
    }

    /// Drops everything queued and stops the writer without another byte.
    fn abort(&self) {
        let mut out = self.out.borrow_mut();
        out.abort = true;
        out.frames.clear();
        out.bytes = 0;
        drop(out);
        self.writer_wake.notify();
        self.abort_wake.notify();
        self.control.wake.notify();
    }
}

/// Runs the session until the connection ends. `leftover` holds bytes read after the upgrade head.
pub async fn run(
    stream: TcpStream,
    headers: Vec<(String, String)>,
    leftover: Vec<u8>,
    context: Rc<WorkerContext>,
    control: Rc<ConnControl>,
    pre_auth_slot: Option<Slot>,
) {
    let echo = context.service == Service::Echo;
    debug_assert!(echo || pre_auth_slot.as_ref().map(Slot::kind) == Some(SlotKind::PreAuth));
    let session = Rc::new(Session {
        context: context.clone(),
        control: control.clone(),
        headers,
        principal: RefCell::new(None),
        slot: RefCell::new(pre_auth_slot),
        subscribe: RefCell::new(None),
        seq: Cell::new(0),
        out: RefCell::new(Outbound::default()),
        writer_wake: Notify::default(),
        abort_wake: Notify::default(),
        timer_wake: Notify::default(),
        tick_generation: Cell::new(0),
        sink_id: Cell::new(None),
    });
    let (mut reader, writer) = stream.into_split();
    let writer_task = monoio::spawn(write_loop(session.clone(), writer));
    let timer_task = (!echo).then(|| monoio::spawn(timer_loop(session.clone(), Instant::now())));
    if !echo {
        session.send_event(
            "connect.challenge",
            &frame::object(vec![
                ("nonce", Value::from(uuid::Uuid::new_v4().to_string())),
                ("ts", Value::from(crate::clock::now_ms())),
            ]),
        );
    }
    read_loop(&session, &mut reader, leftover, echo).await;
    session.finish();
    // The writer ends on its own once finished; a peer that stopped reading cannot hold it.
    if monoio::time::timeout(CLOSE_WAIT, writer_task)
        .await
        .is_err()
    {
        session.abort();
    }
    if let Some(timer_task) = timer_task {
        timer_task.await;
    }
    // Dropping the session drops its slot; dropping the halves closes the socket.
    debug_assert!(session.out.borrow().frames.is_empty());
}

async fn read_loop(
    session: &Rc<Session>,
    reader: &mut monoio::io::OwnedReadHalf<TcpStream>,
    mut buf: Vec<u8>,
    echo: bool,
) {
    let mut decoder = Decoder::new(session.context.state.config.message_bytes_max);
    let mut closing_since: Option<Instant> = None;
    loop {
        // Decode everything already read.
        let mut position = 0;
        loop {
            let pending = buf.get(position..).unwrap_or_default();
            if pending.is_empty() {
                break;
            }
            match decoder.decode(pending) {
                Ok((used, message)) => {
                    position += used;
                    let Some(message) = message else {
                        if used == 0 {
                            break;
                        }
                        continue;
                    };
                    match message {
                        Message::Text(bytes) if echo => session.enqueue_data(OpCode::Text, &bytes),
                        Message::Binary(bytes) if echo => {
                            session.enqueue_data(OpCode::Binary, &bytes)
                        }
                        Message::Text(bytes) | Message::Binary(bytes) => {
                            if !session.is_closing() {
                                session.handle_text(bytes).await;
                            }
                        }
                        Message::Ping(payload) => session.enqueue_control(OpCode::Pong, &payload),
                        Message::Pong(_) => {}
                        Message::Close(received) => {
                            // > RFC 6455 §5.5.1: the endpoint MUST send a Close frame in response
                            // > … typically echoing the status code it received.
                            let code = received
                                .as_ref()
                                .map_or(codec::CLOSE_NORMAL, |(code, _)| *code);
                            session.request_close(code, "");
                            return;
                        }
                    }
                }
                Err(error) => {
                    tracing::debug!(
                        code = error.code,
                        reason = error.reason,
                        "websocket protocol error"
                    );
                    session.request_close(error.code, error.reason);
                    return;
                }
            }
        }
        buf.drain(..position.min(buf.len()));
        if session.out.borrow().abort {
            return;
        }
        if session.is_closing() && closing_since.is_none() {
            closing_since = Some(Instant::now());
        }
        if let Some(reason) = session.control.stop_reason() {
            if reason == StopReason::Shutdown && closing_since.is_none() {
                session.request_close(codec::CLOSE_GOING_AWAY, "server shutdown");
                closing_since = Some(Instant::now());
            }
        }
        let wait = match closing_since {
            Some(since) => CLOSE_WAIT.saturating_sub(since.elapsed()),
            None => Duration::from_secs(3600),
        };
        if wait.is_zero() {
            return;
        }
        if buf.capacity() - buf.len() < READ_CHUNK_BYTES / 2 {
            buf.reserve(READ_CHUNK_BYTES);
        }
        // monoio reads into a `Vec` from index 0: read into the spare capacity after what is held.
        let filled = buf.len();
        let owned = std::mem::take(&mut buf).slice_mut(filled..);
        monoio::select! {
            (result, owned) = reader.read(owned) => {
                buf = owned.into_inner();
                match result {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
            _ = monoio::time::sleep(wait) => {
                if closing_since.is_some() {
                    return;
                }
            }
            _ = session.control.wake.notified() => {}
        }
    }
}

async fn write_loop(session: Rc<Session>, mut writer: OwnedWriteHalf<TcpStream>) {
    loop {
        let (batch, close, abort, finished) = {
            let mut out = session.out.borrow_mut();
            let mut batch = Vec::with_capacity(out.bytes);
            for frame in out.frames.drain(..) {
                batch.extend_from_slice(&frame);
            }
            out.bytes = 0;
            (batch, out.close.clone(), out.abort, out.finished)
        };
        if abort {
            return;
        }
        if !batch.is_empty() {
            let written = monoio::select! {
                result = monoio::time::timeout(WRITE_STALL, writer.write_all(batch)) => matches!(result, Ok((Ok(_), _))),
                _ = session.abort_wake.notified() => false,
            };
            if written {
                continue;
            }
            session.abort();
            return;
        }
        if let Some((code, reason)) = close {
            let mut frame = Vec::with_capacity(4 + reason.len());
            codec::encode_close(&mut frame, code, &reason);
            let _ = monoio::time::timeout(CLOSE_WAIT, writer.write_all(frame)).await;
            let _ = writer.shutdown().await;
            session.control.wake.notify();
            return;
        }
        if finished {
            return;
        }
        session.writer_wake.notified().await;
    }
}

/// The authentication deadline (drop without a close frame, PROTOCOL.md §6.1), then `tick`
/// every `heartbeatMs` after each successful connect.
async fn timer_loop(session: Rc<Session>, opened: Instant) {
    let config = &session.context.state.config;
    let deadline = opened + Duration::from_millis(config.auth_deadline_ms);
    while !session.is_authenticated() {
        if session.out.borrow().finished {
            return;
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            tracing::debug!("authentication deadline passed; dropping connection");
            session.abort();
            return;
        }
        monoio::select! {
            _ = monoio::time::sleep(wait) => {}
            _ = session.timer_wake.notified() => {}
        }
    }
    let heartbeat = Duration::from_millis(config.heartbeat_ms);
    loop {
        if session.out.borrow().finished || session.is_closing() {
            return;
        }
        let generation = session.tick_generation.get();
        monoio::select! {
            _ = monoio::time::sleep(heartbeat) => {
                if generation == session.tick_generation.get() && !session.is_closing() {
                    session.send_event("tick", &frame::object(vec![("ts", Value::from(crate::clock::now_ms()))]));
                }
            }
            _ = session.timer_wake.notified() => {}
        }
    }
}
