//! The cron methods (METHODS.md §3.24–3.27): `cronList`, `cronCreate`, `cronDelete`, `cronRun`
//! and their legacy names, with the reference's validation order and legacy error codes. Rows are
//! read and written through storage; `cronRun` launches through the engine with the caller's auth.
//!
//! One deliberate difference (spec README "Where this project deliberately differs"): a pattern
//! that cannot fire is `INVALID_INPUT` 400 with the parser's reason, where the reference throws
//! and answers `SERVER_ERROR` 500.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::common::{
    ask, container_depth, invalid_input, invalid_request, now_ms, nullable_i64, required_string,
    storage,
};
use super::dispatch::CallContext;
use super::frame::object;
use super::methods::{LAUNCH_INPUT_BYTES_MAX, LAUNCH_INPUT_DEPTH_MAX};
use super::Value;
use crate::cron::schedule;
use crate::cron::scheduler::{workflow_of, GATEWAY_PREFIX};
use crate::engine::core::{storage_rpc_error, AuthContext, LaunchRequest};
use crate::error::{ErrorCode, RpcError};
use crate::storage::{Command, CronRow, Mutation, StorageError};
use simd_json::prelude::*;

/// A cron row as the wire shows it (METHODS.md §3.24).
pub fn cron_value(row: &CronRow) -> Value {
    object(vec![
        ("cronId", Value::from(row.cron_id.as_str())),
        ("pattern", Value::from(row.pattern.as_str())),
        ("workflowPath", Value::from(row.workflow_path.as_str())),
        ("enabled", Value::from(row.enabled)),
        ("createdAtMs", Value::from(row.created_at_ms)),
        ("lastRunAtMs", nullable_i64(row.last_run_at_ms)),
        ("nextRunAtMs", nullable_i64(row.next_run_at_ms)),
        (
            "errorJson",
            row.error_json.as_deref().map_or(Value::null(), Value::from),
        ),
        ("workflow", Value::from(workflow_of(row))),
    ])
}

/// `cronList`: every row, oldest first; only `filter.workflow` filters.
pub async fn cron_list(context: &CallContext<'_>, params: &Value) -> Result<Value, RpcError> {
    let workflow = params
        .get("filter")
        .and_then(|filter| filter.get("workflow"))
        .and_then(|v| v.as_str());
    let rows = ask(&storage(context)?, |reply| Command::ListCrons { reply }).await?;
    let rows = rows
        .iter()
        .filter(|row| workflow.is_none_or(|wanted| workflow_of(row) == wanted))
        .map(cron_value)
        .collect();
    Ok(Value::Array(Box::new(rows)))
}

/// `cronCreate`: validate, compute the next fire, upsert by id.
pub async fn cron_create(context: &CallContext<'_>, params: &Value) -> Result<Value, RpcError> {
    let (Some(workflow), Some(pattern)) = (
        required_string(params, "workflow"),
        required_string(params, "pattern"),
    ) else {
        return Err(invalid_request("workflow and pattern are required"));
    };
    // The registry is loaded once at start, so "after one refresh" has nothing to refresh.
    if !context.state.registry.workflows.contains_key(workflow) {
        return Err(RpcError::new(
            ErrorCode::NotFound,
            format!("Unknown workflow: {workflow}"),
        ));
    }
    let now = now_ms();
    let next_run_at_ms = schedule::next_fire(pattern, now)
        .map_err(|error| invalid_input(format!("Invalid cron pattern: {error}")))?;
    let cron_id = required_string(params, "cronId")
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let enabled = params
        .get("enabled")
        .and_then(|v| v.as_bool())
        .unwrap_or(true);
    let row = CronRow {
        cron_id,
        pattern: pattern.to_string(),
        workflow_path: format!("{GATEWAY_PREFIX}{workflow}"),
        enabled,
        created_at_ms: now,
        last_run_at_ms: None,
        next_run_at_ms: Some(next_run_at_ms),
        error_json: None,
    };
    let mutations = vec![Mutation::UpsertCron(row.clone())];
    ask(&storage(context)?, |reply| Command::Write {
        mutations,
        reply,
    })
    .await?;
    // The payload is what was asked for, as the reference answers (an existing id keeps its
    // stored creation time, last run and error; `cronList` shows those).
    Ok(cron_value(&row))
}

