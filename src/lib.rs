//! smithers-gateway: the headless control plane of the Smithers workflow orchestrator.
//!
//! The crate is one library with a thin binary (`src/main.rs`). `docs/ARCHITECTURE.md` is the map;
//! each module below opens with what it owns and what it must never do.

// Settings and every limit, with their defaults.
pub mod config;
// The spec's error codes, their HTTP statuses, and the RPC error value.
pub mod error;
// Wall-clock helpers (epoch milliseconds).
pub mod clock;
// HTTP/1.1: sans-IO request parsing, responses, routing.
pub mod http;
// WebSocket (RFC 6455): sans-IO frame and message codec, upgrade handshake.
pub mod ws;
// RPC frames, the connect handshake, method dispatch.
pub mod rpc;
// Request gates, auth modes (token, JWT, trusted proxy), the scope grammar.
pub mod auth;
// The storage thread: the only SQLite connection, typed commands, group commit.
pub mod storage;
// The event hub: engine broadcasts to workers, serialized once.
pub mod events;
// Workflow definitions, frame rendering and the engine thread.
pub mod engine;
// Cron expressions (cron-parser 5.x semantics) and the scheduler.
pub mod cron;
// DevTools: snapshots, deltas, the stream hub, node output and diff payloads.
pub mod devtools;
// Assembles storage, engine, hub and workers into a running gateway.
pub mod gateway;
// Worker threads, listeners, connection tasks, shutdown.
pub mod runtime;
// Shared gateway state: settings, identity, counters, slots.
pub mod state;
// Prometheus text for GET /metrics.
pub mod metrics;
// GET /v1/auth/session: the browser session hand-off.
pub mod session;
// Admin token bootstrap in the data directory.
pub mod bootstrap;
// Structured logging set-up.
pub mod logging;
