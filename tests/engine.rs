//! The workflow engine end to end (WORKFLOWS.md): parallel blocks, loops, timers, signals,
//! approvals, command tasks, cancellation, resumption after a restart, a SIGKILL crash test of
//! the real binary (RELIABILITY.md §4.3, §6 row 16) and a database that refuses writes (row 18).
//! Every test writes its own workflows into a temporary directory and talks over real sockets.

use crate::support::*;
use serde_json::{json, Value};
use smithers_gateway::config::{GatewayConfig, TokenGrant};
use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest any wait for a run state takes before the test gives up.
const WAIT: Duration = Duration::from_secs(30);

fn admin_config() -> GatewayConfig {
    GatewayConfig {
        auth: Some(token_auth(&[(ADMIN_TOKEN, grant("admin", &["*"]))])),
        ..GatewayConfig::default()
    }
}

/// Writes `workflows` into a fresh directory.
fn workflow_dir(workflows: &[(&str, &str)]) -> PathBuf {
    let dir = temp_dir("wf");
    for (name, text) in workflows {
        write_workflow(&dir, name, text);
    }
    dir
}

/// A gateway (admin token only) serving `workflows`.
fn start(workflows: &[(&str, &str)]) -> Gateway {
    Gateway::start_full(
        admin_config(),
        1,
        &workflow_dir(workflows),
        &temp_dir("data"),
    )
}

fn fresh_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn launch(client: &mut Client, workflow: &str, input: Value) -> String {
    let launched = client.launch(&fresh_id(), json!({"workflow": workflow, "input": input}));
    launched["runId"].as_str().unwrap_or_default().to_string()
}

fn call(client: &mut Client, method: &str, params: Value) -> Value {
    client.request(&fresh_id(), method, params)
}

fn get_run(client: &mut Client, run_id: &str) -> Value {
    let response = call(client, "getRun", json!({"runId": run_id}));
    assert_eq!(response["ok"], true, "getRun {run_id}: {response}");
    response["payload"].clone()
}

