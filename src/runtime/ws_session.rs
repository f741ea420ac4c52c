//! One WebSocket connection after the upgrade (PROTOCOL.md §5–6, §12–15).
//!
//! Three tasks share one `Session`: the main task reads and decodes frames and handles requests;
//! the writer task drains the outbound queue, everything queued in one write per turn; the timer
//! task enforces the authentication deadline and sends `tick` events. The outbound queue is
//! bounded in bytes: past the bound its frames are discarded and the socket is closed with 1013.
//!
//! Run event streams (`streamRunEvents`, EVENTS.md §3) live on the session: the hub numbers and
//! serializes each run frame once; a stream adds only its `streamId` around the shared bytes.
//! Frames queued for a stream are tagged so the writer can count them down (per-stream
//! backpressure, EVENTS.md §3.5).
//!
//! Invariant: once the session has finished, its outbound queue is empty and no task writes.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::http_conn::auth_rpc_error;
use super::notify::Notify;
use super::worker::{ConnControl, EventSink, StopReason, WorkerContext};
use super::Service;
use crate::auth::Principal;
use crate::error::{ErrorCode, RpcError};
use crate::events::hub::{Broadcast, RunFrame, StreamRefusal};
use crate::rpc::connect;
use crate::rpc::dispatch::{self, CallContext, Transport};
use crate::rpc::frame::{
    self, encode_event_body, encode_event_head, encode_response_error, encode_response_ok,
    write_string, INVALID_FRAME_ID,
};
use crate::rpc::methods;
use crate::rpc::Value;
use crate::state::{Slot, SlotKind};
use crate::ws::codec::{self, Decoder, Message};
use crate::ws::frame::{server_head, OpCode};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, OwnedWriteHalf, Splitable};
use monoio::net::TcpStream;
use simd_json::prelude::*;
use std::cell::{Cell, RefCell};
use std::collections::{HashSet, VecDeque};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a closing socket waits for the peer's close frame before dropping the connection.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// How long one queued batch may take to leave before the peer is considered gone.
const WRITE_STALL: Duration = Duration::from_secs(30);
const READ_CHUNK_BYTES: usize = 8 * 1024;
/// `run.heartbeat` period per open run stream (EVENTS.md §3.4).
const STREAM_HEARTBEAT: Duration = Duration::from_millis(1_000);
/// Frames a stream may have waiting before it is torn down (EVENTS.md §3.5).
const STREAM_QUEUE_MAX: usize = 1_000;
const BACKPRESSURE_MESSAGE: &str =
    "Run event stream outbound queue exceeded 1000 frames; disconnecting slow consumer.";

/// One `streamRunEvents` stream of this socket.
#[derive(Debug)]
struct RunStream {
    /// Tags this stream's frames in the outbound queue.
    key: u64,
    id: String,
    run_id: String,
    /// The per-user cap key it was counted under in the hub.
    identity: Option<String>,
    /// Window frames up to this seq were captured at registration (replayed or skipped); live
    /// frames at or below it are already covered.
    delivered_through: u64,
    /// Frames queued in the outbound queue (or pending) and not yet handed to the socket.
    queued: usize,
    /// Live frames held while the replay is still running (its snapshot is being read).
    pending: Option<Vec<Arc<RunFrame>>>,
}

