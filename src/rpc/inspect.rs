//! The read-side inspection methods: `listRunDescendants` (`runs.descendants`),
//! `listRunTokenUsage`, `getSchemaSignature`, `getRunDiff`, `whatHappened` (METHODS.md §3.10,
//! 3.12, 3.13, 3.22, 3.23) and the legacy readers `runs.diff`, `frames.list`, `frames.get`,
//! `attempts.list`, `attempts.get`, `listNodeStates` (§5.2–5.5). Each validates in the spec's
//! order with its own (legacy or v1) codes and reads through the storage thread; nothing here
//! writes. It also owns `whatHappened`'s bounded cache of recaps of terminal targets.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::common::{
    ask, invalid_input, invalid_request, nullable, nullable_i64, storage, stored_run,
};
use super::devtools::{iteration_lenient, node_id_param, read_run_id, run_not_found};
use super::dispatch::CallContext;
use super::frame::{object, write_value};
use super::methods::{positive_limit, run_id_param};
use super::Value;
use crate::error::{ErrorCode, RpcError};
use crate::storage::{
    AttemptRow, Command, FrameRow, NodeRow, RunRow, RunState, SchemaCatalog, StorageHandle,
};
use sha2::{Digest, Sha256};
use simd_json::prelude::*;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, OnceLock};

/// `listRunDescendants`' default `limit` (the root counts).
pub const DESCENDANTS_LIMIT_DEFAULT: usize = 1_000;
/// `frames.list`'s default `limit`.
pub const FRAMES_LIMIT_DEFAULT: usize = 50;
/// Most rows any of these lists returns, whatever `limit` asks (descendants, frames, attempts,
/// token-usage events): the reference has no maximum, we keep every reply bounded.
pub const INSPECT_ROWS_MAX: usize = 10_000;
/// Recaps of terminal targets kept by `whatHappened` (METHODS.md §3.23), oldest evicted.
pub const WHAT_HAPPENED_CACHE_MAX: usize = 200;
/// Event type of persisted token usage (EVENTS.md §1, DATA.md §9).
const TOKEN_USAGE_EVENT: &str = "TokenUsageReported";
/// `getRunDiff`'s run id bound, in UTF-16 code units as JavaScript counts them.
const RUN_DIFF_RUN_ID_MAX: usize = 256;

fn parse_json(text: &str) -> Option<Value> {
    let mut bytes = text.as_bytes().to_vec();
    simd_json::to_owned_value(&mut bytes).ok()
}

