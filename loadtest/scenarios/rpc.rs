//! `rpc`: request throughput and latency, closed loop. `POST /rpc` `health` over keep-alive
//! connections (one request in flight per connection, like `wrk -c64`, with a 106-byte body as in
//! PERFORMANCE.md §2.4), then WebSocket `health` requests at each `--depths` value (that many
//! requests in flight per connection, answered in any order and matched by id).
//!
//! The baseline has no HTTP endpoint, so only its WebSocket phases run.

use super::recorder::{Recorder, RPC_DEPTH_MAX, TAG_RPC_HTTP, TAG_RPC_WS};
use super::{new_client, open_many, pump, snapshot, Outcome, Phase, Settings};
use crate::client::{Handshake, Protocol};
use crate::server::{Kind, Server};
use crate::stats::Window;
use crate::{sys, wire};
use anyhow::{bail, Result};

/// The POST /rpc body: a `health` request padded to this many bytes.
const HTTP_BODY_BYTES: usize = 106;

fn http_request(server: &Server) -> Vec<u8> {
    let mut body = String::from(r#"{"id":"lt","method":"health","params":{"pad":""}}"#);
    let room = HTTP_BODY_BYTES.saturating_sub(body.len());
    body.insert_str(body.len() - 3, &"x".repeat(room));
    let auth = server
        .token
        .as_deref()
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    format!(
        "POST /rpc HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        server.address,
        body.len()
    )
    .into_bytes()
}

pub(super) fn ws_request(slot: usize) -> Vec<u8> {
    let request = format!(r#"{{"type":"req","id":"h{slot}","method":"health","params":{{}}}}"#);
    wire::client_text(request.as_bytes())
}

pub fn run(settings: &Settings, server: &Server) -> Result<Outcome> {
    let mut outcome = Outcome::default();
    let c = settings.rpc_connections;
    if settings.rpc_http {
        if server.kind == Kind::Gateway {
            outcome.phases.push(http_phase(settings, server, c)?);
        } else {
            outcome
                .notes
                .push("no HTTP endpoint, POST /rpc is reported for the gateway only".into());
        }
    }
    for &depth in &settings.rpc_depths {
        if depth == 0 || depth > RPC_DEPTH_MAX {
            bail!("--depths values must be 1..={RPC_DEPTH_MAX}");
        }
        outcome.phases.push(ws_phase(settings, server, c, depth)?);
    }
    Ok(outcome)
}

fn measure(
    settings: &Settings,
    server: &Server,
    client: &mut crate::client::Client,
    recorder: &mut Recorder,
    phase: &mut Phase,
    http: bool,
    connections: usize,
) -> Result<()> {
    pump(
        client,
        recorder,
        sys::now_ns() + settings.warmup.as_nanos() as u64,
    )?;
    let start = snapshot(server);
    recorder.start_measuring();
    pump(
        client,
        recorder,
        start.at_ns + settings.duration.as_nanos() as u64,
    )?;
    let end = snapshot(server);
    recorder.stop_measuring();
    let window = Window::between(&start, &end);
    let (ok, latency) = if http {
        (recorder.http_ok, &recorder.http_latency)
    } else {
        (recorder.rpc_ok, &recorder.rpc_latency)
    };
    phase.set("connections", connections as f64);
    phase.set("requests_per_s", ok as f64 / window.seconds.max(1e-9));
    phase.window(&window, ok, "request", 0);
    phase.latency("request", latency);
    phase.set("failed_requests", recorder.rpc_failed as f64);
    if recorder.rpc_failed > 0 && ok == 0 {
        bail!(
            "every request failed; first answer: {}",
            recorder.rpc_first_error.clone().unwrap_or_default()
        );
    }
    if let Some((conn, _, reason)) = recorder.closed.first() {
        bail!("RPC connection {conn} closed during the run: {reason}");
    }
    Ok(())
}

fn http_phase(settings: &Settings, server: &Server, connections: usize) -> Result<Phase> {
    let mut client = super::new_client(server)?;
    let mut recorder = Recorder {
        http_frame: Some(client.register_frame(http_request(server))),
        ..Recorder::default()
    };
    // Each connection sends its first request as soon as it is connected (Recorder::on_ready).
    open_many(
        &mut client,
        &mut recorder,
        connections,
        Protocol::Http,
        Handshake::None,
        TAG_RPC_HTTP,
        connections,
        "POST /rpc connections",
    )?;
    let mut phase = Phase::new("post-rpc");
    measure(
        settings,
        server,
        &mut client,
        &mut recorder,
        &mut phase,
        true,
        connections,
    )?;
    Ok(phase)
}

fn ws_phase(
    settings: &Settings,
    server: &Server,
    connections: usize,
    depth: usize,
) -> Result<Phase> {
    let mut client = new_client(server)?;
    let mut recorder = Recorder {
        rpc_frames: (0..RPC_DEPTH_MAX)
            .map(|slot| client.register_frame(ws_request(slot)))
            .collect(),
        ..Recorder::default()
    };
    let handshake = match server.kind {
        Kind::Gateway => Handshake::ConnectQuiet,
        Kind::Baseline => Handshake::None,
    };
    let conns = open_many(
        &mut client,
        &mut recorder,
        connections,
        Protocol::WebSocket,
        handshake,
        TAG_RPC_WS,
        settings.connect_parallel,
        "WebSocket RPC connections",
    )?;
    let now = sys::now_ns();
    for &conn in &conns {
        for frame in recorder.start_rpc(conn, depth, now) {
            client.send_frame(conn, frame);
        }
    }
    let mut phase = Phase::new(format!("ws-depth={depth}"));
    phase.set("depth", depth as f64);
    measure(
        settings,
        server,
        &mut client,
        &mut recorder,
        &mut phase,
        false,
        connections,
    )?;
    Ok(phase)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_http_body_is_106_bytes() {
        let mut body = String::from(r#"{"id":"lt","method":"health","params":{"pad":""}}"#);
        let room = super::HTTP_BODY_BYTES.saturating_sub(body.len());
        body.insert_str(body.len() - 3, &"x".repeat(room));
        assert_eq!(body.len(), 106);
        assert!(serde_json::from_str::<serde_json::Value>(&body).is_ok());
    }
}
