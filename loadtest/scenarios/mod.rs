//! The scenarios (docs/LOADTEST.md has what each one measures and why) and what they share:
//! opening many connections with a bounded number of handshakes in flight, pumping the event loop
//! until a deadline, driving a publisher closed-loop or at a fixed rate, and turning windows of
//! counts and /proc snapshots into named figures.
//!
//! Every loop here ends: by its deadline, by a count, or by a no-progress timeout.

pub mod backpressure;
pub mod broadcast;
pub mod connect_storm;
pub mod devtools;
pub mod idle;
pub mod mixed;
pub mod recorder;
pub mod rpc;

use crate::client::{Client, ConnState, Endpoint, Handshake, Path, Protocol};
use crate::publisher::{FifoPublisher, Outcome as PublishOutcome, Publisher};
use crate::server::{Kind, Server};
use crate::stats::{ms, Histogram, Snapshot, Window};
use crate::{sys, wire};
use anyhow::{anyhow, bail, Result};
use recorder::{Recorder, TAG_PUBLISHER};
use std::collections::BTreeMap;
use std::time::Duration;

/// Longest the client waits without any progress (no completion, no handshake) before it calls
/// the phase stuck.
pub const PROGRESS_TIMEOUT: Duration = Duration::from_secs(10);
/// A published event in flight longer than this is reported as incomplete, not waited for.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Epoll waits are at most this long, so deadlines are kept to the millisecond.
const POLL_NS: u64 = 1_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    Idle,
    Fanout,
    Sustained,
    Backpressure,
    ConnectStorm,
    Rpc,
    Devtools,
    Mixed,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Idle => "idle",
            Scenario::Fanout => "fanout",
            Scenario::Sustained => "sustained",
            Scenario::Backpressure => "backpressure",
            Scenario::ConnectStorm => "connect-storm",
            Scenario::Rpc => "rpc",
            Scenario::Devtools => "devtools",
            Scenario::Mixed => "mixed",
        }
    }

    /// Whether the baseline can run it (it has no run streams, no DevTools and no HTTP).
    pub fn has_baseline(self) -> bool {
        !matches!(self, Scenario::Devtools | Scenario::Mixed)
    }
}

/// Which bound cuts a stalled subscriber in `backpressure`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Bound {
    /// The per-stream bound of `streamRunEvents` (1,000 queued frames → `run.error`).
    Stream,
    /// The connection's outbound byte bound (`maxOutboundBytes` → close 1013).
    Connection,
}

/// Everything a scenario run needs to know, resolved from the command line.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Settings {
    pub scenario: Scenario,
    pub subscribers: usize,
    #[serde(serialize_with = "serialize_duration")]
    pub duration: Duration,
    #[serde(serialize_with = "serialize_duration")]
    pub warmup: Duration,
    pub frame_bytes: usize,
    pub connect_parallel: usize,
    pub check: bool,
    pub inflight: Vec<usize>,
    pub rate: f64,
    pub stalled: usize,
    pub bound: Bound,
    pub storm_parallel: usize,
    pub rpc_connections: usize,
    pub rpc_depths: Vec<usize>,
    pub rpc_http: bool,
    pub streams: usize,
    pub devtools_streams: usize,
    pub http_connections: usize,
    /// The gateway's `maxOutboundBytes` when loadtest starts it (`--outbound-bytes`).
    pub outbound_bytes_max: Option<u64>,
    #[serde(serialize_with = "serialize_duration")]
    pub settle: Duration,
}

fn serialize_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{}ms", d.as_millis()))
}

/// One phase's named figures (units in the names; docs/LOADTEST.md defines each).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Phase {
    pub name: String,
    pub metrics: BTreeMap<String, f64>,
}

impl Phase {
    pub fn new(name: impl Into<String>) -> Phase {
        Phase {
            name: name.into(),
            metrics: BTreeMap::new(),
        }
    }

    pub fn set(&mut self, key: &str, value: f64) {
        self.metrics.insert(key.to_string(), value);
    }

    /// CPU and memory figures of a window, per `units` of work (deliveries, requests…).
    pub fn window(&mut self, window: &Window, units: u64, unit_name: &str, connections: usize) {
        self.set("seconds", window.seconds);
        self.set("server_cpu_pct", window.server_cpu_percent());
        if let Some(busy) = window.server_core_busy_pct {
            self.set("server_core_busy_pct", busy);
        }
        if let Some(softirq) = window.server_core_softirq_pct {
            self.set("server_core_softirq_pct", softirq);
        }
        let client = window.client_cpu_percent();
        self.set("client_cpu_pct", client);
        self.set("client_bound", if client > 90.0 { 1.0 } else { 0.0 });
        if units > 0 {
            self.set(
                &format!("server_cpu_ns_per_{unit_name}"),
                window.server_cpu_ns as f64 / units as f64,
            );
        }
        self.set("server_rss_bytes", window.end.server_rss as f64);
        self.set("server_rss_anon_bytes", window.end.server_rss_anon as f64);
        if connections > 0 {
            self.set(
                "server_rss_anon_per_conn_bytes",
                window.end.server_rss_anon as f64 / connections as f64,
            );
        }
    }