fn to_json_text(value: &Value) -> String {
    let mut out = Vec::new();
    write_value(&mut out, value);
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn array(items: Vec<Value>) -> Value {
    Value::Array(Box::new(items))
}

async fn load_state(storage: &StorageHandle, run_id: &str) -> Result<RunState, RpcError> {
    ask(storage, |reply| Command::LoadRunState {
        run_id: run_id.to_string(),
        reply,
    })
    .await
}

fn legacy_run_not_found(run_id: &str) -> RpcError {
    RpcError::new(ErrorCode::NotFound, format!("Run not found: {run_id}"))
}

/// The reference's `asOptionalPositiveInt`: absent or null is None; otherwise the value as
/// JavaScript's `Number()` reads it (numbers, numeric strings, booleans) must be a finite number
/// greater than 0 and an integer, else `INVALID_INPUT`.
fn optional_positive_int(params: &Value, field: &str) -> Result<Option<i64>, RpcError> {
    let Some(value) = params.get(field).filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let number = match value {
        Value::String(text) => {
            let text = text.trim();
            if text.is_empty() {
                Some(0.0)
            } else {
                text.parse::<f64>().ok()
            }
        }
        Value::Static(simd_json::StaticNode::Bool(flag)) => Some(if *flag { 1.0 } else { 0.0 }),
        other => other.cast_f64(),
    };
    let Some(number) = number.filter(|n| n.is_finite() && *n > 0.0) else {
        return Err(invalid_input(format!(
            "{field} must be a finite number greater than 0."
        )));
    };
    if number.fract() != 0.0 {
        return Err(invalid_input(format!(
            "{field} must be an integer greater than 0."
        )));
    }
    // Beyond i64 every frame number is below it anyway.
    Ok(Some(if number >= i64::MAX as f64 {
        i64::MAX
    } else {
        number as i64
    }))
}

// ---------------------------------------------------------------------------------------------
// listRunDescendants (§3.12)
// ---------------------------------------------------------------------------------------------

/// `listRunDescendants` / `runs.descendants`: the run's lineage, breadth first, root first.
pub async fn list_run_descendants(
    context: &CallContext<'_>,
    params: &Value,
) -> Result<Value, RpcError> {
    let run_id = run_id_param(params)?;
    let storage = storage(context)?;
    let exists = stored_run(&storage, &run_id).await?.is_some();
    if !exists {
        return Err(legacy_run_not_found(&run_id));
    }
    let limit = positive_limit(params.get("limit"), DESCENDANTS_LIMIT_DEFAULT)?;
    let rows = ask(&storage, |reply| Command::ListRunDescendants {
        run_id: run_id.clone(),
        limit: limit.min(INSPECT_ROWS_MAX),
        reply,
    })
    .await?
    .ok_or_else(|| legacy_run_not_found(&run_id))?;
    Ok(array(
        rows.iter()
            .map(|row| {
                object(vec![
                    ("runId", Value::from(row.run_id.as_str())),
                    ("parentRunId", nullable(row.parent_run_id.as_deref())),
                    ("depth", Value::from(u64::from(row.depth))),
                ])
            })
            .collect(),
    ))
}

// ---------------------------------------------------------------------------------------------
// listRunTokenUsage (§3.10)
// ---------------------------------------------------------------------------------------------

/// One persisted `TokenUsageReported` event as `listRunTokenUsage` shows it: strings default to
/// `"unknown"`, numbers to 0, the timestamp to the event row's time.
pub fn token_usage_value(payload_json: &str, row_timestamp_ms: i64) -> Value {
    let payload = parse_json(payload_json).unwrap_or_else(|| Value::Object(Box::default()));
    let text = |name: &str| {
        Value::from(
            payload
                .get(name)
                .and_then(|v| v.as_str())
                .unwrap_or("unknown"),
        )
    };
    let number = |name: &str| match payload.get(name) {
        Some(value) if value.cast_f64().is_some_and(f64::is_finite) => value.clone(),
        _ => Value::from(0),
    };
    let timestamp = match payload.get("timestampMs") {
        Some(value) if value.cast_f64().is_some_and(f64::is_finite) => value.clone(),
        _ => Value::from(row_timestamp_ms),
    };
    object(vec![
        ("nodeId", text("nodeId")),
        ("iteration", number("iteration")),
        ("attempt", number("attempt")),
        ("model", text("model")),
        ("agent", text("agent")),
        ("inputTokens", number("inputTokens")),
        ("outputTokens", number("outputTokens")),
        ("cacheReadTokens", number("cacheReadTokens")),
        ("cacheWriteTokens", number("cacheWriteTokens")),
        ("reasoningTokens", number("reasoningTokens")),
        ("timestampMs", timestamp),
    ])
}

/// `listRunTokenUsage`: every persisted token-usage event of the run, by seq.
pub async fn list_run_token_usage(
    context: &CallContext<'_>,
    params: &Value,
) -> Result<Value, RpcError> {
    let run_id = run_id_param(params)?;
    let events = ask(&storage(context)?, |reply| Command::ListEventsOfType {
        run_id: run_id.clone(),
        event_type: TOKEN_USAGE_EVENT.to_string(),
        limit: INSPECT_ROWS_MAX,
        reply,
    })
    .await?
    .ok_or_else(|| run_not_found(&run_id))?;
    Ok(object(vec![
        ("runId", Value::from(run_id.as_str())),
        (
            "events",
            array(
                events
                    .iter()
                    .map(|event| token_usage_value(&event.payload_json, event.timestamp_ms))
                    .collect(),
            ),
        ),
    ]))
}

// ---------------------------------------------------------------------------------------------
// getSchemaSignature (§3.13)
// ---------------------------------------------------------------------------------------------

/// Per-table hashes and the catalog's signature. A table's component is the SHA-256 of its
/// `CREATE TABLE` text followed by the text of each of its indexes (by name); the signature is
/// the SHA-256 of `name TAB component LF` over the tables by name. Both ignore the order in
/// which the catalog lists its entries.
pub fn schema_signature(catalog: &SchemaCatalog) -> (String, BTreeMap<String, String>) {
    let mut tables: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut indexes: BTreeMap<(&str, &str), &str> = BTreeMap::new();
    for entry in &catalog.entries {
        match entry.kind.as_str() {
            "table" => tables.entry(&entry.name).or_default().push(&entry.sql),
            _ => {
                indexes.insert((&entry.table, &entry.name), &entry.sql);
            }
        }
    }
    let mut components = BTreeMap::new();
    let mut signature = Sha256::new();
    for (name, sqls) in &tables {
        let mut text = sqls.join("\n");
        for ((_, _), sql) in indexes
            .range((*name, "")..)
            .take_while(|((t, _), _)| t == name)
        {
            text.push('\n');
            text.push_str(sql);
        }
        let component = hex_sha256(text.as_bytes());
        signature.update(format!("{name}\t{component}\n").as_bytes());
        components.insert((*name).to_string(), component);
    }
    let signature = signature
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    (signature, components)
}

/// The migration ledger's id as `schemaVersion`: four digits, zero-padded (`"0002"`).
pub fn schema_version(newest_migration: Option<i64>) -> String {
    format!("{:04}", newest_migration.unwrap_or(0))
}

/// `getSchemaSignature`.
pub async fn get_schema_signature(context: &CallContext<'_>) -> Result<Value, RpcError> {
    let Some(storage) = context.state.storage.clone() else {
        // METHODS.md §3.13: the answer of a gateway without storage.
        return Ok(object(vec![
            ("schemaVersion", Value::from("0000")),
            ("signature", Value::from(hex_sha256(b"empty"))),
            ("components", Value::Object(Box::default())),
        ]));
    };
    let catalog = ask(&storage, |reply| Command::SchemaCatalog { reply }).await?;
    let (signature, components) = schema_signature(&catalog);
    Ok(object(vec![
        (
            "schemaVersion",
            Value::from(schema_version(catalog.newest_migration)),
        ),
        ("signature", Value::from(signature)),
        (
            "components",
            object(
                components
                    .iter()
                    .map(|(name, hash)| (name.as_str(), Value::from(hash.as_str())))
                    .collect(),
            ),
        ),
    ]))
}

// ---------------------------------------------------------------------------------------------
// getRunDiff (§3.22)
// ---------------------------------------------------------------------------------------------

/// `getRunDiff`: our runs record no VCS base revision, so every existing run answers
/// `VcsError` at the spec's third step.
pub async fn get_run_diff(context: &CallContext<'_>, params: &Value) -> Result<Value, RpcError> {
    let run_id = params
        .get("runId")
        .and_then(|v| v.as_str())
        .filter(|id| !id.is_empty() && id.encode_utf16().count() <= RUN_DIFF_RUN_ID_MAX)
        .ok_or_else(|| {
            RpcError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "runId must be a non-empty string of at most {RUN_DIFF_RUN_ID_MAX} characters."
                ),
            )
        })?;
    let run = stored_run(&storage(context)?, run_id).await?;
    if run.is_none() {
        return Err(run_not_found(run_id));
    }
    Err(RpcError::new(
        ErrorCode::VcsError,
        "Run has no immutable VCS base revision.",
    ))
}

