//! The storage thread's interface: typed commands sent over a bounded channel to the one thread
//! that owns SQLite (`storage::thread`), each answered on its own reply channel after COMMIT.
//!
//! Commands are intent-level (write these rows, read that run) so the backend can change without
//! touching callers. Rows mirror DATA.md (snake_case columns, epoch-ms integers); JSON columns are
//! kept as JSON text. Nothing outside this module touches rusqlite.

pub mod migrations;
pub mod queries;
pub mod records;
pub mod thread;
pub use thread::open;

use crate::metrics::LatencyHistogram;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Run statuses the store accepts (DATA.md §3).
pub const RUN_STATUSES: &[&str] = &[
    "running",
    "waiting-approval",
    "waiting-event",
    "waiting-timer",
    "waiting-quota",
    "paused",
    "finished",
    "failed",
    "cancelled",
    "continued",
];
/// Terminal run statuses.
pub const TERMINAL_RUN_STATUSES: &[&str] = &["finished", "failed", "cancelled", "continued"];

/// `_smithers_runs`, plus `input_json` (the run input) and `idempotency_key` (ours).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunRow {
    pub run_id: String,
    pub parent_run_id: Option<String>,
    pub workflow_name: String,
    pub workflow_path: Option<String>,
    pub workflow_hash: Option<String>,
    pub status: String,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub heartbeat_at_ms: Option<i64>,
    pub runtime_owner_id: Option<String>,
    pub cancel_requested_at_ms: Option<i64>,
    pub pause_requested_at_ms: Option<i64>,
    pub error_json: Option<String>,
    pub config_json: Option<String>,
    pub input_json: String,
    pub idempotency_key: Option<String>,
}

/// `_smithers_nodes`, PK (run_id, node_id, iteration).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRow {
    pub run_id: String,
    pub node_id: String,
    pub iteration: i64,
    pub state: String,
    pub last_attempt: Option<i64>,
    pub updated_at_ms: i64,
    pub output_table: String,
    pub label: Option<String>,
}

/// `_smithers_attempts`, PK (run_id, node_id, iteration, attempt).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptRow {
    pub run_id: String,
    pub node_id: String,
    pub iteration: i64,
    pub attempt: i64,
    pub state: String,
    pub started_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    pub heartbeat_at_ms: Option<i64>,
    pub heartbeat_data_json: Option<String>,
    pub error_json: Option<String>,
    pub meta_json: Option<String>,
    pub exit_code: Option<i64>,
}

/// `_smithers_frames`, PK (run_id, frame_no); frames are numbered from 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameRow {
    pub run_id: String,
    pub frame_no: i64,
    pub created_at_ms: i64,
    pub xml_json: String,
    pub xml_hash: String,
    pub task_index_json: String,
}

/// One output row per (run, node, iteration), as JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputRow {
    pub run_id: String,
    pub node_id: String,
    pub iteration: i64,
    pub payload_json: String,
    pub created_at_ms: i64,
}

/// `_smithers_approvals`, PK (run_id, node_id, iteration).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApprovalRow {
    pub run_id: String,
    pub node_id: String,
    pub iteration: i64,
    /// `requested`, `approved` or `denied`.
    pub status: String,
    pub requested_at_ms: Option<i64>,
    pub decided_at_ms: Option<i64>,
    pub note: Option<String>,
    pub decided_by: Option<String>,
    pub request_json: Option<String>,
    pub decision_json: Option<String>,
    pub auto_approved: bool,
}

/// `_smithers_signals`, PK (run_id, seq); seq per run from 0, assigned by the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignalRow {
    pub run_id: String,
    pub seq: i64,
    pub signal_name: String,
    pub correlation_id: Option<String>,
    pub payload_json: String,
    pub received_at_ms: i64,
    pub received_by: Option<String>,
    /// The waiting node that consumed it, `(node_id, iteration)`; None while unconsumed.
    pub consumed_by_node: Option<String>,
    pub consumed_by_iteration: Option<i64>,
}

/// `_smithers_events`, PK (run_id, seq); seq per run from 0, assigned by the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRow {
    pub run_id: String,
    pub seq: i64,
    pub timestamp_ms: i64,
    /// Engine event type, e.g. `NodeStarted`, `RunFinished`.
    pub event_type: String,
    pub payload_json: String,
}

/// `_smithers_cron`, PK `cron_id` (DATA.md §8). `workflow_path` is `gateway:<workflowKey>`;
/// `error_json` holds the last failure's message as plain text despite its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CronRow {
    pub cron_id: String,
    pub pattern: String,
    pub workflow_path: String,
    pub enabled: bool,
    pub created_at_ms: i64,
    pub last_run_at_ms: Option<i64>,
    pub next_run_at_ms: Option<i64>,
    pub error_json: Option<String>,
}

