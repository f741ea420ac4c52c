//! Run control (METHODS.md §3.5, §3.6, §5.1, §5.6 and REWIND.md): `pauseRun` (`runs.pause`),
//! `hijackRun`, `rewindRun` (`jumpToFrame`, `devtools.jumpToFrame`), `retryTask` and
//! `runs.rerun`. Validation runs in the spec's order; state changes go to the engine (pause,
//! retry, the relaunch of a rerun), and `rewindRun`'s audit rows to storage.
//!
//! A rewind that moves a run back is not built: `rewindRun` authorizes, validates, rate limits
//! and audits every call, answers a rewind to the latest frame as the spec's no-op, and refuses
//! an earlier frame with `RewindFailed` (docs/DECISIONS.md).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::common::{ask, engine, invalid_request, required_string, storage, stored_run};
use super::devtools::{read_run_id, INT31_MAX};
use super::dispatch::CallContext;
use super::frame::object;
use super::methods::launch_run;
use super::Value;
use crate::engine::core::{storage_rpc_error, workflow_key_of, AuthContext, RetryRequest};
use crate::error::{ErrorCode, RpcError};
use crate::storage::{Command, Mutation, RunRow, StorageHandle, TimeTravelAuditRow};
use simd_json::prelude::*;
use std::time::{Duration, Instant};

/// `retryTask` waits this many times this long for an execution to stop (METHODS.md §5.6).
const RETRY_WAIT_ROUNDS: u32 = 40;
const RETRY_WAIT_STEP: Duration = Duration::from_millis(25);
/// Rewinds a caller may complete per run and window (REWIND.md §4).
const REWIND_QUOTA: i64 = 10;
const REWIND_QUOTA_WINDOW_MS: i64 = 3_600_000;
/// A run whose heartbeat is younger than this looks live to a rewind (REWIND.md §3 step 10).
const REWIND_LIVE_HEARTBEAT_MS: i64 = 30_000;
/// The audit's caller column is cut to this many characters.
const AUDIT_CALLER_CHARS_MAX: usize = 256;

pub const REWIND_EARLIER_UNSUPPORTED: &str =
    "Rewind to an earlier frame is not supported by this gateway yet";

// ---- pauseRun ----

pub async fn pause_run(context: &CallContext<'_>, params: &Value) -> Result<Value, RpcError> {
    let run_id = required_string(params, "runId")
        .ok_or_else(|| invalid_request("runId is required"))?
        .to_string();
    engine(context)?.pause(run_id.clone()).await?;
    Ok(object(vec![
        ("runId", Value::from(run_id.as_str())),
        ("status", Value::from("pausing")),
    ]))
}

// ---- hijackRun ----

/// No state and no event: the session id is for the `/v1/pty/hijack` hand-off and is not kept.
pub async fn hijack_run(context: &CallContext<'_>, params: &Value) -> Result<Value, RpcError> {
    let run_id = required_string(params, "runId")
        .ok_or_else(|| RpcError::new(ErrorCode::InvalidRunId, "runId is required"))?;
    if stored_run(&storage(context)?, run_id).await?.is_none() {
        return Err(RpcError::new(ErrorCode::RunNotFound, "Run not found"));
    }
    Ok(object(vec![
        ("runId", Value::from(run_id)),
        ("status", Value::from("hijack-ready")),
        (
            "sessionId",
            Value::from(uuid::Uuid::new_v4().to_string().as_str()),
        ),
    ]))
}

// ---- retryTask ----

