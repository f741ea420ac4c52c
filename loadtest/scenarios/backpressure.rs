//! `backpressure`: K stalled subscribers among N fast ones, events published at a fixed rate.
//!
//! Two measured phases on the same connections: `no-stall` (everyone reads) gives the fast
//! subscribers' reference latency; in `stall` the K stalled connections stop reading. With
//! `--bound stream` each stalled connection first opens a `streamRunEvents` stream on the pulse
//! run, so the gateway's per-stream bound (1,000 queued frames, EVENTS.md §3.5) applies; with
//! `--bound connection` the connection's byte bound (`maxOutboundBytes`, close 1013) applies.
//!
//! When the cut happened is read back from what the stalled connection receives once it reads
//! again: after `run.error` the socket gets the run's raw events, and the first of them names the
//! first event published after the cut, so the cut lies between the stall start and that event's
//! publish time (resolution: one publish interval). The connection bound has no such marker; its
//! cut time comes from polling the gateway's /metrics counter of 1013 closes every 5 ms.

use super::recorder::{Recorder, TAG_STALLED, TAG_SUBSCRIBER};
use super::{
    broadcast_figures, drain, handshake_for, line_bytes, new_client, open_loop, open_many,
    publisher_for, pump, request_all, snapshot, Bound, Outcome, Phase, Settings,
};
use crate::client::{CloseReason, Protocol};
use crate::publisher::Publisher;
use crate::server::{Kind, Server};
use crate::stats::{median, Window};
use crate::{control, sys};
use anyhow::{bail, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Frames a stream may queue before the gateway cuts it (EVENTS.md §3.5).
const STREAM_FRAMES_BOUND: f64 = 1_000.0;
/// Frames the kernel absorbs for a stalled reader with SO_SNDBUF = 64 KiB (PERFORMANCE.md §3).
const KERNEL_FRAMES: f64 = 600.0;
/// Lines the stall phase may publish: it must stay on one pulse run (9,900 lines at most).
const STALL_LINES_MAX: f64 = 8_500.0;
/// How long stalled connections may take to read their backlog once they resume.
const RESUME_READ: Duration = Duration::from_secs(3);
const METRIC_POLL: Duration = Duration::from_millis(5);
const OVERFLOW_METRIC: &str = "smithers_gateway_outbound_overflow_closes_total";

/// Polls the gateway's count of 1013 closes and records when it grows.
struct OverflowWatcher {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<u64>>>,
}

impl OverflowWatcher {
    fn start(server: &Server) -> Result<OverflowWatcher> {
        let address = server.address;
        let initial = control::metric(address, OVERFLOW_METRIC)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("overflow-watch".into())
            .spawn(move || {
                let mut seen = initial;
                let mut times = Vec::new();
                while !flag.load(Ordering::Relaxed) {
                    if let Ok(value) = control::metric(address, OVERFLOW_METRIC) {
                        let now = sys::now_ns();
                        while seen < value && times.len() < 100_000 {
                            times.push(now);
                            seen += 1.0;
                        }
                    }
                    std::thread::sleep(METRIC_POLL);
                }
                times
            })?;
        Ok(OverflowWatcher {
            stop,
            thread: Some(thread),
        })
    }

    fn finish(mut self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

pub fn run(settings: &Settings, server: &Server) -> Result<Outcome> {
    let mut outcome = Outcome::default();
    if settings.rate <= 0.0 {
        bail!("backpressure needs --rate above 0");
    }
    let mut client = new_client(server)?;
    let mut recorder = Recorder::default();
    let n = settings.subscribers;
    let handshake = handshake_for(server);
    let fast = open_many(
        &mut client,
        &mut recorder,
        n,
        Protocol::WebSocket,
        handshake,
        TAG_SUBSCRIBER,
        settings.connect_parallel,
        "fast subscribers",
    )?;
    let stalled = open_many(
        &mut client,
        &mut recorder,
        settings.stalled,
        Protocol::WebSocket,
        handshake,
        TAG_STALLED,
        settings.connect_parallel,
        "stalled subscribers",
    )?;
    recorder.n_counted = n as u32;
    let mut publisher = publisher_for(server, &mut client, &mut recorder)?;
    let line_len = line_bytes(settings, server);
    let result = phases(
        settings,
        server,
        &mut client,
        &mut recorder,
        &mut publisher,
        line_len,
        &stalled,
        &mut outcome,
    );
    super::broadcast::finish(
        &mut publisher,
        &mut client,
        &mut recorder,
        &mut outcome,
        settings,
        &fast,
        server,
    );
    result?;
    Ok(outcome)
}

#[allow(clippy::too_many_arguments)]
fn phases(
    settings: &Settings,
    server: &Server,
    client: &mut crate::client::Client,
    recorder: &mut Recorder,
    publisher: &mut Publisher,
    line_len: usize,
    stalled: &[usize],
    outcome: &mut Outcome,
) -> Result<()> {
    let n = settings.subscribers;
    let rate = settings.rate;
    let measure = |client: &mut crate::client::Client,
                   recorder: &mut Recorder,
                   publisher: &mut Publisher,
                   duration: Duration,
                   name: &str|
     -> Result<(Phase, Window)> {
        let start = snapshot(server);
        recorder.start_measuring();
        let late = open_loop(
            publisher,
            client,
            recorder,
            line_len,
            rate,
            start.at_ns + duration.as_nanos() as u64,
        )?;
        let end = snapshot(server);
        recorder.stop_measuring();
        let window = Window::between(&start, &end);
        let mut phase = Phase::new(name);
        phase.set("subscribers", n as f64);
        phase.set("stalled", stalled.len() as f64);
        phase.set("rate_per_s", rate);
        broadcast_figures(&mut phase, recorder, &window, n);
        phase.set("late_publishes", late as f64);
        Ok((phase, window))
    };

    // Phase 1: nobody stalls.
    let warmup_end = sys::now_ns() + settings.warmup.as_nanos() as u64;
    open_loop(publisher, client, recorder, line_len, rate, warmup_end)?;
    drain(client, recorder)?;
    let (mut calm, _) = measure(client, recorder, publisher, settings.duration, "no-stall")?;
    calm.set("incomplete", drain(client, recorder)? as f64);
    let calm_p99 = calm.metrics.get("delivery_p99_ms").copied();
    outcome.phases.push(calm);

    // Phase 2: the stalled connections stop reading.
    let mut duration = settings.duration;
    let mut watcher = None;
    if server.kind == Kind::Gateway {
        match settings.bound {
            Bound::Stream => {
                if let Publisher::Fifo(fifo) = publisher {
                    fifo.rotate_now()?;
                }
                let run_id = publisher.run_id().unwrap_or_default().to_string();
                let refused = request_all(
                    client,
                    recorder,
                    stalled,
                    "stall-stream",
                    "streamRunEvents",
                    serde_json::json!({"runId": run_id}),
                )?;
                if let Some(first) = refused.first() {
                    bail!("streamRunEvents refused by the server: {first}");
                }
                let longest = Duration::from_secs_f64(STALL_LINES_MAX / rate);
                if duration > longest {
                    outcome.notes.push(format!(
                        "stall phase shortened to {longest:?} so that it stays on one pulse run ({STALL_LINES_MAX} lines at {rate}/s)"
                    ));
                    duration = longest;
                }
            }
            Bound::Connection => watcher = Some(OverflowWatcher::start(server)?),
        }
    } else {
        outcome.notes.push(
            "no slow-consumer bound; a stalled subscriber's task blocks on its socket and tokio's broadcast channel drops what it misses (Lagged)".into(),
        );
    }
    let stall_at = sys::now_ns();
    for &conn in stalled {
        client.pause(conn);
    }
    let (mut stall, window) = measure(client, recorder, publisher, duration, "stall")?;
    stall.set("incomplete", drain(client, recorder)? as f64);
    let overflow_times = watcher.map(OverflowWatcher::finish).unwrap_or_default();
    for &conn in stalled {
        client.resume(conn, recorder);
    }
    pump(
        client,
        recorder,
        sys::now_ns() + RESUME_READ.as_nanos() as u64,
    )?;

    // How fast the cut came, against the budget (1000 + 600) / R + 20 ms with R the frames per
    // second each subscriber received during the stall.
    let frames_per_subscriber_s =
        recorder.frames as f64 / n.max(1) as f64 / window.seconds.max(1e-9);
    stall.set("frames_per_subscriber_per_s", frames_per_subscriber_s);
    if frames_per_subscriber_s > 0.0
        && server.kind == Kind::Gateway
        && settings.bound == Bound::Stream
    {
        stall.set(
            "cut_budget_ms",
            (STREAM_FRAMES_BOUND + KERNEL_FRAMES) / frames_per_subscriber_s * 1_000.0 + 20.0,
        );
    }
    // Frames each published line becomes for one subscriber (the gateway also broadcasts a
    // task.heartbeat per stderr line).
    let frames_per_line =
        recorder.frames as f64 / (n.max(1) as f64 * recorder.published_measured.max(1) as f64);
    let first_stalled_id = recorder
        .published
        .iter()
        .position(|p| p.at_ns >= stall_at)
        .unwrap_or(recorder.published.len());
    let mut cut_ms = Vec::new();
    let mut frames_before_cut = Vec::new();
    let mut uncut = 0;
    for &conn in stalled {
        let per = recorder.per_conn.get(conn).cloned().unwrap_or_default();
        let closed_1013 = recorder
            .closed
            .iter()
            .any(|(c, _, reason)| *c == conn && matches!(reason, CloseReason::CloseFrame(1013, _)));
        if server.kind != Kind::Gateway {
            uncut += 1;
            continue;
        }
        match settings.bound {
            Bound::Stream => match (&per.stream_error, per.first_raw_id_after_error) {
                (Some(code), Some(id)) if code == "BackpressureDisconnect" => {
                    if let Some(published) = recorder.published.get(id as usize) {
                        cut_ms.push(published.at_ns.saturating_sub(stall_at) as f64 / 1e6);
                        frames_before_cut.push(
                            (id as usize).saturating_sub(first_stalled_id) as f64 * frames_per_line,
                        );
                    }
                }
                (Some(code), _) => outcome.notes.push(format!(
                    "stalled connection {conn}: run.error {code}, but no later event to time the cut by"
                )),
                (None, _) => uncut += 1,
            },
            Bound::Connection => {
                if !closed_1013 {
                    uncut += 1;
                }
            }
        }
    }
    if settings.bound == Bound::Connection {
        cut_ms.extend(
            overflow_times
                .iter()
                .map(|t| t.saturating_sub(stall_at) as f64 / 1e6),
        );
    }
    if let Some(frames) = median(&frames_before_cut) {
        stall.set("frames_before_cut", frames);
    }
    stall.set("cuts", cut_ms.len() as f64);
    stall.set("stalled_not_cut", uncut as f64);
    if let Some(cut) = median(&cut_ms) {
        stall.set("cut_after_ms", cut);
    }
    if let (Some(before), Some(after)) = (calm_p99, stall.metrics.get("delivery_p99_ms").copied()) {
        if before > 0.0 {
            stall.set("fast_p99_change_pct", (after - before) / before * 100.0);
        }
    }
    if settings.check && server.kind == Kind::Gateway && uncut > 0 {
        outcome
            .failures
            .push(format!("{uncut} stalled subscribers were never cut"));
    }
    outcome.phases.push(stall);
    Ok(())
}
