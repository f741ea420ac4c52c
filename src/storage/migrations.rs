//! Versioned, embedded schema migrations, run once at open by `storage::thread::open` before the
//! storage thread starts.
//!
//! It owns the schema (DATA.md table and column names) and the `_smithers_schema_migrations`
//! ledger. It must never edit a migration that has shipped: a recorded migration whose checksum
//! differs from the embedded SQL makes `migrate` refuse to start, because the database would no
//! longer be described by the code. New schema goes in a new entry with the next id.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::queries::map_error;
use super::StorageError;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// One embedded migration: `(id, name, sql)`. Ids are strictly increasing from 1; the newest id is
/// the schema version (`PRAGMA user_version`, `getSchemaSignature.schemaVersion`).
pub type Migration = (i64, &'static str, &'static str);

/// Every migration, in order. Append only.
pub const MIGRATIONS: &[Migration] = &[
    (1, "runs and per-run tables", MIGRATION_1_RUNS),
    (
        2,
        "cron, time-travel audit and docs",
        MIGRATION_2_CRON_AUDIT_DOCS,
    ),
    (
        3,
        "memory facts and scorer results",
        MIGRATION_3_MEMORY_SCORES,
    ),
];

/// The schema version a fully migrated database reports.
pub fn latest_version() -> i64 {
    MIGRATIONS.last().map_or(0, |(id, _, _)| *id)
}

// Statuses are spelled out in a CHECK so that no code path (ours or an operator's shell) can store
// a status the engine does not know (DATA.md §3: "the only values the store accepts"). The list
// must match `RUN_STATUSES`; a test checks it.
const MIGRATION_1_RUNS: &str = r#"
CREATE TABLE _smithers_runs (
    run_id                 TEXT PRIMARY KEY NOT NULL,
    parent_run_id          TEXT,
    workflow_name          TEXT NOT NULL,
    workflow_path          TEXT,
    workflow_hash          TEXT,
    status                 TEXT NOT NULL CHECK (status IN (
                               'running', 'waiting-approval', 'waiting-event', 'waiting-timer',
                               'waiting-quota', 'paused', 'finished', 'failed', 'cancelled',
                               'continued')),
    created_at_ms          INTEGER NOT NULL,
    started_at_ms          INTEGER,
    finished_at_ms         INTEGER,
    heartbeat_at_ms        INTEGER,
    runtime_owner_id       TEXT,
    cancel_requested_at_ms INTEGER,
    pause_requested_at_ms  INTEGER,
    error_json             TEXT,
    config_json            TEXT,
    input_json             TEXT NOT NULL,
    idempotency_key        TEXT
) STRICT;
-- UNIQUE on a nullable column would also allow many NULLs, but a partial index says the intent.
CREATE UNIQUE INDEX _smithers_runs_idempotency_key
    ON _smithers_runs (idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX _smithers_runs_status_heartbeat ON _smithers_runs (status, heartbeat_at_ms);
CREATE INDEX _smithers_runs_created ON _smithers_runs (created_at_ms DESC);
CREATE INDEX _smithers_runs_parent ON _smithers_runs (parent_run_id);

CREATE TABLE _smithers_frames (
    run_id          TEXT NOT NULL REFERENCES _smithers_runs (run_id) ON DELETE CASCADE,
    frame_no        INTEGER NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    xml_json        TEXT NOT NULL,
    xml_hash        TEXT NOT NULL,
    task_index_json TEXT NOT NULL,
    PRIMARY KEY (run_id, frame_no)
) STRICT, WITHOUT ROWID;

CREATE TABLE _smithers_nodes (
    run_id        TEXT NOT NULL REFERENCES _smithers_runs (run_id) ON DELETE CASCADE,
    node_id       TEXT NOT NULL,
    iteration     INTEGER NOT NULL,
    state         TEXT NOT NULL,
    last_attempt  INTEGER,
    updated_at_ms INTEGER NOT NULL,
    output_table  TEXT NOT NULL,
    label         TEXT,
    PRIMARY KEY (run_id, node_id, iteration)
) STRICT, WITHOUT ROWID;

CREATE TABLE _smithers_attempts (
    run_id              TEXT NOT NULL REFERENCES _smithers_runs (run_id) ON DELETE CASCADE,
    node_id             TEXT NOT NULL,
    iteration           INTEGER NOT NULL,
    attempt             INTEGER NOT NULL,
    state               TEXT NOT NULL,
    started_at_ms       INTEGER NOT NULL,
    finished_at_ms      INTEGER,
    heartbeat_at_ms     INTEGER,
    heartbeat_data_json TEXT,
    error_json          TEXT,
    meta_json           TEXT,
    exit_code           INTEGER,
    PRIMARY KEY (run_id, node_id, iteration, attempt)
) STRICT, WITHOUT ROWID;

CREATE TABLE _smithers_outputs (
    run_id        TEXT NOT NULL REFERENCES _smithers_runs (run_id) ON DELETE CASCADE,
    node_id       TEXT NOT NULL,
    iteration     INTEGER NOT NULL,
    payload_json  TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (run_id, node_id, iteration)
) STRICT, WITHOUT ROWID;

CREATE TABLE _smithers_approvals (
    run_id          TEXT NOT NULL REFERENCES _smithers_runs (run_id) ON DELETE CASCADE,
    node_id         TEXT NOT NULL,
    iteration       INTEGER NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('requested', 'approved', 'denied')),
    requested_at_ms INTEGER,
    decided_at_ms   INTEGER,
    note            TEXT,
    decided_by      TEXT,
    request_json    TEXT,
    decision_json   TEXT,
    auto_approved   INTEGER NOT NULL DEFAULT 0 CHECK (auto_approved IN (0, 1)),
    PRIMARY KEY (run_id, node_id, iteration)
) STRICT, WITHOUT ROWID;
CREATE INDEX _smithers_approvals_status ON _smithers_approvals (status);

