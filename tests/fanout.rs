//! Fan-out (RELIABILITY.md §6 row 15): events published to many subscribers on several workers
//! are serialized once each, and every subscriber receives byte-identical bodies.

use crate::support::*;
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The frame text after the per-connection head `{"type":"event","seq":N,"stateVersion":M,`.
fn body_of(text: &str) -> Option<&str> {
    let rest = text.strip_prefix(r#"{"type":"event","seq":"#)?;
    let after_seq = rest.split_once(r#","stateVersion":"#)?.1;
    Some(after_seq.split_once(',')?.1)
}

/// Reads raw text frames until `run.completed` for `run_id`; returns the bodies of that run's
/// broadcasts in order.
fn bodies_until_completed(ws: &mut Ws, run_id: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut bodies = Vec::new();
    while Instant::now() < deadline {
        let text = match ws.read() {
            Ok(tungstenite::Message::Text(text)) => text.to_string(),
            Ok(_) => continue,
            Err(tungstenite::Error::Io(error))
                if error.kind() == std::io::ErrorKind::Interrupted =>
            {
                continue
            }
            Err(error) => panic!("read failed: {error}"),
        };
        let frame: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if frame["type"] != "event" || frame["payload"]["runId"] != run_id {
            continue;
        }
        let body =
            body_of(&text).unwrap_or_else(|| panic!("event frame without the head layout: {text}"));
        bodies.push(body.to_string());
        if frame["event"] == "run.completed" {
            return bodies;
        }
    }
    panic!("run {run_id} did not complete")
}

/// Eight subscribers on a two-worker gateway (the kernel spreads them over both listeners): each
/// event is serialized once, and all eight receive
/// the same bodies in the same order.
#[test]
fn fanout_serializes_once() {
    let workflows = temp_dir("fanout-wf");
    write_workflow(
        &workflows,
        "chatty",
        r#"
[[nodes]]
kind = "task"
id = "talk"
run = ["sh", "-c", "i=0; while [ $i -lt 40 ]; do echo line-$i >&2; i=$((i+1)); done; echo '{}'"]
"#,
    );
    let config = smithers_gateway::config::GatewayConfig {
        auth: Some(token_auth(&[(ADMIN_TOKEN, grant("admin", &["*"]))])),
        ..Default::default()
    };
    let gateway = Gateway::start_full(config, 2, &workflows, &temp_dir("fanout-data"));
    let mut subscribers: Vec<Ws> = (0..8)
        .map(|_| ws_connect(gateway.addr, ADMIN_TOKEN).0)
        .collect();
    let (mut launcher, _) = Client::connect(gateway.addr);
    let published_before = gateway.state().hub.published();
    let launched = launcher.launch("l", json!({"workflow": "chatty"}));
    let run_id = launched["runId"].as_str().unwrap_or_default().to_string();
    let all: Vec<Vec<String>> = subscribers
        .iter_mut()
        .map(|ws| bodies_until_completed(ws, &run_id))
        .collect();
    let first = &all[0];
    // node.started, 40 × (task.output + task.heartbeat), node.finished, run.completed.
    assert_eq!(first.len(), 83, "events of the run");
    for (index, bodies) in all.iter().enumerate() {
        assert_eq!(
            bodies, first,
            "subscriber {index} received different bodies"
        );
    }
    let published = gateway.state().hub.published() - published_before;
    assert_eq!(
        published,
        first.len() as u64,
        "every broadcast of the run reached every subscriber"
    );
    assert_eq!(
        gateway.state().hub.serializations(),
        gateway.state().hub.published(),
        "one serialization per event"
    );
    let mut kinds: HashMap<String, usize> = HashMap::new();
    for body in first {
        let event = body.split('"').nth(3).unwrap_or_default().to_string();
        *kinds.entry(event).or_default() += 1;
    }
    assert_eq!(kinds.get("task.output"), Some(&40));
}

/// A subscriber socket whose kernel receive buffer is small, so it fills after a few frames when
/// the client stops reading.
fn slow_subscriber(addr: std::net::SocketAddr) -> Ws {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .unwrap_or_else(|e| panic!("socket: {e}"));
    socket
        .set_recv_buffer_size(4 * 1024)
        .unwrap_or_else(|e| panic!("SO_RCVBUF: {e}"));
    socket
        .connect(&addr.into())
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let stream: std::net::TcpStream = socket.into();
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .unwrap_or_else(|e| panic!("{e}"));
    let (mut ws, _) = tungstenite::client::client(format!("ws://{addr}/"), stream)
        .unwrap_or_else(|e| panic!("upgrade: {e}"));
    let response = request(&mut ws, "c", "connect", connect_params(Some(ADMIN_TOKEN)));
    assert_eq!(response["ok"], true, "connect failed: {response}");
    ws
}

/// What one fast subscriber saw of the run: its `task.output` lines in order, and how many of the
/// run's events arrived.
struct Seen {
    outputs: Vec<String>,
    run_events: usize,
}

/// The text between `open` and the next `close` after it.
fn field<'a>(text: &'a str, open: &str, close: char) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let rest = text.get(start..)?;
    rest.get(..rest.find(close)?)
}

