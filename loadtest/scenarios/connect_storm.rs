//! `connect-storm`: how fast the server accepts new clients. N connections are opened with
//! `--parallel` handshakes in flight; each is done when it is usable (for the gateway: TCP,
//! upgrade, `connect` and its `hello`; for the baseline: TCP and upgrade, it has no `connect`).
//! Reports handshakes per second over the whole storm, the per-handshake latency, and the server
//! CPU per handshake.

use super::recorder::{Recorder, TAG_STORM};
use super::{handshake_for, new_client, open_many, snapshot, Outcome, Phase, Settings};
use crate::client::Protocol;
use crate::server::{Kind, Server};
use crate::stats::{Histogram, Window};
use anyhow::Result;

pub fn run(settings: &Settings, server: &Server) -> Result<Outcome> {
    let mut outcome = Outcome::default();
    let mut client = new_client(server)?;
    let mut recorder = Recorder::default();
    let n = settings.subscribers;
    let start = snapshot(server);
    let conns = open_many(
        &mut client,
        &mut recorder,
        n,
        Protocol::WebSocket,
        handshake_for(server),
        TAG_STORM,
        settings.storm_parallel,
        "the storm's connections",
    )?;
    let end = snapshot(server);
    let window = Window::between(&start, &end);
    let mut latency = Histogram::default();
    for &conn in &conns {
        if let Some(c) = client.conns.get(conn) {
            latency.record(c.ready_ns.saturating_sub(c.opened_ns));
        }
    }
    let mut phase = Phase::new(format!(
        "connections={n},parallel={}",
        settings.storm_parallel
    ));
    phase.set("connections", n as f64);
    phase.set("parallel", settings.storm_parallel as f64);
    phase.set("handshakes_per_s", n as f64 / window.seconds.max(1e-9));
    phase.window(&window, n as u64, "handshake", n);
    phase.latency("handshake", &latency);
    outcome.phases.push(phase);
    if server.kind == Kind::Baseline {
        outcome.notes.push(
            "handshakes are TCP + upgrade only (it has no connect/hello), so its figure is an upper bound for the same work".into(),
        );
    }
    Ok(outcome)
}