/// Polls getRun until the run has `status`; returns the run.
fn wait_status(client: &mut Client, run_id: &str, status: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let run = get_run(client, run_id);
        if run["status"] == status {
            return run;
        }
        assert!(
            Instant::now() < deadline,
            "run never became {status}: {run}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn names(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| e["event"].as_str().map(str::to_string))
        .collect()
}

/// `(event, nodeId)` of every node event.
fn node_events(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e["event"].as_str().is_some_and(|n| n.starts_with("node.")))
        .map(|e| {
            (
                e["event"].as_str().unwrap_or_default().to_string(),
                e["payload"]["nodeId"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

/// The most tasks in flight at once, from node.started / node.finished order.
fn max_in_flight(events: &[Value]) -> usize {
    let mut in_flight = 0usize;
    let mut most = 0;
    for (event, _) in node_events(events) {
        match event.as_str() {
            "node.started" => {
                in_flight += 1;
                most = most.max(in_flight);
            }
            "node.finished" | "node.failed" | "node.cancelled" => {
                in_flight = in_flight.saturating_sub(1)
            }
            _ => {}
        }
    }
    most
}

fn completed_payload(events: &[Value]) -> Value {
    let last = events.last().cloned().unwrap_or_default();
    assert_eq!(last["event"], "run.completed", "{events:?}");
    last["payload"].clone()
}

/// A read-only view of a gateway's database (WAL: readable while the gateway writes).
fn open_db(data_dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(
        data_dir.join(smithers_gateway::gateway::DATABASE_FILE),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap_or_else(|e| panic!("open db: {e}"))
}

/// `(iteration, payload)` of a node's output rows, by iteration.
fn outputs(data_dir: &Path, run_id: &str, node_id: &str) -> Vec<(i64, Value)> {
    let db = open_db(data_dir);
    let mut statement = db
        .prepare("SELECT iteration, payload_json FROM _smithers_outputs WHERE run_id = ?1 AND node_id = ?2 ORDER BY iteration")
        .unwrap_or_else(|e| panic!("{e}"));
    let rows = statement
        .query_map([run_id, node_id], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
        })
        .unwrap_or_else(|e| panic!("{e}"));
    rows.map(|row| {
        let (iteration, text) = row.unwrap_or_else(|e| panic!("{e}"));
        (iteration, serde_json::from_str(&text).unwrap_or_default())
    })
    .collect()
}

/// `(attempt, state, error)` of a node's attempts at iteration 0.
fn attempts(data_dir: &Path, run_id: &str, node_id: &str) -> Vec<(i64, String, Value)> {
    let db = open_db(data_dir);
    let mut statement = db
        .prepare("SELECT attempt, state, error_json FROM _smithers_attempts WHERE run_id = ?1 AND node_id = ?2 AND iteration = 0 ORDER BY attempt")
        .unwrap_or_else(|e| panic!("{e}"));
    let rows = statement
        .query_map([run_id, node_id], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, Option<String>>(2)?,
            ))
        })
        .unwrap_or_else(|e| panic!("{e}"));
    rows.map(|row| {
        let (attempt, state, error) = row.unwrap_or_else(|e| panic!("{e}"));
        let error = error
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or(Value::Null);
        (attempt, state, error)
    })
    .collect()
}

/// Persisted engine event types of a run, in seq order.
fn event_types(data_dir: &Path, run_id: &str) -> Vec<String> {
    let db = open_db(data_dir);
    let mut statement = db
        .prepare("SELECT type FROM _smithers_events WHERE run_id = ?1 ORDER BY seq")
        .unwrap_or_else(|e| panic!("{e}"));
    let rows = statement
        .query_map([run_id], |row| row.get::<_, String>(0))
        .unwrap_or_else(|e| panic!("{e}"));
    rows.map(|row| row.unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

fn pgrep(pattern: &str) -> String {
    std::process::Command::new("pgrep")
        .args(["-f", pattern])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

// ---- 1. parallel ----

const THREE_STATIC: &str = r#"
  [[nodes.children]]
  kind = "task"
  id = "a"
  output = { n = 1 }
  delay_ms = 150
  [[nodes.children]]
  kind = "task"
  id = "b"
  output = { n = 2 }
  delay_ms = 150
  [[nodes.children]]
  kind = "task"
  id = "c"
  output = { n = 3 }
  delay_ms = 150
"#;

/// `max_concurrency = 1` runs the children one at a time; without it they all run at once.
#[test]
fn parallel_respects_max_concurrency() {
    let serial =
        format!("[[nodes]]\nkind = \"parallel\"\nid = \"p\"\nmax_concurrency = 1\n{THREE_STATIC}");
    let open = format!("[[nodes]]\nkind = \"parallel\"\nid = \"p\"\n{THREE_STATIC}");
    let gateway = start(&[("serial", &serial), ("open", &open)]);
    let (mut client, _) = Client::connect(gateway.addr);

    let run_id = launch(&mut client, "serial", json!({}));
    let events = client.events_until_completed(&run_id);
    let pairs = |list: &[&str]| -> Vec<(String, String)> {
        list.iter()
            .map(|entry| {
                let (event, node) = entry.split_once(' ').unwrap_or_default();
                (event.to_string(), node.to_string())
            })
            .collect()
    };
    assert_eq!(
        node_events(&events),
        pairs(&[
            "node.started a",
            "node.finished a",
            "node.started b",
            "node.finished b",
            "node.started c",
            "node.finished c",
        ]),
        "{events:?}"
    );
    assert_eq!(max_in_flight(&events), 1);
    assert_eq!(
        completed_payload(&events),
        json!({"runId": run_id, "status": "finished"})
    );
    assert_eq!(
        get_run(&mut client, &run_id)["summary"],
        json!({"finished": 3})
    );

    let run_id = launch(&mut client, "open", json!({}));
    let events = client.events_until_completed(&run_id);
    assert_eq!(max_in_flight(&events), 3, "{events:?}");
    let started: Vec<String> = node_events(&events)
        .into_iter()
        .filter(|(event, _)| event == "node.started")
        .map(|(_, node)| node)
        .collect();
    assert_eq!(started, vec!["a", "b", "c"]);
    assert_eq!(
        completed_payload(&events),
        json!({"runId": run_id, "status": "finished"})
    );
    assert_eq!(
        get_run(&mut client, &run_id)["summary"],
        json!({"finished": 3})
    );
}

/// A failing child fails the parallel block and the run; its running sibling is cancelled.
#[test]
fn parallel_child_failure_fails_the_run() {
    let gateway = start(&[(
        "par-fail",
        r#"
[[nodes]]
kind = "parallel"
id = "p"
  [[nodes.children]]
  kind = "task"
  id = "slow"
  output = { n = 1 }
  delay_ms = 5000
  [[nodes.children]]
  kind = "task"
  id = "bad"
  run = ["sh", "-c", "exit 1"]
"#,
    )]);
    let (mut client, _) = Client::connect(gateway.addr);
    let run_id = launch(&mut client, "par-fail", json!({}));
    let events = client.events_until_completed(&run_id);
    let failed = events
        .iter()
        .find(|e| e["event"] == "node.failed")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        failed["payload"],
        json!({"runId": run_id, "nodeId": "bad", "state": "failed", "error": {"message": "exited with code 1"}})
    );
    let cancelled = events
        .iter()
        .find(|e| e["event"] == "node.cancelled")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        cancelled["payload"],
        json!({"runId": run_id, "nodeId": "slow", "state": "cancelled"})
    );
    assert_eq!(
        completed_payload(&events),
        json!({"runId": run_id, "status": "failed", "error": {"message": "node bad failed"}})
    );
    let run = get_run(&mut client, &run_id);
    assert_eq!(run["status"], "failed");
    assert_eq!(run["summary"], json!({"cancelled": 1, "failed": 1}));
}

// ---- 2. loop ----

/// `max_iterations = 3` runs the task at iterations 0, 1, 2, then the run finishes.
#[test]
fn loop_runs_max_iterations() {
    let gateway = start(&[(
        "loop3",
        r#"
[[nodes]]
kind = "loop"
id = "l"
max_iterations = 3
  [[nodes.children]]
  kind = "task"
  id = "t"
  output = { ok = true }
"#,
    )]);
    let (mut client, _) = Client::connect(gateway.addr);
    let run_id = launch(&mut client, "loop3", json!({}));
    let events = client.events_until_completed(&run_id);
    assert_eq!(
        names(&events),
        vec![
            "node.started",
            "node.finished",
            "node.started",
            "node.finished",
            "node.started",
            "node.finished",
            "run.completed"
        ],
        "{events:?}"
    );
    assert_eq!(
        completed_payload(&events),
        json!({"runId": run_id, "status": "finished"})
    );
    assert_eq!(
        get_run(&mut client, &run_id)["summary"],
        json!({"finished": 3})
    );
    let iterations: Vec<i64> = outputs(&gateway.data_dir, &run_id, "t")
        .into_iter()
        .map(|(iteration, _)| iteration)
        .collect();
    assert_eq!(iterations, vec![0, 1, 2]);
}

/// `until` stops the loop at the first iteration whose output matches, before the max.
#[test]
fn loop_until_stops_early() {
    let gateway = start(&[(
        "loop-until",
        r#"
[[nodes]]
kind = "loop"
id = "l"
max_iterations = 5
until = { node = "check", field = "done", equals = true }
  [[nodes.children]]
  kind = "task"
  id = "check"
  run = ['python3', '-c', 'import json,sys; d=json.load(sys.stdin); print(json.dumps({"done": d["iteration"] >= 1, "seen": d["iteration"]}))']
"#,
    )]);
    let (mut client, _) = Client::connect(gateway.addr);
    let run_id = launch(&mut client, "loop-until", json!({}));
    let events = client.events_until_completed(&run_id);
    assert_eq!(
        completed_payload(&events),
        json!({"runId": run_id, "status": "finished"})
    );
    assert_eq!(
        names(&events)
            .iter()
            .filter(|name| *name == "node.finished")
            .count(),
        2,
        "{events:?}"
    );
    assert_eq!(
        get_run(&mut client, &run_id)["summary"],
        json!({"finished": 2})
    );
    assert_eq!(
        outputs(&gateway.data_dir, &run_id, "check"),
        vec![
            (0, json!({"done": false, "seen": 0})),
            (1, json!({"done": true, "seen": 1}))
        ]
    );
}

// ---- 3. timer ----

/// A `duration` timer (1 s) parks the run in waiting-timer, then it finishes on its own; an `until` in
/// the past finishes at once.
#[test]
fn timers_wait_then_finish() {
    let gateway = start(&[
        (
            "nap",
            "[[nodes]]\nkind = \"timer\"\nid = \"nap\"\nduration = \"1s\"\n[[nodes]]\nkind = \"task\"\nid = \"after\"\noutput = { ok = true }\n",
        ),
        (
            "past",
            "[[nodes]]\nkind = \"timer\"\nid = \"past\"\nuntil = \"2000-01-01T00:00:00Z\"\n",
        ),
    ]);
    let (mut client, _) = Client::connect(gateway.addr);
    let run_id = launch(&mut client, "nap", json!({}));
    let run = wait_status(&mut client, &run_id, "waiting-timer");
    assert_eq!(run["runState"]["state"], "waiting-timer");
    assert_eq!(run["runState"]["blocked"]["kind"], "timer");
    assert_eq!(run["runState"]["blocked"]["nodeId"], "nap");
    let wake_at = run["runState"]["blocked"]["wakeAt"]
        .as_i64()
        .unwrap_or(i64::MAX);
    let events = client.events_until_completed(&run_id);
    assert_eq!(
        node_events(&events)[0],
        ("node.waiting_timer".to_string(), "nap".to_string())
    );
    let waiting = events
        .iter()
        .find(|e| e["event"] == "node.waiting_timer")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        waiting["payload"],
        json!({"runId": run_id, "nodeId": "nap", "state": "waiting", "iteration": 0})
    );
    assert_eq!(
        completed_payload(&events),
        json!({"runId": run_id, "status": "finished"})
    );
    let fired = outputs(&gateway.data_dir, &run_id, "nap");
    assert_eq!(fired.len(), 1);
    let fired_at = fired[0].1["firedAtMs"].as_i64().unwrap_or(0);
    assert!(fired_at >= wake_at, "fired at {fired_at}, before {wake_at}");

    let run_id = launch(&mut client, "past", json!({}));
    let events = client.events_until_completed(&run_id);
    assert_eq!(
        names(&events),
        vec!["node.waiting_timer", "node.finished", "run.completed"]
    );
    assert_eq!(
        completed_payload(&events),
        json!({"runId": run_id, "status": "finished"})
    );
}

// ---- 4. signal ----

/// A correlated signal wait ignores a signal with the wrong correlationId and completes with the
/// right one; its payload becomes the node's output.
#[test]
fn signal_correlation_must_match() {
    let gateway = start(&[(
        "ticket",
        r#"
[[nodes]]
kind = "signal"
id = "qa"
correlation = "input.ticket"
[[nodes]]
kind = "task"
id = "after"
output = { ok = true }
"#,
    )]);
    let (mut client, _) = Client::connect(gateway.addr);
    let run_id = launch(&mut client, "ticket", json!({"ticket": "T-1"}));
    let run = wait_status(&mut client, &run_id, "waiting-event");
    assert_eq!(run["runState"]["blocked"]["kind"], "event");
    let wrong = call(
        &mut client,
        "submitSignal",
        json!({"runId": run_id, "signalName": "qa", "correlationId": "T-2", "data": {"n": 1}}),
    );
    assert_eq!(wrong["payload"]["seq"], 0, "{wrong}");
    assert_eq!(wrong["payload"]["correlationId"], "T-2");
    assert_eq!(get_run(&mut client, &run_id)["status"], "waiting-event");
    let uncorrelated = call(
        &mut client,
        "submitSignal",
        json!({"runId": run_id, "signalName": "qa", "data": {"n": 2}}),
    );
    assert_eq!(uncorrelated["payload"]["seq"], 1, "{uncorrelated}");
    assert_eq!(get_run(&mut client, &run_id)["status"], "waiting-event");
    let right = call(
        &mut client,
        "submitSignal",
        json!({"runId": run_id, "signalName": "qa", "correlationId": " T-1 ", "data": {"n": 3}}),
    );
    assert_eq!(right["payload"]["seq"], 2, "{right}");
    assert_eq!(right["payload"]["correlationId"], "T-1");
    let events = client.events_until_completed(&run_id);
    assert_eq!(
        completed_payload(&events),
        json!({"runId": run_id, "status": "finished"})
    );
    assert_eq!(
        outputs(&gateway.data_dir, &run_id, "qa"),
        vec![(0, json!({"n": 3}))]
    );
}

/// A signal sent before its node waits is stored and consumed when the wait starts. An approval
/// holds the run before the signal node, so the signal surely arrives first.
#[test]
fn early_signal_is_consumed_later() {
    let gateway = start(&[(
        "early",
        r#"
[[nodes]]
kind = "approval"
id = "hold"
title = "Hold"
[[nodes]]
kind = "signal"
id = "go"
[[nodes]]
kind = "task"
id = "after"
output = { ok = true }
"#,
    )]);
    let (mut client, _) = Client::connect(gateway.addr);
    let run_id = launch(&mut client, "early", json!({}));
    client.wait_event(&run_id, "approval.requested");
    let sent = call(
        &mut client,
        "submitSignal",
        json!({"runId": run_id, "signalName": "go", "data": {"early": true}}),
    );
    assert_eq!(sent["payload"]["seq"], 0, "{sent}");
    // Stored, not consumed: nothing waits for it yet.
    let run = get_run(&mut client, &run_id);
    assert_eq!(run["status"], "waiting-approval");
    assert_eq!(run["summary"], json!({"waiting-approval": 1}));
    let approved = call(
        &mut client,
        "submitApproval",
        json!({"runId": run_id, "nodeId": "hold", "approved": true}),
    );
    assert_eq!(approved["ok"], true, "{approved}");
    let events = client.events_until_completed(&run_id);
    assert_eq!(
        node_events(&events),
        vec![
            ("node.finished".to_string(), "hold".to_string()),
            ("node.finished".to_string(), "go".to_string()),
            ("node.started".to_string(), "after".to_string()),
            ("node.finished".to_string(), "after".to_string()),
        ],
        "{events:?}"
    );
    assert_eq!(
        completed_payload(&events),
        json!({"runId": run_id, "status": "finished"})
    );
    assert_eq!(
        outputs(&gateway.data_dir, &run_id, "go"),
        vec![(0, json!({"early": true}))]
    );
    let consumed: (Option<String>, Option<i64>) = open_db(&gateway.data_dir)
        .query_row(
            "SELECT consumed_by_node, consumed_by_iteration FROM _smithers_signals WHERE run_id = ?1 AND seq = 0",
            [&run_id],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(consumed, (Some("go".to_string()), Some(0)));
    assert_eq!(
        get_run(&mut client, &run_id)["summary"],
        json!({"finished": 3})
    );
}

/// `timeout_ms` with on_timeout fail / skip / continue: failed run, skipped node, finished node.
#[test]
fn signal_timeouts_follow_on_timeout() {
    let workflow = |on_timeout: &str| {
        format!(
            "[[nodes]]\nkind = \"signal\"\nid = \"wait\"\ntimeout_ms = 200\non_timeout = \"{on_timeout}\"\n[[nodes]]\nkind = \"task\"\nid = \"after\"\noutput = {{ ok = true }}\n"
        )
    };
    let (fail, skip, cont) = (workflow("fail"), workflow("skip"), workflow("continue"));
    let gateway = start(&[("t-fail", &fail), ("t-skip", &skip), ("t-continue", &cont)]);
    let (mut client, _) = Client::connect(gateway.addr);

    let run_id = launch(&mut client, "t-fail", json!({}));
    let events = client.events_until_completed(&run_id);
    let failed = events
        .iter()
        .find(|e| e["event"] == "node.failed")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        failed["payload"],
        json!({"runId": run_id, "nodeId": "wait", "state": "failed", "error": {"message": "signal wait timed out"}})
    );
    assert_eq!(
        completed_payload(&events),
        json!({"runId": run_id, "status": "failed", "error": {"message": "node wait failed"}})
    );

    let run_id = launch(&mut client, "t-skip", json!({}));
    let events = client.events_until_completed(&run_id);
    assert_eq!(
        names(&events),
        vec![
            "node.skipped",
            "node.started",
            "node.finished",
            "run.completed"
        ],
        "{events:?}"
    );
    assert_eq!(
        completed_payload(&events),
        json!({"runId": run_id, "status": "finished"})
    );
    assert_eq!(
        get_run(&mut client, &run_id)["summary"],
        json!({"finished": 1, "skipped": 1})
    );

    let run_id = launch(&mut client, "t-continue", json!({}));
    let events = client.events_until_completed(&run_id);
    assert_eq!(
        node_events(&events)[0],
        ("node.finished".to_string(), "wait".to_string())
    );
    assert_eq!(
        completed_payload(&events),
        json!({"runId": run_id, "status": "finished"})
    );
    assert_eq!(
        outputs(&gateway.data_dir, &run_id, "wait"),
        vec![(0, json!({"timedOut": true}))]
    );
}

// ---- 5. approval ----

fn approval_workflow(extra: &str) -> String {
    format!(
        "[[nodes]]\nkind = \"approval\"\nid = \"gate\"\ntitle = \"Go?\"\n{extra}\n[[nodes]]\nkind = \"task\"\nid = \"after\"\noutput = {{ ok = true }}\n"
    )
}

/// Denying with on_deny = continue or skip still finishes the run (node finished / skipped).
#[test]
fn denied_approval_continue_and_skip() {
    let cont = approval_workflow("on_deny = \"continue\"");
    let skip = approval_workflow("on_deny = \"skip\"");
    let gateway = start(&[("deny-continue", &cont), ("deny-skip", &skip)]);
    let (mut client, _) = Client::connect(gateway.addr);
    for (workflow, gate_event, summary) in [
        ("deny-continue", "node.finished", json!({"finished": 2})),
        (
            "deny-skip",
            "node.skipped",
            json!({"finished": 1, "skipped": 1}),
        ),
    ] {
        let run_id = launch(&mut client, workflow, json!({}));
        client.wait_event(&run_id, "approval.requested");
        let denied = call(
            &mut client,
            "submitApproval",
            json!({"runId": run_id, "nodeId": "gate", "approved": false}),
        );
        assert_eq!(
            denied["payload"],
            json!({"runId": run_id, "nodeId": "gate", "iteration": 0, "approved": false})
        );
        let events = client.events_until_completed(&run_id);
        assert_eq!(
            node_events(&events)[0],
            (gate_event.to_string(), "gate".to_string()),
            "{workflow}: {events:?}"
        );
        assert_eq!(
            completed_payload(&events),
            json!({"runId": run_id, "status": "finished"}),
            "{workflow}"
        );
        assert_eq!(
            get_run(&mut client, &run_id)["summary"],
            summary,
            "{workflow}"
        );
        assert_eq!(
            outputs(&gateway.data_dir, &run_id, "gate"),
            vec![(
                0,
                json!({"approved": false, "decision": null, "note": null})
            )]
        );
    }
}

/// `auto_approve_after` approves on its own: approval.auto_approved, then the run finishes.
#[test]
fn approval_auto_approves() {
    let auto = approval_workflow("auto_approve_after = \"200ms\"");
    let gateway = start(&[("auto", &auto)]);
    let (mut client, _) = Client::connect(gateway.addr);
    let run_id = launch(&mut client, "auto", json!({}));
    let events = client.events_until_completed(&run_id);
    let auto = events
        .iter()
        .find(|e| e["event"] == "approval.auto_approved")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        auto["payload"],
        json!({"runId": run_id, "nodeId": "gate", "iteration": 0})
    );
    assert!(
        !events.iter().any(|e| e["event"] == "approval.decided"),
        "{events:?}"
    );
    assert_eq!(
        completed_payload(&events),
        json!({"runId": run_id, "status": "finished"})
    );
    let approvals = call(&mut client, "listApprovals", json!({"runId": run_id}));
    assert_eq!(approvals["payload"], json!([]), "no approval left pending");
}

/// `allowed_users` and `allowed_scopes` restrict who may decide: FORBIDDEN with the spec
/// messages for others, accepted for the allowed caller.
#[test]
fn approval_restrictions() {
    const ALICE: &str = "alice-token-0123456789";
    const PLAIN: &str = "plain-approver-token-0123";
    const RELEASE: &str = "release-approver-token-01";
    let users = approval_workflow("allowed_users = [\"alice\"]");
    let scopes = approval_workflow("allowed_scopes = [\"team:release\"]");
    let with_user = |user: &str, scopes: &[&str]| TokenGrant {
        user_id: Some(user.into()),
        ..grant("operator", scopes)
    };
    let config = GatewayConfig {
        auth: Some(token_auth(&[
            (ADMIN_TOKEN, grant("admin", &["*"])),
            (ALICE, with_user("alice", &["approval:submit"])),
            (PLAIN, with_user("bob", &["approval:submit"])),
            (
                RELEASE,
                with_user("carol", &["approval:submit", "team:release"]),
            ),
        ])),
        ..GatewayConfig::default()
    };
    let gateway = Gateway::start_full(
        config,
        1,
        &workflow_dir(&[("users", &users), ("scopes", &scopes)]),
        &temp_dir("data"),
    );
    let (mut admin, _) = Client::connect(gateway.addr);
    let decide = |client: &mut Client, run_id: &str| {
        call(
            client,
            "submitApproval",
            json!({"runId": run_id, "nodeId": "gate", "approved": true}),
        )
    };

    let run_id = launch(&mut admin, "users", json!({}));
    admin.wait_event(&run_id, "approval.requested");
    let refused = decide(&mut admin, &run_id);
    assert_eq!(refused["error"]["code"], "FORBIDDEN", "{refused}");
    assert_eq!(
        refused["error"]["message"],
        "User is not allowed to decide this approval"
    );
    let (mut bob, _) = Client::connect_as(gateway.addr, PLAIN);
    let refused = decide(&mut bob, &run_id);
    assert_eq!(
        refused["error"]["message"],
        "User is not allowed to decide this approval"
    );
    assert_eq!(get_run(&mut admin, &run_id)["status"], "waiting-approval");
    let (mut alice, _) = Client::connect_as(gateway.addr, ALICE);
    let accepted = decide(&mut alice, &run_id);
    assert_eq!(accepted["ok"], true, "{accepted}");
    let events = admin.events_until_completed(&run_id);
    assert_eq!(
        completed_payload(&events),
        json!({"runId": run_id, "status": "finished"})
    );

    let run_id = launch(&mut admin, "scopes", json!({}));
    admin.wait_event(&run_id, "approval.requested");
    let refused = decide(&mut bob, &run_id);
    assert_eq!(refused["error"]["code"], "FORBIDDEN", "{refused}");
    assert_eq!(
        refused["error"]["message"],
        "Connection is missing required approval scope"
    );
    assert_eq!(get_run(&mut admin, &run_id)["status"], "waiting-approval");
    let (mut carol, _) = Client::connect_as(gateway.addr, RELEASE);
    let accepted = decide(&mut carol, &run_id);
    assert_eq!(
        accepted["payload"],
        json!({"runId": run_id, "nodeId": "gate", "iteration": 0, "approved": true})
    );
    let events = admin.events_until_completed(&run_id);
    assert_eq!(
        completed_payload(&events),
        json!({"runId": run_id, "status": "finished"})
    );
    let db = open_db(&gateway.data_dir);
    let decided_by: Option<String> = db
        .query_row(
            "SELECT decided_by FROM _smithers_approvals WHERE run_id = ?1",
            [&run_id],
            |row| row.get(0),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(decided_by.as_deref(), Some("carol"));
}

// ---- 6. task ----

/// `continue_on_fail` lets the run finish past a failed task, reported in run.completed.
#[test]
fn continue_on_fail_finishes_the_run() {
    let gateway = start(&[(
        "tolerant",
        r#"
[[nodes]]
kind = "task"
id = "flaky"
run = ["sh", "-c", "exit 4"]
continue_on_fail = true
[[nodes]]
kind = "task"
id = "after"
output = { ok = true }
"#,
    )]);
    let (mut client, _) = Client::connect(gateway.addr);
    let run_id = launch(&mut client, "tolerant", json!({}));
    let events = client.events_until_completed(&run_id);
    assert_eq!(
        names(&events),
        vec![
            "node.started",
            "node.failed",
            "node.started",
            "node.finished",
            "run.completed"
        ],
        "{events:?}"
    );
    assert_eq!(
        completed_payload(&events),
        json!({"runId": run_id, "status": "finished", "failedChildren": 1, "failedChildKeys": ["flaky::0"]})
    );
    let run = get_run(&mut client, &run_id);
    assert_eq!(run["status"], "finished");
    assert_eq!(run["summary"], json!({"failed": 1, "finished": 1}));
}

/// `retries = 1`: a command that fails once then succeeds is retried (node.retrying attempt 2)
/// and finishes.
#[test]
fn retry_then_succeed() {
    let scratch = temp_dir("marker");
    let marker = scratch.join("failed-once");
    let workflow = format!(
        r#"
[[nodes]]
kind = "task"
id = "once"
retries = 1
env = {{ MARKER = "{}" }}
run = ["sh", "-c", "if [ -e \"$MARKER\" ]; then echo '{{\"second\":true}}'; else touch \"$MARKER\"; exit 1; fi"]
"#,
        marker.display()
    );
    let gateway = start(&[("once", &workflow)]);
    let (mut client, _) = Client::connect(gateway.addr);
    let run_id = launch(&mut client, "once", json!({}));
    let events = client.events_until_completed(&run_id);
    assert_eq!(
        names(&events),
        vec![
            "node.started",
            "node.retrying",
            "node.finished",
            "run.completed"
        ],
        "{events:?}"
    );
    let retrying = events
        .iter()
        .find(|e| e["event"] == "node.retrying")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        retrying["payload"],
        json!({"runId": run_id, "nodeId": "once", "state": "in-progress", "attempt": 2})
    );
    assert_eq!(
        completed_payload(&events),
        json!({"runId": run_id, "status": "finished"})
    );
    assert_eq!(
        attempts(&gateway.data_dir, &run_id, "once"),
        vec![
            (
                1,
                "failed".to_string(),
                json!({"message": "exited with code 1"})
            ),
            (2, "finished".to_string(), Value::Null)
        ]
    );
    assert_eq!(
        outputs(&gateway.data_dir, &run_id, "once"),
        vec![(0, json!({"second": true}))]
    );
    let _ = std::fs::remove_dir_all(&scratch);
}

/// A command whose stdout is not one JSON object fails its attempt with that reason.
#[test]
fn non_json_stdout_fails() {
    let gateway = start(&[(
        "chatty",
        "[[nodes]]\nkind = \"task\"\nid = \"talk\"\nrun = [\"sh\", \"-c\", \"echo not json\"]\n",
    )]);
    let (mut client, _) = Client::connect(gateway.addr);
    let run_id = launch(&mut client, "chatty", json!({}));
    let events = client.events_until_completed(&run_id);
    let failed = events
        .iter()
        .find(|e| e["event"] == "node.failed")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        failed["payload"],
        json!({"runId": run_id, "nodeId": "talk", "state": "failed", "error": {"message": "stdout is not one JSON object"}})
    );
    assert_eq!(
        completed_payload(&events),
        json!({"runId": run_id, "status": "failed", "error": {"message": "node talk failed"}})
    );
}

