//! The whole RPC surface as one table (METHODS.md §0–2): every v1 method, `health`, every legacy
//! name and legacy-only handler is dispatched (nothing but `approve` answers METHOD_NOT_FOUND);
//! each method's scope is enforced for every scope family over WebSocket and HTTP; WebSocket-only
//! methods refuse HTTP; every legacy name answers exactly as its canonical method; and on one
//! socket that touches the whole surface, seq strictly increases and stateVersion never
//! decreases; random params never break a method; auto-subscribe follows the methods that
//! restart a run. Per-method behaviour (happy paths, every validation error) lives in the family
//! modules (runs, cron, devtools, inspect, records, control).

use crate::support::*;
use serde_json::{json, Value};
use smithers_gateway::config::{GatewayConfig, TokenGrant};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// What a call with `{}` params answers: a payload, or an error code (and message where the
/// spec fixes it).
#[derive(Clone, Copy, Debug)]
enum Empty {
    Ok,
    Err(&'static str, Option<&'static str>),
}

use Empty::{Err as E, Ok as O};

const RUN_ID_REQUIRED: Option<&str> = Some("runId is required");

/// Every name a client may send (METHODS.md §1 and §2), its catalog scope, whether it is
/// WebSocket-only, and its answer to `{}`.
const SURFACE: &[(&str, &str, bool, Empty)] = &[
    // §1: the 44 v1 methods and health.
    ("health", "run:read", false, O),
    (
        "launchRun",
        "run:write",
        false,
        E("INVALID_REQUEST", Some("workflow is required")),
    ),
    (
        "resumeRun",
        "run:write",
        false,
        E("INVALID_REQUEST", RUN_ID_REQUIRED),
    ),
    (
        "cancelRun",
        "run:write",
        false,
        E("INVALID_REQUEST", RUN_ID_REQUIRED),
    ),
    (
        "pauseRun",
        "run:write",
        false,
        E("INVALID_REQUEST", RUN_ID_REQUIRED),
    ),
    (
        "hijackRun",
        "run:admin",
        false,
        E("InvalidRunId", RUN_ID_REQUIRED),
    ),
    (
        "rewindRun",
        "run:admin",
        false,
        E("InvalidRunId", RUN_ID_REQUIRED),
    ),
    (
        "submitApproval",
        "approval:submit",
        false,
        E(
            "INVALID_REQUEST",
            Some("runId, nodeId, and approved are required"),
        ),
    ),
    (
        "submitSignal",
        "signal:submit",
        false,
        E("INVALID_REQUEST", Some("runId and signalName are required")),
    ),
    (
        "getRun",
        "run:read",
        false,
        E("INVALID_REQUEST", RUN_ID_REQUIRED),
    ),
    (
        "listRunTokenUsage",
        "run:read",
        false,
        E("INVALID_REQUEST", None),
    ),
    ("listRuns", "run:read", false, O),
    (
        "listRunDescendants",
        "run:read",
        false,
        E("INVALID_REQUEST", None),
    ),
    ("getSchemaSignature", "run:read", false, O),
    ("listWorkflows", "run:read", false, O),
    ("listApprovals", "run:read", false, O),
    ("listDocs", "run:read", false, O),
    (
        "streamRunEvents",
        "run:read",
        true,
        E("InvalidRunId", RUN_ID_REQUIRED),
    ),
    (
        "streamDevTools",
        "observability:read",
        true,
        E("InvalidRunId", RUN_ID_REQUIRED),
    ),
    (
        "getDevToolsSnapshot",
        "observability:read",
        false,
        E("InvalidRunId", RUN_ID_REQUIRED),
    ),
    ("getNodeOutput", "run:read", false, E("InvalidRunId", None)),
    ("getNodeDiff", "run:read", false, E("InvalidRunId", None)),
    ("getRunDiff", "run:read", false, E("InvalidRequest", None)),
    ("whatHappened", "run:read", false, E("InvalidRunId", None)),
    ("cronList", "cron:read", false, O),
    (
        "cronCreate",
        "cron:write",
        false,
        E("INVALID_REQUEST", Some("workflow and pattern are required")),
    ),
    (
        "cronDelete",
        "cron:write",
        false,
        E("INVALID_REQUEST", None),
    ),
    (
        "cronRun",
        "cron:write",
        false,
        E("INVALID_REQUEST", Some("cronId or workflow is required")),
    ),
    ("listAccounts", "account:read", false, O),
    ("listUsageReports", "account:read", false, O),
    ("listMemoryFacts", "memory:read", false, O),
    ("listPrompts", "prompt:read", false, O),
    (
        "listScores",
        "score:read",
        false,
        E("INVALID_REQUEST", None),
    ),
    (
        "listScoresForRuns",
        "score:read",
        false,
        E("INVALID_REQUEST", None),
    ),
    (
        "getScoreDetail",
        "score:read",
        false,
        E("INVALID_REQUEST", None),
    ),
    ("listTickets", "ticket:read", false, O),
    (
        "createTicket",
        "ticket:write",
        false,
        E("INVALID_REQUEST", Some("path is required")),
    ),
    (
        "updateTicket",
        "ticket:write",
        false,
        E("INVALID_REQUEST", None),
    ),
    (
        "deleteTicket",
        "ticket:write",
        false,
        E("INVALID_REQUEST", None),
    ),
    (
        "createBrowserSession",
        "run:write",
        false,
        E("InvalidRequest", None),
    ),
    ("browserAct", "run:write", false, E("InvalidRequest", None)),
    (
        "browserContext",
        "run:read",
        false,
        E("InvalidRequest", None),
    ),
    ("browserPick", "run:read", false, E("InvalidRequest", None)),
    (
        "closeBrowserSession",
        "run:write",
        false,
        E("InvalidRequest", None),
    ),
    ("listBrowserSessions", "run:read", false, O),
    // §2: legacy names of canonical methods.
    (
        "runs.create",
        "run:write",
        false,
        E("INVALID_REQUEST", Some("workflow is required")),
    ),
    (
        "runs.get",
        "run:read",
        false,
        E("INVALID_REQUEST", RUN_ID_REQUIRED),
    ),
    ("runs.list", "run:read", false, O),
    (
        "runs.descendants",
        "run:read",
        false,
        E("INVALID_REQUEST", None),
    ),
    (
        "runs.cancel",
        "run:write",
        false,
        E("INVALID_REQUEST", RUN_ID_REQUIRED),
    ),
    (
        "runs.pause",
        "run:write",
        false,
        E("INVALID_REQUEST", RUN_ID_REQUIRED),
    ),
    (
        "approvals.decide",
        "approval:submit",
        false,
        E(
            "INVALID_REQUEST",
            Some("runId, nodeId, and approved are required"),
        ),
    ),
    ("approvals.list", "run:read", false, O),
    ("workflows.list", "run:read", false, O),
    (
        "signals.send",
        "signal:submit",
        false,
        E("INVALID_REQUEST", Some("runId and signalName are required")),
    ),
    (
        "jumpToFrame",
        "run:admin",
        false,
        E("InvalidRunId", RUN_ID_REQUIRED),
    ),
    (
        "devtools.jumpToFrame",
        "run:admin",
        false,
        E("InvalidRunId", RUN_ID_REQUIRED),
    ),
    (
        "devtools.getNodeOutput",
        "run:read",
        false,
        E("InvalidRunId", None),
    ),
    (
        "devtools.getNodeDiff",
        "run:read",
        false,
        E("InvalidRunId", None),
    ),
    ("cron.list", "cron:read", false, O),
    (
        "cron.add",
        "cron:write",
        false,
        E("INVALID_REQUEST", Some("workflow and pattern are required")),
    ),
    (
        "cron.remove",
        "cron:write",
        false,
        E("INVALID_REQUEST", None),
    ),
    (
        "cron.trigger",
        "cron:write",
        false,
        E("INVALID_REQUEST", Some("cronId or workflow is required")),
    ),
    // §2: legacy names with their own handlers (§5), and `approve` (a scope entry, no handler).
    (
        "runs.rerun",
        "run:write",
        false,
        E("INVALID_REQUEST", RUN_ID_REQUIRED),
    ),
    (
        "runs.diff",
        "run:read",
        false,
        E(
            "INVALID_REQUEST",
            Some("leftRunId and rightRunId are required"),
        ),
    ),
    ("frames.list", "run:read", false, E("INVALID_REQUEST", None)),
    ("frames.get", "run:read", false, E("INVALID_REQUEST", None)),
    (
        "attempts.list",
        "run:read",
        false,
        E("INVALID_REQUEST", None),
    ),
    (
        "attempts.get",
        "run:read",
        false,
        E(
            "INVALID_REQUEST",
            Some("runId, nodeId, iteration, and attempt are required"),
        ),
    ),
    (
        "listNodeStates",
        "run:read",
        false,
        E("INVALID_REQUEST", None),
    ),
    ("retryTask", "run:write", false, E("INVALID_REQUEST", None)),
    (
        "approve",
        "approval:submit",
        false,
        E("METHOD_NOT_FOUND", Some("Unknown method: approve")),
    ),
    // Any other name needs run:read (METHODS.md §0 rule 2).
    (
        "noSuchMethod",
        "run:read",
        false,
        E("METHOD_NOT_FOUND", Some("Unknown method: noSuchMethod")),
    ),
];

