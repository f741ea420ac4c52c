//! Method dispatch (METHODS.md §0): the scope check first, then the handler by exact name, with
//! the transport rules (WebSocket-only methods over HTTP, `ext.*` names, unknown methods).
//! Handlers receive params as sent; non-objects are treated as `{}` by each handler.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::control;
use super::cron;
use super::devtools;
use super::frame::object;
use super::inspect;
use super::methods;
use super::records;
use super::Value;
use crate::auth::scope::{has_scope, required_scope};
use crate::auth::Principal;
use crate::error::{ErrorCode, RpcError};
use crate::state::GatewayState;
use simd_json::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    WebSocket,
    Http,
}

/// Methods that only make sense on a socket (they stream).
const WEBSOCKET_ONLY_METHODS: &[&str] = &["streamRunEvents", "streamDevTools"];

/// Everything a handler may read about its caller.
pub struct CallContext<'a> {
    pub state: &'a GatewayState,
    pub principal: &'a Principal,
    pub transport: Transport,
    /// Adds a run to the calling socket's subscription filter (auto-subscribe); None on HTTP.
    pub subscriber: Option<&'a dyn Fn(&str)>,
    /// Whether the calling socket's filter lets DevTools read a run; None on HTTP.
    pub run_filter: Option<&'a dyn Fn(&str) -> bool>,
}

impl CallContext<'_> {
    /// Auto-subscribe (PROTOCOL.md §13): only sockets have a filter to add the run to.
    pub fn subscribe(&self, run_id: &str) {
        if let Some(subscriber) = self.subscriber {
            subscriber(run_id);
        }
    }

    /// PROTOCOL.md §13: DevTools on a filtered socket needs the run in the filter (an explicit
    /// empty filter denies every run); HTTP callers are never filtered.
    pub fn allows_run(&self, run_id: &str) -> bool {
        self.run_filter.is_none_or(|allows| allows(run_id))
    }
}

/// A success payload: a value, or JSON already serialized (DevTools payloads, whose key order
/// is part of the wire and whose objects may have more keys than `Value` keeps in order).
#[derive(Debug, PartialEq)]
pub enum Payload {
    Value(Value),
    Json(Vec<u8>),
}

impl Payload {
    /// The response frame for request `id`.
    pub fn encode_response(&self, id: &str) -> Vec<u8> {
        match self {
            Payload::Value(value) => super::frame::encode_response_ok(id, value),
            Payload::Json(json) => super::frame::encode_response_raw(id, json),
        }
    }
}

/// The scope check of AUTH.md §4: `FORBIDDEN` with `requiredScope` when it fails.
pub fn check_scope(principal: &Principal, method: &str) -> Result<(), RpcError> {
    let required = required_scope(method);
    if has_scope(&principal.scopes, required, method) {
        return Ok(());
    }
    Err(RpcError::new(
        ErrorCode::Forbidden,
        format!(
            "Missing required scope {} for {}",
            required.as_str(),
            method
        ),
    )
    .with("requiredScope", required.as_str()))
}

