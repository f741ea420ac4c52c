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
use super::{
    migrations, ApprovalRow, Command, EventRow, FrameRow, Mutation, NodeRow, Pragmas, Reply,
    RunRow, RunState, StorageError, StorageHandle, StorageOptions, StorageResult, WriteOutcome,
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
    Pragmas(StorageResult<Pragmas>),
    Lines(StorageResult<Vec<String>>),
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
            Answer::Pragmas(result) => result.as_ref().err(),
            Answer::Lines(result) => result.as_ref().err(),
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
            Command::Pragmas { .. } => Answer::Pragmas(Err(error)),
            Command::IntegrityCheck { .. } => Answer::Lines(Err(error)),
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
        Command::Pragmas { .. } => Answer::Pragmas(queries::read_pragmas(conn)),
        Command::IntegrityCheck { .. } => Answer::Lines(queries::integrity_check(conn)),
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
        (Command::Pragmas { reply }, Answer::Pragmas(result)) => send(reply, result),
        (Command::IntegrityCheck { reply }, Answer::Lines(result)) => send(reply, result),
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
