//! The storage thread: opens the one rusqlite `Connection` (explicit PRAGMAs, read back;
//! migrations), then serves typed `Command`s from a bounded channel with group commit.
//!
//! It owns the connection, the transaction and savepoint discipline, and the reply rule: a reply
//! is sent only after the COMMIT that made it true (DESIGN.md "Storage": "Everything a client was
//! told succeeded is committed before the reply is sent"). It must never panic on a SQLite error
//! (the thread keeps serving), never acknowledge a write that did not commit, and never roll back
//! a committed write because its receiver went away.
//!
//! The loop (RELIABILITY.md §4.2, after sqlx's SQLite worker and TigerBeetle's batching rule):
//! block for the first command; drain up to `batch_commands_max` more without waiting, so a lone
//! write is never delayed; run them in one transaction, each `Write` under its own SAVEPOINT so a
//! failing write rolls back only itself; COMMIT; then reply to everything.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::queries::{self, map_error};
use super::records;
use super::{
    migrations, ApprovalRow, AttemptRow, Command, CronRow, DescendantRow, EventRow, FrameRow,
    Mutation, NodeRecords, NodeRow, Pragmas, Reply, RunRow, RunState, SchemaCatalog, StorageError,
    StorageHandle, StorageOptions, StorageResult, WriteOutcome,
};
use rusqlite::{Connection, OpenFlags};
use std::thread::JoinHandle;
use std::time::Duration;

/// `wal_autocheckpoint` in pages: SQLite's default (1000), stated explicitly (STYLE.md 12).
const WAL_AUTOCHECKPOINT_PAGES: i64 = 1_000;
/// `journal_size_limit`: after a checkpoint the WAL file is truncated to at most this, so one
/// burst does not leave a large file behind forever.
const JOURNAL_SIZE_LIMIT_BYTES: i64 = 64 * 1024 * 1024;
/// Prepared statements kept by `prepare_cached`; the store has about forty distinct statements.
const STATEMENT_CACHE_CAPACITY: usize = 128;

/// Opens the store at `options.path` (creating its directory), checks the PRAGMAs, migrates, and
/// starts the thread named `storage`. On error nothing is started. The thread ends when every
/// `StorageHandle` clone has been dropped.
pub fn open(options: StorageOptions) -> Result<(StorageHandle, JoinHandle<()>), StorageError> {
    open_with(options, OpenHooks::default())
}

/// Test seams. Production passes the default (read-write, no hook, no gate).
#[derive(Default)]
pub(crate) struct OpenHooks {
    /// Open with `SQLITE_OPEN_READ_ONLY` (fault tests; root ignores file modes).
    pub(crate) read_only: bool,
    /// Runs on the connection after migrations, before the thread starts (e.g. `max_page_count`).
    #[allow(clippy::type_complexity)]
    pub(crate) after_migrate: Option<Box<dyn FnOnce(&Connection) -> rusqlite::Result<()> + Send>>,
    /// The thread waits for this before serving, so a test can queue an exact batch.
    pub(crate) start_gate: Option<flume::Receiver<()>>,
}

pub(crate) fn open_with(
    options: StorageOptions,
    hooks: OpenHooks,
) -> Result<(StorageHandle, JoinHandle<()>), StorageError> {
    let mut conn = open_connection(&options, hooks.read_only)?;
    if let Some(hook) = hooks.after_migrate {
        hook(&conn).map_err(map_error)?;
    }
    // A zero capacity would make flume a rendezvous channel; the contract says "bounded queue".
    let (sender, receiver) = flume::bounded(options.queue_capacity.max(1));
    let batch_max = options.batch_commands_max.max(1);
    let gate = hooks.start_gate;
    let join = std::thread::Builder::new()
        .name("storage".into())
        .spawn(move || {
            if let Some(gate) = gate {
                // Either a release or a dropped sender starts the loop.
                let _ = gate.recv();
            }
            serve(&mut conn, &receiver, batch_max);
        })
        .map_err(|error| {
            StorageError::Unavailable(format!("cannot start storage thread: {error}"))
        })?;
    Ok((StorageHandle::new(sender), join))
}

/// Opens the connection, sets every PRAGMA we depend on explicitly, reads them back, migrates.
fn open_connection(options: &StorageOptions, read_only: bool) -> Result<Connection, StorageError> {
    if let Some(dir) = options.path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(|error| {
                StorageError::Unavailable(format!("cannot create {}: {error}", dir.display()))
            })?;
        }
    }
    // NO_MUTEX: the connection lives on one thread, so SQLite's per-connection mutex is waste.
    let mode = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
    };
    let flags = mode | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
    let mut conn = Connection::open_with_flags(&options.path, flags).map_err(map_error)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);

    // Set first so the PRAGMAs below wait for, rather than fail on, another process's lock.
    // With one in-process connection, SQLITE_BUSY comes only from other processes (an operator's
    // sqlite3 shell, a backup); RELIABILITY.md §4.1.
    conn.busy_timeout(Duration::from_millis(options.busy_timeout_ms))
        .map_err(map_error)?;

    // "The WAL journaling mode uses a write-ahead log instead of a rollback journal to implement
    // transactions. [...] WAL provides more concurrency as readers do not block writers" and the
    // mode is persistent (pragma.html#pragma_journal_mode). The statement returns the new mode,
    // which is the only proof it took effect.
    let journal_mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(map_error)?;
    if !journal_mode.eq_ignore_ascii_case("wal") {
        return Err(StorageError::Sqlite(format!(
            "PRAGMA journal_mode = WAL returned {journal_mode:?}"
        )));
    }

    // "With synchronous=FULL in WAL mode, an additional sync operation of the WAL file happens
    // after each transaction commit. The extra WAL sync following each transaction helps ensure
    // that transactions are durable across a power loss." NORMAL: "A transaction committed in WAL
    // mode with synchronous=NORMAL might roll back following a power loss or system crash"
    // (pragma.html#pragma_synchronous). FULL is the default; group commit pays its fsync once per
    // batch (RELIABILITY.md §4.1).
    let synchronous = if options.synchronous_full {
        "FULL"
    } else {
        "NORMAL"
    };
    conn.execute_batch(&format!("PRAGMA synchronous = {synchronous}"))
        .map_err(map_error)?;
    // "Foreign key constraints are disabled by default [...] so must be enabled separately for
    // each database connection" (foreignkeys.html); the CASCADE on run children depends on it.
    conn.execute_batch("PRAGMA foreign_keys = ON")
        .map_err(map_error)?;
    conn.execute_batch(&format!(
        "PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}; \
         PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT_BYTES}"
    ))
    .map_err(map_error)?;

    let version = migrations::migrate(&mut conn, now_ms())?;

    let pragmas = queries::read_pragmas(&conn)?;
    let expected = Pragmas {
        journal_mode: "wal".into(),
        synchronous: if options.synchronous_full { 2 } else { 1 },
        busy_timeout_ms: i64::try_from(options.busy_timeout_ms).unwrap_or(i64::MAX),
        foreign_keys: true,
        schema_version: version,
    };
    if pragmas != expected {
        return Err(StorageError::Sqlite(format!(
            "PRAGMAs read back as {pragmas:?}, expected {expected:?}"
        )));
    }
    tracing::info!(
        path = %options.path.display(),
        synchronous,
        schema_version = version,
        read_only,
        "storage opened"
    );
    Ok(conn)
}

