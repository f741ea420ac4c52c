//! The subsystem methods (METHODS.md §3.16 and §4): data the reference's TypeScript subsystems
//! produce (work docs and tickets, memory facts, scorer results, prompt files, agent accounts, a
//! headless browser). The tables exist here and are read and written through storage; where the
//! subsystem does not exist in our runtime the methods keep their shapes, scopes and validation
//! and answer what METHODS.md gives as the minimal behaviour.
//!
//! `tickets` (listDocs and the ticket CRUD over `_smithers_docs`), `scores` (listScores,
//! listScoresForRuns, getScoreDetail), `prompts` (the prompts directory walk, off the workers),
//! `browser` (strict validation, no sessions); memory facts and accounts are here.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

pub mod browser;
pub mod prompts;
pub mod scores;
pub mod tickets;

use super::dispatch::CallContext;
use super::frame::object;
use super::Value;
use crate::error::RpcError;
use crate::rpc::common::{ask, nullable, nullable_i64, optional_str, storage};
use crate::storage::records::{MemoryFactRow, RecordsQuery};
use crate::storage::Command;
use simd_json::prelude::*;

fn memory_fact_value(row: &MemoryFactRow) -> Value {
    object(vec![
        ("namespace", Value::from(row.namespace.as_str())),
        ("key", Value::from(row.key.as_str())),
        ("valueJson", Value::from(row.value_json.as_str())),
        ("schemaSig", nullable(row.schema_sig.as_deref())),
        ("createdAtMs", Value::from(row.created_at_ms)),
        ("updatedAtMs", Value::from(row.updated_at_ms)),
        ("ttlMs", nullable_i64(row.ttl_ms)),
    ])
}

/// `listMemoryFacts` (METHODS.md §4.3): the table, `namespace` an exact filter. No product path
/// writes facts yet, so this is usually `[]`.
pub async fn list_memory_facts(
    context: &CallContext<'_>,
    params: &Value,
) -> Result<Value, RpcError> {
    let namespace = optional_str(params, "namespace").map(str::to_string);
    let rows = ask(&storage(context)?, |reply| {
        Command::Records(RecordsQuery::ListMemoryFacts { namespace, reply })
    })
    .await?;
    Ok(Value::Array(Box::new(
        rows.iter().map(memory_fact_value).collect(),
    )))
}

/// `listAccounts` (METHODS.md §4.1): the minimal behaviour, `[]`. The reference reads a user-level
/// accounts registry whose location and format the protocol does not define, and our runtime
/// runs no agent CLIs that such accounts would configure (docs/DECISIONS.md).
pub fn list_accounts() -> Value {
    Value::Array(Box::default())
}

/// `listUsageReports` (METHODS.md §4.2): `[]` for the same reason; `fresh` is accepted and has
/// nothing to bypass.
pub fn list_usage_reports() -> Value {
    Value::Array(Box::default())
}
