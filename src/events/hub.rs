//! The event hub: the engine publishes domain events here after they are committed; each event is
//! serialized once into an immutable shared body, numbered with the global `stateVersion`, and the
//! whole batch of one engine tick is handed to every worker in one message (not per connection).
//! Workers deliver to their own sessions (`runtime::ws_session`).
//!
//! The hub also keeps the per-run replay windows of `streamRunEvents` (EVENTS.md §3.1): it sees
//! every broadcast in order, so numbering a run's frames here needs no coordination with workers.
//! Window frames reuse the broadcast body bytes (no second serialization).
//!
//! Invariant: an event body is serialized once, whatever the number of recipients.

use crate::rpc::frame::{encode_event_body, write_string};
use crate::rpc::Value;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A terminal window without subscribers lives this long (EVENTS.md §3.1 retention).
const TERMINAL_WINDOW_TTL: Duration = Duration::from_secs(1);
/// Above this many windows, terminal windows without subscribers are evicted oldest first.
const WINDOWS_MAX: usize = 1_000;
/// Subscriber caps of METHODS.md §3.17 step 7.
pub const STREAMS_GLOBAL_MAX: usize = 256;
pub const STREAMS_USER_MAX: usize = 32;
pub const STREAMS_CONNECTION_MAX: usize = 8;
pub const STREAMS_RUN_MAX: usize = 64;
/// The tail every event body ends with (`encode_event_body`).
const BODY_SUFFIX: &[u8] = br#","apiVersion":"v1"}"#;

/// One frame of a run window: `fields` is the serialized inside of the `run.event` payload after
/// `streamId`: `"apiVersion":"v1","type":"RunEvent","runId":…,"event":…,"payload":…,"seq":N,
/// "stateVersion":M}` (closing the payload object).
#[derive(Debug)]
pub struct RunFrame {
    pub seq: u64,
    pub state_version: u64,
    pub fields: Arc<[u8]>,
}

#[derive(Debug, Default)]
struct Window {
    next_seq: u64,
    frames: VecDeque<Arc<RunFrame>>,
    terminal_since: Option<Instant>,
}

#[derive(Debug, Default)]
struct Windows {
    runs: HashMap<String, Window>,
    /// Open streams per run (a run may have subscribers before it has a window).
    run_streams: HashMap<String, usize>,
    user_streams: HashMap<String, usize>,
    total_streams: usize,
    last_sweep: Option<Instant>,
}

/// What a new stream captured at registration (EVENTS.md §3.2).
#[derive(Debug)]
pub struct Capture {
    pub current_seq: u64,
    pub frames: Vec<Arc<RunFrame>>,
}

/// Why a stream was refused at registration.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamRefusal {
    /// `afterSeq` is newer than the window's current seq.
    SeqOutOfRange { after_seq: u64, current_seq: u64 },
    /// A subscriber cap (`global`/`user`/`connection`/`run`) and its limit.
    Cap { scope: &'static str, limit: usize },
}

/// Batches queued per worker before the engine waits for that worker.
pub const WORKER_QUEUE_BATCHES_MAX: usize = 4_096;

/// One broadcast domain event, shared by every recipient.
#[derive(Debug)]
pub struct Broadcast {
    /// `payload.runId`, used by subscription filters.
    pub run_id: Option<String>,
    pub event: String,
    /// The `stateVersion` assigned to this broadcast.
    pub state_version: u64,
    /// `"event":…,"payload":…,"apiVersion":"v1"}`: the recipient-independent part of the frame.
    pub body: Arc<[u8]>,
    /// The run window frame of this broadcast, when its payload has a `runId`.
    pub run_frame: Option<Arc<RunFrame>>,
}

pub type BroadcastBatch = Arc<Vec<Arc<Broadcast>>>;

