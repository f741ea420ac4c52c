//! Typed reads and writes over the storage thread's one connection: one function per `Mutation`
//! and per read `Command`, each a cached prepared statement, plus the SQLite → `StorageError`
//! mapping.
//!
//! It owns SQL text and row mapping. It must never open, begin, commit or roll back anything
//! (transactions and savepoints belong to `storage::thread`, which calls these inside them), never
//! panic on a SQLite error, and never build SQL from values (everything is bound).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::{
    ApprovalRow, AttemptRow, CatalogEntry, CronRow, DescendantRow, EventRow, FrameRow, Mutation,
    NodeRecords, NodeRow, OutputRow, Pragmas, RunFilter, RunRow, RunState, SchemaCatalog,
    SignalRow, StorageError, StorageResult, TimeTravelAuditRow, WriteOutcome,
};
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, Row};

/// Maps a rusqlite error to the contract's error kinds.
///
/// SQLITE_FULL ("database or disk is full") and SQLITE_READONLY (read-only file, read-only open,
/// `PRAGMA query_only`) are `Rejected`: the operator must act, and nothing of the command was
/// applied. Constraint violations (UNIQUE, PRIMARY KEY, CHECK, FOREIGN KEY, NOT NULL) are
/// `Conflict`. Everything else is `Sqlite`.
pub fn map_error(error: rusqlite::Error) -> StorageError {
    match error.sqlite_error_code() {
        Some(ErrorCode::DiskFull) | Some(ErrorCode::ReadOnly) => {
            StorageError::Rejected(error.to_string())
        }
        Some(ErrorCode::ConstraintViolation) => StorageError::Conflict(error.to_string()),
        _ => StorageError::Sqlite(error.to_string()),
    }
}

// ---------------------------------------------------------------------------------------------
// Writes
// ---------------------------------------------------------------------------------------------

/// Applies one mutation, appending any assigned seq to `outcome`.
pub fn apply(
    conn: &Connection,
    mutation: &Mutation,
    outcome: &mut WriteOutcome,
) -> StorageResult<()> {
    match mutation {
        Mutation::InsertRun(run) => insert_run(conn, run),
        Mutation::PutRun(run) => put_run(conn, run),
        Mutation::PutNode(node) => put_node(conn, node),
        Mutation::PutAttempt(attempt) => put_attempt(conn, attempt),
        Mutation::InsertFrame(frame) => insert_frame(conn, frame),
        Mutation::PutOutput(output) => put_output(conn, output),
        Mutation::PutApproval(approval) => put_approval(conn, approval),
        Mutation::InsertSignal(signal) => {
            outcome.signal_seqs.push(insert_signal(conn, signal)?);
            Ok(())
        }
        Mutation::ConsumeSignal {
            run_id,
            seq,
            node_id,
            iteration,
        } => consume_signal(conn, run_id, *seq, node_id, *iteration),
        Mutation::AppendEvent {
            run_id,
            timestamp_ms,
            event_type,
            payload_json,
        } => {
            let seq = append_event(conn, run_id, *timestamp_ms, event_type, payload_json)?;
            outcome.event_seqs.push(seq);
            Ok(())
        }
        Mutation::UpsertCron(row) => upsert_cron(conn, row),
        Mutation::DeleteCron { cron_id } => delete_cron(conn, cron_id),
        Mutation::ClaimCron {
            cron_id,
            expected_next_run_at_ms,
            last_run_at_ms,
            next_run_at_ms,
        } => claim_cron(
            conn,
            cron_id,
            *expected_next_run_at_ms,
            *last_run_at_ms,
            *next_run_at_ms,
        ),
        Mutation::RecordCronRun {
            cron_id,
            last_run_at_ms,
            next_run_at_ms,
            error,
        } => record_cron_run(
            conn,
            cron_id,
            *last_run_at_ms,
            *next_run_at_ms,
            error.as_deref(),
        ),
        Mutation::Doc(doc) => super::records::apply_doc(conn, doc, outcome),
        Mutation::DeleteOutput {
            run_id,
            node_id,
            iteration,
        } => delete_output(conn, run_id, node_id, *iteration),
        Mutation::InsertTimeTravelAudit(row) => insert_time_travel_audit(conn, row),
    }
}

// Column lists are macros so that `concat!` builds each statement at compile time: the statement
// cache is keyed by SQL text, and a `format!` per call would allocate on every command.
macro_rules! run_columns {
    () => {
        "run_id, parent_run_id, workflow_name, workflow_path, workflow_hash, \
    status, created_at_ms, started_at_ms, finished_at_ms, heartbeat_at_ms, runtime_owner_id, \
    cancel_requested_at_ms, pause_requested_at_ms, error_json, config_json, input_json, \
    idempotency_key"
    };
}

/// `Conflict` when the run id exists or the idempotency key is taken (naming the holder).
pub fn insert_run(conn: &Connection, run: &RunRow) -> StorageResult<()> {
    // Checked before the INSERT so the error can name the existing run; the PRIMARY KEY and the
    // unique index stay the real guard.
    if run_exists(conn, &run.run_id)? {
        return Err(StorageError::Conflict(format!(
            "run {} already exists",
            run.run_id
        )));
    }
    if let Some(key) = &run.idempotency_key {
        if let Some(existing) = find_run_by_idempotency_key(conn, key)? {
            return Err(StorageError::Conflict(format!(
                "idempotency key {key:?} is already used by run {}",
                existing.run_id
            )));
        }
    }
    let mut statement = conn
        .prepare_cached(concat!(
            "INSERT INTO _smithers_runs (",
            run_columns!(),
            ") \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"
        ))
        .map_err(map_error)?;
    statement.execute(run_params(run)).map_err(map_error)?;
    Ok(())
}

/// Replaces the whole row; `NotFound` when the run does not exist.
pub fn put_run(conn: &Connection, run: &RunRow) -> StorageResult<()> {
    let mut statement = conn
        .prepare_cached(
            "UPDATE _smithers_runs SET parent_run_id = ?2, workflow_name = ?3, workflow_path = ?4, \
             workflow_hash = ?5, status = ?6, created_at_ms = ?7, started_at_ms = ?8, \
             finished_at_ms = ?9, heartbeat_at_ms = ?10, runtime_owner_id = ?11, \
             cancel_requested_at_ms = ?12, pause_requested_at_ms = ?13, error_json = ?14, \
             config_json = ?15, input_json = ?16, idempotency_key = ?17 WHERE run_id = ?1",
        )
        .map_err(map_error)?;
    let changed = statement.execute(run_params(run)).map_err(map_error)?;
    if changed == 0 {
        return Err(StorageError::NotFound(format!("run {}", run.run_id)));
    }
    Ok(())
}

fn run_params(run: &RunRow) -> [&dyn rusqlite::ToSql; 17] {
    [
        &run.run_id,
        &run.parent_run_id,
        &run.workflow_name,
        &run.workflow_path,
        &run.workflow_hash,
        &run.status,
        &run.created_at_ms,
        &run.started_at_ms,
        &run.finished_at_ms,
        &run.heartbeat_at_ms,
        &run.runtime_owner_id,
        &run.cancel_requested_at_ms,
        &run.pause_requested_at_ms,
        &run.error_json,
        &run.config_json,
        &run.input_json,
        &run.idempotency_key,
    ]
}

pub fn put_node(conn: &Connection, node: &NodeRow) -> StorageResult<()> {
    let mut statement = conn
        .prepare_cached(
            "INSERT INTO _smithers_nodes \
                 (run_id, node_id, iteration, state, last_attempt, updated_at_ms, output_table, label) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
             ON CONFLICT (run_id, node_id, iteration) DO UPDATE SET state = excluded.state, \
                 last_attempt = excluded.last_attempt, updated_at_ms = excluded.updated_at_ms, \
                 output_table = excluded.output_table, label = excluded.label",
        )
        .map_err(map_error)?;
    statement
        .execute(params![
            node.run_id,
            node.node_id,
            node.iteration,
            node.state,
            node.last_attempt,
            node.updated_at_ms,
            node.output_table,
            node.label,
        ])
        .map_err(map_error)?;
    Ok(())
}

pub fn put_attempt(conn: &Connection, attempt: &AttemptRow) -> StorageResult<()> {
    let mut statement = conn
        .prepare_cached(
            "INSERT INTO _smithers_attempts \
                 (run_id, node_id, iteration, attempt, state, started_at_ms, finished_at_ms, \
                  heartbeat_at_ms, heartbeat_data_json, error_json, meta_json, exit_code) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) \
             ON CONFLICT (run_id, node_id, iteration, attempt) DO UPDATE SET \
                 state = excluded.state, started_at_ms = excluded.started_at_ms, \
                 finished_at_ms = excluded.finished_at_ms, \
                 heartbeat_at_ms = excluded.heartbeat_at_ms, \
                 heartbeat_data_json = excluded.heartbeat_data_json, \
                 error_json = excluded.error_json, meta_json = excluded.meta_json, \
                 exit_code = excluded.exit_code",
        )
        .map_err(map_error)?;
    statement
        .execute(params![
            attempt.run_id,
            attempt.node_id,
            attempt.iteration,
            attempt.attempt,
            attempt.state,
            attempt.started_at_ms,
            attempt.finished_at_ms,
            attempt.heartbeat_at_ms,
            attempt.heartbeat_data_json,
            attempt.error_json,
            attempt.meta_json,
            attempt.exit_code,
        ])
        .map_err(map_error)?;
    Ok(())
}