// ---------------------------------------------------------------------------------------------
// frames.list, frames.get (§5.3)
// ---------------------------------------------------------------------------------------------

/// `["<nodeId>::<iteration>", …]` of the frame's task index: the tasks mounted in that frame.
fn mounted_task_ids(task_index_json: &str) -> String {
    let ids = parse_json(task_index_json)
        .and_then(|index| index.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|entry| {
            let node_id = entry.get("nodeId")?.as_str()?;
            let iteration = entry.get("iteration")?.as_i64()?;
            Some(Value::from(format!("{node_id}::{iteration}")))
        })
        .collect();
    to_json_text(&array(ids))
}

/// A frame row as the wire shows it (DATA.md §5). We store every frame in full.
pub fn frame_value(frame: &FrameRow) -> Value {
    object(vec![
        ("runId", Value::from(frame.run_id.as_str())),
        ("frameNo", Value::from(frame.frame_no)),
        ("createdAtMs", Value::from(frame.created_at_ms)),
        ("xmlJson", Value::from(frame.xml_json.as_str())),
        ("xmlHash", Value::from(frame.xml_hash.as_str())),
        ("encoding", Value::from("full")),
        (
            "mountedTaskIdsJson",
            Value::from(mounted_task_ids(&frame.task_index_json)),
        ),
        ("taskIndexJson", Value::from(frame.task_index_json.as_str())),
        ("note", Value::null()),
    ])
}

async fn latest_frame_no(storage: &StorageHandle, run_id: &str) -> Result<Option<i64>, RpcError> {
    ask(storage, |reply| Command::LatestFrame {
        run_id: run_id.to_string(),
        reply,
    })
    .await
}

/// `frames.list`: newest first.
pub async fn frames_list(context: &CallContext<'_>, params: &Value) -> Result<Value, RpcError> {
    let run_id = run_id_param(params)?;
    let storage = storage(context)?;
    if latest_frame_no(&storage, &run_id).await?.is_none() {
        return Err(legacy_run_not_found(&run_id));
    }
    let limit = optional_positive_int(params, "limit")?.map_or(FRAMES_LIMIT_DEFAULT, |n| {
        usize::try_from(n).unwrap_or(usize::MAX)
    });
    let after_frame_no = optional_positive_int(params, "afterFrameNo")?;
    let frames = ask(&storage, |reply| Command::ListFrames {
        run_id: run_id.clone(),
        limit: limit.min(INSPECT_ROWS_MAX),
        after_frame_no,
        reply,
    })
    .await?
    .ok_or_else(|| legacy_run_not_found(&run_id))?;
    Ok(array(frames.iter().map(frame_value).collect()))
}

/// `frames.get`: `frameNo`, or the latest frame.
pub async fn frames_get(context: &CallContext<'_>, params: &Value) -> Result<Value, RpcError> {
    let run_id = run_id_param(params)?;
    let storage = storage(context)?;
    let Some(latest) = latest_frame_no(&storage, &run_id).await? else {
        return Err(legacy_run_not_found(&run_id));
    };
    let frame_no = optional_positive_int(params, "frameNo")?.unwrap_or(latest);
    let not_found = || RpcError::new(ErrorCode::NotFound, "Frame not found");
    if frame_no == 0 {
        return Err(not_found());
    }
    let frame = ask(&storage, |reply| Command::GetFrame {
        run_id: run_id.clone(),
        frame_no,
        reply,
    })
    .await?
    .ok_or_else(not_found)?;
    Ok(frame_value(&frame))
}

// ---------------------------------------------------------------------------------------------
// attempts.list, attempts.get (§5.4)
// ---------------------------------------------------------------------------------------------

/// An attempt row as the wire shows it (DATA.md §6). Columns our engine has no use for (VCS
/// pointers, agent response text, the cache flag) carry their empty values.
pub fn attempt_value(attempt: &AttemptRow) -> Value {
    object(vec![
        ("runId", Value::from(attempt.run_id.as_str())),
        ("nodeId", Value::from(attempt.node_id.as_str())),
        ("iteration", Value::from(attempt.iteration)),
        ("attempt", Value::from(attempt.attempt)),
        ("state", Value::from(attempt.state.as_str())),
        ("startedAtMs", Value::from(attempt.started_at_ms)),
        ("finishedAtMs", nullable_i64(attempt.finished_at_ms)),
        ("heartbeatAtMs", nullable_i64(attempt.heartbeat_at_ms)),
        (
            "heartbeatDataJson",
            nullable(attempt.heartbeat_data_json.as_deref()),
        ),
        ("errorJson", nullable(attempt.error_json.as_deref())),
        ("jjPointer", Value::null()),
        ("cached", Value::from(false)),
        ("metaJson", nullable(attempt.meta_json.as_deref())),
        ("responseText", Value::null()),
        ("jjCwd", Value::null()),
    ])
}

/// A finite JSON number that is a whole number, as an i64.
fn whole_number(value: &Value) -> Option<i64> {
    value.as_i64().or_else(|| {
        value
            .as_f64()
            .filter(|f| f.is_finite() && f.fract() == 0.0 && f.abs() < 9.2e18)
            .map(|f| f as i64)
    })
}