pub async fn retry_task(context: &CallContext<'_>, params: &Value) -> Result<Value, RpcError> {
    let (Some(run_id), Some(node_id)) = (
        required_string(params, "runId"),
        required_string(params, "nodeId"),
    ) else {
        return Err(invalid_request("runId and nodeId are required"));
    };
    let iteration = params
        .get("iteration")
        .and_then(|v| v.cast_f64())
        .filter(|n| n.is_finite())
        .map_or(0, |n| n as i64);
    let reset_dependents = params
        .get("resetDependents")
        .and_then(|v| v.as_bool())
        .unwrap_or(true);
    let request = RetryRequest {
        run_id: run_id.to_string(),
        node_id: node_id.to_string(),
        iteration,
        reset_dependents,
        auth: AuthContext::of_caller(context.principal),
    };
    let engine = engine(context)?;
    let mut round = 1;
    let outcome = loop {
        match engine.retry_task(request.clone()).await {
            Err(error) if error.code == ErrorCode::RunActive && round < RETRY_WAIT_ROUNDS => {
                round += 1;
                monoio::time::sleep(RETRY_WAIT_STEP).await;
            }
            other => break other?,
        }
    };
    context.subscribe(run_id);
    Ok(object(vec![
        ("runId", Value::from(run_id)),
        ("nodeId", Value::from(node_id)),
        ("iteration", Value::from(iteration)),
        (
            "resetNodes",
            Value::Array(Box::new(
                outcome
                    .reset_nodes
                    .iter()
                    .map(|id| Value::from(id.as_str()))
                    .collect(),
            )),
        ),
        ("status", Value::from("retry_requested")),
    ]))
}

// ---- runs.rerun ----

/// The stored input of a run as a launch input: without `runId`, and a lone wrapped `payload`
/// object unwrapped (METHODS.md §5.1).
fn rerun_input(input_json: &str) -> Value {
    let mut bytes = input_json.as_bytes().to_vec();
    let mut input = match simd_json::to_owned_value(&mut bytes) {
        Ok(Value::Object(map)) => *map,
        _ => Default::default(),
    };
    input.remove("runId");
    if input.len() == 1 {
        if let Some(Value::Object(payload)) = input.get("payload") {
            return Value::Object(payload.clone());
        }
    }
    Value::Object(Box::new(input))
}

/// Launches the run's workflow again with its input, through `launchRun` (same checks, same
/// payload, the caller auto-subscribed).
pub async fn rerun(context: &CallContext<'_>, params: &Value) -> Result<Value, RpcError> {
    let run_id =
        required_string(params, "runId").ok_or_else(|| invalid_request("runId is required"))?;
    let Some(row) = stored_run(&storage(context)?, run_id).await? else {
        return Err(RpcError::new(
            ErrorCode::NotFound,
            format!("Run not found: {run_id}"),
        ));
    };
    let mut launch = vec![
        ("workflow", Value::from(workflow_key_of(&row).as_str())),
        ("input", rerun_input(&row.input_json)),
    ];
    if let Some(new_run_id) = params.get("newRunId").and_then(|v| v.as_str()) {
        launch.push(("runId", Value::from(new_run_id)));
    }
    launch_run(context, &object(launch)).await
}

// ---- rewindRun ----

/// The audit's `caller`: the user id, else `gateway`; trimmed, cut, `unknown` when empty.
fn audit_caller(user_id: Option<&str>) -> String {
    let caller: String = user_id
        .unwrap_or("gateway")
        .trim()
        .chars()
        .take(AUDIT_CALLER_CHARS_MAX)
        .collect();
    if caller.is_empty() {
        "unknown".into()
    } else {
        caller
    }
}

/// `config.auth.triggeredBy`: the run owner (AUTH.md §8).
fn run_owner(row: &RunRow) -> Option<String> {
    let mut bytes = row.config_json.as_deref()?.as_bytes().to_vec();
    let config = simd_json::to_owned_value(&mut bytes).ok()?;
    config
        .get("auth")
        .and_then(|auth| auth.get("triggeredBy"))
        .and_then(|v| v.as_str())
        .map(str::to_string)
}

/// A JSON integer (or integral float) within 0…2^31−1.
fn frame_no_of(value: &Value) -> Option<i64> {
    if let Some(n) = value.as_i64() {
        return (0..=INT31_MAX).contains(&n).then_some(n);
    }
    if value.as_u64().is_some() {
        return None;
    }
    value
        .as_f64()
        .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= INT31_MAX as f64)
        .map(|f| f as i64)
}

/// One audit write; the call's answer does not wait on a second round trip.
struct Audit<'a> {
    storage: &'a StorageHandle,
    run_id: &'a str,
    caller: String,
    to_frame_no: i64,
    started_at_ms: i64,
    started: Instant,
}

