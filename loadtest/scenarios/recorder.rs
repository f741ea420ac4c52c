//! The one [`Sink`] every scenario uses: it counts and times what arrives, by connection role
//! (the connection's tag). Broadcast subscribers count deliveries and time the marked ones against
//! their publish time; a published event is complete when every counted subscriber has it. RPC
//! connections answer each response by sending the next request at once (closed loop). Stream and
//! DevTools connections check their sequences. Nothing here blocks or allocates per delivery.

use crate::client::{CloseReason, Outbox, Sink};
use crate::stats::Histogram;
use crate::wire::{self, MessageKind};

pub const TAG_SUBSCRIBER: u32 = 0;
/// A subscriber that stops reading (backpressure): not counted toward completion.
pub const TAG_STALLED: u32 = 1;
pub const TAG_PUBLISHER: u32 = 2;
pub const TAG_RPC_WS: u32 = 3;
pub const TAG_RPC_HTTP: u32 = 4;
/// A connection with `streamRunEvents` streams.
pub const TAG_STREAM: u32 = 5;
pub const TAG_DEVTOOLS: u32 = 6;
/// Connect-storm connections: only their handshake is measured.
pub const TAG_STORM: u32 = 7;

/// Requests a WebSocket RPC connection keeps in flight at most.
pub const RPC_DEPTH_MAX: usize = 8;

#[derive(Clone, Debug, Default)]
pub struct PerConn {
    pub marked: u64,
    /// One past the highest marked id seen.
    pub next_id: u64,
    pub out_of_order: u64,
    pub frames: u64,
    pub rpc_sent_ns: [u64; RPC_DEPTH_MAX],
    pub devtools_last_seq: Option<u64>,
    pub devtools_events: u64,
    /// Stalled connections, read after they resume: the stream's error and what followed it.
    pub stream_error: Option<String>,
    pub last_stream_id_before_error: Option<u64>,
    pub first_raw_id_after_error: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Published {
    pub at_ns: u64,
    pub received: u32,
    pub measured: bool,
    pub complete: bool,
}

/// A response to a control request (anything but the RPC benchmark's own requests).
#[derive(Clone, Debug)]
pub struct Reply {
    pub id: String,
    pub ok: bool,
    pub text: String,
}

#[derive(Default)]
pub struct Recorder {
    pub per_conn: Vec<PerConn>,
    pub ready: u64,
    pub closed: Vec<(usize, u32, CloseReason)>,

    // Broadcast fan-out.
    pub published: Vec<Published>,
    /// Events published while measuring.
    pub published_measured: u64,
    /// Subscribers every published event must reach to be complete.
    pub n_counted: u32,
    /// Counts and latencies are taken only while measuring.
    pub measuring: bool,
    pub delivery: Histogram,
    pub completion: Histogram,
    /// Event frames of broadcasts (any name) and of marked events, while measuring.
    pub frames: u64,
    pub marked: u64,
    /// Events that are not broadcasts (tick, connect.challenge, run.heartbeat).
    pub other_events: u64,
    /// Broadcast frames that reached stream or DevTools connections as raw events, while
    /// measuring (they do not count toward completion).
    pub side_frames: u64,
    pub completed: u64,
    pub duplicates: u64,
    pub unknown_ids: u64,

    // Run event streams.
    pub stream_frames: u64,
    pub stream_delivery: Histogram,
    pub stream_errors: Vec<(usize, String, u64)>,

    // RPC closed loop.
    pub rpc_frames: Vec<usize>,
    pub http_frame: Option<usize>,
    pub rpc_ok: u64,
    pub rpc_failed: u64,
    pub rpc_first_error: Option<String>,
    pub rpc_latency: Histogram,
    pub http_ok: u64,
    pub http_latency: Histogram,

    // DevTools streams.
    pub devtools_events: u64,
    pub devtools_snapshots: u64,
    pub devtools_deltas: u64,
    pub devtools_gaps: u64,
    pub devtools_errors: Vec<String>,

    pub replies: Vec<Reply>,
}

fn is_connection_event(name: &[u8]) -> bool {
    matches!(name, b"tick" | b"connect.challenge" | b"run.heartbeat")
}

impl Recorder {
    fn conn(&mut self, conn: usize) -> &mut PerConn {
        if conn >= self.per_conn.len() {
            self.per_conn.resize(conn + 1, PerConn::default());
        }
        // The resize above makes the index valid.
        &mut self.per_conn[conn]
    }

    /// Records a publish at `at_ns` and returns its id.
    pub fn publish(&mut self, at_ns: u64) -> u64 {
        if self.measuring {
            self.published_measured += 1;
        }
        self.published.push(Published {
            at_ns,
            received: 0,
            measured: self.measuring,
            complete: false,
        });
        (self.published.len() - 1) as u64
    }

