//! `loadtest-baseline`: a minimal broadcast server written the usual way, so every loadtest report
//! can carry ratios against it measured on the same box at the same moment (docs/LOADTEST.md).
//!
//! The usual way, deliberately: a tokio current-thread runtime, tokio-tungstenite with its default
//! configuration (128 KiB read buffer per socket, unbounded write buffer), one `broadcast` channel,
//! a writer task per connection (plus a reader task that answers requests through it), and one
//! `serde_json` serialization of the event frame per subscriber with that subscriber's own `seq`,
//! which is the reference gateway's pattern (PERFORMANCE.md §2.1).
//! It must not grow smarter than that: it is the denominator, not a competitor.
//!
//! Protocol, the subset loadtest needs:
//! - a WebSocket on `/publish` is the publisher: each text message is one line of task output,
//!   broadcast as a `task.output` event shaped like the gateway's (`{runId,nodeId,output,stream}`);
//! - a WebSocket on any other path is a subscriber: it receives every event, and may send
//!   `{"type":"req","id":…,"method":"health"}` requests, answered like the gateway's `health`.
//!
//! A subscriber that falls more than `--capacity` events behind loses the oldest ones (tokio's
//! `Lagged`); nothing is ever disconnected for being slow. That is the behaviour being compared.

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

const USAGE: &str = "\
loadtest-baseline: tokio + tokio-tungstenite broadcast server (the loadtest baseline)

USAGE:
    loadtest-baseline [--listen ADDR] [--capacity N]

OPTIONS:
    --listen ADDR     address to listen on [default: 127.0.0.1:7440]
    --capacity N      broadcast channel capacity in events [default: 1024]
    -h, --help        print this help

A WebSocket on /publish publishes one event per text message; any other path subscribes.
";

/// One published event: the line and the `stateVersion` it was given. Subscribers wrap it into a
/// frame of their own (their `seq`), serializing it once each.
#[derive(Debug)]
struct Event {
    output: String,
    state_version: u64,
}

#[derive(Serialize)]
struct Payload<'a> {
    #[serde(rename = "runId")]
    run_id: &'a str,
    #[serde(rename = "nodeId")]
    node_id: &'a str,
    output: &'a str,
    stream: &'a str,
}

/// The reference gateway's event frame, in its key order (PROTOCOL.md §5.2).
#[derive(Serialize)]
struct EventFrame<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    event: &'a str,
    payload: Payload<'a>,
    seq: u64,
    #[serde(rename = "stateVersion")]
    state_version: u64,
    #[serde(rename = "apiVersion")]
    api_version: &'a str,
}

struct Shared {
    events: broadcast::Sender<Arc<Event>>,
    state_version: AtomicU64,
    started: Instant,
    started_at_ms: u64,
}

struct Options {
    listen: SocketAddr,
    capacity: usize,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        listen: SocketAddr::from(([127, 0, 0, 1], 7440)),
        capacity: 1024,
    };
    let mut arguments = std::env::args().skip(1);
    while let Some(argument) = arguments.next() {
        match argument.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            "--listen" => {
                let value = arguments.next().ok_or("--listen needs an address")?;
                options.listen = value
                    .parse()
                    .map_err(|e| format!("--listen {value}: {e}"))?;
            }
            "--capacity" => {
                let value = arguments.next().ok_or("--capacity needs a number")?;
                options.capacity = value
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("--capacity {value}: not a positive number"))?;
            }
            other => return Err(format!("unknown argument {other}\n\n{USAGE}")),
        }
    }
    Ok(options)
}

fn main() {
    let options = match parse_options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("loadtest-baseline: {message}");
            std::process::exit(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("loadtest-baseline: cannot build the runtime: {error}");
            std::process::exit(1);
        }
    };
    if let Err(error) = runtime.block_on(serve(options)) {
        eprintln!("loadtest-baseline: {error}");
        std::process::exit(1);
    }
}

async fn serve(options: Options) -> std::io::Result<()> {
    let listener = TcpListener::bind(options.listen).await?;
    let (events, _) = broadcast::channel(options.capacity);
    let shared = Arc::new(Shared {
        events,
        state_version: AtomicU64::new(0),
        started: Instant::now(),
        started_at_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    });
    // loadtest waits for this line before it connects anything.
    println!(
        "loadtest-baseline listening on ws://{}/",
        listener.local_addr()?
    );
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of descriptors or a connection reset before accept: keep serving the others.
            Err(_) => continue,
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, shared.clone()));
    }
}

