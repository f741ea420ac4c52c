//! RPC over both transports: `frame` (inbound request parsing with the protocol's bounds, outbound
//! response and event encoding), `connect` (the WebSocket handshake and the hello payload),
//! `dispatch` (scope check, method table, HTTP-only and WebSocket-only rules), `methods` (the run
//! family), `devtools` (snapshots, node output and diff, `streamDevTools` parameters), `cron`
//! (the cron methods), `records` (docs and tickets, memory facts, scores, prompts, accounts,
//! browser sessions) and `control` (pause, hijack, rewind, retryTask, rerun).

pub mod connect;
pub mod control;
pub mod cron;
pub mod devtools;
pub mod dispatch;
pub mod frame;
pub mod methods;
pub mod records;

/// JSON values as parsed from and written to the wire.
pub type Value = simd_json::OwnedValue;
pub type Object = simd_json::owned::Object;