CREATE TABLE _smithers_signals (
    run_id                TEXT NOT NULL REFERENCES _smithers_runs (run_id) ON DELETE CASCADE,
    seq                   INTEGER NOT NULL CHECK (seq >= 0),
    signal_name           TEXT NOT NULL,
    correlation_id        TEXT,
    payload_json          TEXT NOT NULL,
    received_at_ms        INTEGER NOT NULL,
    received_by           TEXT,
    consumed_by_node      TEXT,
    consumed_by_iteration INTEGER,
    PRIMARY KEY (run_id, seq)
) STRICT, WITHOUT ROWID;
CREATE INDEX _smithers_signals_match
    ON _smithers_signals (run_id, signal_name, correlation_id, received_at_ms);

CREATE TABLE _smithers_events (
    run_id       TEXT NOT NULL REFERENCES _smithers_runs (run_id) ON DELETE CASCADE,
    seq          INTEGER NOT NULL CHECK (seq >= 0),
    timestamp_ms INTEGER NOT NULL,
    type         TEXT NOT NULL,
    payload_json TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
) STRICT, WITHOUT ROWID;
CREATE INDEX _smithers_events_type ON _smithers_events (run_id, type);
"#;

const MIGRATION_2_CRON_AUDIT_DOCS: &str = r#"
CREATE TABLE _smithers_cron (
    cron_id        TEXT PRIMARY KEY NOT NULL,
    pattern        TEXT NOT NULL,
    workflow_path  TEXT NOT NULL,
    enabled        INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    created_at_ms  INTEGER NOT NULL,
    last_run_at_ms INTEGER,
    next_run_at_ms INTEGER,
    error_json     TEXT
) STRICT;

CREATE TABLE _smithers_time_travel_audit (
    id            INTEGER PRIMARY KEY,
    run_id        TEXT NOT NULL REFERENCES _smithers_runs (run_id) ON DELETE CASCADE,
    from_frame_no INTEGER,
    to_frame_no   INTEGER,
    caller        TEXT,
    result        TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    details_json  TEXT
) STRICT;
CREATE INDEX _smithers_time_travel_audit_run ON _smithers_time_travel_audit (run_id);

