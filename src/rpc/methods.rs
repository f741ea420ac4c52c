//! The run-family methods (METHODS.md §3.2–3.9, 3.11, 3.14, 3.15): validation in the reference's
//! order, then the engine (writes) or the storage thread (reads). Payload shapes are the wire's.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::common::{
    ask, container_depth, engine, invalid_input, invalid_request, nullable, nullable_i64,
    required_string, storage, stored_run,
};
use super::dispatch::CallContext;
use super::frame::object;
use super::Value;
use crate::engine::core::{
    system_of, workflow_key_of, AuthContext, DecisionRequest, LaunchOutcome, LaunchRequest,
    SignalRequest,
};
use crate::error::{ErrorCode, RpcError};
use crate::storage::{
    ApprovalRow, Command, RunFilter, RunRow, StorageHandle, TERMINAL_RUN_STATUSES,
};
use simd_json::prelude::*;
use std::collections::BTreeMap;

/// Largest launch input, serialized (METHODS.md §3.2 step 3).
pub const LAUNCH_INPUT_BYTES_MAX: usize = 1_048_576;
/// Deepest launch input (objects and arrays count; the top object is 1).
pub const LAUNCH_INPUT_DEPTH_MAX: usize = 32;
/// Runs in the hello snapshot at most (PROTOCOL.md §6.3).
pub const SNAPSHOT_RUNS_MAX: usize = 1_000;
/// Rows scanned by `listRuns` when it filters by workflow or visibility after storage.
pub const LIST_RUNS_SCAN_MAX: usize = 10_000;

fn optional_string(value: Option<&Value>) -> Option<String> {
    value.and_then(|v| v.as_str()).map(str::to_string)
}

fn serialized_len(value: &Value) -> usize {
    let mut out = Vec::new();
    super::frame::write_value(&mut out, value);
    out.len()
}

fn trimmed_chars(text: &str) -> usize {
    text.trim().chars().count()
}

/// `options.startedBy` validation and normalization (METHODS.md §3.2 step 4).
fn started_by(value: Option<&Value>) -> Result<Option<Value>, RpcError> {
    let Some(value) = value else { return Ok(None) };
    let Value::Object(fields) = value else {
        return Err(invalid_request("options.startedBy must be an object"));
    };
    for key in fields.keys() {
        if !["harness", "sessionId", "prompt", "detected"].contains(&key.as_ref()) {
            return Err(invalid_request(format!(
                "options.startedBy has an unknown field: {key}"
            )));
        }
    }
    let text = |name: &str| -> Result<Option<String>, RpcError> {
        match fields.get(name) {
            None => Ok(None),
            Some(Value::String(text)) => {
                Ok(Some(text.trim().to_string()).filter(|t| !t.is_empty()))
            }
            Some(_) => Err(invalid_request(format!(
                "options.startedBy.{name} must be a string"
            ))),
        }
    };
    let harness = text("harness")?;
    let session_id = text("sessionId")?;
    let prompt = text("prompt")?;
    let detected = match fields.get("detected") {
        None => false,
        Some(Value::Static(simd_json::StaticNode::Bool(true))) => true,
        Some(_) => return Err(invalid_request("options.startedBy.detected must be true")),
    };
    if harness.as_deref().is_some_and(|h| trimmed_chars(h) > 64) {
        return Err(invalid_request(
            "options.startedBy.harness exceeds 64 characters",
        ));
    }
    if session_id
        .as_deref()
        .is_some_and(|s| trimmed_chars(s) > 256)
    {
        return Err(invalid_request(
            "options.startedBy.sessionId exceeds 256 characters",
        ));
    }
    let prompt = prompt.map(|p| {
        if p.chars().count() > crate::config::STARTED_BY_PROMPT_CHARS_MAX {
            let mut cut: String = p
                .chars()
                .take(crate::config::STARTED_BY_PROMPT_CHARS_MAX - 1)
                .collect();
            cut.push('…');
            cut
        } else {
            p
        }
    });
    let mut out = Vec::new();
    if let Some(h) = &harness {
        out.push(("harness", Value::from(h.as_str())));
    }
    if let Some(s) = &session_id {
        out.push(("sessionId", Value::from(s.as_str())));
    }
    if let Some(p) = &prompt {
        out.push(("prompt", Value::from(p.as_str())));
    }
    if detected && (harness.is_some() || session_id.is_some()) {
        out.push(("detected", Value::from(true)));
    }
    Ok((!out.is_empty()).then(|| object(out)))
}