/// One write, applied atomically together with the other mutations of its `Write` command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// Insert a new run; `Conflict` when the id exists, or when `idempotency_key` is already used
    /// (the error then names the existing run).
    InsertRun(RunRow),
    /// Replace the whole run row (it must exist).
    PutRun(RunRow),
    PutNode(NodeRow),
    PutAttempt(AttemptRow),
    /// Insert a frame; `Conflict` when (run, frame_no) exists.
    InsertFrame(FrameRow),
    PutOutput(OutputRow),
    PutApproval(ApprovalRow),
    /// Append a signal with the next per-run seq (returned in `WriteOutcome::signal_seqs`).
    /// An identical redelivery (same name, correlation, payload, received_at_ms, received_by)
    /// returns the existing seq instead of inserting.
    InsertSignal(SignalRow),
    /// Mark a signal consumed by a waiting node.
    ConsumeSignal {
        run_id: String,
        seq: i64,
        node_id: String,
        iteration: i64,
    },
    /// Append an event with the next per-run seq (returned in `WriteOutcome::event_seqs`).
    AppendEvent {
        run_id: String,
        timestamp_ms: i64,
        event_type: String,
        payload_json: String,
    },
    /// Insert a cron row, or update one: an existing row keeps its `created_at_ms`,
    /// `last_run_at_ms` and `error_json`; pattern, path, enabled and `next_run_at_ms` are
    /// replaced (METHODS.md §3.25, DATA.md §8).
    UpsertCron(CronRow),
    /// Delete a cron row; `NotFound` when there is none.
    DeleteCron {
        cron_id: String,
    },
    /// The scheduler's claim (DATA.md §8 step 1): a compare-and-set that succeeds only while the
    /// row is enabled and its `next_run_at_ms` is still `expected_next_run_at_ms` (NULL matches
    /// NULL); it sets the run times and clears `error_json`. `Conflict` when the claim is lost.
    ClaimCron {
        cron_id: String,
        expected_next_run_at_ms: Option<i64>,
        last_run_at_ms: i64,
        next_run_at_ms: i64,
    },
    /// Record a run or a failure: `last_run_at_ms`, `next_run_at_ms`, `error_json`. A row deleted
    /// in the meantime is not an error (there is nothing left to record on).
    RecordCronRun {
        cron_id: String,
        last_run_at_ms: i64,
        next_run_at_ms: Option<i64>,
        error: Option<String>,
    },
    // Records (docs, tickets).
    /// Create, patch or tombstone a work doc (`records::DocMutation`); the row as written is
    /// returned in `WriteOutcome::docs`.
    Doc(records::DocMutation),
    // Run control (retryTask, rewindRun).
    /// Delete a node iteration's output row, if any (`retryTask`'s reset).
    DeleteOutput {
        run_id: String,
        node_id: String,
        iteration: i64,
    },
    /// Append a `_smithers_time_travel_audit` row (REWIND.md §4).
    InsertTimeTravelAudit(TimeTravelAuditRow),
}

/// One `_smithers_time_travel_audit` row (REWIND.md §4; migration 2 names the start time
/// `created_at_ms` and keeps the duration in `details_json`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimeTravelAuditRow {
    pub run_id: String,
    /// Latest frame at the start, -1 until known.
    pub from_frame_no: i64,
    /// Requested frame, -1 when it is not an integer.
    pub to_frame_no: i64,
    pub caller: String,
    /// `in_progress`, `success`, `failed`, `partial` or `rejected`.
    pub result: String,
    pub created_at_ms: i64,
    pub details_json: Option<String>,
}

/// What a committed `Write` assigned, in mutation order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    pub event_seqs: Vec<i64>,
    pub signal_seqs: Vec<i64>,
    /// Docs as each `Mutation::Doc` left them.
    pub docs: Vec<records::DocRow>,
}

/// `listRuns` filter after validation (METHODS.md §3.11); workflow-key and system filtering is
/// done by the caller from `config_json`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunFilter {
    pub status: Option<String>,
    pub parent_run_id: Option<String>,
    pub limit: usize,
    pub offset: usize,
}

/// Everything the engine needs to resume one run after a restart.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunState {
    pub run: Option<RunRow>,
    pub nodes: Vec<NodeRow>,
    pub attempts: Vec<AttemptRow>,
    pub outputs: Vec<OutputRow>,
    pub approvals: Vec<ApprovalRow>,
    pub signals: Vec<SignalRow>,
    /// Highest frame number, 0 when none.
    pub last_frame_no: i64,
    /// Highest event seq, -1 when none.
    pub last_event_seq: i64,
}

