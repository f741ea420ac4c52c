//! RPC over both transports: `frame` (inbound request parsing with the protocol's bounds, outbound
//! response and event encoding), `connect` (the WebSocket handshake and the hello payload),
//! `dispatch` (scope check, method table, HTTP-only and WebSocket-only rules), `methods` (the run
//! family), `devtools` (snapshots, node output and diff, `streamDevTools` parameters), `cron`
//! (the cron methods), `records` (docs and tickets, memory facts, scores, prompts, accounts,
//! browser sessions), `control` (pause, hijack, rewind, retryTask, rerun) and `inspect`
//! (read-side inspection: lineage, frames, attempts, node states, token usage, schema
//! signature, run diffs, recaps).

pub mod common;
pub mod connect;
pub mod control;
pub mod cron;
pub mod devtools;
pub mod dispatch;
pub mod frame;
// Read-side inspection: lineage, frames, attempts, node states, token usage, schema, recaps.
pub mod inspect;
pub mod methods;
pub mod records;

/// JSON values as parsed from and written to the wire.
pub type Value = simd_json::OwnedValue;
pub type Object = simd_json::owned::Object;