/// The 14 typed scopes (AUTH.md §4).
const SCOPES: &[&str] = &[
    "run:read",
    "run:write",
    "run:admin",
    "approval:submit",
    "signal:submit",
    "cron:read",
    "cron:write",
    "account:read",
    "memory:read",
    "prompt:read",
    "score:read",
    "ticket:read",
    "ticket:write",
    "observability:read",
];

/// Scopes that satisfy `required` (AUTH.md §4 rule 3: higher ranks of the same family).
fn satisfying(required: &str) -> Vec<&'static str> {
    let above: &[&str] = match required {
        "run:read" => &["run:read", "run:write", "run:admin"],
        "run:write" => &["run:write", "run:admin"],
        "cron:read" => &["cron:read", "cron:write"],
        "ticket:read" => &["ticket:read", "ticket:write"],
        _ => &[],
    };
    SCOPES
        .iter()
        .copied()
        .filter(|scope| *scope == required || above.contains(scope))
        .collect()
}

/// `only:<scope>` holds just that scope; `deny:<scope>` holds every scope that does not satisfy it.
fn scope_tokens() -> Vec<(String, TokenGrant)> {
    let mut tokens = vec![(ADMIN_TOKEN.to_string(), grant("admin", &["*"]))];
    for scope in SCOPES {
        tokens.push((format!("only:{scope}"), grant("member", &[scope])));
        let granted: Vec<&str> = SCOPES
            .iter()
            .copied()
            .filter(|s| !satisfying(scope).contains(s))
            .collect();
        tokens.push((format!("deny:{scope}"), grant("member", &granted)));
    }
    tokens
}

fn start_with_scope_tokens() -> Gateway {
    let tokens = scope_tokens();
    let refs: Vec<(&str, TokenGrant)> = tokens
        .iter()
        .map(|(token, grant)| (token.as_str(), grant.clone()))
        .collect();
    Gateway::start(|config| config.auth = Some(token_auth(&refs)))
}

/// `POST /rpc` as `token`: the status and the frame without its id.
fn http_call(addr: SocketAddr, token: &str, method: &str, params: &Value) -> (u16, Value) {
    let (status, mut frame) = rpc_post(addr, token, method, params.clone());
    if let Some(object) = frame.as_object_mut() {
        object.remove("id");
    }
    (status, frame)
}