pub async fn launch_run(context: &CallContext<'_>, params: &Value) -> Result<Value, RpcError> {
    let Some(workflow) = required_string(params, "workflow") else {
        return Err(invalid_request("workflow is required"));
    };
    if !context.state.registry.workflows.contains_key(workflow) {
        return Err(RpcError::new(
            ErrorCode::NotFound,
            format!("Unknown workflow: {workflow}"),
        ));
    }
    let input = match params.get("input") {
        Some(input @ Value::Object(_)) => input.clone(),
        _ => Value::Object(Box::default()),
    };
    if serialized_len(&input) > LAUNCH_INPUT_BYTES_MAX {
        return Err(invalid_input(format!(
            "Gateway RPC input exceeds {LAUNCH_INPUT_BYTES_MAX} bytes."
        )));
    }
    if container_depth(&input) > LAUNCH_INPUT_DEPTH_MAX {
        return Err(invalid_input(format!(
            "Gateway RPC input exceeds the maximum nesting depth of {LAUNCH_INPUT_DEPTH_MAX}."
        )));
    }
    let options = params.get("options");
    let started_by = started_by(options.and_then(|o| o.get("startedBy")))?;
    let run_id = optional_string(params.get("runId"))
        .or_else(|| optional_string(options.and_then(|o| o.get("runId"))));
    let idempotency_key = optional_string(options.and_then(|o| o.get("idempotencyKey")));
    let mut engine_options = Vec::new();
    for name in ["maxConcurrency", "maxOutputBytes", "toolTimeoutMs"] {
        if let Some(number) = options
            .and_then(|o| o.get(name))
            .and_then(|v| v.cast_f64())
            .filter(|n| n.is_finite())
        {
            engine_options.push((name.to_string(), Value::from(number)));
        }
    }
    if let Some(flag) = options
        .and_then(|o| o.get("allowNetwork"))
        .and_then(|v| v.as_bool())
    {
        engine_options.push(("allowNetwork".to_string(), Value::from(flag)));
    }
    let outcome = engine(context)?
        .launch(LaunchRequest {
            workflow: workflow.to_string(),
            input,
            run_id,
            idempotency_key,
            auth: AuthContext::of_caller(context.principal),
            started_by,
            options: engine_options,
        })
        .await?;
    context.subscribe(&outcome.run_id);
    Ok(launch_payload(&outcome))
}

/// `{runId, workflow, system}`: what launchRun, cronRun and runs.rerun answer.
pub(crate) fn launch_payload(outcome: &LaunchOutcome) -> Value {
    object(vec![
        ("runId", Value::from(outcome.run_id.as_str())),
        ("workflow", Value::from(outcome.workflow.as_str())),
        ("system", Value::from(outcome.system)),
    ])
}

pub(crate) fn run_id_param(params: &Value) -> Result<String, RpcError> {
    required_string(params, "runId")
        .map(str::to_string)
        .ok_or_else(|| invalid_request("runId is required"))
}

pub async fn cancel_run(context: &CallContext<'_>, params: &Value) -> Result<Value, RpcError> {
    let run_id = run_id_param(params)?;
    let outcome = engine(context)?.cancel(run_id).await?;
    Ok(object(vec![
        ("runId", Value::from(outcome.run_id.as_str())),
        ("won", Value::from(outcome.won)),
        ("status", Value::from(outcome.status)),
        (
            "terminalStatus",
            Value::from(outcome.terminal_status.as_str()),
        ),
        ("repaired", Value::from(outcome.repaired)),
    ]))
}