// ---- 7. cancel ----

/// Cancelling a run with two running commands kills their process groups, cancels the nodes and
/// broadcasts run.completed {cancelled} exactly once.
#[test]
fn cancel_kills_the_process_group() {
    let marker = format!(
        "30.{}",
        100_000 + u64::from(uuid::Uuid::new_v4().as_fields().1)
    );
    let workflow = format!(
        "[[nodes]]\nkind = \"parallel\"\nid = \"p\"\n  [[nodes.children]]\n  kind = \"task\"\n  id = \"sleepy-a\"\n  run = [\"sh\", \"-c\", \"sleep {marker} & sleep {marker}; wait\"]\n  [[nodes.children]]\n  kind = \"task\"\n  id = \"sleepy-b\"\n  run = [\"sh\", \"-c\", \"sleep {marker} & sleep {marker}; wait\"]\n[[nodes]]\nkind = \"task\"\nid = \"never\"\noutput = {{ ok = true }}\n"
    );
    let gateway = start(&[("sleepy", &workflow)]);
    let (mut client, _) = Client::connect(gateway.addr);
    let (mut observer, _) = Client::connect(gateway.addr);
    let run_id = launch(&mut client, "sleepy", json!({}));
    client.wait_event(&run_id, "node.started");
    let deadline = Instant::now() + WAIT;
    // Two shells, each with a background and a foreground sleep.
    while pgrep(&marker).lines().count() < 6 {
        assert!(Instant::now() < deadline, "the sleeps never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let cancelled = call(&mut client, "cancelRun", json!({"runId": run_id}));
    assert_eq!(
        cancelled["payload"],
        json!({"runId": run_id, "won": true, "status": "cancelled", "terminalStatus": "cancelled", "repaired": false})
    );
    let events = client.events_until_completed(&run_id);
    let mut cancelled_nodes: Vec<String> = node_events(&events)
        .into_iter()
        .filter(|(event, _)| event == "node.cancelled")
        .map(|(_, node)| node)
        .collect();
    cancelled_nodes.sort();
    assert_eq!(cancelled_nodes, vec!["sleepy-a", "sleepy-b"], "{events:?}");
    assert_eq!(
        completed_payload(&events),
        json!({"runId": run_id, "status": "cancelled"})
    );
    let again = call(&mut client, "cancelRun", json!({"runId": run_id}));
    assert_eq!(again["payload"]["status"], "already-terminal");
    let deadline = Instant::now() + WAIT;
    while !pgrep(&marker).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(pgrep(&marker), "", "survivors of the group kill");
    let run = get_run(&mut client, &run_id);
    assert_eq!(run["status"], "cancelled");
    assert_eq!(run["summary"], json!({"cancelled": 2}));
    for node in ["sleepy-a", "sleepy-b"] {
        assert_eq!(
            attempts(&gateway.data_dir, &run_id, node),
            vec![(1, "cancelled".to_string(), Value::Null)]
        );
    }

    // The observer saw everything of the run, with run.completed exactly once, over a bounded
    // window that extends past the second cancel.
    let seen = observe(&mut observer, &run_id, Duration::from_millis(1_500));
    let completions: Vec<&Value> = seen
        .iter()
        .filter(|e| e["event"] == "run.completed")
        .collect();
    assert_eq!(completions.len(), 1, "{seen:?}");
    assert_eq!(
        completions[0]["payload"],
        json!({"runId": run_id, "status": "cancelled"})
    );
    assert_eq!(
        seen.iter()
            .filter(|e| e["event"] == "node.cancelled")
            .count(),
        2
    );
}

/// Every event of `run_id` the client receives within `window`.
fn observe(client: &mut Client, run_id: &str, window: Duration) -> Vec<Value> {
    let mut seen: Vec<Value> = client
        .backlog
        .drain(..)
        .filter(|f| f["type"] == "event" && f["payload"]["runId"] == run_id)
        .collect();
    let stream = client.ws.get_ref();
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap_or_else(|e| panic!("{e}"));
    let end = Instant::now() + window;
    while Instant::now() < end {
        match client.ws.read() {
            Ok(tungstenite::Message::Text(text)) => {
                let frame: Value = serde_json::from_str(&text).unwrap_or_default();
                if frame["type"] == "event" && frame["payload"]["runId"] == run_id {
                    seen.push(frame);
                }
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(error))
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(error) => panic!("observer read failed: {error}"),
        }
    }
    seen
}

// ---- 8. resume after restart ----

/// Stops `gateway` without removing its data directory.
fn stop_keeping_data(mut gateway: Gateway) {
    gateway.stop();
    std::mem::forget(gateway);
}

/// A run in waiting-timer (2 s) keeps its wake time across a restart and finishes on time.
#[test]
fn timer_survives_restart() {
    let workflows = workflow_dir(&[(
        "nap",
        "[[nodes]]\nkind = \"timer\"\nid = \"nap\"\nduration = \"2s\"\n[[nodes]]\nkind = \"task\"\nid = \"after\"\noutput = { ok = true }\n",
    )]);
    let data = temp_dir("restart-timer");
    let first = Gateway::start_full(admin_config(), 1, &workflows, &data);
    let (mut client, _) = Client::connect(first.addr);
    let run_id = launch(&mut client, "nap", json!({}));
    let run = wait_status(&mut client, &run_id, "waiting-timer");
    let wake_at = run["runState"]["blocked"]["wakeAt"]
        .as_i64()
        .unwrap_or(i64::MAX);
    drop(client);
    stop_keeping_data(first);

    let second = Gateway::start_full(admin_config(), 1, &workflows, &data);
    let (mut client, _) = Client::connect(second.addr);
    // Still waiting, with the wake time it had before the restart.
    let run = get_run(&mut client, &run_id);
    assert_eq!(run["status"], "waiting-timer", "{run}");
    assert_eq!(run["runState"]["blocked"]["wakeAt"], wake_at);
    wait_status(&mut client, &run_id, "finished");
    let fired = outputs(&data, &run_id, "nap");
    assert_eq!(fired.len(), 1);
    let fired_at = fired[0].1["firedAtMs"].as_i64().unwrap_or(0);
    assert!(fired_at >= wake_at, "fired at {fired_at}, before {wake_at}");
    assert_eq!(
        event_types(&data, &run_id),
        vec![
            "RunStarted",
            "NodeWaitingTimer",
            "NodeFinished",
            "NodeStarted",
            "NodeFinished",
            "RunFinished"
        ]
    );
}

/// A command in flight when the gateway stops is failed "interrupted" on restart, then retried
/// per its policy (retries = 1: finishes) or fails the run (no retries).
#[test]
fn interrupted_attempt_is_retried_after_restart() {
    // Attempt 1 takes long enough to be in flight at the stop; later attempts answer at once.
    let task = |retries: u32| {
        format!(
            "[[nodes]]\nkind = \"task\"\nid = \"t\"\nretries = {retries}\nrun = ['python3', '-c', 'import json,sys,time; d=json.load(sys.stdin); time.sleep(3 if d[\"attempt\"] == 1 else 0); print(json.dumps({{\"attempt\": d[\"attempt\"]}}))']\n"
        )
    };
    let (with_retry, without) = (task(1), task(0));
    let workflows = workflow_dir(&[("retry", &with_retry), ("once", &without)]);
    let data = temp_dir("restart-task");
    let first = Gateway::start_full(admin_config(), 1, &workflows, &data);
    let (mut client, _) = Client::connect(first.addr);
    let retried = launch(&mut client, "retry", json!({}));
    client.wait_event(&retried, "node.started");
    let failed = launch(&mut client, "once", json!({}));
    client.wait_event(&failed, "node.started");
    drop(client);
    stop_keeping_data(first);

    let second = Gateway::start_full(admin_config(), 1, &workflows, &data);
    let (mut client, _) = Client::connect(second.addr);
    wait_status(&mut client, &retried, "finished");
    assert_eq!(
        attempts(&data, &retried, "t"),
        vec![
            (1, "failed".to_string(), json!({"message": "interrupted"})),
            (2, "finished".to_string(), Value::Null)
        ]
    );
    assert!(event_types(&data, &retried).contains(&"NodeRetrying".to_string()));
    assert_eq!(
        outputs(&data, &retried, "t"),
        vec![(0, json!({"attempt": 2}))]
    );

    let run = wait_status(&mut client, &failed, "failed");
    assert_eq!(run["summary"], json!({"failed": 1}));
    assert_eq!(
        attempts(&data, &failed, "t"),
        vec![(1, "failed".to_string(), json!({"message": "interrupted"}))]
    );
    let types = event_types(&data, &failed);
    assert_eq!(
        types.iter().filter(|t| *t == "RunFailed").count(),
        1,
        "{types:?}"
    );
    drop(client);
    drop(second);
}

/// A retry still waiting for its backoff when the gateway stops is not forgotten: after the
/// restart the next attempt runs and the run finishes.
#[test]
fn pending_retry_survives_restart() {
    let scratch = temp_dir("marker");
    let marker = scratch.join("failed-once");
    let workflow = format!(
        "[[nodes]]\nkind = \"task\"\nid = \"once\"\nretries = 1\nenv = {{ MARKER = \"{}\" }}\nrun = [\"sh\", \"-c\", \"if [ -e \\\"$MARKER\\\" ]; then echo '{{}}'; else touch \\\"$MARKER\\\"; exit 1; fi\"]\n",
        marker.display()
    );
    let workflows = workflow_dir(&[("once", &workflow)]);
    let data = temp_dir("restart-retry");
    // A backoff far longer than the test: the retry can only happen after the restart.
    let slow_retries = smithers_gateway::engine::core::EngineOptions {
        retry_backoff_base_ms: 600_000,
        ..Default::default()
    };
    let first = Gateway::start_engine(admin_config(), 1, &workflows, &data, slow_retries);
    let (mut client, _) = Client::connect(first.addr);
    let run_id = launch(&mut client, "once", json!({}));
    let retrying = client.wait_event(&run_id, "node.retrying");
    assert_eq!(retrying["payload"]["attempt"], 2);
    drop(client);
    stop_keeping_data(first);

    let second = Gateway::start_full(admin_config(), 1, &workflows, &data);
    let (mut client, _) = Client::connect(second.addr);
    wait_status(&mut client, &run_id, "finished");
    assert_eq!(
        attempts(&data, &run_id, "once"),
        vec![
            (
                1,
                "failed".to_string(),
                json!({"message": "exited with code 1"})
            ),
            (2, "finished".to_string(), Value::Null)
        ]
    );
    drop(client);
    drop(second);
    let _ = std::fs::remove_dir_all(&scratch);
}

// ---- 9. crash test of the real binary ----

/// The real binary as a child process, SIGKILLed when dropped.
struct Child {
    process: std::process::Child,
    addr: SocketAddr,
    _stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Child {
    fn spawn(data: &Path, workflows: &Path, config: &Path, log: &Path) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut process = std::process::Command::new(env!("CARGO_BIN_EXE_smithers-gateway"))
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--workers", "1"])
            .arg("--data-dir")
            .arg(data)
            .arg("--workflows")
            .arg(workflows)
            .arg("--config")
            .arg(config)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn gateway: {e}"));
        let stdout = process.stdout.take().unwrap_or_else(|| panic!("no stdout"));
        // The first line names the address; read it on a thread so a silent child cannot hang us.
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = std::io::BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = sender.send((reader, line));
        });
        let (stdout, line) = match receiver.recv_timeout(Duration::from_secs(20)) {
            Ok(pair) => pair,
            Err(_) => {
                let _ = process.kill();
                let _ = process.wait();
                panic!("gateway printed nothing");
            }
        };
        let addr = line
            .strip_prefix("smithers-gateway listening on http://")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|addr| addr.parse().ok());
        let Some(addr) = addr else {
            let _ = process.kill();
            let _ = process.wait();
            panic!("unexpected first line {line:?}");
        };
        Child {
            process,
            addr,
            _stdout: stdout,
        }
    }

    fn sigkill(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }

    /// SIGTERM, then waits (bounded) for a clean exit.
    fn terminate(&mut self) {
        let pid = libc::pid_t::try_from(self.process.id()).unwrap_or(0);
        // SAFETY: kill(2) on our own child's pid; no memory is touched.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.process.try_wait() {
                assert!(status.success(), "gateway exited with {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("gateway did not stop on SIGTERM");
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.sigkill();
    }
}

