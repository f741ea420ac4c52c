//! Work docs over `_smithers_docs` (DATA.md §9): `listDocs` (METHODS.md §3.16) and the ticket
//! methods `listTickets`, `createTicket`, `updateTicket`, `deleteTicket` (§4.8), with the
//! reference's legacy codes (`INVALID_REQUEST`, `NOT_FOUND`). Deletion is a tombstone; creating a
//! deleted path revives it. Kinds are stored as given: §4.8 validates only `path` and `content`.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use crate::engine::core::storage_rpc_error;
use crate::error::{ErrorCode, RpcError};
use crate::rpc::common::{
    ask, invalid_request, now_ms, nullable, nullable_i64, optional_str, storage,
};
use crate::rpc::dispatch::CallContext;
use crate::rpc::frame::object;
use crate::rpc::methods::positive_limit;
use crate::rpc::Value;
use crate::storage::records::{DocFilter, DocMutation, DocRow, RecordsQuery};
use crate::storage::{Command, Mutation, StorageError, StorageHandle};
use simd_json::prelude::*;

/// `listDocs`'s default and largest `limit` (METHODS.md §3.16).
pub const LIST_DOCS_LIMIT_DEFAULT: usize = 4_096;
pub const LIST_DOCS_LIMIT_MAX: usize = 10_000;

/// A doc as `listDocs` shows it.
fn doc_value(row: &DocRow) -> Value {
    object(vec![
        ("path", Value::from(row.path.as_str())),
        ("kind", Value::from(row.kind.as_str())),
        ("content", Value::from(row.content.as_str())),
        ("contentHash", Value::from(row.content_hash.as_str())),
        ("status", nullable(row.status.as_deref())),
        ("updatedAtMs", Value::from(row.updated_at_ms)),
        ("deletedAtMs", nullable_i64(row.deleted_at_ms)),
    ])
}

/// A ticket row (a live doc, so without `deletedAtMs`).
fn ticket_value(row: &DocRow) -> Value {
    object(vec![
        ("path", Value::from(row.path.as_str())),
        ("kind", Value::from(row.kind.as_str())),
        ("content", Value::from(row.content.as_str())),
        ("contentHash", Value::from(row.content_hash.as_str())),
        ("status", nullable(row.status.as_deref())),
        ("updatedAtMs", Value::from(row.updated_at_ms)),
    ])
}

fn rows_value(rows: &[DocRow], shape: fn(&DocRow) -> Value) -> Value {
    Value::Array(Box::new(rows.iter().map(shape).collect()))
}

/// `listDocs`: each filter from params, else from `filter`; `limit` must be a positive integer
/// (`INVALID_INPUT`, as listApprovals) and is clamped to 10,000.
pub async fn list_docs(context: &CallContext<'_>, params: &Value) -> Result<Value, RpcError> {
    let read = |name: &str| {
        params
            .get(name)
            .or_else(|| params.get("filter").and_then(|f| f.get(name)))
    };
    let limit = positive_limit(read("limit"), LIST_DOCS_LIMIT_DEFAULT)?.min(LIST_DOCS_LIMIT_MAX);
    let filter = DocFilter {
        kind: read("kind").and_then(|v| v.as_str()).map(str::to_string),
        include_deleted: read("includeDeleted").and_then(|v| v.as_bool()) == Some(true),
        updated_after_ms: read("updatedAfterMs")
            .filter(|v| !v.is_str())
            .and_then(|v| v.cast_f64())
            .filter(|n| n.is_finite()),
        limit,
    };
    let rows = ask(&storage(context)?, |reply| {
        Command::Records(RecordsQuery::ListDocs { filter, reply })
    })
    .await?;
    Ok(rows_value(&rows, doc_value))
}

/// The store backing tickets; the reference's message when it has none.
fn ticket_storage(context: &CallContext<'_>) -> Result<StorageHandle, RpcError> {
    context
        .state
        .storage
        .clone()
        .ok_or_else(|| invalid_request("No workflow is registered to back ticket storage"))
}

/// `path`: a non-empty string.
fn path_param(params: &Value) -> Result<&str, RpcError> {
    optional_str(params, "path")
        .filter(|path| !path.is_empty())
        .ok_or_else(|| invalid_request("path is required"))
}

fn ticket_not_found(path: &str) -> RpcError {
    RpcError::new(ErrorCode::NotFound, format!("Ticket not found: {path}"))
}

/// Applies one doc write and returns the row it left.
async fn write_doc(
    context: &CallContext<'_>,
    path: &str,
    mutation: DocMutation,
) -> Result<DocRow, RpcError> {
    let mutations = vec![Mutation::Doc(mutation)];
    match ticket_storage(context)?
        .call(|reply| Command::Write { mutations, reply })
        .await
    {
        Ok(mut outcome) => outcome
            .docs
            .pop()
            .ok_or_else(|| RpcError::new(ErrorCode::ServerError, "storage returned no doc row")),
        Err(StorageError::NotFound(_)) => Err(ticket_not_found(path)),
        Err(error) => Err(storage_rpc_error(&error)),
    }
}

/// `listTickets`: live docs, `kind` an exact filter.
pub async fn list_tickets(context: &CallContext<'_>, params: &Value) -> Result<Value, RpcError> {
    let kind = optional_str(params, "kind").map(str::to_string);
    let rows = ask(&ticket_storage(context)?, |reply| {
        Command::Records(RecordsQuery::ListTickets { kind, reply })
    })
    .await?;
    Ok(rows_value(&rows, ticket_value))
}

/// `createTicket`: create, replace or revive.
pub async fn create_ticket(context: &CallContext<'_>, params: &Value) -> Result<Value, RpcError> {
    let path = path_param(params)?;
    let Some(content) = optional_str(params, "content") else {
        return Err(invalid_request("content is required"));
    };
    // An empty kind would make a doc no kind filter can name; it means "the default".
    let kind = optional_str(params, "kind").filter(|kind| !kind.is_empty());
    let mutation = DocMutation::Put {
        path: path.to_string(),
        content: content.to_string(),
        kind: kind.map(str::to_string),
        status: optional_str(params, "status").map(str::to_string),
        now_ms: now_ms(),
    };
    Ok(ticket_value(&write_doc(context, path, mutation).await?))
}

/// `updateTicket`: patch `content` and/or `status` of a live ticket.
pub async fn update_ticket(context: &CallContext<'_>, params: &Value) -> Result<Value, RpcError> {
    let path = path_param(params)?;
    let mutation = DocMutation::Patch {
        path: path.to_string(),
        content: optional_str(params, "content").map(str::to_string),
        status: optional_str(params, "status").map(str::to_string),
        now_ms: now_ms(),
    };
    Ok(ticket_value(&write_doc(context, path, mutation).await?))
}

/// `deleteTicket`: tombstone a live ticket.
pub async fn delete_ticket(context: &CallContext<'_>, params: &Value) -> Result<Value, RpcError> {
    let path = path_param(params)?;
    let mutation = DocMutation::Delete {
        path: path.to_string(),
        now_ms: now_ms(),
    };
    write_doc(context, path, mutation).await?;
    Ok(object(vec![
        ("path", Value::from(path)),
        ("deleted", Value::from(true)),
    ]))
}
