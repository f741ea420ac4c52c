//! `GET /metrics`: Prometheus text exposition of the gateway's counters. Names are ours
//! (PROTOCOL.md §10 leaves them to the implementation); later issues add event and storage series.

use crate::state::GatewayState;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in microseconds (Prometheus `le`, in seconds on output).
const LATENCY_BUCKETS_US: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

/// A Prometheus histogram of durations with fixed buckets, updated lock-free from any thread.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Non-cumulative counts per bucket; the last slot is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl LatencyHistogram {
    pub fn record(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let index = LATENCY_BUCKETS_US
            .iter()
            .position(|&bound| us <= bound)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        if let Some(bucket) = self.buckets.get(index) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in LATENCY_BUCKETS_US.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let seconds = *bound as f64 / 1e6;
            let _ = writeln!(out, "{name}_bucket{{le=\"{seconds}\"}} {cumulative}");
        }
        let total = self.count();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {total}");
    }
}

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
        state.hub.events_sent(),
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
    series(
        "smithers_gateway_stream_backpressure_cuts_total",
        "counter",
        "Run or DevTools streams ended with BackpressureDisconnect (the socket stays open).",
        counters.stream_backpressure_cuts.load(Ordering::Relaxed),
    );
    series(
        "smithers_gateway_devtools_streams",
        "gauge",
        "Open streamDevTools subscriptions.",
        state.devtools.n_streams() as u64,
    );
    series(
        "smithers_gateway_devtools_snapshots_built_total",
        "counter",
        "DevTools snapshots built and serialized (once per frame of a watched run).",
        state.devtools.snapshots_built(),
    );
    series(
        "smithers_gateway_devtools_deltas_built_total",
        "counter",
        "DevTools deltas built and serialized (once per frame of a watched run).",
        state.devtools.deltas_built(),
    );
    series(
        "smithers_gateway_requests_deferred_total",
        "counter",
        "WebSocket requests that waited for a slot under maxRequestsInFlight.",
        counters.requests_deferred.load(Ordering::Relaxed),
    );
    let workers = state.hub.all_worker_stats();
    let mut per_worker = |name: &str, kind: &str, help: &str, value: &dyn Fn(usize) -> u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for index in 0..workers.len() {
            let _ = writeln!(out, "{name}{{worker=\"{index}\"}} {}", value(index));
        }
    };
    let load = |index: usize, pick: fn(&crate::events::hub::WorkerStats) -> &AtomicU64| {
        workers
            .get(index)
            .map_or(0, |stats| pick(stats).load(Ordering::Relaxed))
    };
    per_worker(
        "smithers_gateway_deliveries_total",
        "counter",
        "Event frames queued to this worker's sockets (broadcasts and stream frames).",
        &|index| load(index, |stats| &stats.deliveries),
    );
    per_worker(
        "smithers_gateway_outbound_bytes_queued",
        "gauge",
        "Bytes queued for this worker's sockets, not yet taken by the kernel.",
        &|index| load(index, |stats| &stats.outbound_bytes),
    );
    per_worker(
        "smithers_gateway_outbound_bytes_written_total",
        "counter",
        "Bytes written to this worker's WebSockets.",
        &|index| load(index, |stats| &stats.bytes_written),
    );
    if let Some(storage) = &state.storage {
        storage.latency().render(
            &mut out,
            "smithers_gateway_storage_command_seconds",
            "Storage command round trips (queue, execution, commit), as seen by the caller.",
        );
    }
    out
}