const CRASH_TOKEN: &str = "tok-crash-test-0123456789";

/// One `POST /v1/rpc/<method>`; None when the connection fails or ends without a response.
fn try_rpc(addr: SocketAddr, method: &str, params: &Value) -> Option<(u16, Value)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(IO_TIMEOUT)).ok()?;
    stream.set_write_timeout(Some(IO_TIMEOUT)).ok()?;
    let body = params.to_string();
    let request = format!(
        "POST /v1/rpc/{method} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {CRASH_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some((response, _)) = parse_response(&bytes) {
            return Some((response.status, response.json()));
        }
        match stream.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
    }
}

/// splitmix64: the seeded source of kill moments.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Checks the database file on its own: integrity, and per-run event seqs contiguous from 0.
fn check_database(data: &Path) -> usize {
    let db = open_db(data);
    let integrity: String = db
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(integrity, "ok");
    let mut statement = db
        .prepare(
            "SELECT run_id, COUNT(*), MIN(seq), MAX(seq) FROM _smithers_events GROUP BY run_id",
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let rows: Vec<(String, i64, i64, i64)> = statement
        .query_map([], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })
        .unwrap_or_else(|e| panic!("{e}"))
        .map(|row| row.unwrap_or_else(|e| panic!("{e}")))
        .collect();
    for (run_id, count, min, max) in &rows {
        assert_eq!(
            (*min, *max),
            (0, count - 1),
            "event seq gap in run {run_id}"
        );
    }
    // Every run has its events, and every finished run exactly one RunFinished.
    let orphans: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM _smithers_runs r WHERE NOT EXISTS (SELECT 1 FROM _smithers_events e WHERE e.run_id = r.run_id)",
            [],
            |row| row.get(0),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(orphans, 0, "runs without events");
    let bad_finishes: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM _smithers_runs r WHERE r.status = 'finished' AND (SELECT COUNT(*) FROM _smithers_events e WHERE e.run_id = r.run_id AND e.type = 'RunFinished') != 1",
            [],
            |row| row.get(0),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        bad_finishes, 0,
        "finished runs without exactly one RunFinished"
    );
    rows.len()
}

