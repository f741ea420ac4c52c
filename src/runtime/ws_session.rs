//! One WebSocket connection after the upgrade (PROTOCOL.md §5–6, §12–15).
//!
//! A session is one task (the reader) plus shared, worker-level machinery:
//! - Reads wait for readiness and then read into the worker's one read buffer, so an idle socket
//!   holds no read buffer at all; the decoder keeps only a partial message.
//! - Writes are corked: enqueuing marks the session dirty, and the worker's flusher writes
//!   everything queued for it in one vectored `sendmsg` per loop turn, `[head][shared body][tail]`
//!   per frame (see `outbound`). When the kernel buffer is full, a drain task waits for
//!   writability; the queue is bounded in bytes and past the bound the socket closes with 1013.
//! - The authentication deadline, `tick` and the run streams' heartbeats come from the worker's
//!   ticker (`WsWorker::timers`), not a task per socket.
//! - Requests other than `connect` run as their own tasks, at most `maxRequestsInFlight` at a time
//!   per socket; past that the reader stops reading until one finishes.
//!
//! Run event streams (`streamRunEvents`, EVENTS.md §3) live on the session: the hub numbers and
//! serializes each run frame once; a stream adds only its `streamId` around the shared bytes.
//! Frames queued for a stream are tagged so the flusher can count them down (per-stream
//! backpressure, EVENTS.md §3.5).
//!
//! DevTools streams (`streamDevTools`, EVENTS.md §4.5) are driven by the DevTools hub, which
//! builds each frame's snapshot and delta once per run; a task per stream wraps the shared event
//! bytes in `devtools.event` with the stream's id, counted toward the same per-stream bound.
//!
//! Invariant: once the session has finished, its outbound queue is empty and nothing more is
//! written to its socket.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::http_conn::{auth_rpc_error, Upgraded};
use super::notify::Notify;
use super::outbound::{Body, OutFrame, OutQueue};
use super::worker::{ConnControl, StopReason, WorkerContext};
use super::Service;
use crate::auth::Principal;
use crate::devtools::hub::Step;
use crate::engine::core::storage_rpc_error;
use crate::error::{ErrorCode, RpcError};
use crate::events::hub::{Broadcast, BroadcastBatch, RunFrame, StreamRefusal};
use crate::rpc::connect;
use crate::rpc::devtools as rpc_devtools;
use crate::rpc::dispatch::{self, CallContext, Transport};
use crate::rpc::frame::{
    self, encode_event_body, encode_response_error, encode_response_ok, write_string,
    INVALID_FRAME_ID,
};
use crate::rpc::methods;
use crate::rpc::Value;
use crate::state::{Slot, SlotKind};
use crate::storage::Command;
use crate::ws::codec::{self, CodecError, Decoder, Message};
use crate::ws::frame::OpCode;
use monoio::net::TcpStream;
use simd_json::prelude::*;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{IoSlice, Read};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::rc::{Rc, Weak};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a closing socket waits for the peer's close frame, and a finished session for its
/// queue to leave, before the connection is dropped.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// How long a socket whose close frame has left reads (and drops) input while it waits for the
/// peer to close its side (`linger`).
const LINGER: Duration = Duration::from_secs(2);
/// Input dropped per readiness while lingering, so one socket cannot hold its worker.
const LINGER_READ_BYTES: usize = 1 << 20;
/// How long a socket may stay unwritable with frames queued before the peer is considered gone.
const WRITE_STALL: Duration = Duration::from_secs(30);
/// The worker's read buffer: one per worker, shared by all its sessions.
const READ_BUFFER_BYTES: usize = 64 * 1024;
/// Slices per `sendmsg` (IOV_MAX is 1024; a frame is at most three slices).
const SLICES_PER_WRITE: usize = 512;
/// `run.heartbeat` period per open run stream (EVENTS.md §3.4).
const STREAM_HEARTBEAT: Duration = Duration::from_millis(1_000);
/// Frames a stream may have waiting before it is torn down (EVENTS.md §3.5).
const STREAM_QUEUE_MAX: usize = 1_000;
const BACKPRESSURE_MESSAGE: &str =
    "Run event stream outbound queue exceeded 1000 frames; disconnecting slow consumer.";
/// The end of every event frame after its payload.
const EVENT_TAIL: &[u8] = br#","apiVersion":"v1"}"#;
/// The end of a `devtools.event` frame after the shared DevTools event.
const DEVTOOLS_EVENT_TAIL: &[u8] = br#"},"apiVersion":"v1"}"#;
/// > Either overflow → `devtools.error` with code `BackpressureDisconnect` (EVENTS.md §4.5). Our
/// > one queue is the sender queue: events go from the hub straight into it.
const DEVTOOLS_BACKPRESSURE_MESSAGE: &str = "Subscriber outbound queue exceeded 1000 events.";
/// DevTools events one stream queues before it lets the worker's other tasks (the flusher
/// first) run.
const DEVTOOLS_EVENTS_PER_TURN: usize = 64;

/// Per-worker state shared by the worker's WebSocket sessions.
#[derive(Default)]
pub struct WsWorker {
    /// Authenticated sessions, the recipients of broadcasts.
    sessions: RefCell<HashMap<u64, Rc<Session>>>,
    next_session_id: Cell<u64>,
    /// Filled by one read and decoded before any await, so one buffer serves every socket.
    read_buffer: RefCell<Vec<u8>>,
    /// Sessions with frames queued since the flusher last ran.
    dirty: RefCell<Vec<Rc<Session>>>,
    flush_wake: Notify,
    timers: RefCell<Timers>,
    timer_wake: Notify,
    stopped: Cell<bool>,
}

