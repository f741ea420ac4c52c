//! Records kept beside runs (DATA.md §9): work docs (`_smithers_docs`, tickets), memory facts
//! (`_smithers_memory_facts`) and scorer results (`_smithers_scorers`). Their reads travel as one
//! `Command::Records` (typed query, typed reply) and their writes as `Mutation::Doc`, so they
//! share the storage thread's batches, savepoints and commit like every other command.
//!
//! It owns these tables' SQL and row mapping. Like `queries`, it never opens, begins, commits or
//! rolls back anything, never panics on a SQLite error and binds every value (the only SQL built
//! at run time is a list of `?N` placeholders, one per run id of a bounded request).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::queries::map_error;
use super::{Reply, StorageError, StorageResult, WriteOutcome};
use rusqlite::types::Value as SqlValue;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row};
use sha2::{Digest, Sha256};

/// Rows a list without its own limit returns at most (tickets, memory facts, one run's scores).
pub const RECORDS_LIST_MAX: usize = 10_000;
/// The doc kind a new doc gets when none is given and none is stored (DATA.md §9).
pub const DEFAULT_DOC_KIND: &str = "ticket";

/// `_smithers_docs`, PK `path`. `deleted_at_ms` is the tombstone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocRow {
    pub path: String,
    pub kind: String,
    pub content: String,
    /// Lowercase hex SHA-256 of `content`.
    pub content_hash: String,
    pub status: Option<String>,
    pub updated_at_ms: i64,
    pub deleted_at_ms: Option<i64>,
}

/// `_smithers_memory_facts`, PK (namespace, key); provenance columns are not read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryFactRow {
    pub namespace: String,
    pub key: String,
    pub value_json: String,
    pub schema_sig: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub ttl_ms: Option<i64>,
}

/// One `_smithers_scorers` row without its JSON detail columns.
#[derive(Clone, Debug, PartialEq)]
pub struct ScoreRow {
    pub id: String,
    pub run_id: String,
    pub node_id: String,
    pub iteration: i64,
    pub attempt: i64,
    pub scorer_id: String,
    pub scorer_name: String,
    pub source: String,
    pub score: f64,
    pub reason: Option<String>,
    pub scored_at_ms: i64,
    pub latency_ms: Option<i64>,
    pub duration_ms: Option<i64>,
}

/// A score with its JSON detail columns as stored (text, decoded by the caller).
#[derive(Clone, Debug, PartialEq)]
pub struct ScoreDetail {
    pub row: ScoreRow,
    pub meta_json: Option<String>,
    pub input_json: Option<String>,
    pub output_json: Option<String>,
    pub ground_truth_json: Option<String>,
    pub context_json: Option<String>,
}

/// `listDocs` after validation (METHODS.md §3.16).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DocFilter {
    pub kind: Option<String>,
    pub include_deleted: bool,
    /// Rows updated strictly after this instant.
    pub updated_after_ms: Option<f64>,
    pub limit: usize,
}

/// `listScoresForRuns` after validation (METHODS.md §4.6): at most 30 distinct run ids.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScoreQuery {
    pub run_ids: Vec<String>,
    pub node_id: Option<String>,
    pub scorer_id: Option<String>,
    pub scorer_name: Option<String>,
    pub source: Option<String>,
    pub descending: bool,
    pub offset: usize,
    pub limit: usize,
}

/// One page of `listScoresForRuns`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScorePage {
    /// The first requested run that does not exist (nothing else is read then).
    pub missing_run: Option<String>,
    pub rows: Vec<ScoreRow>,
    /// Matching rows before paging.
    pub total: u64,
}

/// Writes to `_smithers_docs`; each pushes the row as it is afterwards to `WriteOutcome::docs`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DocMutation {
    /// Create or replace a doc and clear its tombstone (a deleted path is revived). `kind` and
    /// `status` default to the stored row's, else `ticket` and null (METHODS.md §4.8).
    Put {
        path: String,
        content: String,
        kind: Option<String>,
        status: Option<String>,
        now_ms: i64,
    },
    /// Change the content (re-hashed) and/or status of a live doc; `updated_at_ms` = now always.
    /// `NotFound` when the path is unknown or deleted.
    Patch {
        path: String,
        content: Option<String>,
        status: Option<String>,
        now_ms: i64,
    },
    /// Tombstone a live doc; `NotFound` when the path is unknown or already deleted.
    Delete { path: String, now_ms: i64 },
}