    /// Published events not yet complete.
    pub fn outstanding(&self) -> u64 {
        self.published.len() as u64 - self.completed
    }

    /// Starts a measured window: counters restart, latencies restart.
    pub fn start_measuring(&mut self) {
        self.measuring = true;
        self.published_measured = 0;
        self.frames = 0;
        self.marked = 0;
        self.other_events = 0;
        self.side_frames = 0;
        self.delivery = Histogram::default();
        self.completion = Histogram::default();
        self.stream_frames = 0;
        self.stream_delivery = Histogram::default();
        self.rpc_ok = 0;
        self.rpc_failed = 0;
        self.rpc_latency = Histogram::default();
        self.http_ok = 0;
        self.http_latency = Histogram::default();
        self.devtools_events = 0;
        self.devtools_snapshots = 0;
        self.devtools_deltas = 0;
    }

    pub fn stop_measuring(&mut self) {
        self.measuring = false;
    }

    fn marked_delivery(&mut self, conn: usize, id: u64, now: u64) {
        let per = self.conn(conn);
        per.marked += 1;
        if id + 1 < per.next_id {
            per.out_of_order += 1;
        }
        per.next_id = per.next_id.max(id + 1);
        let n_counted = self.n_counted;
        let measuring = self.measuring;
        let Some(published) = self.published.get_mut(id as usize) else {
            self.unknown_ids += 1;
            return;
        };
        published.received += 1;
        if published.received > n_counted {
            self.duplicates += 1;
            return;
        }
        let latency = now.saturating_sub(published.at_ns);
        if published.measured {
            self.delivery.record(latency);
        }
        if measuring {
            self.marked += 1;
        }
        if published.received == n_counted && !published.complete {
            published.complete = true;
            self.completed += 1;
            if published.measured {
                self.completion.record(latency);
            }
        }
    }

    fn subscriber_event(&mut self, conn: usize, name: &[u8], message: &[u8], now: u64) {
        if is_connection_event(name) {
            self.other_events += 1;
            return;
        }
        if self.measuring {
            self.frames += 1;
        }
        self.conn(conn).frames += 1;
        if name == b"task.output" {
            if let Some(id) = wire::marker_id(message) {
                self.marked_delivery(conn, id, now);
            }
        }
    }

    fn stalled_event(&mut self, conn: usize, name: &[u8], message: &[u8]) {
        let marker = wire::marker_id(message);
        let per = self.conn(conn);
        per.frames += 1;
        match name {
            b"run.event" if per.stream_error.is_none() => {
                if let Some(id) = marker {
                    per.last_stream_id_before_error = Some(id);
                }
            }
            b"run.error" => {
                let code = wire::string_field(message, "code")
                    .unwrap_or("?")
                    .to_string();
                per.stream_error = Some(code);
            }
            b"task.output"
                if per.stream_error.is_some() && per.first_raw_id_after_error.is_none() =>
            {
                per.first_raw_id_after_error = marker;
            }
            _ => {}
        }
    }

    fn stream_event(&mut self, conn: usize, name: &[u8], message: &[u8], now: u64) {
        match name {
            b"run.event" => {
                if self.measuring {
                    self.stream_frames += 1;
                }
                if let Some(id) = wire::marker_id(message) {
                    if let Some(published) = self.published.get(id as usize) {
                        if published.measured {
                            self.stream_delivery
                                .record(now.saturating_sub(published.at_ns));
                        }
                    }
                }
            }
            b"run.error" => {
                let code = wire::string_field(message, "code")
                    .unwrap_or("?")
                    .to_string();
                self.stream_errors.push((conn, code, now));
            }
            // Other runs' raw events also reach an unfiltered socket.
            _ => self.side_event(name),
        }
    }

