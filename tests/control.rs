//! Run control end to end (METHODS.md §3.5, §3.6, §5.1, §5.6; REWIND.md): `pauseRun` and
//! `runs.pause` (a slow run pauses after its in-flight task, resumes, and stays paused across a
//! restart), `hijackRun` (no state change, no event), `rewindRun` and its legacy names (stage A
//! and B checks in order, owner-or-admin with its audit row, the quota, the latest-frame no-op,
//! the refusal of an earlier frame), `retryTask` (a failed task retried to completion, resets of
//! what ran after it, RUN_ACTIVE) and `runs.rerun` (same workflow, same input). Every call is
//! also checked for its scope; HTTP answers carry the spec's statuses.

use crate::support::*;
use serde_json::{json, Value};
use smithers_gateway::config::{GatewayConfig, TokenGrant};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Longest any wait for a run state takes before the test gives up.
const WAIT: Duration = Duration::from_secs(30);
const READER_TOKEN: &str = "reader-token-0123456789";
const WRITER_TOKEN: &str = "writer-token-0123456789";
/// run:admin without the admin role, user `bob` (not an owner of the admin's runs).
const BOB_TOKEN: &str = "bob-token-0123456789";
/// run:admin and run:write without the admin role, user `carol`.
const CAROL_TOKEN: &str = "carol-token-0123456789";

fn user_grant(role: &str, scopes: &[&str], user: &str) -> TokenGrant {
    TokenGrant {
        user_id: Some(user.into()),
        ..grant(role, scopes)
    }
}

fn config() -> GatewayConfig {
    GatewayConfig {
        auth: Some(token_auth(&[
            (ADMIN_TOKEN, grant("admin", &["*"])),
            (READER_TOKEN, grant("operator", &["run:read"])),
            (WRITER_TOKEN, grant("operator", &["run:read", "run:write"])),
            (
                BOB_TOKEN,
                user_grant("operator", &["run:read", "run:admin"], "bob"),
            ),
            (
                CAROL_TOKEN,
                user_grant("operator", &["run:read", "run:write", "run:admin"], "carol"),
            ),
        ])),
        ..GatewayConfig::default()
    }
}