/// Reads of these tables, each with its typed reply.
#[derive(Debug)]
pub enum RecordsQuery {
    /// Newest `updated_at_ms` first, then path.
    ListDocs {
        filter: DocFilter,
        reply: Reply<Vec<DocRow>>,
    },
    /// Live docs (tombstones hidden), newest first then path, at most `RECORDS_LIST_MAX`.
    ListTickets {
        kind: Option<String>,
        reply: Reply<Vec<DocRow>>,
    },
    /// By namespace then key, at most `RECORDS_LIST_MAX`.
    ListMemoryFacts {
        namespace: Option<String>,
        reply: Reply<Vec<MemoryFactRow>>,
    },
    /// One run's scores by `scored_at_ms` (then node, iteration, attempt, scorer, id), at most
    /// `RECORDS_LIST_MAX`; None when the run does not exist.
    ListScores {
        run_id: String,
        node_id: Option<String>,
        reply: Reply<Option<Vec<ScoreRow>>>,
    },
    ListScoresForRuns {
        query: ScoreQuery,
        reply: Reply<ScorePage>,
    },
    /// None when the run does not exist; Some(None) when the score is not on it.
    GetScore {
        run_id: String,
        score_id: String,
        reply: Reply<Option<Option<Box<ScoreDetail>>>>,
    },
}

/// A query's result, held by the storage thread until its batch commits.
#[derive(Debug)]
pub enum RecordsAnswer {
    Docs(StorageResult<Vec<DocRow>>),
    MemoryFacts(StorageResult<Vec<MemoryFactRow>>),
    Scores(StorageResult<Option<Vec<ScoreRow>>>),
    ScorePage(StorageResult<ScorePage>),
    Score(StorageResult<Option<Option<Box<ScoreDetail>>>>),
}

impl RecordsAnswer {
    pub fn error(&self) -> Option<&StorageError> {
        match self {
            RecordsAnswer::Docs(result) => result.as_ref().err(),
            RecordsAnswer::MemoryFacts(result) => result.as_ref().err(),
            RecordsAnswer::Scores(result) => result.as_ref().err(),
            RecordsAnswer::ScorePage(result) => result.as_ref().err(),
            RecordsAnswer::Score(result) => result.as_ref().err(),
        }
    }

    /// The failure answer of the right kind for `query`.
    pub fn failed(query: &RecordsQuery, error: StorageError) -> RecordsAnswer {
        match query {
            RecordsQuery::ListDocs { .. } | RecordsQuery::ListTickets { .. } => {
                RecordsAnswer::Docs(Err(error))
            }
            RecordsQuery::ListMemoryFacts { .. } => RecordsAnswer::MemoryFacts(Err(error)),
            RecordsQuery::ListScores { .. } => RecordsAnswer::Scores(Err(error)),
            RecordsQuery::ListScoresForRuns { .. } => RecordsAnswer::ScorePage(Err(error)),
            RecordsQuery::GetScore { .. } => RecordsAnswer::Score(Err(error)),
        }
    }
}

/// Runs one query (inside the batch's transaction).
pub fn execute(conn: &Connection, query: &RecordsQuery) -> RecordsAnswer {
    match query {
        RecordsQuery::ListDocs { filter, .. } => RecordsAnswer::Docs(list_docs(conn, filter)),
        RecordsQuery::ListTickets { kind, .. } => {
            RecordsAnswer::Docs(list_tickets(conn, kind.as_deref()))
        }
        RecordsQuery::ListMemoryFacts { namespace, .. } => {
            RecordsAnswer::MemoryFacts(list_memory_facts(conn, namespace.as_deref()))
        }
        RecordsQuery::ListScores {
            run_id, node_id, ..
        } => RecordsAnswer::Scores(list_scores(conn, run_id, node_id.as_deref())),
        RecordsQuery::ListScoresForRuns { query, .. } => {
            RecordsAnswer::ScorePage(score_page(conn, query))
        }
        RecordsQuery::GetScore {
            run_id, score_id, ..
        } => RecordsAnswer::Score(get_score(conn, run_id, score_id)),
    }
}

fn send<T>(reply: Reply<T>, result: StorageResult<T>) {
    if reply.send(result).is_err() {
        tracing::debug!("storage reply receiver dropped");
    }
}