pub async fn resume_run(context: &CallContext<'_>, params: &Value) -> Result<Value, RpcError> {
    let run_id = run_id_param(params)?;
    let status = engine(context)?
        .resume(run_id.clone(), AuthContext::of_caller(context.principal))
        .await?;
    if status == "resume_requested" {
        context.subscribe(&run_id);
    }
    Ok(object(vec![
        ("runId", Value::from(run_id.as_str())),
        ("status", Value::from(status)),
    ]))
}

pub async fn submit_approval(context: &CallContext<'_>, params: &Value) -> Result<Value, RpcError> {
    let run_id = params.get("runId").and_then(|v| v.as_str());
    let node_id = params.get("nodeId").and_then(|v| v.as_str());
    let decision = params.get("decision").filter(|d| d.is_object());
    let approved = params
        .get("approved")
        .and_then(|v| v.as_bool())
        .or_else(|| {
            decision
                .and_then(|d| d.get("approved"))
                .and_then(|v| v.as_bool())
        });
    let (Some(run_id), Some(node_id), Some(approved)) = (run_id, node_id, approved) else {
        return Err(invalid_request("runId, nodeId, and approved are required"));
    };
    let iteration = params
        .get("iteration")
        .and_then(|v| v.cast_f64())
        .filter(|n| n.is_finite())
        .map_or(0, |n| n as i64);
    let note = optional_string(params.get("note"))
        .or_else(|| optional_string(decision.and_then(|d| d.get("note"))));
    engine(context)?
        .decide(DecisionRequest {
            run_id: run_id.to_string(),
            node_id: node_id.to_string(),
            iteration,
            approved,
            decision: decision.cloned(),
            note,
            caller: context.principal.clone(),
        })
        .await?;
    context.subscribe(run_id);
    Ok(object(vec![
        ("runId", Value::from(run_id)),
        ("nodeId", Value::from(node_id)),
        ("iteration", Value::from(iteration)),
        ("approved", Value::from(approved)),
    ]))
}

pub async fn submit_signal(context: &CallContext<'_>, params: &Value) -> Result<Value, RpcError> {
    let run_id = params.get("runId").and_then(|v| v.as_str());
    let signal_name = optional_string(params.get("signalName"))
        .or_else(|| optional_string(params.get("correlationKey")));
    let (Some(run_id), Some(signal_name)) = (run_id, signal_name) else {
        return Err(invalid_request("runId and signalName are required"));
    };
    let correlation_id = optional_string(params.get("correlationId"))
        .or_else(|| optional_string(params.get("correlationKey")))
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty());
    let payload = params
        .get("data")
        .filter(|d| !d.is_null())
        .or_else(|| params.get("payload"))
        .cloned()
        .unwrap_or_else(|| Value::Object(Box::default()));
    if stored_run(&storage(context)?, run_id).await?.is_none() {
        return Err(RpcError::new(
            ErrorCode::NotFound,
            format!("Run not found: {run_id}"),
        ));
    }
    let signal_name = signal_name.trim().to_string();
    if signal_name.is_empty() {
        return Err(invalid_input("Signal name must be a non-empty string."));
    }
    let outcome = engine(context)?
        .signal(SignalRequest {
            run_id: run_id.to_string(),
            signal_name,
            correlation_id,
            payload,
            received_by: context.principal.user_id.clone(),
            auth: AuthContext::of_caller(context.principal),
        })
        .await?;
    if outcome.resumed {
        context.subscribe(run_id);
    }
    Ok(object(vec![
        ("runId", Value::from(outcome.run_id.as_str())),
        ("seq", Value::from(outcome.seq)),
        ("signalName", Value::from(outcome.signal_name.as_str())),
        ("correlationId", nullable(outcome.correlation_id.as_deref())),
        ("receivedAtMs", Value::from(outcome.received_at_ms)),
    ]))
}

