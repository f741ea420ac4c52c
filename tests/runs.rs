//! Runs end to end (issue 3): launch, watch events, approvals, signals, cancellation, retries,
//! timeouts, and restart durability, against the real engine, storage and child processes.

use crate::support::*;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

/// Reads events until `run.completed` for `run_id`; returns every event frame seen.
fn events_until_completed(ws: &mut Ws, run_id: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut events = Vec::new();
    while Instant::now() < deadline {
        let frame = recv_json(ws);
        if frame["type"] != "event" {
            continue;
        }
        let done = frame["event"] == "run.completed" && frame["payload"]["runId"] == run_id;
        events.push(frame);
        if done {
            return events;
        }
    }
    panic!("run {run_id} did not complete; events: {events:?}")
}

/// Reads events until one named `name` for `run_id` arrives.
fn wait_event(ws: &mut Ws, run_id: &str, name: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let frame = recv_json(ws);
        if frame["type"] == "event" && frame["event"] == name && frame["payload"]["runId"] == run_id {
            return frame;
        }
    }
    panic!("no {name} for {run_id}")
}

fn launch(ws: &mut Ws, id: &str, params: Value) -> Value {
    let response = request(ws, id, "launchRun", params);
    assert_eq!(response["ok"], true, "launch failed: {response}");
    response["payload"].clone()
}

fn write_workflow(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(format!("{name}.toml")), text).unwrap_or_else(|e| panic!("{e}"));
}

/// `hello` runs to completion; events arrive in order with increasing socket seq and
/// stateVersion, and getRun shows the finished run with its node summary.
#[test]
fn hello_runs_to_completion() {
    let gateway = Gateway::start(|_| {});
    let (mut ws, _) = ws_connect(gateway.addr, ADMIN_TOKEN);
    let launched = launch(&mut ws, "l1", json!({"workflow": "hello", "input": {"who": "world"}}));
    let run_id = launched["runId"].as_str().unwrap_or_default().to_string();
    assert_eq!(launched["workflow"], "hello");
    assert_eq!(launched["system"], false);
    let events = events_until_completed(&mut ws, &run_id);
    let names: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).filter(|n| *n != "tick").collect();
    assert_eq!(names, vec!["node.started", "node.finished", "run.completed"], "{events:?}");
    let completed = events.last().cloned().unwrap_or_default();
    assert_eq!(completed["payload"], json!({"runId": run_id, "status": "finished"}));
    let mut last_seq = 0;
    let mut last_version = 0;
    for event in &events {
        let seq = event["seq"].as_u64().unwrap_or(0);
        let version = event["stateVersion"].as_u64().unwrap_or(0);
        assert!(seq > last_seq, "seq strictly increases");
        assert!(version >= last_version, "stateVersion never decreases");
        last_seq = seq;
        last_version = version;
    }
    let run = request(&mut ws, "g", "getRun", json!({"runId": run_id}));
    assert_eq!(run["payload"]["status"], "finished");
    assert_eq!(run["payload"]["workflowKey"], "hello");
    assert_eq!(run["payload"]["summary"], json!({"finished": 1}));
    assert_eq!(run["payload"]["runState"]["state"], "succeeded");
    let config: Value = serde_json::from_str(run["payload"]["configJson"].as_str().unwrap_or("{}")).unwrap_or_default();
    assert_eq!(config["auth"]["role"], "admin");
    assert_eq!(config["gatewayWorkflowKey"], "hello");
}

