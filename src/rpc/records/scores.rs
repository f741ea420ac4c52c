//! Scorer results (`_smithers_scorers`, DATA.md §9): `listScores` (METHODS.md §4.5, legacy
//! codes), `listScoresForRuns` (§4.6) and `getScoreDetail` (§4.7), whose parameters are validated
//! strictly (unknown keys refused, bounds on every id and page field) with `INVALID_REQUEST`,
//! unknown runs `RunNotFound`. Our runtime has no scorers, so rows come only from a store that
//! a scorer wrote; the methods read whatever is there.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use crate::error::{ErrorCode, RpcError};
use crate::rpc::common::{ask, invalid_request, nullable, nullable_i64, optional_str, storage};
use crate::rpc::dispatch::CallContext;
use crate::rpc::frame::object;
use crate::rpc::{Object, Value};
use crate::storage::records::{RecordsQuery, ScoreDetail, ScoreQuery, ScoreRow};
use crate::storage::Command;
use simd_json::prelude::*;

/// `listScoresForRuns` bounds (METHODS.md §4.6).
pub const SCORE_RUN_IDS_MAX: usize = 30;
pub const SCORE_ID_CHARS_MAX: usize = 256;
pub const SCORE_OFFSET_MAX: u64 = 9_999;
pub const SCORE_LIMIT_MAX: u64 = 500;
pub const SCORE_WINDOW_MAX: u64 = 10_000;

const LIST_SCORES_FOR_RUNS_KEYS: &[&str] = &[
    "runIds",
    "nodeId",
    "scorerId",
    "scorerName",
    "source",
    "order",
    "offset",
    "limit",
];
const GET_SCORE_DETAIL_KEYS: &[&str] = &["runId", "scoreId"];

fn run_not_found(run_id: &str) -> RpcError {
    RpcError::new(ErrorCode::RunNotFound, format!("Run not found: {run_id}"))
}

/// The legacy per-run row (`listScores`).
fn score_fields(row: &ScoreRow) -> Vec<(&'static str, Value)> {
    vec![
        ("runId", Value::from(row.run_id.as_str())),
        ("nodeId", Value::from(row.node_id.as_str())),
        ("iteration", Value::from(row.iteration)),
        ("attempt", Value::from(row.attempt)),
        ("scorerId", Value::from(row.scorer_id.as_str())),
        ("scorerName", Value::from(row.scorer_name.as_str())),
        ("source", Value::from(row.source.as_str())),
        ("score", Value::from(row.score)),
        ("reason", nullable(row.reason.as_deref())),
        ("scoredAtMs", Value::from(row.scored_at_ms)),
        ("latencyMs", nullable_i64(row.latency_ms)),
        ("durationMs", nullable_i64(row.duration_ms)),
    ]
}

/// The comparison row: the score row plus its persisted identity.
fn comparison_fields(row: &ScoreRow) -> Vec<(&'static str, Value)> {
    let mut fields = score_fields(row);
    fields.push(("scoreId", Value::from(row.id.as_str())));
    fields
}

/// `listScores`: one run's scores, `nodeId` an exact filter.
pub async fn list_scores(context: &CallContext<'_>, params: &Value) -> Result<Value, RpcError> {
    let Some(run_id) = optional_str(params, "runId").filter(|id| !id.is_empty()) else {
        return Err(invalid_request("runId is required"));
    };
    let node_id = optional_str(params, "nodeId").map(str::to_string);
    let rows = ask(&storage(context)?, |reply| {
        Command::Records(RecordsQuery::ListScores {
            run_id: run_id.to_string(),
            node_id,
            reply,
        })
    })
    .await?
    .ok_or_else(|| RpcError::new(ErrorCode::NotFound, format!("Run not found: {run_id}")))?;
    Ok(Value::Array(Box::new(
        rows.iter().map(|row| object(score_fields(row))).collect(),
    )))
}