/// A run row as the wire shows it: every column camelCased (JSON columns as JSON text), plus
/// `workflowKey`, `system` and `startedBy`.
pub fn run_value(row: &RunRow) -> Value {
    let config = row.config_json.as_deref().map(|text| {
        let mut bytes = text.as_bytes().to_vec();
        simd_json::to_owned_value(&mut bytes).unwrap_or_else(|_| Value::null())
    });
    let mut fields = vec![
        ("runId", Value::from(row.run_id.as_str())),
        ("parentRunId", nullable(row.parent_run_id.as_deref())),
        ("workflowName", Value::from(row.workflow_name.as_str())),
        ("workflowPath", nullable(row.workflow_path.as_deref())),
        ("workflowHash", nullable(row.workflow_hash.as_deref())),
        ("status", Value::from(row.status.as_str())),
        ("createdAtMs", Value::from(row.created_at_ms)),
        ("startedAtMs", nullable_i64(row.started_at_ms)),
        ("finishedAtMs", nullable_i64(row.finished_at_ms)),
        ("heartbeatAtMs", nullable_i64(row.heartbeat_at_ms)),
        ("runtimeOwnerId", nullable(row.runtime_owner_id.as_deref())),
        (
            "cancelRequestedAtMs",
            nullable_i64(row.cancel_requested_at_ms),
        ),
        ("cancelRequestId", Value::null()),
        ("cancelRequestSource", Value::null()),
        ("cancelRequestClientIdentity", Value::null()),
        ("cancelRequestClientPid", Value::null()),
        (
            "pauseRequestedAtMs",
            nullable_i64(row.pause_requested_at_ms),
        ),
        ("hijackRequestedAtMs", Value::null()),
        ("hijackTarget", Value::null()),
        ("vcsType", Value::null()),
        ("vcsRoot", Value::null()),
        ("vcsRevision", Value::null()),
        ("errorJson", nullable(row.error_json.as_deref())),
        ("configJson", nullable(row.config_json.as_deref())),
        ("workflowKey", Value::from(workflow_key_of(row))),
        ("system", Value::from(system_of(row))),
    ];
    if let Some(started_by) = config.as_ref().and_then(|c| c.get("startedBy")).cloned() {
        fields.push(("startedBy", started_by));
    }
    object(fields)
}

/// Whether storage holds the run (`streamRunEvents` step 4 for runs without a window).
pub async fn run_exists(context: &CallContext<'_>, run_id: &str) -> Result<bool, RpcError> {
    Ok(stored_run(&storage(context)?, run_id).await?.is_some())
}

pub async fn get_run(context: &CallContext<'_>, params: &Value) -> Result<Value, RpcError> {
    let run_id = run_id_param(params)?;
    let storage = storage(context)?;
    let state = ask(&storage, |reply| Command::LoadRunState {
        run_id: run_id.clone(),
        reply,
    })
    .await?;
    let Some(row) = state.run.clone() else {
        return Err(RpcError::new(
            ErrorCode::NotFound,
            format!("Run not found: {run_id}"),
        ));
    };
    let mut value = run_value(&row);
    let mut summary: BTreeMap<String, u64> = BTreeMap::new();
    for node in &state.nodes {
        *summary.entry(node.state.clone()).or_default() += 1;
    }
    if let Value::Object(map) = &mut value {
        map.insert(
            "summary".into(),
            object(
                summary
                    .iter()
                    .map(|(k, v)| (k.as_str(), Value::from(*v)))
                    .collect(),
            ),
        );
        map.insert(
            "runState".into(),
            run_state(&state, crate::clock::now_ms() as i64),
        );
    }
    Ok(value)
}