/// A WebSocket call: the response frame without its id.
fn ws_call(client: &mut Client, method: &str, params: &Value) -> Value {
    let mut frame = client.request("w1", method, params.clone());
    if let Some(object) = frame.as_object_mut() {
        object.remove("id");
    }
    frame
}

fn status_of(code: &str) -> u16 {
    match code {
        "INVALID_REQUEST" | "InvalidRequest" | "InvalidRunId" => 400,
        "METHOD_NOT_FOUND" => 404,
        other => panic!("no status in the table for {other}"),
    }
}

fn assert_empty_answer(frame: &Value, method: &str, expected: Empty, transport: &str) {
    match expected {
        Empty::Ok => {
            assert_eq!(frame["ok"], true, "{transport} {method}: {frame}");
            assert!(
                frame.get("payload").is_some(),
                "{transport} {method}: a payload, null rather than absent: {frame}"
            );
        }
        Empty::Err(code, message) => {
            assert_eq!(frame["ok"], false, "{transport} {method}: {frame}");
            assert_eq!(
                frame["error"]["code"], code,
                "{transport} {method}: {frame}"
            );
            if let Some(message) = message {
                assert_eq!(
                    frame["error"]["message"], message,
                    "{transport} {method}: {frame}"
                );
            }
        }
    }
}

/// Goal: every name of the catalog reaches a handler (only `approve` and unknown names answer
/// METHOD_NOT_FOUND) and answers `{}` as its table row says, over WebSocket and both HTTP
/// routes; WebSocket-only methods refuse HTTP with the reference's message.
#[test]
fn every_name_is_dispatched_on_every_transport() {
    let gateway = Gateway::start(|_| {});
    let (mut client, _) = Client::connect(gateway.addr);
    let empty = json!({});
    for &(method, _, ws_only, expected) in SURFACE {
        let frame = ws_call(&mut client, method, &empty);
        assert_empty_answer(&frame, method, expected, "ws");

        let (status, frame) = http_call(gateway.addr, ADMIN_TOKEN, method, &empty);
        if ws_only {
            assert_eq!(status, 400, "{method}: {frame}");
            assert_eq!(frame["error"]["code"], "INVALID_REQUEST", "{frame}");
            assert_eq!(
                frame["error"]["message"],
                format!("{method} is only supported over websocket connections"),
                "{frame}"
            );
            continue;
        }
        assert_empty_answer(&frame, method, expected, "POST /rpc");
        match expected {
            Empty::Ok => assert_eq!(status, 200, "{method}: {frame}"),
            Empty::Err(code, _) => assert_eq!(status, status_of(code), "{method}: {frame}"),
        }

        // The per-method route answers exactly as POST /rpc.
        let response = post_json(
            gateway.addr,
            &format!("/v1/rpc/{method}"),
            Some(ADMIN_TOKEN),
            "{}",
        );
        let mut routed = response.json();
        if let Some(object) = routed.as_object_mut() {
            object.remove("id");
        }
        assert_eq!(response.status, status, "/v1/rpc/{method}: {routed}");
        assert_eq!(stable(routed), stable(frame), "/v1/rpc/{method}");
    }
}

/// Goal: for every name and every scope family, a token that lacks the method's scope (it holds
/// every other scope, lower ranks of the same family included) gets FORBIDDEN 403 with
/// `requiredScope`, and a token holding only that scope passes the check, over WebSocket and
/// HTTP.
#[test]
fn every_scope_family_is_enforced_for_every_name() {
    let gateway = start_with_scope_tokens();
    let mut sockets: BTreeMap<String, Client> = BTreeMap::new();
    let empty = json!({});
    for &(method, scope, _, _) in SURFACE {
        let denied = format!("deny:{scope}");
        let allowed = format!("only:{scope}");
        for token in [&denied, &allowed] {
            if !sockets.contains_key(token) {
                let (client, _) = Client::connect_as(gateway.addr, token);
                sockets.insert(token.clone(), client);
            }
        }
        let expected_message = format!("Missing required scope {scope} for {method}");

        let (status, frame) = http_call(gateway.addr, &denied, method, &empty);
        assert_eq!(status, 403, "{method} as {denied}: {frame}");
        assert_eq!(frame["error"]["code"], "FORBIDDEN", "{frame}");
        assert_eq!(frame["error"]["requiredScope"], scope, "{frame}");
        assert_eq!(frame["error"]["message"], expected_message, "{frame}");

        let Some(client) = sockets.get_mut(&denied) else {
            panic!("no socket for {denied}")
        };
        let frame = ws_call(client, method, &empty);
        assert_eq!(frame["error"]["code"], "FORBIDDEN", "ws {method}: {frame}");
        assert_eq!(frame["error"]["requiredScope"], scope, "{frame}");

        let (status, frame) = http_call(gateway.addr, &allowed, method, &empty);
        assert_ne!(status, 403, "{method} as {allowed}: {frame}");
        assert_ne!(frame["error"]["code"], "FORBIDDEN", "{frame}");
        let Some(client) = sockets.get_mut(&allowed) else {
            panic!("no socket for {allowed}")
        };
        let frame = ws_call(client, method, &empty);
        assert_ne!(frame["error"]["code"], "FORBIDDEN", "ws {method}: {frame}");
    }
}

/// Launches `hello` and waits for it to finish; returns its run id.
fn finished_hello(client: &mut Client) -> String {
    let launched = client.launch("hello", json!({"workflow": "hello"}));
    let run_id = launched["runId"].as_str().unwrap_or_default().to_string();
    client.events_until_completed(&run_id);
    run_id
}