/// One node's rows in one run (`getNodeOutput`, `getNodeDiff`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeRecords {
    pub run: Option<RunRow>,
    /// Every iteration of the node, by iteration.
    pub nodes: Vec<NodeRow>,
    /// Every attempt of the node, by iteration then attempt.
    pub attempts: Vec<AttemptRow>,
    /// Every output of the node, by iteration.
    pub outputs: Vec<OutputRow>,
}

// ---- Read-side inspection (listRunDescendants, frames, attempts, token usage, schema) ----

/// One run of a lineage (`listRunDescendants`): the root has depth 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DescendantRow {
    pub run_id: String,
    pub parent_run_id: Option<String>,
    pub depth: u32,
}

/// One object of the internal catalog (`sqlite_schema` rows named `_smithers_%`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogEntry {
    /// `table` or `index`.
    pub kind: String,
    pub name: String,
    /// The table an index belongs to (the table itself for a table).
    pub table: String,
    pub sql: String,
}

/// The internal table catalog and the newest applied migration (`getSchemaSignature`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SchemaCatalog {
    /// Newest id in the migration ledger; None when the ledger is empty.
    pub newest_migration: Option<i64>,
    /// Sorted by name.
    pub entries: Vec<CatalogEntry>,
}

/// PRAGMA values read back after opening (tests assert them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pragmas {
    pub journal_mode: String,
    /// 0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA.
    pub synchronous: i64,
    pub busy_timeout_ms: i64,
    pub foreign_keys: bool,
    pub schema_version: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// The storage thread is gone (channel closed) or refused the command (queue full).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A uniqueness rule was violated (run id, idempotency key, frame number).
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("not found: {0}")]
    NotFound(String),
    /// The database is full (SQLITE_FULL) or read-only: nothing of the command was applied.
    #[error("storage full or read-only: {0}")]
    Rejected(String),
    /// Any other SQLite failure; nothing of the command was applied.
    #[error("storage error: {0}")]
    Sqlite(String),
    /// A reply did not arrive in time.
    #[error("storage timeout")]
    Timeout,
}

pub type StorageResult<T> = Result<T, StorageError>;

/// A reply channel for one command.
pub type Reply<T> = flume::Sender<StorageResult<T>>;

/// Commands understood by the storage thread.
#[derive(Debug)]
pub enum Command {
    /// Apply mutations atomically (savepoint inside the group-commit transaction); the reply is
    /// sent only after COMMIT.
    Write {
        mutations: Vec<Mutation>,
        reply: Reply<WriteOutcome>,
    },
    GetRun {
        run_id: String,
        reply: Reply<Option<RunRow>>,
    },
    /// Newest first (`created_at_ms` descending, then run_id).
    ListRuns {
        filter: RunFilter,
        reply: Reply<Vec<RunRow>>,
    },
    /// The run with this idempotency key, if any.
    FindRunByIdempotencyKey {
        key: String,
        reply: Reply<Option<RunRow>>,
    },
    /// Every run whose status is not terminal, with its state.
    LoadActiveRuns {
        reply: Reply<Vec<RunState>>,
    },
    LoadRunState {
        run_id: String,
        reply: Reply<RunState>,
    },
    ListNodes {
        run_id: String,
        reply: Reply<Vec<NodeRow>>,
    },
    /// Approvals with status `requested` whose run is not terminal, oldest request first.
    ListPendingApprovals {
        run_id: Option<String>,
        reply: Reply<Vec<ApprovalRow>>,
    },
    GetApproval {
        run_id: String,
        node_id: String,
        iteration: i64,
        reply: Reply<Option<ApprovalRow>>,
    },
    /// Events with seq > after_seq, ascending, at most `limit`.
    ListEvents {
        run_id: String,
        after_seq: i64,
        limit: usize,
        reply: Reply<Vec<EventRow>>,
    },
    GetFrame {
        run_id: String,
        frame_no: i64,
        reply: Reply<Option<FrameRow>>,
    },
    /// The run's newest frame number (0 when it has none); None when the run does not exist.
    LatestFrame {
        run_id: String,
        reply: Reply<Option<i64>>,
    },
    /// A frame and the run's attempts with metadata that started no later than it (what a
    /// DevTools snapshot is built from); None when the frame does not exist.
    GetFrameSource {
        run_id: String,
        frame_no: i64,
        reply: Reply<Option<(FrameRow, Vec<AttemptRow>)>>,
    },
    /// The run and one node's rows; `run` is None (and the lists empty) when the run is absent.
    LoadNodeRecords {
        run_id: String,
        node_id: String,
        reply: Reply<NodeRecords>,
    },
    /// Every cron row, oldest `created_at_ms` first (then by id).
    ListCrons {
        reply: Reply<Vec<CronRow>>,
    },
    GetCron {
        cron_id: String,
        reply: Reply<Option<CronRow>>,
    },
    // Run control (rewindRun).
    /// Rewinds that count toward a caller's quota (REWIND.md §4): rows of the run and caller
    /// since `since_ms` whose result is neither `in_progress` nor `rejected`.
    CountTimeTravelAudits {
        run_id: String,
        caller: String,
        since_ms: i64,
        reply: Reply<i64>,
    },
    // ---- Read-side inspection (listRunDescendants, frames, attempts, token usage, schema) ----
    /// The run and the runs below it through `parent_run_id`, breadth first (depth, then creation
    /// order), cycles cut, at most `limit` rows counting the root; None when the run is absent.
    ListRunDescendants {
        run_id: String,
        limit: usize,
        reply: Reply<Option<Vec<DescendantRow>>>,
    },
    /// Frames newest first, after `after_frame_no` when given, at most `limit`; None when the run
    /// is absent.
    ListFrames {
        run_id: String,
        limit: usize,
        after_frame_no: Option<i64>,
        reply: Reply<Option<Vec<FrameRow>>>,
    },
    /// Attempts of one node iteration (newest attempt first) or of the whole run (by start time,
    /// then attempt), at most `limit`; None when the run is absent.
    ListAttempts {
        run_id: String,
        node: Option<(String, i64)>,
        limit: usize,
        reply: Reply<Option<Vec<AttemptRow>>>,
    },
    /// Events of one type by seq, at most `limit`; None when the run is absent.
    ListEventsOfType {
        run_id: String,
        event_type: String,
        limit: usize,
        reply: Reply<Option<Vec<EventRow>>>,
    },
    /// The `_smithers_%` catalog and the newest applied migration.
    SchemaCatalog {
        reply: Reply<SchemaCatalog>,
    },
    // ---- end of read-side inspection ----
    Pragmas {
        reply: Reply<Pragmas>,
    },
    /// `PRAGMA integrity_check` result lines ("ok" when healthy).
    IntegrityCheck {
        reply: Reply<Vec<String>>,
    },
    // Records (docs, tickets, memory facts, scores).
    /// Reads of the records tables, each with its own typed reply.
    Records(records::RecordsQuery),
}