/// Reads every frame until the run completes, checking the connection's `seq` goes up by one
/// each event (no gap, no duplicate). Frames are scanned, not parsed, so 99 readers keep up on a
/// small machine.
fn read_run(ws: &mut Ws, run_id: &str) -> Seen {
    let deadline = Instant::now() + Duration::from_secs(60);
    let run_marker = format!(r#""runId":"{run_id}""#);
    let mut last_seq: Option<u64> = None;
    let mut seen = Seen {
        outputs: Vec::new(),
        run_events: 0,
    };
    while Instant::now() < deadline {
        let text = match ws.read() {
            Ok(tungstenite::Message::Text(text)) => text,
            Ok(_) => continue,
            Err(error) => panic!("fast subscriber read failed: {error}"),
        };
        let text = text.as_str();
        if !text.starts_with(r#"{"type":"event","#) {
            continue;
        }
        let seq: u64 = field(text, r#""seq":"#, ',')
            .and_then(|seq| seq.parse().ok())
            .unwrap_or_else(|| panic!("event without seq: {text}"));
        if let Some(last) = last_seq {
            assert_eq!(seq, last + 1, "connection seq jumped: {text}");
        }
        last_seq = Some(seq);
        if !text.contains(&run_marker) {
            continue;
        }
        seen.run_events += 1;
        match field(text, r#""event":""#, '"') {
            Some("task.output") => {
                let output = field(text, r#""output":""#, '"').unwrap_or_default();
                seen.outputs
                    .push(output.trim_end_matches("\\n").to_string());
            }
            Some("run.completed") => return seen,
            _ => {}
        }
    }
    panic!("run {run_id} did not complete for a fast subscriber")
}

/// EVENTS.md §5 with one stalled subscriber among 99 readers: 5,000 events on one run. The
/// stalled socket is cut at the connection's byte bound with 1013 and its queue released at once;
/// the 99 others receive every event in order, with no gap and no duplicate.
#[test]
fn stalled_subscriber_is_cut_while_99_others_receive_all_5000_events() {
    const LINES: usize = 2_500;
    let workflows = temp_dir("slowfan-wf");
    write_workflow(
        &workflows,
        "flood",
        &format!(
            r#"
[[nodes]]
kind = "approval"
id = "go"

[[nodes]]
kind = "task"
id = "talk"
run = ["sh", "-c", "pad=$(printf '%0400d' 0); i=0; while [ $i -lt {LINES} ]; do printf 'line-%d-%s\\n' $i $pad >&2; i=$((i+1)); if [ $((i % 100)) -eq 0 ]; then sleep 0.05; fi; done; echo '{{}}'"]
"#
        ),
    );
    let outbound_bytes_max = 768 * 1024;
    let config = smithers_gateway::config::GatewayConfig {
        auth: Some(token_auth(&[(ADMIN_TOKEN, grant("admin", &["*"]))])),
        outbound_bytes_max,
        message_bytes_max: 64 * 1024,
        pre_auth_connections_max: 200,
        ..Default::default()
    };
    let gateway = Gateway::start_full(config, 2, &workflows, &temp_dir("slowfan-data"));
    let addr = gateway.addr;
    let mut slow = slow_subscriber(addr);
    let mut fast: Vec<Ws> = (0..99).map(|_| ws_connect(addr, ADMIN_TOKEN).0).collect();
    let (mut launcher, _) = Client::connect(addr);
    // The run waits for approval, so every subscriber is in place before the flood starts.
    let launched = launcher.launch("l", json!({"workflow": "flood"}));
    let run_id = launched["runId"].as_str().unwrap_or_default().to_string();
    let counters = &gateway.state().counters;
    let closes_before = counters
        .outbound_overflow_closes
        .load(std::sync::atomic::Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "the approval was never requested"
        );
        let event = launcher.next_event();
        if event["event"] == "approval.requested" && event["payload"]["runId"] == run_id {
            break;
        }
    }
    let decided = launcher.request(
        "approve",
        "submitApproval",
        json!({"runId": run_id, "nodeId": "go", "approved": true}),
    );
    assert_eq!(decided["ok"], true, "approval failed: {decided}");
    // It would be a second stalled subscriber.
    drop(launcher);
    let all_seen: Vec<Seen> = std::thread::scope(|scope| {
        let handles: Vec<_> = fast
            .iter_mut()
            .map(|ws| {
                let run_id = run_id.clone();
                scope.spawn(move || read_run(ws, &run_id))
            })
            .collect();
        // The stalled socket is cut while the others read; then it reads again to see the close.
        let deadline = Instant::now() + Duration::from_secs(60);
        while counters
            .outbound_overflow_closes
            .load(std::sync::atomic::Ordering::Relaxed)
            == closes_before
        {
            assert!(
                Instant::now() < deadline,
                "the stalled subscriber was never cut"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(read_until_end(&mut slow), Ending::Closed(Some(1013)));
        handles
            .into_iter()
            .map(|handle| handle.join().unwrap_or_else(|_| panic!("reader panicked")))
            .collect()
    });
    let pad = "0".repeat(400);
    let expected: Vec<String> = (0..LINES).map(|i| format!("line-{i}-{pad}")).collect();
    for (index, seen) in all_seen.iter().enumerate() {
        assert_eq!(
            seen.outputs, expected,
            "fast subscriber {index} missed or reordered lines"
        );
        // approval.decided, node.started, 2,500 × (task.output + task.heartbeat), node.finished
        // and run.completed, plus the approval's own events before the flood.
        assert!(
            seen.run_events >= 2 * LINES + 3,
            "fast subscriber {index} got {} run events",
            seen.run_events
        );
        assert_eq!(seen.run_events, all_seen[0].run_events);
    }
    assert_eq!(
        counters
            .outbound_overflow_closes
            .load(std::sync::atomic::Ordering::Relaxed)
            - closes_before,
        1,
        "only the stalled subscriber was cut"
    );
    let queued: u64 = gateway
        .state()
        .hub
        .all_worker_stats()
        .iter()
        .map(|stats| {
            stats
                .outbound_bytes
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    assert_eq!(queued, 0, "no bytes left queued once everything was read");
}