    pub fn latency(&mut self, prefix: &str, histogram: &Histogram) {
        if histogram.count() == 0 {
            return;
        }
        self.set(&format!("{prefix}_p50_ms"), ms(histogram.quantile(0.50)));
        self.set(&format!("{prefix}_p99_ms"), ms(histogram.quantile(0.99)));
        self.set(&format!("{prefix}_max_ms"), ms(histogram.max()));
    }
}

/// What one scenario run produced.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Outcome {
    pub phases: Vec<Phase>,
    pub notes: Vec<String>,
    /// Failed checks (`--check`) and errors the server reported; any makes the exit code 1.
    pub failures: Vec<String>,
}

/// Runs `settings.scenario` once against `server`.
pub fn run(settings: &Settings, server: &Server) -> Result<Outcome> {
    match settings.scenario {
        Scenario::Idle => idle::run(settings, server),
        Scenario::Fanout => broadcast::fanout(settings, server),
        Scenario::Sustained => broadcast::sustained(settings, server),
        Scenario::Backpressure => backpressure::run(settings, server),
        Scenario::ConnectStorm => connect_storm::run(settings, server),
        Scenario::Rpc => rpc::run(settings, server),
        Scenario::Devtools => devtools::run(settings, server),
        Scenario::Mixed => mixed::run(settings, server),
    }
}

pub fn new_client(server: &Server) -> Result<Client> {
    Ok(Client::new(Endpoint {
        address: server.address,
        token: server.token.clone(),
    })?)
}

pub fn handshake_for(server: &Server) -> Handshake {
    match server.kind {
        Kind::Gateway => Handshake::Connect,
        Kind::Baseline => Handshake::None,
    }
}

/// Polls until `deadline_ns`.
pub fn pump(client: &mut Client, recorder: &mut Recorder, deadline_ns: u64) -> Result<()> {
    while sys::now_ns() < deadline_ns {
        client.poll(POLL_NS, recorder)?;
    }
    Ok(())
}

/// Opens `n` connections with at most `parallel` handshakes in flight and waits until all are
/// ready. Any handshake failure stops it with the server's answer.
#[allow(clippy::too_many_arguments)]
pub fn open_many(
    client: &mut Client,
    recorder: &mut Recorder,
    n: usize,
    protocol: Protocol,
    handshake: Handshake,
    tag: u32,
    parallel: usize,
    what: &str,
) -> Result<Vec<usize>> {
    let ready_before = recorder.ready;
    let closed_before = recorder.closed.len();
    let mut opened = Vec::with_capacity(n);
    let mut last_progress = sys::now_ns();
    let mut last_ready = ready_before;
    loop {
        let ready = (recorder.ready - ready_before) as usize;
        if ready >= n {
            break;
        }
        if recorder.closed.len() > closed_before || client.failures.handshakes > 0 {
            let why = client
                .failures
                .first
                .clone()
                .or_else(|| recorder.closed.last().map(|(_, _, r)| r.to_string()))
                .unwrap_or_default();
            let hint = if why.contains(" 503 ") {
                " (the server's maxConnections or maxPreAuthConnections is full: raise them, or lower --connect-parallel)"
            } else {
                ""
            };
            bail!("opening {what}: {ready} of {n} ready, then a connection failed: {why}{hint}");
        }
        while opened.len() < n && opened.len() - ready < parallel {
            let conn = client
                .open(protocol, Path::Root, handshake, tag)
                .map_err(|e| anyhow!("opening {what} ({} so far): {e}", opened.len()))?;
            opened.push(conn);
        }
        client.poll(POLL_NS, recorder)?;
        let now = sys::now_ns();
        if recorder.ready != last_ready {
            last_ready = recorder.ready;
            last_progress = now;
        } else if now - last_progress > PROGRESS_TIMEOUT.as_nanos() as u64 {
            bail!(
                "opening {what}: {ready} of {n} ready and no handshake finished for {PROGRESS_TIMEOUT:?}"
            );
        }
    }
    Ok(opened)
}