/// The derived run state of DATA.md §4.
pub fn run_state(state: &crate::storage::RunState, now: i64) -> Value {
    let Some(row) = &state.run else {
        return Value::null();
    };
    let iso = crate::clock::iso_from_ms;
    let mut fields = vec![("runId", Value::from(row.run_id.as_str()))];
    let waiting_node = |wanted: &str| state.nodes.iter().find(|n| n.state == wanted);
    match row.status.as_str() {
        "finished" | "continued" => fields.push(("state", Value::from("succeeded"))),
        "failed" | "cancelled" | "paused" => {
            fields.push(("state", Value::from(row.status.as_str())))
        }
        "waiting-approval" => {
            fields.push(("state", Value::from("waiting-approval")));
            if let Some(approval) = state.approvals.iter().find(|a| a.status == "requested") {
                fields.push((
                    "blocked",
                    object(vec![
                        ("kind", Value::from("approval")),
                        ("nodeId", Value::from(approval.node_id.as_str())),
                        (
                            "requestedAt",
                            Value::from(iso(approval.requested_at_ms.unwrap_or(0))),
                        ),
                    ]),
                ));
            }
        }
        "waiting-timer" => {
            fields.push(("state", Value::from("waiting-timer")));
            if let Some(node) = waiting_node("waiting-timer") {
                let wake = state
                    .attempts
                    .iter()
                    .filter(|a| a.node_id == node.node_id && a.iteration == node.iteration)
                    .filter_map(|a| a.meta_json.as_deref())
                    .filter_map(|meta| {
                        let mut bytes = meta.as_bytes().to_vec();
                        simd_json::to_owned_value(&mut bytes).ok()
                    })
                    .filter_map(|meta| {
                        meta.get("timer")
                            .and_then(|t| t.get("firesAtMs"))
                            .and_then(|v| v.as_i64())
                    })
                    .max();
                fields.push((
                    "blocked",
                    object(vec![
                        ("kind", Value::from("timer")),
                        ("nodeId", Value::from(node.node_id.as_str())),
                        ("wakeAt", nullable_i64(wake)),
                    ]),
                ));
                if let Some(wake) = wake.filter(|w| now - w > 30_000) {
                    fields.push((
                        "unhealthy",
                        object(vec![
                            ("kind", Value::from("timer-overdue")),
                            ("wakeAt", Value::from(wake)),
                            ("overdueMs", Value::from(now - wake)),
                        ]),
                    ));
                }
            }
        }
        "waiting-event" => {
            fields.push(("state", Value::from("waiting-event")));
            if let Some(node) = waiting_node("waiting-event") {
                fields.push((
                    "blocked",
                    object(vec![
                        ("kind", Value::from("event")),
                        ("nodeId", Value::from(node.node_id.as_str())),
                        ("correlationKey", Value::from(node.node_id.as_str())),
                    ]),
                ));
            }
        }
        "running" => match row.heartbeat_at_ms.or(row.started_at_ms) {
            Some(at) if now - at <= 30_000 => fields.push(("state", Value::from("running"))),
            Some(at) => {
                fields.push(("state", Value::from("stale")));
                fields.push((
                    "unhealthy",
                    object(vec![
                        ("kind", Value::from("engine-heartbeat-stale")),
                        ("lastHeartbeatAt", Value::from(iso(at))),
                    ]),
                ));
            }
            None => fields.push(("state", Value::from("unknown"))),
        },
        _ => fields.push(("state", Value::from("unknown"))),
    }
    fields.push(("computedAt", Value::from(iso(now))));
    object(fields)
}

/// A `limit` parameter (listRuns, listApprovals, listDocs): a positive integer, numeric strings
/// included; anything else is `INVALID_INPUT`.
pub(crate) fn positive_limit(value: Option<&Value>, default: usize) -> Result<usize, RpcError> {
    let Some(value) = value else {
        return Ok(default);
    };
    let number = match value {
        Value::String(text) => text.trim().parse::<f64>().ok(),
        other => other.cast_f64(),
    };
    match number {
        Some(n)
            if n.is_finite() && n >= 1.0 && n.fract() == 0.0 && n <= 9_007_199_254_740_991.0 =>
        {
            Ok(n as usize)
        }
        _ => Err(invalid_input("limit must be a positive integer")),
    }
}

