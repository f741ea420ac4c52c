//! The DevTools hub: every `streamDevTools` subscription of the process, the frames they need,
//! and the stream algorithm of EVENTS.md §4.5 as a state machine.
//!
//! Frames reach it from the engine after their commit (`frames_committed`, with the rendered tree
//! when the run is watched), so no stream polls. For each watched run the hub keeps a cache keyed
//! by frame number: the snapshot of the frame and the delta from the frame before, each built
//! and serialized once, whichever stream needs it first, and shared as bytes by every stream of
//! the run on every worker. An entry is kept while a stream of the run may still emit it or use
//! it as the base of its next delta, and at most `FRAMES_CACHED_MAX` per run.
//!
//! Per stream the hub holds only what §4.5 says a subscriber has: the last emitted seq (with the
//! snapshot it stands for), the events since the last snapshot, the invalidation flag.
//!
//! Sans-IO: `poll` says what a stream does next (emit bytes, build something, wait, fail). The
//! caller (`runtime::ws_session`) does the work — reading a frame from storage, building — outside
//! the lock and reports it with `complete`. A build in progress is marked with its owner, so
//! two streams never build the same thing and a stream that goes away releases its marks.
//!
//! Must never: hold its lock while building or waiting, or keep a run's entries once the run has
//! no stream.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::delta::{diff, DeltaError};
use super::snapshot::{build, empty, FrameSource, Snapshot, SnapshotError};
use crate::storage::{Command, StorageHandle};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// > a fresh snapshot … after 49 consecutive deltas — snapshot, 49 deltas, snapshot, …
pub const DELTAS_BETWEEN_SNAPSHOTS_MAX: u32 = 49;
/// > cursor c → snapshot of frame `min(floor(c/50)*50, latest)`
pub const KEYFRAME_INTERVAL: u64 = 50;
/// Cache entries kept per run at most; past it the oldest are dropped (and rebuilt from storage
/// if a stream still needs them).
pub const FRAMES_CACHED_MAX: usize = 1_024;

/// A frame the engine committed. `source` is present when the run was watched at render time.
#[derive(Debug)]
pub struct CommittedFrame {
    pub run_id: String,
    pub frame_no: i64,
    pub source: Option<Arc<FrameSource>>,
}

/// A built snapshot and its event bytes `{version, kind:"snapshot", snapshot}`.
#[derive(Debug)]
pub struct Built {
    pub snapshot: Snapshot,
    pub event: Arc<[u8]>,
}