/// Runs one call. `connect` never reaches here on a socket (the session handles it).
pub async fn dispatch(
    context: &CallContext<'_>,
    method: &str,
    params: &Value,
) -> Result<Payload, RpcError> {
    check_scope(context.principal, method)?;
    if context.transport == Transport::Http && WEBSOCKET_ONLY_METHODS.contains(&method) {
        return Err(RpcError::new(
            ErrorCode::InvalidRequestLegacy,
            format!("{method} is only supported over websocket connections"),
        ));
    }
    // Records: browser methods reject non-object params (METHODS.md §0 rule 4's exception), so
    // they get the params as sent, before the rule below.
    if let Some(result) = records::browser::call(method, params) {
        return result.map(Payload::Value);
    }
    // METHODS.md §0 rule 4: params that are not an object are treated as `{}`.
    let empty = Value::Object(Box::default());
    let params = if params.is_object() { params } else { &empty };
    let value = match method {
        "getDevToolsSnapshot" => {
            return devtools::get_snapshot(context, params)
                .await
                .map(Payload::Json)
        }
        "getNodeOutput" | "devtools.getNodeOutput" => {
            return devtools::get_node_output(context, params)
                .await
                .map(Payload::Json)
        }
        "getNodeDiff" | "devtools.getNodeDiff" => {
            return devtools::get_node_diff(context, params)
                .await
                .map(Payload::Json)
        }
        "health" => Ok(health_payload(context.state)),
        "launchRun" | "runs.create" => methods::launch_run(context, params).await,
        "getRun" | "runs.get" => methods::get_run(context, params).await,
        "listRuns" | "runs.list" => methods::list_runs(context, params).await,
        "cancelRun" | "runs.cancel" => methods::cancel_run(context, params).await,
        "resumeRun" => methods::resume_run(context, params).await,
        "listWorkflows" | "workflows.list" => {
            Ok(methods::list_workflows(&context.state.registry, params))
        }
        "listApprovals" | "approvals.list" => methods::list_approvals(context, params).await,
        "submitApproval" | "approvals.decide" => methods::submit_approval(context, params).await,
        "submitSignal" | "signals.send" => methods::submit_signal(context, params).await,
        "cronList" | "cron.list" => cron::cron_list(context, params).await,
        "cronCreate" | "cron.add" => cron::cron_create(context, params).await,
        "cronDelete" | "cron.remove" => cron::cron_delete(context, params).await,
        "cronRun" | "cron.trigger" => cron::cron_run(context, params).await,
        // Records (METHODS.md §3.16, §4; browser methods are answered above).
        "listDocs" => records::tickets::list_docs(context, params).await,
        "listTickets" => records::tickets::list_tickets(context, params).await,
        "createTicket" => records::tickets::create_ticket(context, params).await,
        "updateTicket" => records::tickets::update_ticket(context, params).await,
        "deleteTicket" => records::tickets::delete_ticket(context, params).await,
        "listMemoryFacts" => records::list_memory_facts(context, params).await,
        "listScores" => records::scores::list_scores(context, params).await,
        "listScoresForRuns" => records::scores::list_scores_for_runs(context, params).await,
        "getScoreDetail" => records::scores::get_score_detail(context, params).await,
        "listPrompts" => records::prompts::list_prompts(context).await,
        "listAccounts" => Ok(records::list_accounts()),
        "listUsageReports" => Ok(records::list_usage_reports()),
        // Run control.
        "pauseRun" | "runs.pause" => control::pause_run(context, params).await,
        "hijackRun" => control::hijack_run(context, params).await,
        "rewindRun" | "jumpToFrame" | "devtools.jumpToFrame" => {
            control::rewind_run(context, params).await
        }
        "retryTask" => control::retry_task(context, params).await,
        "runs.rerun" => control::rerun(context, params).await,
        // Read-side inspection (rpc::inspect).
        "listRunDescendants" | "runs.descendants" => {
            inspect::list_run_descendants(context, params).await
        }
        "listRunTokenUsage" => inspect::list_run_token_usage(context, params).await,
        "getSchemaSignature" => inspect::get_schema_signature(context).await,
        "getRunDiff" => inspect::get_run_diff(context, params).await,
        "whatHappened" => inspect::what_happened(context, params).await,
        "runs.diff" => inspect::runs_diff(context, params).await,
        "frames.list" => inspect::frames_list(context, params).await,
        "frames.get" => inspect::frames_get(context, params).await,
        "attempts.list" => inspect::attempts_list(context, params).await,
        "attempts.get" => inspect::attempts_get(context, params).await,
        "listNodeStates" => inspect::list_node_states(context, params).await,
        // End of read-side inspection.
        _ if method.starts_with("ext.") => Err(RpcError::new(
            ErrorCode::ExtensionMethodNotFound,
            format!("Unknown extension method: {method}"),
        )
        .with("method", method)),
        _ => Err(RpcError::new(
            ErrorCode::MethodNotFound,
            format!("Unknown method: {method}"),
        )),
    };
    value.map(Payload::Value)
}

/// `identity` of health and hello (PROTOCOL.md §2.1).
pub fn identity(state: &GatewayState) -> Value {
    object(vec![
        (
            "workspaceRoot",
            state
                .config
                .workspace_root
                .clone()
                .map_or(Value::null(), Value::from),
        ),
        (
            "backend",
            if state.storage.is_some() {
                Value::from("sqlite")
            } else {
                Value::null()
            },
        ),
        ("version", Value::from(env!("CARGO_PKG_VERSION"))),
        ("pid", Value::from(u64::from(state.pid))),
        ("startedAtMs", Value::from(state.started_at_ms)),
    ])
}

fn features(state: &GatewayState) -> Value {
    Value::Array(Box::new(
        state
            .config
            .features
            .iter()
            .map(|f| Value::from(f.as_str()))
            .collect(),
    ))
}

/// `GET /health` body (with `ok`).
pub fn health_http_body(state: &GatewayState) -> Value {
    object(vec![
        ("ok", Value::from(true)),
        ("protocol", Value::from(u64::from(state.config.protocol))),
        ("features", features(state)),
        ("stateVersion", Value::from(state.state_version())),
        ("identity", identity(state)),
        (
            "workflowsLoaded",
            Value::from(state.registry.workflows.len() as u64),
        ),
        (
            "workflowsTotal",
            Value::from(state.registry.workflows.len() as u64),
        ),
    ])
}

/// The `health` RPC payload: as `/health` without `ok`, plus `uptimeMs`.
pub fn health_payload(state: &GatewayState) -> Value {
    object(vec![
        ("protocol", Value::from(u64::from(state.config.protocol))),
        ("features", features(state)),
        ("stateVersion", Value::from(state.state_version())),
        (
            "uptimeMs",
            Value::from(state.started_at.elapsed().as_millis() as u64),
        ),
        ("identity", identity(state)),
        (
            "workflowsLoaded",
            Value::from(state.registry.workflows.len() as u64),
        ),
        (
            "workflowsTotal",
            Value::from(state.registry.workflows.len() as u64),
        ),
    ])
}

/// Used by hello: the feature list and protocol as configured.
pub fn hello_features(state: &GatewayState) -> Value {
    features(state)
}