/// A finite JSON number (the reference's `asNumber`).
fn finite_number(value: Option<&Value>) -> Option<f64> {
    value
        .filter(|v| v.is_number())
        .and_then(|v| v.cast_f64())
        .filter(|f| f.is_finite())
}

/// `attempts.list`: one node iteration's attempts (newest first) or the whole run's.
pub async fn attempts_list(context: &CallContext<'_>, params: &Value) -> Result<Value, RpcError> {
    let run_id = run_id_param(params)?;
    let storage = storage(context)?;
    let node_id = params
        .get("nodeId")
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty());
    let iteration = params.get("iteration").filter(|v| v.is_number());
    let node = match node_id {
        None => None,
        Some(node_id) => match iteration {
            None => Some((node_id.to_string(), 0)),
            // A fractional iteration names no row: the run must still exist.
            Some(value) => Some((node_id.to_string(), whole_number(value).unwrap_or(-1))),
        },
    };
    let rows = ask(&storage, |reply| Command::ListAttempts {
        run_id: run_id.clone(),
        node,
        limit: INSPECT_ROWS_MAX,
        reply,
    })
    .await?
    .ok_or_else(|| legacy_run_not_found(&run_id))?;
    Ok(array(rows.iter().map(attempt_value).collect()))
}

/// `attempts.get`: one attempt row.
pub async fn attempts_get(context: &CallContext<'_>, params: &Value) -> Result<Value, RpcError> {
    let text = |name: &str| {
        params
            .get(name)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
    };
    let (Some(run_id), Some(node_id), Some(iteration), Some(attempt)) = (
        text("runId"),
        text("nodeId"),
        finite_number(params.get("iteration")),
        finite_number(params.get("attempt")),
    ) else {
        return Err(invalid_request(
            "runId, nodeId, iteration, and attempt are required",
        ));
    };
    let not_found = || RpcError::new(ErrorCode::NotFound, "Attempt not found");
    let whole = |n: f64| (n.fract() == 0.0 && n.abs() < 9.2e18).then_some(n as i64);
    let rows = ask(&storage(context)?, |reply| Command::ListAttempts {
        run_id: run_id.to_string(),
        node: Some((node_id.to_string(), whole(iteration).unwrap_or(-1))),
        limit: INSPECT_ROWS_MAX,
        reply,
    })
    .await?
    .ok_or_else(|| legacy_run_not_found(run_id))?;
    let wanted = whole(attempt).ok_or_else(not_found)?;
    let found = rows
        .iter()
        .find(|row| row.attempt == wanted)
        .map(attempt_value);
    found.ok_or_else(not_found)
}

// ---------------------------------------------------------------------------------------------
// listNodeStates (§5.5)
// ---------------------------------------------------------------------------------------------

/// The newest attempt of each (node, iteration).
fn latest_attempts(attempts: &[AttemptRow]) -> HashMap<(&str, i64), &AttemptRow> {
    let mut latest: HashMap<(&str, i64), &AttemptRow> = HashMap::new();
    for attempt in attempts {
        let key = (attempt.node_id.as_str(), attempt.iteration);
        if latest
            .get(&key)
            .is_none_or(|seen| seen.attempt < attempt.attempt)
        {
            latest.insert(key, attempt);
        }
    }
    latest
}

/// `listNodeStates`: one row per node iteration, times from its newest attempt.
pub async fn list_node_states(
    context: &CallContext<'_>,
    params: &Value,
) -> Result<Value, RpcError> {
    let run_id = run_id_param(params)?;
    let state = load_state(&storage(context)?, &run_id).await?;
    if state.run.is_none() {
        return Err(legacy_run_not_found(&run_id));
    }
    let latest = latest_attempts(&state.attempts);
    Ok(array(
        state
            .nodes
            .iter()
            .map(|node| {
                let attempt = latest.get(&(node.node_id.as_str(), node.iteration));
                object(vec![
                    ("nodeId", Value::from(node.node_id.as_str())),
                    ("iteration", Value::from(node.iteration)),
                    ("state", Value::from(node.state.as_str())),
                    ("lastAttempt", nullable_i64(node.last_attempt)),
                    ("updatedAtMs", Value::from(node.updated_at_ms)),
                    ("label", nullable(node.label.as_deref())),
                    (
                        "startedAtMs",
                        nullable_i64(attempt.map(|a| a.started_at_ms)),
                    ),
                    (
                        "finishedAtMs",
                        nullable_i64(attempt.and_then(|a| a.finished_at_ms)),
                    ),
                ])
            })
            .collect(),
    ))
}

// ---------------------------------------------------------------------------------------------
// whatHappened (§3.23)
// ---------------------------------------------------------------------------------------------

/// States whose recap can no longer change, for runs and nodes alike.
const TERMINAL_TARGET_STATES: &[&str] = &["finished", "failed", "cancelled"];

/// Recaps of terminal targets by state fingerprint, oldest evicted past
/// `WHAT_HAPPENED_CACHE_MAX`. Process-wide: a fingerprint names the run by id and creation time,
/// so two gateways in one process (tests) do not share entries by accident.
#[derive(Default)]
struct RecapCache {
    entries: HashMap<[u8; 32], Value>,
    order: VecDeque<[u8; 32]>,
}

impl RecapCache {
    fn get(&self, key: &[u8; 32]) -> Option<Value> {
        self.entries.get(key).cloned()
    }

    fn insert(&mut self, key: [u8; 32], value: Value) {
        if self.entries.insert(key, value).is_some() {
            return;
        }
        self.order.push_back(key);
        while self.order.len() > WHAT_HAPPENED_CACHE_MAX {
            if let Some(oldest) = self.order.pop_front() {
                self.entries.remove(&oldest);
            }
        }
    }
}

