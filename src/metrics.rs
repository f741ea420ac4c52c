//! `GET /metrics`: Prometheus text exposition of the gateway's counters. Names are ours
//! (PROTOCOL.md §10 leaves them to the implementation); later issues add event and storage series.

use crate::state::GatewayState;
use std::fmt::Write;
use std::sync::atomic::Ordering;

pub fn render(state: &GatewayState) -> String {
    let counters = &state.counters;
    let mut out = String::with_capacity(1024);
    let mut series = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    series(
        "smithers_gateway_sockets_open",
        "gauge",
        "Accepted TCP connections currently open.",
        counters.sockets_open.load(Ordering::Relaxed) as u64,
    );
    series(
        "smithers_gateway_connections_pre_auth",
        "gauge",
        "WebSockets upgraded but not yet connected.",
        counters.pre_auth_connections.load(Ordering::Relaxed) as u64,
    );
    series(
        "smithers_gateway_connections_authenticated",
        "gauge",
        "WebSockets that completed connect.",
        counters.authenticated_connections.load(Ordering::Relaxed) as u64,
    );
    series(
        "smithers_gateway_sockets_refused_total",
        "counter",
        "Connections closed at accept because the socket limit was reached.",
        counters.sockets_refused.load(Ordering::Relaxed),
    );
    series(
        "smithers_gateway_http_requests_total",
        "counter",
        "HTTP request heads parsed.",
        counters.http_requests.load(Ordering::Relaxed),
    );
    series(
        "smithers_gateway_http_refusals_total",
        "counter",
        "HTTP requests refused at the parser (4xx/5xx, connection closed).",
        counters.http_refusals.load(Ordering::Relaxed),
    );
    series(
        "smithers_gateway_ws_upgrades_total",
        "counter",
        "WebSocket upgrades accepted.",
        counters.ws_upgrades.load(Ordering::Relaxed),
    );
    series(
        "smithers_gateway_ws_upgrade_refusals_total",
        "counter",
        "WebSocket upgrades refused (limits, gates, bad handshakes).",
        counters.ws_upgrade_refusals.load(Ordering::Relaxed),
    );
    series(
        "smithers_gateway_ws_messages_total",
        "counter",
        "WebSocket data messages received.",
        counters.ws_messages.load(Ordering::Relaxed),
    );
    series(
        "smithers_gateway_rpc_errors_total",
        "counter",
        "RPC calls answered with an error.",
        counters.rpc_errors.load(Ordering::Relaxed),
    );
    series(
        "smithers_gateway_auth_failures_total",
        "counter",
        "Failed authentications.",
        counters.auth_failures.load(Ordering::Relaxed),
    );
    series(
        "smithers_gateway_events_sent_total",
        "counter",
        "Event frames queued to sockets.",
        counters.events_sent.load(Ordering::Relaxed),
    );
    series(
        "smithers_gateway_outbound_overflow_closes_total",
        "counter",
        "Sockets closed with 1013 because their outbound queue passed its bound.",
        counters.outbound_overflow_closes.load(Ordering::Relaxed),
    );
    series(
        "smithers_gateway_events_published_total",
        "counter",
        "Domain events broadcast by the engine through the hub.",
        state.hub.published(),
    );
    series(
        "smithers_gateway_event_serializations_total",
        "counter",
        "Event bodies serialized by the hub (one per broadcast, whatever the recipients).",
        state.hub.serializations(),
    );
    series(
        "smithers_gateway_workflows_loaded",
        "gauge",
        "Workflows in the registry.",
        state.registry.workflows.len() as u64,
    );
    series(
        "smithers_gateway_state_version",
        "gauge",
        "Global broadcast counter.",
        state.state_version(),
    );
    out
}
