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