fn recap_cache() -> &'static Mutex<RecapCache> {
    static CACHE: OnceLock<Mutex<RecapCache>> = OnceLock::new();
    CACHE.get_or_init(Mutex::default)
}

/// The `message` of a stored error JSON, or its text when it is not an object with one.
fn error_message(error_json: &str) -> String {
    parse_json(error_json)
        .and_then(|error| {
            error
                .get("message")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| error_json.to_string())
}

fn seconds(ms: i64) -> String {
    format!("{:.1}s", ms.max(0) as f64 / 1000.0)
}

/// The run recap: status and duration, node counts by state, the run's error.
fn run_recap(run: &RunRow, nodes: &[NodeRow]) -> String {
    let mut summary = match run.finished_at_ms {
        Some(finished) => format!(
            "Run {} ({}) {} in {}.",
            run.run_id,
            run.workflow_name,
            run.status,
            seconds(finished - run.started_at_ms.unwrap_or(run.created_at_ms))
        ),
        None => format!(
            "Run {} ({}) is {}.",
            run.run_id, run.workflow_name, run.status
        ),
    };
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for node in nodes {
        *counts.entry(node.state.as_str()).or_default() += 1;
    }
    if !counts.is_empty() {
        let parts: Vec<String> = counts
            .iter()
            .map(|(state, count)| format!("{count} {state}"))
            .collect();
        summary.push_str(&format!("\n- nodes: {}", parts.join(", ")));
    }
    if let Some(error) = &run.error_json {
        summary.push_str(&format!("\n- run error: {}", error_message(error)));
    }
    summary
}

/// The node recap: state, attempts and time spent, the newest attempt's error.
fn node_recap(node: &NodeRow, attempts: &[&AttemptRow]) -> String {
    let count = attempts.len();
    let newest = attempts.iter().max_by_key(|a| a.attempt);
    let first_start = attempts.iter().map(|a| a.started_at_ms).min();
    let mut summary = match (first_start, newest.and_then(|a| a.finished_at_ms)) {
        (Some(start), Some(end)) if count > 0 => format!(
            "Node \"{}\" {} after {} attempt{} in {}.",
            node.node_id,
            node.state,
            count,
            if count == 1 { "" } else { "s" },
            seconds(end - start)
        ),
        _ if count > 0 => format!(
            "Node \"{}\" is {} (attempt {}).",
            node.node_id,
            node.state,
            newest.map_or(0, |a| a.attempt)
        ),
        _ => format!("Node \"{}\" is {}.", node.node_id, node.state),
    };
    if let Some(error) = newest.and_then(|a| a.error_json.as_deref()) {
        summary.push_str(&format!("\n- error: {}", error_message(error)));
    }
    summary
}

/// Everything a recap depends on, hashed.
fn fingerprint(parts: &[String]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hasher.finalize().into()
}

/// `whatHappened`: a deterministic recap of the run or one node iteration.
pub async fn what_happened(context: &CallContext<'_>, params: &Value) -> Result<Value, RpcError> {
    let run_id = read_run_id(params)?;
    let node_id = match params.get("nodeId") {
        None => None,
        Some(value) if value.is_null() => None,
        Some(_) => Some(node_id_param(params)?),
    };
    let iteration = match params.get("iteration") {
        None => None,
        Some(value) if value.is_null() => None,
        Some(_) => Some(iteration_lenient(params)?),
    };
    let state = load_state(&storage(context)?, &run_id).await?;
    let Some(run) = &state.run else {
        return Err(run_not_found(&run_id));
    };
    let (scope, target): (&str, Option<(&NodeRow, Vec<&AttemptRow>)>) = match &node_id {
        None => ("run", None),
        Some(node_id) => {
            let rows: Vec<&NodeRow> = state
                .nodes
                .iter()
                .filter(|n| &n.node_id == node_id)
                .collect();
            let Some(highest) = rows.iter().map(|n| n.iteration).max() else {
                return Err(RpcError::new(
                    ErrorCode::NodeNotFound,
                    format!("Node {node_id} not found in run {run_id}."),
                ));
            };
            let wanted = iteration.unwrap_or(highest);
            let node = rows
                .into_iter()
                .find(|n| n.iteration == wanted)
                .ok_or_else(|| {
                    RpcError::new(
                        ErrorCode::IterationNotFound,
                        format!("Node {node_id} has no iteration {wanted} in run {run_id}."),
                    )
                })?;
            let attempts = state
                .attempts
                .iter()
                .filter(|a| a.node_id == node.node_id && a.iteration == node.iteration)
                .collect();
            ("node", Some((node, attempts)))
        }
    };
    let (terminal, key_parts) = match &target {
        None => {
            let mut parts = vec![
                "run".to_string(),
                run.run_id.clone(),
                run.created_at_ms.to_string(),
                run.status.clone(),
                format!("{:?}", run.finished_at_ms),
                run.error_json.clone().unwrap_or_default(),
            ];
            parts.extend(
                state
                    .nodes
                    .iter()
                    .map(|n| format!("{}:{}:{}", n.node_id, n.iteration, n.state)),
            );
            (TERMINAL_TARGET_STATES.contains(&run.status.as_str()), parts)
        }
        Some((node, attempts)) => {
            let mut parts = vec![
                "node".to_string(),
                run.run_id.clone(),
                run.created_at_ms.to_string(),
                node.node_id.clone(),
                node.iteration.to_string(),
                node.state.clone(),
                format!("{:?}", node.last_attempt),
                node.updated_at_ms.to_string(),
            ];
            parts.extend(attempts.iter().map(|a| {
                format!(
                    "{}:{}:{:?}:{:?}",
                    a.attempt, a.state, a.finished_at_ms, a.error_json
                )
            }));
            (TERMINAL_TARGET_STATES.contains(&node.state.as_str()), parts)
        }
    };
    let key = fingerprint(&key_parts);
    if terminal {
        let hit = recap_cache().lock().ok().and_then(|cache| cache.get(&key));
        if let Some(mut payload) = hit {
            if let Value::Object(map) = &mut payload {
                map.insert("cached".into(), Value::from(true));
            }
            return Ok(payload);
        }
    }
    let summary = match &target {
        None => run_recap(run, &state.nodes),
        Some((node, attempts)) => node_recap(node, attempts),
    };
    let payload = object(vec![
        ("runId", Value::from(run.run_id.as_str())),
        (
            "nodeId",
            target
                .as_ref()
                .map_or(Value::null(), |(n, _)| Value::from(n.node_id.as_str())),
        ),
        (
            "iteration",
            nullable_i64(target.as_ref().map(|(n, _)| n.iteration)),
        ),
        ("scope", Value::from(scope)),
        ("summary", Value::from(summary)),
        ("agentId", Value::null()),
        ("source", Value::from("facts")),
        ("cached", Value::from(false)),
        ("generatedAtMs", Value::from(crate::clock::now_ms() as i64)),
    ]);
    if terminal {
        if let Ok(mut cache) = recap_cache().lock() {
            cache.insert(key, payload.clone());
        }
    }
    Ok(payload)
}

// ---------------------------------------------------------------------------------------------
// runs.diff (§5.2)
// ---------------------------------------------------------------------------------------------

/// A loop's state in a snapshot.
#[derive(Clone, Debug, PartialEq)]
struct RalphState {
    iteration: i64,
    done: bool,
}

/// What `runs.diff` compares: a run's current state, keyed as the reference keys it.
#[derive(Debug, Default)]
struct StateSnapshot {
    /// `<nodeId>::<iteration>` → node row.
    nodes: BTreeMap<String, NodeRow>,
    /// `<nodeId>::<iteration>` → output payload.
    outputs: BTreeMap<String, Value>,
    /// Loop id → state.
    ralph: BTreeMap<String, RalphState>,
    input: Value,
}

fn state_key(node_id: &str, iteration: i64) -> String {
    format!("{node_id}::{iteration}")
}

/// Loops of a rendered frame: each `smithers:ralph` element's id (`#loop<n>` for a loop without
/// one, n its pre-order position, as the engine keys it), its current iteration, and whether it
/// is done: every task under it is `finished` or `skipped` in the frame's task index (the engine
/// advances a loop in the same turn as its last task finishes, so a committed frame whose current
/// iteration has nothing left to run shows a loop that has stopped).
fn loops_of_frame(frame: &FrameRow) -> BTreeMap<String, RalphState> {
    let mut loops = BTreeMap::new();
    let (Some(tree), Some(index)) = (
        parse_json(&frame.xml_json),
        parse_json(&frame.task_index_json),
    ) else {
        return loops;
    };
    let states: HashMap<&str, &str> = index
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter_map(|e| Some((e.get("nodeId")?.as_str()?, e.get("state")?.as_str()?)))
                .collect()
        })
        .unwrap_or_default();
    let mut ordinal = 0usize;
    // Explicit stack (pre-order): frames nest at most as deep as workflows (32 levels).
    let mut stack = vec![&tree];
    while let Some(element) = stack.pop() {
        let children: Vec<&Value> = match element.get("children") {
            Some(Value::Array(items)) => items.as_slice().iter().rev().collect(),
            _ => Vec::new(),
        };
        if element.get("tag").and_then(|t| t.as_str()) == Some("smithers:ralph") {
            let props = element.get("props");
            let id = props
                .and_then(|p| p.get("id"))
                .and_then(|v| v.as_str())
                .map_or_else(|| format!("#loop{ordinal}"), str::to_string);
            ordinal += 1;
            let iteration = props
                .and_then(|p| p.get("iteration"))
                .and_then(|v| v.as_i64())
                .unwrap_or(0);
            let mut tasks = Vec::new();
            let mut below: Vec<&Value> = children.clone();
            while let Some(child) = below.pop() {
                let tag = child.get("tag").and_then(|t| t.as_str()).unwrap_or("");
                if matches!(
                    tag,
                    "smithers:task" | "smithers:wait-for-event" | "smithers:timer"
                ) {
                    if let Some(id) = child
                        .get("props")
                        .and_then(|p| p.get("id"))
                        .and_then(|v| v.as_str())
                    {
                        tasks.push(id);
                    }
                }
                if let Some(Value::Array(grand)) = child.get("children") {
                    below.extend(grand.iter());
                }
            }
            let done = !tasks.is_empty()
                && tasks.iter().all(|id| {
                    matches!(states.get(id).copied(), Some("finished") | Some("skipped"))
                });
            loops.insert(id, RalphState { iteration, done });
        }
        stack.extend(children);
    }
    loops
}