CREATE TABLE _smithers_docs (
    path          TEXT PRIMARY KEY NOT NULL,
    kind          TEXT NOT NULL DEFAULT 'ticket',
    content       TEXT NOT NULL,
    content_hash  TEXT NOT NULL,
    status        TEXT,
    updated_at_ms INTEGER NOT NULL,
    deleted_at_ms INTEGER
) STRICT;
CREATE INDEX _smithers_docs_kind ON _smithers_docs (kind, deleted_at_ms, updated_at_ms);
"#;

// DATA.md §9. Scores belong to a run (they cascade with it, like every per-run table); memory
// facts outlive the run that wrote them, so their run columns are provenance, not a reference.
const MIGRATION_3_MEMORY_SCORES: &str = r#"
CREATE TABLE _smithers_memory_facts (
    namespace     TEXT NOT NULL,
    key           TEXT NOT NULL,
    value_json    TEXT NOT NULL,
    schema_sig    TEXT,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    ttl_ms        INTEGER,
    run_id        TEXT,
    node_id       TEXT,
    iteration     INTEGER,
    PRIMARY KEY (namespace, key)
) STRICT, WITHOUT ROWID;

CREATE TABLE _smithers_scorers (
    id                TEXT PRIMARY KEY NOT NULL,
    run_id            TEXT NOT NULL REFERENCES _smithers_runs (run_id) ON DELETE CASCADE,
    node_id           TEXT NOT NULL,
    iteration         INTEGER NOT NULL,
    attempt           INTEGER NOT NULL,
    scorer_id         TEXT NOT NULL,
    scorer_name       TEXT NOT NULL,
    source            TEXT NOT NULL CHECK (source IN ('live', 'batch')),
    score             REAL NOT NULL,
    reason            TEXT,
    meta_json         TEXT,
    input_json        TEXT,
    output_json       TEXT,
    ground_truth_json TEXT,
    context_json      TEXT,
    latency_ms        INTEGER,
    scored_at_ms      INTEGER NOT NULL,
    duration_ms       INTEGER,
    UNIQUE (run_id, node_id, iteration, attempt, scorer_id, source)
) STRICT;
-- listScores and listScoresForRuns read by run in scored_at_ms order.
CREATE INDEX _smithers_scorers_run_scored ON _smithers_scorers (run_id, scored_at_ms);
"#;

const LEDGER_SQL: &str = "CREATE TABLE IF NOT EXISTS _smithers_schema_migrations (
    id            INTEGER PRIMARY KEY NOT NULL,
    name          TEXT NOT NULL,
    applied_at_ms INTEGER NOT NULL,
    checksum      TEXT NOT NULL,
    destructive   INTEGER NOT NULL DEFAULT 0,
    details_json  TEXT
) STRICT";

/// Lowercase hex SHA-256 of a migration's SQL, as recorded in the ledger.
pub fn checksum(sql: &str) -> String {
    let digest = Sha256::digest(sql.as_bytes());
    let mut hex = String::with_capacity(64);
    for byte in digest {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

/// Applies every embedded migration not yet recorded, each in its own IMMEDIATE transaction
/// (DDL and its ledger row commit together, so a crash leaves either both or neither). Returns the
/// schema version. Refuses (error, nothing applied) when the ledger records a migration this
/// binary does not embed, or one whose checksum differs.
pub fn migrate(conn: &mut Connection, now_ms: i64) -> Result<i64, StorageError> {
    let latest = latest_version();
    // A read-only database that is already current must still open (read-only fault mode), so
    // nothing is written unless something is missing.
    let ledger_exists: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_schema
                            WHERE type = 'table' AND name = '_smithers_schema_migrations')",
            [],
            |row| row.get(0),
        )
        .map_err(map_error)?;
    if !ledger_exists {
        conn.execute_batch(LEDGER_SQL).map_err(map_error)?;
    }
    let recorded = recorded_checksums(conn)?;
    verify_recorded(&recorded)?;

    for (id, name, sql) in MIGRATIONS {
        if recorded.contains_key(id) {
            continue;
        }
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(map_error)?;
        tx.execute_batch(sql).map_err(|error| {
            StorageError::Sqlite(format!("migration {id} ({name}) failed: {error}"))
        })?;
        tx.execute(
            "INSERT INTO _smithers_schema_migrations
                 (id, name, applied_at_ms, checksum, destructive, details_json)
             VALUES (?1, ?2, ?3, ?4, 0, NULL)",
            params![id, name, now_ms, checksum(sql)],
        )
        .map_err(map_error)?;
        tx.commit().map_err(map_error)?;
        tracing::info!(id, name, "applied schema migration");
    }

    let user_version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(map_error)?;
    if user_version != latest {
        // PRAGMA arguments cannot be bound; `latest` is a compile-time integer.
        conn.execute_batch(&format!("PRAGMA user_version = {latest}"))
            .map_err(map_error)?;
    }
    Ok(latest)
}

