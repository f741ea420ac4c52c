//! `GatewayState`: the read-mostly state every worker shares (settings, the authenticator,
//! process identity, the global `stateVersion`, connection counters and slot guards).
//!
//! Invariant: no per-connection state lives here; counters are the only shared mutable values and
//! they are plain atomics (no locks on any request path).

use crate::auth::Authenticator;
use crate::config::GatewayConfig;
use crate::devtools::hub::DevToolsHub;
use crate::engine::core::EngineHandle;
use crate::engine::workflow::Registry;
use crate::events::hub::Hub;
use crate::storage::StorageHandle;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Counters read by `/metrics` and by the connection limits.
#[derive(Debug, Default)]
pub struct Counters {
    /// Accepted TCP sockets currently open (HTTP and WebSocket).
    pub sockets_open: AtomicUsize,
    /// Upgraded WebSockets that have not completed `connect`.
    pub pre_auth_connections: AtomicUsize,
    /// WebSockets that completed `connect`.
    pub authenticated_connections: AtomicUsize,
    pub sockets_refused: AtomicU64,
    pub http_requests: AtomicU64,
    pub http_refusals: AtomicU64,
    pub ws_upgrades: AtomicU64,
    pub ws_upgrade_refusals: AtomicU64,
    pub ws_messages: AtomicU64,
    pub rpc_errors: AtomicU64,
    pub auth_failures: AtomicU64,
    pub outbound_overflow_closes: AtomicU64,
    /// Run or DevTools streams torn down with BackpressureDisconnect.
    pub stream_backpressure_cuts: AtomicU64,
    /// WebSocket requests that waited because their socket had `maxRequestsInFlight` running.
    pub requests_deferred: AtomicU64,
}

#[derive(Debug)]
pub struct GatewayState {
    pub config: GatewayConfig,
    pub authenticator: Authenticator,
    pub started_at: Instant,
    pub started_at_ms: u64,
    pub pid: u32,
    pub counters: Counters,
    /// Broadcasts to the workers; owns the global `stateVersion` (PROTOCOL.md §12).
    pub hub: Arc<Hub>,
    /// Loaded workflows.
    pub registry: Arc<Registry>,
    /// The storage thread; None only in the echo harness.
    pub storage: Option<StorageHandle>,
    /// The engine thread; None only in the echo harness.
    pub engine: Option<EngineHandle>,
    /// DevTools streams and their shared snapshot/delta cache, fed by the engine.
    pub devtools: Arc<DevToolsHub>,
    /// The port the gateway listens on (session cookie name, logs).
    pub port: u16,
}

impl GatewayState {
    pub fn new(
        config: GatewayConfig,
        authenticator: Authenticator,
        services: Services,
        port: u16,
    ) -> Arc<GatewayState> {
        Arc::new(GatewayState {
            config,
            authenticator,
            started_at: Instant::now(),
            started_at_ms: crate::clock::now_ms(),
            pid: std::process::id(),
            counters: Counters::default(),
            hub: services.hub,
            registry: services.registry,
            storage: services.storage,
            engine: services.engine,
            devtools: services.devtools,
            port,
        })
    }

    pub fn state_version(&self) -> u64 {
        self.hub.state_version()
    }
}

/// The threads behind the gateway, started before the workers.
#[derive(Clone, Debug)]
pub struct Services {
    pub hub: Arc<Hub>,
    pub registry: Arc<Registry>,
    pub storage: Option<StorageHandle>,
    pub engine: Option<EngineHandle>,
    pub devtools: Arc<DevToolsHub>,
}

impl Services {
    /// No storage and no engine: only the transport (the Autobahn echo harness).
    pub fn transport_only(n_workers: usize) -> Services {
        Services {
            hub: Hub::new(n_workers, 1),
            registry: Arc::new(Registry::default()),
            storage: None,
            engine: None,
            devtools: Arc::new(DevToolsHub::default()),
        }
    }
}

/// A held slot in a bounded counter, released on drop.
#[derive(Debug)]
pub struct Slot {
    state: Arc<GatewayState>,
    kind: SlotKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotKind {
    Socket,
    PreAuth,
    Authenticated,
}

fn counter(state: &GatewayState, kind: SlotKind) -> &AtomicUsize {
    match kind {
        SlotKind::Socket => &state.counters.sockets_open,
        SlotKind::PreAuth => &state.counters.pre_auth_connections,
        SlotKind::Authenticated => &state.counters.authenticated_connections,
    }
}

impl Slot {
    /// Takes a slot when fewer than `max` are held.
    pub fn try_acquire(state: &Arc<GatewayState>, kind: SlotKind, max: usize) -> Option<Slot> {
        counter(state, kind)
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held < max).then_some(held + 1)
            })
            .ok()
            .map(|_| Slot {
                state: state.clone(),
                kind,
            })
    }

    pub fn kind(&self) -> SlotKind {
        self.kind
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let previous = counter(&self.state, self.kind).fetch_sub(1, Ordering::AcqRel);
        debug_assert!(previous > 0, "slot counter underflow");
    }
}