/// Sends `answer` on `query`'s reply channel.
pub fn deliver(query: RecordsQuery, answer: RecordsAnswer) {
    match (query, answer) {
        (RecordsQuery::ListDocs { reply, .. }, RecordsAnswer::Docs(result))
        | (RecordsQuery::ListTickets { reply, .. }, RecordsAnswer::Docs(result)) => {
            send(reply, result)
        }
        (RecordsQuery::ListMemoryFacts { reply, .. }, RecordsAnswer::MemoryFacts(result)) => {
            send(reply, result)
        }
        (RecordsQuery::ListScores { reply, .. }, RecordsAnswer::Scores(result)) => {
            send(reply, result)
        }
        (RecordsQuery::ListScoresForRuns { reply, .. }, RecordsAnswer::ScorePage(result)) => {
            send(reply, result)
        }
        (RecordsQuery::GetScore { reply, .. }, RecordsAnswer::Score(result)) => send(reply, result),
        (query, _) => {
            // Unreachable by construction (`execute` and `failed` pick the kind from the query);
            // answered rather than dropped so no caller waits forever.
            tracing::error!("records answer kind mismatch");
            let error = StorageError::Sqlite("internal: answer kind mismatch".into());
            let answer = RecordsAnswer::failed(&query, error);
            deliver(query, answer);
        }
    }
}