/// Refuses any key outside `allowed` (the first one, in the order sent).
fn only_keys(params: &Object, allowed: &[&str], method: &str) -> Result<(), RpcError> {
    match params.keys().find(|key| !allowed.contains(&key.as_ref())) {
        Some(key) => Err(invalid_request(format!(
            "Unexpected {method} parameter: {key}"
        ))),
        None => Ok(()),
    }
}

/// A trimmed, non-blank id of at most 256 characters.
fn bounded_id(value: Option<&Value>, name: &str) -> Result<String, RpcError> {
    let Some(text) = value.and_then(|v| v.as_str()) else {
        return Err(invalid_request(format!("{name} must be a string")));
    };
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(invalid_request(format!("{name} must not be blank")));
    }
    if trimmed.chars().count() > SCORE_ID_CHARS_MAX {
        return Err(invalid_request(format!(
            "{name} must be at most {SCORE_ID_CHARS_MAX} characters"
        )));
    }
    Ok(trimmed.to_string())
}

/// An optional exact-match string filter: absent, or a string.
fn string_filter(params: &Object, name: &str) -> Result<Option<String>, RpcError> {
    match params.get(name) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.to_string())),
        Some(_) => Err(invalid_request(format!("{name} must be a string"))),
    }
}

/// An optional JSON integer within `min..=max` (an integral float such as `3.0` counts).
fn bounded_integer(
    params: &Object,
    name: &str,
    min: u64,
    max: u64,
    default: u64,
) -> Result<u64, RpcError> {
    let Some(value) = params.get(name) else {
        return Ok(default);
    };
    let number = if value.is_str() {
        None
    } else {
        value.cast_f64()
    };
    match number {
        Some(n) if n.is_finite() && n.fract() == 0.0 && n >= min as f64 && n <= max as f64 => {
            Ok(n as u64)
        }
        _ => Err(invalid_request(format!(
            "{name} must be an integer from {min} to {max}"
        ))),
    }
}