/// The publisher for a server: the pulse FIFO for the gateway, a `/publish` socket for the
/// baseline.
pub fn publisher_for(
    server: &Server,
    client: &mut Client,
    recorder: &mut Recorder,
) -> Result<Publisher> {
    match server.kind {
        Kind::Gateway => Ok(Publisher::Fifo(Box::new(FifoPublisher::start(server)?))),
        Kind::Baseline => {
            let conn = client.open(
                Protocol::WebSocket,
                Path::Publish,
                Handshake::None,
                TAG_PUBLISHER,
            )?;
            let deadline = sys::now_ns() + PROGRESS_TIMEOUT.as_nanos() as u64;
            while client.state(conn) != ConnState::Ready {
                if client.state(conn) == ConnState::Closed || sys::now_ns() > deadline {
                    bail!(
                        "the baseline publisher connection did not open: {}",
                        client.failures.first.clone().unwrap_or_default()
                    );
                }
                client.poll(POLL_NS, recorder)?;
            }
            Ok(Publisher::WebSocket { conn })
        }
    }
}

/// Line length that makes a `task.output` frame `frame_bytes` long on the wire for this server.
pub fn line_bytes(settings: &Settings, server: &Server) -> usize {
    let run_id_len = match server.kind {
        // The engine's run ids are UUIDs.
        Kind::Gateway => 36,
        Kind::Baseline => "baseline".len(),
    };
    settings
        .frame_bytes
        .saturating_sub(crate::publisher::frame_overhead(run_id_len))
        .max(24)
}

/// Publishes the next event now; `false` when the server is not taking it yet.
pub fn publish_one(
    publisher: &mut Publisher,
    client: &mut Client,
    recorder: &mut Recorder,
    line_len: usize,
) -> Result<bool> {
    let id = recorder.published.len() as u64;
    let line = wire::publish_line(id, line_len);
    let at = sys::now_ns();
    match publisher.publish(client, &line)? {
        PublishOutcome::Sent => {
            let recorded = recorder.publish(at);
            debug_assert_eq!(recorded, id);
            Ok(true)
        }
        PublishOutcome::Busy => Ok(false),
    }
}

/// Keeps `inflight` published events outstanding until `deadline_ns` (closed loop: a completion
/// releases the next publish).
pub fn closed_loop(
    publisher: &mut Publisher,
    client: &mut Client,
    recorder: &mut Recorder,
    line_len: usize,
    inflight: usize,
    deadline_ns: u64,
) -> Result<()> {
    let mut last_completed = recorder.completed;
    let mut last_progress = sys::now_ns();
    loop {
        let now = sys::now_ns();
        if now >= deadline_ns {
            return Ok(());
        }
        while recorder.outstanding() < inflight as u64 {
            if !publish_one(publisher, client, recorder, line_len)? {
                break;
            }
        }
        client.poll(POLL_NS, recorder)?;
        check_subscribers(recorder)?;
        if recorder.completed != last_completed {
            last_completed = recorder.completed;
            last_progress = sys::now_ns();
        } else if sys::now_ns() - last_progress > PROGRESS_TIMEOUT.as_nanos() as u64 {
            bail!(
                "no published event completed for {PROGRESS_TIMEOUT:?} ({} outstanding)",
                recorder.outstanding()
            );
        }
    }
}

/// Publishes at `rate` events per second until `deadline_ns`, whatever the completions (open
/// loop). Returns how many publishes were late because the server was not taking them.
pub fn open_loop(
    publisher: &mut Publisher,
    client: &mut Client,
    recorder: &mut Recorder,
    line_len: usize,
    rate: f64,
    deadline_ns: u64,
) -> Result<u64> {
    let interval_ns = (1e9 / rate.max(0.001)) as u64;
    let mut next_at = sys::now_ns();
    let mut late = 0u64;
    let backlog_max = (rate * 5.0).max(1_000.0) as u64;
    loop {
        let now = sys::now_ns();
        if now >= deadline_ns {
            return Ok(late);
        }
        while next_at <= now {
            if !publish_one(publisher, client, recorder, line_len)? {
                late += 1;
                break;
            }
            next_at += interval_ns;
        }
        if recorder.outstanding() > backlog_max {
            bail!(
                "the server fell behind: {} published events outstanding at {rate}/s",
                recorder.outstanding()
            );
        }
        let wait_ns = next_at.saturating_sub(sys::now_ns()).min(POLL_NS);
        client.poll(wait_ns, recorder)?;
        check_subscribers(recorder)?;
    }
}