/// `cronDelete`.
pub async fn cron_delete(context: &CallContext<'_>, params: &Value) -> Result<Value, RpcError> {
    let Some(cron_id) = required_string(params, "cronId") else {
        return Err(invalid_request("cronId is required"));
    };
    let mutations = vec![Mutation::DeleteCron {
        cron_id: cron_id.to_string(),
    }];
    match storage(context)?
        .call(|reply| Command::Write { mutations, reply })
        .await
    {
        Ok(_) => Ok(object(vec![
            ("cronId", Value::from(cron_id)),
            ("removed", Value::from(true)),
        ])),
        Err(StorageError::NotFound(_)) => Err(RpcError::new(
            ErrorCode::NotFound,
            format!("Cron not found: {cron_id}"),
        )),
        Err(error) => Err(storage_rpc_error(&error)),
    }
}

/// `cronRun`: run a cron's workflow (or a named one) now, as the caller.
pub async fn cron_run(context: &CallContext<'_>, params: &Value) -> Result<Value, RpcError> {
    let storage = storage(context)?;
    let found = match required_string(params, "cronId") {
        Some(cron_id) => {
            ask(&storage, |reply| Command::GetCron {
                cron_id: cron_id.to_string(),
                reply,
            })
            .await?
        }
        None => None,
    };
    let workflow = match (&found, required_string(params, "workflow")) {
        (Some(row), _) => workflow_of(row).to_string(),
        (None, Some(workflow)) => workflow.to_string(),
        (None, None) => return Err(invalid_request("cronId or workflow is required")),
    };
    if let Some(row) = &found {
        // Recorded before the input is validated and whatever `enabled` says (METHODS.md §3.27).
        let now = now_ms();
        let next_run_at_ms = schedule::parse(&row.pattern)
            .ok()
            .and_then(|parsed| parsed.next_after(now));
        let mutations = vec![Mutation::RecordCronRun {
            cron_id: row.cron_id.clone(),
            last_run_at_ms: now,
            next_run_at_ms,
            error: None,
        }];
        ask(&storage, |reply| Command::Write { mutations, reply }).await?;
    }
    let input = match params.get("input") {
        Some(input @ Value::Object(_)) => input.clone(),
        _ => Value::Object(Box::default()),
    };
    let mut serialized = Vec::new();
    super::frame::write_value(&mut serialized, &input);
    if serialized.len() > LAUNCH_INPUT_BYTES_MAX {
        return Err(invalid_input(format!(
            "Gateway RPC input exceeds {LAUNCH_INPUT_BYTES_MAX} bytes."
        )));
    }
    if container_depth(&input) > LAUNCH_INPUT_DEPTH_MAX {
        return Err(invalid_input(format!(
            "Gateway RPC input exceeds the maximum nesting depth of {LAUNCH_INPUT_DEPTH_MAX}."
        )));
    }
    // The reference answers an unknown workflow here with a 500, not NOT_FOUND.
    if !context.state.registry.workflows.contains_key(&workflow) {
        return Err(RpcError::new(
            ErrorCode::ServerError,
            format!("Unknown workflow: {workflow}"),
        ));
    }
    let engine = context.state.engine.clone().ok_or_else(|| {
        RpcError::new(ErrorCode::ServerError, "The workflow engine is not running")
    })?;
    let outcome = engine
        .launch(LaunchRequest {
            workflow,
            input,
            run_id: None,
            idempotency_key: None,
            auth: AuthContext::of_caller(context.principal),
            started_by: None,
            options: Vec::new(),
        })
        .await?;
    context.subscribe(&outcome.run_id);
    Ok(super::methods::launch_payload(&outcome))
}