fn now_ms() -> i64 {
    i64::try_from(crate::clock::now_ms()).unwrap_or(i64::MAX)
}

/// The command loop; returns when every sender is gone.
fn serve(conn: &mut Connection, receiver: &flume::Receiver<Command>, batch_max: usize) {
    let mut batch: Vec<Command> = Vec::with_capacity(batch_max.min(1_024));
    while let Ok(first) = receiver.recv() {
        batch.push(first);
        while batch.len() < batch_max {
            match receiver.try_recv() {
                Ok(command) => batch.push(command),
                Err(_) => break,
            }
        }
        run_batch(conn, &mut batch);
    }
    // "Applications with short-lived database connections should run PRAGMA optimize once, just
    // prior to closing each database connection" (pragma.html#pragma_optimize).
    if let Err(error) = conn.execute_batch("PRAGMA optimize") {
        tracing::debug!(%error, "PRAGMA optimize at close failed");
    }
    tracing::debug!("storage thread stopping: every handle dropped");
}

/// One command's result, held until the batch's fate is known.
enum Answer {
    Write(StorageResult<WriteOutcome>),
    Run(StorageResult<Option<RunRow>>),
    Runs(StorageResult<Vec<RunRow>>),
    States(StorageResult<Vec<RunState>>),
    State(StorageResult<RunState>),
    Nodes(StorageResult<Vec<NodeRow>>),
    Approvals(StorageResult<Vec<ApprovalRow>>),
    Approval(StorageResult<Option<ApprovalRow>>),
    Events(StorageResult<Vec<EventRow>>),
    Frame(StorageResult<Option<FrameRow>>),
    LatestFrame(StorageResult<Option<i64>>),
    FrameSource(StorageResult<Option<(FrameRow, Vec<AttemptRow>)>>),
    NodeRecords(StorageResult<NodeRecords>),
    Crons(StorageResult<Vec<CronRow>>),
    Cron(StorageResult<Option<CronRow>>),
    Pragmas(StorageResult<Pragmas>),
    Lines(StorageResult<Vec<String>>),
    Records(records::RecordsAnswer),
    // Run control (rewindRun).
    Count(StorageResult<i64>),
    // Read-side inspection.
    Descendants(StorageResult<Option<Vec<DescendantRow>>>),
    Frames(StorageResult<Option<Vec<FrameRow>>>),
    Attempts(StorageResult<Option<Vec<AttemptRow>>>),
    TypedEvents(StorageResult<Option<Vec<EventRow>>>),
    Catalog(StorageResult<SchemaCatalog>),
}

impl Answer {
    fn error(&self) -> Option<&StorageError> {
        match self {
            Answer::Write(result) => result.as_ref().err(),
            Answer::Run(result) => result.as_ref().err(),
            Answer::Runs(result) => result.as_ref().err(),
            Answer::States(result) => result.as_ref().err(),
            Answer::State(result) => result.as_ref().err(),
            Answer::Nodes(result) => result.as_ref().err(),
            Answer::Approvals(result) => result.as_ref().err(),
            Answer::Approval(result) => result.as_ref().err(),
            Answer::Events(result) => result.as_ref().err(),
            Answer::Frame(result) => result.as_ref().err(),
            Answer::LatestFrame(result) => result.as_ref().err(),
            Answer::FrameSource(result) => result.as_ref().err(),
            Answer::NodeRecords(result) => result.as_ref().err(),
            Answer::Crons(result) => result.as_ref().err(),
            Answer::Cron(result) => result.as_ref().err(),
            Answer::Pragmas(result) => result.as_ref().err(),
            Answer::Lines(result) => result.as_ref().err(),
            Answer::Records(answer) => answer.error(),
            Answer::Count(result) => result.as_ref().err(),
            // Read-side inspection.
            Answer::Descendants(result) => result.as_ref().err(),
            Answer::Frames(result) => result.as_ref().err(),
            Answer::Attempts(result) => result.as_ref().err(),
            Answer::TypedEvents(result) => result.as_ref().err(),
            Answer::Catalog(result) => result.as_ref().err(),
        }
    }