fn recorded_checksums(conn: &Connection) -> Result<BTreeMap<i64, String>, StorageError> {
    let mut statement = conn
        .prepare("SELECT id, checksum FROM _smithers_schema_migrations ORDER BY id")
        .map_err(map_error)?;
    let rows = statement
        .query_map([], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
        })
        .map_err(map_error)?;
    let mut recorded = BTreeMap::new();
    for row in rows {
        let (id, sum) = row.map_err(map_error)?;
        recorded.insert(id, sum);
    }
    Ok(recorded)
}

fn verify_recorded(recorded: &BTreeMap<i64, String>) -> Result<(), StorageError> {
    for (id, recorded_sum) in recorded {
        let Some((_, name, sql)) = MIGRATIONS.iter().find(|(known, _, _)| known == id) else {
            return Err(StorageError::Sqlite(format!(
                "database records schema migration {id}, which this binary does not know \
                 (newest known: {}); refusing to start",
                latest_version()
            )));
        };
        let embedded = checksum(sql);
        if &embedded != recorded_sum {
            return Err(StorageError::Sqlite(format!(
                "schema migration {id} ({name}) was applied with checksum {recorded_sum}, but \
                 this binary embeds {embedded}; refusing to start"
            )));
        }
    }
    Ok(())
}

/// The recorded checksum of one migration, for tests and diagnostics.
pub fn recorded_checksum(conn: &Connection, id: i64) -> Result<Option<String>, StorageError> {
    conn.query_row(
        "SELECT checksum FROM _smithers_schema_migrations WHERE id = ?1",
        [id],
        |row| row.get(0),
    )
    .optional()
    .map_err(map_error)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::storage::RUN_STATUSES;

    #[test]
    fn ids_are_strictly_increasing_from_one() {
        let ids: Vec<i64> = MIGRATIONS.iter().map(|(id, _, _)| *id).collect();
        let expected: Vec<i64> = (1..=MIGRATIONS.len() as i64).collect();
        assert_eq!(ids, expected);
    }

    #[test]
    fn run_status_check_lists_every_status() {
        for status in RUN_STATUSES {
            assert!(
                MIGRATION_1_RUNS.contains(&format!("'{status}'")),
                "{status}"
            );
        }
    }

    #[test]
    fn in_memory_migrate_twice_is_a_noop() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(migrate(&mut conn, 1).unwrap(), latest_version());
        assert_eq!(migrate(&mut conn, 2).unwrap(), latest_version());
        let rows: i64 = conn
            .query_row(
                "SELECT count(*) FROM _smithers_schema_migrations",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(rows, MIGRATIONS.len() as i64);
        let applied: i64 = conn
            .query_row(
                "SELECT max(applied_at_ms) FROM _smithers_schema_migrations",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(applied, 1, "second run must not re-apply");
        assert_eq!(
            recorded_checksum(&conn, 1).unwrap().unwrap(),
            checksum(MIGRATION_1_RUNS)
        );
    }

    #[test]
    fn unknown_recorded_migration_refuses() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, 1).unwrap();
        conn.execute(
            "INSERT INTO _smithers_schema_migrations VALUES (999, 'future', 0, 'x', 0, NULL)",
            [],
        )
        .unwrap();
        let error = migrate(&mut conn, 1).unwrap_err();
        assert!(error.to_string().contains("999"), "{error}");
    }
}
