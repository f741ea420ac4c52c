//! `mixed`: everything at once on one gateway, as a dashboard-heavy deployment would see it.
//! N broadcast subscribers receive events published at a fixed rate; `--streams` connections
//! follow the pulse run with `streamRunEvents`; `--devtools-streams` connections follow a churn run
//! with `streamDevTools`; `--rpc-connections` WebSockets keep one `health` request in flight each;
//! `--http-connections` keep one `POST /rpc` in flight each. Reports each part's throughput and
//! latency and the server's CPU for the whole. A refused `streamDevTools` is reported as a failure
//! and the rest still runs. Gateway only.

use super::devtools::{cancel_churn, launch_churn};
use super::recorder::{
    Recorder, RPC_DEPTH_MAX, TAG_DEVTOOLS, TAG_RPC_HTTP, TAG_RPC_WS, TAG_STREAM, TAG_SUBSCRIBER,
};
use super::{
    broadcast_figures, drain, line_bytes, new_client, open_loop, open_many, publisher_for,
    request_all, snapshot, Outcome, Phase, Settings,
};
use crate::client::{Handshake, Protocol};
use crate::publisher::Publisher;
use crate::server::Server;
use crate::stats::{ms, Window};
use crate::sys;
use anyhow::{bail, Result};

/// Lines the measured publishing may take: the streams follow one pulse run (9,900 lines).
const MIXED_LINES_MAX: f64 = 8_500.0;

pub fn run(settings: &Settings, server: &Server) -> Result<Outcome> {
    let lines = settings.rate * (settings.duration + settings.warmup).as_secs_f64();
    if settings.streams > 0 && lines > MIXED_LINES_MAX {
        bail!(
            "mixed publishes {lines:.0} lines at --rate {} over warm-up and --duration; the run streams follow one pulse run, so keep it under {MIXED_LINES_MAX} (lower --rate or --duration, or --streams 0)",
            settings.rate
        );
    }
    let churn = if settings.devtools_streams > 0 {
        Some(launch_churn(server)?)
    } else {
        None
    };
    let result = everything(settings, server, churn.as_deref());
    if let Some(run_id) = &churn {
        cancel_churn(server, run_id);
    }
    result
}