    /// The failure answer of the right kind for `command`.
    fn failed(command: &Command, error: StorageError) -> Answer {
        match command {
            Command::Write { .. } => Answer::Write(Err(error)),
            Command::GetRun { .. } | Command::FindRunByIdempotencyKey { .. } => {
                Answer::Run(Err(error))
            }
            Command::ListRuns { .. } => Answer::Runs(Err(error)),
            Command::LoadActiveRuns { .. } => Answer::States(Err(error)),
            Command::LoadRunState { .. } => Answer::State(Err(error)),
            Command::ListNodes { .. } => Answer::Nodes(Err(error)),
            Command::ListPendingApprovals { .. } => Answer::Approvals(Err(error)),
            Command::GetApproval { .. } => Answer::Approval(Err(error)),
            Command::ListEvents { .. } => Answer::Events(Err(error)),
            Command::GetFrame { .. } => Answer::Frame(Err(error)),
            Command::LatestFrame { .. } => Answer::LatestFrame(Err(error)),
            Command::GetFrameSource { .. } => Answer::FrameSource(Err(error)),
            Command::LoadNodeRecords { .. } => Answer::NodeRecords(Err(error)),
            Command::ListCrons { .. } => Answer::Crons(Err(error)),
            Command::GetCron { .. } => Answer::Cron(Err(error)),
            Command::Pragmas { .. } => Answer::Pragmas(Err(error)),
            Command::IntegrityCheck { .. } => Answer::Lines(Err(error)),
            Command::Records(query) => {
                Answer::Records(records::RecordsAnswer::failed(query, error))
            }
            Command::CountTimeTravelAudits { .. } => Answer::Count(Err(error)),
            // Read-side inspection.
            Command::ListRunDescendants { .. } => Answer::Descendants(Err(error)),
            Command::ListFrames { .. } => Answer::Frames(Err(error)),
            Command::ListAttempts { .. } => Answer::Attempts(Err(error)),
            Command::ListEventsOfType { .. } => Answer::TypedEvents(Err(error)),
            Command::SchemaCatalog { .. } => Answer::Catalog(Err(error)),
        }
    }
}

/// How one pass over the batch ended.
enum Attempt {
    Committed(Vec<Answer>),
    /// Command `index` failed and SQLite rolled back the whole transaction with it (SQLITE_FULL,
    /// SQLITE_IOERR, SQLITE_NOMEM and SQLITE_BUSY may do that: lang_transaction.html "Response To
    /// Errors Within A Transaction"); the batch is re-run without it.
    Aborted {
        index: usize,
        error: StorageError,
    },
    /// BEGIN failed (read-only database, busy): no write can apply.
    BeginFailed(StorageError),
    /// COMMIT failed and the transaction was rolled back: nothing of the batch is visible.
    CommitFailed(StorageError),
}

fn run_batch(conn: &Connection, batch: &mut Vec<Command>) {
    // Commands that aborted a previous pass, with the error they will get.
    let mut excluded: Vec<Option<StorageError>> = vec![None; batch.len()];
    // Each Aborted pass excludes one more command, so at most len + 1 passes.
    let mut answers = None;
    for _ in 0..=batch.len() {
        match attempt(conn, batch, &excluded) {
            Attempt::Committed(committed) => {
                answers = Some(committed);
                break;
            }
            Attempt::Aborted { index, error } => {
                tracing::warn!(%error, index, "a command aborted the batch transaction; re-running without it");
                match excluded.get_mut(index) {
                    Some(slot @ None) => *slot = Some(error),
                    // Cannot happen (an excluded command is not re-run); stop retrying.
                    _ => {
                        answers = Some(without_transaction(conn, batch, &excluded, &error));
                        break;
                    }
                }
            }
            Attempt::BeginFailed(error) | Attempt::CommitFailed(error) => {
                tracing::warn!(%error, commands = batch.len(), "batch not committed");
                answers = Some(without_transaction(conn, batch, &excluded, &error));
                break;
            }
        }
    }
    let answers = answers.unwrap_or_else(|| {
        let error = StorageError::Sqlite("batch retried too often".into());
        without_transaction(conn, batch, &excluded, &error)
    });
    for (command, answer) in batch.drain(..).zip(answers) {
        deliver(command, answer);
    }
}

fn is_write(command: &Command) -> bool {
    matches!(command, Command::Write { .. })
}

/// One pass: BEGIN, every command (writes under savepoints), COMMIT.
fn attempt(conn: &Connection, batch: &[Command], excluded: &[Option<StorageError>]) -> Attempt {
    let any_write = batch
        .iter()
        .zip(excluded)
        .any(|(command, excluded)| is_write(command) && excluded.is_none());
    // IMMEDIATE takes the write lock up front, so a busy database fails (after busy_timeout)
    // here and not halfway through the batch; reads alone use DEFERRED (one snapshot, no lock).
    let begin = if any_write {
        "BEGIN IMMEDIATE"
    } else {
        "BEGIN DEFERRED"
    };
    if let Err(error) = exec(conn, begin) {
        rollback_if_open(conn);
        return Attempt::BeginFailed(error);
    }
    let mut answers = Vec::with_capacity(batch.len());
    for (index, (command, excluded)) in batch.iter().zip(excluded).enumerate() {
        let answer = match excluded {
            Some(error) => Answer::failed(command, error.clone()),
            None => {
                let answer = execute(conn, command);
                if conn.is_autocommit() {
                    // The command's failure ended the transaction; earlier answers are void.
                    let error = answer.error().cloned().unwrap_or_else(|| {
                        StorageError::Sqlite("transaction ended unexpectedly".into())
                    });
                    return Attempt::Aborted { index, error };
                }
                answer
            }
        };
        answers.push(answer);
    }
    match exec(conn, "COMMIT") {
        Ok(()) => Attempt::Committed(answers),
        Err(error) => {
            rollback_if_open(conn);
            Attempt::CommitFailed(error)
        }
    }
}

/// After a failed BEGIN or COMMIT: writes get the error (or their own), reads are answered from
/// committed state in autocommit mode, so no reply reflects uncommitted data.
fn without_transaction(
    conn: &Connection,
    batch: &[Command],
    excluded: &[Option<StorageError>],
    error: &StorageError,
) -> Vec<Answer> {
    rollback_if_open(conn);
    batch
        .iter()
        .zip(excluded)
        .map(|(command, excluded)| match (excluded, command) {
            (Some(own), _) => Answer::failed(command, own.clone()),
            (None, Command::Write { .. }) => Answer::failed(command, error.clone()),
            (None, _) => execute(conn, command),
        })
        .collect()
}

fn rollback_if_open(conn: &Connection) {
    if !conn.is_autocommit() {
        if let Err(error) = exec(conn, "ROLLBACK") {
            tracing::error!(%error, "ROLLBACK failed");
        }
    }
}

