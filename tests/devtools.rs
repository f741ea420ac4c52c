//! DevTools end to end (EVENTS.md §4, METHODS.md §3.18–3.21): `getDevToolsSnapshot`,
//! `getNodeOutput`, `getNodeDiff` with their validation, statuses and size caps over HTTP and
//! WebSocket; `streamDevTools` over real sockets: snapshot first, chained deltas that rebuild the
//! fresh snapshot, the 49-delta rebaseline, cursor rules, errors, shared bytes and builds across
//! subscribers, and the per-stream backpressure cut that leaves the socket and its other streams
//! running.

use crate::support::*;
use serde_json::{json, Value};
use smithers_gateway::storage::{Command, Mutation, RunRow};
use std::time::{Duration, Instant};

fn run_id_of(launched: &Value) -> String {
    launched["runId"].as_str().unwrap_or_default().to_string()
}

fn http_rpc(gateway: &Gateway, method: &str, params: Value) -> HttpResponse {
    post_json(
        gateway.addr,
        &format!("/v1/rpc/{method}"),
        Some(ADMIN_TOKEN),
        &params.to_string(),
    )
}

/// Asserts an HTTP RPC refusal: status and code.
fn assert_http_error(response: &HttpResponse, status: u16, code: &str) {
    let body = response.json();
    assert_eq!(
        (response.status, body["error"]["code"].as_str()),
        (status, Some(code)),
        "{body}"
    );
}

fn error_of(response: &Value) -> (String, String) {
    (
        response["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        response["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

/// A workflow file of `n` static tasks in sequence behind an approval gate (2 frames per task).
fn gated_tasks(n: usize) -> String {
    let mut text = String::from("[[nodes]]\nkind = \"approval\"\nid = \"go\"\ntitle = \"Go?\"\n");
    for index in 0..n {
        text.push_str(&format!(
            "\n[[nodes]]\nkind = \"task\"\nid = \"t{index}\"\noutput = {{ n = {index} }}\n"
        ));
    }
    text
}

/// Launches `workflow` and waits for its first approval request; returns the run id.
fn launch_gated(client: &mut Client, workflow: &str) -> String {
    let run_id = run_id_of(&client.launch("launch", json!({"workflow": workflow})));
    client.wait_event(&run_id, "approval.requested");
    run_id
}

fn approve(client: &mut Client, run_id: &str, node_id: &str) {
    let decided = client.request(
        "approve",
        "submitApproval",
        json!({"runId": run_id, "nodeId": node_id, "approved": true}),
    );
    assert_eq!(decided["ok"], true, "{decided}");
}

fn latest_snapshot(client: &mut Client, run_id: &str) -> Value {
    let response = client.request("snap", "getDevToolsSnapshot", json!({"runId": run_id}));
    assert_eq!(response["ok"], true, "{response}");
    response["payload"].clone()
}

fn open_devtools(client: &mut Client, id: &str, params: Value) -> String {
    let response = client.request(id, "streamDevTools", params);
    assert_eq!(response["ok"], true, "streamDevTools failed: {response}");
    response["payload"]["streamId"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The DevTools events of `stream_id` until one with `seq == until_seq`, in order.
fn devtools_events(client: &mut Client, stream_id: &str, until_seq: u64) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut events = Vec::new();
    while Instant::now() < deadline {
        let frame = client.next_event();
        assert_ne!(frame["event"], "devtools.error", "{frame}");
        if frame["event"] != "devtools.event" || frame["payload"]["streamId"] != stream_id {
            continue;
        }
        let event = frame["payload"]["event"].clone();
        let seq = seq_of(&event);
        events.push(event);
        if seq == until_seq {
            return events;
        }
    }
    panic!("no DevTools event with seq {until_seq}; got {events:?}");
}

fn seq_of(event: &Value) -> u64 {
    match event["kind"].as_str() {
        Some("snapshot") => event["snapshot"]["seq"].as_u64().unwrap_or(u64::MAX),
        _ => event["delta"]["seq"].as_u64().unwrap_or(u64::MAX),
    }
}

/// (kind, seq) of each event.
fn kinds(events: &[Value]) -> Vec<(String, u64)> {
    events
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap_or_default().to_string(),
                seq_of(e),
            )
        })
        .collect()
}

/// What a client holds after applying `events` in order (EVENTS.md §4.4 client rule): the
/// snapshot object, `seq` and `frameNo` following the deltas.
fn apply_all(events: &[Value]) -> Value {
    fn find<'v>(node: &'v mut Value, id: &Value) -> Option<&'v mut Value> {
        if node["id"] == *id {
            return Some(node);
        }
        node["children"]
            .as_array_mut()?
            .iter_mut()
            .find_map(|c| find(c, id))
    }
    fn remove(node: &mut Value, id: &Value) -> bool {
        let Some(children) = node["children"].as_array_mut() else {
            return false;
        };
        if let Some(position) = children.iter().position(|c| c["id"] == *id) {
            children.remove(position);
            return true;
        }
        children.iter_mut().any(|c| remove(c, id))
    }
    let mut tree = Value::Null;
    for event in events {
        assert_eq!(event["version"], 1, "{event}");
        if event["kind"] == "snapshot" {
            tree = event["snapshot"].clone();
            continue;
        }
        let delta = &event["delta"];
        assert_eq!(delta["version"], 1);
        assert_eq!(delta["baseSeq"], tree["seq"], "baseSeq/seq chain: {delta}");
        for op in delta["ops"].as_array().into_iter().flatten() {
            let root = &mut tree["root"];
            match op["op"].as_str().unwrap_or_default() {
                "replaceRoot" => *root = op["node"].clone(),
                "removeNode" => {
                    assert_ne!(root["id"], op["id"], "removing the root");
                    assert!(remove(root, &op["id"]), "unknown id in {op}");
                }
                "addNode" => {
                    let parent = find(root, &op["parentId"])
                        .unwrap_or_else(|| panic!("unknown parent in {op}"));
                    let children = parent["children"]
                        .as_array_mut()
                        .unwrap_or_else(|| panic!());
                    let index = (op["index"].as_u64().unwrap_or(0) as usize).min(children.len());
                    children.insert(index, op["node"].clone());
                }
                "updateProps" => {
                    find(root, &op["id"]).unwrap_or_else(|| panic!("{op}"))["props"] =
                        op["props"].clone()
                }
                "updateTask" => {
                    let node = find(root, &op["id"]).unwrap_or_else(|| panic!("{op}"));
                    let node = node.as_object_mut().unwrap_or_else(|| panic!());
                    match op.get("task") {
                        Some(task) => node.insert("task".into(), task.clone()),
                        None => node.remove("task"),
                    };
                }
                other => panic!("unknown op {other}"),
            }
        }
        tree["seq"] = delta["seq"].clone();
        tree["frameNo"] = delta["seq"].clone();
    }
    tree
}

