//! Read-side inspection end to end (METHODS.md §3.10, 3.12, 3.13, 3.22, 3.23, §5.2–5.5):
//! `listRunDescendants`/`runs.descendants`, `listRunTokenUsage`, `getSchemaSignature`,
//! `getRunDiff`, `whatHappened`, `runs.diff`, `frames.*`, `attempts.*` and `listNodeStates`, over
//! WebSocket and HTTP, with exact codes, messages and statuses, and the `run:read` scope.
//!
//! Runs, frames, attempts (retries) and loops come from real runs of the example workflows and of
//! workflows written here. Two things no product path creates are inserted into the SQLite file
//! before the gateway starts: runs with `parent_run_id` set (our engine has no subflows) and
//! `TokenUsageReported` events (our engine has no LLM agents).

use crate::support::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;

fn admin_config() -> smithers_gateway::config::GatewayConfig {
    smithers_gateway::config::GatewayConfig {
        auth: Some(token_auth(&[(ADMIN_TOKEN, grant("admin", &["*"]))])),
        ..Default::default()
    }
}

/// The payload of a successful `POST /v1/rpc/<method>`.
fn http_ok(addr: SocketAddr, method: &str, params: Value) -> Value {
    let response = post_json(
        addr,
        &format!("/v1/rpc/{method}"),
        Some(ADMIN_TOKEN),
        &params.to_string(),
    );
    let frame = response.json();
    assert_eq!(response.status, 200, "{method} {params}: {frame}");
    frame["payload"].clone()
}

/// Asserts an error over HTTP (status, code, message) and the same code and message over `ws`.
fn assert_error(
    addr: SocketAddr,
    client: &mut Client,
    method: &str,
    params: Value,
    expected: (u16, &str, &str),
) {
    let (status, frame) = rpc_post(addr, ADMIN_TOKEN, method, params.clone());
    assert_eq!(
        (
            status,
            frame["error"]["code"].as_str(),
            frame["error"]["message"].as_str()
        ),
        (expected.0, Some(expected.1), Some(expected.2)),
        "HTTP {method} {params}: {frame}"
    );
    let response = client.request("e", method, params.clone());
    assert_eq!(response["ok"], false, "{response}");
    assert_eq!(
        (
            response["error"]["code"].as_str(),
            response["error"]["message"].as_str()
        ),
        (Some(expected.1), Some(expected.2)),
        "WS {method} {params}: {response}"
    );
}

fn ok(response: &Value) -> Value {
    assert_eq!(response["ok"], true, "{response}");
    response["payload"].clone()
}