pub async fn list_runs(context: &CallContext<'_>, params: &Value) -> Result<Value, RpcError> {
    let filter = params.get("filter");
    let field = |name: &str| filter.and_then(|f| f.get(name));
    let limit = positive_limit(field("limit"), 50)?;
    let offset = match field("offset") {
        None => 0,
        Some(value) => match value.cast_f64() {
            Some(n)
                if n.is_finite()
                    && n >= 0.0
                    && n.fract() == 0.0
                    && n <= 9_007_199_254_740_991.0
                    && !value.is_str() =>
            {
                n as usize
            }
            _ => return Err(invalid_request("offset must be a non-negative integer")),
        },
    };
    let status = optional_string(field("status"));
    let workflow = optional_string(field("workflow"));
    let include_system = field("includeSystem").and_then(|v| v.as_bool()) == Some(true);
    let storage_filter = RunFilter {
        // `running` also matches `continued`, so that filter is applied here.
        status: status.clone().filter(|s| s != "running"),
        parent_run_id: optional_string(field("parentRunId")),
        limit: LIST_RUNS_SCAN_MAX,
        offset: 0,
    };
    let rows = ask(&storage(context)?, |reply| Command::ListRuns {
        filter: storage_filter,
        reply,
    })
    .await?;
    let rows: Vec<Value> = rows
        .iter()
        .filter(|row| match status.as_deref() {
            Some("running") => row.status == "running" || row.status == "continued",
            _ => true,
        })
        .filter(|row| {
            workflow
                .as_deref()
                .is_none_or(|key| workflow_key_of(row) == key)
        })
        .filter(|row| include_system || !system_of(row))
        .skip(offset)
        .take(limit)
        .map(run_value)
        .collect();
    Ok(Value::Array(Box::new(rows)))
}

/// `listWorkflows`: registry rows sorted by key.
pub fn list_workflows(registry: &crate::engine::workflow::Registry, params: &Value) -> Value {
    let read = |name: &str| {
        params
            .get(name)
            .or_else(|| params.get("filter").and_then(|f| f.get(name)))
            .and_then(|v| v.as_bool())
    };
    let has_ui = read("hasUi");
    let include_system = read("includeSystem") == Some(true);
    let rows = registry
        .workflows
        .values()
        .filter(|workflow| include_system || !workflow.system)
        .filter(|workflow| has_ui.is_none_or(|wanted| wanted == workflow.ui_dir.is_some()))
        .map(|workflow| {
            let mut fields = vec![("key", Value::from(workflow.key.as_str()))];
            if let Some(name) = &workflow.readable_name {
                fields.push(("readableName", Value::from(name.as_str())));
            }
            if let Some(description) = &workflow.description {
                fields.push(("description", Value::from(description.as_str())));
            }
            fields.push(("hasUi", Value::from(workflow.ui_dir.is_some())));
            fields.push((
                "uiPath",
                if workflow.ui_dir.is_some() {
                    Value::from(format!("/workflows/{}", workflow.key))
                } else {
                    Value::null()
                },
            ));
            fields.push(("system", Value::from(workflow.system)));
            object(fields)
        })
        .collect();
    Value::Array(Box::new(rows))
}