/// `approve` waits for a human: the run sits in waiting-approval with a pending approval that
/// listApprovals and hello show; approving it completes the run; deciding again is AlreadyDecided.
#[test]
fn approve_waits_then_completes() {
    let gateway = Gateway::start(|_| {});
    let (mut ws, _) = ws_connect(gateway.addr, ADMIN_TOKEN);
    let run_id = launch(&mut ws, "l1", json!({"workflow": "approve"}))["runId"].as_str().unwrap_or_default().to_string();
    let requested = wait_event(&mut ws, &run_id, "approval.requested");
    let node_id = requested["payload"]["nodeId"].as_str().unwrap_or_default().to_string();
    assert_eq!(requested["payload"]["iteration"], 0);
    let run = request(&mut ws, "g", "getRun", json!({"runId": run_id}));
    assert_eq!(run["payload"]["status"], "waiting-approval");
    assert_eq!(run["payload"]["runState"]["blocked"]["kind"], "approval");
    let approvals = request(&mut ws, "a", "listApprovals", json!({"runId": run_id}));
    assert_eq!(approvals["payload"].as_array().map(Vec::len), Some(1), "{approvals}");
    assert_eq!(approvals["payload"][0]["nodeId"], node_id.as_str());
    assert_eq!(approvals["payload"][0]["approvalMode"], "gate");
    // A second socket sees the pending approval and the waiting run in its hello snapshot.
    let (_other, hello) = ws_connect(gateway.addr, ADMIN_TOKEN);
    assert!(hello["payload"]["snapshot"]["approvals"].as_array().is_some_and(|a| a.iter().any(|x| x["runId"] == run_id.as_str())));
    assert!(hello["payload"]["snapshot"]["runs"].as_array().is_some_and(|r| r.iter().any(|x| x["runId"] == run_id.as_str())));
    let decided = request(&mut ws, "d", "submitApproval", json!({"runId": run_id, "nodeId": node_id, "approved": true, "note": "ship"}));
    assert_eq!(decided["payload"], json!({"runId": run_id, "nodeId": node_id, "iteration": 0, "approved": true}));
    let events = events_until_completed(&mut ws, &run_id);
    assert!(events.iter().any(|e| e["event"] == "approval.decided" && e["payload"]["approved"] == true));
    assert_eq!(events.last().map(|e| e["payload"]["status"].clone()), Some(json!("finished")));
    let again = request(&mut ws, "d2", "submitApproval", json!({"runId": run_id, "nodeId": node_id, "approved": false}));
    assert_eq!(again["error"]["code"], "AlreadyDecided");
    assert_eq!(again["error"]["status"], "approved");
    assert_eq!(again["error"]["nodeId"], node_id.as_str());
}

/// A denied approval fails the run (on_deny = fail).
#[test]
fn denied_approval_fails_the_run() {
    let gateway = Gateway::start(|_| {});
    let (mut ws, _) = ws_connect(gateway.addr, ADMIN_TOKEN);
    let run_id = launch(&mut ws, "l1", json!({"workflow": "approve"}))["runId"].as_str().unwrap_or_default().to_string();
    let requested = wait_event(&mut ws, &run_id, "approval.requested");
    let node_id = requested["payload"]["nodeId"].clone();
    let decided = request(&mut ws, "d", "submitApproval", json!({"runId": run_id, "nodeId": node_id, "decision": {"approved": false}}));
    assert_eq!(decided["payload"]["approved"], false);
    let events = events_until_completed(&mut ws, &run_id);
    let completed = events.last().cloned().unwrap_or_default();
    assert_eq!(completed["payload"]["status"], "failed");
    assert!(events.iter().any(|e| e["event"] == "node.failed"));
}