/// A run's snapshot from its rows and newest frame; None when it has no node rows.
fn snapshot_of(state: &RunState, latest_frame: Option<&FrameRow>) -> Option<StateSnapshot> {
    if state.nodes.is_empty() {
        return None;
    }
    let run = state.run.as_ref()?;
    Some(StateSnapshot {
        nodes: state
            .nodes
            .iter()
            .map(|n| (state_key(&n.node_id, n.iteration), n.clone()))
            .collect(),
        outputs: state
            .outputs
            .iter()
            .map(|o| {
                (
                    state_key(&o.node_id, o.iteration),
                    parse_json(&o.payload_json)
                        .unwrap_or_else(|| Value::from(o.payload_json.as_str())),
                )
            })
            .collect(),
        ralph: latest_frame.map(loops_of_frame).unwrap_or_default(),
        input: parse_json(&run.input_json).unwrap_or_else(|| Value::Object(Box::default())),
    })
}

fn node_snapshot_value(node: &NodeRow) -> Value {
    object(vec![
        ("nodeId", Value::from(node.node_id.as_str())),
        ("iteration", Value::from(node.iteration)),
        ("state", Value::from(node.state.as_str())),
        ("lastAttempt", nullable_i64(node.last_attempt)),
        ("outputTable", Value::from(node.output_table.as_str())),
        ("label", nullable(node.label.as_deref())),
    ])
}