#[derive(Debug, Default)]
struct Outbound {
    /// Encoded frames, each tagged with the run stream it belongs to (if any).
    frames: VecDeque<(Vec<u8>, Option<u64>)>,
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
    streams: RefCell<Vec<RunStream>>,
    next_stream_key: Cell<u64>,
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
        if let (Some(run_id), Some(frame)) = (&broadcast.run_id, &broadcast.run_frame) {
            if self.streams.borrow().iter().any(|s| &s.run_id == run_id) {
                // EVENTS.md §3.4: the streams get `run.event` instead of the raw event.
                return self.deliver_to_streams(run_id, frame);
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

    fn enqueue_data(&self, opcode: OpCode, payload: &[u8]) {
        self.enqueue_tagged(opcode, payload, None);
    }

    /// Queues one data message, tagged with the run stream it belongs to. Past the byte bound the
    /// queue is discarded and the socket closes with 1013 (PROTOCOL.md §15).
    fn enqueue_tagged(&self, opcode: OpCode, payload: &[u8], tag: Option<u64>) {
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
        out.frames.push_back((frame, tag));
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
        out.frames.push_back((frame, None));
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

    /// One live window frame to every stream of this socket on the frame's run.
    fn deliver_to_streams(&self, run_id: &str, frame: &Arc<RunFrame>) {
        let mut sends = Vec::new();
        let mut overflowed = Vec::new();
        for stream in self.streams.borrow_mut().iter_mut() {
            if stream.run_id != run_id || frame.seq <= stream.delivered_through {
                continue;
            }
            stream.delivered_through = frame.seq;
            if stream.queued >= STREAM_QUEUE_MAX {
                overflowed.push(stream.key);
            } else if let Some(pending) = stream.pending.as_mut() {
                pending.push(frame.clone());
                stream.queued += 1;
            } else {
                sends.push((stream.key, stream.id.clone()));
            }
        }
        for (key, id) in sends {
            self.send_run_frame(key, &id, frame, frame.state_version, true);
        }
        for key in overflowed {
            self.fail_stream(key, "BackpressureDisconnect", BACKPRESSURE_MESSAGE);
        }
    }

    /// `run.event` `{streamId, …frame}`: the frame's shared bytes with this stream's id in front.
    /// `counted` frames are tagged and count toward the stream's live queue (EVENTS.md §3.5).
    fn send_run_frame(
        &self,
        key: u64,
        stream_id: &str,
        frame: &RunFrame,
        state_version: u64,
        counted: bool,
    ) {
        let seq = self.seq.get() + 1;
        self.seq.set(seq);
        let mut bytes = Vec::with_capacity(96 + stream_id.len() + frame.fields.len());
        encode_event_head(&mut bytes, seq, state_version);
        bytes.extend_from_slice(br#""event":"run.event","payload":{"streamId":"#);
        write_string(&mut bytes, stream_id);
        bytes.push(b',');
        bytes.extend_from_slice(&frame.fields);
        bytes.extend_from_slice(br#","apiVersion":"v1"}"#);
        self.context
            .state
            .counters
            .events_sent
            .fetch_add(1, Ordering::Relaxed);
        if !counted {
            return self.enqueue_text(&bytes);
        }
        self.enqueue_tagged(OpCode::Text, &bytes, Some(key));
        if let Some(stream) = self.streams.borrow_mut().iter_mut().find(|s| s.key == key) {
            stream.queued += 1;
        }
    }

    /// The writer took these tagged frames; their streams' queues shrink.
    fn release_stream_frames(&self, tags: &[u64]) {
        if tags.is_empty() {
            return;
        }
        let mut streams = self.streams.borrow_mut();
        for tag in tags {
            if let Some(stream) = streams.iter_mut().find(|s| s.key == *tag) {
                stream.queued = stream.queued.saturating_sub(1);
            }
        }
    }

    /// Tears a stream down (EVENTS.md §3.5): its queued frames are dropped, the socket gets
    /// `run.error`, and the hub releases its caps. The socket stays open.
    fn fail_stream(&self, key: u64, code: &str, message: &str) {
        let stream = {
            let mut streams = self.streams.borrow_mut();
            let Some(index) = streams.iter().position(|s| s.key == key) else {
                return;
            };
            streams.remove(index)
        };
        {
            let mut out = self.out.borrow_mut();
            let before = out.frames.len();
            let mut freed = 0;
            out.frames.retain(|(frame, tag)| {
                let keep = *tag != Some(key);
                if !keep {
                    freed += frame.len();
                }
                keep
            });
            out.bytes = out.bytes.saturating_sub(freed);
            tracing::debug!(
                dropped = before - out.frames.len(),
                code,
                "run event stream torn down"
            );
        }
        self.send_event(
            "run.error",
            &frame::object(vec![
                ("streamId", Value::from(stream.id.as_str())),
                ("runId", Value::from(stream.run_id.as_str())),
                (
                    "error",
                    frame::object(vec![
                        ("version", Value::from("v1")),
                        ("code", Value::from(code)),
                        ("message", Value::from(message)),
                    ]),
                ),
            ]),
        );
        self.context
            .state
            .hub
            .close_stream(&stream.run_id, stream.identity.as_deref());
    }

    /// One `run.heartbeat` per open stream (EVENTS.md §3.4).
    fn send_stream_heartbeats(&self) {
        let streams: Vec<(String, String)> = self
            .streams
            .borrow()
            .iter()
            .map(|s| (s.id.clone(), s.run_id.clone()))
            .collect();
        let ts = crate::clock::now_ms();
        for (stream_id, run_id) in streams {
            self.send_event(
                "run.heartbeat",
                &frame::object(vec![
                    ("apiVersion", Value::from("v1")),
                    ("type", Value::from("Heartbeat")),
                    ("streamId", Value::from(stream_id)),
                    ("runId", Value::from(run_id)),
                    ("ts", Value::from(ts)),
                ]),
            );
        }
    }

    /// `streamRunEvents` (METHODS.md §3.17, EVENTS.md §3.2–3.3): validate in the spec's order,
    /// register the stream, respond, then replay.
    async fn handle_stream_run_events(
        self: &Rc<Self>,
        id: &str,
        params: &Value,
        principal: &Principal,
    ) {
        if let Err(error) = dispatch::check_scope(principal, "streamRunEvents") {
            return self.respond_error(id, &error);
        }
        let Some(run_id) = params
            .get("runId")
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
        else {
            return self.respond_error(
                id,
                &RpcError::new(ErrorCode::InvalidRunId, "runId is required"),
            );
        };
        // A JSON null counts as absent (no replay).
        let after_seq = match params.get("afterSeq").filter(|v| !v.is_null()) {
            None => None,
            Some(value) => match non_negative_integer(value) {
                Some(after_seq) => Some(after_seq),
                None => {
                    return self.respond_error(
                        id,
                        &RpcError::new(
                            ErrorCode::SeqOutOfRange,
                            "afterSeq must be a non-negative integer",
                        ),
                    )
                }
            },
        };
        let state = &self.context.state;
        let context = CallContext {
            state,
            principal,
            transport: Transport::WebSocket,
            subscriber: None,
        };
        if !state.hub.has_window(&run_id) {
            match methods::run_exists(&context, &run_id).await {
                Ok(true) => {}
                Ok(false) => {
                    return self.respond_error(
                        id,
                        &RpcError::new(ErrorCode::RunNotFound, format!("Run not found: {run_id}")),
                    )
                }
                Err(error) => return self.respond_error(id, &error),
            }
        }
        if self.is_closing() {
            return self.respond_error(
                id,
                &RpcError::new(ErrorCode::ConnectionClosed, "Connection closed"),
            );
        }
        let identity = principal.user_id.clone().or(principal.token_id.clone());
        let opened = state.hub.open_stream(
            &run_id,
            identity.as_deref(),
            self.streams.borrow().len(),
            after_seq,
        );
        let capture = match opened {
            Ok(capture) => capture,
            Err(StreamRefusal::SeqOutOfRange {
                after_seq,
                current_seq,
            }) => {
                return self.respond_error(
                    id,
                    &RpcError::new(
                        ErrorCode::SeqOutOfRange,
                        format!("afterSeq {after_seq} is newer than current seq {current_seq}"),
                    ),
                )
            }
            Err(StreamRefusal::Cap { scope, limit }) => {
                return self.respond_error(
                    id,
                    &RpcError::new(
                        ErrorCode::RateLimited,
                        format!(
                            "Gateway run-event subscriber limit reached ({scope} cap of {limit})."
                        ),
                    )
                    .with("scope", scope)
                    .with("limit", limit as u64),
                )
            }
        };
        let key = self.next_stream_key.get();
        self.next_stream_key.set(key + 1);
        let stream_id = uuid::Uuid::new_v4().to_string();
        // EVENTS.md §3.3 step 1: the captured frames start after a hole the client cannot replay.
        let gap = match (after_seq, capture.frames.first()) {
            (Some(after_seq), Some(first)) if after_seq + 1 < first.seq => {
                Some((after_seq + 1, first.seq - 1))
            }
            _ => None,
        };
        self.streams.borrow_mut().push(RunStream {
            key,
            id: stream_id.clone(),
            run_id: run_id.clone(),
            identity,
            delivered_through: capture.current_seq,
            queued: 0,
            pending: gap.map(|_| Vec::new()),
        });
        self.respond_ok(
            id,
            &frame::object(vec![
                ("streamId", Value::from(stream_id.as_str())),
                ("runId", Value::from(run_id.as_str())),
                ("afterSeq", after_seq.map_or(Value::null(), Value::from)),
                ("currentSeq", Value::from(capture.current_seq)),
            ]),
        );
        if let Some((from_seq, to_seq)) = gap {
            let params = frame::object(vec![("runId", Value::from(run_id.as_str()))]);
            let snapshot = methods::get_run(&context, &params).await;
            if !self.streams.borrow().iter().any(|s| s.key == key) {
                // Torn down (backpressure) while the snapshot was read.
                return;
            }
            let snapshot = match snapshot {
                Ok(snapshot) => snapshot,
                Err(error) => return self.fail_stream(key, "Internal", &error.message),
            };
            self.send_event(
                "run.gap_resync",
                &frame::object(vec![
                    ("apiVersion", Value::from("v1")),
                    ("type", Value::from("GapResync")),
                    ("streamId", Value::from(stream_id.as_str())),
                    ("runId", Value::from(run_id.as_str())),
                    ("fromSeq", Value::from(from_seq)),
                    ("toSeq", Value::from(to_seq)),
                    ("snapshot", snapshot),
                ]),
            );
        }
        // Replay frames are connection-scoped: they carry the current stateVersion (§12) and are
        // not counted against the stream's live queue.
        let current_version = state.state_version();
        for frame in &capture.frames {
            self.send_run_frame(key, &stream_id, frame, current_version, false);
        }
        // §3.3 step 3: live frames that arrived during the replay, in order.
        let pending = self
            .streams
            .borrow_mut()
            .iter_mut()
            .find(|s| s.key == key)
            .map(|stream| {
                let pending = stream.pending.take().unwrap_or_default();
                stream.queued = stream.queued.saturating_sub(pending.len());
                pending
            })
            .unwrap_or_default();
        for frame in pending {
            self.send_run_frame(key, &stream_id, &frame, frame.state_version, true);
        }
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
        if request.method == "streamRunEvents" {
            let empty = Value::Object(Box::default());
            let params = if request.params.is_object() {
                &request.params
            } else {
                &empty
            };
            return self
                .handle_stream_run_events(&request.id, params, &principal)
                .await;
        }
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
        // Streams end with their socket (EVENTS.md §3.4): release their caps and windows.
        for stream in self.streams.take() {
            self.context
                .state
                .hub
                .close_stream(&stream.run_id, stream.identity.as_deref());
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
        streams: RefCell::new(Vec::new()),
        next_stream_key: Cell::new(0),
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
            let mut tags = Vec::new();
            for (frame, tag) in out.frames.drain(..) {
                batch.extend_from_slice(&frame);
                tags.extend(tag);
            }
            out.bytes = 0;
            let taken = (batch, out.close.clone(), out.abort, out.finished);
            drop(out);
            session.release_stream_frames(&tags);
            taken
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
    // One timer per socket for `tick` and the run streams' heartbeats (PROTOCOL.md §14).
    let heartbeat = Duration::from_millis(config.heartbeat_ms);
    let mut generation = session.tick_generation.get();
    let mut next_tick = Instant::now() + heartbeat;
    let mut next_stream_beat = Instant::now() + STREAM_HEARTBEAT;
    loop {
        if session.out.borrow().finished || session.is_closing() {
            return;
        }
        let now = Instant::now();
        if generation != session.tick_generation.get() {
            // A new connect restarts the tick period.
            generation = session.tick_generation.get();
            next_tick = now + heartbeat;
        }
        if now >= next_tick {
            session.send_event(
                "tick",
                &frame::object(vec![("ts", Value::from(crate::clock::now_ms()))]),
            );
            next_tick = now + heartbeat;
        }
        if session.streams.borrow().is_empty() {
            // The first heartbeat of a new stream comes a full period after it opened, at most.
            next_stream_beat = now + STREAM_HEARTBEAT;
        } else if now >= next_stream_beat {
            session.send_stream_heartbeats();
            next_stream_beat = now + STREAM_HEARTBEAT;
        }
        let wake_at = next_tick.min(next_stream_beat);
        monoio::select! {
            _ = monoio::time::sleep(wake_at.saturating_duration_since(now)) => {}
            _ = session.timer_wake.notified() => {}
        }
    }
}

/// `afterSeq`: an integer ≥ 0 (an integral float such as `3.0` counts, as in JavaScript).
fn non_negative_integer(value: &Value) -> Option<u64> {
    const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;
    value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= MAX_SAFE_INTEGER)
            .map(|f| f as u64)
    })
}
