//! `devtools`: N subscribers follow one busy run with `streamDevTools` (METHODS.md §3.18,
//! EVENTS.md §4.5). The run is the churn workflow (server.rs), a loop of short static tasks, so a
//! new frame is rendered every few milliseconds. Reports `devtools.event` deliveries per second,
//! server CPU per event, the snapshot/delta mix, and sequence breaks (a delta whose `baseSeq` is
//! not the previous event's `seq`). A refused `streamDevTools` ends the scenario with the server's
//! error code and message. Gateway only: the baseline has no DevTools.

use super::recorder::{Recorder, TAG_DEVTOOLS};
use super::{
    handshake_for, new_client, open_many, pump, request_all, snapshot, Outcome, Phase, Settings,
};
use crate::client::Protocol;
use crate::server::{Server, CHURN_WORKFLOW};
use crate::stats::Window;
use crate::{control, sys};
use anyhow::{anyhow, bail, Result};

/// Launches a churn run and returns its id.
pub fn launch_churn(server: &Server) -> Result<String> {
    let launched = control::rpc(
        server.address,
        server.token.as_deref(),
        "launchRun",
        &serde_json::json!({"workflow": CHURN_WORKFLOW}),
    )?;
    launched
        .get("runId")
        .and_then(|v| v.as_str())
        .map(String::from)
        .ok_or_else(|| anyhow!("launchRun answered without a runId"))
}

pub fn cancel_churn(server: &Server, run_id: &str) {
    let _ = control::rpc(
        server.address,
        server.token.as_deref(),
        "cancelRun",
        &serde_json::json!({"runId": run_id}),
    );
}

pub fn run(settings: &Settings, server: &Server) -> Result<Outcome> {
    let run_id = launch_churn(server)?;
    let result = follow(settings, server, &run_id);
    cancel_churn(server, &run_id);
    result
}

fn follow(settings: &Settings, server: &Server, run_id: &str) -> Result<Outcome> {
    let mut outcome = Outcome::default();
    let mut client = new_client(server)?;
    let mut recorder = Recorder::default();
    let n = settings.subscribers;
    let conns = open_many(
        &mut client,
        &mut recorder,
        n,
        Protocol::WebSocket,
        handshake_for(server),
        TAG_DEVTOOLS,
        settings.connect_parallel,
        "DevTools subscribers",
    )?;
    let refused = request_all(
        &mut client,
        &mut recorder,
        &conns,
        "devtools",
        "streamDevTools",
        serde_json::json!({"runId": run_id}),
    )?;
    if let Some(first) = refused.first() {
        bail!(
            "streamDevTools refused by the server ({} of {n} subscribers): {first}",
            refused.len()
        );
    }
    pump(
        &mut client,
        &mut recorder,
        sys::now_ns() + settings.warmup.as_nanos() as u64,
    )?;
    let start = snapshot(server);
    recorder.start_measuring();
    pump(
        &mut client,
        &mut recorder,
        start.at_ns + settings.duration.as_nanos() as u64,
    )?;
    let end = snapshot(server);
    recorder.stop_measuring();
    let window = Window::between(&start, &end);
    let mut phase = Phase::new(format!("subscribers={n}"));
    phase.set("subscribers", n as f64);
    let seconds = window.seconds.max(1e-9);
    phase.set(
        "devtools_events_per_s",
        recorder.devtools_events as f64 / seconds,
    );
    phase.set(
        "devtools_events_per_subscriber_per_s",
        recorder.devtools_events as f64 / n.max(1) as f64 / seconds,
    );
    phase.set("devtools_snapshots", recorder.devtools_snapshots as f64);
    phase.set("devtools_deltas", recorder.devtools_deltas as f64);
    phase.set("devtools_sequence_breaks", recorder.devtools_gaps as f64);
    phase.set("devtools_errors", recorder.devtools_errors.len() as f64);
    phase.window(&window, recorder.devtools_events, "event", n);
    outcome.phases.push(phase);
    if let Some(first) = recorder.devtools_errors.first() {
        outcome.failures.push(format!(
            "{} devtools.error events (first: {first})",
            recorder.devtools_errors.len()
        ));
    }
    if settings.check && recorder.devtools_gaps > 0 {
        outcome.failures.push(format!(
            "{} DevTools deltas did not follow the previous event's seq",
            recorder.devtools_gaps
        ));
    }
    if recorder.devtools_events == 0 {
        outcome
            .failures
            .push("no devtools.event arrived during the measured window".into());
    }
    Ok(outcome)
}