impl Built {
    pub fn new(snapshot: Snapshot) -> Arc<Built> {
        let event = snapshot.to_event_bytes().into();
        Arc::new(Built { snapshot, event })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Snapshot,
    Delta,
}

/// What a stream does next.
#[derive(Debug)]
pub enum Step {
    /// Send this DevTools event (the bytes are shared; wrap them in `devtools.event`).
    Emit {
        event: Arc<[u8]>,
        kind: EventKind,
        seq: i64,
    },
    /// Do this and report it with `complete`.
    Work(Work),
    /// Nothing until the stream's wake channel fires.
    Wait,
    /// Send `devtools.error` with this code and message, then close the stream.
    Fail { code: &'static str, message: String },
    /// The stream is not registered (closed).
    Closed,
}

#[derive(Debug)]
pub enum Work {
    /// Build the snapshot of `frame_no` from `source`, or from storage when there is none.
    Snapshot {
        run_id: String,
        frame_no: i64,
        source: Option<Arc<FrameSource>>,
    },
    /// Build and serialize the delta from `base` (frame `frame_no - 1`) to `target`.
    Delta {
        frame_no: i64,
        base: Arc<Built>,
        target: Arc<Built>,
    },
}

/// The result of a `Work`.
#[derive(Debug)]
pub enum Outcome {
    /// `Ok(None)`: the frame does not exist (pruned or rewound).
    Snapshot {
        frame_no: i64,
        result: Result<Option<Arc<Built>>, String>,
    },
    Delta {
        frame_no: i64,
        result: Result<Arc<[u8]>, String>,
    },
}

/// Builds a snapshot from a source (the CPU part of `Work::Snapshot`).
pub fn build_snapshot(source: &FrameSource) -> Result<Arc<Built>, SnapshotError> {
    build(source).map(Built::new)
}

/// Builds the delta event bytes `{version, kind:"delta", delta}` from `base` to `target`.
pub fn build_delta(base: &Built, target: &Built) -> Result<Arc<[u8]>, DeltaError> {
    diff(&base.snapshot, &target.snapshot).map(|delta| delta.to_event_bytes().into())
}

impl Work {
    /// Does the work: reads the frame from `storage` when the work has no source, then builds.
    pub async fn perform(self, storage: Option<&StorageHandle>) -> Outcome {
        match self {
            Work::Delta {
                frame_no,
                base,
                target,
            } => Outcome::Delta {
                frame_no,
                result: build_delta(&base, &target).map_err(|e| e.to_string()),
            },
            Work::Snapshot {
                frame_no,
                source: Some(source),
                ..
            } => Outcome::Snapshot {
                frame_no,
                result: build_snapshot(&source).map(Some).map_err(|e| e.to_string()),
            },
            Work::Snapshot {
                run_id,
                frame_no,
                source: None,
            } => {
                let result = match storage {
                    None => Err("Storage is not available".to_string()),
                    Some(storage) => storage
                        .call(|reply| Command::GetFrameSource {
                            run_id,
                            frame_no,
                            reply,
                        })
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|found| match found {
                            None => Ok(None),
                            Some((frame, attempts)) => FrameSource::from_rows(&frame, &attempts)
                                .and_then(|source| build_snapshot(&source))
                                .map(Some)
                                .map_err(|e| e.to_string()),
                        }),
                };
                Outcome::Snapshot { frame_no, result }
            }
        }
    }
}

#[derive(Debug, Default)]
enum SnapshotSlot {
    /// Known to exist (or be about to), not read yet: read it from storage.
    #[default]
    Unknown,
    Source(Arc<FrameSource>),
    Building {
        owner: u64,
        source: Option<Arc<FrameSource>>,
    },
    Built(Arc<Built>),
    /// The frame does not exist.
    Missing,
}

#[derive(Debug, Default)]
enum DeltaSlot {
    #[default]
    None,
    Building {
        owner: u64,
    },
    /// Built from frame k−1's snapshot. Any stream at k−1 holds an equal snapshot: a frame never
    /// changes once committed, and a rewind drops the entries after its target and makes every
    /// stream of the run send a snapshot next, so no stream holds a discarded frame as its base.
    Ready {
        event: Arc<[u8]>,
    },
}

#[derive(Debug, Default)]
struct Slot {
    snapshot: SnapshotSlot,
    /// The delta from the frame before to this one.
    delta: DeltaSlot,
}

#[derive(Debug)]
enum Phase {
    /// Registered; the subscriber has not confirmed the run's latest frame yet.
    Opening { cursor: Option<u64> },
    /// The first event is next (EVENTS.md §4.5 step 1).
    Initial { cursor: Option<u64> },
    Following {
        last: i64,
        /// Deltas emitted since the last snapshot.
        since_snapshot: u32,
        invalidated: bool,
        /// The snapshot the client holds (frame `last`).
        base: Arc<Built>,
    },
}

#[derive(Debug)]
struct StreamState {
    run_id: String,
    phase: Phase,
    wake: flume::Sender<()>,
    /// Set when this stream's work failed; reported by its next `poll`.
    failure: Option<String>,
}

#[derive(Debug)]
struct RunTrack {
    /// The newest committed frame, once a subscriber or the engine has said.
    latest: Option<i64>,
    frames: BTreeMap<i64, Slot>,
    streams: HashSet<u64>,
    /// The snapshot of frame 0 (no frames yet).
    empty: Arc<Built>,
}

#[derive(Debug, Default)]
struct HubState {
    runs: HashMap<String, RunTrack>,
    streams: HashMap<u64, StreamState>,
}

/// Every DevTools stream of the process; shared by the engine and all workers.
#[derive(Debug)]
pub struct DevToolsHub {
    state: Mutex<HubState>,
    next_key: AtomicU64,
    /// Runs with at least one stream, so the engine can skip the lock when there are none.
    watched_runs: AtomicUsize,
    snapshots_built: AtomicU64,
    deltas_built: AtomicU64,
    frames_cached_max: usize,
}

impl Default for DevToolsHub {
    fn default() -> Self {
        DevToolsHub::with_cache_limit(FRAMES_CACHED_MAX)
    }
}

/// What a stream needs for one frame's snapshot.
enum Need {
    Ready(Arc<Built>),
    Missing,
    Work(Work),
    Wait,
}

impl RunTrack {
    fn new(run_id: &str) -> RunTrack {
        RunTrack {
            latest: None,
            frames: BTreeMap::new(),
            streams: HashSet::new(),
            empty: Built::new(empty(run_id)),
        }
    }

    /// The snapshot of `frame_no`, or the work to build it (marked as `key`'s), or a wait.
    fn need_snapshot(&mut self, run_id: &str, frame_no: i64, key: u64) -> Need {
        if frame_no == 0 {
            return Need::Ready(self.empty.clone());
        }
        let slot = self.frames.entry(frame_no).or_default();
        match &slot.snapshot {
            SnapshotSlot::Built(built) => Need::Ready(built.clone()),
            SnapshotSlot::Missing => Need::Missing,
            SnapshotSlot::Building { .. } => Need::Wait,
            SnapshotSlot::Source(_) | SnapshotSlot::Unknown => {
                let source = match std::mem::take(&mut slot.snapshot) {
                    SnapshotSlot::Source(source) => Some(source),
                    _ => None,
                };
                slot.snapshot = SnapshotSlot::Building {
                    owner: key,
                    source: source.clone(),
                };
                Need::Work(Work::Snapshot {
                    run_id: run_id.to_string(),
                    frame_no,
                    source,
                })
            }
        }
    }

    fn wake_all(&self, streams: &HashMap<u64, StreamState>) {
        for key in &self.streams {
            if let Some(stream) = streams.get(key) {
                let _ = stream.wake.try_send(());
            }
        }
    }