/// The example workflows plus `extra`, in a fresh directory.
fn workflows_with(extra: &[(&str, &str)]) -> PathBuf {
    let dir = temp_dir("wf");
    for entry in std::fs::read_dir(example_workflows()).unwrap_or_else(|e| panic!("{e}")) {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        if path.extension().is_some_and(|e| e == "toml") {
            if let Some(name) = path.file_name() {
                std::fs::copy(&path, dir.join(name)).unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }
    for (name, text) in extra {
        write_workflow(&dir, name, text);
    }
    dir
}

fn start(extra: &[(&str, &str)]) -> Gateway {
    Gateway::start_full(config(), 1, &workflows_with(extra), &temp_dir("data"))
}

fn fresh_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn call(client: &mut Client, method: &str, params: Value) -> Value {
    client.request(&fresh_id(), method, params)
}

/// `POST /v1/rpc/<method>` with the params as the body: the status and the frame.
fn http_call_v1(addr: SocketAddr, token: &str, method: &str, params: Value) -> (u16, Value) {
    let response = post_json(
        addr,
        &format!("/v1/rpc/{method}"),
        Some(token),
        &params.to_string(),
    );
    (response.status, response.json())
}

/// Asserts an error answer over HTTP: status, code, message.
fn assert_error(
    addr: SocketAddr,
    token: &str,
    method: &str,
    params: Value,
    expected: (u16, &str, &str),
) -> Value {
    let (status, frame) = rpc_post(addr, token, method, params.clone());
    assert_eq!(frame["ok"], false, "{method} {params}: {frame}");
    assert_eq!(
        (
            status,
            frame["error"]["code"].as_str().unwrap_or_default(),
            frame["error"]["message"].as_str().unwrap_or_default(),
        ),
        expected,
        "{method} {params}: {frame}"
    );
    frame
}

fn assert_forbidden(addr: SocketAddr, token: &str, method: &str, scope: &str) {
    let frame = assert_error(
        addr,
        token,
        method,
        json!({"runId": "r"}),
        (
            403,
            "FORBIDDEN",
            &format!("Missing required scope {scope} for {method}"),
        ),
    );
    assert_eq!(frame["error"]["requiredScope"], scope, "{frame}");
}

fn get_run(client: &mut Client, run_id: &str) -> Value {
    ok_payload(&call(client, "getRun", json!({"runId": run_id})))
}

/// Polls getRun until the run has `status`.
fn wait_status(client: &mut Client, run_id: &str, status: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let run = get_run(client, run_id);
        if run["status"] == status {
            return run;
        }
        assert!(Instant::now() < deadline, "run never {status}: {run}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn launch(client: &mut Client, workflow: &str, input: Value) -> String {
    let launched = client.launch(&fresh_id(), json!({"workflow": workflow, "input": input}));
    launched["runId"].as_str().unwrap_or_default().to_string()
}

/// Launches `workflow` and waits for its `run.completed`; returns the run id.
fn run_to_end(client: &mut Client, workflow: &str) -> String {
    let run_id = launch(client, workflow, json!({}));
    client.events_until_completed(&run_id);
    run_id
}

/// A read-only view of the gateway's database (WAL: readable while it writes).
fn open_db(data_dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(
        data_dir.join(smithers_gateway::gateway::DATABASE_FILE),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap_or_else(|e| panic!("open db: {e}"))
}

fn query_i64(data_dir: &Path, sql: &str, run_id: &str) -> i64 {
    open_db(data_dir)
        .query_row(sql, [run_id], |row| row.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn event_count(data_dir: &Path, run_id: &str) -> i64 {
    query_i64(
        data_dir,
        "SELECT count(*) FROM _smithers_events WHERE run_id = ?1",
        run_id,
    )
}

/// `(node_id, iteration, state)` of every node row, by node id.
fn node_states(data_dir: &Path, run_id: &str) -> Vec<(String, i64, String)> {
    let db = open_db(data_dir);
    let mut statement = db
        .prepare("SELECT node_id, iteration, state FROM _smithers_nodes WHERE run_id = ?1 ORDER BY node_id, iteration")
        .unwrap_or_else(|e| panic!("{e}"));
    let rows = statement
        .query_map([run_id], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .unwrap_or_else(|e| panic!("{e}"));
    rows.map(|r| r.unwrap_or_else(|e| panic!("{e}"))).collect()
}

/// `(attempt, state)` of a node's attempts, by attempt.
fn attempts(data_dir: &Path, run_id: &str, node_id: &str) -> Vec<(i64, String)> {
    let db = open_db(data_dir);
    let mut statement = db
        .prepare("SELECT attempt, state FROM _smithers_attempts WHERE run_id = ?1 AND node_id = ?2 ORDER BY attempt")
        .unwrap_or_else(|e| panic!("{e}"));
    let rows = statement
        .query_map([run_id, node_id], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap_or_else(|e| panic!("{e}"));
    rows.map(|r| r.unwrap_or_else(|e| panic!("{e}"))).collect()
}

/// `(from_frame_no, to_frame_no, caller, result)` of a run's audit rows, oldest first.
fn audit_rows(data_dir: &Path, run_id: &str) -> Vec<(i64, i64, String, String)> {
    let db = open_db(data_dir);
    let mut statement = db
        .prepare("SELECT from_frame_no, to_frame_no, caller, result FROM _smithers_time_travel_audit WHERE run_id = ?1 ORDER BY id")
        .unwrap_or_else(|e| panic!("{e}"));
    let rows = statement
        .query_map([run_id], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })
        .unwrap_or_else(|e| panic!("{e}"));
    rows.map(|r| r.unwrap_or_else(|e| panic!("{e}"))).collect()
}

fn latest_frame(data_dir: &Path, run_id: &str) -> i64 {
    query_i64(
        data_dir,
        "SELECT max(frame_no) FROM _smithers_frames WHERE run_id = ?1",
        run_id,
    )
}

// ---- pauseRun ----

/// Goal: a running `slow` run pauses after its in-flight task (later tasks never start), stays
/// paused, refuses a second pause, and resumes to completion; `runs.pause` is the same handler.
#[test]
fn pause_then_resume_a_slow_run() {
    let gateway = start(&[]);
    let (mut client, _) = Client::connect(gateway.addr);
    for method in ["pauseRun", "runs.pause"] {
        let run_id = launch(&mut client, "slow", json!({}));
        client.wait_event(&run_id, "node.finished");
        client.wait_event(&run_id, "node.started");
        let paused = ok_payload(&call(&mut client, method, json!({"runId": run_id})));
        assert_eq!(paused, json!({"runId": run_id, "status": "pausing"}));
        let run = wait_status(&mut client, &run_id, "paused");
        assert!(run["pauseRequestedAtMs"].is_i64(), "{run}");
        assert_eq!(run["runState"]["state"], "paused", "{run}");
        // The task in flight at the pause finished; nothing after it started.
        let nodes = node_states(&gateway.data_dir, &run_id);
        assert!((2..5).contains(&nodes.len()), "{nodes:?}");
        assert!(
            nodes.iter().all(|(_, _, state)| state == "finished"),
            "{nodes:?}"
        );
        assert!(nodes.iter().any(|(id, _, _)| id == "step-2"), "{nodes:?}");
        assert_eq!(run["summary"], json!({"finished": nodes.len()}), "{run}");
        assert_error(
            gateway.addr,
            ADMIN_TOKEN,
            method,
            json!({"runId": run_id}),
            (409, "RUN_NOT_ACTIVE", "Run is not currently executing"),
        );

        let resumed = ok_payload(&call(&mut client, "resumeRun", json!({"runId": run_id})));
        assert_eq!(resumed["status"], "resume_requested");
        let events = client.events_until_completed(&run_id);
        let last = events.last().cloned().unwrap_or_default();
        assert_eq!(last["payload"]["status"], "finished", "{events:?}");
        let run = get_run(&mut client, &run_id);
        assert_eq!(run["status"], "finished");
        assert_eq!(run["pauseRequestedAtMs"], Value::Null);
        assert_eq!(run["summary"], json!({"finished": 5}), "{run}");
    }
}

/// Goal: pauseRun's checks in order with the exact codes, messages and statuses; scope.
#[test]
fn pause_validation_and_scope() {
    let gateway = start(&[]);
    let (mut client, _) = Client::connect(gateway.addr);
    let finished = run_to_end(&mut client, "hello");
    for method in ["pauseRun", "runs.pause"] {
        let cases = [
            (
                json!({}),
                (400, "INVALID_REQUEST", "runId is required".to_string()),
            ),
            (
                json!({"runId": ""}),
                (400, "INVALID_REQUEST", "runId is required".to_string()),
            ),
            (
                json!({"runId": 7}),
                (400, "INVALID_REQUEST", "runId is required".to_string()),
            ),
            (
                json!({"runId": "missing"}),
                (404, "RunNotFound", "Run not found".to_string()),
            ),
            (
                json!({"runId": finished}),
                (
                    409,
                    "RUN_NOT_ACTIVE",
                    "Run is not currently executing".to_string(),
                ),
            ),
        ];
        for (params, (status, code, message)) in cases {
            assert_error(
                gateway.addr,
                ADMIN_TOKEN,
                method,
                params,
                (status, code, &message),
            );
        }
        assert_forbidden(gateway.addr, READER_TOKEN, method, "run:write");
    }
}

/// Goal: the pause request is durable: a run paused before a restart is still paused after it
/// (while the engine has run other work), with the same nodes, and resumes to completion.
#[test]
fn paused_run_stays_paused_across_restart() {
    let workflows = workflows_with(&[]);
    let data = temp_dir("data");
    let mut gateway = Gateway::start_full(config(), 1, &workflows, &data);
    let (mut client, _) = Client::connect(gateway.addr);
    let run_id = launch(&mut client, "slow", json!({}));
    client.wait_event(&run_id, "node.started");
    ok_payload(&call(&mut client, "pauseRun", json!({"runId": run_id})));
    wait_status(&mut client, &run_id, "paused");
    let before = node_states(&data, &run_id);
    drop(client);
    gateway.stop();

    let gateway = Gateway::start_full(config(), 1, &workflows, &data);
    let (mut client, _) = Client::connect(gateway.addr);
    // Engine turns after the recovery: a whole other run.
    run_to_end(&mut client, "hello");
    let run = get_run(&mut client, &run_id);
    assert_eq!(run["status"], "paused", "{run}");
    assert_eq!(node_states(&data, &run_id), before);
    ok_payload(&call(&mut client, "resumeRun", json!({"runId": run_id})));
    wait_status(&mut client, &run_id, "finished");
    assert_eq!(node_states(&data, &run_id).len(), 5);
}

// ---- hijackRun ----

/// Goal: hijackRun answers a fresh v4 session id and changes nothing: the run row and its
/// events are as before; its checks and scope.
#[test]
fn hijack_changes_nothing() {
    let gateway = start(&[]);
    let (mut client, _) = Client::connect(gateway.addr);
    let run_id = run_to_end(&mut client, "hello");
    let mut before = get_run(&mut client, &run_id);
    let events_before = event_count(&gateway.data_dir, &run_id);

    let mut sessions = Vec::new();
    for _ in 0..2 {
        let payload = ok_payload(&call(&mut client, "hijackRun", json!({"runId": run_id})));
        assert_eq!(payload["runId"], run_id.as_str());
        assert_eq!(payload["status"], "hijack-ready");
        let session = payload["sessionId"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let parsed = uuid::Uuid::parse_str(&session).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed.get_version_num(), 4, "{session}");
        assert_eq!(payload.as_object().map(|o| o.len()), Some(3), "{payload}");
        sessions.push(session);
    }
    assert_ne!(sessions.first(), sessions.get(1));
    let (status, frame) = http_call_v1(
        gateway.addr,
        ADMIN_TOKEN,
        "hijackRun",
        json!({"runId": run_id}),
    );
    assert_eq!(
        (status, &frame["payload"]["status"]),
        (200, &json!("hijack-ready"))
    );

    let mut after = get_run(&mut client, &run_id);
    for run in [&mut before, &mut after] {
        if let Some(state) = run["runState"].as_object_mut() {
            state.remove("computedAt");
        }
    }
    assert_eq!(after, before);
    assert_eq!(event_count(&gateway.data_dir, &run_id), events_before);

    for params in [json!({}), json!({"runId": ""}), json!({"runId": 3})] {
        assert_error(
            gateway.addr,
            ADMIN_TOKEN,
            "hijackRun",
            params,
            (400, "InvalidRunId", "runId is required"),
        );
    }
    assert_error(
        gateway.addr,
        ADMIN_TOKEN,
        "hijackRun",
        json!({"runId": "missing"}),
        (404, "RunNotFound", "Run not found"),
    );
    assert_forbidden(gateway.addr, WRITER_TOKEN, "hijackRun", "run:admin");
}

// ---- rewindRun ----

const REWIND_NAMES: [&str; 3] = ["rewindRun", "jumpToFrame", "devtools.jumpToFrame"];

/// Goal: rewinding to the latest frame is a successful no-op (all counts 0, audit `success`, no
/// event) under each name; an earlier frame is refused `RewindFailed` with an audit `failed`.
#[test]
fn rewind_to_latest_is_a_noop_and_earlier_is_refused() {
    let gateway = start(&[]);
    let (mut client, _) = Client::connect(gateway.addr);
    let run_id = run_to_end(&mut client, "slow");
    let latest = latest_frame(&gateway.data_dir, &run_id);
    assert!(latest > 2, "{latest}");
    let events = event_count(&gateway.data_dir, &run_id);
    let run_before = get_run(&mut client, &run_id);

    for method in REWIND_NAMES {
        let payload = ok_payload(&call(
            &mut client,
            method,
            json!({"runId": run_id, "frameNo": latest, "confirm": true}),
        ));
        let duration = payload["durationMs"].clone();
        assert!(duration.is_u64(), "{payload}");
        assert_eq!(
            payload,
            json!({"ok": true, "newFrameNo": latest, "revertedSandboxes": 0, "deletedFrames": 0,
                   "deletedAttempts": 0, "invalidatedDiffs": 0, "durationMs": duration,
                   "effectBoundary": {"blocking": [], "revertible": [], "warnings": []}})
        );
    }
    let frame = assert_error(
        gateway.addr,
        ADMIN_TOKEN,
        "rewindRun",
        json!({"runId": run_id, "frameNo": 1, "confirm": true}),
        (
            500,
            "RewindFailed",
            "Rewind to an earlier frame is not supported by this gateway yet",
        ),
    );
    assert_eq!(
        frame["error"]["details"]["runId"],
        run_id.as_str(),
        "{frame}"
    );

    assert_eq!(event_count(&gateway.data_dir, &run_id), events);
    assert_eq!(latest_frame(&gateway.data_dir, &run_id), latest);
    assert_eq!(
        get_run(&mut client, &run_id)["status"],
        run_before["status"]
    );
    let success = (latest, latest, "gateway".to_string(), "success".to_string());
    assert_eq!(
        audit_rows(&gateway.data_dir, &run_id),
        vec![
            success.clone(),
            success.clone(),
            success,
            (latest, 1, "gateway".to_string(), "failed".to_string()),
        ]
    );
}

/// Goal: every stage A and B check in the spec's order, with codes, messages and statuses; the
/// audit rows only where REWIND.md §4 writes them; scope.
#[test]
fn rewind_validation_order() {
    let gateway = start(&[]);
    let (mut client, _) = Client::connect(gateway.addr);
    let run_id = run_to_end(&mut client, "hello");
    let latest = latest_frame(&gateway.data_dir, &run_id);
    // Launch takes any id; the rewind pattern does not.
    let odd = client.launch("odd", json!({"workflow": "hello", "runId": "Odd.Run"}));
    client.events_until_completed("Odd.Run");
    assert_eq!(odd["runId"], "Odd.Run");

    let ok = |frame: Value| json!({"runId": run_id, "frameNo": frame, "confirm": true});
    let pattern = "runId must match /^[a-z0-9_-][a-z0-9_.-]{0,63}$/";
    let not_i32 = "frameNo must be a non-negative i32 integer.";
    let confirm = "Rewinding a run is destructive; pass confirm: true to proceed.";
    let no_frame = format!("frameNo must be between 0 and {latest}.");
    let frame_zero = format!("Frame 0 does not exist for run {run_id}.");
    let cases: Vec<(Value, (u16, &str, &str))> = vec![
        (
            json!({"frameNo": 1, "confirm": true}),
            (400, "InvalidRunId", "runId is required"),
        ),
        (
            json!({"runId": "", "frameNo": 1}),
            (400, "InvalidRunId", "runId is required"),
        ),
        (
            json!({"runId": run_id}),
            (400, "InvalidFrameNo", "frameNo is required"),
        ),
        (
            json!({"runId": run_id, "frameNo": "1"}),
            (400, "InvalidFrameNo", "frameNo is required"),
        ),
        (
            json!({"runId": "missing", "frameNo": 1}),
            (404, "RunNotFound", "Run not found: missing"),
        ),
        (
            json!({"runId": "Odd.Run", "frameNo": 1, "confirm": true}),
            (400, "InvalidRunId", pattern),
        ),
        (ok(json!(-1)), (400, "InvalidFrameNo", not_i32)),
        (ok(json!(1.5)), (400, "InvalidFrameNo", not_i32)),
        (
            ok(json!(2_147_483_648u64)),
            (400, "InvalidFrameNo", not_i32),
        ),
        (
            json!({"runId": run_id, "frameNo": 1}),
            (400, "ConfirmationRequired", confirm),
        ),
        (
            json!({"runId": run_id, "frameNo": 1, "confirm": "true"}),
            (400, "ConfirmationRequired", confirm),
        ),
        (
            json!({"runId": run_id, "frameNo": 1, "confirm": 1}),
            (400, "ConfirmationRequired", confirm),
        ),
        (ok(json!(latest + 1)), (400, "FrameOutOfRange", &no_frame)),
        (ok(json!(0)), (400, "FrameOutOfRange", &frame_zero)),
    ];
    for method in REWIND_NAMES {
        for (params, expected) in &cases {
            assert_error(gateway.addr, ADMIN_TOKEN, method, params.clone(), *expected);
        }
        assert_forbidden(gateway.addr, WRITER_TOKEN, method, "run:admin");
    }
    // Only the checks after the quota (frame range) wrote rows: two per name.
    let failed_rows: Vec<_> = audit_rows(&gateway.data_dir, &run_id);
    let expected: Vec<_> = (0..3)
        .flat_map(|_| {
            [
                (
                    latest,
                    latest + 1,
                    "gateway".to_string(),
                    "failed".to_string(),
                ),
                (latest, 0, "gateway".to_string(), "failed".to_string()),
            ]
        })
        .collect();
    assert_eq!(failed_rows, expected);
    assert!(audit_rows(&gateway.data_dir, "Odd.Run").is_empty());

    // A run executing in this process looks live: RunOwnerAlive unless `force`.
    let live = launch(&mut client, "slow", json!({}));
    let frame = assert_error(
        gateway.addr,
        ADMIN_TOKEN,
        "rewindRun",
        json!({"runId": live, "frameNo": 1, "confirm": true}),
        (
            500,
            "RunOwnerAlive",
            &format!("Run {live} is still executing; pass force: true to rewind a live run."),
        ),
    );
    assert_eq!(frame["error"]["details"]["runId"], live.as_str(), "{frame}");
    assert!(
        frame["error"]["details"]["heartbeatAtMs"].is_i64(),
        "{frame}"
    );
    // With force the checks go on (frame 1 is older than the latest once step 1 ran).
    client.wait_event(&live, "node.finished");
    assert_error(
        gateway.addr,
        ADMIN_TOKEN,
        "rewindRun",
        json!({"runId": live, "frameNo": 1, "confirm": true, "force": true}),
        (
            500,
            "RewindFailed",
            "Rewind to an earlier frame is not supported by this gateway yet",
        ),
    );
    client.events_until_completed(&live);
}

/// Goal: owner or admin (AUTH.md §9): a non-admin who does not own the run is refused with an
/// audit row `failed` from -1 that counts toward the quota; an owner rewinds its own run; the
/// quota refuses the 11th counted rewind with a `rejected` row.
#[test]
fn rewind_owner_audit_and_quota() {
    let gateway = start(&[]);
    let (mut admin, _) = Client::connect(gateway.addr);
    let run_id = run_to_end(&mut admin, "hello");
    let latest = latest_frame(&gateway.data_dir, &run_id);
    let unauthorized = (
        401,
        "Unauthorized",
        "Only the run owner or an admin may rewind this run.",
    );
    assert_error(
        gateway.addr,
        BOB_TOKEN,
        "rewindRun",
        json!({"runId": run_id, "frameNo": latest, "confirm": true}),
        unauthorized,
    );
    // Stage A comes before stage B: no confirm, still Unauthorized; a non-integer frame is -1.
    assert_error(
        gateway.addr,
        BOB_TOKEN,
        "jumpToFrame",
        json!({"runId": run_id, "frameNo": 1.5}),
        unauthorized,
    );
    let bob_failed = |to: i64| (-1, to, "bob".to_string(), "failed".to_string());
    assert_eq!(
        audit_rows(&gateway.data_dir, &run_id),
        vec![bob_failed(latest), bob_failed(-1)]
    );

    // carol owns the run she launched.
    let (mut carol, _) = Client::connect_as(gateway.addr, CAROL_TOKEN);
    let owned = run_to_end(&mut carol, "hello");
    let owned_latest = latest_frame(&gateway.data_dir, &owned);
    let rewind = json!({"runId": owned, "frameNo": owned_latest, "confirm": true});
    for _ in 0..10 {
        let payload = ok_payload(&call(&mut carol, "rewindRun", rewind.clone()));
        assert_eq!(payload["newFrameNo"], owned_latest);
    }
    let quota = format!("Rewind quota exceeded for {owned}; max 10 per 60m.");
    for _ in 0..2 {
        assert_error(
            gateway.addr,
            CAROL_TOKEN,
            "rewindRun",
            rewind.clone(),
            (429, "RateLimited", &quota),
        );
    }
    // The quota is per caller: the admin (caller "gateway") still may.
    ok_payload(&call(&mut admin, "rewindRun", rewind.clone()));
    let rows = audit_rows(&gateway.data_dir, &owned);
    let carol_row = |result: &str| {
        (
            owned_latest,
            owned_latest,
            "carol".to_string(),
            result.to_string(),
        )
    };
    let mut expected = vec![carol_row("success"); 10];
    expected.extend(vec![
        (
            -1,
            owned_latest,
            "carol".to_string(),
            "rejected".to_string()
        );
        2
    ]);
    expected.push((
        owned_latest,
        owned_latest,
        "gateway".to_string(),
        "success".to_string(),
    ));
    assert_eq!(rows, expected);
    // carol does not own the admin's run.
    assert_error(
        gateway.addr,
        CAROL_TOKEN,
        "rewindRun",
        json!({"runId": run_id, "frameNo": latest, "confirm": true}),
        unauthorized,
    );
}

// ---- retryTask ----

/// A task that fails until `marker` exists, between a static task and a command task.
fn flaky_workflow(marker: &Path) -> String {
    format!(
        r#"
[[nodes]]
kind = "task"
id = "prepare"
output = {{ ready = true }}

[[nodes]]
kind = "task"
id = "flaky"
retries = 0
run = ["sh", "-c", "if [ -f '{}' ]; then echo '{{\"ok\":true}}'; else exit 3; fi"]

[[nodes]]
kind = "task"
id = "after"
run = ["sh", "-c", "echo '{{\"after\":1}}'"]
"#,
        marker.display()
    )
}

const LONG_WORKFLOW: &str = r#"
[[nodes]]
kind = "task"
id = "long"
run = ["sh", "-c", "sleep 30; echo '{}'"]
"#;

/// Goal: a run failed by a task is retried on that task and completes: the failed attempt is
/// cancelled, a new attempt numbered after it succeeds, the run goes back to `running` and ends
/// `finished`; then a retry of the first task with its dependents re-runs all three.
#[test]
fn retry_a_failed_task_to_completion() {
    let scratch = temp_dir("retry");
    let marker = scratch.join("marker");
    let gateway = start(&[("flaky", &flaky_workflow(&marker))]);
    let data = gateway.data_dir.clone();
    let (mut client, _) = Client::connect(gateway.addr);
    let run_id = launch(&mut client, "flaky", json!({}));
    let events = client.events_until_completed(&run_id);
    let last = events.last().cloned().unwrap_or_default();
    assert_eq!(last["payload"]["status"], "failed", "{events:?}");
    assert_eq!(
        attempts(&data, &run_id, "flaky"),
        vec![(1, "failed".to_string())]
    );

    std::fs::write(&marker, b"").unwrap_or_else(|e| panic!("{e}"));
    let payload = ok_payload(&call(
        &mut client,
        "retryTask",
        json!({"runId": run_id, "nodeId": "flaky"}),
    ));
    assert_eq!(
        payload,
        json!({"runId": run_id, "nodeId": "flaky", "iteration": 0, "resetNodes": ["flaky"],
               "status": "retry_requested"})
    );
    let events = client.events_until_completed(&run_id);
    let names: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(names.first(), Some(&"node.pending"), "{names:?}");
    let last = events.last().cloned().unwrap_or_default();
    assert_eq!(
        last["payload"],
        json!({"runId": run_id, "status": "finished"})
    );
    let run = get_run(&mut client, &run_id);
    assert_eq!(run["status"], "finished");
    assert_eq!(run["errorJson"], Value::Null);
    assert_eq!(run["summary"], json!({"finished": 3}), "{run}");
    assert_eq!(
        attempts(&data, &run_id, "flaky"),
        vec![(1, "cancelled".to_string()), (2, "finished".to_string())]
    );

    // The first task with everything that ran after it.
    let payload = ok_payload(&call(
        &mut client,
        "retryTask",
        json!({"runId": run_id, "nodeId": "prepare", "iteration": 0}),
    ));
    assert_eq!(payload["resetNodes"], json!(["prepare", "flaky", "after"]));
    client.events_until_completed(&run_id);
    assert_eq!(
        wait_status(&mut client, &run_id, "finished")["summary"],
        json!({"finished": 3})
    );
    assert_eq!(
        attempts(&data, &run_id, "flaky"),
        vec![
            (1, "cancelled".to_string()),
            (2, "finished".to_string()),
            (3, "finished".to_string())
        ]
    );
    assert_eq!(attempts(&data, &run_id, "prepare").len(), 2);

    // Without dependents only the node is reset (and re-run).
    let payload = ok_payload(&call(
        &mut client,
        "retryTask",
        json!({"runId": run_id, "nodeId": "prepare", "resetDependents": false}),
    ));
    assert_eq!(payload["resetNodes"], json!(["prepare"]));
    client.events_until_completed(&run_id);
    assert_eq!(attempts(&data, &run_id, "after").len(), 2);
    let _ = std::fs::remove_dir_all(&scratch);
}

/// Goal: a paused run does not execute, so it can be retried: the node and what ran after it
/// are reset, the pause request is dropped, and the run completes.
#[test]
fn retry_a_paused_run() {
    let gateway = start(&[]);
    let data = gateway.data_dir.clone();
    let (mut client, _) = Client::connect(gateway.addr);
    let run_id = launch(&mut client, "slow", json!({}));
    client.wait_event(&run_id, "node.finished");
    client.wait_event(&run_id, "node.started");
    ok_payload(&call(&mut client, "pauseRun", json!({"runId": run_id})));
    wait_status(&mut client, &run_id, "paused");
    let payload = ok_payload(&call(
        &mut client,
        "retryTask",
        json!({"runId": run_id, "nodeId": "step-1"}),
    ));
    assert_eq!(payload["resetNodes"], json!(["step-1", "step-2"]));
    let run = get_run(&mut client, &run_id);
    assert_eq!(run["pauseRequestedAtMs"], Value::Null, "{run}");
    client.events_until_completed(&run_id);
    let run = wait_status(&mut client, &run_id, "finished");
    assert_eq!(run["summary"], json!({"finished": 5}), "{run}");
    for step in ["step-1", "step-2"] {
        assert_eq!(
            attempts(&data, &run_id, step),
            vec![(1, "finished".to_string()), (2, "finished".to_string())]
        );
    }
    assert_eq!(
        attempts(&data, &run_id, "step-3"),
        vec![(1, "finished".to_string())]
    );
}

/// Goal: retryTask's checks with codes, messages and statuses: missing ids, unknown run,
/// unknown node, an executing run (RUN_ACTIVE after the wait); scope.
#[test]
fn retry_validation_and_active_run() {
    let gateway = start(&[("long", LONG_WORKFLOW)]);
    let (mut client, _) = Client::connect(gateway.addr);
    let finished = run_to_end(&mut client, "hello");
    let missing = "runId and nodeId are required";
    let cases: Vec<(Value, (u16, &str, String))> = vec![
        (json!({}), (400, "INVALID_REQUEST", missing.into())),
        (
            json!({"runId": finished}),
            (400, "INVALID_REQUEST", missing.into()),
        ),
        (
            json!({"nodeId": "greet"}),
            (400, "INVALID_REQUEST", missing.into()),
        ),
        (
            json!({"runId": "missing", "nodeId": "greet"}),
            (404, "NOT_FOUND", "Run not found: missing".into()),
        ),
        (
            json!({"runId": finished, "nodeId": "nope"}),
            (
                404,
                "NOT_FOUND",
                format!("Node nope (iteration 0) not found in run {finished}"),
            ),
        ),
        (
            json!({"runId": finished, "nodeId": "greet", "iteration": 1}),
            (
                404,
                "NOT_FOUND",
                format!("Node greet (iteration 1) not found in run {finished}"),
            ),
        ),
    ];
    for (params, (status, code, message)) in cases {
        assert_error(
            gateway.addr,
            ADMIN_TOKEN,
            "retryTask",
            params,
            (status, code, &message),
        );
    }
    assert_eq!(get_run(&mut client, &finished)["status"], "finished");

    let live = launch(&mut client, "long", json!({}));
    client.wait_event(&live, "node.started");
    assert_error(
        gateway.addr,
        ADMIN_TOKEN,
        "retryTask",
        json!({"runId": live, "nodeId": "long"}),
        (
            409,
            "RUN_ACTIVE",
            "Run is currently executing — cancel or pause it before retrying a task",
        ),
    );
    ok_payload(&call(&mut client, "cancelRun", json!({"runId": live})));
    assert_forbidden(gateway.addr, READER_TOKEN, "retryTask", "run:write");
}

// ---- runs.rerun ----

/// Echoes its stdin (which carries the run input) as its output.
const ECHO_WORKFLOW: &str = r#"
[[nodes]]
kind = "task"
id = "echo"
run = ["sh", "-c", "cat"]
"#;

fn echoed_input(data_dir: &Path, run_id: &str) -> Value {
    let text: String = open_db(data_dir)
        .query_row(
            "SELECT payload_json FROM _smithers_outputs WHERE run_id = ?1 AND node_id = 'echo'",
            [run_id],
            |row| row.get(0),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    serde_json::from_str::<Value>(&text).unwrap_or_else(|e| panic!("{e}"))["input"].clone()
}

/// Goal: runs.rerun launches the same workflow with the stored input (the new run sees it),
/// under a new id or `newRunId`; its checks and scope.
#[test]
fn rerun_relaunches_with_the_same_input() {
    let gateway = start(&[("echo", ECHO_WORKFLOW)]);
    let (mut client, _) = Client::connect(gateway.addr);
    let input = json!({"name": "ada", "nested": {"n": [1, 2]}});
    let original = launch(&mut client, "echo", input.clone());
    client.events_until_completed(&original);
    assert_eq!(echoed_input(&gateway.data_dir, &original), input);

    let payload = ok_payload(&call(&mut client, "runs.rerun", json!({"runId": original})));
    let rerun = payload["runId"].as_str().unwrap_or_default().to_string();
    assert_ne!(rerun, original);
    assert_eq!(
        payload,
        json!({"runId": rerun, "workflow": "echo", "system": false})
    );
    let events = client.events_until_completed(&rerun);
    assert_eq!(
        events.last().cloned().unwrap_or_default()["payload"]["status"],
        "finished"
    );
    assert_eq!(get_run(&mut client, &rerun)["workflowKey"], "echo");
    assert_eq!(echoed_input(&gateway.data_dir, &rerun), input);

    let payload = ok_payload(&call(
        &mut client,
        "runs.rerun",
        json!({"runId": original, "newRunId": "rerun-1"}),
    ));
    assert_eq!(payload["runId"], "rerun-1");
    client.events_until_completed("rerun-1");
    assert_eq!(echoed_input(&gateway.data_dir, "rerun-1"), input);

    let cases = [
        (
            json!({}),
            (400, "INVALID_REQUEST", "runId is required".to_string()),
        ),
        (
            json!({"runId": ""}),
            (400, "INVALID_REQUEST", "runId is required".to_string()),
        ),
        (
            json!({"runId": "missing"}),
            (404, "NOT_FOUND", "Run not found: missing".to_string()),
        ),
        (
            json!({"runId": original, "newRunId": "rerun-1"}),
            (409, "CONFLICT", "Run rerun-1 is already active".to_string()),
        ),
    ];
    for (params, (status, code, message)) in cases {
        assert_error(
            gateway.addr,
            ADMIN_TOKEN,
            "runs.rerun",
            params,
            (status, code, &message),
        );
    }
    assert_forbidden(gateway.addr, READER_TOKEN, "runs.rerun", "run:write");
}

/// Goal: a retry whose backoff falls due while the run is pausing starts nothing: the run
/// stays `paused` with its one failed attempt past the due time, and `resumeRun` sets the retry
/// again, which then succeeds.
#[test]
fn retry_backoff_due_while_paused_waits_for_resume() {
    let scratch = temp_dir("backoff");
    let marker = scratch.join("marker");
    let workflow = format!(
        "[[nodes]]\nkind = \"task\"\nid = \"flaky\"\nretries = 1\nrun = [\"sh\", \"-c\", \
         \"if [ -f '{}' ]; then echo '{{}}'; else exit 3; fi\"]\n",
        marker.display()
    );
    // A backoff long enough for the pause to land inside it.
    let backoff_ms = 1_500;
    let engine = smithers_gateway::engine::core::EngineOptions {
        retry_backoff_base_ms: backoff_ms,
        ..Default::default()
    };
    let gateway = Gateway::start_engine(
        config(),
        1,
        &workflows_with(&[("backoff", &workflow)]),
        &temp_dir("data"),
        engine,
    );
    let data = gateway.data_dir.clone();
    let (mut client, _) = Client::connect(gateway.addr);
    let run_id = launch(&mut client, "backoff", json!({}));
    client.wait_event(&run_id, "node.retrying");
    let paused = ok_payload(&call(&mut client, "pauseRun", json!({"runId": run_id})));
    assert_eq!(paused["status"], "pausing");
    wait_status(&mut client, &run_id, "paused");
    // The retry would succeed now; past its due time it still has not run.
    std::fs::write(&marker, b"").unwrap_or_else(|e| panic!("{e}"));
    std::thread::sleep(Duration::from_millis(backoff_ms * 2));
    assert_eq!(get_run(&mut client, &run_id)["status"], "paused");
    assert_eq!(
        attempts(&data, &run_id, "flaky"),
        vec![(1, "failed".to_string())]
    );

    let resumed = ok_payload(&call(&mut client, "resumeRun", json!({"runId": run_id})));
    assert_eq!(resumed["status"], "resume_requested");
    let events = client.events_until_completed(&run_id);
    let last = events.last().cloned().unwrap_or_default();
    assert_eq!(last["payload"]["status"], "finished", "{events:?}");
    assert_eq!(
        attempts(&data, &run_id, "flaky"),
        vec![(1, "failed".to_string()), (2, "finished".to_string())]
    );
    let _ = std::fs::remove_dir_all(&scratch);
}