    fn devtools_event(&mut self, conn: usize, name: &[u8], message: &[u8]) {
        match name {
            b"devtools.event" => {
                if self.measuring {
                    self.devtools_events += 1;
                }
                let kind_at = wire::find(message, br#""kind":""#);
                let is_delta = kind_at
                    .and_then(|at| message.get(at + 8..at + 13))
                    .is_some_and(|kind| kind == b"delta");
                let from = kind_at.unwrap_or(0);
                let per_delta = if is_delta {
                    let base = wire::number_field(message, "baseSeq", from);
                    let base_at =
                        wire::find(message.get(from..).unwrap_or_default(), br#""baseSeq":"#)
                            .map_or(from, |at| at + from);
                    let seq = wire::number_field(message, "seq", base_at);
                    Some((base, seq))
                } else {
                    None
                };
                let snapshot_seq = if is_delta {
                    None
                } else {
                    wire::number_field(message, "frameNo", from)
                };
                let measuring = self.measuring;
                let per = self.conn(conn);
                per.devtools_events += 1;
                let mut gap = false;
                match per_delta {
                    Some((base, seq)) => {
                        if base.is_none() || base != per.devtools_last_seq {
                            gap = true;
                        }
                        per.devtools_last_seq = seq;
                    }
                    None => per.devtools_last_seq = snapshot_seq,
                }
                if gap {
                    self.devtools_gaps += 1;
                }
                if measuring {
                    if is_delta {
                        self.devtools_deltas += 1;
                    } else {
                        self.devtools_snapshots += 1;
                    }
                }
            }
            b"devtools.error" => {
                let code = wire::string_field(message, "code").unwrap_or("?");
                let text = wire::string_field(message, "message").unwrap_or("");
                self.devtools_errors.push(format!("{code} {text}"));
            }
            _ => self.side_event(name),
        }
    }

    fn side_event(&mut self, name: &[u8]) {
        if is_connection_event(name) {
            self.other_events += 1;
        } else if self.measuring {
            self.side_frames += 1;
        }
    }

    fn response(&mut self, conn: usize, tag: u32, message: &[u8], now: u64, outbox: &mut Outbox) {
        let id = wire::string_field(message, "id").unwrap_or("");
        let ok = wire::find(message, br#""ok":true"#).is_some();
        if tag == TAG_RPC_WS {
            let slot = id
                .strip_prefix('h')
                .and_then(|digits| digits.parse::<usize>().ok());
            if let Some(slot) = slot.filter(|s| *s < RPC_DEPTH_MAX) {
                self.rpc_answer(conn, slot, ok, message, now, false);
                if let Some(&frame) = self.rpc_frames.get(slot) {
                    self.conn(conn).rpc_sent_ns[slot] = now;
                    outbox.send(conn, frame);
                }
                return;
            }
        }
        self.replies.push(Reply {
            id: id.to_string(),
            ok,
            text: String::from_utf8_lossy(message).into_owned(),
        });
    }

    fn rpc_answer(
        &mut self,
        conn: usize,
        slot: usize,
        ok: bool,
        message: &[u8],
        now: u64,
        http: bool,
    ) {
        let sent = self
            .conn(conn)
            .rpc_sent_ns
            .get(slot)
            .copied()
            .unwrap_or(now);
        if !ok {
            self.rpc_failed += 1;
            if self.rpc_first_error.is_none() {
                let text = String::from_utf8_lossy(message);
                self.rpc_first_error = Some(text.chars().take(300).collect());
            }
            return;
        }
        if !self.measuring {
            return;
        }
        if http {
            self.http_ok += 1;
            self.http_latency.record(now.saturating_sub(sent));
        } else {
            self.rpc_ok += 1;
            self.rpc_latency.record(now.saturating_sub(sent));
        }
    }

    /// Marks the first request of every slot of an RPC connection as sent now and returns the
    /// frames to send.
    pub fn start_rpc(&mut self, conn: usize, depth: usize, now: u64) -> Vec<usize> {
        let frames: Vec<usize> = self.rpc_frames.iter().copied().take(depth).collect();
        for slot in 0..frames.len() {
            if let Some(sent) = self.conn(conn).rpc_sent_ns.get_mut(slot) {
                *sent = now;
            }
        }
        frames
    }
}

impl Sink for Recorder {
    fn on_ready(&mut self, conn: usize, tag: u32, now: u64, outbox: &mut Outbox) {
        self.ready += 1;
        if tag == TAG_RPC_HTTP {
            if let Some(frame) = self.http_frame {
                self.conn(conn).rpc_sent_ns[0] = now;
                outbox.send(conn, frame);
            }
        }
    }

    fn on_message(&mut self, conn: usize, tag: u32, message: &[u8], now: u64, outbox: &mut Outbox) {
        match wire::classify(message) {
            MessageKind::Response => self.response(conn, tag, message, now, outbox),
            MessageKind::Event(name) => match tag {
                TAG_SUBSCRIBER => self.subscriber_event(conn, name, message, now),
                TAG_STALLED => self.stalled_event(conn, name, message),
                TAG_STREAM => self.stream_event(conn, name, message, now),
                TAG_DEVTOOLS => self.devtools_event(conn, name, message),
                _ => {}
            },
            MessageKind::Other => {}
        }
    }

    fn on_http(
        &mut self,
        conn: usize,
        _tag: u32,
        status: u16,
        body: &[u8],
        now: u64,
        outbox: &mut Outbox,
    ) {
        let ok = status == 200 && wire::find(body, br#""ok":true"#).is_some();
        self.rpc_answer(conn, 0, ok, body, now, true);
        if let Some(frame) = self.http_frame {
            self.conn(conn).rpc_sent_ns[0] = now;
            outbox.send(conn, frame);
        }
    }

    fn on_closed(&mut self, conn: usize, tag: u32, reason: &CloseReason, _now: u64) {
        self.closed.push((conn, tag, reason.clone()));
    }
}