/// Counted subscribers must stay connected during a measured phase.
fn check_subscribers(recorder: &Recorder) -> Result<()> {
    if let Some((conn, _, reason)) = recorder
        .closed
        .iter()
        .find(|(_, tag, _)| *tag == recorder::TAG_SUBSCRIBER)
    {
        bail!("subscriber connection {conn} closed during the run: {reason}");
    }
    Ok(())
}

/// Waits until every published event is complete or DRAIN_TIMEOUT passes; returns how many are
/// still incomplete.
pub fn drain(client: &mut Client, recorder: &mut Recorder) -> Result<u64> {
    let deadline = sys::now_ns() + DRAIN_TIMEOUT.as_nanos() as u64;
    while recorder.outstanding() > 0 && sys::now_ns() < deadline {
        client.poll(POLL_NS, recorder)?;
    }
    Ok(recorder.outstanding())
}

/// Takes a snapshot of the server and the client.
pub fn snapshot(server: &Server) -> Snapshot {
    Snapshot::take(server.pid, server.cpu)
}

/// Sends a request frame (masked) with `id` on each connection and waits for every answer.
/// Returns the answers that were not ok, as "code message" strings.
pub fn request_all(
    client: &mut Client,
    recorder: &mut Recorder,
    conns: &[usize],
    id: &str,
    method: &str,
    params: serde_json::Value,
) -> Result<Vec<String>> {
    let request = serde_json::json!({"type": "req", "id": id, "method": method, "params": params});
    let frame = wire::client_text(request.to_string().as_bytes());
    let replies_before = recorder.replies.len();
    for &conn in conns {
        client.send(conn, &frame);
    }
    let deadline = sys::now_ns() + PROGRESS_TIMEOUT.as_nanos() as u64;
    loop {
        let answered = recorder
            .replies
            .get(replies_before..)
            .unwrap_or_default()
            .iter()
            .filter(|r| r.id == id)
            .count();
        if answered >= conns.len() {
            break;
        }
        if sys::now_ns() > deadline {
            bail!(
                "{method}: {answered} of {} answers within {PROGRESS_TIMEOUT:?}",
                conns.len()
            );
        }
        client.poll(POLL_NS, recorder)?;
    }
    Ok(recorder
        .replies
        .get(replies_before..)
        .unwrap_or_default()
        .iter()
        .filter(|r| r.id == id && !r.ok)
        .map(|r| {
            let code = wire::string_field(r.text.as_bytes(), "code").unwrap_or("?");
            let message = wire::string_field(r.text.as_bytes(), "message").unwrap_or("");
            format!("{code} {message}")
        })
        .collect())
}

/// Counts the check of `--check` for broadcast scenarios: every counted subscriber got every
/// published event exactly once.
pub fn check_counts(recorder: &Recorder, subscribers: &[usize]) -> Vec<String> {
    let mut failures = Vec::new();
    let published = recorder.published.len() as u64;
    let incomplete = recorder
        .published
        .iter()
        .filter(|p| p.received != recorder.n_counted)
        .count();
    if incomplete > 0 {
        failures.push(format!(
            "{incomplete} of {published} published events did not reach exactly {} subscribers",
            recorder.n_counted
        ));
    }
    let short: Vec<(usize, u64)> = subscribers
        .iter()
        .filter_map(|&conn| {
            let marked = recorder.per_conn.get(conn).map_or(0, |p| p.marked);
            (marked != published).then_some((conn, marked))
        })
        .collect();
    if let Some((conn, marked)) = short.first() {
        failures.push(format!(
            "{} subscribers did not receive exactly {published} events (connection {conn}: {marked})",
            short.len()
        ));
    }
    if recorder.duplicates > 0 || recorder.unknown_ids > 0 {
        failures.push(format!(
            "{} duplicate and {} unknown deliveries",
            recorder.duplicates, recorder.unknown_ids
        ));
    }
    if published == 0 {
        failures.push("nothing was published".into());
    }
    failures
}

/// Adds the broadcast figures of a measured window to `phase`.
pub fn broadcast_figures(phase: &mut Phase, recorder: &Recorder, window: &Window, n: usize) {
    let seconds = window.seconds.max(1e-9);
    phase.set("deliveries_per_s", recorder.marked as f64 / seconds);
    phase.set("frames_per_s", recorder.frames as f64 / seconds);
    phase.set(
        "published_per_s",
        recorder.published_measured as f64 / seconds,
    );
    phase.window(window, recorder.marked, "delivery", n);
    if recorder.frames > 0 {
        phase.set(
            "server_cpu_ns_per_frame",
            window.server_cpu_ns as f64 / recorder.frames as f64,
        );
    }
    phase.latency("delivery", &recorder.delivery);
    phase.latency("completion", &recorder.completion);
}