/// Goal: every legacy name of §2 answers exactly as its canonical method, byte for byte once the
/// id is removed, for missing params, an unknown run and a real finished run, over WebSocket
/// and HTTP.
#[test]
fn legacy_names_answer_as_their_canonical_method() {
    let gateway = Gateway::start(|_| {});
    let (mut client, _) = Client::connect(gateway.addr);
    let run = finished_hello(&mut client);
    let missing = "no-such-run";
    let aliases: &[(&str, &str, Vec<Value>)] = &[
        (
            "runs.create",
            "launchRun",
            vec![json!({}), json!({"workflow": "no-such-workflow"})],
        ),
        (
            "runs.get",
            "getRun",
            vec![json!({}), json!({"runId": missing}), json!({"runId": run})],
        ),
        (
            "runs.list",
            "listRuns",
            vec![json!({"filter": {"limit": 5}})],
        ),
        (
            "runs.descendants",
            "listRunDescendants",
            vec![json!({}), json!({"runId": missing}), json!({"runId": run})],
        ),
        (
            "runs.cancel",
            "cancelRun",
            vec![json!({}), json!({"runId": missing}), json!({"runId": run})],
        ),
        (
            "runs.pause",
            "pauseRun",
            vec![json!({}), json!({"runId": missing}), json!({"runId": run})],
        ),
        (
            "approvals.decide",
            "submitApproval",
            vec![
                json!({}),
                json!({"runId": missing, "nodeId": "n", "approved": true}),
            ],
        ),
        ("approvals.list", "listApprovals", vec![json!({})]),
        ("workflows.list", "listWorkflows", vec![json!({})]),
        (
            "signals.send",
            "submitSignal",
            vec![json!({}), json!({"runId": missing, "signalName": "s"})],
        ),
        (
            "jumpToFrame",
            "rewindRun",
            vec![
                json!({}),
                json!({"runId": missing, "frameNo": 1, "confirm": true}),
                json!({"runId": run, "frameNo": 99_999, "confirm": true}),
            ],
        ),
        (
            "devtools.jumpToFrame",
            "rewindRun",
            vec![
                json!({}),
                json!({"runId": missing, "frameNo": 1, "confirm": true}),
                json!({"runId": run, "frameNo": 99_999, "confirm": true}),
            ],
        ),
        (
            "devtools.getNodeOutput",
            "getNodeOutput",
            vec![
                json!({}),
                json!({"runId": missing, "nodeId": "greet", "iteration": 0}),
                json!({"runId": run, "nodeId": "greet", "iteration": 0}),
            ],
        ),
        (
            "devtools.getNodeDiff",
            "getNodeDiff",
            vec![
                json!({}),
                json!({"runId": missing, "nodeId": "greet", "iteration": 0}),
            ],
        ),
        ("cron.list", "cronList", vec![json!({})]),
        (
            "cron.add",
            "cronCreate",
            vec![
                json!({}),
                json!({"workflow": "no-such-workflow", "pattern": "0 * * * *"}),
            ],
        ),
        (
            "cron.remove",
            "cronDelete",
            vec![json!({}), json!({"cronId": "no-such-cron"})],
        ),
        ("cron.trigger", "cronRun", vec![json!({})]),
    ];
    for (legacy, canonical, param_sets) in aliases {
        for params in param_sets {
            let legacy_ws = stable(ws_call(&mut client, legacy, params));
            let canonical_ws = stable(ws_call(&mut client, canonical, params));
            assert_eq!(
                legacy_ws, canonical_ws,
                "ws {legacy} vs {canonical} {params}"
            );
            let (legacy_status, legacy_http) = http_call(gateway.addr, ADMIN_TOKEN, legacy, params);
            let (canonical_status, canonical_http) =
                http_call(gateway.addr, ADMIN_TOKEN, canonical, params);
            let legacy_http = (legacy_status, stable(legacy_http));
            let canonical_http = (canonical_status, stable(canonical_http));
            assert_eq!(
                legacy_http, canonical_http,
                "http {legacy} vs {canonical} {params}"
            );
            assert_eq!(
                legacy_http.1, legacy_ws,
                "{legacy} {params}: HTTP and WebSocket answer alike"
            );
        }
    }
}