/// The snapshot without `runState` (streamed snapshots leave it out).
fn tree_of(snapshot: &Value) -> Value {
    let mut snapshot = snapshot.clone();
    if let Some(object) = snapshot.as_object_mut() {
        object.remove("runState");
    }
    snapshot
}

/// Inserts a run with no frames straight into storage (the engine renders a frame at launch).
fn insert_frameless_run(gateway: &Gateway, run_id: &str) {
    let storage = gateway.state().storage.clone().unwrap_or_else(|| panic!());
    let row = RunRow {
        run_id: run_id.into(),
        parent_run_id: None,
        workflow_name: "hello".into(),
        workflow_path: None,
        workflow_hash: None,
        status: "finished".into(),
        created_at_ms: 1,
        started_at_ms: Some(1),
        finished_at_ms: Some(2),
        heartbeat_at_ms: None,
        runtime_owner_id: None,
        cancel_requested_at_ms: None,
        pause_requested_at_ms: None,
        error_json: None,
        config_json: None,
        input_json: "{}".into(),
        idempotency_key: None,
    };
    storage
        .call_blocking(|reply| Command::Write {
            mutations: vec![Mutation::InsertRun(row)],
            reply,
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

/// getDevToolsSnapshot (METHODS.md §3.19): validation order, codes and statuses over HTTP; the
/// snapshot of the latest frame and of a given frame; a run without frames; the WebSocket
/// connection filter (explicit list, explicit empty list, none).
#[test]
fn snapshot_method_validation_and_payload() {
    let gateway = Gateway::start(|_| {});
    let (mut client, _) = Client::connect(gateway.addr);
    let run_id = launch_gated(&mut client, "approve");
    insert_frameless_run(&gateway, "frameless");
    let cases = [
        (json!({}), 400, "InvalidRunId"),
        (json!({"runId": ""}), 400, "InvalidRunId"),
        (json!({"runId": "Bad Id"}), 400, "InvalidRunId"),
        (
            json!({"runId": run_id, "frameNo": -1}),
            400,
            "FrameOutOfRange",
        ),
        (
            json!({"runId": run_id, "frameNo": 1.5}),
            400,
            "FrameOutOfRange",
        ),
        (
            json!({"runId": run_id, "frameNo": "1"}),
            400,
            "FrameOutOfRange",
        ),
        (
            json!({"runId": run_id, "frameNo": 2_147_483_648u64}),
            400,
            "FrameOutOfRange",
        ),
        // frameNo is checked before the run is looked up.
        (
            json!({"runId": "no-such-run", "frameNo": -1}),
            400,
            "FrameOutOfRange",
        ),
        (json!({"runId": "no-such-run"}), 404, "RunNotFound"),
        (
            json!({"runId": run_id, "frameNo": 0}),
            400,
            "FrameOutOfRange",
        ),
        (
            json!({"runId": run_id, "frameNo": 2_147_483_647u64}),
            400,
            "FrameOutOfRange",
        ),
        (
            json!({"runId": "frameless", "frameNo": 1}),
            400,
            "FrameOutOfRange",
        ),
    ];
    for (params, status, code) in &cases {
        let response = http_rpc(&gateway, "getDevToolsSnapshot", params.clone());
        assert_http_error(&response, *status, code);
    }
    let message = |params: Value| {
        http_rpc(&gateway, "getDevToolsSnapshot", params).json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let latest = latest_snapshot(&mut client, &run_id);
    let latest_no = latest["frameNo"].as_u64().unwrap_or(0);
    assert!(latest_no >= 3, "{latest}");
    assert_eq!(
        message(json!({"runId": run_id, "frameNo": 0})),
        format!("Frame 0 is not available for run {run_id}.")
    );
    assert_eq!(
        message(json!({"runId": run_id, "frameNo": latest_no + 1})),
        format!("frameNo must be between 0 and {latest_no}.")
    );
    assert_eq!(
        message(json!({"runId": "frameless", "frameNo": 3})),
        "frameNo must be 0 for runs with no frames (got 3)."
    );

    // The latest frame: the approval waits, build is done, ship is pending.
    assert_eq!(latest["version"], 1);
    assert_eq!(latest["runId"], run_id.as_str());
    assert_eq!(latest["seq"], latest["frameNo"]);
    let root = &latest["root"];
    assert_eq!(
        (&root["type"], &root["name"], &root["depth"], &root["props"]),
        (
            &json!("workflow"),
            &json!("approve"),
            &json!(0),
            &json!({"name": "approve"})
        )
    );
    let tasks: Vec<(Value, Value)> = root["children"]
        .as_array()
        .unwrap_or_else(|| panic!("{root}"))
        .iter()
        .map(|c| (c["task"]["nodeId"].clone(), c["task"]["state"].clone()))
        .collect();
    assert_eq!(
        tasks,
        [
            (json!("build"), json!("finished")),
            (json!("ship-it"), json!("waiting-approval")),
            (json!("ship"), json!("pending")),
        ]
    );
    assert_eq!(latest["runState"]["state"], "waiting-approval");
    // Key order on the wire: {id, type, name, props, task?, children, depth}.
    let raw = http_rpc(&gateway, "getDevToolsSnapshot", json!({"runId": run_id})).text();
    let build_id = &root["children"][0]["id"];
    let build_node = format!(
        r#"{{"id":{build_id},"type":"task","name":"task","props":{{"id":"build","kind":"static"}},"task":{{"nodeId":"build","kind":"static","maxAttempts":1,"iteration":0,"state":"finished","attempt":1}},"children":[],"depth":1}}"#
    );
    assert!(raw.contains(&build_node), "{raw}");

    // Frame 1: nothing has run yet.
    let first = http_rpc(
        &gateway,
        "getDevToolsSnapshot",
        json!({"runId": run_id, "frameNo": 1}),
    );
    assert_eq!(first.status, 200);
    let first = first.json()["payload"].clone();
    assert_eq!((&first["frameNo"], &first["seq"]), (&json!(1), &json!(1)));
    assert_eq!(
        first["root"]["id"], root["id"],
        "ids are stable across frames"
    );

    // No frames: the empty root at frame 0.
    let empty = http_rpc(
        &gateway,
        "getDevToolsSnapshot",
        json!({"runId": "frameless"}),
    );
    let empty = empty.json()["payload"].clone();
    assert_eq!(
        tree_of(&empty),
        json!({"version": 1, "runId": "frameless", "frameNo": 0, "seq": 0,
               "root": {"id": 0, "type": "workflow", "name": "(empty)", "props": {}, "children": [], "depth": 0}})
    );
    assert_eq!(empty["runState"]["state"], "succeeded");

    // The WebSocket filter: a listed run is allowed, others and an explicit empty list are not.
    for (subscribe, allowed) in [
        (json!([run_id]), true),
        (json!(["other"]), false),
        (json!([]), false),
    ] {
        let mut ws = ws_open(gateway.addr);
        let mut params = connect_params(Some(ADMIN_TOKEN));
        params["subscribe"] = subscribe.clone();
        assert_eq!(request(&mut ws, "c", "connect", params)["ok"], true);
        let response = request(
            &mut ws,
            "s",
            "getDevToolsSnapshot",
            json!({"runId": run_id}),
        );
        if allowed {
            assert_eq!(response["ok"], true, "{subscribe}: {response}");
        } else {
            assert_eq!(
                error_of(&response),
                (
                    "Unauthorized".into(),
                    "Connection is not subscribed to this runId.".into()
                ),
                "{subscribe}"
            );
        }
    }
}

/// getNodeOutput and getNodeDiff (and their legacy names): the three output statuses, the diff
/// bundle, validation codes and HTTP statuses, AttemptNotFinished on a running attempt.
#[test]
fn node_output_and_diff() {
    let workflows = temp_dir("devtools-nodes");
    write_workflow(
        &workflows,
        "mixed",
        r#"
[[nodes]]
kind = "task"
id = "made"
output = { artifact = "app.tar", size = 3 }

[[nodes]]
kind = "task"
id = "broken"
run = ["sh", "-c", "exit 3"]
continue_on_fail = true

[[nodes]]
kind = "approval"
id = "gate"
title = "Go?"

[[nodes]]
kind = "task"
id = "sleepy"
run = ["sh", "-c", "sleep 30"]
"#,
    );
    let config = smithers_gateway::config::GatewayConfig {
        auth: Some(token_auth(&[(ADMIN_TOKEN, grant("admin", &["*"]))])),
        ..Default::default()
    };
    let gateway = Gateway::start_full(config, 1, &workflows, &temp_dir("data"));
    let (mut client, _) = Client::connect(gateway.addr);
    let run_id = launch_gated(&mut client, "mixed");
    let output = |method: &str, node_id: &str, iteration: Value| {
        http_rpc(
            &gateway,
            method,
            json!({"runId": run_id, "nodeId": node_id, "iteration": iteration}),
        )
    };

    let produced = output("getNodeOutput", "made", json!(0));
    assert_eq!(produced.status, 200);
    assert_eq!(
        produced.json()["payload"],
        json!({"status": "produced", "row": {"artifact": "app.tar", "size": 3}, "schema": {"fields": [
            {"name": "artifact", "type": "string", "optional": false, "nullable": false},
            {"name": "size", "type": "number", "optional": false, "nullable": false}]}})
    );
    // The legacy name and a numeric string iteration give the same payload.
    assert_eq!(
        output("devtools.getNodeOutput", "made", json!("0")).json()["payload"],
        produced.json()["payload"]
    );
    let failed = output("getNodeOutput", "broken", json!(0)).json()["payload"].clone();
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["row"], Value::Null);
    assert_eq!(failed["schema"], Value::Null);
    assert_eq!(failed["error"]["attempt"], 1);
    assert!(failed["error"]["message"].is_string(), "{failed}");
    let pending = output("getNodeOutput", "gate", json!(0)).json()["payload"].clone();
    assert_eq!(pending["status"], "pending", "{pending}");

    let diff = output("getNodeDiff", "made", json!(0)).json()["payload"].clone();
    assert_eq!(diff["seq"], 1);
    assert!(
        diff["baseRef"]
            .as_str()
            .unwrap_or_default()
            .starts_with("outputs@"),
        "{diff}"
    );
    assert_eq!(
        diff["patches"],
        json!([{"path": "outputs/made/0.json", "operation": "add",
                "diff": "--- /dev/null\n+++ b/outputs/made/0.json\n@@ -0,0 +1,4 @@\n+{\n+  \"artifact\": \"app.tar\",\n+  \"size\": 3\n+}\n"}])
    );
    let legacy = output("devtools.getNodeDiff", "broken", json!(0)).json()["payload"].clone();
    assert_eq!(
        legacy["patches"],
        json!([]),
        "a failed attempt changed nothing"
    );

    let refusals = [
        (
            "getNodeOutput",
            json!({"nodeId": "made", "iteration": 0}),
            400,
            "InvalidRunId",
        ),
        (
            "getNodeOutput",
            json!({"runId": "UPPER", "nodeId": "made", "iteration": 0}),
            400,
            "InvalidRunId",
        ),
        (
            "getNodeOutput",
            json!({"runId": run_id, "nodeId": "bad.id", "iteration": 0}),
            400,
            "InvalidNodeId",
        ),
        (
            "getNodeOutput",
            json!({"runId": run_id, "nodeId": "made"}),
            400,
            "InvalidIteration",
        ),
        (
            "getNodeOutput",
            json!({"runId": run_id, "nodeId": "made", "iteration": -1}),
            400,
            "InvalidIteration",
        ),
        (
            "getNodeOutput",
            json!({"runId": "no-such-run", "nodeId": "made", "iteration": 0}),
            404,
            "RunNotFound",
        ),
        (
            "getNodeOutput",
            json!({"runId": run_id, "nodeId": "sleepy", "iteration": 0}),
            404,
            "NodeNotFound",
        ),
        (
            "getNodeOutput",
            json!({"runId": run_id, "nodeId": "made", "iteration": 1}),
            404,
            "IterationNotFound",
        ),
        (
            "getNodeDiff",
            json!({"runId": run_id, "nodeId": "made", "iteration": "0"}),
            400,
            "InvalidIteration",
        ),
        (
            "getNodeDiff",
            json!({"runId": run_id, "nodeId": "made", "iteration": 2_147_483_648u64}),
            400,
            "InvalidIteration",
        ),
        (
            "getNodeDiff",
            json!({"runId": "no-such-run", "nodeId": "made", "iteration": 0}),
            404,
            "RunNotFound",
        ),
        (
            "getNodeDiff",
            json!({"runId": run_id, "nodeId": "made", "iteration": 4}),
            404,
            "NodeNotFound",
        ),
    ];
    for (method, params, status, code) in &refusals {
        let response = http_rpc(&gateway, method, params.clone());
        assert_http_error(&response, *status, code);
    }

    // The attempt of `sleepy` is in progress: its diff is refused with 409, over WS as well.
    approve(&mut client, &run_id, "gate");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let frame = client.next_event();
        if frame["event"] == "node.started" && frame["payload"]["nodeId"] == "sleepy" {
            break;
        }
        assert!(Instant::now() < deadline, "sleepy did not start");
    }
    let running = output("getNodeDiff", "sleepy", json!(0));
    assert_http_error(&running, 409, "AttemptNotFinished");
    let over_ws = client.request(
        "d",
        "getNodeDiff",
        json!({"runId": run_id, "nodeId": "sleepy", "iteration": 0}),
    );
    assert_eq!(error_of(&over_ws).0, "AttemptNotFinished");
    let cancelled = client.request("c", "cancelRun", json!({"runId": run_id}));
    assert_eq!(cancelled["ok"], true, "{cancelled}");
    let _ = std::fs::remove_dir_all(&workflows);
}

/// The size caps, lowered so that one row and one bundle cross them: PayloadTooLarge 413 and
/// DiffTooLarge 413 (message ending in " [truncated]"); at the limit they pass.
#[test]
fn node_output_and_diff_caps() {
    let probe = Gateway::start(|_| {});
    let (mut client, _) = Client::connect(probe.addr);
    let run_id = run_id_of(&client.launch("l", json!({"workflow": "hello"})));
    client.wait_event(&run_id, "run.completed");
    let params = json!({"runId": run_id, "nodeId": "greet", "iteration": 0});
    let diff_len = http_rpc(&probe, "getNodeDiff", params.clone()).json()["payload"]
        .to_string()
        .len();
    drop(client);
    drop(probe);

    // `{"message":"hello"}` is 19 bytes; the bundle's length was just measured.
    for (row_max, diff_max, row_ok, diff_ok) in
        [(19, diff_len, true, true), (18, diff_len - 1, false, false)]
    {
        let gateway = Gateway::start(|config| {
            config.node_limits.output_bytes_max = row_max;
            config.node_limits.diff_bytes_max = diff_max;
        });
        let (mut client, _) = Client::connect(gateway.addr);
        let launched = client.launch("l", json!({"workflow": "hello"}));
        let run_id = run_id_of(&launched);
        client.wait_event(&run_id, "run.completed");
        let params = json!({"runId": run_id, "nodeId": "greet", "iteration": 0});
        let row = http_rpc(&gateway, "getNodeOutput", params.clone());
        let diff = http_rpc(&gateway, "getNodeDiff", params.clone());
        if row_ok {
            assert_eq!(row.status, 200, "{}", row.text());
            assert_eq!(row.json()["payload"]["row"], json!({"message": "hello"}));
        } else {
            assert_http_error(&row, 413, "PayloadTooLarge");
        }
        if diff_ok {
            assert_eq!(diff.status, 200, "{}", diff.text());
            assert_eq!(diff.json()["payload"].to_string().len(), diff_len);
        } else {
            assert_http_error(&diff, 413, "DiffTooLarge");
            let message = diff.json()["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert!(message.ends_with(" [truncated]"), "{message}");
        }
    }
}

/// streamDevTools validation (METHODS.md §3.18) in order, the HTTP refusal, the payload shape,
/// and a run without frames (frame 0's empty snapshot first).
#[test]
fn stream_validation_and_payload() {
    let gateway = Gateway::start(|_| {});
    let (mut client, _) = Client::connect(gateway.addr);
    let run_id = launch_gated(&mut client, "approve");
    let latest = latest_snapshot(&mut client, &run_id)["seq"]
        .as_u64()
        .unwrap_or(0);
    insert_frameless_run(&gateway, "frameless");
    let cases = [
        (json!({}), "InvalidRunId", "runId is required".to_string()),
        (
            json!({"runId": "Bad", "fromSeq": 1, "afterSeq": 2}),
            "SeqOutOfRange",
            "fromSeq and afterSeq must match when both are provided".into(),
        ),
        (
            json!({"runId": "Bad"}),
            "InvalidRunId",
            "runId must match /^[a-z0-9_-][a-z0-9_.-]{0,63}$/".into(),
        ),
        (
            json!({"runId": "no-such-run", "fromSeq": -3}),
            "SeqOutOfRange",
            "fromSeq must be a non-negative integer.".into(),
        ),
        (
            json!({"runId": "no-such-run"}),
            "RunNotFound",
            "Run not found: no-such-run".into(),
        ),
        (
            json!({"runId": run_id, "fromSeq": latest + 1}),
            "SeqOutOfRange",
            format!("fromSeq {} is newer than current seq {latest}", latest + 1),
        ),
        (
            json!({"runId": "frameless", "afterSeq": 1}),
            "SeqOutOfRange",
            "fromSeq 1 is newer than current seq 0".into(),
        ),
    ];
    for (index, (params, code, message)) in cases.iter().enumerate() {
        let response = client.request(&format!("v{index}"), "streamDevTools", params.clone());
        assert_eq!(
            error_of(&response),
            (code.to_string(), message.clone()),
            "{params}"
        );
    }
    let over_http = http_rpc(&gateway, "streamDevTools", json!({"runId": run_id}));
    assert_http_error(&over_http, 400, "INVALID_REQUEST");

    // A filtered socket may stream only its runs.
    let mut ws = ws_open(gateway.addr);
    let mut params = connect_params(Some(ADMIN_TOKEN));
    params["subscribe"] = json!([]);
    assert_eq!(request(&mut ws, "c", "connect", params)["ok"], true);
    let refused = request(&mut ws, "s", "streamDevTools", json!({"runId": run_id}));
    assert_eq!(
        error_of(&refused),
        (
            "Unauthorized".into(),
            "Connection is not subscribed to this runId.".into()
        )
    );

    let response = client.request(
        "ok",
        "streamDevTools",
        json!({"runId": "frameless", "afterSeq": 0}),
    );
    let payload = &response["payload"];
    let stream_id = payload["streamId"].as_str().unwrap_or_default().to_string();
    assert_eq!(stream_id.len(), 36, "{payload}");
    assert_eq!(
        payload,
        &json!({"streamId": stream_id, "runId": "frameless", "fromSeq": 0, "afterSeq": 0})
    );
    let events = devtools_events(&mut client, &stream_id, 0);
    assert_eq!(
        events,
        [
            json!({"version": 1, "kind": "snapshot", "snapshot": {"version": 1, "runId": "frameless", "frameNo": 0, "seq": 0,
            "root": {"id": 0, "type": "workflow", "name": "(empty)", "props": {}, "children": [], "depth": 0}}})
        ]
    );
    let plain = client.request("plain", "streamDevTools", json!({"runId": run_id}));
    assert_eq!(
        (&plain["payload"]["fromSeq"], &plain["payload"]["afterSeq"]),
        (&Value::Null, &Value::Null)
    );
}

/// A live stream: the snapshot of the latest frame first, then one delta per frame whose
/// baseSeq/seq chain; applied in order they give getDevToolsSnapshot's tree of the last frame.
#[test]
fn live_stream_rebuilds_the_fresh_snapshot() {
    let gateway = Gateway::start(|_| {});
    // The stream's socket only reads its stream; the control socket drives the run.
    let (mut control, _) = Client::connect(gateway.addr);
    let (mut client, _) = Client::connect(gateway.addr);
    let run_id = launch_gated(&mut control, "approve");
    let first_seq = latest_snapshot(&mut control, &run_id)["seq"]
        .as_u64()
        .unwrap_or(0);
    let stream_id = open_devtools(&mut client, "s", json!({"runId": run_id}));
    approve(&mut control, &run_id, "ship-it");
    control.wait_event(&run_id, "run.completed");
    let last = latest_snapshot(&mut control, &run_id);
    let last_seq = last["seq"].as_u64().unwrap_or(0);
    assert!(
        last_seq >= first_seq + 3,
        "approval, ship started, ship finished"
    );
    let events = devtools_events(&mut client, &stream_id, last_seq);
    let expected: Vec<(String, u64)> = std::iter::once(("snapshot".to_string(), first_seq))
        .chain((first_seq + 1..=last_seq).map(|seq| ("delta".to_string(), seq)))
        .collect();
    assert_eq!(kinds(&events), expected);
    assert_eq!(apply_all(&events), tree_of(&last));
    let states: Vec<&Value> = last["root"]["children"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|child| &child["task"]["state"])
        .collect();
    assert_eq!(states, [&json!("finished"); 3]);
}

/// Snapshot, 49 deltas, snapshot: live over a burst of frames, and again when catching up with a
/// cursor; the cursor rules of EVENTS.md §4.5 step 1 (keyframe floor(c/50)*50, c < 50 → latest,
/// frames ≤ c still sent); every client ends with the latest frame's tree.
#[test]
fn rebaseline_and_cursor_rules() {
    let workflows = temp_dir("devtools-many");
    write_workflow(&workflows, "many", &gated_tasks(70));
    let config = smithers_gateway::config::GatewayConfig {
        auth: Some(token_auth(&[(ADMIN_TOKEN, grant("admin", &["*"]))])),
        ..Default::default()
    };
    let gateway = Gateway::start_full(config, 1, &workflows, &temp_dir("data"));
    let (mut control, _) = Client::connect(gateway.addr);
    let (mut client, _) = Client::connect(gateway.addr);
    let run_id = launch_gated(&mut control, "many");
    let first_seq = latest_snapshot(&mut control, &run_id)["seq"]
        .as_u64()
        .unwrap_or(0);
    let live = open_devtools(&mut client, "live", json!({"runId": run_id}));
    approve(&mut control, &run_id, "go");
    control.wait_event(&run_id, "run.completed");
    let last = latest_snapshot(&mut control, &run_id);
    let last_seq = last["seq"].as_u64().unwrap_or(0);
    assert!(last_seq >= first_seq + 141, "{first_seq}..{last_seq}");
    let events = devtools_events(&mut client, &live, last_seq);
    let snapshots: Vec<u64> = kinds(&events)
        .into_iter()
        .filter(|(kind, _)| kind == "snapshot")
        .map(|(_, seq)| seq)
        .collect();
    let expected: Vec<u64> = (first_seq..=last_seq).step_by(50).collect();
    assert_eq!(snapshots, expected, "snapshot every 50 events");
    assert_eq!(events.len() as u64, last_seq - first_seq + 1);
    assert_eq!(apply_all(&events), tree_of(&last));

    let cases = [
        (49, vec![last_seq]),
        (50, (50..=last_seq).collect::<Vec<u64>>()),
        (120, (100..=last_seq).collect()),
        (last_seq, ((last_seq / 50 * 50)..=last_seq).collect()),
    ];
    for (cursor, seqs) in cases {
        let stream_id = open_devtools(
            &mut client,
            &format!("c{cursor}"),
            json!({"runId": run_id, "fromSeq": cursor}),
        );
        let events = devtools_events(&mut client, &stream_id, last_seq);
        let got: Vec<u64> = events.iter().map(seq_of).collect();
        assert_eq!(got, seqs, "cursor {cursor}");
        let snapshots: Vec<u64> = kinds(&events)
            .into_iter()
            .filter(|(kind, _)| kind == "snapshot")
            .map(|(_, seq)| seq)
            .collect();
        let expected: Vec<u64> = seqs.iter().copied().step_by(50).collect();
        assert_eq!(snapshots, expected, "cursor {cursor}");
        assert_eq!(apply_all(&events), tree_of(&last), "cursor {cursor}");
    }
    let _ = std::fs::remove_dir_all(&workflows);
}

/// Reads raw text frames until `count` DevTools events of `stream_id`; returns the bytes of each
/// event after the stream's own prefix (`…"runId":"r","event":`).
fn raw_devtools_events(ws: &mut Ws, stream_id: &str, count: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut events = Vec::new();
    while events.len() < count && Instant::now() < deadline {
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
        if !text.contains(r#""event":"devtools.event""#) || !text.contains(stream_id) {
            continue;
        }
        let (_, event) = text
            .split_once(r#","event":{"version""#)
            .unwrap_or_else(|| panic!("no event in {text}"));
        events.push(event.to_string());
    }
    assert_eq!(events.len(), count);
    events
}

/// Two subscribers on two sockets of a two-worker gateway receive byte-identical events, and
/// each frame's snapshot and delta are built once, not once per subscriber.
#[test]
fn subscribers_share_bytes_and_builds() {
    let config = smithers_gateway::config::GatewayConfig {
        auth: Some(token_auth(&[(ADMIN_TOKEN, grant("admin", &["*"]))])),
        ..Default::default()
    };
    let gateway = Gateway::start_full(config, 2, &example_workflows(), &temp_dir("data"));
    let (mut control, _) = Client::connect(gateway.addr);
    let run_id = launch_gated(&mut control, "approve");
    let first_seq = latest_snapshot(&mut control, &run_id)["seq"]
        .as_u64()
        .unwrap_or(0);
    let devtools = &gateway.state().devtools;
    assert_eq!(
        (devtools.snapshots_built(), devtools.deltas_built()),
        (0, 0)
    );
    let mut sockets = Vec::new();
    for index in 0..2 {
        let (mut ws, _) = ws_connect(gateway.addr, ADMIN_TOKEN);
        let response = request(
            &mut ws,
            &format!("s{index}"),
            "streamDevTools",
            json!({"runId": run_id}),
        );
        assert_eq!(response["ok"], true, "{response}");
        let stream_id = response["payload"]["streamId"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        sockets.push((ws, stream_id));
    }
    approve(&mut control, &run_id, "ship-it");
    control.wait_event(&run_id, "run.completed");
    let last_seq = latest_snapshot(&mut control, &run_id)["seq"]
        .as_u64()
        .unwrap_or(0);
    let n_events = (last_seq - first_seq + 1) as usize;
    let received: Vec<Vec<String>> = sockets
        .iter_mut()
        .map(|(ws, stream_id)| raw_devtools_events(ws, stream_id, n_events))
        .collect();
    assert_eq!(received[0], received[1], "identical event bytes");
    assert!(
        received[0][1].contains(r#""kind":"delta""#),
        "{}",
        received[0][1]
    );
    let n_frames = last_seq - first_seq + 1;
    assert_eq!(
        devtools.snapshots_built(),
        n_frames,
        "one snapshot per frame"
    );
    assert_eq!(devtools.deltas_built(), n_frames - 1, "one delta per frame");
    let metrics = http_once(gateway.addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").text();
    assert!(
        metrics.contains(&format!(
            "smithers_gateway_devtools_snapshots_built_total {n_frames}"
        )),
        "{metrics}"
    );
}

/// EVENTS.md §4.5: a DevTools stream whose socket stops reading while its run renders more than
/// a thousand frames ends with `devtools.error` BackpressureDisconnect and the exact message; the
/// socket stays open, its other DevTools stream and its run stream go on.
#[test]
fn slow_devtools_consumer_gets_backpressure_disconnect() {
    let workflows = temp_dir("devtools-noisy");
    write_workflow(
        &workflows,
        "noisy",
        r#"
[[nodes]]
kind = "approval"
id = "go"
title = "Go?"

[[nodes]]
kind = "loop"
id = "spin"
max_iterations = 700
  [[nodes.children]]
  kind = "task"
  id = "tick"
  output = { t = 1 }
"#,
    );
    std::fs::copy(
        example_workflows().join("approve.toml"),
        workflows.join("approve.toml"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let config = smithers_gateway::config::GatewayConfig {
        auth: Some(token_auth(&[(ADMIN_TOKEN, grant("admin", &["*"]))])),
        socket_send_buffer_bytes: 4096,
        ..Default::default()
    };
    let gateway = Gateway::start_full(config, 1, &workflows, &temp_dir("data"));
    let (mut control, _) = Client::connect(gateway.addr);
    let noisy = launch_gated(&mut control, "noisy");
    let calm = launch_gated(&mut control, "approve");

    // A tiny receive buffer on our side, so the kernel holds little on our behalf.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .unwrap_or_else(|e| panic!("{e}"));
    socket
        .set_recv_buffer_size(4096)
        .unwrap_or_else(|e| panic!("{e}"));
    socket
        .connect(&gateway.addr.into())
        .unwrap_or_else(|e| panic!("{e}"));
    let stream: std::net::TcpStream = socket.into();
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .unwrap_or_else(|e| panic!("{e}"));
    let (mut ws, _) = tungstenite::client::client(gateway.ws_url(), stream)
        .unwrap_or_else(|e| panic!("upgrade failed: {e}"));
    assert_eq!(
        request(&mut ws, "c", "connect", connect_params(Some(ADMIN_TOKEN)))["ok"],
        true
    );
    let mut slow = Client {
        ws,
        backlog: Default::default(),
    };
    let cut = open_devtools(&mut slow, "noisy", json!({"runId": noisy}));
    let other = open_devtools(&mut slow, "calm", json!({"runId": calm}));
    let run_stream = slow.request("run", "streamRunEvents", json!({"runId": calm}));
    assert_eq!(run_stream["ok"], true, "{run_stream}");
    let run_stream_id = run_stream["payload"]["streamId"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    // The slow socket stops reading while the noisy run renders ~1,400 frames.
    approve(&mut control, &noisy, "go");
    control.wait_event(&noisy, "run.completed");
    let noisy_last = latest_snapshot(&mut control, &noisy)["seq"]
        .as_u64()
        .unwrap_or(0);
    assert!(noisy_last > 1_200, "{noisy_last}");
    // The cut happens while the worker queues the burst; then the calm run moves on.
    let deadline = Instant::now() + Duration::from_secs(30);
    while gateway
        .state()
        .counters
        .stream_backpressure_cuts
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        assert!(Instant::now() < deadline, "no backpressure cut");
        std::thread::sleep(Duration::from_millis(20));
    }
    approve(&mut control, &calm, "ship-it");
    control.wait_event(&calm, "run.completed");

    let mut error = None;
    let mut cut_events = 0;
    let mut after_error = 0;
    let mut other_deltas = 0;
    let mut run_frames = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while other_deltas == 0 || run_frames == 0 || error.is_none() {
        assert!(
            Instant::now() < deadline,
            "error {error:?}, other {other_deltas}, run {run_frames}"
        );
        let frame = slow.next_event();
        let payload = &frame["payload"];
        match frame["event"].as_str().unwrap_or_default() {
            "devtools.error" => {
                assert!(error.is_none(), "second error {frame}");
                error = Some(payload.clone());
            }
            "devtools.event" if payload["streamId"] == cut => {
                if error.is_some() {
                    after_error += 1;
                } else {
                    cut_events += 1;
                }
            }
            "devtools.event"
                if payload["streamId"] == other && payload["event"]["kind"] == "delta" =>
            {
                other_deltas += 1
            }
            "run.event" if payload["streamId"] == run_stream_id.as_str() => run_frames += 1,
            _ => {}
        }
    }
    assert_eq!(
        error,
        Some(
            json!({"streamId": cut, "runId": noisy, "error": {"code": "BackpressureDisconnect",
            "message": "Subscriber outbound queue exceeded 1000 events."}})
        )
    );
    assert_eq!(after_error, 0, "events after the stream was cut");
    assert!(
        cut_events < noisy_last as usize,
        "{cut_events} events reached the client"
    );
    let health = slow.request("h", "health", json!({}));
    assert_eq!(health["ok"], true, "{health}");
    // The stream is gone from the hub; a new one on the same socket starts with a snapshot.
    let again = open_devtools(&mut slow, "again", json!({"runId": noisy}));
    let events = devtools_events(&mut slow, &again, noisy_last);
    assert_eq!(kinds(&events), [("snapshot".to_string(), noisy_last)]);
    let _ = std::fs::remove_dir_all(&workflows);
}