async fn connection(stream: TcpStream, shared: Arc<Shared>) {
    let mut path = String::new();
    // The error type is tungstenite's, fixed by `accept_hdr_async`.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| {
        path = request.uri().path().to_string();
        Ok(response)
    };
    let Ok(socket) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    if path == "/publish" {
        publisher(socket, &shared).await;
    } else {
        subscriber(socket, &shared).await;
    }
}

async fn publisher(mut socket: tokio_tungstenite::WebSocketStream<TcpStream>, shared: &Shared) {
    while let Some(Ok(message)) = socket.next().await {
        let line = match message {
            Message::Text(text) => text.as_str().to_string(),
            Message::Close(_) => break,
            _ => continue,
        };
        let state_version = shared.state_version.fetch_add(1, Ordering::Relaxed) + 1;
        // No receivers is not an error for a broadcast server.
        let _ = shared.events.send(Arc::new(Event {
            output: line,
            state_version,
        }));
    }
}

/// A subscriber: this task writes (broadcast events and answers), a second task reads. Reading
/// in the same `select!` would re-arm tungstenite's read on every event, and tungstenite
/// prepares (zero-fills) its 128 KiB read buffer on each attempt: measured here, that tripled the
/// CPU per delivery. Split halves with a reader task are the idiomatic shape anyway.
async fn subscriber(socket: tokio_tungstenite::WebSocketStream<TcpStream>, shared: &Arc<Shared>) {
    let mut receiver = shared.events.subscribe();
    let (mut sink, mut stream) = socket.split();
    let (answers_tx, mut answers) = tokio::sync::mpsc::channel::<String>(64);
    let reader_shared = shared.clone();
    let reader = tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            match message {
                Message::Text(text) => {
                    let answer = answer_request(text.as_str(), &reader_shared);
                    if answers_tx.send(answer).await.is_err() {
                        break;
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
    });
    let mut seq = 0u64;
    loop {
        tokio::select! {
            event = receiver.recv() => match event {
                Ok(event) => {
                    seq += 1;
                    let frame = EventFrame {
                        kind: "event",
                        event: "task.output",
                        payload: Payload {
                            run_id: "baseline",
                            node_id: "pulse",
                            output: &event.output,
                            stream: "stderr",
                        },
                        seq,
                        state_version: event.state_version,
                        api_version: "v1",
                    };
                    let Ok(text) = serde_json::to_string(&frame) else { break };
                    if sink.send(Message::text(text)).await.is_err() {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => break,
            },
            answer = answers.recv() => match answer {
                Some(answer) => {
                    if sink.send(Message::text(answer)).await.is_err() {
                        break;
                    }
                }
                // The reader ended: the peer closed or failed.
                None => break,
            },
        }
    }
    reader.abort();
}

/// A response frame in the reference's key order (PROTOCOL.md §5.2); `payload` or `error`.
#[derive(Serialize)]
struct ResponseFrame {
    #[serde(rename = "type")]
    kind: &'static str,
    id: serde_json::Value,
    ok: bool,
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<serde_json::Value>,
}

fn error_frame(id: serde_json::Value, code: &str, message: &str) -> String {
    let frame = ResponseFrame {
        kind: "res",
        id,
        ok: false,
        api_version: "v1",
        payload: None,
        error: Some(serde_json::json!({"version": "v1", "code": code, "message": message})),
    };
    serde_json::to_string(&frame).unwrap_or_default()
}

/// Answers `health` like the gateway's RPC (PROTOCOL.md §2.1, without `ok`, with `uptimeMs`);
/// anything else is `METHOD_NOT_FOUND`. Parsed with serde_json per request, the usual way.
fn answer_request(text: &str, shared: &Shared) -> String {
    let request: serde_json::Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(_) => {
            return error_frame(
                serde_json::Value::from("invalid"),
                "INVALID_INPUT",
                "Gateway RPC payload must be valid JSON.",
            )
        }
    };
    let id = request
        .get("id")
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    if request.get("method").and_then(|m| m.as_str()) != Some("health") {
        return error_frame(id, "METHOD_NOT_FOUND", "Unknown method");
    }
    let frame = ResponseFrame {
        kind: "res",
        id,
        ok: true,
        api_version: "v1",
        payload: Some(serde_json::json!({
            "protocol": 1,
            "features": ["streaming", "runs"],
            "stateVersion": shared.state_version.load(Ordering::Relaxed),
            "identity": {"workspaceRoot": null, "backend": null, "version": "baseline",
                "pid": std::process::id(), "startedAtMs": shared.started_at_ms},
            "workflowsLoaded": 0,
            "workflowsTotal": 0,
            "uptimeMs": shared.started.elapsed().as_millis() as u64
        })),
        error: None,
    };
    serde_json::to_string(&frame).unwrap_or_default()
}