/// The answer without what moves between two identical calls (derived-state and uptime clocks).
fn stable(mut value: Value) -> Value {
    fn strip(value: &mut Value) {
        match value {
            Value::Object(map) => {
                map.remove("computedAt");
                map.remove("uptimeMs");
                map.values_mut().for_each(strip);
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut value);
    value
}

/// Every event frame received so far: the client's backlog, drained in arrival order.
fn drain_events(client: &mut Client, into: &mut Vec<Value>) {
    into.extend(
        client
            .backlog
            .drain(..)
            .filter(|frame| frame["type"] == "event"),
    );
}

/// The example workflows plus `long`, a task that runs until cancelled.
fn examples_and_long() -> std::path::PathBuf {
    let dir = temp_dir("surface-workflows");
    let examples = example_workflows();
    let entries = std::fs::read_dir(&examples).unwrap_or_else(|e| panic!("{e}"));
    for entry in entries.flatten() {
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap_or_else(|e| panic!("{e}"));
    }
    write_workflow(
        &dir,
        "pausable",
        "[[nodes]]\nkind = \"task\"\nid = \"first\"\nrun = [\"sh\", \"-c\", \"sleep 3; echo '{}'\"]\n\n[[nodes]]\nkind = \"task\"\nid = \"second\"\noutput = { done = true }\n",
    );
    write_workflow(
        &dir,
        "fails",
        "[[nodes]]\nkind = \"task\"\nid = \"boom\"\nrun = [\"sh\", \"-c\", \"exit 3\"]\n",
    );
    write_workflow(
        &dir,
        "long",
        "[[nodes]]\nkind = \"task\"\nid = \"wait\"\nrun = [\"sleep\", \"60\"]\n",
    );
    dir
}

/// Goal: one socket drives runs through launch, pause and resume, approval, signal and cancel
/// while it calls every read method of the surface between them; across every event it
/// receives (all runs interleaved) seq strictly increases and stateVersion never decreases,
/// and `health.stateVersion` is never behind an event already received.
#[test]
fn seq_and_state_version_are_monotonic_across_the_surface() {
    let config = GatewayConfig {
        auth: Some(token_auth(&[(ADMIN_TOKEN, grant("admin", &["*"]))])),
        ..GatewayConfig::default()
    };
    let workflows = examples_and_long();
    let gateway = Gateway::start_full(config, 1, &workflows, &temp_dir("data"));
    let (mut client, _) = Client::connect(gateway.addr);
    let mut events = Vec::new();
    let mut completed = Vec::new();

    let hello = client.launch("l1", json!({"workflow": "hello"}))["runId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let approve = client.launch("l2", json!({"workflow": "approve"}))["runId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let signal = client.launch("l3", json!({"workflow": "signal"}))["runId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let long = client.launch("l4", json!({"workflow": "long"}))["runId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    // Paused while its first task runs (3 s), resumed once paused.
    let pausable = client.launch("l5", json!({"workflow": "pausable"}))["runId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let paused = client.request("p", "pauseRun", json!({"runId": pausable}));
    assert_eq!(
        paused["payload"],
        json!({"runId": pausable, "status": "pausing"}),
        "{paused}"
    );
    drain_events(&mut client, &mut events);
    let reads: Vec<(&str, Value)> = vec![
        ("health", json!({})),
        ("getRun", json!({"runId": hello})),
        ("listRuns", json!({})),
        ("listRunDescendants", json!({"runId": hello})),
        ("listRunTokenUsage", json!({"runId": hello})),
        ("getSchemaSignature", json!({})),
        ("listWorkflows", json!({})),
        ("listApprovals", json!({})),
        ("listDocs", json!({})),
        ("getDevToolsSnapshot", json!({"runId": approve})),
        (
            "getNodeOutput",
            json!({"runId": hello, "nodeId": "greet", "iteration": 0}),
        ),
        ("whatHappened", json!({"runId": hello})),
        ("cronList", json!({})),
        ("listAccounts", json!({})),
        ("listUsageReports", json!({})),
        ("listMemoryFacts", json!({})),
        ("listPrompts", json!({})),
        ("listScores", json!({"runId": hello})),
        ("listTickets", json!({})),
        ("listBrowserSessions", json!({})),
        ("frames.list", json!({"runId": approve})),
        ("attempts.list", json!({"runId": approve})),
        ("listNodeStates", json!({"runId": approve})),
    ];
    let mut last_health_version = 0;
    let mut check_reads = |client: &mut Client, events: &mut Vec<Value>| {
        for (method, params) in &reads {
            let response = client.request("r", method, params.clone());
            assert_eq!(response["ok"], true, "{method}: {response}");
            drain_events(client, events);
            if *method == "health" {
                let version = response["payload"]["stateVersion"].as_u64().unwrap_or(0);
                let newest_event = events
                    .iter()
                    .filter_map(|e| e["stateVersion"].as_u64())
                    .max()
                    .unwrap_or(0);
                assert!(version >= last_health_version, "health stateVersion fell");
                assert!(
                    version >= newest_event,
                    "health stateVersion {version} behind an event's {newest_event}"
                );
                last_health_version = version;
            }
        }
    };
    check_reads(&mut client, &mut events);

    // Drive the waiting runs: approve, signal, cancel the long one.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !events
        .iter()
        .any(|e| e["event"] == "approval.requested" && e["payload"]["runId"] == approve)
    {
        assert!(Instant::now() < deadline, "no approval.requested");
        let event = client.next_event();
        events.push(event);
    }
    let decided = client.request(
        "a",
        "submitApproval",
        json!({"runId": approve, "nodeId": "ship-it", "approved": true}),
    );
    assert_eq!(decided["ok"], true, "{decided}");
    drain_events(&mut client, &mut events);
    check_reads(&mut client, &mut events);
    let sent = client.request(
        "s",
        "submitSignal",
        json!({"runId": signal, "signalName": "qa-passed", "data": {"ok": true}}),
    );
    assert_eq!(sent["ok"], true, "{sent}");
    drain_events(&mut client, &mut events);
    let cancelled = client.request("c", "cancelRun", json!({"runId": long}));
    assert_eq!(cancelled["ok"], true, "{cancelled}");
    drain_events(&mut client, &mut events);
    check_reads(&mut client, &mut events);

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let run = client.request("g", "getRun", json!({"runId": pausable}));
        drain_events(&mut client, &mut events);
        if run["payload"]["status"] == "paused" {
            break;
        }
        assert!(Instant::now() < deadline, "never paused: {run}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let resumed = client.request("r", "resumeRun", json!({"runId": pausable}));
    assert_eq!(
        resumed["payload"]["status"], "resume_requested",
        "{resumed}"
    );
    drain_events(&mut client, &mut events);

    for event in &events {
        if event["event"] == "run.completed" {
            completed.push(event["payload"]["runId"].clone());
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while [&hello, &approve, &signal, &long, &pausable]
        .iter()
        .any(|run| !completed.contains(&json!(run)))
    {
        assert!(
            Instant::now() < deadline,
            "runs not completed: {completed:?}"
        );
        let event = client.next_event();
        if event["event"] == "run.completed" {
            completed.push(event["payload"]["runId"].clone());
        }
        events.push(event);
    }

    let mut last_seq = 0;
    let mut last_version = 0;
    for event in &events {
        let seq = event["seq"]
            .as_u64()
            .unwrap_or_else(|| panic!("event without seq: {event}"));
        let version = event["stateVersion"]
            .as_u64()
            .unwrap_or_else(|| panic!("event without stateVersion: {event}"));
        assert!(seq > last_seq, "seq {seq} after {last_seq}: {event}");
        assert!(
            version >= last_version,
            "stateVersion {version} after {last_version}: {event}"
        );
        last_seq = seq;
        last_version = version;
    }
    // Every run's terminal status is what its driver asked for.
    for (run, status) in [
        (&hello, "finished"),
        (&approve, "finished"),
        (&signal, "finished"),
        (&long, "cancelled"),
        (&pausable, "finished"),
    ] {
        let got = client.request("g", "getRun", json!({"runId": run}));
        assert_eq!(got["payload"]["status"], status, "{run}: {got}");
    }
    let _ = std::fs::remove_dir_all(&workflows);
    // The tour crossed every kind of transition it drove.
    let names: std::collections::BTreeSet<&str> =
        events.iter().filter_map(|e| e["event"].as_str()).collect();
    for name in [
        "node.started",
        "node.finished",
        "approval.requested",
        "approval.decided",
        "node.cancelled",
        "run.completed",
    ] {
        assert!(names.contains(name), "no {name} in the tour: {names:?}");
    }
}

/// A small deterministic generator (xorshift64*), so a failing case can be replayed by seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Every parameter name the catalog reads anywhere, so each method meets its own keys.
const PARAM_KEYS: &[&str] = &[
    "runId",
    "nodeId",
    "iteration",
    "attempt",
    "frameNo",
    "confirm",
    "force",
    "noRevert",
    "afterSeq",
    "fromSeq",
    "limit",
    "offset",
    "filter",
    "workflow",
    "input",
    "options",
    "pattern",
    "cronId",
    "enabled",
    "approved",
    "decision",
    "note",
    "signalName",
    "correlationKey",
    "correlationId",
    "data",
    "payload",
    "path",
    "content",
    "kind",
    "status",
    "runIds",
    "scoreId",
    "scorerId",
    "scorerName",
    "source",
    "order",
    "sessionId",
    "actionId",
    "action",
    "expectedRevision",
    "sinceRevision",
    "include",
    "point",
    "viewport",
    "namespace",
    "fresh",
    "leftRunId",
    "rightRunId",
    "newRunId",
    "resetDependents",
    "afterFrameNo",
    "includeDeleted",
    "updatedAfterMs",
    "hasUi",
    "includeSystem",
    "parentRunId",
];

/// A value of any JSON type, biased toward what validators must tell apart: real ids, empty
/// and oversized strings, negative, fractional and huge numbers, nesting.
fn random_value(rng: &mut Rng, run_id: &str, depth: usize) -> Value {
    let strings = [
        run_id.to_string(),
        String::new(),
        "hello".into(),
        "greet".into(),
        "0 * * * *".into(),
        "no-such-run".into(),
        "x".repeat(300),
        "../../etc/passwd".into(),
        "Ünï©ødé 🙂".into(),
        "12".into(),
        "-1".into(),
        "gateway:hello".into(),
    ];
    match rng.below(if depth > 2 { 6 } else { 8 }) {
        0 => Value::Null,
        1 => json!(rng.below(2) == 0),
        2 => strings[rng.below(strings.len())].clone().into(),
        3 => strings[rng.below(strings.len())].clone().into(),
        4 => [
            json!(0),
            json!(1),
            json!(-1),
            json!(1.5),
            json!(2_147_483_648_i64),
            json!(9_007_199_254_740_993_i64),
            json!(1e300),
            json!(u64::MAX),
        ][rng.below(8)]
        .clone(),
        5 => json!(rng.below(4)),
        6 => Value::Array(
            (0..rng.below(4))
                .map(|_| random_value(rng, run_id, depth + 1))
                .collect(),
        ),
        _ => random_params(rng, run_id, depth + 1),
    }
}

fn random_params(rng: &mut Rng, run_id: &str, depth: usize) -> Value {
    let mut map = serde_json::Map::new();
    for _ in 0..rng.below(6) {
        let key = PARAM_KEYS[rng.below(PARAM_KEYS.len())];
        map.insert(key.to_string(), random_value(rng, run_id, depth));
    }
    Value::Object(map)
}

/// A valid call of `method` on the finished run `run` (unknown ids where none can be valid), the
/// starting point the random cases mutate, so they reach past each method's first check.
fn valid_params(method: &str, run: &str) -> Value {
    match method {
        "launchRun" | "runs.create" => json!({"workflow": "hello", "input": {"n": 1}}),
        "rewindRun" | "jumpToFrame" | "devtools.jumpToFrame" => {
            json!({"runId": run, "frameNo": 1, "confirm": true})
        }
        "submitApproval" | "approvals.decide" => {
            json!({"runId": run, "nodeId": "greet", "approved": true, "note": "n"})
        }
        "submitSignal" | "signals.send" => {
            json!({"runId": run, "signalName": "s", "correlationId": "c", "data": {}})
        }
        "getNodeOutput" | "getNodeDiff" | "devtools.getNodeOutput" | "devtools.getNodeDiff" => {
            json!({"runId": run, "nodeId": "greet", "iteration": 0})
        }
        "attempts.get" => json!({"runId": run, "nodeId": "greet", "iteration": 0, "attempt": 1}),
        "retryTask" => json!({"runId": run, "nodeId": "greet", "resetDependents": true}),
        "whatHappened" => json!({"runId": run, "nodeId": "greet", "iteration": 0}),
        "runs.diff" => json!({"leftRunId": run, "rightRunId": run}),
        "cronCreate" | "cron.add" => json!({"workflow": "hello", "pattern": "0 * * * *"}),
        "cronDelete" | "cron.remove" => json!({"cronId": "gateway:nightly"}),
        "cronRun" | "cron.trigger" => json!({"workflow": "hello", "input": {}}),
        "listScoresForRuns" => json!({"runIds": [run], "limit": 10, "order": "scoredAtDesc"}),
        "getScoreDetail" => json!({"runId": run, "scoreId": "s"}),
        "createTicket" | "updateTicket" => {
            json!({"path": "t.md", "content": "c", "kind": "ticket"})
        }
        "deleteTicket" => json!({"path": "t.md"}),
        "listDocs" | "listTickets" => json!({"kind": "ticket", "includeDeleted": true}),
        "frames.list" => json!({"runId": run, "limit": 5, "afterFrameNo": 1}),
        "frames.get" => json!({"runId": run, "frameNo": 1}),
        "streamDevTools" => json!({"runId": run, "fromSeq": 0}),
        "createBrowserSession" => json!({"source": "https://example.com"}),
        "browserAct" => json!({"sessionId": "s", "actionId": "a", "action": {"kind": "click"}}),
        "browserContext" | "closeBrowserSession" => json!({"sessionId": "s"}),
        "browserPick" => json!({"sessionId": "s", "point": {"x": 1, "y": 1}}),
        "listBrowserSessions"
        | "health"
        | "getSchemaSignature"
        | "listAccounts"
        | "listUsageReports"
        | "listPrompts"
        | "listMemoryFacts"
        | "listWorkflows"
        | "workflows.list"
        | "listApprovals"
        | "approvals.list"
        | "cronList"
        | "cron.list"
        | "listRuns"
        | "runs.list"
        | "approve"
        | "noSuchMethod" => json!({}),
        _ => json!({"runId": run}),
    }
}

/// `valid` with one to three keys (its own or any the catalog reads) replaced by random values
/// or removed.
fn mutate(rng: &mut Rng, valid: &Value, run: &str) -> Value {
    let mut params = valid.clone();
    let own: Vec<String> = valid
        .as_object()
        .map(|map| map.keys().cloned().collect())
        .unwrap_or_default();
    let Some(map) = params.as_object_mut() else {
        return params;
    };
    for _ in 0..1 + rng.below(3) {
        let key = if !own.is_empty() && rng.below(4) != 0 {
            own[rng.below(own.len())].clone()
        } else {
            PARAM_KEYS[rng.below(PARAM_KEYS.len())].to_string()
        };
        if rng.below(5) == 0 {
            map.remove(&key);
        } else {
            map.insert(key, random_value(rng, run, 0));
        }
    }
    params
}

/// Goal: no parameters a peer can send break a method. For every name of the catalog, a valid
/// call, 48 seeded mutations of it, 16 random parameter sets and four non-object params get a
/// well-formed answer on WebSocket and HTTP: a payload, or an error whose code is one of ours
/// with the HTTP status our table gives it; a 500 comes only from the methods documented to
/// answer one; and the server still answers `health` afterwards with its data intact.
#[test]
fn random_params_never_break_a_method() {
    let gateway = Gateway::start(|_| {});
    let (mut client, _) = Client::connect(gateway.addr);
    let run = finished_hello(&mut client);
    let codes: BTreeMap<&str, u16> = smithers_gateway::error::ErrorCode::ALL
        .iter()
        .map(|code| (code.as_str(), code.http_status()))
        .collect();
    // Methods whose 500s are documented (METHODS.md, DECISIONS.md), with the codes they use.
    let allowed_500 = |method: &str, code: &str| -> bool {
        matches!(
            (method, code),
            (
                "createBrowserSession"
                    | "browserAct"
                    | "browserContext"
                    | "browserPick"
                    | "closeBrowserSession",
                "Internal"
            ) | ("cronRun" | "cron.trigger", "SERVER_ERROR")
                | (
                    "rewindRun" | "jumpToFrame" | "devtools.jumpToFrame",
                    "RewindFailed"
                )
                | ("getRunDiff", "VcsError")
        )
    };
    let mut rng = Rng(0x5eed_f5ee_d5ee);
    let mut answered = 0;
    for &(method, _, ws_only, _) in SURFACE {
        let valid = valid_params(method, &run);
        let mut cases: Vec<Value> = vec![
            json!(null),
            json!([1, 2]),
            json!("text"),
            json!(7),
            valid.clone(),
        ];
        cases.extend((0..16).map(|_| random_params(&mut rng, &run, 0)));
        cases.extend((0..48).map(|_| mutate(&mut rng, &valid, &run)));
        for params in &cases {
            let frame = ws_call(&mut client, method, params);
            match frame["ok"].as_bool() {
                Some(true) => assert!(frame.get("payload").is_some(), "{method} {params}: {frame}"),
                Some(false) => {
                    let code = frame["error"]["code"].as_str().unwrap_or_default();
                    let status = codes
                        .get(code)
                        .copied()
                        .unwrap_or_else(|| panic!("ws {method} {params}: unknown code in {frame}"));
                    assert!(
                        status != 500 || allowed_500(method, code),
                        "ws {method} {params}: unexpected 500 {frame}"
                    );
                    assert!(
                        frame["error"]["message"]
                            .as_str()
                            .is_some_and(|m| !m.is_empty()),
                        "ws {method} {params}: {frame}"
                    );
                }
                None => panic!("ws {method} {params}: not a response: {frame}"),
            }
            answered += 1;
            if ws_only {
                continue;
            }
            let (status, frame) = http_call(gateway.addr, ADMIN_TOKEN, method, params);
            if frame["ok"] == true {
                assert_eq!(status, 200, "http {method} {params}: {frame}");
            } else {
                let code = frame["error"]["code"].as_str().unwrap_or_default();
                assert_eq!(
                    codes.get(code).copied(),
                    Some(status),
                    "http {method} {params}: the status of {code} is the table's: {frame}"
                );
                assert!(
                    status != 500 || allowed_500(method, code),
                    "http {method} {params}: unexpected 500 {frame}"
                );
            }
            answered += 1;
        }
    }
    assert!(
        answered > 2 * 64 * SURFACE.len() - 200,
        "answered {answered}"
    );
    let health = client.request("h", "health", json!({}));
    assert_eq!(health["ok"], true, "{health}");
    let got = client.request("g", "getRun", json!({"runId": run}));
    assert_eq!(got["payload"]["runId"], run.as_str(), "{got}");
}

fn run_id_of(payload: &Value) -> String {
    payload["runId"]
        .as_str()
        .unwrap_or_else(|| panic!("no runId in {payload}"))
        .to_string()
}

/// Reads `client` until `run` completes; returns that `run.completed` payload.
fn completed(client: &mut Client, run: &str) -> Value {
    client
        .events_until_completed(run)
        .last()
        .map(|event| event["payload"].clone())
        .unwrap_or_default()
}

/// Polls `getRun` until `run` has `status` (bounded).
fn wait_status(client: &mut Client, run: &str, status: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = client.request("ws", "getRun", json!({"runId": run}));
        if got["payload"]["status"] == status {
            return;
        }
        assert!(Instant::now() < deadline, "{run} never {status}: {got}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Goal: the auto-subscribe rules of PROTOCOL.md §13 per method. A socket filtered to an
/// unrelated run receives a run's events after `launchRun`, `cronRun`, `runs.rerun` (always)
/// and after `submitApproval`, `submitSignal`, `resumeRun`, `retryTask` restart it; it receives
/// nothing of runs it only cancelled or never touched.
#[test]
fn auto_subscribe_follows_the_methods_that_restart_a_run() {
    let config = GatewayConfig {
        auth: Some(token_auth(&[(ADMIN_TOKEN, grant("admin", &["*"]))])),
        ..GatewayConfig::default()
    };
    let workflows = examples_and_long();
    let gateway = Gateway::start_full(config, 1, &workflows, &temp_dir("data"));
    let mut filtered = {
        let mut ws = ws_open(gateway.addr);
        let mut params = connect_params(Some(ADMIN_TOKEN));
        params["subscribe"] = json!(["some-other-run"]);
        let hello = request(&mut ws, "c", "connect", params);
        assert_eq!(hello["ok"], true, "{hello}");
        Client {
            ws,
            backlog: Default::default(),
        }
    };
    let (mut driver, _) = Client::connect(gateway.addr);

    // Always: launchRun, cronRun, runs.rerun.
    let launched = run_id_of(&filtered.launch("l", json!({"workflow": "hello"})));
    assert_eq!(completed(&mut filtered, &launched)["status"], "finished");
    let cron = filtered.request("cr", "cronRun", json!({"workflow": "hello"}));
    let cron_run = run_id_of(&cron["payload"]);
    assert_eq!(completed(&mut filtered, &cron_run)["status"], "finished");
    let original = run_id_of(&driver.launch("o", json!({"workflow": "hello"})));
    completed(&mut driver, &original);
    let rerun = filtered.request("rr", "runs.rerun", json!({"runId": original}));
    let rerun_id = run_id_of(&rerun["payload"]);
    assert_eq!(completed(&mut filtered, &rerun_id)["status"], "finished");

    // When the call restarts the run: submitApproval, submitSignal, resumeRun, retryTask.
    let approve = run_id_of(&driver.launch("a", json!({"workflow": "approve"})));
    driver.wait_event(&approve, "approval.requested");
    let decided = filtered.request(
        "d",
        "submitApproval",
        json!({"runId": approve, "nodeId": "ship-it", "approved": true}),
    );
    assert_eq!(decided["ok"], true, "{decided}");
    assert_eq!(completed(&mut filtered, &approve)["status"], "finished");

    let signal = run_id_of(&driver.launch("s", json!({"workflow": "signal"})));
    wait_status(&mut driver, &signal, "waiting-event");
    let sent = filtered.request(
        "sg",
        "submitSignal",
        json!({"runId": signal, "signalName": "qa-passed", "data": {}}),
    );
    assert_eq!(sent["ok"], true, "{sent}");
    assert_eq!(completed(&mut filtered, &signal)["status"], "finished");

    let pausable = run_id_of(&driver.launch("p", json!({"workflow": "pausable"})));
    let paused = driver.request("pp", "pauseRun", json!({"runId": pausable}));
    assert_eq!(paused["ok"], true, "{paused}");
    wait_status(&mut driver, &pausable, "paused");
    let resumed = filtered.request("rs", "resumeRun", json!({"runId": pausable}));
    assert_eq!(
        resumed["payload"]["status"], "resume_requested",
        "{resumed}"
    );
    assert_eq!(completed(&mut filtered, &pausable)["status"], "finished");

    let failing = run_id_of(&driver.launch("f", json!({"workflow": "fails"})));
    assert_eq!(completed(&mut driver, &failing)["status"], "failed");
    let retried = filtered.request(
        "rt",
        "retryTask",
        json!({"runId": failing, "nodeId": "boom"}),
    );
    assert_eq!(retried["payload"]["status"], "retry_requested", "{retried}");
    assert_eq!(completed(&mut filtered, &failing)["status"], "failed");

    // Not restarted by the filtered socket: cancelled by it, or never touched.
    let long = run_id_of(&driver.launch("lg", json!({"workflow": "long"})));
    driver.wait_event(&long, "node.started");
    let cancelled = filtered.request("cx", "cancelRun", json!({"runId": long}));
    assert_eq!(cancelled["payload"]["won"], true, "{cancelled}");
    assert_eq!(completed(&mut driver, &long)["status"], "cancelled");
    let untouched = run_id_of(&driver.launch("u", json!({"workflow": "hello"})));
    completed(&mut driver, &untouched);
    // One worker: the hub queued any event for the filtered socket before this response.
    let health = filtered.request("h", "health", json!({}));
    assert_eq!(health["ok"], true, "{health}");
    let leaked: Vec<&Value> = filtered
        .backlog
        .iter()
        .filter(|e| {
            e["payload"]["runId"] == long.as_str() || e["payload"]["runId"] == untouched.as_str()
        })
        .collect();
    assert!(
        leaked.is_empty(),
        "events of runs the socket did not restart: {leaked:?}"
    );
    let _ = std::fs::remove_dir_all(&workflows);
}