/// Options for opening the store.
#[derive(Clone, Debug)]
pub struct StorageOptions {
    pub path: PathBuf,
    /// `FULL` (default) or `NORMAL`.
    pub synchronous_full: bool,
    pub busy_timeout_ms: u64,
    /// Commands queued before senders wait (bounded channel).
    pub queue_capacity: usize,
    /// Most commands drained into one transaction.
    pub batch_commands_max: usize,
}

impl StorageOptions {
    pub fn new(path: PathBuf) -> StorageOptions {
        StorageOptions {
            path,
            synchronous_full: true,
            busy_timeout_ms: 5_000,
            queue_capacity: 4_096,
            batch_commands_max: 512,
        }
    }
}

/// The send side: cheap to clone, usable from monoio tasks (`call`) and plain threads
/// (`call_blocking`).
#[derive(Clone, Debug)]
pub struct StorageHandle {
    sender: flume::Sender<Command>,
    /// Round trips of `call` and `call_blocking`: queueing, execution and commit (/metrics).
    latency: Arc<LatencyHistogram>,
}

impl StorageHandle {
    pub fn new(sender: flume::Sender<Command>) -> StorageHandle {
        StorageHandle {
            sender,
            latency: Arc::new(LatencyHistogram::default()),
        }
    }

    pub fn latency(&self) -> &LatencyHistogram {
        &self.latency
    }

    /// Sends a command built around a fresh reply channel and awaits the reply.
    pub async fn call<T>(&self, build: impl FnOnce(Reply<T>) -> Command) -> StorageResult<T> {
        let started = Instant::now();
        let (reply, receiver) = flume::bounded(1);
        self.sender
            .send_async(build(reply))
            .await
            .map_err(|_| StorageError::Unavailable("storage thread stopped".into()))?;
        let result = receiver
            .recv_async()
            .await
            .map_err(|_| StorageError::Unavailable("storage thread dropped a reply".into()))?;
        self.latency.record(started.elapsed());
        result
    }

    /// The same from a plain thread (the engine); blocks.
    pub fn call_blocking<T>(&self, build: impl FnOnce(Reply<T>) -> Command) -> StorageResult<T> {
        let started = Instant::now();
        let (reply, receiver) = flume::bounded(1);
        self.sender
            .send(build(reply))
            .map_err(|_| StorageError::Unavailable("storage thread stopped".into()))?;
        let result = receiver
            .recv()
            .map_err(|_| StorageError::Unavailable("storage thread dropped a reply".into()))?;
        self.latency.record(started.elapsed());
        result
    }

    /// Sends without waiting for the reply (the caller keeps the receiver).
    pub fn send_blocking(&self, command: Command) -> StorageResult<()> {
        self.sender
            .send(command)
            .map_err(|_| StorageError::Unavailable("storage thread stopped".into()))
    }
}
