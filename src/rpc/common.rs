//! What every method family shares: the handles a handler needs (engine, storage), the legacy
//! error constructors, parameter readers with the spec's lenient typing (METHODS.md §0 rule 5),
//! and the nullable wire values. One definition each, so the families cannot drift apart.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::dispatch::CallContext;
use super::Value;
use crate::engine::core::{storage_rpc_error, EngineHandle};
use crate::error::{ErrorCode, RpcError};
use crate::storage::{Command, Reply, RunRow, StorageHandle};
use simd_json::prelude::*;

pub(crate) fn invalid_request(message: impl Into<String>) -> RpcError {
    RpcError::new(ErrorCode::InvalidRequestLegacy, message)
}

pub(crate) fn invalid_input(message: impl Into<String>) -> RpcError {
    RpcError::new(ErrorCode::InvalidInputLegacy, message)
}

/// The engine thread, or SERVER_ERROR when this gateway runs without one.
pub(crate) fn engine(context: &CallContext<'_>) -> Result<EngineHandle, RpcError> {
    context
        .state
        .engine
        .clone()
        .ok_or_else(|| RpcError::new(ErrorCode::ServerError, "The workflow engine is not running"))
}

/// The storage thread, or SERVER_ERROR when this gateway runs without one.
pub(crate) fn storage(context: &CallContext<'_>) -> Result<StorageHandle, RpcError> {
    context
        .state
        .storage
        .clone()
        .ok_or_else(|| RpcError::new(ErrorCode::ServerError, "Storage is not available"))
}

/// One storage command; a storage failure becomes the RPC error every method gives for it.
pub(crate) async fn ask<T>(
    storage: &StorageHandle,
    build: impl FnOnce(Reply<T>) -> Command,
) -> Result<T, RpcError> {
    storage.call(build).await.map_err(|e| storage_rpc_error(&e))
}

/// The stored row of `run_id`, if the run exists.
pub(crate) async fn stored_run(
    storage: &StorageHandle,
    run_id: &str,
) -> Result<Option<RunRow>, RpcError> {
    ask(storage, |reply| Command::GetRun {
        run_id: run_id.to_string(),
        reply,
    })
    .await
}

/// A required string parameter: present, a string, not empty.
pub(crate) fn required_string<'a>(params: &'a Value, name: &str) -> Option<&'a str> {
    optional_str(params, name).filter(|s| !s.is_empty())
}

/// An optional string parameter; a non-string counts as absent (METHODS.md §0 rule 5).
pub(crate) fn optional_str<'a>(params: &'a Value, name: &str) -> Option<&'a str> {
    params.get(name).and_then(|v| v.as_str())
}

pub(crate) fn nullable(value: Option<&str>) -> Value {
    value.map_or(Value::null(), Value::from)
}

pub(crate) fn nullable_i64(value: Option<i64>) -> Value {
    value.map_or(Value::null(), Value::from)
}

/// Wall-clock epoch milliseconds as stored (a clock past i64 saturates rather than wraps).
pub(crate) fn now_ms() -> i64 {
    i64::try_from(crate::clock::now_ms()).unwrap_or(i64::MAX)
}

/// Nesting depth of objects and arrays (the top container is 1; scalars add nothing), the
/// measure of METHODS.md §3.2 step 3.
pub(crate) fn container_depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(container_depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(container_depth).max().unwrap_or(0),
        _ => 0,
    }
}