fn ralph_value(id: &str, ralph: &RalphState) -> Value {
    object(vec![
        ("ralphId", Value::from(id)),
        ("iteration", Value::from(ralph.iteration)),
        ("done", Value::from(ralph.done)),
    ])
}

fn keys_only_in<V>(a: &BTreeMap<String, V>, b: &BTreeMap<String, V>) -> Value {
    array(
        a.keys()
            .filter(|k| !b.contains_key(*k))
            .map(|k| Value::from(k.as_str()))
            .collect(),
    )
}

/// The reference's snapshot diff (nodes changed on state, last attempt or label; outputs and
/// input by value; loops on iteration or done).
fn diff_snapshots(a: &StateSnapshot, b: &StateSnapshot) -> Value {
    let nodes_changed = a
        .nodes
        .iter()
        .filter_map(|(key, from)| {
            let to = b.nodes.get(key)?;
            (from.state != to.state
                || from.last_attempt != to.last_attempt
                || from.label != to.label)
                .then(|| {
                    object(vec![
                        ("nodeId", Value::from(key.as_str())),
                        ("from", node_snapshot_value(from)),
                        ("to", node_snapshot_value(to)),
                    ])
                })
        })
        .collect();
    let outputs_changed = a
        .outputs
        .iter()
        .filter_map(|(key, from)| {
            let to = b.outputs.get(key)?;
            (from != to).then(|| {
                object(vec![
                    ("key", Value::from(key.as_str())),
                    ("from", from.clone()),
                    ("to", to.clone()),
                ])
            })
        })
        .collect();
    let ralph_changed = a
        .ralph
        .iter()
        .filter_map(|(id, from)| {
            let to = b.ralph.get(id)?;
            (from != to).then(|| {
                object(vec![
                    ("ralphId", Value::from(id.as_str())),
                    ("from", ralph_value(id, from)),
                    ("to", ralph_value(id, to)),
                ])
            })
        })
        .collect();
    object(vec![
        ("nodesAdded", keys_only_in(&b.nodes, &a.nodes)),
        ("nodesRemoved", keys_only_in(&a.nodes, &b.nodes)),
        ("nodesChanged", array(nodes_changed)),
        ("outputsAdded", keys_only_in(&b.outputs, &a.outputs)),
        ("outputsRemoved", keys_only_in(&a.outputs, &b.outputs)),
        ("outputsChanged", array(outputs_changed)),
        ("ralphAdded", keys_only_in(&b.ralph, &a.ralph)),
        ("ralphRemoved", keys_only_in(&a.ralph, &b.ralph)),
        ("ralphChanged", array(ralph_changed)),
        ("inputChanged", Value::from(a.input != b.input)),
        ("vcsPointerChanged", Value::from(false)),
    ])
}

async fn run_snapshot(
    storage: &StorageHandle,
    state: &RunState,
) -> Result<Option<StateSnapshot>, RpcError> {
    let Some(run) = &state.run else {
        return Ok(None);
    };
    let frame = if state.last_frame_no > 0 {
        ask(storage, |reply| Command::GetFrame {
            run_id: run.run_id.clone(),
            frame_no: state.last_frame_no,
            reply,
        })
        .await?
    } else {
        None
    };
    Ok(snapshot_of(state, frame.as_ref()))
}