/// Runs one statement without parameters through the statement cache.
fn exec(conn: &Connection, sql: &str) -> StorageResult<()> {
    let mut statement = conn.prepare_cached(sql).map_err(map_error)?;
    statement.execute([]).map_err(map_error)?;
    Ok(())
}

/// Applies one `Write` under its own savepoint: all of its mutations or none.
fn write(conn: &Connection, mutations: &[Mutation]) -> StorageResult<WriteOutcome> {
    exec(conn, "SAVEPOINT write")?;
    let mut outcome = WriteOutcome::default();
    let applied = mutations
        .iter()
        .try_for_each(|mutation| queries::apply(conn, mutation, &mut outcome))
        .and_then(|()| exec(conn, "RELEASE write"));
    match applied {
        Ok(()) => Ok(outcome),
        Err(error) => {
            if !conn.is_autocommit() {
                let undone =
                    exec(conn, "ROLLBACK TO write").and_then(|()| exec(conn, "RELEASE write"));
                if let Err(undo) = undone {
                    // The write's effects cannot be isolated: give up the whole transaction, and
                    // the batch is re-run without this write.
                    tracing::error!(%undo, "ROLLBACK TO savepoint failed; aborting the batch");
                    rollback_if_open(conn);
                }
            }
            Err(error)
        }
    }
}

fn execute(conn: &Connection, command: &Command) -> Answer {
    match command {
        Command::Write { mutations, .. } => Answer::Write(write(conn, mutations)),
        Command::GetRun { run_id, .. } => Answer::Run(queries::get_run(conn, run_id)),
        Command::ListRuns { filter, .. } => Answer::Runs(queries::list_runs(conn, filter)),
        Command::FindRunByIdempotencyKey { key, .. } => {
            Answer::Run(queries::find_run_by_idempotency_key(conn, key))
        }
        Command::LoadActiveRuns { .. } => Answer::States(queries::load_active_runs(conn)),
        Command::LoadRunState { run_id, .. } => {
            Answer::State(queries::load_run_state(conn, run_id))
        }
        Command::ListNodes { run_id, .. } => Answer::Nodes(queries::list_nodes(conn, run_id)),
        Command::ListPendingApprovals { run_id, .. } => {
            Answer::Approvals(queries::list_pending_approvals(conn, run_id.as_deref()))
        }
        Command::GetApproval {
            run_id,
            node_id,
            iteration,
            ..
        } => Answer::Approval(queries::get_approval(conn, run_id, node_id, *iteration)),
        Command::ListEvents {
            run_id,
            after_seq,
            limit,
            ..
        } => Answer::Events(queries::list_events(conn, run_id, *after_seq, *limit)),
        Command::GetFrame {
            run_id, frame_no, ..
        } => Answer::Frame(queries::get_frame(conn, run_id, *frame_no)),
        Command::LatestFrame { run_id, .. } => {
            Answer::LatestFrame(queries::latest_frame(conn, run_id))
        }
        Command::GetFrameSource {
            run_id, frame_no, ..
        } => Answer::FrameSource(queries::get_frame_source(conn, run_id, *frame_no)),
        Command::LoadNodeRecords {
            run_id, node_id, ..
        } => Answer::NodeRecords(queries::load_node_records(conn, run_id, node_id)),
        Command::ListCrons { .. } => Answer::Crons(queries::list_crons(conn)),
        Command::GetCron { cron_id, .. } => Answer::Cron(queries::get_cron(conn, cron_id)),
        Command::Pragmas { .. } => Answer::Pragmas(queries::read_pragmas(conn)),
        Command::IntegrityCheck { .. } => Answer::Lines(queries::integrity_check(conn)),
        Command::Records(query) => Answer::Records(records::execute(conn, query)),
        Command::CountTimeTravelAudits {
            run_id,
            caller,
            since_ms,
            ..
        } => Answer::Count(queries::count_time_travel_audits(
            conn, run_id, caller, *since_ms,
        )),
        // Read-side inspection.
        Command::ListRunDescendants { run_id, limit, .. } => {
            Answer::Descendants(queries::list_run_descendants(conn, run_id, *limit))
        }
        Command::ListFrames {
            run_id,
            limit,
            after_frame_no,
            ..
        } => Answer::Frames(queries::list_frames(conn, run_id, *limit, *after_frame_no)),
        Command::ListAttempts {
            run_id,
            node,
            limit,
            ..
        } => Answer::Attempts(queries::list_attempts_of(
            conn,
            run_id,
            node.as_ref()
                .map(|(id, iteration)| (id.as_str(), *iteration)),
            *limit,
        )),
        Command::ListEventsOfType {
            run_id,
            event_type,
            limit,
            ..
        } => Answer::TypedEvents(queries::list_events_of_type(
            conn, run_id, event_type, *limit,
        )),
        Command::SchemaCatalog { .. } => Answer::Catalog(queries::schema_catalog(conn)),
    }
}

/// Sends `result`; a receiver that went away is logged, and the committed work stays.
fn send<T>(reply: Reply<T>, result: StorageResult<T>) {
    if reply.send(result).is_err() {
        tracing::debug!("storage reply receiver dropped; the committed result stands");
    }
}