impl Audit<'_> {
    async fn record(&self, from_frame_no: i64, result: &str) -> Result<(), RpcError> {
        let duration_ms = self.started.elapsed().as_millis() as u64;
        let details = object(vec![("durationMs", Value::from(duration_ms))]);
        let mut details_json = Vec::new();
        super::frame::write_value(&mut details_json, &details);
        let row = TimeTravelAuditRow {
            run_id: self.run_id.to_string(),
            from_frame_no,
            to_frame_no: self.to_frame_no,
            caller: self.caller.clone(),
            result: result.to_string(),
            created_at_ms: self.started_at_ms,
            details_json: String::from_utf8(details_json).ok(),
        };
        self.storage
            .call(|reply| Command::Write {
                mutations: vec![Mutation::InsertTimeTravelAudit(row)],
                reply,
            })
            .await
            .map(|_| ())
            .map_err(|e| storage_rpc_error(&e))
    }
}

fn frame_out_of_range(message: String) -> RpcError {
    RpcError::new(ErrorCode::FrameOutOfRange, message)
}

/// REWIND.md §3: stage A (gateway) then stage B (rewind engine), each check in order.
pub async fn rewind_run(context: &CallContext<'_>, params: &Value) -> Result<Value, RpcError> {
    let started = Instant::now();
    let started_at_ms = crate::clock::now_ms() as i64;
    // Stage A.
    let run_id = required_string(params, "runId")
        .ok_or_else(|| RpcError::new(ErrorCode::InvalidRunId, "runId is required"))?;
    let frame_value = params
        .get("frameNo")
        .filter(|v| v.cast_f64().is_some_and(f64::is_finite))
        .ok_or_else(|| RpcError::new(ErrorCode::InvalidFrameNo, "frameNo is required"))?;
    let storage = storage(context)?;
    let Some(row) = stored_run(&storage, run_id).await? else {
        return Err(RpcError::new(
            ErrorCode::RunNotFound,
            format!("Run not found: {run_id}"),
        ));
    };
    let principal = context.principal;
    let audit = Audit {
        storage: &storage,
        run_id,
        caller: audit_caller(principal.user_id.as_deref()),
        to_frame_no: frame_no_of(frame_value).unwrap_or(-1),
        started_at_ms,
        started,
    };
    let admin = principal.role.eq_ignore_ascii_case("admin");
    let owner = principal
        .user_id
        .as_deref()
        .is_some_and(|user| run_owner(&row).as_deref() == Some(user));
    if !admin && !owner {
        audit.record(-1, "failed").await?;
        return Err(RpcError::new(
            ErrorCode::UnauthorizedV1,
            "Only the run owner or an admin may rewind this run.",
        ));
    }
    // Stage B.
    read_run_id(params)?;
    let Some(frame_no) = frame_no_of(frame_value) else {
        return Err(RpcError::new(
            ErrorCode::InvalidFrameNo,
            "frameNo must be a non-negative i32 integer.",
        ));
    };
    if params.get("confirm").and_then(|v| v.as_bool()) != Some(true) {
        return Err(RpcError::new(
            ErrorCode::ConfirmationRequired,
            "Rewinding a run is destructive; pass confirm: true to proceed.",
        ));
    }
    let force = params.get("force").and_then(|v| v.as_bool()) == Some(true);
    let own_owner = format!("pid:{}", context.state.pid);
    let live = row.runtime_owner_id.as_deref() == Some(own_owner.as_str())
        || row
            .heartbeat_at_ms
            .is_some_and(|at| started_at_ms - at < REWIND_LIVE_HEARTBEAT_MS);
    if !force && row.status == "running" && live {
        let details = object(vec![
            ("runId", Value::from(run_id)),
            (
                "runtimeOwnerId",
                row.runtime_owner_id
                    .as_deref()
                    .map_or(Value::null(), Value::from),
            ),
            (
                "heartbeatAtMs",
                row.heartbeat_at_ms.map_or(Value::null(), Value::from),
            ),
        ]);
        return Err(RpcError::new(
            ErrorCode::RunOwnerAlive,
            format!("Run {run_id} is still executing; pass force: true to rewind a live run."),
        )
        .with("details", details));
    }
    let counted = ask(&storage, |reply| Command::CountTimeTravelAudits {
        run_id: run_id.to_string(),
        caller: audit.caller.clone(),
        since_ms: started_at_ms - REWIND_QUOTA_WINDOW_MS,
        reply,
    })
    .await?;
    if counted >= REWIND_QUOTA {
        audit.record(-1, "rejected").await?;
        return Err(RpcError::new(
            ErrorCode::RateLimited,
            format!("Rewind quota exceeded for {run_id}; max {REWIND_QUOTA} per 60m."),
        ));
    }
    let latest = ask(&storage, |reply| Command::LatestFrame {
        run_id: run_id.to_string(),
        reply,
    })
    .await?
    .unwrap_or(0);
    let refusal = if latest == 0 {
        Some(frame_out_of_range(format!("Run {run_id} has no frames.")))
    } else if frame_no > latest {
        Some(frame_out_of_range(format!(
            "frameNo must be between 0 and {latest}."
        )))
    } else {
        let frame = ask(&storage, |reply| Command::GetFrame {
            run_id: run_id.to_string(),
            frame_no,
            reply,
        })
        .await?;
        if frame.is_none() {
            Some(frame_out_of_range(format!(
                "Frame {frame_no} does not exist for run {run_id}."
            )))
        } else if frame_no < latest {
            Some(
                RpcError::new(ErrorCode::RewindFailed, REWIND_EARLIER_UNSUPPORTED).with(
                    "details",
                    object(vec![
                        ("runId", Value::from(run_id)),
                        ("stage", Value::from("plan")),
                    ]),
                ),
            )
        } else {
            None
        }
    };
    let from_frame_no = if latest == 0 { -1 } else { latest };
    if let Some(error) = refusal {
        audit.record(from_frame_no, "failed").await?;
        return Err(error);
    }
    // The latest frame: a successful no-op (REWIND.md §2), no event, nothing paused or resumed.
    audit.record(from_frame_no, "success").await?;
    Ok(object(vec![
        ("ok", Value::from(true)),
        ("newFrameNo", Value::from(frame_no)),
        ("revertedSandboxes", Value::from(0u64)),
        ("deletedFrames", Value::from(0u64)),
        ("deletedAttempts", Value::from(0u64)),
        ("invalidatedDiffs", Value::from(0u64)),
        (
            "durationMs",
            Value::from(started.elapsed().as_millis() as u64),
        ),
        (
            "effectBoundary",
            object(vec![
                ("blocking", Value::Array(Box::default())),
                ("revertible", Value::Array(Box::default())),
                ("warnings", Value::Array(Box::default())),
            ]),
        ),
    ]))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn value(text: &str) -> Value {
        let mut bytes = text.as_bytes().to_vec();
        simd_json::to_owned_value(&mut bytes).unwrap()
    }

    #[test]
    fn frame_numbers() {
        for (text, expected) in [
            ("0", Some(0)),
            ("7", Some(7)),
            ("7.0", Some(7)),
            ("2147483647", Some(INT31_MAX)),
            ("2147483648", None),
            ("-1", None),
            ("1.5", None),
            ("18446744073709551615", None),
            ("\"3\"", None),
        ] {
            assert_eq!(frame_no_of(&value(text)), expected, "{text}");
        }
    }

    #[test]
    fn audit_callers() {
        assert_eq!(audit_caller(Some(" alice ")), "alice");
        assert_eq!(audit_caller(None), "gateway");
        assert_eq!(audit_caller(Some("   ")), "unknown");
        assert_eq!(audit_caller(Some(&"x".repeat(300))).len(), 256);
    }

    #[test]
    fn rerun_inputs() {
        let cases = [
            (r#"{"a":1,"runId":"r"}"#, r#"{"a":1}"#),
            (r#"{"payload":{"b":2}}"#, r#"{"b":2}"#),
            (r#"{"payload":{"b":2},"runId":"r"}"#, r#"{"b":2}"#),
            (
                r#"{"payload":{"b":2},"c":3}"#,
                r#"{"payload":{"b":2},"c":3}"#,
            ),
            (r#"[1]"#, r#"{}"#),
            (r#"not json"#, r#"{}"#),
        ];
        for (stored, expected) in cases {
            assert_eq!(rerun_input(stored), value(expected), "{stored}");
        }
    }
}
