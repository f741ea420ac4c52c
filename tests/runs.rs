//! Runs end to end (issue 3): launch, watch events, approvals, signals, cancellation, retries,
//! timeouts, and restart durability, against the real engine, storage and child processes.

use crate::support::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// `hello` runs to completion; events arrive in order with increasing socket seq and
/// stateVersion, and getRun shows the finished run with its node summary.
#[test]
fn hello_runs_to_completion() {
    let gateway = Gateway::start(|_| {});
    let (mut client, _) = Client::connect(gateway.addr);
    let launched = client.launch(
        "l1",
        json!({"workflow": "hello", "input": {"who": "world"}}),
    );
    let run_id = launched["runId"].as_str().unwrap_or_default().to_string();
    assert_eq!(launched["workflow"], "hello");
    assert_eq!(launched["system"], false);
    let events = client.events_until_completed(&run_id);
    let names: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(
        names,
        vec!["node.started", "node.finished", "run.completed"],
        "{events:?}"
    );
    let completed = events.last().cloned().unwrap_or_default();
    assert_eq!(
        completed["payload"],
        json!({"runId": run_id, "status": "finished"})
    );
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
    let run = client.request("g", "getRun", json!({"runId": run_id}));
    assert_eq!(run["payload"]["status"], "finished");
    assert_eq!(run["payload"]["workflowKey"], "hello");
    assert_eq!(run["payload"]["summary"], json!({"finished": 1}));
    assert_eq!(run["payload"]["runState"]["state"], "succeeded");
    let config: Value = serde_json::from_str(run["payload"]["configJson"].as_str().unwrap_or("{}"))
        .unwrap_or_default();
    assert_eq!(config["auth"]["role"], "admin");
    assert_eq!(config["gatewayWorkflowKey"], "hello");
    // /metrics reports the broadcasts and that each was serialized once.
    let metrics = http_once(gateway.addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").text();
    let value_of = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics"))
    };
    let published = value_of("smithers_gateway_events_published_total");
    assert_eq!(published, 3, "node.started, node.finished, run.completed");
    assert_eq!(
        value_of("smithers_gateway_event_serializations_total"),
        published
    );
    assert_eq!(value_of("smithers_gateway_workflows_loaded"), 6);
    // Per-worker series: one subscriber got the three broadcasts; nothing is left queued.
    let per_worker = |name: &str| -> Vec<u64> {
        metrics
            .lines()
            .filter_map(|line| line.strip_prefix(&format!("{name}{{worker=\"")))
            .filter_map(|rest| rest.split_once("\"} "))
            .filter_map(|(_, value)| value.trim().parse().ok())
            .collect()
    };
    let deliveries = per_worker("smithers_gateway_deliveries_total");
    assert_eq!(deliveries.len(), 1, "one series per worker: {metrics}");
    assert_eq!(deliveries.iter().sum::<u64>(), 3);
    assert_eq!(
        per_worker("smithers_gateway_outbound_bytes_queued"),
        vec![0]
    );
    assert!(
        per_worker("smithers_gateway_outbound_bytes_written_total")
            .iter()
            .sum::<u64>()
            > 0
    );
    let storage_calls = value_of("smithers_gateway_storage_command_seconds_count");
    assert!(
        storage_calls >= 2,
        "launch and getRun at least: {storage_calls}"
    );
    assert_eq!(
        metrics
            .lines()
            .find_map(|line| line
                .strip_prefix("smithers_gateway_storage_command_seconds_bucket{le=\"+Inf\"} "))
            .and_then(|value| value.parse::<u64>().ok()),
        Some(storage_calls),
        "the +Inf bucket counts every command"
    );
    assert_eq!(
        value_of("smithers_gateway_stream_backpressure_cuts_total"),
        0
    );
}