/// Polls getRun over HTTP until every run in `run_ids` exists and is finished.
fn verify_runs(addr: SocketAddr, run_ids: &[String], deadline: Instant) {
    for run_id in run_ids {
        loop {
            let answer = try_rpc(addr, "getRun", &json!({"runId": run_id}));
            let Some((status, body)) = answer else {
                panic!("getRun {run_id}: no answer");
            };
            assert_eq!(status, 200, "acknowledged run {run_id} lost: {body}");
            if body["payload"]["status"] == "finished" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "run {run_id} never finished: {body}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// RELIABILITY §4.3 / §6 row 16: 20 seeded SIGKILLs of the real binary while two clients
/// launch runs; after each restart every acknowledged run exists and finishes, and the database
/// passes integrity_check with contiguous per-run event seqs.
#[test]
fn crash_test_sigkill_during_launches() {
    const ROUNDS: u64 = 20;
    const CLIENTS: usize = 2;
    let started = Instant::now();
    let budget = started + Duration::from_secs(85);
    let scratch = temp_dir("crash");
    let data = scratch.join("data");
    // `hello` finishes within its launch; `relay` is still in flight for a while, so kills land
    // in the middle of runs, which must resume (interrupted attempts are retried).
    let workflows = workflow_dir(&[
        (
            "hello",
            "[[nodes]]\nkind = \"task\"\nid = \"greet\"\noutput = { message = \"hello\" }\n",
        ),
        (
            "relay",
            "[[nodes]]\nkind = \"task\"\nid = \"hop\"\noutput = { n = 1 }\ndelay_ms = 150\nretries = 3\n[[nodes]]\nkind = \"task\"\nid = \"greet\"\noutput = { message = \"hello\" }\n",
        ),
    ]);
    let config = scratch.join("gateway.toml");
    std::fs::write(
        &config,
        format!("[auth]\nmode = \"token\"\n[auth.tokens.\"{CRASH_TOKEN}\"]\nrole = \"admin\"\nscopes = [\"*\"]\n"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let log = scratch.join("gateway.log");
    let mut all_acked: Vec<String> = Vec::new();
    let mut previous: Vec<String> = Vec::new();
    for round in 0..ROUNDS {
        assert!(
            Instant::now() < budget,
            "crash test over budget at round {round}"
        );
        let mut child = Child::spawn(&data, &workflows, &config, &log);
        // The previous round's acknowledged runs survived the kill and are finished.
        verify_runs(child.addr, &previous, budget);
        let acked = Arc::new(Mutex::new(Vec::<String>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (first_ack, first_ack_seen) = std::sync::mpsc::channel::<()>();
        let threads: Vec<_> = (0..CLIENTS)
            .map(|client| {
                let (acked, stop, first_ack, addr) =
                    (acked.clone(), stop.clone(), first_ack.clone(), child.addr);
                std::thread::spawn(move || {
                    for n in 0..100_000u64 {
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        let workflow = if client == 0 { "hello" } else { "relay" };
                        let params = json!({"workflow": workflow, "options": {"idempotencyKey": format!("r{round}-c{client}-{n}")}});
                        match try_rpc(addr, "launchRun", &params) {
                            Some((200, body)) if body["ok"] == true => {
                                let run_id = body["payload"]["runId"]
                                    .as_str()
                                    .unwrap_or_default()
                                    .to_string();
                                acked.lock().unwrap_or_else(|e| e.into_inner()).push(run_id);
                                let _ = first_ack.send(());
                            }
                            // A refusal before the kill is a failure; after it, the end.
                            Some((status, body)) => {
                                assert!(
                                    stop.load(Ordering::SeqCst),
                                    "launch refused with {status}: {body}"
                                );
                                return;
                            }
                            None => return,
                        }
                    }
                })
            })
            .collect();
        drop(first_ack);
        first_ack_seen
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("round {round}: no launch acknowledged"));
        let mut seed = 0x5EED_0000 + round;
        let delay = 50 + splitmix(&mut seed) % 351;
        std::thread::sleep(Duration::from_millis(delay));
        child.sigkill();
        stop.store(true, Ordering::SeqCst);
        for thread in threads {
            thread
                .join()
                .unwrap_or_else(|_| panic!("client thread panicked"));
        }
        drop(child);
        check_database(&data);
        previous = std::mem::take(&mut *acked.lock().unwrap_or_else(|e| e.into_inner()));
        all_acked.extend(previous.iter().cloned());
    }
    // Final restart: every run acknowledged in any round is there and finished.
    let mut child = Child::spawn(&data, &workflows, &config, &log);
    verify_runs(child.addr, &all_acked, budget);
    // No run is left stuck: acknowledged or not, every stored run reaches a terminal state.
    loop {
        let open: i64 = open_db(&data)
            .query_row(
                "SELECT COUNT(*) FROM _smithers_runs WHERE status NOT IN ('finished', 'failed', 'cancelled')",
                [],
                |row| row.get(0),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        if open == 0 {
            break;
        }
        assert!(Instant::now() < budget, "{open} runs never ended");
        std::thread::sleep(Duration::from_millis(50));
    }
    let interrupted: i64 = open_db(&data)
        .query_row(
            "SELECT COUNT(*) FROM _smithers_attempts WHERE error_json LIKE '%interrupted%'",
            [],
            |row| row.get(0),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    child.terminate();
    let runs_with_events = check_database(&data);
    let unique: std::collections::HashSet<&String> = all_acked.iter().collect();
    assert_eq!(
        unique.len(),
        all_acked.len(),
        "duplicate run ids acknowledged"
    );
    assert!(runs_with_events >= all_acked.len());
    eprintln!(
        "crash test: {ROUNDS} rounds, {} acknowledged runs, 0 lost, integrity ok, {runs_with_events} runs with contiguous events, {interrupted} interrupted attempts resumed, {:?}",
        all_acked.len(),
        started.elapsed()
    );
    drop(child);
    let _ = std::fs::remove_dir_all(&scratch);
    let _ = std::fs::remove_dir_all(&workflows);
}

// ---- 10. storage refusing writes ----

/// RELIABILITY §6 row 18: while another connection holds the database's write lock, a launch and
/// a decision get a typed SERVER_ERROR, nothing of them is stored, the server stays up, and both
/// succeed once the lock is released.
#[test]
fn locked_database_refuses_writes_cleanly() {
    let gateway = start(&[
        ("gate", &approval_workflow("")),
        (
            "hello",
            "[[nodes]]\nkind = \"task\"\nid = \"greet\"\noutput = { message = \"hello\" }\n",
        ),
    ]);
    let (mut client, _) = Client::connect(gateway.addr);
    let waiting = launch(&mut client, "gate", json!({}));
    client.wait_event(&waiting, "approval.requested");

    let locker = rusqlite::Connection::open(
        gateway
            .data_dir
            .join(smithers_gateway::gateway::DATABASE_FILE),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    locker
        .execute_batch("BEGIN EXCLUSIVE")
        .unwrap_or_else(|e| panic!("{e}"));
    let refused = call(
        &mut client,
        "launchRun",
        json!({"workflow": "hello", "runId": "locked-launch"}),
    );
    assert_eq!(refused["error"]["code"], "SERVER_ERROR", "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Storage failure")),
        "{refused}"
    );
    let refused = call(
        &mut client,
        "submitApproval",
        json!({"runId": waiting, "nodeId": "gate", "approved": true}),
    );
    assert_eq!(refused["error"]["code"], "SERVER_ERROR", "{refused}");
    // Reads still work while writes are refused; nothing of the refused calls is stored.
    let missing = call(&mut client, "getRun", json!({"runId": "locked-launch"}));
    assert_eq!(missing["error"]["code"], "NOT_FOUND", "{missing}");
    assert_eq!(get_run(&mut client, &waiting)["status"], "waiting-approval");
    locker
        .execute_batch("ROLLBACK")
        .unwrap_or_else(|e| panic!("{e}"));
    drop(locker);

    let health = call(&mut client, "health", json!({}));
    assert_eq!(health["ok"], true);
    let approvals = call(&mut client, "listApprovals", json!({"runId": waiting}));
    assert_eq!(approvals["payload"].as_array().map(Vec::len), Some(1));
    let accepted = call(
        &mut client,
        "submitApproval",
        json!({"runId": waiting, "nodeId": "gate", "approved": true}),
    );
    assert_eq!(accepted["ok"], true, "{accepted}");
    let events = client.events_until_completed(&waiting);
    assert_eq!(
        completed_payload(&events),
        json!({"runId": waiting, "status": "finished"})
    );
    let relaunched = client.launch(
        "again",
        json!({"workflow": "hello", "runId": "locked-launch"}),
    );
    assert_eq!(relaunched["runId"], "locked-launch");
    let events = client.events_until_completed("locked-launch");
    assert_eq!(
        completed_payload(&events),
        json!({"runId": "locked-launch", "status": "finished"})
    );
}