fn approval_value(approval: &ApprovalRow, workflow_key: &str) -> Value {
    let request = approval.request_json.as_deref().map(|text| {
        let mut bytes = text.as_bytes().to_vec();
        simd_json::to_owned_value(&mut bytes).unwrap_or_else(|_| Value::null())
    });
    let request = request.unwrap_or_else(Value::null);
    let strings = |name: &str| -> Value {
        let items: Vec<Value> = match request.get(name) {
            Some(Value::Array(items))
                if items
                    .iter()
                    .all(|i| i.as_str().is_some_and(|s| !s.is_empty())) =>
            {
                items.to_vec()
            }
            _ => Vec::new(),
        };
        Value::Array(Box::new(items))
    };
    let options: Vec<Value> = match request.get("options") {
        Some(Value::Array(items)) => items
            .iter()
            .filter(|o| {
                o.get("key").and_then(|k| k.as_str()).is_some()
                    && o.get("label").and_then(|l| l.as_str()).is_some()
            })
            .cloned()
            .collect(),
        _ => Vec::new(),
    };
    object(vec![
        ("runId", Value::from(approval.run_id.as_str())),
        ("workflowKey", Value::from(workflow_key)),
        ("nodeId", Value::from(approval.node_id.as_str())),
        ("iteration", Value::from(approval.iteration)),
        (
            "requestTitle",
            Value::from(
                request
                    .get("title")
                    .and_then(|t| t.as_str())
                    .unwrap_or(approval.node_id.as_str()),
            ),
        ),
        (
            "requestSummary",
            nullable(request.get("summary").and_then(|s| s.as_str())),
        ),
        ("requestedAtMs", nullable_i64(approval.requested_at_ms)),
        (
            "approvalMode",
            Value::from(
                request
                    .get("mode")
                    .and_then(|m| m.as_str())
                    .unwrap_or("gate"),
            ),
        ),
        ("options", Value::Array(Box::new(options))),
        ("allowedScopes", strings("allowedScopes")),
        ("allowedUsers", strings("allowedUsers")),
        (
            "autoApprove",
            request
                .get("autoApprove")
                .filter(|a| a.is_object())
                .cloned()
                .unwrap_or_else(Value::null),
        ),
    ])
}

/// Pending approvals, oldest first (used by `listApprovals` and the hello snapshot).
pub async fn pending_approvals(
    storage: &StorageHandle,
    run_id: Option<String>,
    workflow: Option<&str>,
    limit: usize,
) -> Result<Vec<Value>, RpcError> {
    let approvals = ask(storage, |reply| Command::ListPendingApprovals {
        run_id,
        reply,
    })
    .await?;
    let mut keys: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut rows = Vec::new();
    for approval in &approvals {
        if !keys.contains_key(&approval.run_id) {
            let run = stored_run(storage, &approval.run_id).await?;
            let key = run
                .filter(|r| !TERMINAL_RUN_STATUSES.contains(&r.status.as_str()))
                .map(|r| workflow_key_of(&r));
            keys.insert(approval.run_id.clone(), key);
        }
        let Some(Some(key)) = keys.get(&approval.run_id) else {
            continue;
        };
        if workflow.is_some_and(|wanted| wanted != key) {
            continue;
        }
        rows.push(approval_value(approval, key));
        if rows.len() >= limit {
            break;
        }
    }
    Ok(rows)
}

pub async fn list_approvals(context: &CallContext<'_>, params: &Value) -> Result<Value, RpcError> {
    let read = |name: &str| {
        params
            .get(name)
            .or_else(|| params.get("filter").and_then(|f| f.get(name)))
    };
    let limit = positive_limit(read("limit"), usize::MAX)?;
    let run_id = optional_string(read("runId"));
    let workflow = optional_string(read("workflow"));
    let rows = pending_approvals(&storage(context)?, run_id, workflow.as_deref(), limit).await?;
    Ok(Value::Array(Box::new(rows)))
}

/// The hello snapshot's runs: up to 1,000 newest non-system runs that are running, waiting or
/// paused (PROTOCOL.md §6.3).
pub async fn snapshot_runs(storage: &StorageHandle) -> Result<Vec<Value>, RpcError> {
    let mut rows = Vec::new();
    // One bounded query per active status: the cost follows the active runs, not the history.
    for status in [
        "running",
        "waiting-approval",
        "waiting-event",
        "waiting-timer",
        "paused",
    ] {
        let filter = RunFilter {
            status: Some(status.to_string()),
            parent_run_id: None,
            limit: SNAPSHOT_RUNS_MAX,
            offset: 0,
        };
        let found = ask(storage, |reply| Command::ListRuns { filter, reply }).await?;
        rows.extend(found.into_iter().filter(|row| !system_of(row)));
    }
    rows.sort_by(|a, b| {
        b.created_at_ms
            .cmp(&a.created_at_ms)
            .then_with(|| a.run_id.cmp(&b.run_id))
    });
    Ok(rows.iter().take(SNAPSHOT_RUNS_MAX).map(run_value).collect())
}