/// `runs.diff`: the difference between two runs' current states.
pub async fn runs_diff(context: &CallContext<'_>, params: &Value) -> Result<Value, RpcError> {
    let text = |name: &str| {
        params
            .get(name)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
    };
    let (Some(left), Some(right)) = (text("leftRunId"), text("rightRunId")) else {
        return Err(invalid_request("leftRunId and rightRunId are required"));
    };
    let storage = storage(context)?;
    let left = load_state(&storage, left).await?;
    let right = load_state(&storage, right).await?;
    if left.run.is_none() || right.run.is_none() {
        return Err(RpcError::new(ErrorCode::NotFound, "Both runs must exist"));
    }
    let (Some(a), Some(b)) = (
        run_snapshot(&storage, &left).await?,
        run_snapshot(&storage, &right).await?,
    ) else {
        return Err(RpcError::new(
            ErrorCode::NotFound,
            "Snapshots not found for both runs",
        ));
    };
    Ok(diff_snapshots(&a, &b))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::storage::CatalogEntry;

    fn entry(kind: &str, name: &str, table: &str, sql: &str) -> CatalogEntry {
        CatalogEntry {
            kind: kind.into(),
            name: name.into(),
            table: table.into(),
            sql: sql.into(),
        }
    }

    fn catalog(entries: Vec<CatalogEntry>) -> SchemaCatalog {
        SchemaCatalog {
            newest_migration: Some(2),
            entries,
        }
    }

    // Goal: the signature is a pure function of the catalog's shape: the same catalog in any
    // order gives the same hashes; a new column, a new index or a new table changes the
    // signature and exactly the components concerned.
    #[test]
    fn schema_signature_follows_the_catalog_shape() {
        let runs = entry(
            "table",
            "_smithers_runs",
            "_smithers_runs",
            "CREATE TABLE _smithers_runs (a)",
        );
        let nodes = entry(
            "table",
            "_smithers_nodes",
            "_smithers_nodes",
            "CREATE TABLE _smithers_nodes (b)",
        );
        let index = entry(
            "index",
            "_smithers_runs_a",
            "_smithers_runs",
            "CREATE INDEX _smithers_runs_a ON _smithers_runs (a)",
        );
        let base = catalog(vec![runs.clone(), nodes.clone(), index.clone()]);
        let (signature, components) = schema_signature(&base);
        assert_eq!(signature.len(), 64);
        assert_eq!(
            components.keys().collect::<Vec<_>>(),
            vec!["_smithers_nodes", "_smithers_runs"]
        );
        let shuffled = catalog(vec![index.clone(), nodes.clone(), runs.clone()]);
        assert_eq!(
            schema_signature(&shuffled),
            (signature.clone(), components.clone())
        );

        let widened = entry(
            "table",
            "_smithers_runs",
            "_smithers_runs",
            "CREATE TABLE _smithers_runs (a, c)",
        );
        let (changed, changed_components) =
            schema_signature(&catalog(vec![widened, nodes.clone(), index.clone()]));
        assert_ne!(changed, signature);
        assert_ne!(
            changed_components["_smithers_runs"],
            components["_smithers_runs"]
        );
        assert_eq!(
            changed_components["_smithers_nodes"],
            components["_smithers_nodes"]
        );

        let (unindexed, unindexed_components) =
            schema_signature(&catalog(vec![runs.clone(), nodes.clone()]));
        assert_ne!(unindexed, signature);
        assert_ne!(
            unindexed_components["_smithers_runs"],
            components["_smithers_runs"]
        );

        let extra = entry(
            "table",
            "_smithers_docs",
            "_smithers_docs",
            "CREATE TABLE _smithers_docs (d)",
        );
        let (grown, grown_components) = schema_signature(&catalog(vec![runs, nodes, index, extra]));
        assert_ne!(grown, signature);
        assert_eq!(grown_components.len(), 3);

        assert_eq!(schema_version(Some(2)), "0002");
        assert_eq!(schema_version(Some(12)), "0012");
        assert_eq!(schema_version(None), "0000");
    }

    // Goal: the token-usage row defaults of METHODS.md §3.10.
    #[test]
    fn token_usage_defaults() {
        let full = token_usage_value(
            r#"{"nodeId":"n","iteration":1,"attempt":2,"model":"m","agent":"a","inputTokens":10,
                "outputTokens":5,"cacheReadTokens":1,"cacheWriteTokens":2,"reasoningTokens":3,
                "timestampMs":99}"#,
            7,
        );
        assert_eq!(full.get("model").and_then(|v| v.as_str()), Some("m"));
        assert_eq!(full.get("timestampMs").and_then(|v| v.as_i64()), Some(99));
        let empty = token_usage_value(r#"{"inputTokens":"many"}"#, 7);
        assert_eq!(
            empty.get("nodeId").and_then(|v| v.as_str()),
            Some("unknown")
        );
        assert_eq!(empty.get("inputTokens").and_then(|v| v.as_i64()), Some(0));
        assert_eq!(empty.get("timestampMs").and_then(|v| v.as_i64()), Some(7));
        let broken = token_usage_value("not json", 3);
        assert_eq!(
            broken.get("agent").and_then(|v| v.as_str()),
            Some("unknown")
        );
    }

    // Goal: `frames.*` numbers read as JavaScript's Number() reads them, with the reference's
    // two messages.
    #[test]
    fn positive_ints_follow_number() {
        let value = |text: &str| simd_json::to_owned_value(&mut text.as_bytes().to_vec()).unwrap();
        let read = |text: &str| optional_positive_int(&value(text), "limit");
        assert_eq!(read(r#"{}"#).unwrap(), None);
        assert_eq!(read(r#"{"limit":null}"#).unwrap(), None);
        assert_eq!(read(r#"{"limit":3}"#).unwrap(), Some(3));
        assert_eq!(read(r#"{"limit":"4"}"#).unwrap(), Some(4));
        assert_eq!(read(r#"{"limit":true}"#).unwrap(), Some(1));
        assert_eq!(read(r#"{"limit":5.0}"#).unwrap(), Some(5));
        for bad in [
            r#"{"limit":0}"#,
            r#"{"limit":-1}"#,
            r#"{"limit":"x"}"#,
            r#"{"limit":""}"#,
            r#"{"limit":{}}"#,
        ] {
            let error = read(bad).unwrap_err();
            assert_eq!(
                (error.code, error.message.as_str()),
                (
                    ErrorCode::InvalidInputLegacy,
                    "limit must be a finite number greater than 0."
                ),
                "{bad}"
            );
        }
        let error = read(r#"{"limit":1.5}"#).unwrap_err();
        assert_eq!(error.message, "limit must be an integer greater than 0.");
    }

    // Goal: the recap cache keeps at most 200 entries and evicts the oldest.
    #[test]
    fn recap_cache_is_bounded() {
        let mut cache = RecapCache::default();
        for n in 0..=WHAT_HAPPENED_CACHE_MAX {
            cache.insert(fingerprint(&[n.to_string()]), Value::from(n as u64));
        }
        assert_eq!(cache.entries.len(), WHAT_HAPPENED_CACHE_MAX);
        assert!(cache.get(&fingerprint(&["0".to_string()])).is_none());
        assert!(cache.get(&fingerprint(&["1".to_string()])).is_some());
    }
}