/// Lowercase hex SHA-256 of `content` (the docs table's `content_hash`).
pub fn content_hash(content: &str) -> String {
    Sha256::digest(content.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Docs
// ---------------------------------------------------------------------------------------------

macro_rules! doc_columns {
    () => {
        "path, kind, content, content_hash, status, updated_at_ms, deleted_at_ms"
    };
}

fn doc_from_row(row: &Row<'_>) -> rusqlite::Result<DocRow> {
    Ok(DocRow {
        path: row.get(0)?,
        kind: row.get(1)?,
        content: row.get(2)?,
        content_hash: row.get(3)?,
        status: row.get(4)?,
        updated_at_ms: row.get(5)?,
        deleted_at_ms: row.get(6)?,
    })
}

fn limit_param(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// Applies one doc write, pushing the resulting row to `outcome.docs`.
pub fn apply_doc(
    conn: &Connection,
    mutation: &DocMutation,
    outcome: &mut WriteOutcome,
) -> StorageResult<()> {
    let row = match mutation {
        DocMutation::Put {
            path,
            content,
            kind,
            status,
            now_ms,
        } => put_doc(
            conn,
            path,
            content,
            kind.as_deref(),
            status.as_deref(),
            *now_ms,
        )?,
        DocMutation::Patch {
            path,
            content,
            status,
            now_ms,
        } => patch_doc(conn, path, content.as_deref(), status.as_deref(), *now_ms)?,
        DocMutation::Delete { path, now_ms } => delete_doc(conn, path, *now_ms)?,
    };
    outcome.docs.push(row);
    Ok(())
}

fn put_doc(
    conn: &Connection,
    path: &str,
    content: &str,
    kind: Option<&str>,
    status: Option<&str>,
    now_ms: i64,
) -> StorageResult<DocRow> {
    let mut statement = conn
        .prepare_cached(concat!(
            "INSERT INTO _smithers_docs (",
            doc_columns!(),
            ") VALUES (?1, COALESCE(?2, 'ticket'), ?3, ?4, ?5, ?6, NULL) \
             ON CONFLICT (path) DO UPDATE SET kind = COALESCE(?2, kind), \
             content = excluded.content, content_hash = excluded.content_hash, \
             status = COALESCE(?5, status), updated_at_ms = excluded.updated_at_ms, \
             deleted_at_ms = NULL RETURNING ",
            doc_columns!()
        ))
        .map_err(map_error)?;
    statement
        .query_row(
            params![path, kind, content, content_hash(content), status, now_ms],
            doc_from_row,
        )
        .map_err(map_error)
}

fn patch_doc(
    conn: &Connection,
    path: &str,
    content: Option<&str>,
    status: Option<&str>,
    now_ms: i64,
) -> StorageResult<DocRow> {
    let mut statement = conn
        .prepare_cached(concat!(
            "UPDATE _smithers_docs SET content = COALESCE(?2, content), \
             content_hash = COALESCE(?3, content_hash), status = COALESCE(?4, status), \
             updated_at_ms = ?5 WHERE path = ?1 AND deleted_at_ms IS NULL RETURNING ",
            doc_columns!()
        ))
        .map_err(map_error)?;
    statement
        .query_row(
            params![path, content, content.map(content_hash), status, now_ms],
            doc_from_row,
        )
        .optional()
        .map_err(map_error)?
        .ok_or_else(|| StorageError::NotFound(format!("doc {path}")))
}

fn delete_doc(conn: &Connection, path: &str, now_ms: i64) -> StorageResult<DocRow> {
    let mut statement = conn
        .prepare_cached(concat!(
            "UPDATE _smithers_docs SET deleted_at_ms = ?2 \
             WHERE path = ?1 AND deleted_at_ms IS NULL RETURNING ",
            doc_columns!()
        ))
        .map_err(map_error)?;
    statement
        .query_row(params![path, now_ms], doc_from_row)
        .optional()
        .map_err(map_error)?
        .ok_or_else(|| StorageError::NotFound(format!("doc {path}")))
}

pub fn list_docs(conn: &Connection, filter: &DocFilter) -> StorageResult<Vec<DocRow>> {
    let mut statement = conn
        .prepare_cached(concat!(
            "SELECT ",
            doc_columns!(),
            " FROM _smithers_docs WHERE (?1 IS NULL OR kind = ?1) \
             AND (?2 OR deleted_at_ms IS NULL) AND (?3 IS NULL OR updated_at_ms > ?3) \
             ORDER BY updated_at_ms DESC, path ASC LIMIT ?4"
        ))
        .map_err(map_error)?;
    let rows = statement
        .query_map(
            params![
                filter.kind,
                filter.include_deleted,
                filter.updated_after_ms,
                limit_param(filter.limit)
            ],
            doc_from_row,
        )
        .map_err(map_error)?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .map_err(map_error)
}

pub fn list_tickets(conn: &Connection, kind: Option<&str>) -> StorageResult<Vec<DocRow>> {
    list_docs(
        conn,
        &DocFilter {
            kind: kind.map(str::to_string),
            include_deleted: false,
            updated_after_ms: None,
            limit: RECORDS_LIST_MAX,
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Memory facts
// ---------------------------------------------------------------------------------------------

pub fn list_memory_facts(
    conn: &Connection,
    namespace: Option<&str>,
) -> StorageResult<Vec<MemoryFactRow>> {
    let mut statement = conn
        .prepare_cached(
            "SELECT namespace, key, value_json, schema_sig, created_at_ms, updated_at_ms, ttl_ms \
             FROM _smithers_memory_facts WHERE (?1 IS NULL OR namespace = ?1) \
             ORDER BY namespace ASC, key ASC LIMIT ?2",
        )
        .map_err(map_error)?;
    let rows = statement
        .query_map(params![namespace, limit_param(RECORDS_LIST_MAX)], |row| {
            Ok(MemoryFactRow {
                namespace: row.get(0)?,
                key: row.get(1)?,
                value_json: row.get(2)?,
                schema_sig: row.get(3)?,
                created_at_ms: row.get(4)?,
                updated_at_ms: row.get(5)?,
                ttl_ms: row.get(6)?,
            })
        })
        .map_err(map_error)?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .map_err(map_error)
}

// ---------------------------------------------------------------------------------------------
// Scores
// ---------------------------------------------------------------------------------------------

macro_rules! score_columns {
    () => {
        "id, run_id, node_id, iteration, attempt, scorer_id, scorer_name, source, score, reason, \
         scored_at_ms, latency_ms, duration_ms"
    };
}

fn score_from_row(row: &Row<'_>) -> rusqlite::Result<ScoreRow> {
    Ok(ScoreRow {
        id: row.get(0)?,
        run_id: row.get(1)?,
        node_id: row.get(2)?,
        iteration: row.get(3)?,
        attempt: row.get(4)?,
        scorer_id: row.get(5)?,
        scorer_name: row.get(6)?,
        source: row.get(7)?,
        score: row.get(8)?,
        reason: row.get(9)?,
        scored_at_ms: row.get(10)?,
        latency_ms: row.get(11)?,
        duration_ms: row.get(12)?,
    })
}

fn run_exists(conn: &Connection, run_id: &str) -> StorageResult<bool> {
    let mut statement = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM _smithers_runs WHERE run_id = ?1)")
        .map_err(map_error)?;
    statement
        .query_row([run_id], |row| row.get(0))
        .map_err(map_error)
}

pub fn list_scores(
    conn: &Connection,
    run_id: &str,
    node_id: Option<&str>,
) -> StorageResult<Option<Vec<ScoreRow>>> {
    if !run_exists(conn, run_id)? {
        return Ok(None);
    }
    let mut statement = conn
        .prepare_cached(concat!(
            "SELECT ",
            score_columns!(),
            " FROM _smithers_scorers WHERE run_id = ?1 AND (?2 IS NULL OR node_id = ?2) \
             ORDER BY scored_at_ms ASC, node_id ASC, iteration ASC, attempt ASC, \
             scorer_id ASC, id ASC LIMIT ?3"
        ))
        .map_err(map_error)?;
    let rows = statement
        .query_map(
            params![run_id, node_id, limit_param(RECORDS_LIST_MAX)],
            score_from_row,
        )
        .map_err(map_error)?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .map(Some)
        .map_err(map_error)
}

/// Every run is checked before any score is read, so an unknown run is reported whatever the
/// filters; count and page come from the same transaction's snapshot.
pub fn score_page(conn: &Connection, query: &ScoreQuery) -> StorageResult<ScorePage> {
    for run_id in &query.run_ids {
        if !run_exists(conn, run_id)? {
            return Ok(ScorePage {
                missing_run: Some(run_id.clone()),
                ..ScorePage::default()
            });
        }
    }
    if query.run_ids.is_empty() {
        return Ok(ScorePage::default());
    }
    // ?1..?4 are the filters, run ids follow from ?5; the list is at most 30 long (validated by
    // the caller), so the statement cache holds a handful of shapes.
    let run_list = (0..query.run_ids.len())
        .map(|index| format!("?{}", index + 5))
        .collect::<Vec<_>>()
        .join(", ");
    let filter = format!(
        "FROM _smithers_scorers WHERE run_id IN ({run_list}) AND (?1 IS NULL OR node_id = ?1) \
         AND (?2 IS NULL OR scorer_id = ?2) AND (?3 IS NULL OR scorer_name = ?3) \
         AND (?4 IS NULL OR source = ?4)"
    );
    let mut values: Vec<SqlValue> = [
        &query.node_id,
        &query.scorer_id,
        &query.scorer_name,
        &query.source,
    ]
    .into_iter()
    .map(|value| value.clone().map_or(SqlValue::Null, SqlValue::Text))
    .collect();
    values.extend(query.run_ids.iter().cloned().map(SqlValue::Text));

    let mut count = conn
        .prepare_cached(&format!("SELECT count(*) {filter}"))
        .map_err(map_error)?;
    let total: i64 = count
        .query_row(params_from_iter(values.iter()), |row| row.get(0))
        .map_err(map_error)?;

    let direction = if query.descending { "DESC" } else { "ASC" };
    let limit_index = values.len() + 1;
    let sql = format!(
        concat!(
            "SELECT ",
            score_columns!(),
            " {filter} ORDER BY scored_at_ms {direction}, run_id ASC, node_id ASC, \
             iteration ASC, attempt ASC, scorer_id ASC, id ASC LIMIT ?{limit} OFFSET ?{offset}"
        ),
        filter = filter,
        direction = direction,
        limit = limit_index,
        offset = limit_index + 1,
    );
    values.push(SqlValue::Integer(limit_param(query.limit)));
    values.push(SqlValue::Integer(limit_param(query.offset)));
    let mut statement = conn.prepare_cached(&sql).map_err(map_error)?;
    let rows = statement
        .query_map(params_from_iter(values.iter()), score_from_row)
        .map_err(map_error)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(map_error)?;
    Ok(ScorePage {
        missing_run: None,
        rows,
        total: u64::try_from(total).unwrap_or(0),
    })
}

pub fn get_score(
    conn: &Connection,
    run_id: &str,
    score_id: &str,
) -> StorageResult<Option<Option<Box<ScoreDetail>>>> {
    if !run_exists(conn, run_id)? {
        return Ok(None);
    }
    let mut statement = conn
        .prepare_cached(concat!(
            "SELECT ",
            score_columns!(),
            ", meta_json, input_json, output_json, ground_truth_json, context_json \
             FROM _smithers_scorers WHERE run_id = ?1 AND id = ?2"
        ))
        .map_err(map_error)?;
    statement
        .query_row([run_id, score_id], |row| {
            Ok(Box::new(ScoreDetail {
                row: score_from_row(row)?,
                meta_json: row.get(13)?,
                input_json: row.get(14)?,
                output_json: row.get(15)?,
                ground_truth_json: row.get(16)?,
                context_json: row.get(17)?,
            }))
        })
        .optional()
        .map(Some)
        .map_err(map_error)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::storage::migrations;

    fn store() -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("PRAGMA foreign_keys = ON").unwrap();
        migrations::migrate(&mut conn, 1).unwrap();
        conn
    }

    fn apply(conn: &Connection, mutation: DocMutation) -> StorageResult<DocRow> {
        let mut outcome = WriteOutcome::default();
        apply_doc(conn, &mutation, &mut outcome)?;
        Ok(outcome.docs.pop().unwrap())
    }

    fn put(path: &str, content: &str, kind: Option<&str>, now_ms: i64) -> DocMutation {
        DocMutation::Put {
            path: path.into(),
            content: content.into(),
            kind: kind.map(str::to_string),
            status: None,
            now_ms,
        }
    }

    #[test]
    fn content_hash_is_lowercase_hex_sha256() {
        assert_eq!(
            content_hash(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            content_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn docs_put_patch_delete_and_revive() {
        let conn = store();
        let created = apply(&conn, put("a", "one", None, 10)).unwrap();
        assert_eq!(created.kind, "ticket");
        assert_eq!(created.status, None);
        assert_eq!(created.content_hash, content_hash("one"));

        let patched = apply(
            &conn,
            DocMutation::Patch {
                path: "a".into(),
                content: None,
                status: Some("open".into()),
                now_ms: 20,
            },
        )
        .unwrap();
        assert_eq!(
            (patched.content.as_str(), patched.status.as_deref()),
            ("one", Some("open"))
        );
        assert_eq!(patched.updated_at_ms, 20);

        // Replacing keeps the stored kind and status when none is given.
        apply(
            &conn,
            DocMutation::Put {
                path: "a".into(),
                content: "two".into(),
                kind: Some("plan".into()),
                status: None,
                now_ms: 25,
            },
        )
        .unwrap();
        let replaced = apply(&conn, put("a", "three", None, 30)).unwrap();
        assert_eq!(replaced.kind, "plan");
        assert_eq!(replaced.status.as_deref(), Some("open"));

        let deleted = apply(
            &conn,
            DocMutation::Delete {
                path: "a".into(),
                now_ms: 40,
            },
        )
        .unwrap();
        assert_eq!(deleted.deleted_at_ms, Some(40));
        for mutation in [
            DocMutation::Delete {
                path: "a".into(),
                now_ms: 41,
            },
            DocMutation::Patch {
                path: "a".into(),
                content: Some("x".into()),
                status: None,
                now_ms: 41,
            },
            DocMutation::Delete {
                path: "missing".into(),
                now_ms: 41,
            },
        ] {
            assert!(matches!(
                apply(&conn, mutation),
                Err(StorageError::NotFound(_))
            ));
        }
        assert!(list_tickets(&conn, None).unwrap().is_empty());

        let revived = apply(&conn, put("a", "four", None, 50)).unwrap();
        assert_eq!(revived.deleted_at_ms, None);
        assert_eq!(revived.kind, "plan");
        assert_eq!(list_tickets(&conn, None).unwrap(), vec![revived]);
    }

    #[test]
    fn list_docs_filters_and_orders() {
        let conn = store();
        apply(&conn, put("b", "b", None, 10)).unwrap();
        apply(&conn, put("a", "a", None, 10)).unwrap();
        apply(&conn, put("c", "c", Some("spec"), 30)).unwrap();
        apply(
            &conn,
            DocMutation::Delete {
                path: "b".into(),
                now_ms: 40,
            },
        )
        .unwrap();
        let paths = |filter: DocFilter| -> Vec<String> {
            list_docs(&conn, &filter)
                .unwrap()
                .into_iter()
                .map(|row| row.path)
                .collect()
        };
        let all = DocFilter {
            limit: 100,
            ..DocFilter::default()
        };
        assert_eq!(paths(all.clone()), ["c", "a"]);
        assert_eq!(
            paths(DocFilter {
                include_deleted: true,
                ..all.clone()
            }),
            ["c", "a", "b"]
        );
        assert_eq!(
            paths(DocFilter {
                kind: Some("ticket".into()),
                include_deleted: true,
                ..all.clone()
            }),
            ["a", "b"]
        );
        assert_eq!(
            paths(DocFilter {
                updated_after_ms: Some(10.0),
                ..all.clone()
            }),
            ["c"]
        );
        assert_eq!(paths(DocFilter { limit: 1, ..all }), ["c"]);
    }
}