fn everything(settings: &Settings, server: &Server, churn: Option<&str>) -> Result<Outcome> {
    let mut outcome = Outcome::default();
    let mut client = new_client(server)?;
    let mut recorder = Recorder {
        rpc_frames: (0..RPC_DEPTH_MAX)
            .map(|slot| client.register_frame(super::rpc::ws_request(slot)))
            .collect(),
        ..Recorder::default()
    };
    let body = r#"{"id":"lt","method":"health","params":{}}"#;
    let auth = server
        .token
        .as_deref()
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    recorder.http_frame = Some(client.register_frame(
        format!(
            "POST /rpc HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            server.address,
            body.len()
        )
        .into_bytes(),
    ));
    let parallel = settings.connect_parallel;
    let n = settings.subscribers;
    let subscribers = open_many(
        &mut client,
        &mut recorder,
        n,
        Protocol::WebSocket,
        Handshake::Connect,
        TAG_SUBSCRIBER,
        parallel,
        "subscribers",
    )?;
    let streams = open_many(
        &mut client,
        &mut recorder,
        settings.streams,
        Protocol::WebSocket,
        Handshake::Connect,
        TAG_STREAM,
        parallel,
        "stream connections",
    )?;
    let devtools = open_many(
        &mut client,
        &mut recorder,
        settings.devtools_streams,
        Protocol::WebSocket,
        Handshake::Connect,
        TAG_DEVTOOLS,
        parallel,
        "DevTools connections",
    )?;
    let rpc = open_many(
        &mut client,
        &mut recorder,
        settings.rpc_connections,
        Protocol::WebSocket,
        Handshake::ConnectQuiet,
        TAG_RPC_WS,
        parallel,
        "WebSocket RPC connections",
    )?;
    open_many(
        &mut client,
        &mut recorder,
        settings.http_connections,
        Protocol::Http,
        Handshake::None,
        TAG_RPC_HTTP,
        parallel,
        "POST /rpc connections",
    )?;
    recorder.n_counted = n as u32;
    let mut publisher = publisher_for(server, &mut client, &mut recorder)?;
    let line_len = line_bytes(settings, server);
    let result = (|| -> Result<()> {
        if let Publisher::Fifo(fifo) = &mut publisher {
            fifo.rotate_now()?;
        }
        let pulse_run = publisher.run_id().unwrap_or_default().to_string();
        let refused = request_all(
            &mut client,
            &mut recorder,
            &streams,
            "mix-stream",
            "streamRunEvents",
            serde_json::json!({"runId": pulse_run}),
        )?;
        if let Some(first) = refused.first() {
            bail!("streamRunEvents refused by the server: {first}");
        }
        if let Some(churn) = churn {
            let refused = request_all(
                &mut client,
                &mut recorder,
                &devtools,
                "mix-devtools",
                "streamDevTools",
                serde_json::json!({"runId": churn}),
            )?;
            if let Some(first) = refused.first() {
                outcome.failures.push(format!(
                    "streamDevTools refused by the server ({} of {}): {first}; the DevTools part did not run",
                    refused.len(),
                    devtools.len()
                ));
                for &conn in &devtools {
                    client.close(conn);
                }
            }
        }
        let now = sys::now_ns();
        for &conn in &rpc {
            for frame in recorder.start_rpc(conn, 1, now) {
                client.send_frame(conn, frame);
            }
        }
        let warmup_end = sys::now_ns() + settings.warmup.as_nanos() as u64;
        open_loop(
            &mut publisher,
            &mut client,
            &mut recorder,
            line_len,
            settings.rate,
            warmup_end,
        )?;
        let start = snapshot(server);
        recorder.start_measuring();
        let late = open_loop(
            &mut publisher,
            &mut client,
            &mut recorder,
            line_len,
            settings.rate,
            start.at_ns + settings.duration.as_nanos() as u64,
        )?;
        let end = snapshot(server);
        recorder.stop_measuring();
        let window = Window::between(&start, &end);
        let seconds = window.seconds.max(1e-9);
        let mut phase = Phase::new("mixed");
        phase.set("subscribers", n as f64);
        phase.set("rate_per_s", settings.rate);
        broadcast_figures(
            &mut phase,
            &recorder,
            &window,
            n + streams.len() + devtools.len() + rpc.len() + settings.http_connections,
        );
        phase.set("late_publishes", late as f64);
        phase.set(
            "stream_frames_per_s",
            recorder.stream_frames as f64 / seconds,
        );
        if recorder.stream_delivery.count() > 0 {
            phase.set(
                "stream_delivery_p99_ms",
                ms(recorder.stream_delivery.quantile(0.99)),
            );
        }
        phase.set("stream_errors", recorder.stream_errors.len() as f64);
        phase.set(
            "devtools_events_per_s",
            recorder.devtools_events as f64 / seconds,
        );
        phase.set("ws_requests_per_s", recorder.rpc_ok as f64 / seconds);
        if recorder.rpc_latency.count() > 0 {
            phase.set("ws_request_p99_ms", ms(recorder.rpc_latency.quantile(0.99)));
        }
        phase.set("http_requests_per_s", recorder.http_ok as f64 / seconds);
        if recorder.http_latency.count() > 0 {
            phase.set(
                "http_request_p99_ms",
                ms(recorder.http_latency.quantile(0.99)),
            );
        }
        phase.set("failed_requests", recorder.rpc_failed as f64);
        phase.set("incomplete", drain(&mut client, &mut recorder)? as f64);
        outcome.phases.push(phase);
        if let Some((conn, code, _)) = recorder.stream_errors.first() {
            outcome
                .failures
                .push(format!("run.error {code} on stream connection {conn}"));
        }
        if let Some(first) = recorder.devtools_errors.first() {
            outcome.failures.push(format!("devtools.error: {first}"));
        }
        Ok(())
    })();
    super::broadcast::finish(
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