/// `approve` waits for a human: the run sits in waiting-approval with a pending approval that
/// listApprovals and hello show; approving it completes the run; deciding again is AlreadyDecided.
#[test]
fn approve_waits_then_completes() {
    let gateway = Gateway::start(|_| {});
    let (mut client, _) = Client::connect(gateway.addr);
    let run_id = client.launch("l1", json!({"workflow": "approve"}))["runId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let requested = client.wait_event(&run_id, "approval.requested");
    let node_id = requested["payload"]["nodeId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(requested["payload"]["iteration"], 0);
    let run = client.request("g", "getRun", json!({"runId": run_id}));
    assert_eq!(run["payload"]["status"], "waiting-approval");
    assert_eq!(run["payload"]["runState"]["blocked"]["kind"], "approval");
    let approvals = client.request("a", "listApprovals", json!({"runId": run_id}));
    assert_eq!(
        approvals["payload"].as_array().map(Vec::len),
        Some(1),
        "{approvals}"
    );
    assert_eq!(approvals["payload"][0]["nodeId"], node_id.as_str());
    assert_eq!(approvals["payload"][0]["approvalMode"], "gate");
    // A second socket sees the pending approval and the waiting run in its hello snapshot.
    let (_other, hello) = Client::connect(gateway.addr);
    assert!(hello["payload"]["snapshot"]["approvals"]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x["runId"] == run_id.as_str())));
    assert!(hello["payload"]["snapshot"]["runs"]
        .as_array()
        .is_some_and(|r| r.iter().any(|x| x["runId"] == run_id.as_str())));
    let decided = client.request(
        "d",
        "submitApproval",
        json!({"runId": run_id, "nodeId": node_id, "approved": true, "note": "ship"}),
    );
    assert_eq!(
        decided["payload"],
        json!({"runId": run_id, "nodeId": node_id, "iteration": 0, "approved": true})
    );
    let events = client.events_until_completed(&run_id);
    assert!(events
        .iter()
        .any(|e| e["event"] == "approval.decided" && e["payload"]["approved"] == true));
    assert_eq!(
        events.last().map(|e| e["payload"]["status"].clone()),
        Some(json!("finished"))
    );
    let again = client.request(
        "d2",
        "submitApproval",
        json!({"runId": run_id, "nodeId": node_id, "approved": false}),
    );
    assert_eq!(again["error"]["code"], "AlreadyDecided");
    assert_eq!(again["error"]["status"], "approved");
    assert_eq!(again["error"]["nodeId"], node_id.as_str());
}