fn deliver(command: Command, answer: Answer) {
    match (command, answer) {
        (Command::Write { reply, .. }, Answer::Write(result)) => send(reply, result),
        (Command::GetRun { reply, .. }, Answer::Run(result)) => send(reply, result),
        (Command::FindRunByIdempotencyKey { reply, .. }, Answer::Run(result)) => {
            send(reply, result)
        }
        (Command::ListRuns { reply, .. }, Answer::Runs(result)) => send(reply, result),
        (Command::LoadActiveRuns { reply }, Answer::States(result)) => send(reply, result),
        (Command::LoadRunState { reply, .. }, Answer::State(result)) => send(reply, result),
        (Command::ListNodes { reply, .. }, Answer::Nodes(result)) => send(reply, result),
        (Command::ListPendingApprovals { reply, .. }, Answer::Approvals(result)) => {
            send(reply, result)
        }
        (Command::GetApproval { reply, .. }, Answer::Approval(result)) => send(reply, result),
        (Command::ListEvents { reply, .. }, Answer::Events(result)) => send(reply, result),
        (Command::GetFrame { reply, .. }, Answer::Frame(result)) => send(reply, result),
        (Command::LatestFrame { reply, .. }, Answer::LatestFrame(result)) => send(reply, result),
        (Command::GetFrameSource { reply, .. }, Answer::FrameSource(result)) => send(reply, result),
        (Command::LoadNodeRecords { reply, .. }, Answer::NodeRecords(result)) => {
            send(reply, result)
        }
        (Command::ListCrons { reply }, Answer::Crons(result)) => send(reply, result),
        (Command::GetCron { reply, .. }, Answer::Cron(result)) => send(reply, result),
        (Command::Pragmas { reply }, Answer::Pragmas(result)) => send(reply, result),
        (Command::IntegrityCheck { reply }, Answer::Lines(result)) => send(reply, result),
        (Command::Records(query), Answer::Records(answer)) => records::deliver(query, answer),
        (Command::CountTimeTravelAudits { reply, .. }, Answer::Count(result)) => {
            send(reply, result)
        }
        // Read-side inspection.
        (Command::ListRunDescendants { reply, .. }, Answer::Descendants(result)) => {
            send(reply, result)
        }
        (Command::ListFrames { reply, .. }, Answer::Frames(result)) => send(reply, result),
        (Command::ListAttempts { reply, .. }, Answer::Attempts(result)) => send(reply, result),
        (Command::ListEventsOfType { reply, .. }, Answer::TypedEvents(result)) => {
            send(reply, result)
        }
        (Command::SchemaCatalog { reply }, Answer::Catalog(result)) => send(reply, result),
        (command, _) => {
            // Unreachable by construction (`execute` and `Answer::failed` pick the kind from the
            // command); answered rather than dropped so no caller waits forever.
            tracing::error!("storage answer kind mismatch");
            let error = StorageError::Sqlite("internal: answer kind mismatch".into());
            let answer = Answer::failed(&command, error);
            deliver(command, answer);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
pub(crate) mod tests {
    use super::*;
    use crate::storage::{RunFilter, SignalRow};
    use std::io::{BufRead, BufReader, Write as _};
    use std::path::PathBuf;
    use std::time::Instant;

    /// A fresh directory under the system temp dir, removed on drop.
    pub(crate) struct TempDir(pub(crate) PathBuf);

    impl TempDir {
        pub(crate) fn new() -> TempDir {
            let dir =
                std::env::temp_dir().join(format!("smithers-storage-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        pub(crate) fn db(&self) -> PathBuf {
            self.0.join("nested").join("smithers.db")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    pub(crate) fn run_row(run_id: &str, created_at_ms: i64) -> RunRow {
        RunRow {
            run_id: run_id.into(),
            parent_run_id: None,
            workflow_name: "wf".into(),
            workflow_path: Some("/wf.tsx".into()),
            workflow_hash: Some("h".into()),
            status: "running".into(),
            created_at_ms,
            started_at_ms: Some(created_at_ms),
            finished_at_ms: None,
            heartbeat_at_ms: None,
            runtime_owner_id: Some("pid:1".into()),
            cancel_requested_at_ms: None,
            pause_requested_at_ms: None,
            error_json: None,
            config_json: Some("{}".into()),
            input_json: "{}".into(),
            idempotency_key: None,
        }
    }

    fn event(run_id: &str, n: i64) -> Mutation {
        Mutation::AppendEvent {
            run_id: run_id.into(),
            timestamp_ms: n,
            event_type: "NodeStarted".into(),
            payload_json: format!("{{\"n\":{n}}}"),
        }
    }

    fn write(handle: &StorageHandle, mutations: Vec<Mutation>) -> StorageResult<WriteOutcome> {
        handle.call_blocking(|reply| Command::Write { mutations, reply })
    }

    fn get_run(handle: &StorageHandle, run_id: &str) -> Option<RunRow> {
        let run_id = run_id.to_string();
        handle
            .call_blocking(|reply| Command::GetRun { run_id, reply })
            .unwrap()
    }

    fn events(handle: &StorageHandle, run_id: &str) -> Vec<EventRow> {
        let run_id = run_id.to_string();
        handle
            .call_blocking(|reply| Command::ListEvents {
                run_id,
                after_seq: -1,
                limit: 1_000_000,
                reply,
            })
            .unwrap()
    }

    fn integrity(handle: &StorageHandle) -> Vec<String> {
        handle
            .call_blocking(|reply| Command::IntegrityCheck { reply })
            .unwrap()
    }

    fn stop(handle: StorageHandle, join: JoinHandle<()>) {
        drop(handle);
        join.join().unwrap();
    }

    #[test]
    fn pragmas_read_back_full_and_normal() {
        for (full, expected) in [(true, 2), (false, 1)] {
            let dir = TempDir::new();
            let mut options = StorageOptions::new(dir.db());
            options.synchronous_full = full;
            options.busy_timeout_ms = 1_234;
            let (handle, join) = open(options).unwrap();
            let pragmas = handle
                .call_blocking(|reply| Command::Pragmas { reply })
                .unwrap();
            assert_eq!(
                pragmas,
                Pragmas {
                    journal_mode: "wal".into(),
                    synchronous: expected,
                    busy_timeout_ms: 1_234,
                    foreign_keys: true,
                    schema_version: migrations::latest_version(),
                }
            );
            stop(handle, join);
        }
    }

    #[test]
    fn reopen_is_a_noop_and_keeps_data() {
        let dir = TempDir::new();
        let (handle, join) = open(StorageOptions::new(dir.db())).unwrap();
        write(
            &handle,
            vec![Mutation::InsertRun(run_row("r1", 1)), event("r1", 1)],
        )
        .unwrap();
        stop(handle, join);

        let (handle, join) = open(StorageOptions::new(dir.db())).unwrap();
        let pragmas = handle
            .call_blocking(|reply| Command::Pragmas { reply })
            .unwrap();
        assert_eq!(pragmas.schema_version, migrations::latest_version());
        assert_eq!(get_run(&handle, "r1"), Some(run_row("r1", 1)));
        assert_eq!(events(&handle, "r1").len(), 1);
        stop(handle, join);

        let conn = Connection::open(dir.db()).unwrap();
        let ids: Vec<i64> = conn
            .prepare("SELECT id FROM _smithers_schema_migrations ORDER BY id")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let expected: Vec<i64> = migrations::MIGRATIONS
            .iter()
            .map(|(id, _, _)| *id)
            .collect();
        assert_eq!(ids, expected, "one ledger row per migration");
    }

    #[test]
    fn tampered_checksum_refuses_to_open() {
        let dir = TempDir::new();
        let (handle, join) = open(StorageOptions::new(dir.db())).unwrap();
        stop(handle, join);
        {
            let conn = Connection::open(dir.db()).unwrap();
            conn.execute(
                "UPDATE _smithers_schema_migrations SET checksum = 'deadbeef' WHERE id = 1",
                [],
            )
            .unwrap();
        }
        let error = open(StorageOptions::new(dir.db())).unwrap_err();
        assert!(
            matches!(&error, StorageError::Sqlite(message) if message.contains("checksum")),
            "{error}"
        );
    }

    #[test]
    fn thread_is_named_storage_and_stops_when_handles_drop() {
        let dir = TempDir::new();
        let (handle, join) = open(StorageOptions::new(dir.db())).unwrap();
        assert_eq!(join.thread().name(), Some("storage"));
        let clone = handle.clone();
        drop(handle);
        assert_eq!(integrity(&clone), vec!["ok".to_string()]);
        stop(clone, join);
    }

    #[test]
    fn concurrent_senders_all_get_replies() {
        let dir = TempDir::new();
        let (handle, join) = open(StorageOptions::new(dir.db())).unwrap();
        const THREADS: usize = 8;
        const WRITES: usize = 40;
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let handle = handle.clone();
                std::thread::spawn(move || {
                    let run_id = format!("t{t}");
                    write(
                        &handle,
                        vec![Mutation::InsertRun(run_row(&run_id, t as i64))],
                    )
                    .unwrap();
                    let mut seqs = Vec::new();
                    for n in 0..WRITES {
                        let outcome = write(&handle, vec![event(&run_id, n as i64)]).unwrap();
                        seqs.extend(outcome.event_seqs);
                    }
                    seqs
                })
            })
            .collect();
        for (t, worker) in workers.into_iter().enumerate() {
            let seqs = worker.join().unwrap();
            assert_eq!(seqs, (0..WRITES as i64).collect::<Vec<_>>());
            let stored: Vec<i64> = events(&handle, &format!("t{t}"))
                .iter()
                .map(|e| e.seq)
                .collect();
            assert_eq!(stored, seqs);
        }
        stop(handle, join);
    }

    /// Opens with the start gate closed, queues `commands`, then releases: the thread drains
    /// them all into one batch (one transaction).
    fn run_one_batch(
        hooks: OpenHooks,
        path: PathBuf,
        commands: Vec<Command>,
    ) -> (StorageHandle, JoinHandle<()>) {
        let (gate_tx, gate_rx) = flume::bounded(1);
        let hooks = OpenHooks {
            start_gate: Some(gate_rx),
            ..hooks
        };
        let (handle, join) = open_with(StorageOptions::new(path), hooks).unwrap();
        for command in commands {
            handle.send_blocking(command).unwrap();
        }
        gate_tx.send(()).unwrap();
        (handle, join)
    }

    fn write_command(
        mutations: Vec<Mutation>,
    ) -> (Command, flume::Receiver<StorageResult<WriteOutcome>>) {
        let (reply, receiver) = flume::bounded(1);
        (Command::Write { mutations, reply }, receiver)
    }

    #[test]
    fn failing_write_in_a_batch_fails_alone() {
        let dir = TempDir::new();
        let (first, first_rx) =
            write_command(vec![Mutation::InsertRun(run_row("a", 1)), event("a", 1)]);
        // Same id as `first`, and its event must not land either.
        let (duplicate, duplicate_rx) =
            write_command(vec![event("a", 2), Mutation::InsertRun(run_row("a", 2))]);
        let (third, third_rx) =
            write_command(vec![Mutation::InsertRun(run_row("b", 3)), event("a", 3)]);
        let (read_reply, read_rx) = flume::bounded(1);
        let read = Command::GetRun {
            run_id: "b".into(),
            reply: read_reply,
        };
        // A reply nobody waits for must not disturb the batch.
        let (dropped, dropped_rx) = write_command(vec![Mutation::InsertRun(run_row("c", 4))]);
        drop(dropped_rx);
        let (handle, join) = run_one_batch(
            OpenHooks::default(),
            dir.db(),
            vec![first, duplicate, third, read, dropped],
        );
        assert_eq!(first_rx.recv().unwrap().unwrap().event_seqs, vec![0]);
        let error = duplicate_rx.recv().unwrap().unwrap_err();
        assert!(
            matches!(&error, StorageError::Conflict(m) if m.contains("run a")),
            "{error}"
        );
        assert_eq!(third_rx.recv().unwrap().unwrap().event_seqs, vec![1]);
        assert_eq!(read_rx.recv().unwrap().unwrap(), Some(run_row("b", 3)));
        let seqs: Vec<(i64, i64)> = events(&handle, "a")
            .iter()
            .map(|e| (e.seq, e.timestamp_ms))
            .collect();
        assert_eq!(seqs, vec![(0, 1), (1, 3)]);
        assert_eq!(get_run(&handle, "a"), Some(run_row("a", 1)));
        assert!(
            get_run(&handle, "c").is_some(),
            "committed although nobody read the reply"
        );
        stop(handle, join);
    }

    fn big_run(run_id: &str) -> RunRow {
        RunRow {
            input_json: format!("\"{}\"", "x".repeat(256 * 1024)),
            ..run_row(run_id, 9)
        }
    }

    #[test]
    fn full_database_rejects_only_the_write_that_does_not_fit() {
        let dir = TempDir::new();
        let hooks = OpenHooks {
            after_migrate: Some(Box::new(|conn: &Connection| {
                let pages: i64 = conn.query_row("PRAGMA page_count", [], |row| row.get(0))?;
                conn.query_row(
                    &format!("PRAGMA max_page_count = {}", pages + 16),
                    [],
                    |_| Ok(()),
                )
            })),
            ..OpenHooks::default()
        };
        let (small, small_rx) = write_command(vec![
            Mutation::InsertRun(run_row("small", 1)),
            event("small", 1),
        ]);
        let (big, big_rx) =
            write_command(vec![Mutation::InsertRun(big_run("big")), event("big", 1)]);
        let (after, after_rx) = write_command(vec![event("small", 2)]);
        let (handle, join) = run_one_batch(hooks, dir.db(), vec![small, big, after]);
        assert_eq!(small_rx.recv().unwrap().unwrap().event_seqs, vec![0]);
        let error = big_rx.recv().unwrap().unwrap_err();
        assert!(matches!(error, StorageError::Rejected(_)), "{error}");
        assert_eq!(after_rx.recv().unwrap().unwrap().event_seqs, vec![1]);
        // Nothing of the rejected write is visible; the thread still serves reads and writes.
        assert_eq!(get_run(&handle, "big"), None);
        assert!(events(&handle, "big").is_empty());
        let error = write(&handle, vec![Mutation::InsertRun(big_run("big2"))]).unwrap_err();
        assert!(matches!(error, StorageError::Rejected(_)), "{error}");
        assert_eq!(events(&handle, "small").len(), 2);
        assert_eq!(integrity(&handle), vec!["ok".to_string()]);
        stop(handle, join);
    }

    fn check_rejected_but_readable(handle: &StorageHandle) {
        let error = write(
            handle,
            vec![Mutation::InsertRun(run_row("new", 2)), event("new", 1)],
        )
        .unwrap_err();
        assert!(matches!(error, StorageError::Rejected(_)), "{error}");
        let error = write(handle, vec![event("old", 2)]).unwrap_err();
        assert!(matches!(error, StorageError::Rejected(_)), "{error}");
        assert_eq!(get_run(handle, "old"), Some(run_row("old", 1)));
        assert_eq!(get_run(handle, "new"), None);
        assert_eq!(events(handle, "old").len(), 1);
        assert_eq!(integrity(handle), vec!["ok".to_string()]);
    }

    fn seed_old_run(dir: &TempDir) {
        let (handle, join) = open(StorageOptions::new(dir.db())).unwrap();
        write(
            &handle,
            vec![Mutation::InsertRun(run_row("old", 1)), event("old", 1)],
        )
        .unwrap();
        stop(handle, join);
    }

    #[test]
    fn read_only_open_rejects_writes_and_keeps_serving_reads() {
        let dir = TempDir::new();
        seed_old_run(&dir);
        let hooks = OpenHooks {
            read_only: true,
            ..OpenHooks::default()
        };
        let (handle, join) = open_with(StorageOptions::new(dir.db()), hooks).unwrap();
        check_rejected_but_readable(&handle);
        stop(handle, join);
    }

    #[test]
    fn query_only_connection_rejects_writes_and_keeps_serving_reads() {
        let dir = TempDir::new();
        seed_old_run(&dir);
        let hooks = OpenHooks {
            after_migrate: Some(Box::new(|conn: &Connection| {
                conn.execute_batch("PRAGMA query_only = ON")
            })),
            ..OpenHooks::default()
        };
        let (handle, join) = open_with(StorageOptions::new(dir.db()), hooks).unwrap();
        check_rejected_but_readable(&handle);
        stop(handle, join);
    }

    #[test]
    fn round_trip_through_the_thread() {
        let dir = TempDir::new();
        let (handle, join) = open(StorageOptions::new(dir.db())).unwrap();
        let keyed = RunRow {
            idempotency_key: Some("k1".into()),
            ..run_row("first", 1)
        };
        write(&handle, vec![Mutation::InsertRun(keyed.clone())]).unwrap();
        let error = write(
            &handle,
            vec![Mutation::InsertRun(RunRow {
                idempotency_key: Some("k1".into()),
                ..run_row("second", 2)
            })],
        )
        .unwrap_err();
        assert!(
            matches!(&error, StorageError::Conflict(m) if m.contains("first")),
            "{error}"
        );
        let found = handle
            .call_blocking(|reply| Command::FindRunByIdempotencyKey {
                key: "k1".into(),
                reply,
            })
            .unwrap();
        assert_eq!(found, Some(keyed));

        let signal = SignalRow {
            run_id: "first".into(),
            seq: 99,
            signal_name: "go".into(),
            correlation_id: None,
            payload_json: "{}".into(),
            received_at_ms: 5,
            received_by: Some("u".into()),
            consumed_by_node: None,
            consumed_by_iteration: None,
        };
        let outcome = write(
            &handle,
            vec![
                Mutation::InsertSignal(signal.clone()),
                Mutation::InsertSignal(SignalRow {
                    received_at_ms: 6,
                    ..signal.clone()
                }),
                Mutation::InsertSignal(signal.clone()),
                event("first", 1),
                event("first", 2),
            ],
        )
        .unwrap();
        assert_eq!(outcome.signal_seqs, vec![0, 1, 0]);
        assert_eq!(outcome.event_seqs, vec![0, 1]);
        let state = handle
            .call_blocking(|reply| Command::LoadRunState {
                run_id: "first".into(),
                reply,
            })
            .unwrap();
        assert_eq!(state.signals.len(), 2);
        assert_eq!(state.last_event_seq, 1);
        assert_eq!(state.last_frame_no, 0);
        let active = handle
            .call_blocking(|reply| Command::LoadActiveRuns { reply })
            .unwrap();
        assert_eq!(active, vec![state]);
        let runs = handle
            .call_blocking(|reply| Command::ListRuns {
                filter: RunFilter {
                    limit: 10,
                    ..RunFilter::default()
                },
                reply,
            })
            .unwrap();
        assert_eq!(runs.len(), 1);
        stop(handle, join);
    }

    // -----------------------------------------------------------------------------------------
    // Crash safety: a child process writes and prints every acknowledged write; the parent kills
    // it with SIGKILL at a seeded random moment and checks what a reopen finds.
    // -----------------------------------------------------------------------------------------

    const CRASH_DB_ENV: &str = "SMITHERS_STORAGE_CRASH_DB";
    const CRASH_ROUND_ENV: &str = "SMITHERS_STORAGE_CRASH_ROUND";
    const CRASH_ROUNDS: u64 = 20;
    const WRITER_THREADS: usize = 4;

    /// The child's writer loop; a no-op unless the crash test started this process.
    #[test]
    fn crash_child_writer() {
        let Ok(path) = std::env::var(CRASH_DB_ENV) else {
            return;
        };
        let round = std::env::var(CRASH_ROUND_ENV).unwrap_or_default();
        let mut options = StorageOptions::new(PathBuf::from(path));
        options.batch_commands_max = 64;
        let (handle, _join) = open(options).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let writers: Vec<_> = (0..WRITER_THREADS)
            .map(|t| {
                let handle = handle.clone();
                let round = round.clone();
                std::thread::spawn(move || {
                    let mut mine: Vec<String> = Vec::new();
                    for k in 0..1_000_000u64 {
                        if Instant::now() > deadline {
                            break;
                        }
                        // A new run with three events in one Write, then two more events on an
                        // earlier run in another: every Write adds an odd or even number of
                        // events, so a torn Write would show in the count.
                        let run_id = format!("c{round}-t{t}-{k}");
                        let outcome = write(
                            &handle,
                            vec![
                                Mutation::InsertRun(run_row(&run_id, k as i64)),
                                event(&run_id, 0),
                                event(&run_id, 1),
                                event(&run_id, 2),
                            ],
                        )
                        .unwrap();
                        report(&run_id, &outcome);
                        mine.push(run_id);
                        if let Some(earlier) = mine.get(k as usize / 2) {
                            let outcome =
                                write(&handle, vec![event(earlier, 3), event(earlier, 4)]).unwrap();
                            report(earlier, &outcome);
                        }
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
    }

    fn report(run_id: &str, outcome: &WriteOutcome) {
        let last = outcome.event_seqs.last().copied().unwrap_or(-1);
        let mut stdout = std::io::stdout().lock();
        // "end" marks a complete line: a kill can cut the last one short.
        writeln!(stdout, "ack {run_id} {last} end").unwrap();
        stdout.flush().unwrap();
    }

    #[test]
    fn crash_safety_under_sigkill() {
        use rand::{Rng, SeedableRng};
        let started = Instant::now();
        let dir = TempDir::new();
        let exe = std::env::current_exe().unwrap();
        let mut acknowledged: std::collections::BTreeMap<String, i64> = Default::default();
        for round in 0..CRASH_ROUNDS {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "crash test over budget"
            );
            let mut rng = rand::rngs::StdRng::seed_from_u64(0x5EED_0000 + round);
            let mut child = std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "storage::thread::tests::crash_child_writer",
                    "--nocapture",
                    "--test-threads",
                    "1",
                ])
                .env(CRASH_DB_ENV, dir.db())
                .env(CRASH_ROUND_ENV, round.to_string())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let stdout = child.stdout.take().unwrap();
            let (line_tx, line_rx) = flume::unbounded::<String>();
            let reader = std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if line_tx.send(line).is_err() {
                        break;
                    }
                }
            });
            let mut lines = Vec::new();
            // Wait for the first acknowledgement, so every round kills a writer mid-stream.
            let first_deadline = Instant::now() + Duration::from_secs(20);
            while lines.iter().all(|line: &String| !line.starts_with("ack ")) {
                let left = first_deadline.saturating_duration_since(Instant::now());
                match line_rx.recv_timeout(left) {
                    Ok(line) => lines.push(line),
                    Err(_) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        panic!("round {round}: the child never acknowledged a write");
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(rng.gen_range(1..150)));
            child.kill().unwrap(); // SIGKILL on Unix
            child.wait().unwrap();
            reader.join().unwrap();
            lines.extend(line_rx.try_iter());
            for line in &lines {
                let fields: Vec<&str> = line.split(' ').collect();
                if let ["ack", run_id, seq, "end"] = fields.as_slice() {
                    let seq: i64 = seq.parse().unwrap();
                    let entry = acknowledged.entry(run_id.to_string()).or_insert(seq);
                    *entry = (*entry).max(seq);
                }
            }

            let (handle, join) = open(StorageOptions::new(dir.db())).unwrap();
            assert_eq!(integrity(&handle), vec!["ok".to_string()], "round {round}");
            for (run_id, seq) in &acknowledged {
                assert!(
                    get_run(&handle, run_id).is_some(),
                    "round {round}: acked run {run_id} lost"
                );
                let last = events(&handle, run_id).last().map_or(-1, |e| e.seq);
                assert!(
                    last >= *seq,
                    "round {round}: {run_id} acked seq {seq}, found {last}"
                );
            }
            let runs = handle
                .call_blocking(|reply| Command::ListRuns {
                    filter: RunFilter {
                        limit: usize::MAX,
                        ..RunFilter::default()
                    },
                    reply,
                })
                .unwrap();
            for run in runs {
                let seqs: Vec<i64> = events(&handle, &run.run_id).iter().map(|e| e.seq).collect();
                assert_eq!(
                    seqs,
                    (0..seqs.len() as i64).collect::<Vec<_>>(),
                    "gap in {}",
                    run.run_id
                );
                // 3 events at insert, then 2 per later Write: anything else is a torn Write.
                assert!(
                    seqs.len() >= 3 && (seqs.len() - 3).is_multiple_of(2),
                    "torn write in {}",
                    run.run_id
                );
            }
            stop(handle, join);
        }
        eprintln!(
            "crash test: {CRASH_ROUNDS} rounds, {} acknowledged runs, {:?}",
            acknowledged.len(),
            started.elapsed()
        );
        assert!(
            acknowledged.len() > CRASH_ROUNDS as usize,
            "too few acknowledgements to mean much"
        );
    }
}
