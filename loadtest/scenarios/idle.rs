//! `idle`: memory per idle connection. N subscribers connect (the gateway's `connect` included)
//! to a fresh server and then do nothing; after `--settle` the growth of the server's RssAnon
//! (anonymous resident memory: heap and stacks, what user space pays per connection) and of its
//! RSS is divided by N. The machine's kernel slab growth over the same span is reported too; it
//! holds both ends of every loopback socket, so it is an upper bound of the server's kernel share.

use super::recorder::{Recorder, TAG_SUBSCRIBER};
use super::{handshake_for, new_client, open_many, pump, Outcome, Phase, Settings};
use crate::client::Protocol;
use crate::server::Server;
use crate::sys;
use anyhow::{bail, Result};

pub fn run(settings: &Settings, server: &Server) -> Result<Outcome> {
    let mut outcome = Outcome::default();
    let mut client = new_client(server)?;
    let mut recorder = Recorder::default();
    let n = settings.subscribers;
    let (rss_before, anon_before) = sys::process_memory(server.pid)?;
    let slab_before = sys::slab_bytes();
    let opened_at = sys::now_ns();
    open_many(
        &mut client,
        &mut recorder,
        n,
        Protocol::WebSocket,
        handshake_for(server),
        TAG_SUBSCRIBER,
        settings.connect_parallel,
        "idle connections",
    )?;
    let open_seconds = (sys::now_ns() - opened_at) as f64 / 1e9;
    pump(
        &mut client,
        &mut recorder,
        sys::now_ns() + settings.settle.as_nanos() as u64,
    )?;
    if !recorder.closed.is_empty() {
        bail!(
            "{} idle connections closed while settling (first: {})",
            recorder.closed.len(),
            recorder
                .closed
                .first()
                .map(|(_, _, r)| r.to_string())
                .unwrap_or_default()
        );
    }
    let (rss_after, anon_after) = sys::process_memory(server.pid)?;
    let slab_after = sys::slab_bytes();
    let per = |after: u64, before: u64| after.saturating_sub(before) as f64 / n.max(1) as f64;
    let mut phase = Phase::new(format!("connections={n}"));
    phase.set("connections", n as f64);
    phase.set("rss_anon_per_conn_bytes", per(anon_after, anon_before));
    phase.set("rss_per_conn_bytes", per(rss_after, rss_before));
    phase.set("kernel_slab_per_conn_bytes", per(slab_after, slab_before));
    phase.set("server_rss_bytes", rss_after as f64);
    phase.set("server_rss_anon_bytes", anon_after as f64);
    phase.set("open_seconds", open_seconds);
    outcome.phases.push(phase);
    if server.external {
        outcome.notes.push(
            "--url: the gateway is not fresh, so the memory growth includes whatever it allocated for earlier clients".into(),
        );
    }
    Ok(outcome)
}