/// A denied approval fails the run (on_deny = fail).
#[test]
fn denied_approval_fails_the_run() {
    let gateway = Gateway::start(|_| {});
    let (mut client, _) = Client::connect(gateway.addr);
    let run_id = client.launch("l1", json!({"workflow": "approve"}))["runId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let requested = client.wait_event(&run_id, "approval.requested");
    let node_id = requested["payload"]["nodeId"].clone();
    let decided = client.request(
        "d",
        "submitApproval",
        json!({"runId": run_id, "nodeId": node_id, "decision": {"approved": false}}),
    );
    assert_eq!(decided["payload"]["approved"], false);
    let events = client.events_until_completed(&run_id);
    let completed = events.last().cloned().unwrap_or_default();
    assert_eq!(completed["payload"]["status"], "failed");
    assert!(events.iter().any(|e| e["event"] == "node.failed"));
}

/// The signal workflow waits for its signal; submitSignal delivers it and the run completes.
#[test]
fn signal_resumes_the_run() {
    let gateway = Gateway::start(|_| {});
    let (mut client, _) = Client::connect(gateway.addr);
    let run_id = client.launch("l1", json!({"workflow": "signal"}))["runId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let run = client.request("g", "getRun", json!({"runId": run_id}));
        if run["payload"]["status"] == "waiting-event" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "run never waited for its signal: {run}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let delivered = client.request(
        "s",
        "submitSignal",
        json!({"runId": run_id, "signalName": "qa-passed", "data": {"ok": true}}),
    );
    assert_eq!(delivered["payload"]["seq"], 0);
    assert_eq!(delivered["payload"]["signalName"], "qa-passed");
    assert_eq!(delivered["payload"]["correlationId"], Value::Null);
    let events = client.events_until_completed(&run_id);
    assert_eq!(
        events.last().map(|e| e["payload"]["status"].clone()),
        Some(json!("finished"))
    );
    let missing = client.request(
        "s2",
        "submitSignal",
        json!({"runId": "no-such-run", "signalName": "x"}),
    );
    assert_eq!(missing["error"]["code"], "NOT_FOUND");
    let blank = client.request(
        "s3",
        "submitSignal",
        json!({"runId": run_id, "signalName": "  "}),
    );
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
run = ['python3', '-c', 'import json,sys; d=json.load(sys.stdin); sys.stderr.write("progress-line\n"); print(json.dumps({"n": d["input"]["n"], "node": d["nodeId"], "run": d["runId"]}))']
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
    let (mut client, _) = Client::connect(gateway.addr);

    let run_id = client.launch("l1", json!({"workflow": "echo-input", "input": {"n": 7}}))["runId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let events = client.events_until_completed(&run_id);
    assert!(
        events.iter().any(|e| e["event"] == "task.output"
            && e["payload"]["output"] == "progress-line"
            && e["payload"]["stream"] == "stderr"),
        "{events:?}"
    );
    assert_eq!(
        events.last().map(|e| e["payload"]["status"].clone()),
        Some(json!("finished"))
    );

    let run_id = client.launch("l2", json!({"workflow": "flaky"}))["runId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let events = client.events_until_completed(&run_id);
    let retries: Vec<u64> = events
        .iter()
        .filter(|e| e["event"] == "node.retrying")
        .filter_map(|e| e["payload"]["attempt"].as_u64())
        .collect();
    assert_eq!(retries, vec![2, 3], "two retries after the first attempt");
    assert_eq!(
        events.last().map(|e| e["payload"]["status"].clone()),
        Some(json!("failed"))
    );

    let run_id = client.launch("l3", json!({"workflow": "stuck"}))["runId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let events = client.events_until_completed(&run_id);
    let failed = events
        .iter()
        .find(|e| e["event"] == "node.failed")
        .cloned()
        .unwrap_or_default();
    assert_eq!(failed["payload"]["error"]["message"], "timed out");
    // No `sleep 30` of this test survives the group kill.
    let survivors = std::process::Command::new("pgrep")
        .args(["-f", "sleep 30 & wait"])
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    assert!(
        survivors.is_empty(),
        "orphan processes: {}",
        String::from_utf8_lossy(&survivors)
    );
}

/// cancelRun on a waiting run cancels it (won), is idempotent, and refuses finished runs.
#[test]
fn cancel_waiting_run() {
    let gateway = Gateway::start(|_| {});
    let (mut client, _) = Client::connect(gateway.addr);
    let run_id = client.launch("l1", json!({"workflow": "approve"}))["runId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    client.wait_event(&run_id, "approval.requested");
    let cancelled = client.request("c", "cancelRun", json!({"runId": run_id}));
    assert_eq!(
        cancelled["payload"],
        json!({"runId": run_id, "won": true, "status": "cancelled", "terminalStatus": "cancelled", "repaired": false})
    );
    let completed = client.wait_event(&run_id, "run.completed");
    assert_eq!(completed["payload"]["status"], "cancelled");
    let again = client.request("c2", "cancelRun", json!({"runId": run_id}));
    assert_eq!(again["payload"]["won"], false);
    assert_eq!(again["payload"]["status"], "already-terminal");
    let approvals = client.request("a", "listApprovals", json!({"runId": run_id}));
    assert_eq!(approvals["payload"], json!([]));
    let hello = client.launch("l2", json!({"workflow": "hello"}))["runId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    client.events_until_completed(&hello);
    let finished = client.request("c3", "cancelRun", json!({"runId": hello}));
    assert_eq!(finished["error"]["code"], "RUN_NOT_ACTIVE");
    let unknown = client.request("c4", "cancelRun", json!({"runId": "nope"}));
    assert_eq!(unknown["error"]["code"], "RunNotFound");
}

/// Validation of the run methods (METHODS.md §3.2–3.11), with their codes.
#[test]
fn run_method_validation() {
    let gateway = Gateway::start(|_| {});
    let (mut client, _) = Client::connect(gateway.addr);
    let cases = [
        ("launchRun", json!({}), "INVALID_REQUEST"),
        ("launchRun", json!({"workflow": "nope"}), "NOT_FOUND"),
        ("getRun", json!({}), "INVALID_REQUEST"),
        ("getRun", json!({"runId": "missing"}), "NOT_FOUND"),
        ("resumeRun", json!({}), "INVALID_REQUEST"),
        ("resumeRun", json!({"runId": "missing"}), "NOT_FOUND"),
        ("cancelRun", json!({}), "INVALID_REQUEST"),
        ("submitApproval", json!({"runId": "r"}), "INVALID_REQUEST"),
        (
            "submitApproval",
            json!({"runId": "missing", "nodeId": "n", "approved": true}),
            "NOT_FOUND",
        ),
        ("submitSignal", json!({"runId": "r"}), "INVALID_REQUEST"),
        ("listRuns", json!({"filter": {"limit": 0}}), "INVALID_INPUT"),
        (
            "listRuns",
            json!({"filter": {"offset": -1}}),
            "INVALID_REQUEST",
        ),
        ("listApprovals", json!({"limit": "x"}), "INVALID_INPUT"),
    ];
    for (index, (method, params, code)) in cases.iter().enumerate() {
        let response = client.request(&format!("v{index}"), method, params.clone());
        assert_eq!(
            response["error"]["code"], *code,
            "{method} {params}: {response}"
        );
    }
    // Deep input trips the frame's own depth bound first (PROTOCOL.md §5.3), answered as "invalid".
    let deep = (0..40).fold(json!(1), |inner, _| json!({"a": inner}));
    let response = client.request(
        "invalid",
        "launchRun",
        json!({"workflow": "hello", "input": {"x": deep}}),
    );
    assert_eq!(response["error"]["code"], "INVALID_INPUT");
    assert!(
        response["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("depth"),
        "{response}"
    );
    let duplicate = client.launch("dup1", json!({"workflow": "approve", "runId": "fixed-id"}));
    assert_eq!(duplicate["runId"], "fixed-id");
    let conflict = client.request(
        "dup2",
        "launchRun",
        json!({"workflow": "hello", "runId": "fixed-id"}),
    );
    assert_eq!(conflict["error"]["code"], "CONFLICT");
    // A repeated idempotency key returns the first run (docs/DECISIONS.md).
    let first = client.launch(
        "i1",
        json!({"workflow": "hello", "options": {"idempotencyKey": "k-1"}}),
    );
    let second = client.launch(
        "i2",
        json!({"workflow": "hello", "options": {"idempotencyKey": "k-1"}}),
    );
    assert_eq!(first["runId"], second["runId"]);
    let workflows = client.request("w", "listWorkflows", json!({}));
    let keys: Vec<&str> = workflows["payload"]
        .as_array()
        .map(|a| a.iter().filter_map(|w| w["key"].as_str()).collect())
        .unwrap_or_default();
    for key in ["approve", "fanout-demo", "hello", "signal", "slow"] {
        assert!(keys.contains(&key), "{key} missing from {keys:?}");
    }
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(keys, sorted, "sorted by key");
    let listed = client.request(
        "lr",
        "listRuns",
        json!({"filter": {"workflow": "hello", "limit": 1}}),
    );
    assert_eq!(listed["payload"].as_array().map(Vec::len), Some(1));
    assert_eq!(listed["payload"][0]["workflowKey"], "hello");
    let legacy = client.request(
        "legacy",
        "runs.list",
        json!({"filter": {"workflow": "approve"}}),
    );
    assert!(legacy["payload"]
        .as_array()
        .is_some_and(|runs| runs.iter().any(|r| r["runId"] == "fixed-id")));
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
    let (mut client, _) = Client::connect(first.addr);
    let run_id = client.launch("l1", json!({"workflow": "approve"}))["runId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let requested = client.wait_event(&run_id, "approval.requested");
    let node_id = requested["payload"]["nodeId"].clone();
    drop(client);
    first.stop();
    std::mem::forget(first); // its data directory is reused below
    let second = Gateway::start_full(config, 1, &example_workflows(), &data);
    let (mut client, hello) = Client::connect(second.addr);
    assert!(hello["payload"]["snapshot"]["approvals"]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x["runId"] == run_id.as_str())));
    let run = client.request("g", "getRun", json!({"runId": run_id}));
    assert_eq!(run["payload"]["status"], "waiting-approval");
    let decided = client.request(
        "d",
        "submitApproval",
        json!({"runId": run_id, "nodeId": node_id, "approved": true}),
    );
    assert_eq!(decided["ok"], true, "{decided}");
    let events = client.events_until_completed(&run_id);
    assert_eq!(
        events.last().map(|e| e["payload"]["status"].clone()),
        Some(json!("finished"))
    );
}