/// `Conflict` when (run, frame_no) exists: frames are immutable history.
pub fn insert_frame(conn: &Connection, frame: &FrameRow) -> StorageResult<()> {
    let mut exists = conn
        .prepare_cached("SELECT 1 FROM _smithers_frames WHERE run_id = ?1 AND frame_no = ?2")
        .map_err(map_error)?;
    if exists
        .exists(params![frame.run_id, frame.frame_no])
        .map_err(map_error)?
    {
        return Err(StorageError::Conflict(format!(
            "frame {} of run {} already exists",
            frame.frame_no, frame.run_id
        )));
    }
    let mut statement = conn
        .prepare_cached(
            "INSERT INTO _smithers_frames \
                 (run_id, frame_no, created_at_ms, xml_json, xml_hash, task_index_json) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .map_err(map_error)?;
    statement
        .execute(params![
            frame.run_id,
            frame.frame_no,
            frame.created_at_ms,
            frame.xml_json,
            frame.xml_hash,
            frame.task_index_json,
        ])
        .map_err(map_error)?;
    Ok(())
}

pub fn put_output(conn: &Connection, output: &OutputRow) -> StorageResult<()> {
    let mut statement = conn
        .prepare_cached(
            "INSERT INTO _smithers_outputs (run_id, node_id, iteration, payload_json, created_at_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (run_id, node_id, iteration) DO UPDATE SET \
                 payload_json = excluded.payload_json, created_at_ms = excluded.created_at_ms",
        )
        .map_err(map_error)?;
    statement
        .execute(params![
            output.run_id,
            output.node_id,
            output.iteration,
            output.payload_json,
            output.created_at_ms,
        ])
        .map_err(map_error)?;
    Ok(())
}

// Run control (retryTask, rewindRun).

pub fn delete_output(
    conn: &Connection,
    run_id: &str,
    node_id: &str,
    iteration: i64,
) -> StorageResult<()> {
    let mut statement = conn
        .prepare_cached(
            "DELETE FROM _smithers_outputs WHERE run_id = ?1 AND node_id = ?2 AND iteration = ?3",
        )
        .map_err(map_error)?;
    statement
        .execute(params![run_id, node_id, iteration])
        .map_err(map_error)?;
    Ok(())
}

pub fn insert_time_travel_audit(conn: &Connection, row: &TimeTravelAuditRow) -> StorageResult<()> {
    let mut statement = conn
        .prepare_cached(
            "INSERT INTO _smithers_time_travel_audit \
             (run_id, from_frame_no, to_frame_no, caller, result, created_at_ms, details_json) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .map_err(map_error)?;
    statement
        .execute(params![
            row.run_id,
            row.from_frame_no,
            row.to_frame_no,
            row.caller,
            row.result,
            row.created_at_ms,
            row.details_json,
        ])
        .map_err(map_error)?;
    Ok(())
}

pub fn count_time_travel_audits(
    conn: &Connection,
    run_id: &str,
    caller: &str,
    since_ms: i64,
) -> StorageResult<i64> {
    let mut statement = conn
        .prepare_cached(
            "SELECT count(*) FROM _smithers_time_travel_audit \
             WHERE run_id = ?1 AND caller = ?2 AND created_at_ms >= ?3 \
             AND result NOT IN ('in_progress', 'rejected')",
        )
        .map_err(map_error)?;
    statement
        .query_row(params![run_id, caller, since_ms], |row| row.get(0))
        .map_err(map_error)
}

pub fn put_approval(conn: &Connection, approval: &ApprovalRow) -> StorageResult<()> {
    let mut statement = conn
        .prepare_cached(
            "INSERT INTO _smithers_approvals \
                 (run_id, node_id, iteration, status, requested_at_ms, decided_at_ms, note, \
                  decided_by, request_json, decision_json, auto_approved) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
             ON CONFLICT (run_id, node_id, iteration) DO UPDATE SET status = excluded.status, \
                 requested_at_ms = excluded.requested_at_ms, \
                 decided_at_ms = excluded.decided_at_ms, note = excluded.note, \
                 decided_by = excluded.decided_by, request_json = excluded.request_json, \
                 decision_json = excluded.decision_json, auto_approved = excluded.auto_approved",
        )
        .map_err(map_error)?;
    statement
        .execute(params![
            approval.run_id,
            approval.node_id,
            approval.iteration,
            approval.status,
            approval.requested_at_ms,
            approval.decided_at_ms,
            approval.note,
            approval.decided_by,
            approval.request_json,
            approval.decision_json,
            approval.auto_approved,
        ])
        .map_err(map_error)?;
    Ok(())
}

/// Appends a signal with seq = max + 1 (from 0) and returns it; an identical redelivery (same
/// name, correlation, payload, received_at_ms, received_by) returns the existing seq instead.
/// The row's own `seq` and consumption fields are ignored: the store assigns them.
pub fn insert_signal(conn: &Connection, signal: &SignalRow) -> StorageResult<i64> {
    // `IS` compares NULL equal to NULL, which is what "identical" means for optional columns.
    let mut existing = conn
        .prepare_cached(
            "SELECT seq FROM _smithers_signals WHERE run_id = ?1 AND signal_name = ?2 \
                 AND correlation_id IS ?3 AND received_at_ms = ?4 AND payload_json = ?5 \
                 AND received_by IS ?6 \
             ORDER BY seq LIMIT 1",
        )
        .map_err(map_error)?;
    let found: Option<i64> = existing
        .query_row(
            params![
                signal.run_id,
                signal.signal_name,
                signal.correlation_id,
                signal.received_at_ms,
                signal.payload_json,
                signal.received_by,
            ],
            |row| row.get(0),
        )
        .optional()
        .map_err(map_error)?;
    if let Some(seq) = found {
        return Ok(seq);
    }
    let seq = next_seq(
        conn,
        "SELECT max(seq) FROM _smithers_signals WHERE run_id = ?1",
        &signal.run_id,
    )?;
    let mut statement = conn
        .prepare_cached(
            "INSERT INTO _smithers_signals \
                 (run_id, seq, signal_name, correlation_id, payload_json, received_at_ms, \
                  received_by, consumed_by_node, consumed_by_iteration) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, NULL)",
        )
        .map_err(map_error)?;
    statement
        .execute(params![
            signal.run_id,
            seq,
            signal.signal_name,
            signal.correlation_id,
            signal.payload_json,
            signal.received_at_ms,
            signal.received_by,
        ])
        .map_err(map_error)?;
    Ok(seq)
}

/// Marks a signal consumed. Consuming it again for the same node iteration is a no-op; for a
/// different one it is a `Conflict` (a signal wakes one waiter). `NotFound` when absent.
pub fn consume_signal(
    conn: &Connection,
    run_id: &str,
    seq: i64,
    node_id: &str,
    iteration: i64,
) -> StorageResult<()> {
    let mut statement = conn
        .prepare_cached(
            "UPDATE _smithers_signals SET consumed_by_node = ?3, consumed_by_iteration = ?4 \
             WHERE run_id = ?1 AND seq = ?2 AND (consumed_by_node IS NULL \
                 OR (consumed_by_node = ?3 AND consumed_by_iteration = ?4))",
        )
        .map_err(map_error)?;
    let changed = statement
        .execute(params![run_id, seq, node_id, iteration])
        .map_err(map_error)?;
    if changed > 0 {
        return Ok(());
    }
    let mut holder = conn
        .prepare_cached(
            "SELECT consumed_by_node, consumed_by_iteration FROM _smithers_signals \
             WHERE run_id = ?1 AND seq = ?2",
        )
        .map_err(map_error)?;
    let consumed: Option<(Option<String>, Option<i64>)> = holder
        .query_row(params![run_id, seq], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()
        .map_err(map_error)?;
    match consumed {
        None => Err(StorageError::NotFound(format!(
            "signal {seq} of run {run_id}"
        ))),
        Some((node, iteration)) => Err(StorageError::Conflict(format!(
            "signal {seq} of run {run_id} was already consumed by node {} iteration {}",
            node.unwrap_or_default(),
            iteration.unwrap_or_default()
        ))),
    }
}

/// Appends an event with seq = max + 1 (from 0) and returns it.
pub fn append_event(
    conn: &Connection,
    run_id: &str,
    timestamp_ms: i64,
    event_type: &str,
    payload_json: &str,
) -> StorageResult<i64> {
    let seq = next_seq(
        conn,
        "SELECT max(seq) FROM _smithers_events WHERE run_id = ?1",
        run_id,
    )?;
    let mut statement = conn
        .prepare_cached(
            "INSERT INTO _smithers_events (run_id, seq, timestamp_ms, type, payload_json) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .map_err(map_error)?;
    statement
        .execute(params![run_id, seq, timestamp_ms, event_type, payload_json])
        .map_err(map_error)?;
    if cfg!(debug_assertions) {
        // The hub's gap detection relies on seqs being exactly 0..=seq; a count over the run's
        // primary-key range proves it (debug only: it is linear in the run's history).
        let mut count = conn
            .prepare_cached("SELECT count(*) FROM _smithers_events WHERE run_id = ?1")
            .map_err(map_error)?;
        let rows: i64 = count
            .query_row([run_id], |row| row.get(0))
            .map_err(map_error)?;
        debug_assert_eq!(
            rows,
            seq + 1,
            "event seqs of run {run_id} are not contiguous"
        );
    }
    Ok(seq)
}

fn next_seq(conn: &Connection, sql: &str, run_id: &str) -> StorageResult<i64> {
    let mut statement = conn.prepare_cached(sql).map_err(map_error)?;
    let max: Option<i64> = statement
        .query_row([run_id], |row| row.get(0))
        .map_err(map_error)?;
    Ok(max.map_or(0, |max| max + 1))
}

// ---------------------------------------------------------------------------------------------
// Reads
// ---------------------------------------------------------------------------------------------

fn run_from_row(row: &Row<'_>) -> rusqlite::Result<RunRow> {
    Ok(RunRow {
        run_id: row.get(0)?,
        parent_run_id: row.get(1)?,
        workflow_name: row.get(2)?,
        workflow_path: row.get(3)?,
        workflow_hash: row.get(4)?,
        status: row.get(5)?,
        created_at_ms: row.get(6)?,
        started_at_ms: row.get(7)?,
        finished_at_ms: row.get(8)?,
        heartbeat_at_ms: row.get(9)?,
        runtime_owner_id: row.get(10)?,
        cancel_requested_at_ms: row.get(11)?,
        pause_requested_at_ms: row.get(12)?,
        error_json: row.get(13)?,
        config_json: row.get(14)?,
        input_json: row.get(15)?,
        idempotency_key: row.get(16)?,
    })
}

fn run_exists(conn: &Connection, run_id: &str) -> StorageResult<bool> {
    let mut statement = conn
        .prepare_cached("SELECT 1 FROM _smithers_runs WHERE run_id = ?1")
        .map_err(map_error)?;
    statement.exists([run_id]).map_err(map_error)
}

pub fn get_run(conn: &Connection, run_id: &str) -> StorageResult<Option<RunRow>> {
    let mut statement = conn
        .prepare_cached(concat!(
            "SELECT ",
            run_columns!(),
            " FROM _smithers_runs WHERE run_id = ?1"
        ))
        .map_err(map_error)?;
    statement
        .query_row([run_id], run_from_row)
        .optional()
        .map_err(map_error)
}

/// Newest first (`created_at_ms` descending, then run_id ascending), `filter.limit` rows at most
/// (the caller has validated and defaulted it; 0 returns nothing) after skipping `filter.offset`.
pub fn list_runs(conn: &Connection, filter: &RunFilter) -> StorageResult<Vec<RunRow>> {
    let mut statement = conn
        .prepare_cached(concat!(
            "SELECT ",
            run_columns!(),
            " FROM _smithers_runs \
             WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR parent_run_id = ?2) \
             ORDER BY created_at_ms DESC, run_id ASC LIMIT ?3 OFFSET ?4"
        ))
        .map_err(map_error)?;
    let limit = i64::try_from(filter.limit).unwrap_or(i64::MAX);
    let offset = i64::try_from(filter.offset).unwrap_or(i64::MAX);
    let rows = statement
        .query_map(
            params![filter.status, filter.parent_run_id, limit, offset],
            run_from_row,
        )
        .map_err(map_error)?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .map_err(map_error)
}

pub fn find_run_by_idempotency_key(conn: &Connection, key: &str) -> StorageResult<Option<RunRow>> {
    let mut statement = conn
        .prepare_cached(concat!(
            "SELECT ",
            run_columns!(),
            " FROM _smithers_runs WHERE idempotency_key = ?1"
        ))
        .map_err(map_error)?;
    statement
        .query_row([key], run_from_row)
        .optional()
        .map_err(map_error)
}

/// Every non-terminal run with its state, oldest first (resume order).
pub fn load_active_runs(conn: &Connection) -> StorageResult<Vec<RunState>> {
    let mut statement = conn
        .prepare_cached(
            "SELECT run_id FROM _smithers_runs \
             WHERE status NOT IN ('finished', 'failed', 'cancelled', 'continued') \
             ORDER BY created_at_ms ASC, run_id ASC",
        )
        .map_err(map_error)?;
    let ids = statement
        .query_map([], |row| row.get::<_, String>(0))
        .map_err(map_error)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(map_error)?;
    ids.iter()
        .map(|run_id| load_run_state(conn, run_id))
        .collect()
}

/// The run and everything needed to resume it; `run` is None (and the lists empty) when absent.
pub fn load_run_state(conn: &Connection, run_id: &str) -> StorageResult<RunState> {
    let Some(run) = get_run(conn, run_id)? else {
        return Ok(RunState {
            last_event_seq: -1,
            ..RunState::default()
        });
    };
    let mut last_frame = conn
        .prepare_cached("SELECT coalesce(max(frame_no), 0) FROM _smithers_frames WHERE run_id = ?1")
        .map_err(map_error)?;
    let last_frame_no: i64 = last_frame
        .query_row([run_id], |row| row.get(0))
        .map_err(map_error)?;
    let mut last_event = conn
        .prepare_cached("SELECT coalesce(max(seq), -1) FROM _smithers_events WHERE run_id = ?1")
        .map_err(map_error)?;
    let last_event_seq: i64 = last_event
        .query_row([run_id], |row| row.get(0))
        .map_err(map_error)?;
    Ok(RunState {
        run: Some(run),
        nodes: list_nodes(conn, run_id)?,
        attempts: list_attempts(conn, run_id)?,
        outputs: list_outputs(conn, run_id)?,
        approvals: list_approvals(conn, run_id)?,
        signals: list_signals(conn, run_id)?,
        last_frame_no,
        last_event_seq,
    })
}

fn node_from_row(row: &Row<'_>) -> rusqlite::Result<NodeRow> {
    Ok(NodeRow {
        run_id: row.get(0)?,
        node_id: row.get(1)?,
        iteration: row.get(2)?,
        state: row.get(3)?,
        last_attempt: row.get(4)?,
        updated_at_ms: row.get(5)?,
        output_table: row.get(6)?,
        label: row.get(7)?,
    })
}

/// Nodes of a run by (node_id, iteration).
pub fn list_nodes(conn: &Connection, run_id: &str) -> StorageResult<Vec<NodeRow>> {
    let mut statement = conn
        .prepare_cached(
            "SELECT run_id, node_id, iteration, state, last_attempt, updated_at_ms, output_table, \
                 label \
             FROM _smithers_nodes WHERE run_id = ?1 ORDER BY node_id, iteration",
        )
        .map_err(map_error)?;
    let rows = statement
        .query_map([run_id], node_from_row)
        .map_err(map_error)?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .map_err(map_error)
}

/// Attempts of a whole run by start time, then attempt (DATA.md §6).
pub fn list_attempts(conn: &Connection, run_id: &str) -> StorageResult<Vec<AttemptRow>> {
    let mut statement = conn
        .prepare_cached(
            "SELECT run_id, node_id, iteration, attempt, state, started_at_ms, finished_at_ms, \
                 heartbeat_at_ms, heartbeat_data_json, error_json, meta_json, exit_code \
             FROM _smithers_attempts WHERE run_id = ?1 \
             ORDER BY started_at_ms, attempt, node_id, iteration",
        )
        .map_err(map_error)?;
    let rows = statement
        .query_map([run_id], attempt_from_row)
        .map_err(map_error)?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .map_err(map_error)
}

/// Outputs of a run by (node_id, iteration).
pub fn list_outputs(conn: &Connection, run_id: &str) -> StorageResult<Vec<OutputRow>> {
    let mut statement = conn
        .prepare_cached(
            "SELECT run_id, node_id, iteration, payload_json, created_at_ms \
             FROM _smithers_outputs WHERE run_id = ?1 ORDER BY node_id, iteration",
        )
        .map_err(map_error)?;
    let rows = statement
        .query_map([run_id], |row| {
            Ok(OutputRow {
                run_id: row.get(0)?,
                node_id: row.get(1)?,
                iteration: row.get(2)?,
                payload_json: row.get(3)?,
                created_at_ms: row.get(4)?,
            })
        })
        .map_err(map_error)?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .map_err(map_error)
}

macro_rules! approval_columns {
    () => {
        "a.run_id, a.node_id, a.iteration, a.status, a.requested_at_ms, \
    a.decided_at_ms, a.note, a.decided_by, a.request_json, a.decision_json, a.auto_approved"
    };
}

fn approval_from_row(row: &Row<'_>) -> rusqlite::Result<ApprovalRow> {
    Ok(ApprovalRow {
        run_id: row.get(0)?,
        node_id: row.get(1)?,
        iteration: row.get(2)?,
        status: row.get(3)?,
        requested_at_ms: row.get(4)?,
        decided_at_ms: row.get(5)?,
        note: row.get(6)?,
        decided_by: row.get(7)?,
        request_json: row.get(8)?,
        decision_json: row.get(9)?,
        auto_approved: row.get(10)?,
    })
}

/// Approvals of a run by (node_id, iteration), any status.
pub fn list_approvals(conn: &Connection, run_id: &str) -> StorageResult<Vec<ApprovalRow>> {
    let mut statement = conn
        .prepare_cached(concat!(
            "SELECT ",
            approval_columns!(),
            " FROM _smithers_approvals a WHERE a.run_id = ?1 \
             ORDER BY a.node_id, a.iteration"
        ))
        .map_err(map_error)?;
    let rows = statement
        .query_map([run_id], approval_from_row)
        .map_err(map_error)?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .map_err(map_error)
}

/// Signals of a run by seq.
pub fn list_signals(conn: &Connection, run_id: &str) -> StorageResult<Vec<SignalRow>> {
    let mut statement = conn
        .prepare_cached(
            "SELECT run_id, seq, signal_name, correlation_id, payload_json, received_at_ms, \
                 received_by, consumed_by_node, consumed_by_iteration \
             FROM _smithers_signals WHERE run_id = ?1 ORDER BY seq",
        )
        .map_err(map_error)?;
    let rows = statement
        .query_map([run_id], |row| {
            Ok(SignalRow {
                run_id: row.get(0)?,
                seq: row.get(1)?,
                signal_name: row.get(2)?,
                correlation_id: row.get(3)?,
                payload_json: row.get(4)?,
                received_at_ms: row.get(5)?,
                received_by: row.get(6)?,
                consumed_by_node: row.get(7)?,
                consumed_by_iteration: row.get(8)?,
            })
        })
        .map_err(map_error)?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .map_err(map_error)
}

/// Approvals with status `requested` whose run is not terminal, oldest request first (a missing
/// request time sorts as 0), optionally for one run.
pub fn list_pending_approvals(
    conn: &Connection,
    run_id: Option<&str>,
) -> StorageResult<Vec<ApprovalRow>> {
    let mut statement = conn
        .prepare_cached(concat!(
            "SELECT ",
            approval_columns!(),
            " FROM _smithers_approvals a \
                 JOIN _smithers_runs r ON r.run_id = a.run_id \
             WHERE a.status = 'requested' \
                 AND r.status NOT IN ('finished', 'failed', 'cancelled', 'continued') \
                 AND (?1 IS NULL OR a.run_id = ?1) \
             ORDER BY coalesce(a.requested_at_ms, 0), a.run_id, a.node_id, a.iteration"
        ))
        .map_err(map_error)?;
    let rows = statement
        .query_map([run_id], approval_from_row)
        .map_err(map_error)?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .map_err(map_error)
}

pub fn get_approval(
    conn: &Connection,
    run_id: &str,
    node_id: &str,
    iteration: i64,
) -> StorageResult<Option<ApprovalRow>> {
    let mut statement = conn
        .prepare_cached(concat!(
            "SELECT ",
            approval_columns!(),
            " FROM _smithers_approvals a \
             WHERE a.run_id = ?1 AND a.node_id = ?2 AND a.iteration = ?3"
        ))
        .map_err(map_error)?;
    statement
        .query_row(params![run_id, node_id, iteration], approval_from_row)
        .optional()
        .map_err(map_error)
}

/// An event row from `SELECT run_id, seq, timestamp_ms, type, payload_json`.
fn event_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<EventRow> {
    Ok(EventRow {
        run_id: row.get(0)?,
        seq: row.get(1)?,
        timestamp_ms: row.get(2)?,
        event_type: row.get(3)?,
        payload_json: row.get(4)?,
    })
}

/// Events with seq > after_seq, ascending, at most `limit`.
pub fn list_events(
    conn: &Connection,
    run_id: &str,
    after_seq: i64,
    limit: usize,
) -> StorageResult<Vec<EventRow>> {
    let mut statement = conn
        .prepare_cached(
            "SELECT run_id, seq, timestamp_ms, type, payload_json FROM _smithers_events \
             WHERE run_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )
        .map_err(map_error)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = statement
        .query_map(params![run_id, after_seq, limit], event_row)
        .map_err(map_error)?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .map_err(map_error)
}

/// A frame row from `SELECT run_id, frame_no, created_at_ms, xml_json, xml_hash, task_index_json`.
fn frame_from_row(row: &Row<'_>) -> rusqlite::Result<FrameRow> {
    Ok(FrameRow {
        run_id: row.get(0)?,
        frame_no: row.get(1)?,
        created_at_ms: row.get(2)?,
        xml_json: row.get(3)?,
        xml_hash: row.get(4)?,
        task_index_json: row.get(5)?,
    })
}

pub fn get_frame(
    conn: &Connection,
    run_id: &str,
    frame_no: i64,
) -> StorageResult<Option<FrameRow>> {
    let mut statement = conn
        .prepare_cached(
            "SELECT run_id, frame_no, created_at_ms, xml_json, xml_hash, task_index_json \
             FROM _smithers_frames WHERE run_id = ?1 AND frame_no = ?2",
        )
        .map_err(map_error)?;
    statement
        .query_row(params![run_id, frame_no], frame_from_row)
        .optional()
        .map_err(map_error)
}

// ---- DevTools reads ----

fn attempt_from_row(row: &Row<'_>) -> rusqlite::Result<AttemptRow> {
    Ok(AttemptRow {
        run_id: row.get(0)?,
        node_id: row.get(1)?,
        iteration: row.get(2)?,
        attempt: row.get(3)?,
        state: row.get(4)?,
        started_at_ms: row.get(5)?,
        finished_at_ms: row.get(6)?,
        heartbeat_at_ms: row.get(7)?,
        heartbeat_data_json: row.get(8)?,
        error_json: row.get(9)?,
        meta_json: row.get(10)?,
        exit_code: row.get(11)?,
    })
}

/// The run's newest frame number (0 without frames); None when the run does not exist.
pub fn latest_frame(conn: &Connection, run_id: &str) -> StorageResult<Option<i64>> {
    if !run_exists(conn, run_id)? {
        return Ok(None);
    }
    let mut statement = conn
        .prepare_cached("SELECT coalesce(max(frame_no), 0) FROM _smithers_frames WHERE run_id = ?1")
        .map_err(map_error)?;
    statement
        .query_row([run_id], |row| row.get(0))
        .map(Some)
        .map_err(map_error)
}

/// A frame and the attempts a DevTools snapshot of it reads (those with metadata that started no
/// later than the frame); None when the frame does not exist.
pub fn get_frame_source(
    conn: &Connection,
    run_id: &str,
    frame_no: i64,
) -> StorageResult<Option<(FrameRow, Vec<AttemptRow>)>> {
    let Some(frame) = get_frame(conn, run_id, frame_no)? else {
        return Ok(None);
    };
    let mut statement = conn
        .prepare_cached(
            "SELECT run_id, node_id, iteration, attempt, state, started_at_ms, finished_at_ms, \
                 heartbeat_at_ms, heartbeat_data_json, error_json, meta_json, exit_code \
             FROM _smithers_attempts \
             WHERE run_id = ?1 AND meta_json IS NOT NULL AND started_at_ms <= ?2 \
             ORDER BY started_at_ms, attempt, node_id, iteration",
        )
        .map_err(map_error)?;
    let attempts = statement
        .query_map(params![run_id, frame.created_at_ms], attempt_from_row)
        .map_err(map_error)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(map_error)?;
    Ok(Some((frame, attempts)))
}

/// The run and one node's rows, every iteration.
pub fn load_node_records(
    conn: &Connection,
    run_id: &str,
    node_id: &str,
) -> StorageResult<NodeRecords> {
    let Some(run) = get_run(conn, run_id)? else {
        return Ok(NodeRecords::default());
    };
    let mut nodes = conn
        .prepare_cached(
            "SELECT run_id, node_id, iteration, state, last_attempt, updated_at_ms, output_table, \
                 label \
             FROM _smithers_nodes WHERE run_id = ?1 AND node_id = ?2 ORDER BY iteration",
        )
        .map_err(map_error)?;
    let nodes = nodes
        .query_map(params![run_id, node_id], node_from_row)
        .map_err(map_error)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(map_error)?;
    let mut attempts = conn
        .prepare_cached(
            "SELECT run_id, node_id, iteration, attempt, state, started_at_ms, finished_at_ms, \
                 heartbeat_at_ms, heartbeat_data_json, error_json, meta_json, exit_code \
             FROM _smithers_attempts WHERE run_id = ?1 AND node_id = ?2 \
             ORDER BY iteration, attempt",
        )
        .map_err(map_error)?;
    let attempts = attempts
        .query_map(params![run_id, node_id], attempt_from_row)
        .map_err(map_error)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(map_error)?;
    let mut outputs = conn
        .prepare_cached(
            "SELECT run_id, node_id, iteration, payload_json, created_at_ms \
             FROM _smithers_outputs WHERE run_id = ?1 AND node_id = ?2 ORDER BY iteration",
        )
        .map_err(map_error)?;
    let outputs = outputs
        .query_map(params![run_id, node_id], |row| {
            Ok(OutputRow {
                run_id: row.get(0)?,
                node_id: row.get(1)?,
                iteration: row.get(2)?,
                payload_json: row.get(3)?,
                created_at_ms: row.get(4)?,
            })
        })
        .map_err(map_error)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(map_error)?;
    Ok(NodeRecords {
        run: Some(run),
        nodes,
        attempts,
        outputs,
    })
}

// ---------------------------------------------------------------------------------------------
// Cron (DATA.md §8)
// ---------------------------------------------------------------------------------------------

macro_rules! cron_columns {
    () => {
        "cron_id, pattern, workflow_path, enabled, created_at_ms, last_run_at_ms, \
    next_run_at_ms, error_json"
    };
}

/// Insert, or replace pattern, path, enabled and next time while keeping `created_at_ms`,
/// `last_run_at_ms` and `error_json` (one statement, so a concurrent claim is never lost).
pub fn upsert_cron(conn: &Connection, row: &CronRow) -> StorageResult<()> {
    let mut statement = conn
        .prepare_cached(concat!(
            "INSERT INTO _smithers_cron (",
            cron_columns!(),
            ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
             ON CONFLICT (cron_id) DO UPDATE SET pattern = excluded.pattern, \
             workflow_path = excluded.workflow_path, enabled = excluded.enabled, \
             next_run_at_ms = excluded.next_run_at_ms"
        ))
        .map_err(map_error)?;
    statement
        .execute(params![
            row.cron_id,
            row.pattern,
            row.workflow_path,
            row.enabled,
            row.created_at_ms,
            row.last_run_at_ms,
            row.next_run_at_ms,
            row.error_json
        ])
        .map_err(map_error)?;
    Ok(())
}

pub fn delete_cron(conn: &Connection, cron_id: &str) -> StorageResult<()> {
    let mut statement = conn
        .prepare_cached("DELETE FROM _smithers_cron WHERE cron_id = ?1")
        .map_err(map_error)?;
    if statement.execute([cron_id]).map_err(map_error)? == 0 {
        return Err(StorageError::NotFound(format!("cron {cron_id}")));
    }
    Ok(())
}

/// Compare-and-set on `next_run_at_ms` (`IS` compares NULL with NULL as equal).
pub fn claim_cron(
    conn: &Connection,
    cron_id: &str,
    expected_next_run_at_ms: Option<i64>,
    last_run_at_ms: i64,
    next_run_at_ms: i64,
) -> StorageResult<()> {
    let mut statement = conn
        .prepare_cached(
            "UPDATE _smithers_cron SET last_run_at_ms = ?3, next_run_at_ms = ?4, \
             error_json = NULL WHERE cron_id = ?1 AND enabled = 1 AND next_run_at_ms IS ?2",
        )
        .map_err(map_error)?;
    let changed = statement
        .execute(params![
            cron_id,
            expected_next_run_at_ms,
            last_run_at_ms,
            next_run_at_ms
        ])
        .map_err(map_error)?;
    if changed == 0 {
        return Err(StorageError::Conflict(format!(
            "cron {cron_id} was claimed, changed or removed"
        )));
    }
    Ok(())
}

pub fn record_cron_run(
    conn: &Connection,
    cron_id: &str,
    last_run_at_ms: i64,
    next_run_at_ms: Option<i64>,
    error: Option<&str>,
) -> StorageResult<()> {
    let mut statement = conn
        .prepare_cached(
            "UPDATE _smithers_cron SET last_run_at_ms = ?2, next_run_at_ms = ?3, \
             error_json = ?4 WHERE cron_id = ?1",
        )
        .map_err(map_error)?;
    statement
        .execute(params![cron_id, last_run_at_ms, next_run_at_ms, error])
        .map_err(map_error)?;
    Ok(())
}

fn cron_from_row(row: &Row<'_>) -> rusqlite::Result<CronRow> {
    Ok(CronRow {
        cron_id: row.get(0)?,
        pattern: row.get(1)?,
        workflow_path: row.get(2)?,
        enabled: row.get(3)?,
        created_at_ms: row.get(4)?,
        last_run_at_ms: row.get(5)?,
        next_run_at_ms: row.get(6)?,
        error_json: row.get(7)?,
    })
}

/// Every cron row, oldest first (`created_at_ms`, then insertion order: rows created in the same
/// millisecond keep the order they were created in), as `cronList` shows them.
pub fn list_crons(conn: &Connection) -> StorageResult<Vec<CronRow>> {
    let mut statement = conn
        .prepare_cached(concat!(
            "SELECT ",
            cron_columns!(),
            " FROM _smithers_cron ORDER BY created_at_ms ASC, rowid ASC"
        ))
        .map_err(map_error)?;
    let rows = statement.query_map([], cron_from_row).map_err(map_error)?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .map_err(map_error)
}

pub fn get_cron(conn: &Connection, cron_id: &str) -> StorageResult<Option<CronRow>> {
    let mut statement = conn
        .prepare_cached(concat!(
            "SELECT ",
            cron_columns!(),
            " FROM _smithers_cron WHERE cron_id = ?1"
        ))
        .map_err(map_error)?;
    statement
        .query_row([cron_id], cron_from_row)
        .optional()
        .map_err(map_error)
}

/// The PRAGMAs the store depends on, as SQLite reports them now. `schema_version` is our
/// migration version (`PRAGMA user_version`), not SQLite's internal schema cookie.
pub fn read_pragmas(conn: &Connection) -> StorageResult<Pragmas> {
    let journal_mode: String = conn
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .map_err(map_error)?;
    let synchronous: i64 = conn
        .query_row("PRAGMA synchronous", [], |row| row.get(0))
        .map_err(map_error)?;
    let busy_timeout_ms: i64 = conn
        .query_row("PRAGMA busy_timeout", [], |row| row.get(0))
        .map_err(map_error)?;
    let foreign_keys: bool = conn
        .query_row("PRAGMA foreign_keys", [], |row| row.get(0))
        .map_err(map_error)?;
    let schema_version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(map_error)?;
    Ok(Pragmas {
        journal_mode: journal_mode.to_ascii_lowercase(),
        synchronous,
        busy_timeout_ms,
        foreign_keys,
        schema_version,
    })
}

/// `PRAGMA integrity_check` lines; `["ok"]` when healthy.
pub fn integrity_check(conn: &Connection) -> StorageResult<Vec<String>> {
    let mut statement = conn.prepare("PRAGMA integrity_check").map_err(map_error)?;
    let rows = statement
        .query_map([], |row| row.get::<_, String>(0))
        .map_err(map_error)?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .map_err(map_error)
}

// ---------------------------------------------------------------------------------------------
// Read-side inspection (listRunDescendants, frames.list, attempts.*, listRunTokenUsage,
// getSchemaSignature)
// ---------------------------------------------------------------------------------------------

/// The run and its descendants through `parent_run_id`, breadth first: by depth, then each
/// parent's children in creation order. A run already listed is never listed again (cycles and
/// diamonds are cut), and the walk stops at `limit` rows (the root counts). None when the run
/// is absent.
pub fn list_run_descendants(
    conn: &Connection,
    run_id: &str,
    limit: usize,
) -> StorageResult<Option<Vec<DescendantRow>>> {
    let Some(root) = get_run(conn, run_id)? else {
        return Ok(None);
    };
    let mut rows = vec![DescendantRow {
        run_id: root.run_id.clone(),
        parent_run_id: None,
        depth: 0,
    }];
    let mut seen = std::collections::HashSet::from([root.run_id]);
    let mut children = conn
        .prepare_cached(
            "SELECT run_id FROM _smithers_runs WHERE parent_run_id = ?1 \
             ORDER BY created_at_ms, run_id LIMIT ?2",
        )
        .map_err(map_error)?;
    // Each pass reads the children of one listed row, so the walk is bounded by `limit` rows.
    let mut next = 0;
    while rows.len() < limit {
        let Some(parent) = rows.get(next).cloned() else {
            break;
        };
        next += 1;
        let room = i64::try_from(limit - rows.len()).unwrap_or(i64::MAX);
        let ids = children
            .query_map(params![parent.run_id, room.saturating_add(1)], |row| {
                row.get::<_, String>(0)
            })
            .map_err(map_error)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(map_error)?;
        for id in ids {
            if rows.len() >= limit {
                break;
            }
            if seen.insert(id.clone()) {
                rows.push(DescendantRow {
                    run_id: id,
                    parent_run_id: Some(parent.run_id.clone()),
                    depth: parent.depth.saturating_add(1),
                });
            }
        }
    }
    Ok(Some(rows))
}

/// Frames newest first, numbered above `after_frame_no` when given, at most `limit`; None when
/// the run is absent.
pub fn list_frames(
    conn: &Connection,
    run_id: &str,
    limit: usize,
    after_frame_no: Option<i64>,
) -> StorageResult<Option<Vec<FrameRow>>> {
    if !run_exists(conn, run_id)? {
        return Ok(None);
    }
    let mut statement = conn
        .prepare_cached(
            "SELECT run_id, frame_no, created_at_ms, xml_json, xml_hash, task_index_json \
             FROM _smithers_frames WHERE run_id = ?1 AND (?2 IS NULL OR frame_no > ?2) \
             ORDER BY frame_no DESC LIMIT ?3",
        )
        .map_err(map_error)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = statement
        .query_map(params![run_id, after_frame_no, limit], frame_from_row)
        .map_err(map_error)?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .map(Some)
        .map_err(map_error)
}

/// Attempts of one node iteration, newest attempt first, or of the whole run by start time then
/// attempt (DATA.md §6); at most `limit`. None when the run is absent.
pub fn list_attempts_of(
    conn: &Connection,
    run_id: &str,
    node: Option<(&str, i64)>,
    limit: usize,
) -> StorageResult<Option<Vec<AttemptRow>>> {
    if !run_exists(conn, run_id)? {
        return Ok(None);
    }
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = match node {
        Some((node_id, iteration)) => {
            let mut statement = conn
                .prepare_cached(
                    "SELECT run_id, node_id, iteration, attempt, state, started_at_ms, \
                         finished_at_ms, heartbeat_at_ms, heartbeat_data_json, error_json, \
                         meta_json, exit_code \
                     FROM _smithers_attempts \
                     WHERE run_id = ?1 AND node_id = ?2 AND iteration = ?3 \
                     ORDER BY attempt DESC LIMIT ?4",
                )
                .map_err(map_error)?;
            let rows = statement
                .query_map(params![run_id, node_id, iteration, limit], attempt_from_row)
                .map_err(map_error)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        }
        None => {
            let mut statement = conn
                .prepare_cached(
                    "SELECT run_id, node_id, iteration, attempt, state, started_at_ms, \
                         finished_at_ms, heartbeat_at_ms, heartbeat_data_json, error_json, \
                         meta_json, exit_code \
                     FROM _smithers_attempts WHERE run_id = ?1 \
                     ORDER BY started_at_ms, attempt, node_id, iteration LIMIT ?2",
                )
                .map_err(map_error)?;
            let rows = statement
                .query_map(params![run_id, limit], attempt_from_row)
                .map_err(map_error)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        }
    };
    rows.map(Some).map_err(map_error)
}

/// Events of one type by seq, at most `limit`; None when the run is absent.
pub fn list_events_of_type(
    conn: &Connection,
    run_id: &str,
    event_type: &str,
    limit: usize,
) -> StorageResult<Option<Vec<EventRow>>> {
    if !run_exists(conn, run_id)? {
        return Ok(None);
    }
    let mut statement = conn
        .prepare_cached(
            "SELECT run_id, seq, timestamp_ms, type, payload_json FROM _smithers_events \
             WHERE run_id = ?1 AND type = ?2 ORDER BY seq LIMIT ?3",
        )
        .map_err(map_error)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = statement
        .query_map(params![run_id, event_type, limit], event_row)
        .map_err(map_error)?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .map(Some)
        .map_err(map_error)
}

/// Every table and index named `_smithers_%` with its SQL (automatic indexes have none and are
/// left out), by name, and the newest id in the migration ledger.
pub fn schema_catalog(conn: &Connection) -> StorageResult<SchemaCatalog> {
    let mut statement = conn
        .prepare_cached(
            "SELECT type, name, tbl_name, sql FROM sqlite_schema \
             WHERE type IN ('table', 'index') AND name LIKE '\\_smithers\\_%' ESCAPE '\\' \
                 AND sql IS NOT NULL \
             ORDER BY name",
        )
        .map_err(map_error)?;
    let entries = statement
        .query_map([], |row| {
            Ok(CatalogEntry {
                kind: row.get(0)?,
                name: row.get(1)?,
                table: row.get(2)?,
                sql: row.get(3)?,
            })
        })
        .map_err(map_error)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(map_error)?;
    let newest_migration: Option<i64> = conn
        .query_row(
            "SELECT max(id) FROM _smithers_schema_migrations",
            [],
            |row| row.get(0),
        )
        .map_err(map_error)?;
    Ok(SchemaCatalog {
        newest_migration,
        entries,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::storage::migrations;
    use crate::storage::thread::tests::run_row;

    fn db() -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("PRAGMA foreign_keys = ON").unwrap();
        migrations::migrate(&mut conn, 0).unwrap();
        conn
    }

    fn node(run_id: &str, node_id: &str, iteration: i64, state: &str) -> NodeRow {
        NodeRow {
            run_id: run_id.into(),
            node_id: node_id.into(),
            iteration,
            state: state.into(),
            last_attempt: Some(1),
            updated_at_ms: 7,
            output_table: "out".into(),
            label: Some("Label".into()),
        }
    }

    fn approval(run_id: &str, node_id: &str, status: &str, requested: Option<i64>) -> ApprovalRow {
        ApprovalRow {
            run_id: run_id.into(),
            node_id: node_id.into(),
            iteration: 0,
            status: status.into(),
            requested_at_ms: requested,
            decided_at_ms: None,
            note: None,
            decided_by: None,
            request_json: Some("{\"mode\":\"gate\"}".into()),
            decision_json: None,
            auto_approved: false,
        }
    }

    fn signal(run_id: &str, name: &str, received_at_ms: i64) -> SignalRow {
        SignalRow {
            run_id: run_id.into(),
            seq: -5,
            signal_name: name.into(),
            correlation_id: Some("c".into()),
            payload_json: "{\"ok\":true}".into(),
            received_at_ms,
            received_by: None,
            consumed_by_node: None,
            consumed_by_iteration: None,
        }
    }

    fn apply_all(conn: &Connection, mutations: &[Mutation]) -> StorageResult<WriteOutcome> {
        let mut outcome = WriteOutcome::default();
        for mutation in mutations {
            apply(conn, mutation, &mut outcome)?;
        }
        Ok(outcome)
    }

    #[test]
    fn runs_insert_put_get_and_conflicts() {
        let conn = db();
        let mut run = run_row("r1", 10);
        run.idempotency_key = Some("key".into());
        insert_run(&conn, &run).unwrap();
        assert_eq!(get_run(&conn, "r1").unwrap(), Some(run.clone()));
        assert_eq!(get_run(&conn, "nope").unwrap(), None);

        let error = insert_run(&conn, &run_row("r1", 11)).unwrap_err();
        assert!(
            matches!(&error, StorageError::Conflict(m) if m.contains("r1")),
            "{error}"
        );
        let mut other = run_row("r2", 11);
        other.idempotency_key = Some("key".into());
        let error = insert_run(&conn, &other).unwrap_err();
        assert!(
            matches!(&error, StorageError::Conflict(m) if m.contains("run r1")),
            "{error}"
        );
        assert_eq!(
            find_run_by_idempotency_key(&conn, "key").unwrap(),
            Some(run.clone())
        );
        assert_eq!(find_run_by_idempotency_key(&conn, "other").unwrap(), None);

        let updated = RunRow {
            status: "finished".into(),
            finished_at_ms: Some(99),
            error_json: Some("{\"x\":1}".into()),
            cancel_requested_at_ms: Some(3),
            pause_requested_at_ms: Some(4),
            heartbeat_at_ms: Some(5),
            parent_run_id: Some("p".into()),
            ..run.clone()
        };
        put_run(&conn, &updated).unwrap();
        assert_eq!(get_run(&conn, "r1").unwrap(), Some(updated));
        let error = put_run(&conn, &run_row("ghost", 1)).unwrap_err();
        assert!(matches!(error, StorageError::NotFound(_)), "{error}");

        // Unknown status: CHECK constraint.
        let bad = RunRow {
            status: "exploded".into(),
            ..run_row("r3", 1)
        };
        assert!(matches!(
            insert_run(&conn, &bad),
            Err(StorageError::Conflict(_))
        ));
    }

    #[test]
    fn list_runs_filters_orders_and_pages() {
        let conn = db();
        for (id, created, status, parent) in [
            ("a", 1, "running", None),
            ("b", 3, "finished", Some("a")),
            ("c", 3, "running", Some("a")),
            ("d", 2, "running", None),
        ] {
            let run = RunRow {
                status: status.into(),
                parent_run_id: parent.map(String::from),
                ..run_row(id, created)
            };
            insert_run(&conn, &run).unwrap();
        }
        let ids = |filter: RunFilter| -> Vec<String> {
            list_runs(&conn, &filter)
                .unwrap()
                .into_iter()
                .map(|r| r.run_id)
                .collect()
        };
        let all = RunFilter {
            limit: 100,
            ..RunFilter::default()
        };
        assert_eq!(ids(all.clone()), ["b", "c", "d", "a"]);
        assert_eq!(
            ids(RunFilter {
                status: Some("running".into()),
                ..all.clone()
            }),
            ["c", "d", "a"]
        );
        assert_eq!(
            ids(RunFilter {
                parent_run_id: Some("a".into()),
                ..all.clone()
            }),
            ["b", "c"]
        );
        assert_eq!(
            ids(RunFilter {
                limit: 2,
                offset: 1,
                ..all
            }),
            ["c", "d"]
        );
    }

    #[test]
    fn nodes_attempts_outputs_approvals_upsert_and_load() {
        let conn = db();
        insert_run(&conn, &run_row("r", 1)).unwrap();
        let mut attempt = AttemptRow {
            run_id: "r".into(),
            node_id: "n".into(),
            iteration: 0,
            attempt: 1,
            state: "in-progress".into(),
            started_at_ms: 5,
            finished_at_ms: None,
            heartbeat_at_ms: Some(6),
            heartbeat_data_json: Some("{}".into()),
            error_json: None,
            meta_json: Some("{\"timer\":{}}".into()),
            exit_code: None,
        };
        let output = OutputRow {
            run_id: "r".into(),
            node_id: "n".into(),
            iteration: 0,
            payload_json: "{\"v\":1}".into(),
            created_at_ms: 8,
        };
        let outcome = apply_all(
            &conn,
            &[
                Mutation::PutNode(node("r", "n", 0, "in-progress")),
                Mutation::PutNode(node("r", "m", 1, "pending")),
                Mutation::PutAttempt(attempt.clone()),
                Mutation::PutOutput(output.clone()),
                Mutation::PutApproval(approval("r", "n", "requested", Some(4))),
            ],
        )
        .unwrap();
        assert_eq!(outcome, WriteOutcome::default());

        attempt.state = "finished".into();
        attempt.finished_at_ms = Some(9);
        attempt.exit_code = Some(0);
        let decided = ApprovalRow {
            status: "approved".into(),
            decided_at_ms: Some(10),
            decided_by: Some("alice".into()),
            note: Some("fine".into()),
            decision_json: Some("true".into()),
            auto_approved: true,
            ..approval("r", "n", "requested", Some(4))
        };
        let output2 = OutputRow {
            payload_json: "{\"v\":2}".into(),
            ..output
        };
        apply_all(
            &conn,
            &[
                Mutation::PutNode(node("r", "n", 0, "finished")),
                Mutation::PutAttempt(attempt.clone()),
                Mutation::PutOutput(output2.clone()),
                Mutation::PutApproval(decided.clone()),
            ],
        )
        .unwrap();

        assert_eq!(
            list_nodes(&conn, "r").unwrap(),
            vec![node("r", "m", 1, "pending"), node("r", "n", 0, "finished")]
        );
        assert_eq!(
            get_approval(&conn, "r", "n", 0).unwrap(),
            Some(decided.clone())
        );
        assert_eq!(get_approval(&conn, "r", "n", 1).unwrap(), None);
        let state = load_run_state(&conn, "r").unwrap();
        assert_eq!(state.run, Some(run_row("r", 1)));
        assert_eq!(state.attempts, vec![attempt]);
        assert_eq!(state.outputs, vec![output2]);
        assert_eq!(state.approvals, vec![decided]);
        assert_eq!((state.last_frame_no, state.last_event_seq), (0, -1));

        let bad = approval("r", "x", "maybe", None);
        assert!(matches!(
            put_approval(&conn, &bad),
            Err(StorageError::Conflict(_))
        ));
        // Children of an unknown run violate the foreign key.
        assert!(matches!(
            put_node(&conn, &node("ghost", "n", 0, "pending")),
            Err(StorageError::Conflict(_))
        ));
    }

    #[test]
    fn frames_insert_once() {
        let conn = db();
        insert_run(&conn, &run_row("r", 1)).unwrap();
        let frame = FrameRow {
            run_id: "r".into(),
            frame_no: 1,
            created_at_ms: 2,
            xml_json: "{}".into(),
            xml_hash: "abc".into(),
            task_index_json: "[]".into(),
        };
        insert_frame(&conn, &frame).unwrap();
        insert_frame(
            &conn,
            &FrameRow {
                frame_no: 2,
                ..frame.clone()
            },
        )
        .unwrap();
        let error = insert_frame(&conn, &frame).unwrap_err();
        assert!(
            matches!(&error, StorageError::Conflict(m) if m.contains("frame 1")),
            "{error}"
        );
        assert_eq!(get_frame(&conn, "r", 1).unwrap(), Some(frame));
        assert_eq!(get_frame(&conn, "r", 3).unwrap(), None);
        assert_eq!(load_run_state(&conn, "r").unwrap().last_frame_no, 2);
    }

    // Goal: the DevTools reads: the latest frame (None for an unknown run, 0 without frames), a
    // frame with the attempts that started by its time and carry metadata, and one node's rows.
    #[test]
    fn devtools_reads() {
        let conn = db();
        assert_eq!(latest_frame(&conn, "r").unwrap(), None);
        insert_run(&conn, &run_row("r", 1)).unwrap();
        assert_eq!(latest_frame(&conn, "r").unwrap(), Some(0));
        let frame = FrameRow {
            run_id: "r".into(),
            frame_no: 1,
            created_at_ms: 10,
            xml_json: "{}".into(),
            xml_hash: "h".into(),
            task_index_json: "[]".into(),
        };
        insert_frame(&conn, &frame).unwrap();
        insert_frame(
            &conn,
            &FrameRow {
                frame_no: 4,
                ..frame.clone()
            },
        )
        .unwrap();
        assert_eq!(latest_frame(&conn, "r").unwrap(), Some(4));
        let attempt =
            |node_id: &str, iteration: i64, number: i64, started: i64, meta: Option<&str>| {
                AttemptRow {
                    run_id: "r".into(),
                    node_id: node_id.into(),
                    iteration,
                    attempt: number,
                    state: "finished".into(),
                    started_at_ms: started,
                    finished_at_ms: None,
                    heartbeat_at_ms: None,
                    heartbeat_data_json: None,
                    error_json: None,
                    meta_json: meta.map(str::to_string),
                    exit_code: None,
                }
            };
        put_attempt(&conn, &attempt("n", 0, 1, 5, Some(r#"{"agentId":"a"}"#))).unwrap();
        put_attempt(&conn, &attempt("n", 0, 2, 11, Some(r#"{"agentId":"b"}"#))).unwrap();
        put_attempt(&conn, &attempt("m", 0, 1, 6, None)).unwrap();
        put_attempt(&conn, &attempt("n", 1, 1, 7, None)).unwrap();
        let (read, attempts) = get_frame_source(&conn, "r", 1).unwrap().unwrap();
        assert_eq!(read, frame);
        assert_eq!(
            attempts,
            vec![attempt("n", 0, 1, 5, Some(r#"{"agentId":"a"}"#))]
        );
        assert_eq!(get_frame_source(&conn, "r", 2).unwrap(), None);

        put_node(&conn, &node("r", "n", 1, "finished")).unwrap();
        put_node(&conn, &node("r", "n", 0, "failed")).unwrap();
        put_node(&conn, &node("r", "m", 0, "finished")).unwrap();
        put_output(
            &conn,
            &OutputRow {
                run_id: "r".into(),
                node_id: "n".into(),
                iteration: 1,
                payload_json: "{}".into(),
                created_at_ms: 9,
            },
        )
        .unwrap();
        let records = load_node_records(&conn, "r", "n").unwrap();
        assert_eq!(records.run.map(|run| run.run_id), Some("r".to_string()));
        let iterations: Vec<i64> = records.nodes.iter().map(|n| n.iteration).collect();
        assert_eq!(iterations, [0, 1]);
        let attempts: Vec<(i64, i64)> = records
            .attempts
            .iter()
            .map(|a| (a.iteration, a.attempt))
            .collect();
        assert_eq!(attempts, [(0, 1), (0, 2), (1, 1)]);
        assert_eq!(records.outputs.len(), 1);
        assert_eq!(
            load_node_records(&conn, "ghost", "n").unwrap(),
            NodeRecords::default()
        );
    }

    #[test]
    fn signal_and_event_seqs_are_contiguous_per_run() {
        let conn = db();
        insert_run(&conn, &run_row("a", 1)).unwrap();
        insert_run(&conn, &run_row("b", 2)).unwrap();
        for expected in 0..5 {
            assert_eq!(
                insert_signal(&conn, &signal("a", "go", expected)).unwrap(),
                expected
            );
            assert_eq!(
                append_event(&conn, "a", expected, "T", "{}").unwrap(),
                expected
            );
        }
        assert_eq!(insert_signal(&conn, &signal("b", "go", 0)).unwrap(), 0);
        assert_eq!(append_event(&conn, "b", 0, "T", "{}").unwrap(), 0);
        // Identical redelivery returns the first seq; any difference is a new signal.
        assert_eq!(insert_signal(&conn, &signal("a", "go", 2)).unwrap(), 2);
        let uncorrelated = SignalRow {
            correlation_id: None,
            ..signal("a", "go", 2)
        };
        assert_eq!(insert_signal(&conn, &uncorrelated).unwrap(), 5);
        assert_eq!(insert_signal(&conn, &uncorrelated).unwrap(), 5);
        let seqs: Vec<i64> = list_signals(&conn, "a")
            .unwrap()
            .iter()
            .map(|s| s.seq)
            .collect();
        assert_eq!(seqs, vec![0, 1, 2, 3, 4, 5]);

        let page = list_events(&conn, "a", 1, 2).unwrap();
        assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(page[0].event_type, "T");
        assert_eq!(list_events(&conn, "b", -1, 10).unwrap().len(), 1);
        assert_eq!(load_run_state(&conn, "a").unwrap().last_event_seq, 4);
    }

    #[test]
    fn consume_signal_once() {
        let conn = db();
        insert_run(&conn, &run_row("a", 1)).unwrap();
        let seq = insert_signal(&conn, &signal("a", "go", 1)).unwrap();
        consume_signal(&conn, "a", seq, "wait", 0).unwrap();
        consume_signal(&conn, "a", seq, "wait", 0).unwrap();
        let error = consume_signal(&conn, "a", seq, "other", 0).unwrap_err();
        assert!(
            matches!(&error, StorageError::Conflict(m) if m.contains("wait")),
            "{error}"
        );
        let error = consume_signal(&conn, "a", 42, "wait", 0).unwrap_err();
        assert!(matches!(error, StorageError::NotFound(_)), "{error}");
        let stored = &list_signals(&conn, "a").unwrap()[0];
        assert_eq!(stored.consumed_by_node.as_deref(), Some("wait"));
        assert_eq!(stored.consumed_by_iteration, Some(0));
    }

    #[test]
    fn pending_approvals_skip_terminal_runs_oldest_first() {
        let conn = db();
        insert_run(&conn, &run_row("live", 1)).unwrap();
        insert_run(&conn, &run_row("live2", 2)).unwrap();
        let done = RunRow {
            status: "cancelled".into(),
            ..run_row("done", 3)
        };
        insert_run(&conn, &done).unwrap();
        put_approval(&conn, &approval("live", "late", "requested", Some(50))).unwrap();
        put_approval(&conn, &approval("live", "never", "requested", None)).unwrap();
        put_approval(&conn, &approval("live", "decided", "approved", Some(1))).unwrap();
        put_approval(&conn, &approval("live2", "early", "requested", Some(10))).unwrap();
        put_approval(&conn, &approval("done", "orphan", "requested", Some(1))).unwrap();
        let nodes = |run: Option<&str>| -> Vec<String> {
            list_pending_approvals(&conn, run)
                .unwrap()
                .into_iter()
                .map(|a| a.node_id)
                .collect()
        };
        assert_eq!(nodes(None), ["never", "early", "late"]);
        assert_eq!(nodes(Some("live")), ["never", "late"]);
        assert!(nodes(Some("done")).is_empty());
    }

    #[test]
    fn active_runs_and_missing_run_state() {
        let conn = db();
        insert_run(&conn, &run_row("b", 2)).unwrap();
        insert_run(&conn, &run_row("a", 1)).unwrap();
        let finished = RunRow {
            status: "finished".into(),
            ..run_row("f", 0)
        };
        insert_run(&conn, &finished).unwrap();
        let active: Vec<String> = load_active_runs(&conn)
            .unwrap()
            .into_iter()
            .filter_map(|state| state.run.map(|run| run.run_id))
            .collect();
        assert_eq!(active, ["a", "b"]);
        let missing = load_run_state(&conn, "ghost").unwrap();
        assert_eq!(missing.run, None);
        assert_eq!(missing.last_event_seq, -1);
    }

    #[test]
    fn deleting_a_run_cascades() {
        let conn = db();
        insert_run(&conn, &run_row("r", 1)).unwrap();
        put_node(&conn, &node("r", "n", 0, "pending")).unwrap();
        append_event(&conn, "r", 1, "T", "{}").unwrap();
        insert_signal(&conn, &signal("r", "go", 1)).unwrap();
        conn.execute("DELETE FROM _smithers_runs WHERE run_id = 'r'", [])
            .unwrap();
        assert!(list_nodes(&conn, "r").unwrap().is_empty());
        assert!(list_events(&conn, "r", -1, 10).unwrap().is_empty());
        assert!(list_signals(&conn, "r").unwrap().is_empty());
    }

    #[test]
    fn error_mapping() {
        let failure = |code: i32| {
            rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), Some("m".into()))
        };
        assert!(matches!(
            map_error(failure(rusqlite::ffi::SQLITE_FULL)),
            StorageError::Rejected(_)
        ));
        assert!(matches!(
            map_error(failure(rusqlite::ffi::SQLITE_READONLY)),
            StorageError::Rejected(_)
        ));
        assert!(matches!(
            map_error(failure(rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE)),
            StorageError::Conflict(_)
        ));
        assert!(matches!(
            map_error(failure(rusqlite::ffi::SQLITE_BUSY)),
            StorageError::Sqlite(_)
        ));
        assert!(matches!(
            map_error(rusqlite::Error::QueryReturnedNoRows),
            StorageError::Sqlite(_)
        ));
    }

    #[test]
    fn integrity_and_pragmas_on_a_fresh_store() {
        let conn = db();
        assert_eq!(integrity_check(&conn).unwrap(), vec!["ok".to_string()]);
        let pragmas = read_pragmas(&conn).unwrap();
        assert_eq!(pragmas.schema_version, migrations::latest_version());
        assert!(pragmas.foreign_keys);
    }
    fn cron(cron_id: &str, created_at_ms: i64) -> CronRow {
        CronRow {
            cron_id: cron_id.into(),
            pattern: "0 3 * * *".into(),
            workflow_path: "gateway:nightly".into(),
            enabled: true,
            created_at_ms,
            last_run_at_ms: None,
            next_run_at_ms: Some(1_000),
            error_json: None,
        }
    }

    /// Goal: the cron statements keep what DATA.md §8 says an upsert keeps, order rows by
    /// creation, and make the scheduler's claim a real compare-and-set.
    #[test]
    fn cron_rows_upsert_claim_record_and_delete() {
        let conn = db();
        upsert_cron(&conn, &cron("b", 20)).unwrap();
        upsert_cron(&conn, &cron("a", 30)).unwrap();
        record_cron_run(&conn, "b", 500, Some(2_000), Some("boom")).unwrap();
        // An upsert of an existing id keeps created_at_ms, last_run_at_ms and error_json.
        let replacement = CronRow {
            pattern: "*/5 * * * *".into(),
            enabled: false,
            created_at_ms: 99,
            last_run_at_ms: None,
            next_run_at_ms: Some(3_000),
            ..cron("b", 99)
        };
        upsert_cron(&conn, &replacement).unwrap();
        let b = get_cron(&conn, "b").unwrap().unwrap();
        assert_eq!(
            b,
            CronRow {
                pattern: "*/5 * * * *".into(),
                enabled: false,
                created_at_ms: 20,
                last_run_at_ms: Some(500),
                next_run_at_ms: Some(3_000),
                error_json: Some("boom".into()),
                ..cron("b", 20)
            }
        );
        let ids: Vec<String> = list_crons(&conn)
            .unwrap()
            .into_iter()
            .map(|row| row.cron_id)
            .collect();
        assert_eq!(ids, vec!["b".to_string(), "a".to_string()]);
        // Rows created in the same millisecond list in creation order, not by id.
        upsert_cron(&conn, &cron("z-same-ms", 30)).unwrap();
        upsert_cron(&conn, &cron("0-same-ms", 30)).unwrap();
        let ids: Vec<String> = list_crons(&conn)
            .unwrap()
            .into_iter()
            .map(|row| row.cron_id)
            .collect();
        assert_eq!(ids, vec!["b", "a", "z-same-ms", "0-same-ms"]);
        for id in ["z-same-ms", "0-same-ms"] {
            delete_cron(&conn, id).unwrap();
        }

        // The claim needs the expected next time and an enabled row.
        assert!(matches!(
            claim_cron(&conn, "a", Some(999), 10, 20),
            Err(StorageError::Conflict(_))
        ));
        assert!(matches!(
            claim_cron(&conn, "b", Some(3_000), 10, 20),
            Err(StorageError::Conflict(_))
        ));
        claim_cron(&conn, "a", Some(1_000), 10, 20).unwrap();
        assert!(matches!(
            claim_cron(&conn, "a", Some(1_000), 11, 21),
            Err(StorageError::Conflict(_))
        ));
        let a = get_cron(&conn, "a").unwrap().unwrap();
        assert_eq!((a.last_run_at_ms, a.next_run_at_ms), (Some(10), Some(20)));
        // NULL matches NULL.
        record_cron_run(&conn, "a", 10, None, Some("x")).unwrap();
        claim_cron(&conn, "a", None, 30, 40).unwrap();
        let a = get_cron(&conn, "a").unwrap().unwrap();
        assert_eq!((a.next_run_at_ms, a.error_json), (Some(40), None));

        delete_cron(&conn, "a").unwrap();
        assert!(matches!(
            delete_cron(&conn, "a"),
            Err(StorageError::NotFound(_))
        ));
        // Recording on a deleted row is not an error.
        record_cron_run(&conn, "a", 1, None, None).unwrap();
        assert_eq!(get_cron(&conn, "a").unwrap(), None);
    }

    // Goal: the lineage walk is breadth first with siblings in creation order, cuts cycles,
    // stops at the limit (root included) and answers None for an absent run; the catalog lists
    // every `_smithers_` table with the newest migration.
    #[test]
    fn descendants_and_catalog() {
        let conn = db();
        let insert = |id: &str, parent: Option<&str>, created: i64| {
            let mut row = run_row(id, created);
            row.parent_run_id = parent.map(str::to_string);
            insert_run(&conn, &row).unwrap();
        };
        insert("root", Some("leaf"), 1);
        insert("b", Some("root"), 3);
        insert("a", Some("root"), 2);
        insert("leaf", Some("a"), 4);
        let ids = |limit: usize| -> Vec<(String, Option<String>, u32)> {
            list_run_descendants(&conn, "root", limit)
                .unwrap()
                .unwrap()
                .into_iter()
                .map(|r| (r.run_id, r.parent_run_id, r.depth))
                .collect()
        };
        let some = |s: &str| Some(s.to_string());
        assert_eq!(
            ids(100),
            vec![
                ("root".to_string(), None, 0),
                ("a".to_string(), some("root"), 1),
                ("b".to_string(), some("root"), 1),
                ("leaf".to_string(), some("a"), 2),
            ]
        );
        assert_eq!(ids(2).len(), 2);
        assert_eq!(list_run_descendants(&conn, "nope", 5).unwrap(), None);

        let catalog = schema_catalog(&conn).unwrap();
        assert_eq!(catalog.newest_migration, Some(migrations::latest_version()));
        let tables: Vec<&str> = catalog
            .entries
            .iter()
            .filter(|e| e.kind == "table")
            .map(|e| e.name.as_str())
            .collect();
        assert!(tables.contains(&"_smithers_runs"), "{tables:?}");
        assert!(
            tables.contains(&"_smithers_schema_migrations"),
            "{tables:?}"
        );
        assert!(catalog
            .entries
            .iter()
            .all(|e| e.name.starts_with("_smithers_")));
    }
}