fn launch_and_finish(client: &mut Client, workflow: &str, run_id: &str, input: Value) {
    client.launch(
        run_id,
        json!({"workflow": workflow, "runId": run_id, "input": input}),
    );
    client.events_until_completed(run_id);
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Goal: frames.list/get and listNodeStates of a finished `hello` run: every column, newest
/// first, the limit and cursor, the latest frame by default, and every validation error.
#[test]
fn frames_and_node_states() {
    let gateway = Gateway::start(|_| {});
    let addr = gateway.addr;
    let (mut client, _) = Client::connect(addr);
    launch_and_finish(&mut client, "hello", "insp-frames", json!({}));

    let frames = ok(&client.request("f1", "frames.list", json!({"runId": "insp-frames"})));
    let rows = frames.as_array().cloned().unwrap_or_default();
    assert!(rows.len() >= 2, "{frames}");
    let numbers: Vec<i64> = rows.iter().filter_map(|r| r["frameNo"].as_i64()).collect();
    let latest = numbers.first().copied().unwrap_or_default();
    assert_eq!(numbers, (1..=latest).rev().collect::<Vec<_>>());
    let newest = &rows[0];
    let mut keys: Vec<&str> = newest
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    keys.sort_unstable();
    assert_eq!(
        keys,
        vec![
            "createdAtMs",
            "encoding",
            "frameNo",
            "mountedTaskIdsJson",
            "note",
            "runId",
            "taskIndexJson",
            "xmlHash",
            "xmlJson"
        ]
    );
    assert_eq!(newest["runId"], "insp-frames");
    assert_eq!(newest["encoding"], "full");
    assert_eq!(newest["note"], Value::Null);
    assert_eq!(newest["mountedTaskIdsJson"], r#"["greet::0"]"#);
    let tree: Value =
        serde_json::from_str(newest["xmlJson"].as_str().unwrap_or("")).unwrap_or_default();
    assert_eq!(tree["tag"], "smithers:workflow", "{tree}");
    let index: Value =
        serde_json::from_str(newest["taskIndexJson"].as_str().unwrap_or("")).unwrap_or_default();
    assert_eq!(index[0]["nodeId"], "greet");
    assert_eq!(index[0]["state"], "finished");
    assert_eq!(newest["xmlHash"].as_str().map(str::len), Some(64));

    // limit and afterFrameNo (numeric strings read as numbers), over HTTP.
    let one = http_ok(
        addr,
        "frames.list",
        json!({"runId": "insp-frames", "limit": "1"}),
    );
    assert_eq!(one, json!([newest.clone()]));
    let after = http_ok(
        addr,
        "frames.list",
        json!({"runId": "insp-frames", "afterFrameNo": latest - 1, "limit": 50}),
    );
    assert_eq!(after, json!([newest.clone()]));

    // frames.get: the latest by default, a given frame, a missing one.
    assert_eq!(
        &ok(&client.request("g1", "frames.get", json!({"runId": "insp-frames"}))),
        newest
    );
    let first = http_ok(
        addr,
        "frames.get",
        json!({"runId": "insp-frames", "frameNo": 1}),
    );
    assert_eq!(first, rows[rows.len() - 1]);
    assert_error(
        addr,
        &mut client,
        "frames.get",
        json!({"runId": "insp-frames", "frameNo": latest + 1}),
        (404, "NOT_FOUND", "Frame not found"),
    );

    for method in ["frames.list", "frames.get", "listNodeStates"] {
        assert_error(
            addr,
            &mut client,
            method,
            json!({}),
            (400, "INVALID_REQUEST", "runId is required"),
        );
        assert_error(
            addr,
            &mut client,
            method,
            json!({"runId": "nope"}),
            (404, "NOT_FOUND", "Run not found: nope"),
        );
    }
    let cases = [
        (
            "frames.list",
            json!({"runId": "insp-frames", "limit": 0}),
            "limit must be a finite number greater than 0.",
        ),
        (
            "frames.list",
            json!({"runId": "insp-frames", "limit": 2.5}),
            "limit must be an integer greater than 0.",
        ),
        (
            "frames.list",
            json!({"runId": "insp-frames", "afterFrameNo": "x"}),
            "afterFrameNo must be a finite number greater than 0.",
        ),
        (
            "frames.get",
            json!({"runId": "insp-frames", "frameNo": 0}),
            "frameNo must be a finite number greater than 0.",
        ),
        (
            "frames.get",
            json!({"runId": "insp-frames", "frameNo": -3}),
            "frameNo must be a finite number greater than 0.",
        ),
    ];
    for (method, params, message) in cases {
        assert_error(
            addr,
            &mut client,
            method,
            params,
            (400, "INVALID_INPUT", message),
        );
    }
    // The run is looked up before the numbers are checked, as in the reference.
    assert_error(
        addr,
        &mut client,
        "frames.list",
        json!({"runId": "nope", "limit": 0}),
        (404, "NOT_FOUND", "Run not found: nope"),
    );

    let states = ok(&client.request("n1", "listNodeStates", json!({"runId": "insp-frames"})));
    let state = &states[0];
    assert_eq!(states.as_array().map(Vec::len), Some(1), "{states}");
    let started = state["startedAtMs"].as_i64().unwrap_or_default();
    let finished = state["finishedAtMs"].as_i64().unwrap_or_default();
    assert!(started > 0 && finished >= started, "{state}");
    assert_eq!(
        state,
        &json!({"nodeId": "greet", "iteration": 0, "state": "finished", "lastAttempt": 1,
                "updatedAtMs": state["updatedAtMs"], "label": null, "startedAtMs": started,
                "finishedAtMs": finished})
    );
    assert!(state["updatedAtMs"].as_i64().is_some());
}

fn retry_workflow(marker: &Path) -> String {
    format!(
        r#"
[[nodes]]
kind = "task"
id = "once"
retries = 1
env = {{ MARKER = "{}" }}
run = ["sh", "-c", "if [ -e \"$MARKER\" ]; then echo '{{\"second\":true}}'; else touch \"$MARKER\"; exit 1; fi"]

[[nodes]]
kind = "task"
id = "after"
output = {{ done = true }}
"#,
        marker.display()
    )
}

/// Goal: attempts.list/get over a task that failed once and was retried: whole-run order,
/// per-node order (newest first), the attempt row's columns, and the errors.
#[test]
fn attempts_of_a_retried_task() {
    let scratch = temp_dir("inspect-marker");
    let workflows = temp_dir("inspect-workflows");
    write_workflow(
        &workflows,
        "flaky",
        &retry_workflow(&scratch.join("failed-once")),
    );
    let gateway = Gateway::start_full(admin_config(), 1, &workflows, &temp_dir("inspect-data"));
    let addr = gateway.addr;
    let (mut client, _) = Client::connect(addr);
    launch_and_finish(&mut client, "flaky", "insp-flaky", json!({}));

    let all = ok(&client.request("a1", "attempts.list", json!({"runId": "insp-flaky"})));
    let order: Vec<(String, i64)> = all
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    (
                        r["nodeId"].as_str().unwrap_or("").to_string(),
                        r["attempt"].as_i64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        order,
        vec![
            ("once".to_string(), 1),
            ("once".to_string(), 2),
            ("after".to_string(), 1)
        ]
    );
    let node = http_ok(
        addr,
        "attempts.list",
        json!({"runId": "insp-flaky", "nodeId": "once"}),
    );
    let attempts: Vec<i64> = node
        .as_array()
        .map(|r| r.iter().filter_map(|a| a["attempt"].as_i64()).collect())
        .unwrap_or_default();
    assert_eq!(attempts, vec![2, 1]);
    let failed = &node[1];
    let started = failed["startedAtMs"].as_i64().unwrap_or_default();
    let finished = failed["finishedAtMs"].as_i64().unwrap_or_default();
    assert!(started > 0 && finished >= started, "{failed}");
    assert_eq!(
        failed,
        &json!({"runId": "insp-flaky", "nodeId": "once", "iteration": 0, "attempt": 1,
                "state": "failed", "startedAtMs": started, "finishedAtMs": finished,
                "heartbeatAtMs": failed["heartbeatAtMs"], "heartbeatDataJson": failed["heartbeatDataJson"],
                "errorJson": r#"{"message":"exited with code 1"}"#, "jjPointer": null,
                "cached": false, "metaJson": failed["metaJson"], "responseText": null,
                "jjCwd": null})
    );
    assert_eq!(node[0]["state"], "finished");
    assert_eq!(
        ok(&client.request(
            "a2",
            "attempts.list",
            json!({"runId": "insp-flaky", "nodeId": "once", "iteration": 1})
        )),
        json!([])
    );

    let got = ok(&client.request(
        "a3",
        "attempts.get",
        json!({"runId": "insp-flaky", "nodeId": "once", "iteration": 0, "attempt": 1}),
    ));
    assert_eq!(&got, failed);
    assert_error(
        addr,
        &mut client,
        "attempts.get",
        json!({"runId": "insp-flaky", "nodeId": "once", "iteration": 0, "attempt": 3}),
        (404, "NOT_FOUND", "Attempt not found"),
    );
    let required = "runId, nodeId, iteration, and attempt are required";
    for params in [
        json!({"nodeId": "once", "iteration": 0, "attempt": 1}),
        json!({"runId": "insp-flaky", "iteration": 0, "attempt": 1}),
        json!({"runId": "insp-flaky", "nodeId": "once", "attempt": 1}),
        json!({"runId": "insp-flaky", "nodeId": "once", "iteration": "0", "attempt": 1}),
        json!({"runId": "insp-flaky", "nodeId": "once", "iteration": 0}),
    ] {
        assert_error(
            addr,
            &mut client,
            "attempts.get",
            params,
            (400, "INVALID_REQUEST", required),
        );
    }
    assert_error(
        addr,
        &mut client,
        "attempts.get",
        json!({"runId": "nope", "nodeId": "once", "iteration": 0, "attempt": 1}),
        (404, "NOT_FOUND", "Run not found: nope"),
    );
    assert_error(
        addr,
        &mut client,
        "attempts.list",
        json!({}),
        (400, "INVALID_REQUEST", "runId is required"),
    );
    assert_error(
        addr,
        &mut client,
        "attempts.list",
        json!({"runId": "nope"}),
        (404, "NOT_FOUND", "Run not found: nope"),
    );
    let _ = std::fs::remove_dir_all(&scratch);
    let _ = std::fs::remove_dir_all(&workflows);
}

/// Inserts finished runs (and optional token-usage events) into a stopped gateway's database.
fn seed(data: &Path) {
    let db = rusqlite::Connection::open(data.join("smithers.db")).unwrap_or_else(|e| panic!("{e}"));
    let run = |id: &str, parent: Option<&str>, created: i64| {
        db.execute(
            "INSERT INTO _smithers_runs (run_id, parent_run_id, workflow_name, status, \
                 created_at_ms, input_json) VALUES (?1, ?2, 'hello', 'finished', ?3, '{}')",
            rusqlite::params![id, parent, created],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    };
    run("root", None, 1_000);
    run("child-b", Some("root"), 1_002);
    run("child-a", Some("root"), 1_001);
    run("grand", Some("child-a"), 1_003);
    run("other", None, 1_004);
    // A cycle (which no product path could make) must not loop.
    run("loop-a", Some("loop-b"), 1_005);
    run("loop-b", Some("loop-a"), 1_006);
    let event = |seq: i64, timestamp: i64, kind: &str, payload: &str| {
        db.execute(
            "INSERT INTO _smithers_events (run_id, seq, timestamp_ms, type, payload_json) \
             VALUES ('root', ?1, ?2, ?3, ?4)",
            rusqlite::params![seq, timestamp, kind, payload],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    };
    event(
        0,
        5_000,
        "TokenUsageReported",
        r#"{"type":"TokenUsageReported","runId":"root","nodeId":"n","iteration":1,"attempt":2,"model":"m1","agent":"claude","inputTokens":200,"outputTokens":100,"cacheReadTokens":7,"cacheWriteTokens":8,"reasoningTokens":9,"timestampMs":4999}"#,
    );
    event(1, 5_001, "NodeStarted", r#"{"nodeId":"n"}"#);
    event(2, 5_002, "TokenUsageReported", r#"{"inputTokens":50}"#);
}

/// Goal: lineage, token usage and the schema signature over one database: descendants breadth
/// first with the limit, the cycle cut and the legacy name; token-usage rows and their defaults;
/// `getSchemaSignature` stable across calls and across a restart; a run without nodes has no
/// snapshot for `runs.diff`.
#[test]
fn lineage_token_usage_and_schema_across_a_restart() {
    let data = temp_dir("inspect-seeded");
    let config = admin_config();
    let first = Gateway::start_full(config.clone(), 1, &example_workflows(), &data);
    let (mut client, _) = Client::connect(first.addr);
    let signature = ok(&client.request("s1", "getSchemaSignature", json!({})));
    assert_eq!(
        ok(&client.request("s2", "getSchemaSignature", json!({}))),
        signature
    );
    assert_eq!(
        signature["schemaVersion"],
        format!(
            "{:04}",
            smithers_gateway::storage::migrations::latest_version()
        )
    );
    assert_eq!(signature["signature"].as_str().map(str::len), Some(64));
    for table in [
        "_smithers_runs",
        "_smithers_frames",
        "_smithers_events",
        "_smithers_schema_migrations",
    ] {
        assert_eq!(
            signature["components"][table].as_str().map(str::len),
            Some(64),
            "{table}: {signature}"
        );
    }
    // The empty case through a real run: hello reports no token usage.
    launch_and_finish(&mut client, "hello", "insp-plain", json!({}));
    assert_eq!(
        ok(&client.request("t0", "listRunTokenUsage", json!({"runId": "insp-plain"}))),
        json!({"runId": "insp-plain", "events": []})
    );
    drop(client);
    // Data dirs with content are kept by `start_full`'s caller; only the server stops here.
    let mut first = first;
    first.stop();
    seed(&data);

    let second = Gateway::start_full(config, 1, &example_workflows(), &data);
    let addr = second.addr;
    let (mut client, _) = Client::connect(addr);
    assert_eq!(http_ok(addr, "getSchemaSignature", json!({})), signature);

    let lineage = ok(&client.request("d1", "listRunDescendants", json!({"runId": "root"})));
    assert_eq!(
        lineage,
        json!([{"runId": "root", "parentRunId": null, "depth": 0},
               {"runId": "child-a", "parentRunId": "root", "depth": 1},
               {"runId": "child-b", "parentRunId": "root", "depth": 1},
               {"runId": "grand", "parentRunId": "child-a", "depth": 2}])
    );
    assert_eq!(
        http_ok(addr, "runs.descendants", json!({"runId": "root"})),
        lineage
    );
    assert_eq!(
        http_ok(
            addr,
            "listRunDescendants",
            json!({"runId": "root", "limit": 2})
        ),
        json!([{"runId": "root", "parentRunId": null, "depth": 0},
               {"runId": "child-a", "parentRunId": "root", "depth": 1}])
    );
    assert_eq!(
        ok(&client.request(
            "d2",
            "runs.descendants",
            json!({"runId": "loop-a", "limit": "5"})
        )),
        json!([{"runId": "loop-a", "parentRunId": null, "depth": 0},
               {"runId": "loop-b", "parentRunId": "loop-a", "depth": 1}])
    );
    assert_eq!(
        ok(&client.request("d3", "listRunDescendants", json!({"runId": "grand"}))),
        json!([{"runId": "grand", "parentRunId": null, "depth": 0}])
    );
    for method in ["listRunDescendants", "runs.descendants"] {
        assert_error(
            addr,
            &mut client,
            method,
            json!({}),
            (400, "INVALID_REQUEST", "runId is required"),
        );
        assert_error(
            addr,
            &mut client,
            method,
            json!({"runId": "nope"}),
            (404, "NOT_FOUND", "Run not found: nope"),
        );
        assert_error(
            addr,
            &mut client,
            method,
            json!({"runId": "root", "limit": 0}),
            (400, "INVALID_INPUT", "limit must be a positive integer"),
        );
    }

    let usage = ok(&client.request("t1", "listRunTokenUsage", json!({"runId": "root"})));
    assert_eq!(
        usage,
        json!({"runId": "root", "events": [
            {"nodeId": "n", "iteration": 1, "attempt": 2, "model": "m1", "agent": "claude",
             "inputTokens": 200, "outputTokens": 100, "cacheReadTokens": 7, "cacheWriteTokens": 8,
             "reasoningTokens": 9, "timestampMs": 4999},
            {"nodeId": "unknown", "iteration": 0, "attempt": 0, "model": "unknown",
             "agent": "unknown", "inputTokens": 50, "outputTokens": 0, "cacheReadTokens": 0,
             "cacheWriteTokens": 0, "reasoningTokens": 0, "timestampMs": 5002}]})
    );
    assert_error(
        addr,
        &mut client,
        "listRunTokenUsage",
        json!({}),
        (400, "INVALID_REQUEST", "runId is required"),
    );
    assert_error(
        addr,
        &mut client,
        "listRunTokenUsage",
        json!({"runId": "nope"}),
        (404, "RunNotFound", "Run not found: nope"),
    );

    // `root` has no node rows: no snapshot to compare.
    assert_error(
        addr,
        &mut client,
        "runs.diff",
        json!({"leftRunId": "root", "rightRunId": "insp-plain"}),
        (404, "NOT_FOUND", "Snapshots not found for both runs"),
    );
    drop(client);
    drop(second);
    let _ = std::fs::remove_dir_all(&data);
}

/// Goal: whatHappened's validation chain in order, the fact recaps for a run and a node
/// (finished and failed), the default iteration, and the cache of terminal targets (a hit says
/// `cached: true` and repeats the stored payload; a waiting target is never cached).
#[test]
fn what_happened_recaps_and_cache() {
    let workflows = temp_dir("inspect-wh");
    for name in ["hello", "approve"] {
        std::fs::copy(
            example_workflows().join(format!("{name}.toml")),
            workflows.join(format!("{name}.toml")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }
    write_workflow(
        &workflows,
        "broken",
        "[[nodes]]\nkind = \"task\"\nid = \"boom\"\nrun = [\"sh\", \"-c\", \"exit 3\"]\n",
    );
    let config = admin_config();
    let gateway = Gateway::start_full(config, 1, &workflows, &temp_dir("inspect-wh-data"));
    let addr = gateway.addr;
    let (mut client, _) = Client::connect(addr);
    launch_and_finish(&mut client, "hello", "wh-hello", json!({}));
    launch_and_finish(&mut client, "broken", "wh-broken", json!({}));

    let run = ok(&client.request("w1", "whatHappened", json!({"runId": "wh-hello"})));
    let summary = run["summary"].as_str().unwrap_or("").to_string();
    assert!(
        summary.starts_with("Run wh-hello (hello) finished in "),
        "{summary}"
    );
    assert!(summary.ends_with("s.\n- nodes: 1 finished"), "{summary}");
    assert_eq!(
        run,
        json!({"runId": "wh-hello", "nodeId": null, "iteration": null, "scope": "run",
               "summary": summary, "agentId": null, "source": "facts", "cached": false,
               "generatedAtMs": run["generatedAtMs"]})
    );
    let mut again = http_ok(addr, "whatHappened", json!({"runId": "wh-hello"}));
    assert_eq!(again["cached"], true);
    again["cached"] = json!(false);
    assert_eq!(again, run, "a hit repeats the stored payload");

    let node = ok(&client.request(
        "w2",
        "whatHappened",
        json!({"runId": "wh-hello", "nodeId": "greet", "iteration": "0"}),
    ));
    assert_eq!(
        (
            node["scope"].clone(),
            node["nodeId"].clone(),
            node["iteration"].clone()
        ),
        (json!("node"), json!("greet"), json!(0))
    );
    let text = node["summary"].as_str().unwrap_or("");
    assert!(
        text.starts_with("Node \"greet\" finished after 1 attempt in "),
        "{text}"
    );

    let failed = ok(&client.request(
        "w3",
        "whatHappened",
        json!({"runId": "wh-broken", "nodeId": "boom"}),
    ));
    let text = failed["summary"].as_str().unwrap_or("");
    assert!(
        text.starts_with("Node \"boom\" failed after 1 attempt in "),
        "{text}"
    );
    assert!(text.ends_with("\n- error: exited with code 3"), "{text}");
    assert_eq!(failed["iteration"], 0, "the highest iteration by default");
    let failed_run = ok(&client.request("w4", "whatHappened", json!({"runId": "wh-broken"})));
    let text = failed_run["summary"].as_str().unwrap_or("");
    assert!(
        text.starts_with("Run wh-broken (broken) failed in "),
        "{text}"
    );
    assert!(text.contains("\n- run error: "), "{text}");

    // A run waiting for approval is not terminal: never cached.
    client.launch("l", json!({"workflow": "approve", "runId": "wh-wait"}));
    client.wait_event("wh-wait", "approval.requested");
    for _ in 0..2 {
        let waiting = ok(&client.request(
            "w5",
            "whatHappened",
            json!({"runId": "wh-wait", "nodeId": "ship-it"}),
        ));
        assert_eq!(waiting["cached"], false, "{waiting}");
        assert_eq!(
            waiting["summary"], "Node \"ship-it\" is waiting-approval (attempt 1).",
            "{waiting}"
        );
    }

    let iteration_message = "iteration must be an integer between 0 and 2147483647";
    let cases = [
        (json!({}), (400, "InvalidRunId", "runId is required")),
        (
            json!({"runId": "BAD"}),
            (
                400,
                "InvalidRunId",
                "runId must match /^[a-z0-9_-][a-z0-9_.-]{0,63}$/",
            ),
        ),
        (
            json!({"runId": "wh-hello", "nodeId": "bad id"}),
            (
                400,
                "InvalidNodeId",
                "nodeId must match /^[a-zA-Z0-9:_-]{1,128}$/",
            ),
        ),
        (
            json!({"runId": "wh-hello", "nodeId": 7}),
            (
                400,
                "InvalidNodeId",
                "nodeId must match /^[a-zA-Z0-9:_-]{1,128}$/",
            ),
        ),
        (
            json!({"runId": "wh-hello", "iteration": -1}),
            (400, "InvalidIteration", iteration_message),
        ),
        (
            json!({"runId": "wh-hello", "nodeId": "greet", "iteration": "x"}),
            (400, "InvalidIteration", iteration_message),
        ),
        (
            json!({"runId": "nope", "nodeId": "greet"}),
            (404, "RunNotFound", "Run not found: nope"),
        ),
        (
            json!({"runId": "wh-hello", "nodeId": "missing"}),
            (
                404,
                "NodeNotFound",
                "Node missing not found in run wh-hello.",
            ),
        ),
        (
            json!({"runId": "wh-hello", "nodeId": "greet", "iteration": 4}),
            (
                404,
                "IterationNotFound",
                "Node greet has no iteration 4 in run wh-hello.",
            ),
        ),
    ];
    for (params, expected) in cases {
        assert_error(addr, &mut client, "whatHappened", params, expected);
    }
    // null counts as absent.
    let nulls = ok(&client.request(
        "w6",
        "whatHappened",
        json!({"runId": "wh-hello", "nodeId": null, "iteration": null}),
    ));
    assert_eq!(nulls["scope"], "run");
    drop(client);
    drop(gateway);
    let _ = std::fs::remove_dir_all(&workflows);
}

/// Goal: getRunDiff validates the id, then existence, then answers VcsError (our runs have no
/// VCS base revision).
#[test]
fn run_diff_has_no_vcs_base() {
    let gateway = Gateway::start(|_| {});
    let addr = gateway.addr;
    let (mut client, _) = Client::connect(addr);
    launch_and_finish(&mut client, "hello", "diff-me", json!({}));
    let invalid = "runId must be a non-empty string of at most 256 characters.";
    for params in [
        json!({}),
        json!({"runId": ""}),
        json!({"runId": 5}),
        json!({"runId": "r".repeat(257)}),
    ] {
        assert_error(
            addr,
            &mut client,
            "getRunDiff",
            params,
            (400, "InvalidRequest", invalid),
        );
    }
    assert_error(
        addr,
        &mut client,
        "getRunDiff",
        json!({"runId": "r".repeat(256)}),
        (
            404,
            "RunNotFound",
            &format!("Run not found: {}", "r".repeat(256)),
        ),
    );
    assert_error(
        addr,
        &mut client,
        "getRunDiff",
        json!({"runId": "diff-me"}),
        (500, "VcsError", "Run has no immutable VCS base revision."),
    );
}

/// Goal: runs.diff between real runs: identical shapes with different inputs, a different
/// workflow (nodes, outputs and loops added and removed), and a node that changed state; and
/// its errors.
#[test]
fn runs_diff_compares_current_states() {
    let gateway = Gateway::start(|_| {});
    let addr = gateway.addr;
    let (mut client, _) = Client::connect(addr);
    launch_and_finish(&mut client, "fanout-demo", "fan-1", json!({"n": 1}));
    launch_and_finish(&mut client, "fanout-demo", "fan-2", json!({"n": 2}));
    launch_and_finish(&mut client, "hello", "hello-1", json!({"n": 1}));
    client.launch("w", json!({"workflow": "approve", "runId": "ap-wait"}));
    client.wait_event("ap-wait", "approval.requested");
    client.launch("d", json!({"workflow": "approve", "runId": "ap-done"}));
    client.wait_event("ap-done", "approval.requested");
    ok(&client.request(
        "ap",
        "submitApproval",
        json!({"runId": "ap-done", "nodeId": "ship-it", "approved": true}),
    ));
    client.events_until_completed("ap-done");

    let same = ok(&client.request(
        "d1",
        "runs.diff",
        json!({"leftRunId": "fan-1", "rightRunId": "fan-2"}),
    ));
    assert_eq!(
        same,
        json!({"nodesAdded": [], "nodesRemoved": [], "nodesChanged": [], "outputsAdded": [],
               "outputsRemoved": [], "outputsChanged": [], "ralphAdded": [], "ralphRemoved": [],
               "ralphChanged": [], "inputChanged": true, "vcsPointerChanged": false})
    );

    let across = http_ok(
        addr,
        "runs.diff",
        json!({"leftRunId": "hello-1", "rightRunId": "fan-1"}),
    );
    let fan_nodes = vec![
        "fan-a::0", "fan-b::0", "fan-c::0", "tick::0", "tick::1", "tick::2",
    ];
    assert_eq!(strings(&across["nodesAdded"]), fan_nodes);
    assert_eq!(strings(&across["nodesRemoved"]), vec!["greet::0"]);
    assert_eq!(strings(&across["outputsAdded"]), fan_nodes);
    assert_eq!(strings(&across["outputsRemoved"]), vec!["greet::0"]);
    assert_eq!(strings(&across["ralphAdded"]), vec!["repeat"]);
    assert_eq!(across["inputChanged"], false);

    // A loop's state as the runs left it, seen from the other side.
    let back = ok(&client.request(
        "d2",
        "runs.diff",
        json!({"leftRunId": "fan-1", "rightRunId": "hello-1"}),
    ));
    assert_eq!(strings(&back["ralphRemoved"]), vec!["repeat"]);

    let moved = ok(&client.request(
        "d3",
        "runs.diff",
        json!({"leftRunId": "ap-wait", "rightRunId": "ap-done"}),
    ));
    let changed = moved["nodesChanged"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let ship_it = changed
        .iter()
        .find(|c| c["nodeId"] == "ship-it::0")
        .cloned()
        .unwrap_or_default();
    assert_eq!(ship_it["from"]["state"], "waiting-approval", "{moved}");
    assert_eq!(ship_it["to"]["state"], "finished", "{moved}");
    assert_eq!(ship_it["to"]["nodeId"], "ship-it");
    assert_eq!(ship_it["to"]["iteration"], 0);
    assert!(
        strings(&moved["nodesAdded"]).contains(&"ship::0".to_string()),
        "{moved}"
    );

    let required = "leftRunId and rightRunId are required";
    for params in [
        json!({}),
        json!({"leftRunId": "fan-1"}),
        json!({"rightRunId": "fan-1"}),
        json!({"leftRunId": "", "rightRunId": "fan-1"}),
    ] {
        assert_error(
            addr,
            &mut client,
            "runs.diff",
            params,
            (400, "INVALID_REQUEST", required),
        );
    }
    for params in [
        json!({"leftRunId": "nope", "rightRunId": "fan-1"}),
        json!({"leftRunId": "fan-1", "rightRunId": "nope"}),
    ] {
        assert_error(
            addr,
            &mut client,
            "runs.diff",
            params,
            (404, "NOT_FOUND", "Both runs must exist"),
        );
    }
}

/// Goal: every method of this family needs `run:read` (a cron-only token is refused with
/// `requiredScope`), and `run:read` is enough for all of them.
#[test]
fn every_method_needs_run_read() {
    let gateway = Gateway::start(|c| {
        c.auth = Some(token_auth(&[
            (ADMIN_TOKEN, grant("admin", &["*"])),
            ("cron-only", grant("viewer", &["cron:read"])),
            ("reader", grant("viewer", &["run:read"])),
        ]));
    });
    let addr = gateway.addr;
    let methods = [
        "listRunDescendants",
        "runs.descendants",
        "listRunTokenUsage",
        "getSchemaSignature",
        "getRunDiff",
        "whatHappened",
        "runs.diff",
        "frames.list",
        "frames.get",
        "attempts.list",
        "attempts.get",
        "listNodeStates",
    ];
    for method in methods {
        let body = json!({"id": "s", "method": method, "params": {}}).to_string();
        let refused = post_json(addr, "/rpc", Some("cron-only"), &body);
        let frame = refused.json();
        assert_eq!(refused.status, 403, "{method}: {frame}");
        assert_eq!(frame["error"]["code"], "FORBIDDEN");
        assert_eq!(frame["error"]["requiredScope"], "run:read");
        let allowed = post_json(addr, "/rpc", Some("reader"), &body);
        let code = allowed.json()["error"]["code"].clone();
        assert!(
            allowed.status != 403 && code != "METHOD_NOT_FOUND",
            "{method}: {}",
            allowed.json()
        );
    }
}