    /// Drops entries no stream of the run can still need: below every stream's last emitted
    /// frame (and below the latest, after a rewind), then the oldest past `cached_max`. Builds in
    /// progress stay (their owner reports to them).
    fn evict(&mut self, streams: &HashMap<u64, StreamState>, cached_max: usize) {
        let latest = self.latest.unwrap_or(0);
        let mut keep_from = i64::MAX;
        for key in &self.streams {
            let needed = match streams.get(key).map(|s| &s.phase) {
                Some(Phase::Following { last, .. }) => (*last).min(latest),
                _ => 0,
            };
            keep_from = keep_from.min(needed);
        }
        let building = |slot: &Slot| {
            matches!(slot.snapshot, SnapshotSlot::Building { .. })
                || matches!(slot.delta, DeltaSlot::Building { .. })
        };
        // Entries leave from the front, so this is usually a few pops, not a scan.
        while let Some(entry) = self.frames.first_entry() {
            if *entry.key() >= keep_from {
                break;
            }
            if building(entry.get()) {
                self.frames
                    .retain(|frame_no, slot| *frame_no >= keep_from || building(slot));
                break;
            }
            entry.remove();
        }
        while self.frames.len() > cached_max {
            let oldest = self
                .frames
                .iter()
                .find(|(_, slot)| !building(slot))
                .map(|(frame_no, _)| *frame_no);
            match oldest {
                Some(frame_no) => {
                    self.frames.remove(&frame_no);
                }
                None => break,
            }
        }
    }
}

impl DevToolsHub {
    /// A hub keeping at most `frames_cached_max` entries per run (tests use small values).
    pub fn with_cache_limit(frames_cached_max: usize) -> DevToolsHub {
        DevToolsHub {
            state: Mutex::new(HubState::default()),
            next_key: AtomicU64::new(1),
            watched_runs: AtomicUsize::new(0),
            snapshots_built: AtomicU64::new(0),
            deltas_built: AtomicU64::new(0),
            frames_cached_max: frames_cached_max.max(2),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Snapshots built so far (each frame of a watched run once, unless evicted and rebuilt).
    pub fn snapshots_built(&self) -> u64 {
        self.snapshots_built.load(Ordering::Relaxed)
    }

    /// Deltas built so far (each frame's once).
    pub fn deltas_built(&self) -> u64 {
        self.deltas_built.load(Ordering::Relaxed)
    }

    pub fn n_streams(&self) -> usize {
        self.lock().streams.len()
    }

    /// Whether any stream watches `run_id` (the engine then hands over its rendered frames).
    pub fn is_watched(&self, run_id: &str) -> bool {
        self.watched_runs.load(Ordering::Acquire) > 0 && self.lock().runs.contains_key(run_id)
    }

    /// Registers a stream. It stays silent until `start` says the run's latest frame: the
    /// registration comes first so that no frame committed meanwhile is missed.
    pub fn open(&self, run_id: &str, cursor: Option<u64>, wake: flume::Sender<()>) -> u64 {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let mut state = self.lock();
        let run = state.runs.entry(run_id.to_string()).or_insert_with(|| {
            self.watched_runs.fetch_add(1, Ordering::AcqRel);
            RunTrack::new(run_id)
        });
        run.streams.insert(key);
        state.streams.insert(
            key,
            StreamState {
                run_id: run_id.to_string(),
                phase: Phase::Opening { cursor },
                wake,
                failure: None,
            },
        );
        key
    }

    /// The subscriber read `latest` from storage after `open`: the stream starts.
    pub fn start(&self, key: u64, latest: i64) {
        let mut state = self.lock();
        let HubState { runs, streams } = &mut *state;
        let Some(stream) = streams.get_mut(&key) else {
            return;
        };
        if let Phase::Opening { cursor } = stream.phase {
            stream.phase = Phase::Initial { cursor };
        }
        if let Some(run) = runs.get_mut(&stream.run_id) {
            run.latest = Some(run.latest.map_or(latest, |known| known.max(latest)));
        }
        let _ = stream.wake.try_send(());
    }

    /// Ends a stream: its build marks are released (another stream takes the work over) and a
    /// run without streams is forgotten.
    pub fn close(&self, key: u64) {
        let mut state = self.lock();
        let HubState { runs, streams } = &mut *state;
        let Some(stream) = streams.remove(&key) else {
            return;
        };
        let Some(run) = runs.get_mut(&stream.run_id) else {
            return;
        };
        run.streams.remove(&key);
        if run.streams.is_empty() {
            runs.remove(&stream.run_id);
            self.watched_runs.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        for slot in run.frames.values_mut() {
            if let SnapshotSlot::Building { owner, source } = &mut slot.snapshot {
                if *owner == key {
                    slot.snapshot = match source.take() {
                        Some(source) => SnapshotSlot::Source(source),
                        None => SnapshotSlot::Unknown,
                    };
                }
            }
            if matches!(slot.delta, DeltaSlot::Building { owner } if owner == key) {
                slot.delta = DeltaSlot::None;
            }
        }
        run.evict(streams, self.frames_cached_max);
        run.wake_all(streams);
    }

    /// Frames committed by the engine, in order. Runs nobody watches are skipped.
    pub fn frames_committed(&self, frames: Vec<CommittedFrame>) {
        if frames.is_empty() || self.watched_runs.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut state = self.lock();
        let HubState { runs, streams } = &mut *state;
        let mut touched: HashSet<String> = HashSet::new();
        for frame in frames {
            let Some(run) = runs.get_mut(&frame.run_id) else {
                continue;
            };
            run.latest = Some(run.latest.unwrap_or(0).max(frame.frame_no));
            if let Some(source) = frame.source {
                let slot = run.frames.entry(frame.frame_no).or_default();
                if matches!(slot.snapshot, SnapshotSlot::Unknown) {
                    slot.snapshot = SnapshotSlot::Source(source);
                }
            }
            touched.insert(frame.run_id);
        }
        for run_id in touched {
            if let Some(run) = runs.get_mut(&run_id) {
                run.evict(streams, self.frames_cached_max);
                run.wake_all(streams);
            }
        }
    }

    /// A rewind or truncation (REWIND.md §9): frames after `latest` are gone, and every stream of
    /// the run sends a snapshot with its next event.
    pub fn rewound(&self, run_id: &str, latest: i64) {
        let mut state = self.lock();
        let HubState { runs, streams } = &mut *state;
        let Some(run) = runs.get_mut(run_id) else {
            return;
        };
        run.latest = Some(latest);
        // Entries after the target, and deltas into the first one after it, are rebuilt.
        run.frames.retain(|frame_no, _| *frame_no <= latest);
        for key in &run.streams {
            if let Some(StreamState {
                phase: Phase::Following { invalidated, .. },
                ..
            }) = streams.get_mut(key)
            {
                *invalidated = true;
            }
        }
        run.wake_all(streams);
    }

    /// What stream `key` does next (EVENTS.md §4.5).
    pub fn poll(&self, key: u64) -> Step {
        let mut state = self.lock();
        let HubState { runs, streams } = &mut *state;
        let Some(stream) = streams.get_mut(&key) else {
            return Step::Closed;
        };
        if let Some(message) = stream.failure.take() {
            return Step::Fail {
                code: "SERVER_ERROR",
                message,
            };
        }
        let Some(run) = runs.get_mut(&stream.run_id) else {
            return Step::Closed;
        };
        let Some(latest) = run.latest else {
            return Step::Wait;
        };
        let run_id = stream.run_id.clone();
        let missing = |frame_no: i64| Step::Fail {
            code: "SERVER_ERROR",
            message: format!("Frame {frame_no} is not available for run {run_id}."),
        };
        let step = match &mut stream.phase {
            Phase::Opening { .. } => Step::Wait,
            Phase::Initial { cursor } => {
                // > cursor c → snapshot of frame `min(floor(c/50)*50, latest)`; if that frame
                // > does not exist … → snapshot of the latest frame instead
                let keyframe = cursor.map_or(latest, |c| {
                    let c = i64::try_from(c).unwrap_or(i64::MAX);
                    let interval = KEYFRAME_INTERVAL as i64;
                    (c / interval * interval).min(latest)
                });
                let target = if keyframe == 0 { latest } else { keyframe };
                let mut need = run.need_snapshot(&stream.run_id, target, key);
                if matches!(need, Need::Missing) && target != latest {
                    need = run.need_snapshot(&stream.run_id, latest, key);
                }
                match need {
                    Need::Ready(built) => emit_snapshot(&mut stream.phase, built),
                    Need::Missing => missing(latest),
                    Need::Work(work) => Step::Work(work),
                    Need::Wait => Step::Wait,
                }
            }
            Phase::Following {
                last,
                since_snapshot,
                invalidated,
                base,
            } => {
                if latest < *last {
                    // > L < last emitted seq (rewind/truncation) → emit a snapshot of L.
                    match run.need_snapshot(&stream.run_id, latest, key) {
                        Need::Ready(built) => emit_snapshot(&mut stream.phase, built),
                        Need::Missing => missing(latest),
                        Need::Work(work) => Step::Work(work),
                        Need::Wait => Step::Wait,
                    }
                } else if latest == *last {
                    Step::Wait
                } else {
                    let frame_no = *last + 1;
                    match run.need_snapshot(&stream.run_id, frame_no, key) {
                        Need::Missing => {
                            // > If frame k is missing … → emit a snapshot of the current latest
                            // > frame and continue from there.
                            match run.need_snapshot(&stream.run_id, latest, key) {
                                Need::Ready(built) => emit_snapshot(&mut stream.phase, built),
                                Need::Missing => missing(latest),
                                Need::Work(work) => Step::Work(work),
                                Need::Wait => Step::Wait,
                            }
                        }
                        Need::Work(work) => Step::Work(work),
                        Need::Wait => Step::Wait,
                        Need::Ready(target) => {
                            if *invalidated || *since_snapshot >= DELTAS_BETWEEN_SNAPSHOTS_MAX {
                                emit_snapshot(&mut stream.phase, target)
                            } else {
                                let slot = run.frames.entry(frame_no).or_default();
                                match &slot.delta {
                                    DeltaSlot::Ready { event } => {
                                        // > the serialized delta event is ≥ the serialized
                                        // > snapshot event in bytes → the snapshot instead
                                        if event.len() >= target.event.len() {
                                            emit_snapshot(&mut stream.phase, target)
                                        } else {
                                            let event = event.clone();
                                            *since_snapshot += 1;
                                            *last = frame_no;
                                            *base = target;
                                            Step::Emit {
                                                event,
                                                kind: EventKind::Delta,
                                                seq: frame_no,
                                            }
                                        }
                                    }
                                    DeltaSlot::Building { .. } => Step::Wait,
                                    DeltaSlot::None => {
                                        slot.delta = DeltaSlot::Building { owner: key };
                                        Step::Work(Work::Delta {
                                            frame_no,
                                            base: base.clone(),
                                            target,
                                        })
                                    }
                                }
                            }
                        }
                    }
                }
            }
        };
        if matches!(step, Step::Emit { .. }) {
            run.evict(streams, self.frames_cached_max);
        }
        step
    }

    /// Reports the work `poll` gave stream `key`; every stream of the run is woken.
    pub fn complete(&self, key: u64, outcome: Outcome) {
        let mut state = self.lock();
        let HubState { runs, streams } = &mut *state;
        let Some(run_id) = streams.get(&key).map(|s| s.run_id.clone()) else {
            return;
        };
        let Some(run) = runs.get_mut(&run_id) else {
            return;
        };
        // A result lands only where its mark still is: a rewind may have dropped the slot (the
        // work read a discarded frame), and then the result is stale.
        let failure = match outcome {
            Outcome::Snapshot { frame_no, result } => {
                let slot = run.frames.get_mut(&frame_no).filter(|slot| {
                    matches!(slot.snapshot, SnapshotSlot::Building { owner, .. } if owner == key)
                });
                match (slot, result) {
                    (None, result) => result.err(),
                    (Some(slot), Ok(Some(built))) => {
                        self.snapshots_built.fetch_add(1, Ordering::Relaxed);
                        slot.snapshot = SnapshotSlot::Built(built);
                        None
                    }
                    (Some(slot), Ok(None)) => {
                        slot.snapshot = SnapshotSlot::Missing;
                        None
                    }
                    (Some(slot), Err(message)) => {
                        let source = match std::mem::take(&mut slot.snapshot) {
                            SnapshotSlot::Building { source, .. } => source,
                            _ => None,
                        };
                        slot.snapshot = source.map_or(SnapshotSlot::Unknown, SnapshotSlot::Source);
                        Some(message)
                    }
                }
            }
            Outcome::Delta { frame_no, result } => {
                let slot = run.frames.get_mut(&frame_no).filter(
                    |slot| matches!(slot.delta, DeltaSlot::Building { owner } if owner == key),
                );
                match (slot, result) {
                    (None, result) => result.err(),
                    (Some(slot), Ok(event)) => {
                        self.deltas_built.fetch_add(1, Ordering::Relaxed);
                        slot.delta = DeltaSlot::Ready { event };
                        None
                    }
                    (Some(slot), Err(message)) => {
                        slot.delta = DeltaSlot::None;
                        Some(message)
                    }
                }
            }
        };
        if let Some(stream) = streams.get_mut(&key) {
            stream.failure = failure;
        }
        run.wake_all(streams);
    }
}

/// Emits `built` as a snapshot: the stream's last seq, base and counters restart from it.
fn emit_snapshot(phase: &mut Phase, built: Arc<Built>) -> Step {
    let seq = built.snapshot.frame_no;
    let event = built.event.clone();
    *phase = Phase::Following {
        last: seq,
        since_snapshot: 0,
        invalidated: false,
        base: built,
    };
    Step::Emit {
        event,
        kind: EventKind::Snapshot,
        seq,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::devtools::snapshot::build;
    use crate::rpc::Value;
    use std::future::Future;

    /// Frame `n` of run `r`: a workflow whose task list grows with `n` (so every frame differs).
    fn source(frame_no: i64, tasks: usize) -> FrameSource {
        let children: Vec<String> = (0..tasks)
            .map(|i| format!(r#"{{"kind":"element","tag":"smithers:task","props":{{"id":"t{i}"}},"children":[]}}"#))
            .collect();
        let tree = format!(
            r#"{{"kind":"element","tag":"smithers:workflow","props":{{"name":"w","frame":"{frame_no}"}},"children":[{}]}}"#,
            children.join(",")
        );
        FrameSource {
            run_id: "r".into(),
            frame_no,
            created_at_ms: frame_no,
            tree: simd_json::to_owned_value(&mut tree.into_bytes()).unwrap(),
            task_index: Value::Array(Box::default()),
            attempts: Vec::new(),
        }
    }

    /// A test stream: drives `poll`, does the work synchronously against `storage` (frames by
    /// number), and records what it emitted.
    struct Client {
        key: u64,
        /// Kept so the hub's wake-ups have somewhere to go.
        _wake: flume::Receiver<()>,
        events: Vec<(EventKind, i64, serde_json::Value)>,
        failed: Option<(&'static str, String)>,
    }

    fn open(hub: &DevToolsHub, cursor: Option<u64>, latest: i64) -> Client {
        let (sender, wake) = flume::bounded(1);
        let key = hub.open("r", cursor, sender);
        hub.start(key, latest);
        Client {
            key,
            _wake: wake,
            events: Vec::new(),
            failed: None,
        }
    }

    /// Polls until the stream waits; builds from `storage` when a source is needed.
    fn drive(hub: &DevToolsHub, client: &mut Client, storage: &HashMap<i64, FrameSource>) {
        for _ in 0..10_000 {
            match hub.poll(client.key) {
                Step::Emit { event, kind, seq } => {
                    client
                        .events
                        .push((kind, seq, serde_json::from_slice(&event).unwrap()))
                }
                Step::Work(work) => {
                    let outcome = match work {
                        Work::Snapshot {
                            frame_no,
                            source: None,
                            ..
                        } => Outcome::Snapshot {
                            frame_no,
                            result: Ok(storage
                                .get(&frame_no)
                                .map(|source| build_snapshot(source).unwrap())),
                        },
                        other => futures_executor(other),
                    };
                    hub.complete(client.key, outcome);
                }
                Step::Wait => return,
                Step::Fail { code, message } => {
                    client.failed = Some((code, message));
                    hub.close(client.key);
                    return;
                }
                Step::Closed => return,
            }
        }
        panic!("stream did not settle");
    }

    /// Runs `Work::perform` without storage (only source-carrying work reaches here).
    fn futures_executor(work: Work) -> Outcome {
        let mut future = Box::pin(work.perform(None));
        let waker = std::task::Waker::noop();
        let mut context = std::task::Context::from_waker(waker);
        match future.as_mut().poll(&mut context) {
            std::task::Poll::Ready(outcome) => outcome,
            std::task::Poll::Pending => panic!("perform without storage does not wait"),
        }
    }

    /// Commits frame `frame_no` (3 to 6 tasks, so a delta stays smaller than a snapshot).
    fn commit(
        hub: &DevToolsHub,
        storage: &mut HashMap<i64, FrameSource>,
        frame_no: i64,
        with_source: bool,
    ) {
        let frame = source(frame_no, 3 + frame_no as usize % 4);
        storage.insert(frame_no, frame.clone());
        hub.frames_committed(vec![CommittedFrame {
            run_id: "r".into(),
            frame_no,
            source: with_source.then(|| Arc::new(frame)),
        }]);
    }

    fn kinds(client: &Client) -> Vec<(EventKind, i64)> {
        client
            .events
            .iter()
            .map(|(kind, seq, _)| (*kind, *seq))
            .collect()
    }

    /// Applies the client's events in order, as a client would, and returns its tree.
    fn replay(client: &Client) -> serde_json::Value {
        let mut tree = serde_json::Value::Null;
        for (kind, seq, event) in &client.events {
            match kind {
                EventKind::Snapshot => tree = event["snapshot"].clone(),
                EventKind::Delta => {
                    let delta = &event["delta"];
                    assert_eq!(delta["baseSeq"], tree["seq"], "chain before {seq}");
                    crate::devtools::delta::wire_client::apply_wire(&mut tree, delta);
                }
            }
            assert_eq!(tree["seq"], *seq);
        }
        tree
    }

    fn fresh(storage: &HashMap<i64, FrameSource>, frame_no: i64) -> serde_json::Value {
        let mut out = Vec::new();
        build(&storage[&frame_no]).unwrap().write(&mut out, None);
        serde_json::from_slice(&out).unwrap()
    }

    // Goal: a run without frames starts with the empty snapshot (frame 0); the first frame is
    // then a delta (replaceRoot) or a snapshot by the size rule, and the client's tree is frame
    // 1's.
    #[test]
    fn no_frames_gives_the_empty_snapshot_first() {
        let hub = DevToolsHub::default();
        let mut storage = HashMap::new();
        let mut client = open(&hub, None, 0);
        drive(&hub, &mut client, &storage);
        assert_eq!(kinds(&client), [(EventKind::Snapshot, 0)]);
        assert_eq!(client.events[0].2["snapshot"]["root"]["name"], "(empty)");
        commit(&hub, &mut storage, 1, true);
        drive(&hub, &mut client, &storage);
        assert_eq!(client.events.len(), 2);
        assert_eq!(client.events[1].1, 1);
        assert_eq!(replay(&client), fresh(&storage, 1));
    }

    // Goal: cursor rules of step 1: no cursor → latest; c < 50 → latest (frame 0 never exists
    // when frames do); c ≥ 50 → keyframe floor(c/50)*50 then every frame up to latest, frames
    // ≤ c included; a missing keyframe → latest. Deltas chain and the client ends with the
    // latest frame's snapshot.
    #[test]
    fn initial_snapshot_follows_the_cursor_rules() {
        let hub = DevToolsHub::default();
        let mut storage = HashMap::new();
        for frame_no in 1..=130 {
            commit(&hub, &mut storage, frame_no, false);
        }
        let cases: [(Option<u64>, Vec<i64>); 4] = [
            (None, vec![130]),
            (Some(49), vec![130]),
            (Some(120), (100..=130).collect()),
            (Some(130), (100..=130).collect()),
        ];
        for (cursor, seqs) in cases {
            let mut client = open(&hub, cursor, 130);
            drive(&hub, &mut client, &storage);
            let got: Vec<i64> = client.events.iter().map(|(_, seq, _)| *seq).collect();
            assert_eq!(got, seqs, "cursor {cursor:?}");
            assert_eq!(client.events[0].0, EventKind::Snapshot);
            assert_eq!(replay(&client), fresh(&storage, 130), "cursor {cursor:?}");
            hub.close(client.key);
        }
        // Keyframe 100 pruned: the latest instead.
        storage.remove(&100);
        let hub = DevToolsHub::default();
        let mut client = open(&hub, Some(120), 130);
        drive(&hub, &mut client, &storage);
        assert_eq!(kinds(&client), [(EventKind::Snapshot, 130)]);
    }

    // Goal: snapshot, 49 deltas, snapshot, … over live frames; two streams share every build
    // (one snapshot and one delta per frame) and get the same bytes.
    #[test]
    fn rebaseline_after_49_deltas_and_shared_builds() {
        let hub = DevToolsHub::default();
        let mut storage = HashMap::new();
        commit(&hub, &mut storage, 1, false);
        let mut first = open(&hub, None, 1);
        let mut second = open(&hub, None, 1);
        drive(&hub, &mut first, &storage);
        drive(&hub, &mut second, &storage);
        for frame_no in 2..=120 {
            commit(&hub, &mut storage, frame_no, true);
            drive(&hub, &mut first, &storage);
            drive(&hub, &mut second, &storage);
        }
        let snapshots: Vec<i64> = kinds(&first)
            .into_iter()
            .filter(|(kind, _)| *kind == EventKind::Snapshot)
            .map(|(_, seq)| seq)
            .collect();
        assert_eq!(snapshots, [1, 51, 101]);
        assert_eq!(first.events.len(), 120);
        assert_eq!(first.events, second.events);
        assert_eq!(replay(&first), fresh(&storage, 120));
        assert_eq!(hub.snapshots_built(), 120);
        // Frames 51 and 101 go out as snapshots without needing their delta.
        assert_eq!(hub.deltas_built(), 117);
        // Both streams are at 120: only that entry is still cached.
        assert_eq!(hub.lock().runs["r"].frames.len(), 1);
    }

    // Goal: the size rule: when the delta event is not smaller than the snapshot event (here a
    // root rename, a replaceRoot of a small tree), the snapshot goes out instead.
    #[test]
    fn snapshot_instead_of_a_larger_delta() {
        let hub = DevToolsHub::default();
        let mut storage = HashMap::new();
        commit(&hub, &mut storage, 1, false);
        let mut client = open(&hub, None, 1);
        drive(&hub, &mut client, &storage);
        // Frame 2 renames the root (a replaceRoot of a bare tree, larger than its snapshot);
        // frame 3 only adds a task under it.
        let bare = |frame_no: i64, children: &str| {
            let mut frame = source(frame_no, 0);
            frame.tree = simd_json::to_owned_value(
                &mut format!(r#"{{"kind":"element","tag":"smithers:workflow","props":{{"name":"other"}},"children":[{children}]}}"#).into_bytes(),
            )
            .unwrap();
            frame
        };
        storage.insert(2, bare(2, ""));
        hub.frames_committed(vec![CommittedFrame {
            run_id: "r".into(),
            frame_no: 2,
            source: None,
        }]);
        drive(&hub, &mut client, &storage);
        let task = r#"{"kind":"element","tag":"smithers:task","props":{"id":"t"},"children":[]}"#;
        storage.insert(3, bare(3, task));
        hub.frames_committed(vec![CommittedFrame {
            run_id: "r".into(),
            frame_no: 3,
            source: None,
        }]);
        drive(&hub, &mut client, &storage);
        assert_eq!(
            kinds(&client),
            [
                (EventKind::Snapshot, 1),
                (EventKind::Snapshot, 2),
                (EventKind::Delta, 3)
            ]
        );
        assert_eq!(hub.deltas_built(), 2);
        assert_eq!(replay(&client), fresh(&storage, 3));
    }

    // Goal: a missing frame k gives a snapshot of the latest; a rewind below the last emitted seq
    // gives a snapshot of the new latest; after `rewound`, the next frame is a snapshot even when
    // it is past the last emitted seq (invalidation flag).
    #[test]
    fn missing_frames_rewinds_and_invalidation() {
        let hub = DevToolsHub::default();
        let mut storage = HashMap::new();
        commit(&hub, &mut storage, 1, false);
        let mut client = open(&hub, None, 1);
        drive(&hub, &mut client, &storage);
        for frame_no in 2..=4 {
            commit(&hub, &mut storage, frame_no, false);
        }
        storage.remove(&2);
        drive(&hub, &mut client, &storage);
        assert_eq!(
            kinds(&client),
            [(EventKind::Snapshot, 1), (EventKind::Snapshot, 4)]
        );

        // Rewind to 3: frame 4 is discarded, the stream (at 4) gets a snapshot of 3.
        storage.remove(&4);
        hub.rewound("r", 3);
        drive(&hub, &mut client, &storage);
        assert_eq!(
            client.events.last().map(|e| (e.0, e.1)),
            Some((EventKind::Snapshot, 3))
        );

        // Invalidation alone: latest advances past last, yet a snapshot is emitted.
        commit(&hub, &mut storage, 4, true);
        hub.rewound("r", 4);
        drive(&hub, &mut client, &storage);
        assert_eq!(
            client.events.last().map(|e| (e.0, e.1)),
            Some((EventKind::Snapshot, 4))
        );
        commit(&hub, &mut storage, 5, true);
        drive(&hub, &mut client, &storage);
        assert_eq!(
            client.events.last().map(|e| (e.0, e.1)),
            Some((EventKind::Delta, 5))
        );
        assert_eq!(replay(&client), fresh(&storage, 5));
    }

    // Goal: work that read a frame a rewind then discarded does not land in the cache: the new
    // frame with that number is read again and the client ends with it.
    #[test]
    fn stale_work_after_a_rewind_is_discarded() {
        let hub = DevToolsHub::default();
        let mut storage = HashMap::new();
        commit(&hub, &mut storage, 1, false);
        let mut client = open(&hub, None, 1);
        drive(&hub, &mut client, &storage);
        commit(&hub, &mut storage, 2, false);
        let Step::Work(work) = hub.poll(client.key) else {
            panic!("builds frame 2")
        };
        let stale = Outcome::Snapshot {
            frame_no: 2,
            result: Ok(Some(build_snapshot(&storage[&2]).unwrap())),
        };
        drop(work);
        // Rewind to 1, then a different frame 2 is committed.
        hub.rewound("r", 1);
        storage.insert(2, source(2, 6));
        hub.frames_committed(vec![CommittedFrame {
            run_id: "r".into(),
            frame_no: 2,
            source: None,
        }]);
        hub.complete(client.key, stale);
        assert_eq!(
            hub.snapshots_built(),
            1,
            "the stale build is not counted or kept"
        );
        drive(&hub, &mut client, &storage);
        assert_eq!(
            kinds(&client),
            [(EventKind::Snapshot, 1), (EventKind::Snapshot, 2)]
        );
        assert_eq!(replay(&client), fresh(&storage, 2));
    }

    // Goal: a stream that goes away while it builds releases its marks, so the other stream does
    // the work; the last stream of a run takes the run's entries with it; a failed build fails
    // only its own stream.
    #[test]
    fn close_releases_work_and_failures_are_per_stream() {
        let hub = DevToolsHub::default();
        let mut storage = HashMap::new();
        commit(&hub, &mut storage, 1, false);
        let first = open(&hub, None, 1);
        let mut second = open(&hub, None, 1);
        let Step::Work(_) = hub.poll(first.key) else {
            panic!("first builds")
        };
        assert!(matches!(hub.poll(second.key), Step::Wait));
        hub.close(first.key);
        drive(&hub, &mut second, &storage);
        assert_eq!(kinds(&second), [(EventKind::Snapshot, 1)]);

        let mut third = open(&hub, None, 1);
        drive(&hub, &mut third, &storage);
        commit(&hub, &mut storage, 2, false);
        let Step::Work(_) = hub.poll(third.key) else {
            panic!("third builds")
        };
        hub.complete(
            third.key,
            Outcome::Snapshot {
                frame_no: 2,
                result: Err("disk on fire".into()),
            },
        );
        assert!(matches!(
            hub.poll(third.key),
            Step::Fail {
                code: "SERVER_ERROR",
                ..
            }
        ));
        hub.close(third.key);
        drive(&hub, &mut second, &storage);
        assert_eq!(
            kinds(&second),
            [(EventKind::Snapshot, 1), (EventKind::Delta, 2)]
        );

        hub.close(second.key);
        assert!(!hub.is_watched("r"));
        assert_eq!(hub.n_streams(), 0);
        assert!(hub.lock().runs.is_empty());
    }

    // Goal: the per-run cache holds at most its limit while a slow stream lags (the lagging
    // stream rebuilds what was dropped from storage and still ends with the right tree).
    #[test]
    fn cache_is_bounded_per_run() {
        let hub = DevToolsHub::with_cache_limit(8);
        let mut storage = HashMap::new();
        commit(&hub, &mut storage, 1, false);
        let mut fast = open(&hub, None, 1);
        let mut slow = open(&hub, None, 1);
        drive(&hub, &mut fast, &storage);
        drive(&hub, &mut slow, &storage);
        for frame_no in 2..=60 {
            commit(&hub, &mut storage, frame_no, true);
            drive(&hub, &mut fast, &storage);
            assert!(hub.lock().runs["r"].frames.len() <= 8);
        }
        drive(&hub, &mut slow, &storage);
        assert_eq!(replay(&slow), fresh(&storage, 60));
        assert_eq!(replay(&fast), fresh(&storage, 60));
    }
}