/// The signal workflow waits for its signal; submitSignal delivers it and the run completes.
#[test]
fn signal_resumes_the_run() {
    let gateway = Gateway::start(|_| {});
    let (mut ws, _) = ws_connect(gateway.addr, ADMIN_TOKEN);
    let run_id = launch(&mut ws, "l1", json!({"workflow": "signal"}))["runId"].as_str().unwrap_or_default().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let run = request(&mut ws, "g", "getRun", json!({"runId": run_id}));
        if run["payload"]["status"] == "waiting-event" {
            break;
        }
        assert!(Instant::now() < deadline, "run never waited for its signal: {run}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let delivered = request(&mut ws, "s", "submitSignal", json!({"runId": run_id, "signalName": "qa-passed", "data": {"ok": true}}));
    assert_eq!(delivered["payload"]["seq"], 0);
    assert_eq!(delivered["payload"]["signalName"], "qa-passed");
    assert_eq!(delivered["payload"]["correlationId"], Value::Null);
    let events = events_until_completed(&mut ws, &run_id);
    assert_eq!(events.last().map(|e| e["payload"]["status"].clone()), Some(json!("finished")));
    let missing = request(&mut ws, "s2", "submitSignal", json!({"runId": "no-such-run", "signalName": "x"}));
    assert_eq!(missing["error"]["code"], "NOT_FOUND");
    let blank = request(&mut ws, "s3", "submitSignal", json!({"runId": run_id, "signalName": "  "}));
    assert_eq!(blank["error"]["code"], "INVALID_INPUT");
}

/// Command tasks: stdin carries the run input; stderr lines are task.output events; a failing
/// task is retried and then fails the run; a slow one times out; the killed process group leaves
/// no process behind.
#[test]
fn command_tasks_retry_time_out_and_stream_stderr() {
    let workflows = temp_dir("wf");
    write_workflow(
        &workflows,
        "echo-input",
        r#"
[[nodes]]
kind = "task"
id = "echo"
run = ["sh", "-c", "read line; echo progress-line >&2; echo \"$line\" | sed 's/.*\"input\":{\"n\":\([0-9]*\)}.*/{\"n\":\1}/'"]
"#,
    );
    write_workflow(
        &workflows,
        "flaky",
        r#"
[[nodes]]
kind = "task"
id = "fail"
retries = 2
run = ["sh", "-c", "exit 3"]
"#,
    );
    write_workflow(
        &workflows,
        "stuck",
        r#"
[[nodes]]
kind = "task"
id = "sleepy"
timeout_ms = 300
run = ["sh", "-c", "sleep 30 & wait"]
"#,
    );
    let data = temp_dir("data");
    let config = smithers_gateway::config::GatewayConfig {
        auth: Some(token_auth(&[(ADMIN_TOKEN, grant("admin", &["*"]))])),
        ..Default::default()
    };
    let gateway = Gateway::start_full(config, 1, &workflows, &data);
    let (mut ws, _) = ws_connect(gateway.addr, ADMIN_TOKEN);

    let run_id = launch(&mut ws, "l1", json!({"workflow": "echo-input", "input": {"n": 7}}))["runId"].as_str().unwrap_or_default().to_string();
    let events = events_until_completed(&mut ws, &run_id);
    assert!(events.iter().any(|e| e["event"] == "task.output" && e["payload"]["output"] == "progress-line" && e["payload"]["stream"] == "stderr"), "{events:?}");
    assert_eq!(events.last().map(|e| e["payload"]["status"].clone()), Some(json!("finished")));

    let run_id = launch(&mut ws, "l2", json!({"workflow": "flaky"}))["runId"].as_str().unwrap_or_default().to_string();
    let events = events_until_completed(&mut ws, &run_id);
    let retries: Vec<u64> = events.iter().filter(|e| e["event"] == "node.retrying").filter_map(|e| e["payload"]["attempt"].as_u64()).collect();
    assert_eq!(retries, vec![2, 3], "two retries after the first attempt");
    assert_eq!(events.last().map(|e| e["payload"]["status"].clone()), Some(json!("failed")));

    let run_id = launch(&mut ws, "l3", json!({"workflow": "stuck"}))["runId"].as_str().unwrap_or_default().to_string();
    let events = events_until_completed(&mut ws, &run_id);
    let failed = events.iter().find(|e| e["event"] == "node.failed").cloned().unwrap_or_default();
    assert_eq!(failed["payload"]["error"]["message"], "timed out");
    // No `sleep 30` of this test survives the group kill.
    let survivors = std::process::Command::new("pgrep").args(["-f", "sleep 30 & wait"]).output().map(|o| o.stdout).unwrap_or_default();
    assert!(survivors.is_empty(), "orphan processes: {}", String::from_utf8_lossy(&survivors));
}

/// cancelRun on a waiting run cancels it (won), is idempotent, and refuses finished runs.
#[test]
fn cancel_waiting_run() {
    let gateway = Gateway::start(|_| {});
    let (mut ws, _) = ws_connect(gateway.addr, ADMIN_TOKEN);
    let run_id = launch(&mut ws, "l1", json!({"workflow": "approve"}))["runId"].as_str().unwrap_or_default().to_string();
    wait_event(&mut ws, &run_id, "approval.requested");
    let cancelled = request(&mut ws, "c", "cancelRun", json!({"runId": run_id}));
    assert_eq!(cancelled["payload"], json!({"runId": run_id, "won": true, "status": "cancelled", "terminalStatus": "cancelled", "repaired": false}));
    let completed = wait_event(&mut ws, &run_id, "run.completed");
    assert_eq!(completed["payload"]["status"], "cancelled");
    let again = request(&mut ws, "c2", "cancelRun", json!({"runId": run_id}));
    assert_eq!(again["payload"]["won"], false);
    assert_eq!(again["payload"]["status"], "already-terminal");
    let approvals = request(&mut ws, "a", "listApprovals", json!({"runId": run_id}));
    assert_eq!(approvals["payload"], json!([]));
    let hello = launch(&mut ws, "l2", json!({"workflow": "hello"}))["runId"].as_str().unwrap_or_default().to_string();
    events_until_completed(&mut ws, &hello);
    let finished = request(&mut ws, "c3", "cancelRun", json!({"runId": hello}));
    assert_eq!(finished["error"]["code"], "RUN_NOT_ACTIVE");
    let unknown = request(&mut ws, "c4", "cancelRun", json!({"runId": "nope"}));
    assert_eq!(unknown["error"]["code"], "RunNotFound");
}

/// Validation of the run methods (METHODS.md §3.2–3.11), with their codes.
#[test]
fn run_method_validation() {
    let gateway = Gateway::start(|_| {});
    let (mut ws, _) = ws_connect(gateway.addr, ADMIN_TOKEN);
    let cases = [
        ("launchRun", json!({}), "INVALID_REQUEST"),
        ("launchRun", json!({"workflow": "nope"}), "NOT_FOUND"),
        ("getRun", json!({}), "INVALID_REQUEST"),
        ("getRun", json!({"runId": "missing"}), "NOT_FOUND"),
        ("resumeRun", json!({}), "INVALID_REQUEST"),
        ("resumeRun", json!({"runId": "missing"}), "NOT_FOUND"),
        ("cancelRun", json!({}), "INVALID_REQUEST"),
        ("submitApproval", json!({"runId": "r"}), "INVALID_REQUEST"),
        ("submitApproval", json!({"runId": "missing", "nodeId": "n", "approved": true}), "NOT_FOUND"),
        ("submitSignal", json!({"runId": "r"}), "INVALID_REQUEST"),
        ("listRuns", json!({"filter": {"limit": 0}}), "INVALID_INPUT"),
        ("listRuns", json!({"filter": {"offset": -1}}), "INVALID_REQUEST"),
        ("listApprovals", json!({"limit": "x"}), "INVALID_INPUT"),
    ];
    for (index, (method, params, code)) in cases.iter().enumerate() {
        let response = request(&mut ws, &format!("v{index}"), method, params.clone());
        assert_eq!(response["error"]["code"], *code, "{method} {params}: {response}");
    }
    let deep = (0..40).fold(json!(1), |inner, _| json!({"a": inner}));
    let response = request(&mut ws, "deep", "launchRun", json!({"workflow": "hello", "input": {"x": deep}}));
    assert_eq!(response["error"]["code"], "INVALID_INPUT");
    let duplicate = launch(&mut ws, "dup1", json!({"workflow": "approve", "runId": "fixed-id"}));
    assert_eq!(duplicate["runId"], "fixed-id");
    let conflict = request(&mut ws, "dup2", "launchRun", json!({"workflow": "hello", "runId": "fixed-id"}));
    assert_eq!(conflict["error"]["code"], "CONFLICT");
    // A repeated idempotency key returns the first run (docs/DECISIONS.md).
    let first = launch(&mut ws, "i1", json!({"workflow": "hello", "options": {"idempotencyKey": "k-1"}}));
    let second = launch(&mut ws, "i2", json!({"workflow": "hello", "options": {"idempotencyKey": "k-1"}}));
    assert_eq!(first["runId"], second["runId"]);
    let workflows = request(&mut ws, "w", "listWorkflows", json!({}));
    let keys: Vec<&str> = workflows["payload"].as_array().map(|a| a.iter().filter_map(|w| w["key"].as_str()).collect()).unwrap_or_default();
    for key in ["approve", "fanout-demo", "hello", "signal", "slow"] {
        assert!(keys.contains(&key), "{key} missing from {keys:?}");
    }
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(keys, sorted, "sorted by key");
    let listed = request(&mut ws, "lr", "listRuns", json!({"filter": {"workflow": "hello", "limit": 1}}));
    assert_eq!(listed["payload"].as_array().map(Vec::len), Some(1));
    assert_eq!(listed["payload"][0]["workflowKey"], "hello");
    let legacy = request(&mut ws, "legacy", "runs.list", json!({"filter": {"workflow": "approve"}}));
    assert!(legacy["payload"].as_array().is_some_and(|runs| runs.iter().any(|r| r["runId"] == "fixed-id")));
}

/// A run waiting for approval survives a restart: after stopping and starting the gateway on the
/// same data directory it still waits, can be approved, and completes.
#[test]
fn waiting_run_survives_restart() {
    let data = temp_dir("restart");
    let config = smithers_gateway::config::GatewayConfig {
        auth: Some(token_auth(&[(ADMIN_TOKEN, grant("admin", &["*"]))])),
        ..Default::default()
    };
    let mut first = Gateway::start_full(config.clone(), 1, &example_workflows(), &data);
    let (mut ws, _) = ws_connect(first.addr, ADMIN_TOKEN);
    let run_id = launch(&mut ws, "l1", json!({"workflow": "approve"}))["runId"].as_str().unwrap_or_default().to_string();
    let requested = wait_event(&mut ws, &run_id, "approval.requested");
    let node_id = requested["payload"]["nodeId"].clone();
    drop(ws);
    first.stop();
    std::mem::forget(first); // its data directory is reused below
    let second = Gateway::start_full(config, 1, &example_workflows(), &data);
    let (mut ws, hello) = ws_connect(second.addr, ADMIN_TOKEN);
    assert!(hello["payload"]["snapshot"]["approvals"].as_array().is_some_and(|a| a.iter().any(|x| x["runId"] == run_id.as_str())));
    let run = request(&mut ws, "g", "getRun", json!({"runId": run_id}));
    assert_eq!(run["payload"]["status"], "waiting-approval");
    let decided = request(&mut ws, "d", "submitApproval", json!({"runId": run_id, "nodeId": node_id, "approved": true}));
    assert_eq!(decided["ok"], true, "{decided}");
    let events = events_until_completed(&mut ws, &run_id);
    assert_eq!(events.last().map(|e| e["payload"]["status"].clone()), Some(json!("finished")));
}