/// Deadlines with a fixed period each, so each queue is ordered by its due time (FIFO).
#[derive(Default)]
struct Timers {
    /// Sockets that must have authenticated by then.
    auth: VecDeque<(Instant, Weak<Session>)>,
    /// Next `tick`, with the connect generation that scheduled it.
    ticks: VecDeque<(Instant, Weak<Session>, u64)>,
    /// Next `run.heartbeat` round for sockets with open run streams.
    beats: VecDeque<(Instant, Weak<Session>)>,
}

impl Timers {
    fn next_due(&self) -> Option<Instant> {
        [
            self.auth.front().map(|e| e.0),
            self.ticks.front().map(|e| e.0),
            self.beats.front().map(|e| e.0),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

impl WsWorker {
    fn add_session(&self, session: Rc<Session>) -> u64 {
        let id = self.next_session_id.get();
        self.next_session_id.set(id + 1);
        self.sessions.borrow_mut().insert(id, session);
        id
    }

    fn remove_session(&self, id: u64) {
        self.sessions.borrow_mut().remove(&id);
    }

    fn schedule(&self, push: impl FnOnce(&mut Timers)) {
        push(&mut self.timers.borrow_mut());
        self.timer_wake.notify();
    }

    /// Ends the flusher and the ticker (worker shutdown, after the connections are gone).
    pub fn stop(&self) {
        self.stopped.set(true);
        self.flush_wake.notify();
        self.timer_wake.notify();
    }

    /// Hands one batch from the hub to every session of this worker, in order. The frames leave
    /// when the flusher runs, after the whole batch is queued: one write per socket per batch.
    pub fn deliver(&self, batch: &BroadcastBatch) {
        let sessions: Vec<Rc<Session>> = self.sessions.borrow().values().cloned().collect();
        for broadcast in batch.iter() {
            for session in &sessions {
                session.deliver(broadcast);
            }
        }
    }
}

/// Writes what each dirty session has queued, once per wake-up.
pub async fn flusher(context: Rc<WorkerContext>) {
    let ws = &context.ws;
    loop {
        ws.flush_wake.notified().await;
        if ws.stopped.get() {
            return;
        }
        let dirty = std::mem::take(&mut *ws.dirty.borrow_mut());
        for session in dirty {
            session.out.borrow_mut().dirty = false;
            session.flush_and_follow_up();
        }
    }
}

/// Fires authentication deadlines, ticks and stream heartbeats for the worker's sessions.
pub async fn ticker(context: Rc<WorkerContext>) {
    let ws = &context.ws;
    let heartbeat = Duration::from_millis(context.state.config.heartbeat_ms);
    loop {
        if ws.stopped.get() {
            return;
        }
        let now = Instant::now();
        let mut due_auth = Vec::new();
        let mut due_ticks = Vec::new();
        let mut due_beats = Vec::new();
        {
            let mut timers = ws.timers.borrow_mut();
            while timers.auth.front().is_some_and(|e| e.0 <= now) {
                due_auth.extend(timers.auth.pop_front().and_then(|e| e.1.upgrade()));
            }
            while timers.ticks.front().is_some_and(|e| e.0 <= now) {
                if let Some((_, session, generation)) = timers.ticks.pop_front() {
                    due_ticks.extend(session.upgrade().map(|s| (s, generation)));
                }
            }
            while timers.beats.front().is_some_and(|e| e.0 <= now) {
                due_beats.extend(timers.beats.pop_front().and_then(|e| e.1.upgrade()));
            }
        }
        for session in due_auth {
            if !session.is_authenticated() && !session.out.borrow().finished {
                tracing::debug!("authentication deadline passed; dropping connection");
                session.abort();
            }
        }
        for (session, generation) in due_ticks {
            // A newer connect scheduled its own tick; this one is stale.
            if generation != session.tick_generation.get() || session.is_closing() {
                continue;
            }
            session.send_event(
                "tick",
                &frame::object(vec![("ts", Value::from(crate::clock::now_ms()))]),
            );
            let weak = Rc::downgrade(&session);
            ws.timers
                .borrow_mut()
                .ticks
                .push_back((now + heartbeat, weak, generation));
        }
        for session in due_beats {
            if session.streams.borrow().is_empty() || session.is_closing() {
                session.beat_scheduled.set(false);
                continue;
            }
            session.send_stream_heartbeats();
            let weak = Rc::downgrade(&session);
            ws.timers
                .borrow_mut()
                .beats
                .push_back((now + STREAM_HEARTBEAT, weak));
        }
        let next = ws.timers.borrow().next_due();
        let wait = next.map_or(Duration::from_secs(3600), |at| {
            at.saturating_duration_since(Instant::now())
        });
        monoio::select! {
            _ = monoio::time::sleep(wait) => {}
            _ = ws.timer_wake.notified() => {}
        }
    }
}

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

/// One `streamDevTools` stream of this socket; its state in the DevTools hub is keyed by
/// `hub_key`, and a task per stream (`devtools_stream`) moves its events into the queue.
#[derive(Debug)]
struct DevToolsStream {
    /// Tags this stream's frames in the outbound queue.
    key: u64,
    hub_key: u64,
    id: String,
    run_id: String,
    /// `"event":"devtools.event","payload":{"streamId":…,"runId":…,"event":`, written once.
    prefix: Vec<u8>,
    /// Events in the outbound queue not yet taken by the kernel.
    queued: usize,
}

#[derive(Default)]
struct Outbound {
    queue: OutQueue,
    /// A close frame to send after the queued frames; nothing is queued after it.
    close: Option<(u16, String)>,
    /// The close frame is in the queue.
    close_queued: bool,
    /// The close frame has left and the write side is shut.
    close_sent: bool,
    /// Drop the connection without writing anything more.
    abort: bool,
    /// The reader is done; the session ends once the queue has left.
    finished: bool,
    /// In the worker's flush list.
    dirty: bool,
    /// A drain task is waiting for the socket to become writable.
    draining: bool,
}

impl Outbound {
    fn closing(&self) -> bool {
        self.close.is_some() || self.abort || self.finished
    }

    /// Nothing more will be written: the queue and any close frame have left, or the socket is
    /// being dropped.
    fn settled(&self) -> bool {
        self.abort || (self.queue.is_empty() && (self.close.is_none() || self.close_sent))
    }
}

/// What one flush achieved.
enum Flushed {
    /// Everything queued has left.
    Done,
    /// The kernel buffer is full; the rest waits for writability.
    Blocked,
    /// The socket failed; the connection is dropped.
    Failed,
}

pub struct Session {
    me: Weak<Session>,
    context: Rc<WorkerContext>,
    control: Rc<ConnControl>,
    stream: TcpStream,
    /// The upgrade request's headers that authentication may read.
    headers: Vec<(String, String)>,
    principal: RefCell<Option<Principal>>,
    slot: RefCell<Option<Slot>>,
    subscribe: RefCell<Option<HashSet<String>>>,
    seq: Cell<u64>,
    out: RefCell<Outbound>,
    /// Wakes a drain task waiting on a peer that stopped reading, so it gives up at once.
    abort_wake: Notify,
    /// Wakes the end of `run` when the queue has left.
    drained: Notify,
    /// Bumped by every successful connect so the tick timer restarts.
    tick_generation: Cell<u64>,
    /// Registration with the worker's broadcast delivery, from the first successful connect.
    sink_id: Cell<Option<u64>>,
    streams: RefCell<Vec<RunStream>>,
    devtools_streams: RefCell<Vec<DevToolsStream>>,
    /// Tags of run and DevTools streams alike (one namespace in the outbound queue).
    next_stream_key: Cell<u64>,
    /// Whether the ticker holds a heartbeat entry for this socket's streams.
    beat_scheduled: Cell<bool>,
    /// Requests being handled, and the reader's wake-up when one finishes.
    in_flight: Cell<usize>,
    in_flight_wake: Notify,
}

impl Session {
    fn is_authenticated(&self) -> bool {
        self.principal.borrow().is_some()
    }

    fn is_closing(&self) -> bool {
        self.out.borrow().closing()
    }

    /// Runs `f` on the socket (non-blocking since the upgrade; see `run`).
    fn with_socket<R>(&self, f: impl FnOnce(&socket2::Socket) -> R) -> R {
        // SAFETY: the fd is owned by `self.stream`, which lives as long as `self`, and the
        // borrowed fd does not escape this call.
        let fd = unsafe { BorrowedFd::borrow_raw(self.stream.as_raw_fd()) };
        f(&socket2::SockRef::from(&fd))
    }

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
        let seq = self.next_seq();
        let mut head = [0u8; frame::EVENT_HEAD_MAX];
        let head_len = frame::event_head(seq, broadcast.state_version, &mut head);
        self.count_event();
        self.enqueue(OutFrame::data(
            OpCode::Text,
            head.get(..head_len).unwrap_or_default(),
            Body::Shared(broadcast.body.clone()),
            &[],
            None,
        ));
    }

    fn next_seq(&self) -> u64 {
        let seq = self.seq.get() + 1;
        self.seq.set(seq);
        seq
    }

    fn count_event(&self) {
        self.context.state.hub.count_delivery(self.context.index);
    }

    /// Queues one frame. Past the byte bound everything not yet started is discarded and the
    /// socket closes with 1013 (PROTOCOL.md §15, EVENTS.md §5).
    fn enqueue(&self, frame: OutFrame) {
        let mut out = self.out.borrow_mut();
        if out.closing() {
            return;
        }
        let stats = self.context.state.hub.worker_stats(self.context.index);
        if out.queue.bytes() + frame.len() > self.context.state.config.outbound_bytes_max {
            let before = out.queue.bytes();
            out.queue.drop_unstarted(|_| true);
            let freed = before - out.queue.bytes();
            out.close = Some((codec::CLOSE_TRY_AGAIN_LATER, "event backpressure".into()));
            drop(out);
            if let Some(stats) = stats {
                stats.outbound_released(freed);
            }
            self.context
                .state
                .counters
                .outbound_overflow_closes
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!("outbound queue over its bound; closing with 1013");
            self.schedule_flush();
            self.control.wake.notify();
            return;
        }
        if let Some(stats) = stats {
            stats.outbound_queued(frame.len());
        }
        out.queue.push(frame);
        debug_assert!(out.queue.bytes() <= self.context.state.config.outbound_bytes_max);
        drop(out);
        self.schedule_flush();
    }

    fn enqueue_data(&self, opcode: OpCode, payload: Vec<u8>) {
        self.enqueue(OutFrame::data(opcode, &[], Body::Owned(payload), &[], None));
    }

    fn enqueue_control(&self, opcode: OpCode, payload: &[u8]) {
        let mut frame = Vec::with_capacity(payload.len() + 2);
        codec::encode_frame(&mut frame, opcode, payload);
        self.enqueue(OutFrame::encoded(frame));
    }

    /// Puts the session on the worker's flush list (once until the flusher has run).
    fn schedule_flush(&self) {
        {
            let mut out = self.out.borrow_mut();
            if out.dirty || out.draining || out.abort {
                return;
            }
            out.dirty = true;
        }
        if let Some(me) = self.me.upgrade() {
            let ws = &self.context.ws;
            ws.dirty.borrow_mut().push(me);
            ws.flush_wake.notify();
        }
    }

    fn request_close(&self, code: u16, reason: &str) {
        {
            let mut out = self.out.borrow_mut();
            if out.close.is_some() || out.abort {
                return;
            }
            out.close = Some((code, reason.to_string()));
        }
        self.schedule_flush();
    }

    /// Writes as much of the queue as the kernel takes now, in vectored writes; after the queue,
    /// the close frame, then the write side is shut.
    fn flush(&self) -> Flushed {
        let stats = self.context.state.hub.worker_stats(self.context.index);
        loop {
            let mut out = self.out.borrow_mut();
            if out.abort {
                return Flushed::Done;
            }
            if out.queue.is_empty() {
                if let (Some((code, reason)), false) = (&out.close, out.close_queued) {
                    let mut frame = Vec::with_capacity(4 + reason.len());
                    codec::encode_close(&mut frame, *code, reason);
                    if let Some(stats) = stats {
                        stats.outbound_queued(frame.len());
                    }
                    out.queue.push(OutFrame::encoded(frame));
                    out.close_queued = true;
                    continue;
                }
                if out.close_queued && !out.close_sent {
                    out.close_sent = true;
                    drop(out);
                    let _ = self.with_socket(|socket| socket.shutdown(std::net::Shutdown::Write));
                    self.control.wake.notify();
                }
                return Flushed::Done;
            }
            let mut slices: Vec<IoSlice<'_>> = Vec::new();
            out.queue.gather(&mut slices, SLICES_PER_WRITE);
            let wanted: usize = slices.iter().map(|s| s.len()).sum();
            let written = self.with_socket(|socket| {
                socket.send_vectored_with_flags(&slices, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
            });
            drop(slices);
            match written {
                Ok(written) => {
                    let mut released = Vec::new();
                    out.queue.advance(written, |tag| released.extend(tag));
                    drop(out);
                    if let Some(stats) = stats {
                        stats.outbound_released(written);
                        stats.bytes_written(written);
                    }
                    self.release_stream_frames(&released);
                    if written < wanted {
                        return Flushed::Blocked;
                    }
                }
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    return Flushed::Blocked
                }
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) => {
                    tracing::debug!(%error, "socket write failed");
                    return Flushed::Failed;
                }
            }
        }
    }

    /// Flushes, then whatever the outcome asks for: a drain task, an abort, or waking the end of
    /// `run` when everything has left.
    fn flush_and_follow_up(&self) {
        match self.flush() {
            Flushed::Done => {
                if self.out.borrow().settled() {
                    self.drained.notify();
                }
            }
            Flushed::Blocked => {
                let start = {
                    let mut out = self.out.borrow_mut();
                    !std::mem::replace(&mut out.draining, true)
                };
                if let (true, Some(me)) = (start, self.me.upgrade()) {
                    monoio::spawn(drain(me));
                }
            }
            Flushed::Failed => self.abort(),
        }
    }

    fn respond_ok(&self, id: &str, payload: &Value) {
        self.enqueue_data(OpCode::Text, encode_response_ok(id, payload));
    }

    fn respond_error(&self, id: &str, error: &RpcError) {
        self.context
            .state
            .counters
            .rpc_errors
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(code = error.code.as_str(), message = %error.message, "request refused");
        self.enqueue_data(OpCode::Text, encode_response_error(id, error));
    }

    /// Sends an event to this connection only: numbered with the next `seq`, carrying the current
    /// `stateVersion` without incrementing it.
    fn send_event(&self, name: &str, payload: &Value) {
        let seq = self.next_seq();
        let mut prefix = Vec::with_capacity(64);
        frame::encode_event_head(&mut prefix, seq, self.context.state.state_version());
        self.context.state.hub.count_event(self.context.index);
        self.enqueue(OutFrame::data(
            OpCode::Text,
            &prefix,
            Body::Owned(encode_event_body(name, payload)),
            &[],
            None,
        ));
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

    /// `run.event` `{streamId, …frame}`: this stream's head, then the frame's shared bytes.
    /// `counted` frames are tagged and count toward the stream's live queue (EVENTS.md §3.5).
    fn send_run_frame(
        &self,
        key: u64,
        stream_id: &str,
        frame: &RunFrame,
        state_version: u64,
        counted: bool,
    ) {
        let seq = self.next_seq();
        let mut prefix = Vec::with_capacity(128 + stream_id.len());
        frame::encode_event_head(&mut prefix, seq, state_version);
        prefix.extend_from_slice(br#""event":"run.event","payload":{"streamId":"#);
        write_string(&mut prefix, stream_id);
        prefix.push(b',');
        self.count_event();
        let tag = counted.then_some(key);
        self.enqueue(OutFrame::data(
            OpCode::Text,
            &prefix,
            Body::Shared(frame.fields.clone()),
            EVENT_TAIL,
            tag,
        ));
        if counted {
            if let Some(stream) = self.streams.borrow_mut().iter_mut().find(|s| s.key == key) {
                stream.queued += 1;
            }
        }
    }

    /// These tagged frames left for the socket; their streams' queues shrink.
    fn release_stream_frames(&self, tags: &[u64]) {
        if tags.is_empty() {
            return;
        }
        let mut streams = self.streams.borrow_mut();
        let mut devtools_streams = self.devtools_streams.borrow_mut();
        for tag in tags {
            if let Some(stream) = streams.iter_mut().find(|s| s.key == *tag) {
                stream.queued = stream.queued.saturating_sub(1);
            } else if let Some(stream) = devtools_streams.iter_mut().find(|s| s.key == *tag) {
                stream.queued = stream.queued.saturating_sub(1);
            }
        }
    }

    /// The queue side of ending a run or DevTools stream: its frames not yet started leave the
    /// queue at once (their bytes released), and a backpressure end is counted.
    fn drop_stream_frames(&self, key: u64, code: &str, what: &'static str) {
        let (dropped, freed) = {
            let mut out = self.out.borrow_mut();
            let before = out.queue.bytes();
            let dropped = out.queue.drop_unstarted(|frame| frame.tag == Some(key));
            (dropped, before - out.queue.bytes())
        };
        if let Some(stats) = self.context.state.hub.worker_stats(self.context.index) {
            stats.outbound_released(freed);
        }
        tracing::debug!(dropped, code, "{what}");
        if code == "BackpressureDisconnect" {
            self.context
                .state
                .counters
                .stream_backpressure_cuts
                .fetch_add(1, Ordering::Relaxed);
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
        self.drop_stream_frames(key, code, "run event stream torn down");
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

    /// Puts the socket in the ticker's heartbeat round (first beat one period from now).
    fn schedule_stream_heartbeats(&self) {
        if self.beat_scheduled.replace(true) {
            return;
        }
        let weak = self.me.clone();
        self.context.ws.schedule(|timers| {
            timers
                .beats
                .push_back((Instant::now() + STREAM_HEARTBEAT, weak))
        });
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
            run_filter: None,
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
        self.schedule_stream_heartbeats();
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

    /// PROTOCOL.md §13 for DevTools: a null filter allows every run, an explicit one (even
    /// empty) only its runs.
    fn filter_allows(&self, run_id: &str) -> bool {
        self.subscribe
            .borrow()
            .as_ref()
            .is_none_or(|filter| filter.contains(run_id))
    }

    /// `streamDevTools` (METHODS.md §3.18, EVENTS.md §4.5): validate in the spec's order,
    /// register with the DevTools hub (before the run's latest frame is read, so no frame is
    /// missed), respond, then start the stream's task.
    async fn handle_stream_devtools(
        self: &Rc<Self>,
        id: &str,
        params: &Value,
        principal: &Principal,
    ) {
        if let Err(error) = dispatch::check_scope(principal, "streamDevTools") {
            return self.respond_error(id, &error);
        }
        let (run_id, cursor) = match rpc_devtools::stream_params(params) {
            Ok(parsed) => parsed,
            Err(error) => return self.respond_error(id, &error),
        };
        if !self.filter_allows(&run_id) {
            return self.respond_error(
                id,
                &RpcError::new(
                    ErrorCode::UnauthorizedV1,
                    "Connection is not subscribed to this runId.",
                ),
            );
        }
        let state = &self.context.state;
        let Some(storage) = state.storage.clone() else {
            return self.respond_error(
                id,
                &RpcError::new(ErrorCode::ServerError, "Storage is not available"),
            );
        };
        let (wake, woken) = flume::bounded(1);
        let hub_key = state.devtools.open(&run_id, cursor, wake);
        let latest = storage
            .call(|reply| Command::LatestFrame {
                run_id: run_id.clone(),
                reply,
            })
            .await;
        let checked = match latest {
            Err(error) => Err(storage_rpc_error(&error)),
            Ok(None) => Err(RpcError::new(
                ErrorCode::RunNotFound,
                format!("Run not found: {run_id}"),
            )),
            Ok(Some(latest)) => match cursor {
                Some(cursor) if cursor > latest.max(0) as u64 => Err(RpcError::new(
                    ErrorCode::SeqOutOfRange,
                    format!("fromSeq {cursor} is newer than current seq {latest}"),
                )),
                _ if self.is_closing() => Err(RpcError::new(
                    ErrorCode::ConnectionClosed,
                    "Connection closed",
                )),
                _ => Ok(latest),
            },
        };
        let latest = match checked {
            Ok(latest) => latest,
            Err(error) => {
                state.devtools.close(hub_key);
                return self.respond_error(id, &error);
            }
        };
        let key = self.next_stream_key.get();
        self.next_stream_key.set(key + 1);
        let stream_id = uuid::Uuid::new_v4().to_string();
        let mut prefix = Vec::with_capacity(96 + run_id.len());
        prefix.extend_from_slice(br#""event":"devtools.event","payload":{"streamId":"#);
        write_string(&mut prefix, &stream_id);
        prefix.extend_from_slice(br#","runId":"#);
        write_string(&mut prefix, &run_id);
        prefix.extend_from_slice(br#","event":"#);
        self.devtools_streams.borrow_mut().push(DevToolsStream {
            key,
            hub_key,
            id: stream_id.clone(),
            run_id: run_id.clone(),
            prefix,
            queued: 0,
        });
        let cursor_value = || cursor.map_or(Value::null(), Value::from);
        self.respond_ok(
            id,
            &frame::object(vec![
                ("streamId", Value::from(stream_id.as_str())),
                ("runId", Value::from(run_id.as_str())),
                ("fromSeq", cursor_value()),
                ("afterSeq", cursor_value()),
            ]),
        );
        state.devtools.start(hub_key, latest);
        monoio::spawn(devtools_stream(self.clone(), key, hub_key, woken));
    }

    /// `devtools.event` `{streamId, runId, event}` around the hub's shared event bytes. Returns
    /// false when the stream is gone (torn down now, past its bound, or earlier).
    fn send_devtools_event(&self, key: u64, event: Arc<[u8]>) -> bool {
        let prefix = {
            let mut streams = self.devtools_streams.borrow_mut();
            let Some(stream) = streams.iter_mut().find(|s| s.key == key) else {
                return false;
            };
            if stream.queued >= STREAM_QUEUE_MAX {
                None
            } else {
                stream.queued += 1;
                let mut prefix = Vec::with_capacity(64 + stream.prefix.len());
                frame::encode_event_head(
                    &mut prefix,
                    self.next_seq(),
                    self.context.state.state_version(),
                );
                prefix.extend_from_slice(&stream.prefix);
                Some(prefix)
            }
        };
        let Some(prefix) = prefix else {
            self.fail_devtools_stream(key, "BackpressureDisconnect", DEVTOOLS_BACKPRESSURE_MESSAGE);
            return false;
        };
        self.count_event();
        self.enqueue(OutFrame::data(
            OpCode::Text,
            &prefix,
            Body::Shared(event),
            DEVTOOLS_EVENT_TAIL,
            Some(key),
        ));
        true
    }

    /// Ends a DevTools stream (EVENTS.md §4.5): its queued events are dropped, the socket gets
    /// `devtools.error` `{streamId, runId, error:{code, message}}`, the hub forgets it. The
    /// socket stays open.
    fn fail_devtools_stream(&self, key: u64, code: &str, message: &str) {
        let stream = {
            let mut streams = self.devtools_streams.borrow_mut();
            let Some(index) = streams.iter().position(|s| s.key == key) else {
                return;
            };
            streams.remove(index)
        };
        self.drop_stream_frames(key, code, "DevTools stream ended");
        self.send_event(
            "devtools.error",
            &frame::object(vec![
                ("streamId", Value::from(stream.id.as_str())),
                ("runId", Value::from(stream.run_id.as_str())),
                (
                    "error",
                    frame::object(vec![
                        ("code", Value::from(code)),
                        ("message", Value::from(message)),
                    ]),
                ),
            ]),
        );
        self.context.state.devtools.close(stream.hub_key);
    }

    /// A text or binary message from the peer: `connect` runs before anything after it is read;
    /// other requests run as their own tasks, at most `maxRequestsInFlight` at once.
    async fn accept_message(self: &Rc<Self>, bytes: Vec<u8>) {
        let state = &self.context.state;
        state.counters.ws_messages.fetch_add(1, Ordering::Relaxed);
        let request = match frame::parse_ws_request(bytes, state.config.message_bytes_max) {
            Ok(request) => request,
            Err(error) => return self.respond_error(INVALID_FRAME_ID, &error),
        };
        if request.method == "connect" {
            // Boxed so the reader's own future stays small while the socket is idle.
            return Box::pin(self.handle_connect(&request.id, &request.params)).await;
        }
        let limit = state.config.requests_in_flight_max.max(1);
        if self.in_flight.get() >= limit {
            state
                .counters
                .requests_deferred
                .fetch_add(1, Ordering::Relaxed);
            while self.in_flight.get() >= limit {
                monoio::select! {
                    _ = self.in_flight_wake.notified() => {}
                    _ = self.control.wake.notified() => {}
                }
                if self.out.borrow().abort || self.control.stop_reason().is_some() {
                    return;
                }
            }
        }
        self.in_flight.set(self.in_flight.get() + 1);
        let session = self.clone();
        monoio::spawn(async move {
            session.handle_request(request).await;
            session.in_flight.set(session.in_flight.get() - 1);
            session.in_flight_wake.notify();
        });
    }

    async fn handle_request(self: &Rc<Self>, request: frame::RequestFrame) {
        let state = &self.context.state;
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
        if request.method == "streamDevTools" {
            let empty = Value::Object(Box::default());
            let params = if request.params.is_object() {
                &request.params
            } else {
                &empty
            };
            return self
                .handle_stream_devtools(&request.id, params, &principal)
                .await;
        }
        // Auto-subscribe adds the run only to a filter that exists: an unfiltered socket already
        // sees every run (docs/DECISIONS.md; the reference narrows it instead).
        let subscriber = |run_id: &str| {
            if let Some(filter) = self.subscribe.borrow_mut().as_mut() {
                filter.insert(run_id.to_string());
            }
        };
        let run_filter = |run_id: &str| self.filter_allows(run_id);
        let context = CallContext {
            state,
            principal: &principal,
            transport: Transport::WebSocket,
            subscriber: Some(&subscriber),
            run_filter: Some(&run_filter),
        };
        match dispatch::dispatch(&context, &request.method, &request.params).await {
            Ok(payload) => self.enqueue_data(OpCode::Text, payload.encode_response(&request.id)),
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
            self.sink_id
                .set(Some(self.context.ws.add_session(self.clone())));
        }
        tracing::debug!(role = %principal.role, user = ?principal.user_id, "connected");
        *self.principal.borrow_mut() = Some(principal);
        *self.subscribe.borrow_mut() = request.subscribe;
        self.respond_ok(id, &hello);
        // Ticks restart a full period after every successful connect (PROTOCOL.md §14).
        let generation = self.tick_generation.get() + 1;
        self.tick_generation.set(generation);
        let weak = self.me.clone();
        let due = Instant::now() + Duration::from_millis(state.config.heartbeat_ms);
        self.context
            .ws
            .schedule(|timers| timers.ticks.push_back((due, weak, generation)));
    }

    /// The reader is done: what is queued (and the close frame) leaves, then the session ends.
    fn finish(&self) {
        if let Some(id) = self.sink_id.take() {
            self.context.ws.remove_session(id);
        }
        // Streams end with their socket (EVENTS.md §3.4): release their caps and windows.
        for stream in self.streams.take() {
            self.context
                .state
                .hub
                .close_stream(&stream.run_id, stream.identity.as_deref());
        }
        // Closing drops the hub's wake sender, which ends each stream's task.
        for stream in self.devtools_streams.take() {
            self.context.state.devtools.close(stream.hub_key);
        }
        self.out.borrow_mut().finished = true;
        self.schedule_flush();
    }

    /// Drops everything queued and writes nothing more.
    fn abort(&self) {
        let freed = {
            let mut out = self.out.borrow_mut();
            out.abort = true;
            let freed = out.queue.bytes();
            out.queue.clear();
            freed
        };
        if let Some(stats) = self.context.state.hub.worker_stats(self.context.index) {
            stats.outbound_released(freed);
        }
        self.abort_wake.notify();
        self.drained.notify();
        self.control.wake.notify();
    }
}

/// One DevTools stream: does what the hub says (EVENTS.md §4.5) until the stream ends. Frames
/// are announced by the engine, so between frames the task sleeps on its wake channel; the hub
/// drops the sender when the stream closes, which ends the task.
async fn devtools_stream(session: Rc<Session>, key: u64, hub_key: u64, woken: flume::Receiver<()>) {
    let state = session.context.state.clone();
    let mut emitted = 0;
    loop {
        match state.devtools.poll(hub_key) {
            Step::Emit { event, .. } => {
                if !session.send_devtools_event(key, event) {
                    return;
                }
                emitted += 1;
                if emitted >= DEVTOOLS_EVENTS_PER_TURN {
                    // A long catch-up lets the flusher write between batches.
                    emitted = 0;
                    YieldNow(false).await;
                }
            }
            Step::Work(work) => {
                let outcome = work.perform(state.storage.as_ref()).await;
                state.devtools.complete(hub_key, outcome);
            }
            Step::Wait => {
                emitted = 0;
                if woken.recv_async().await.is_err() {
                    return;
                }
            }
            Step::Fail { code, message } => {
                return session.fail_devtools_stream(key, code, &message);
            }
            Step::Closed => return,
        }
    }
}

/// Yields once to the worker's other tasks.
struct YieldNow(bool);

impl std::future::Future for YieldNow {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        context.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

/// Waits for a socket whose kernel buffer was full to become writable, and flushes again, until
/// the queue has left. A socket that stays unwritable for `WRITE_STALL` is dropped.
async fn drain(session: Rc<Session>) {
    loop {
        let writable = monoio::select! {
            ready = monoio::time::timeout(WRITE_STALL, session.stream.writable(false)) => {
                matches!(ready, Ok(Ok(())))
            }
            _ = session.abort_wake.notified() => false,
        };
        if !writable {
            session.out.borrow_mut().draining = false;
            session.abort();
            return;
        }
        match session.flush() {
            Flushed::Blocked => {}
            Flushed::Done => {
                session.out.borrow_mut().draining = false;
                if session.out.borrow().settled() {
                    session.drained.notify();
                }
                return;
            }
            Flushed::Failed => {
                session.out.borrow_mut().draining = false;
                session.abort();
                return;
            }
        }
    }
}

/// A session ready to be served: the session, the decoder if a frame is in progress, and what was
/// read after the upgrade head.
pub struct Opened(Rc<Session>, Option<Box<Decoder>>, ReadOutcome);

/// Opens the session of an upgraded socket. Not async, so nothing of the HTTP phase stays in the
/// connection's task while the session lives.
pub fn open(
    upgraded: Upgraded,
    context: &Rc<WorkerContext>,
    control: &Rc<ConnControl>,
) -> Option<Opened> {
    let Upgraded {
        stream,
        headers,
        leftover,
        slot,
    } = upgraded;
    let echo = context.service == Service::Echo;
    debug_assert!(echo || slot.as_ref().map(Slot::kind) == Some(SlotKind::PreAuth));
    let session = Rc::new_cyclic(|me| Session {
        me: me.clone(),
        context: context.clone(),
        control: control.clone(),
        stream,
        headers,
        principal: RefCell::new(None),
        slot: RefCell::new(slot),
        subscribe: RefCell::new(None),
        seq: Cell::new(0),
        out: RefCell::new(Outbound::default()),
        abort_wake: Notify::default(),
        drained: Notify::default(),
        tick_generation: Cell::new(0),
        sink_id: Cell::new(None),
        streams: RefCell::new(Vec::new()),
        devtools_streams: RefCell::new(Vec::new()),
        next_stream_key: Cell::new(0),
        beat_scheduled: Cell::new(false),
        in_flight: Cell::new(0),
        in_flight_wake: Notify::default(),
    });
    // From here on the session does its own non-blocking reads and writes after readiness.
    if let Err(error) = session.with_socket(|socket| socket.set_nonblocking(true)) {
        tracing::debug!(%error, "socket could not be made non-blocking");
        return None;
    }
    if !echo {
        let weak = Rc::downgrade(&session);
        let deadline =
            Instant::now() + Duration::from_millis(context.state.config.auth_deadline_ms);
        context
            .ws
            .schedule(|timers| timers.auth.push_back((deadline, weak)));
        session.send_event(
            "connect.challenge",
            &frame::object(vec![
                ("nonce", Value::from(uuid::Uuid::new_v4().to_string())),
                ("ts", Value::from(crate::clock::now_ms())),
            ]),
        );
    }
    let mut decoder = None;
    let first = decode_read(&session, &mut decoder, &leftover);
    Some(Opened(session, decoder, first))
}

/// Runs an opened session until the connection ends.
pub async fn serve(opened: Opened) {
    let Opened(session, decoder, first) = opened;
    read_loop(&session, decoder, first).await;
    session.finish();
    // The queue leaves on its own once finished; a peer that stopped reading cannot hold it.
    let deadline = Instant::now() + CLOSE_WAIT;
    while !session.out.borrow().settled() {
        let wait = deadline.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            session.abort();
            break;
        }
        monoio::select! {
            _ = session.drained.notified() => {}
            _ = Box::pin(monoio::time::sleep(wait)) => {}
        }
    }
    let lingers = {
        let out = session.out.borrow();
        out.close_sent && !out.abort
    };
    if lingers {
        linger(&session).await;
    }
    // Handlers still in flight hold the session; the socket and the slots go now.
    let _ = session.with_socket(|socket| socket.shutdown(std::net::Shutdown::Both));
    session.slot.take();
    debug_assert!(session.out.borrow().settled());
}

/// Lingering close. Our close frame has left and the write side is shut (FIN sent); bytes the
/// peer sent after its own close (a ping, say) may still be unread here, and closing a socket
/// with unread input makes the kernel answer with a reset, which can destroy our close frame in
/// the peer's receive buffer before the peer reads it. So input is read and discarded until the
/// peer closes its side (one round trip for a peer that got our FIN), for at most `LINGER`.
async fn linger(session: &Session) {
    let deadline = Instant::now() + LINGER;
    loop {
        if discard_input(session) {
            return;
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            return;
        }
        monoio::select! {
            ready = session.stream.readable(false) => {
                if ready.is_err() {
                    return;
                }
            }
            _ = Box::pin(monoio::time::sleep(wait)) => return,
        }
    }
}

/// Reads and drops what the socket holds (at most `LINGER_READ_BYTES` per call, so a peer that
/// keeps sending cannot hold the worker); true once the peer has closed or the socket failed.
fn discard_input(session: &Session) -> bool {
    let ws = &session.context.ws;
    let mut buffer = ws.read_buffer.borrow_mut();
    if buffer.len() < READ_BUFFER_BYTES {
        buffer.resize(READ_BUFFER_BYTES, 0);
    }
    let mut discarded = 0;
    session.with_socket(|socket| {
        let mut reader: &socket2::Socket = socket;
        while discarded < LINGER_READ_BYTES {
            match reader.read(&mut buffer) {
                Ok(0) => return true,
                Ok(n) => discarded += n,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) => return error.kind() != std::io::ErrorKind::WouldBlock,
            }
        }
        false
    })
}

/// What one read gave.
pub enum ReadOutcome {
    Messages(Vec<Message>, Option<CodecError>),
    Nothing,
    Closed,
}

/// One non-blocking read into the worker's buffer, decoded before the buffer is released.
fn read_once(session: &Session, decoder: &mut Option<Box<Decoder>>) -> ReadOutcome {
    let ws = &session.context.ws;
    let mut buffer = ws.read_buffer.borrow_mut();
    if buffer.len() < READ_BUFFER_BYTES {
        buffer.resize(READ_BUFFER_BYTES, 0);
    }
    let read = session.with_socket(|socket| {
        let mut reader: &socket2::Socket = socket;
        loop {
            match reader.read(&mut buffer) {
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    });
    match read {
        Ok(0) => ReadOutcome::Closed,
        Ok(n) => decode_read(session, decoder, buffer.get(..n).unwrap_or_default()),
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => ReadOutcome::Nothing,
        Err(_) => ReadOutcome::Closed,
    }
}

/// Decodes bytes just read. The decoder exists only while a frame or message is in progress, so
/// an idle socket holds none.
fn decode_read(session: &Session, decoder: &mut Option<Box<Decoder>>, input: &[u8]) -> ReadOutcome {
    if input.is_empty() {
        return ReadOutcome::Nothing;
    }
    let max = session.context.state.config.message_bytes_max;
    let active = decoder.get_or_insert_with(|| Box::new(Decoder::new(max)));
    let mut messages = Vec::new();
    let error = decode(active, input, &mut messages).err();
    if active.is_between_messages() {
        *decoder = None;
    }
    ReadOutcome::Messages(messages, error)
}

/// Decodes all of `input` (the decoder keeps partial frames), collecting complete messages.
fn decode(
    decoder: &mut Decoder,
    mut input: &[u8],
    messages: &mut Vec<Message>,
) -> Result<(), CodecError> {
    while !input.is_empty() {
        let (used, message) = decoder.decode(input)?;
        input = input.get(used..).unwrap_or_default();
        match message {
            Some(message) => messages.push(message),
            None if used == 0 => break,
            None => {}
        }
    }
    Ok(())
}

/// Handles what one read gave; returns false when the reader must stop.
async fn handle_read(session: &Rc<Session>, read: ReadOutcome) -> bool {
    let echo = session.context.service == Service::Echo;
    let (messages, error) = match read {
        ReadOutcome::Closed => return false,
        ReadOutcome::Nothing => return true,
        ReadOutcome::Messages(messages, error) => (messages, error),
    };
    for message in messages {
        match message {
            Message::Text(bytes) if echo => session.enqueue_data(OpCode::Text, bytes),
            Message::Binary(bytes) if echo => session.enqueue_data(OpCode::Binary, bytes),
            Message::Text(bytes) | Message::Binary(bytes) => {
                if !session.is_closing() {
                    session.accept_message(bytes).await;
                }
            }
            Message::Ping(payload) => session.enqueue_control(OpCode::Pong, &payload),
            Message::Pong(_) => {}
            Message::Close(received) => {
                // > RFC 6455 §5.5.1: the endpoint MUST send a Close frame in response … typically
                // > echoing the status code it received.
                let code = received
                    .as_ref()
                    .map_or(codec::CLOSE_NORMAL, |(code, _)| *code);
                session.request_close(code, "");
                return false;
            }
        }
    }
    if let Some(error) = error {
        tracing::debug!(
            code = error.code,
            reason = error.reason,
            "websocket protocol error"
        );
        session.request_close(error.code, error.reason);
        return false;
    }
    true
}

/// The reader. While the socket is idle this future holds only the readiness wait: handling a
/// read happens in a boxed future, and the decoder exists only mid-message.
async fn read_loop(session: &Rc<Session>, mut decoder: Option<Box<Decoder>>, first: ReadOutcome) {
    let mut closing_since: Option<Instant> = None;
    let mut pending = Some(first);
    loop {
        if let Some(read) = pending.take() {
            if !Box::pin(handle_read(session, read)).await {
                return;
            }
        }
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
        let wait = closing_since.map_or(CLOSE_WAIT, |since| {
            CLOSE_WAIT.saturating_sub(since.elapsed())
        });
        if wait.is_zero() {
            return;
        }
        // An idle socket waits without a timer: the close wait's timer (boxed, so it takes no
        // room in this future while idle) exists only once the socket is closing.
        let mut close_wait = closing_since.map(|_| Box::pin(monoio::time::sleep(wait)));
        monoio::select! {
            ready = session.stream.readable(false) => {
                if ready.is_err() {
                    return;
                }
                pending = Some(read_once(session, &mut decoder));
            }
            _ = async {
                match close_wait.as_mut() {
                    Some(sleep) => sleep.await,
                    None => std::future::pending().await,
                }
            } => return,
            _ = session.control.wake.notified() => {}
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
