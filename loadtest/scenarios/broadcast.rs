//! `fanout` and `sustained`: N subscribers receive every published event.
//!
//! fanout is closed-loop: `inflight` events are outstanding at any time and each completion (the
//! last subscriber got it) releases the next publish, so inflight 1 measures single events and 8
//! or 32 measure bursts the server may coalesce per connection. sustained publishes at a fixed
//! rate whatever happens (open loop) and reports latency at that rate.

use super::recorder::{Recorder, TAG_SUBSCRIBER};
use super::{
    broadcast_figures, check_counts, closed_loop, drain, handshake_for, line_bytes, new_client,
    open_loop, open_many, publisher_for, snapshot, Outcome, Phase, Settings,
};
use crate::client::Protocol;
use crate::publisher::Publisher;
use crate::server::Server;
use crate::stats::Window;
use crate::sys;
use anyhow::Result;
use std::time::Duration;

pub fn fanout(settings: &Settings, server: &Server) -> Result<Outcome> {
    let mut outcome = Outcome::default();
    let mut client = new_client(server)?;
    let mut recorder = Recorder::default();
    let n = settings.subscribers;
    let subscribers = open_many(
        &mut client,
        &mut recorder,
        n,
        Protocol::WebSocket,
        handshake_for(server),
        TAG_SUBSCRIBER,
        settings.connect_parallel,
        "subscribers",
    )?;
    recorder.n_counted = n as u32;
    let mut publisher = publisher_for(server, &mut client, &mut recorder)?;
    let line_len = line_bytes(settings, server);
    let result = (|| -> Result<()> {
        for &inflight in &settings.inflight {
            let warmup_end = sys::now_ns() + settings.warmup.as_nanos() as u64;
            closed_loop(
                &mut publisher,
                &mut client,
                &mut recorder,
                line_len,
                inflight,
                warmup_end,
            )?;
            drain(&mut client, &mut recorder)?;
            let start = snapshot(server);
            recorder.start_measuring();
            let end_ns = start.at_ns + settings.duration.as_nanos() as u64;
            closed_loop(
                &mut publisher,
                &mut client,
                &mut recorder,
                line_len,
                inflight,
                end_ns,
            )?;
            let end = snapshot(server);
            recorder.stop_measuring();
            let incomplete = drain(&mut client, &mut recorder)?;
            let mut phase = Phase::new(format!("inflight={inflight}"));
            phase.set("subscribers", n as f64);
            phase.set("inflight", inflight as f64);
            broadcast_figures(&mut phase, &recorder, &Window::between(&start, &end), n);
            phase.set("incomplete", incomplete as f64);
            outcome.phases.push(phase);
        }
        Ok(())
    })();
    finish(
        &mut publisher,
        &mut client,
        &mut recorder,
        &mut outcome,
        settings,
        &subscribers,
        server,
    );
    result?;
    Ok(outcome)
}

pub fn sustained(settings: &Settings, server: &Server) -> Result<Outcome> {
    let mut outcome = Outcome::default();
    let mut client = new_client(server)?;
    let mut recorder = Recorder::default();
    let n = settings.subscribers;
    let subscribers = open_many(
        &mut client,
        &mut recorder,
        n,
        Protocol::WebSocket,
        handshake_for(server),
        TAG_SUBSCRIBER,
        settings.connect_parallel,
        "subscribers",
    )?;
    recorder.n_counted = n as u32;
    let mut publisher = publisher_for(server, &mut client, &mut recorder)?;
    let line_len = line_bytes(settings, server);
    let result = (|| -> Result<()> {
        let warmup_end = sys::now_ns() + settings.warmup.as_nanos() as u64;
        open_loop(
            &mut publisher,
            &mut client,
            &mut recorder,
            line_len,
            settings.rate,
            warmup_end,
        )?;
        drain(&mut client, &mut recorder)?;
        let start = snapshot(server);
        recorder.start_measuring();
        let end_ns = start.at_ns + settings.duration.as_nanos() as u64;
        let late = open_loop(
            &mut publisher,
            &mut client,
            &mut recorder,
            line_len,
            settings.rate,
            end_ns,
        )?;
        let end = snapshot(server);
        recorder.stop_measuring();
        let incomplete = drain(&mut client, &mut recorder)?;
        let mut phase = Phase::new(format!("rate={}", settings.rate));
        phase.set("subscribers", n as f64);
        phase.set("rate_per_s", settings.rate);
        broadcast_figures(&mut phase, &recorder, &Window::between(&start, &end), n);
        phase.set("late_publishes", late as f64);
        phase.set("incomplete", incomplete as f64);
        outcome.phases.push(phase);
        Ok(())
    })();
    finish(
        &mut publisher,
        &mut client,
        &mut recorder,
        &mut outcome,
        settings,
        &subscribers,
        server,
    );
    result?;
    Ok(outcome)
}

/// Ends the publisher, lets the last events arrive, and runs `--check`.
pub(super) fn finish(
    publisher: &mut Publisher,
    client: &mut crate::client::Client,
    recorder: &mut Recorder,
    outcome: &mut Outcome,
    settings: &Settings,
    subscribers: &[usize],
    server: &Server,
) {
    let rotations = match publisher {
        Publisher::Fifo(fifo) => fifo.rotations,
        Publisher::WebSocket { .. } => 0,
    };
    publisher.finish();
    let _ = drain(client, recorder);
    if rotations > 0 {
        outcome.notes.push(format!(
            "{rotations} pulse run rotations ({} lines per run at most)",
            9_900
        ));
    }
    if settings.check {
        outcome.failures.extend(check_counts(recorder, subscribers));
    }
    let out_of_order: u64 = subscribers
        .iter()
        .filter_map(|&c| recorder.per_conn.get(c))
        .map(|p| p.out_of_order)
        .sum();
    if out_of_order > 0 {
        outcome.notes.push(format!(
            "{out_of_order} marked events arrived after a later one (across pulse run rotations the engine may interleave two runs' lines)"
        ));
    }
    if !server.alive() {
        outcome
            .failures
            .push(format!("the {} process is gone", server.kind.name()));
    }
    // Give the server a moment to see the closes before it is stopped.
    std::thread::sleep(Duration::from_millis(10));
}