/// `runIds`: an array of at most 30 strings, each trimmed, non-blank, at most 256 characters;
/// duplicates keep their first occurrence.
fn run_ids(params: &Object) -> Result<Vec<String>, RpcError> {
    let Some(Value::Array(items)) = params.get("runIds") else {
        return Err(invalid_request("runIds must be an array of run ids"));
    };
    if items.len() > SCORE_RUN_IDS_MAX {
        return Err(invalid_request(format!(
            "runIds must contain at most {SCORE_RUN_IDS_MAX} run ids"
        )));
    }
    let mut ids: Vec<String> = Vec::with_capacity(items.len());
    for item in items.iter() {
        let id = bounded_id(Some(item), "runIds entries")?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// `listScoresForRuns` validation, in the order the fields are listed in METHODS.md §4.6.
fn score_query(params: &Value) -> Result<ScoreQuery, RpcError> {
    let empty = Object::default();
    let params = params.as_object().unwrap_or(&empty);
    only_keys(params, LIST_SCORES_FOR_RUNS_KEYS, "listScoresForRuns")?;
    let run_ids = run_ids(params)?;
    let node_id = string_filter(params, "nodeId")?;
    let scorer_id = string_filter(params, "scorerId")?;
    let scorer_name = string_filter(params, "scorerName")?;
    let source = match params.get("source") {
        None => None,
        Some(Value::String(source)) if source == "live" || source == "batch" => {
            Some(source.to_string())
        }
        Some(_) => return Err(invalid_request("source must be live or batch")),
    };
    let descending = match params.get("order") {
        None => false,
        Some(Value::String(order)) if order == "scoredAtAsc" => false,
        Some(Value::String(order)) if order == "scoredAtDesc" => true,
        Some(_) => return Err(invalid_request("order must be scoredAtAsc or scoredAtDesc")),
    };
    let offset = bounded_integer(params, "offset", 0, SCORE_OFFSET_MAX, 0)?;
    let limit = bounded_integer(params, "limit", 1, SCORE_LIMIT_MAX, SCORE_LIMIT_MAX)?;
    if offset + limit > SCORE_WINDOW_MAX {
        return Err(invalid_request(format!(
            "offset + limit must not exceed {SCORE_WINDOW_MAX}"
        )));
    }
    Ok(ScoreQuery {
        run_ids,
        node_id,
        scorer_id,
        scorer_name,
        source,
        descending,
        offset: usize::try_from(offset).unwrap_or(usize::MAX),
        limit: usize::try_from(limit).unwrap_or(usize::MAX),
    })
}

/// `listScoresForRuns`: `{rows, total}` over explicit runs, globally ordered and paged.
pub async fn list_scores_for_runs(
    context: &CallContext<'_>,
    params: &Value,
) -> Result<Value, RpcError> {
    let query = score_query(params)?;
    let page = if query.run_ids.is_empty() {
        Default::default()
    } else {
        ask(&storage(context)?, |reply| {
            Command::Records(RecordsQuery::ListScoresForRuns { query, reply })
        })
        .await?
    };
    if let Some(run_id) = &page.missing_run {
        return Err(run_not_found(run_id));
    }
    Ok(object(vec![
        (
            "rows",
            Value::Array(Box::new(
                page.rows
                    .iter()
                    .map(|row| object(comparison_fields(row)))
                    .collect(),
            )),
        ),
        ("total", Value::from(page.total)),
    ]))
}

/// A stored JSON column decoded; absent is null, malformed is `Internal`.
fn decode_json(text: Option<&str>, score_id: &str, column: &str) -> Result<Value, RpcError> {
    let Some(text) = text else {
        return Ok(Value::null());
    };
    let mut bytes = text.as_bytes().to_vec();
    simd_json::to_owned_value(&mut bytes).map_err(|_| {
        RpcError::new(
            ErrorCode::Internal,
            format!("Score {score_id} has malformed {column}"),
        )
    })
}

fn detail_value(detail: &ScoreDetail) -> Result<Value, RpcError> {
    let id = detail.row.id.as_str();
    let mut fields = comparison_fields(&detail.row);
    fields.push((
        "meta",
        decode_json(detail.meta_json.as_deref(), id, "meta_json")?,
    ));
    fields.push((
        "input",
        decode_json(detail.input_json.as_deref(), id, "input_json")?,
    ));
    fields.push((
        "output",
        decode_json(detail.output_json.as_deref(), id, "output_json")?,
    ));
    fields.push((
        "groundTruth",
        decode_json(detail.ground_truth_json.as_deref(), id, "ground_truth_json")?,
    ));
    fields.push((
        "context",
        decode_json(detail.context_json.as_deref(), id, "context_json")?,
    ));
    Ok(object(fields))
}

/// `getScoreDetail`: one score with its JSON columns decoded.
pub async fn get_score_detail(
    context: &CallContext<'_>,
    params: &Value,
) -> Result<Value, RpcError> {
    let empty = Object::default();
    let fields = params.as_object().unwrap_or(&empty);
    only_keys(fields, GET_SCORE_DETAIL_KEYS, "getScoreDetail")?;
    let run_id = bounded_id(fields.get("runId"), "runId")?;
    let score_id = bounded_id(fields.get("scoreId"), "scoreId")?;
    let found = ask(&storage(context)?, |reply| {
        Command::Records(RecordsQuery::GetScore {
            run_id: run_id.clone(),
            score_id: score_id.clone(),
            reply,
        })
    })
    .await?;
    match found {
        None => Err(run_not_found(&run_id)),
        Some(None) => Err(RpcError::new(
            ErrorCode::ScoreNotFound,
            format!("Score not found on run {run_id}: {score_id}"),
        )),
        Some(Some(detail)) => detail_value(&detail),
    }
}
