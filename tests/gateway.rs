//! One integration binary: every test starts a real gateway on 127.0.0.1 (ephemeral port) and
//! talks to it over real sockets. GATEWAY_DRIVER=legacy runs the same suite on epoll.

// Test server, clients, token minting.
#[path = "support/mod.rs"]
mod support;
// connect.challenge, connect validation, hello, ticks, repeated connect, pre-connect rules.
#[path = "handshake.rs"]
mod handshake;
// maxPayload, protocol violations and close codes, the outbound bound, shutdown.
#[path = "ws_limits.rs"]
mod ws_limits;
// Tidy checks over the source tree (module comments, dependency comments).
#[path = "tidy.rs"]
mod tidy;
// HTTP/1.1 transport: fixed routes, response headers, keep-alive, smuggling, limits, deadlines.
#[path = "http.rs"]
mod http;
// HTTP RPC (`POST /rpc`, `POST /v1/rpc/<method>`): ids, credentials, refusals and their statuses.
#[path = "rpc_http.rs"]
mod rpc_http;
// Auth end to end: JWT vectors, token/proxy/no-auth modes, gates, session cookie, limits, binary logs.
#[path = "auth.rs"]
mod auth;
// Runs end to end: launch, events, approvals, signals, cancel, retries, timeouts, restart.
#[path = "runs.rs"]
mod runs;
// Engine end to end: parallel, loops, timers, signals, approvals, tasks, cancel, restarts, crashes.
#[path = "engine.rs"]
mod engine;
// Run event streams: ordered frames, replay, gap resync, heartbeats, validation and caps.
#[path = "streams.rs"]
mod streams;
// Fan-out: one serialization per event, identical bodies for every subscriber.
#[path = "fanout.rs"]
mod fanout;
// DevTools: snapshots, node output and diff, streamDevTools (deltas, rebaselines, backpressure).
#[path = "devtools.rs"]
mod devtools;
// Cron: the four methods and legacy names, scopes, schedules, scheduled fires, restart policy.
#[path = "cron.rs"]
mod cron;
// Records: docs and tickets, memory facts, scores, prompts, accounts, browser sessions, scopes.
#[path = "records.rs"]
mod records;
// Run control: pauseRun, hijackRun, rewindRun (audit, quota), retryTask, runs.rerun.
#[path = "control.rs"]
mod control;
// Read-side inspection: lineage, frames, attempts, node states, token usage, schema, recaps, diffs.
#[path = "inspect.rs"]
mod inspect;
// The whole RPC surface: every name dispatched, scopes per family, aliases, seq and stateVersion.
#[path = "surface.rs"]
mod surface;