/// Delivery figures of one worker (written by that worker only, read by /metrics). Aligned to
/// its own cache lines so workers updating their figures per delivery never share a line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct WorkerStats {
    /// Broadcast and stream event frames queued to this worker's sockets.
    pub deliveries: AtomicU64,
    /// Every event frame queued, connection-scoped ones (tick, run.heartbeat…) included.
    pub events_sent: AtomicU64,
    /// Bytes queued for this worker's sockets and not yet taken by the kernel.
    pub outbound_bytes: AtomicU64,
    /// Bytes the kernel took from this worker's sockets.
    pub bytes_written: AtomicU64,
}

impl WorkerStats {
    pub fn outbound_queued(&self, bytes: usize) {
        self.outbound_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn outbound_released(&self, bytes: usize) {
        self.outbound_bytes
            .fetch_sub(bytes as u64, Ordering::Relaxed);
    }

    pub fn bytes_written(&self, bytes: usize) {
        self.bytes_written
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub struct Hub {
    /// Indexed by worker.
    worker_stats: Vec<WorkerStats>,
    state_version: AtomicU64,
    serializations: AtomicU64,
    published: AtomicU64,
    workers: Vec<flume::Sender<BroadcastBatch>>,
    receivers: Mutex<Vec<Option<flume::Receiver<BroadcastBatch>>>>,
    window_size: usize,
    windows: Mutex<Windows>,
}

impl Hub {
    /// `window_size` is `eventWindowSize`: frames kept per run window.
    pub fn new(n_workers: usize, window_size: usize) -> Arc<Hub> {
        let (workers, receivers): (Vec<_>, Vec<_>) = (0..n_workers)
            .map(|_| flume::bounded(WORKER_QUEUE_BATCHES_MAX))
            .map(|(s, r)| (s, Some(r)))
            .unzip();
        Arc::new(Hub {
            worker_stats: (0..n_workers).map(|_| WorkerStats::default()).collect(),
            state_version: AtomicU64::new(0),
            serializations: AtomicU64::new(0),
            published: AtomicU64::new(0),
            workers,
            receivers: Mutex::new(receivers),
            window_size: window_size.max(1),
            windows: Mutex::new(Windows::default()),
        })
    }

    /// The receiver of worker `index`; each can be taken once.
    pub fn take_receiver(&self, index: usize) -> Option<flume::Receiver<BroadcastBatch>> {
        let mut receivers = match self.receivers.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        receivers.get_mut(index).and_then(Option::take)
    }

    pub fn state_version(&self) -> u64 {
        self.state_version.load(Ordering::Acquire)
    }

    /// How many event bodies were serialized (equals the number of broadcasts).
    pub fn serializations(&self) -> u64 {
        self.serializations.load(Ordering::Relaxed)
    }

    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// The delivery figures of worker `index`.
    pub fn worker_stats(&self, index: usize) -> Option<&WorkerStats> {
        self.worker_stats.get(index)
    }

    /// Every worker's figures, in worker order.
    pub fn all_worker_stats(&self) -> &[WorkerStats] {
        &self.worker_stats
    }

    pub fn count_delivery(&self, worker: usize) {
        if let Some(stats) = self.worker_stats.get(worker) {
            stats.deliveries.fetch_add(1, Ordering::Relaxed);
            stats.events_sent.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A connection-scoped event (not a delivery of a broadcast) was queued.
    pub fn count_event(&self, worker: usize) {
        if let Some(stats) = self.worker_stats.get(worker) {
            stats.events_sent.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Event frames queued on every worker.
    pub fn events_sent(&self) -> u64 {
        self.worker_stats
            .iter()
            .map(|stats| stats.events_sent.load(Ordering::Relaxed))
            .sum()
    }

    /// Broadcasts `events` (name, payload) in order: each gets the next `stateVersion`, is
    /// serialized once, and the batch goes to every worker in one message.
    pub fn publish(&self, events: Vec<(String, Value)>) {
        if events.is_empty() {
            return;
        }
        let mut batch = Vec::with_capacity(events.len());
        let mut windows = self.lock_windows();
        let now = Instant::now();
        for (event, payload) in events {
            let payload_object = payload.as_object();
            let run_id = payload_object
                .and_then(|object| object.get("runId"))
                .and_then(|value| value.as_str())
                .map(str::to_string);
            let terminal = event == "run.completed"
                && payload_object
                    .and_then(|object| object.get("status"))
                    .and_then(|value| value.as_str())
                    .is_some_and(|status| {
                        matches!(status, "finished" | "failed" | "cancelled" | "continued")
                    });
            let body: Arc<[u8]> = encode_event_body(&event, &payload).into();
            self.serializations.fetch_add(1, Ordering::Relaxed);
            // Numbered under the window lock so window order equals stateVersion order.
            let state_version = self.state_version.fetch_add(1, Ordering::AcqRel) + 1;
            let run_frame = run_id.as_deref().map(|run_id| {
                let window = windows.runs.entry(run_id.to_string()).or_default();
                window.next_seq += 1;
                let frame = Arc::new(RunFrame {
                    seq: window.next_seq,
                    state_version,
                    fields: run_frame_fields(run_id, &body, window.next_seq, state_version),
                });
                window.frames.push_back(frame.clone());
                while window.frames.len() > self.window_size {
                    window.frames.pop_front();
                }
                if terminal && window.terminal_since.is_none() {
                    window.terminal_since = Some(now);
                } else if !terminal {
                    // A finished run that runs again (retryTask) keeps its window and seqs.
                    window.terminal_since = None;
                }
                frame
            });
            batch.push(Arc::new(Broadcast {
                run_id,
                event,
                state_version,
                body,
                run_frame,
            }));
        }
        sweep(&mut windows, now);
        drop(windows);
        self.published
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let batch: BroadcastBatch = Arc::new(batch);
        for worker in &self.workers {
            // A worker that stopped (shutdown) has dropped its receiver; nothing to deliver.
            let _ = worker.send(batch.clone());
        }
    }

    fn lock_windows(&self) -> MutexGuard<'_, Windows> {
        match self.windows.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Whether the run has a window (it has had a broadcast since start).
    pub fn has_window(&self, run_id: &str) -> bool {
        self.lock_windows().runs.contains_key(run_id)
    }

    /// Registers a stream on `run_id` (METHODS.md §3.17 steps 6–7, atomically with the capture of
    /// EVENTS.md §3.2). `identity` is the per-user cap key (None: no user cap applies);
    /// `connection_streams` is how many streams the calling socket already has.
    pub fn open_stream(
        &self,
        run_id: &str,
        identity: Option<&str>,
        connection_streams: usize,
        after_seq: Option<u64>,
    ) -> Result<Capture, StreamRefusal> {
        let mut windows = self.lock_windows();
        sweep(&mut windows, Instant::now());
        let window = windows.runs.get(run_id);
        let current_seq = window.map_or(0, |w| w.next_seq);
        if let Some(after_seq) = after_seq.filter(|&a| a > current_seq) {
            return Err(StreamRefusal::SeqOutOfRange {
                after_seq,
                current_seq,
            });
        }
        let user = identity.map_or(0, |id| windows.user_streams.get(id).copied().unwrap_or(0));
        let run = windows.run_streams.get(run_id).copied().unwrap_or(0);
        let refused = if windows.total_streams >= STREAMS_GLOBAL_MAX {
            Some(("global", STREAMS_GLOBAL_MAX))
        } else if identity.is_some() && user >= STREAMS_USER_MAX {
            Some(("user", STREAMS_USER_MAX))
        } else if connection_streams >= STREAMS_CONNECTION_MAX {
            Some(("connection", STREAMS_CONNECTION_MAX))
        } else if run >= STREAMS_RUN_MAX {
            Some(("run", STREAMS_RUN_MAX))
        } else {
            None
        };
        if let Some((scope, limit)) = refused {
            return Err(StreamRefusal::Cap { scope, limit });
        }
        let frames = match (after_seq, window) {
            (Some(after_seq), Some(window)) => window
                .frames
                .iter()
                .filter(|frame| frame.seq > after_seq)
                .cloned()
                .collect(),
            _ => Vec::new(),
        };
        windows.total_streams += 1;
        *windows.run_streams.entry(run_id.to_string()).or_default() += 1;
        if let Some(identity) = identity {
            *windows
                .user_streams
                .entry(identity.to_string())
                .or_default() += 1;
        }
        Ok(Capture {
            current_seq,
            frames,
        })
    }

    /// Releases a stream opened by `open_stream`; a terminal window whose last stream ends is
    /// deleted at once (EVENTS.md §3.1).
    pub fn close_stream(&self, run_id: &str, identity: Option<&str>) {
        let mut windows = self.lock_windows();
        windows.total_streams = windows.total_streams.saturating_sub(1);
        if let Some(identity) = identity {
            if let Some(count) = windows.user_streams.get_mut(identity) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    windows.user_streams.remove(identity);
                }
            }
        }
        let mut last = false;
        if let Some(count) = windows.run_streams.get_mut(run_id) {
            *count = count.saturating_sub(1);
            last = *count == 0;
        }
        if last {
            windows.run_streams.remove(run_id);
            if windows
                .runs
                .get(run_id)
                .is_some_and(|w| w.terminal_since.is_some())
            {
                windows.runs.remove(run_id);
            }
        }
    }

    /// Number of run windows held (tests and metrics).
    pub fn window_count(&self) -> usize {
        self.lock_windows().runs.len()
    }
}

/// `"apiVersion":"v1","type":"RunEvent","runId":R,"event":E,"payload":P,"seq":N,"stateVersion":M}`
/// from the broadcast body `"event":E,"payload":P,"apiVersion":"v1"}`.
fn run_frame_fields(run_id: &str, body: &[u8], seq: u64, state_version: u64) -> Arc<[u8]> {
    let event_and_payload = body.strip_suffix(BODY_SUFFIX).unwrap_or(body);
    let mut out = Vec::with_capacity(body.len() + run_id.len() + 96);
    out.extend_from_slice(br#""apiVersion":"v1","type":"RunEvent","runId":"#);
    write_string(&mut out, run_id);
    out.push(b',');
    out.extend_from_slice(event_and_payload);
    out.extend_from_slice(br#","seq":"#);
    out.extend_from_slice(seq.to_string().as_bytes());
    out.extend_from_slice(br#","stateVersion":"#);
    out.extend_from_slice(state_version.to_string().as_bytes());
    out.push(b'}');
    out.into()
}

/// Retention (EVENTS.md §3.1): terminal windows without subscribers go 1 s after they became
/// terminal, and past 1,000 windows the oldest such terminal windows go first. Runs at most every
/// 100 ms, so a busy publisher does not scan every window per batch.
fn sweep(windows: &mut Windows, now: Instant) {
    if windows
        .last_sweep
        .is_some_and(|last| now.duration_since(last) < Duration::from_millis(100))
    {
        return;
    }
    windows.last_sweep = Some(now);
    let Windows {
        runs, run_streams, ..
    } = windows;
    runs.retain(|run_id, window| match window.terminal_since {
        Some(since) => {
            run_streams.contains_key(run_id) || now.duration_since(since) < TERMINAL_WINDOW_TTL
        }
        None => true,
    });
    if runs.len() > WINDOWS_MAX {
        let mut evictable: Vec<(Instant, String)> = runs
            .iter()
            .filter(|(run_id, _)| !run_streams.contains_key(*run_id))
            .filter_map(|(run_id, w)| w.terminal_since.map(|since| (since, run_id.clone())))
            .collect();
        evictable.sort();
        let excess = runs.len() - WINDOWS_MAX;
        for (_, run_id) in evictable.into_iter().take(excess) {
            runs.remove(&run_id);
        }
    }
}

use simd_json::prelude::*;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_event_is_serialized_once_and_numbered() {
        let hub = Hub::new(3, 10);
        let receivers: Vec<_> = (0..3).filter_map(|i| hub.take_receiver(i)).collect();
        assert_eq!(receivers.len(), 3);
        assert!(hub.take_receiver(0).is_none(), "a receiver is taken once");
        let payload = crate::rpc::frame::object(vec![("runId", Value::from("r1"))]);
        hub.publish(vec![
            ("node.started".into(), payload.clone()),
            ("run.completed".into(), payload),
        ]);
        assert_eq!(hub.serializations(), 2);
        assert_eq!(hub.state_version(), 2);
        let batches: Vec<BroadcastBatch> =
            receivers.iter().filter_map(|r| r.try_recv().ok()).collect();
        assert_eq!(batches.len(), 3);
        for batch in &batches {
            assert_eq!(batch.len(), 2);
            assert_eq!(batch[0].state_version, 1);
            assert_eq!(batch[1].state_version, 2);
            assert_eq!(batch[0].run_id.as_deref(), Some("r1"));
            // Every worker holds the very same body buffer.
            assert!(Arc::ptr_eq(&batch[0].body, &batches[0][0].body));
        }
    }

    fn event(run_id: &str, extra: Vec<(&str, Value)>) -> Value {
        let mut pairs = vec![("runId", Value::from(run_id))];
        pairs.extend(extra);
        crate::rpc::frame::object(pairs)
    }

    #[test]
    fn windows_number_trim_and_capture() {
        let hub = Hub::new(1, 2);
        hub.publish(vec![
            ("node.started".into(), event("r1", vec![])),
            ("node.finished".into(), event("r1", vec![])),
            ("tick.like".into(), crate::rpc::frame::object(vec![])),
            ("node.started".into(), event("r1", vec![])),
        ]);
        let capture = hub.open_stream("r1", None, 0, Some(0));
        let Ok(capture) = capture else {
            panic!("refused: {capture:?}")
        };
        assert_eq!(capture.current_seq, 3);
        let seqs: Vec<u64> = capture.frames.iter().map(|f| f.seq).collect();
        assert_eq!(seqs, vec![2, 3], "trimmed to the window size");
        let fields = String::from_utf8_lossy(&capture.frames[1].fields).to_string();
        assert_eq!(
            fields,
            r#""apiVersion":"v1","type":"RunEvent","runId":"r1","event":"node.started","payload":{"runId":"r1"},"seq":3,"stateVersion":4}"#
        );
        assert_eq!(
            hub.open_stream("r1", None, 0, Some(4)).err(),
            Some(StreamRefusal::SeqOutOfRange {
                after_seq: 4,
                current_seq: 3
            })
        );
        assert_eq!(
            hub.open_stream("r1", None, STREAMS_CONNECTION_MAX, None)
                .err(),
            Some(StreamRefusal::Cap {
                scope: "connection",
                limit: STREAMS_CONNECTION_MAX
            })
        );
        // Without afterSeq nothing is captured for replay.
        assert!(hub
            .open_stream("r1", None, 0, None)
            .is_ok_and(|c| c.frames.is_empty()));
    }

    #[test]
    fn terminal_window_goes_with_its_last_stream() {
        let hub = Hub::new(1, 10);
        hub.publish(vec![("node.started".into(), event("r2", vec![]))]);
        assert!(hub.open_stream("r2", Some("u"), 0, None).is_ok());
        hub.publish(vec![(
            "run.completed".into(),
            event("r2", vec![("status", Value::from("finished"))]),
        )]);
        assert!(hub.has_window("r2"), "kept while a stream is open");
        hub.close_stream("r2", Some("u"));
        assert!(!hub.has_window("r2"), "deleted when the last stream ends");
    }
}
