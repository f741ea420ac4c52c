//! Cron end to end (METHODS.md §3.24–3.27, DATA.md §8): the four methods and their legacy names
//! over WebSocket and HTTP with exact codes, messages and statuses; scopes; workflow schedules
//! synced into `gateway:<key>` rows; a scheduled fire with the system auth context and its
//! `cron.triggered` event; and the missed-fire policy across a restart.

use crate::support::*;
use serde_json::{json, Value};
use smithers_gateway::clock::iso_from_ms;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

const DAY_MS: i64 = 86_400_000;

fn now_ms() -> i64 {
    smithers_gateway::clock::now_ms() as i64
}

/// Asserts an HTTP error: status, code and message.
fn assert_http_error(
    addr: SocketAddr,
    method: &str,
    params: Value,
    status: u16,
    code: &str,
    message: &str,
) {
    let (got_status, frame) = rpc_post(addr, ADMIN_TOKEN, method, params.clone());
    assert_eq!(got_status, status, "{method} {params}: {frame}");
    assert_eq!(frame["ok"], false, "{frame}");
    assert_eq!(frame["error"]["code"], code, "{method} {params}: {frame}");
    assert_eq!(
        frame["error"]["message"], message,
        "{method} {params}: {frame}"
    );
}

fn row_of(rows: &Value, cron_id: &str) -> Option<Value> {
    rows.as_array()
        .and_then(|rows| rows.iter().find(|row| row["cronId"] == cron_id))
        .cloned()
}

fn as_i64(value: &Value) -> i64 {
    value
        .as_i64()
        .unwrap_or_else(|| panic!("not an integer: {value}"))
}

/// Waits for the `cron.triggered` of `cron_id` on an unfiltered socket; returns its payload and
/// every event seen for that run after it (the first one included).
fn wait_cron_triggered(client: &mut Client, cron_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let event = client.next_event();
        if event["event"] == "cron.triggered" && event["payload"]["cronId"] == cron_id {
            return event;
        }
    }
    panic!("no cron.triggered for {cron_id}")
}

/// Goal: the happy paths of all four methods over WebSocket, with the exact row shapes; the
/// example `nightly` schedule is a `gateway:nightly` row; `cronRun` runs as the caller and
/// emits no `cron.triggered`.
#[test]
fn methods_happy_paths() {
    let gateway = Gateway::start(|_| {});
    let (mut client, _) = Client::connect(gateway.addr);
    let started = now_ms();

    let rows = ok_payload(&client.request("l0", "cronList", json!({})));
    let nightly = row_of(&rows, "gateway:nightly").unwrap_or_else(|| panic!("{rows}"));
    assert_eq!(nightly["pattern"], "0 3 * * *");
    assert_eq!(nightly["workflowPath"], "gateway:nightly");
    assert_eq!(nightly["workflow"], "nightly");
    assert_eq!(nightly["enabled"], true);
    assert_eq!(nightly["lastRunAtMs"], Value::Null);
    assert_eq!(nightly["errorJson"], Value::Null);
    let next = as_i64(&nightly["nextRunAtMs"]);
    assert!(
        next > started - 1_000 && next <= started + DAY_MS,
        "{nightly}"
    );
    assert_eq!(next.rem_euclid(DAY_MS), 3 * 3_600_000, "03:00 UTC");

    let created = ok_payload(&client.request(
        "c1",
        "cronCreate",
        json!({"workflow": "hello", "pattern": "0 9 * * 1", "cronId": "weekly"}),
    ));
    let next = as_i64(&created["nextRunAtMs"]);
    let created_at = as_i64(&created["createdAtMs"]);
    assert!(created_at >= started, "{created}");
    assert_eq!(
        created,
        json!({"cronId": "weekly", "pattern": "0 9 * * 1", "workflowPath": "gateway:hello",
               "enabled": true, "createdAtMs": created_at, "lastRunAtMs": null,
               "nextRunAtMs": next, "errorJson": null, "workflow": "hello"})
    );
    // Monday (1970-01-01 was a Thursday) at 09:00 UTC, within a week.
    assert_eq!((next.div_euclid(DAY_MS) + 4).rem_euclid(7), 1, "{created}");
    assert_eq!(next.rem_euclid(DAY_MS), 9 * 3_600_000);
    assert!(next > created_at && next <= created_at + 7 * DAY_MS);

    let generated = ok_payload(&client.request(
        "c2",
        "cronCreate",
        json!({"workflow": "hello", "pattern": "*/5 * * * *", "enabled": false}),
    ));
    let generated_id = generated["cronId"].as_str().unwrap_or_default().to_string();
    assert!(uuid::Uuid::parse_str(&generated_id).is_ok(), "{generated}");
    assert_eq!(generated["enabled"], false);

    // Only filter.workflow filters; rows come oldest first.
    let hello_rows = ok_payload(&client.request(
        "l1",
        "cronList",
        json!({"filter": {"workflow": "hello"}, "workflow": "nightly"}),
    ));
    let ids: Vec<&str> = hello_rows
        .as_array()
        .map(|rows| rows.iter().filter_map(|r| r["cronId"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(ids, vec!["weekly", generated_id.as_str()]);

    // cronRun by id: the caller's auth, the cron's times recorded, no cron.triggered.
    let ran = ok_payload(&client.request("r1", "cronRun", json!({"cronId": "weekly"})));
    let run_id = ran["runId"].as_str().unwrap_or_default().to_string();
    assert_eq!(ran["workflow"], "hello");
    assert_eq!(ran["system"], false);
    let events = client.events_until_completed(&run_id);
    assert!(
        events.iter().all(|e| e["event"] != "cron.triggered"),
        "{events:?}"
    );
    let run = ok_payload(&client.request("g1", "getRun", json!({"runId": run_id})));
    let config: Value =
        serde_json::from_str(run["configJson"].as_str().unwrap_or("{}")).unwrap_or_default();
    assert_eq!(config["auth"]["role"], "admin");
    assert_eq!(config["auth"]["triggeredBy"], "gateway");
    let rows = ok_payload(&client.request("l2", "cronList", json!({})));
    let weekly = row_of(&rows, "weekly").unwrap_or_else(|| panic!("{rows}"));
    assert!(as_i64(&weekly["lastRunAtMs"]) >= created_at, "{weekly}");
    assert_eq!(weekly["nextRunAtMs"], next, "the next Monday is still next");
    assert_eq!(weekly["createdAtMs"], created_at);

    // Re-creating an id keeps its creation time and last run; the pattern is replaced.
    let replaced = ok_payload(&client.request(
        "c3",
        "cronCreate",
        json!({"workflow": "hello", "pattern": "0 10 * * *", "cronId": "weekly"}),
    ));
    assert_eq!(
        replaced["lastRunAtMs"],
        Value::Null,
        "the payload is the request"
    );
    let rows = ok_payload(&client.request("l3", "cronList", json!({})));
    let weekly_now = row_of(&rows, "weekly").unwrap_or_else(|| panic!("{rows}"));
    assert_eq!(weekly_now["pattern"], "0 10 * * *");
    assert_eq!(weekly_now["createdAtMs"], created_at);
    assert_eq!(weekly_now["lastRunAtMs"], weekly["lastRunAtMs"]);

    // cronRun by workflow name (an unknown cronId falls back to it).
    let by_name = ok_payload(&client.request(
        "r2",
        "cronRun",
        json!({"cronId": "no-such-cron", "workflow": "hello", "input": {"who": "cron"}}),
    ));
    assert_eq!(by_name["workflow"], "hello");
    let by_name_id = by_name["runId"].as_str().unwrap_or_default().to_string();
    client.events_until_completed(&by_name_id);

    let removed = ok_payload(&client.request("d1", "cronDelete", json!({"cronId": "weekly"})));
    assert_eq!(removed, json!({"cronId": "weekly", "removed": true}));
    let rows = ok_payload(&client.request("l4", "cronList", json!({})));
    assert_eq!(row_of(&rows, "weekly"), None);
}

/// Goal: every validation refusal with its code, message and HTTP status, in the reference's
/// order (required fields, then the workflow, then the pattern).
#[test]
fn validation_errors_have_exact_codes_and_statuses() {
    let gateway = Gateway::start(|_| {});
    let addr = gateway.addr;
    let required = "workflow and pattern are required";
    assert_http_error(
        addr,
        "cronCreate",
        json!({}),
        400,
        "INVALID_REQUEST",
        required,
    );
    assert_http_error(
        addr,
        "cronCreate",
        json!({"workflow": "hello", "pattern": ""}),
        400,
        "INVALID_REQUEST",
        required,
    );
    assert_http_error(
        addr,
        "cronCreate",
        json!({"workflow": 5, "pattern": "* * * * *"}),
        400,
        "INVALID_REQUEST",
        required,
    );
    assert_http_error(
        addr,
        "cronCreate",
        json!({"workflow": "nope", "pattern": "0 0 30 2 *"}),
        404,
        "NOT_FOUND",
        "Unknown workflow: nope",
    );
    assert_http_error(
        addr,
        "cronCreate",
        json!({"workflow": "hello", "pattern": "0 0 30 2 *"}),
        400,
        "INVALID_INPUT",
        "Invalid cron pattern: Invalid explicit day of month definition",
    );
    assert_http_error(
        addr,
        "cronCreate",
        json!({"workflow": "hello", "pattern": "* * *"}),
        400,
        "INVALID_INPUT",
        "Invalid cron pattern: Invalid cron expression: expected 5 or 6 fields, got 3",
    );
    assert_http_error(
        addr,
        "cronCreate",
        json!({"workflow": "hello", "pattern": "61 * * * *"}),
        400,
        "INVALID_INPUT",
        "Invalid cron pattern: Constraint error, got value 61 expected range 0-59",
    );
    assert_http_error(
        addr,
        "cronDelete",
        json!({}),
        400,
        "INVALID_REQUEST",
        "cronId is required",
    );
    assert_http_error(
        addr,
        "cronDelete",
        json!({"cronId": "nope"}),
        404,
        "NOT_FOUND",
        "Cron not found: nope",
    );
    let either = "cronId or workflow is required";
    assert_http_error(addr, "cronRun", json!({}), 400, "INVALID_REQUEST", either);
    assert_http_error(
        addr,
        "cronRun",
        json!({"cronId": "nope"}),
        400,
        "INVALID_REQUEST",
        either,
    );
    assert_http_error(
        addr,
        "cronRun",
        json!({"workflow": "nope"}),
        500,
        "SERVER_ERROR",
        "Unknown workflow: nope",
    );
    // Nothing was created by the refusals: only the example schedule is listed.
    let (status, frame) = rpc_post(addr, ADMIN_TOKEN, "cronList", json!({}));
    assert_eq!(status, 200);
    let ids: Vec<&str> = frame["payload"]
        .as_array()
        .map(|rows| rows.iter().filter_map(|r| r["cronId"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(ids, vec!["gateway:nightly"]);
    // HTTP happy path for the write methods too.
    let (status, frame) = rpc_post(
        addr,
        ADMIN_TOKEN,
        "cronCreate",
        json!({"workflow": "hello", "pattern": "@daily", "cronId": "h"}),
    );
    assert_eq!((status, &frame["payload"]["cronId"]), (200, &json!("h")));
    let (status, frame) = rpc_post(addr, ADMIN_TOKEN, "cronRun", json!({"cronId": "h"}));
    assert_eq!(
        (status, &frame["payload"]["workflow"]),
        (200, &json!("hello"))
    );
    let (status, frame) = rpc_post(addr, ADMIN_TOKEN, "cronDelete", json!({"cronId": "h"}));
    assert_eq!(
        (status, frame["payload"].clone()),
        (200, json!({"cronId": "h", "removed": true}))
    );
}

/// Goal: cron:read lists, cron:write is needed for the rest (and implies read); method-name
/// grants match the name as sent; run scopes give nothing here.
#[test]
fn scopes_are_enforced_per_method() {
    let gateway = Gateway::start(|c| {
        c.auth = Some(token_auth(&[
            (ADMIN_TOKEN, grant("admin", &["*"])),
            ("reader", grant("viewer", &["cron:read"])),
            ("writer", grant("operator", &["cron:write"])),
            ("dotted", grant("operator", &["cron.*"])),
            ("runner", grant("admin", &["run:admin"])),
        ]));
    });
    let addr = gateway.addr;
    let forbidden = |token: &str, method: &str, scope: &str| {
        let (status, frame) = rpc_post(addr, token, method, json!({}));
        assert_eq!(status, 403, "{token} {method}: {frame}");
        assert_eq!(frame["error"]["code"], "FORBIDDEN");
        assert_eq!(frame["error"]["requiredScope"], scope);
        assert_eq!(
            frame["error"]["message"],
            format!("Missing required scope {scope} for {method}")
        );
    };
    let allowed = |token: &str, method: &str, params: Value| {
        let (status, frame) = rpc_post(addr, token, method, params);
        assert_eq!(status, 200, "{token} {method}: {frame}");
    };
    allowed("reader", "cronList", json!({}));
    allowed("reader", "cron.list", json!({}));
    for method in ["cronCreate", "cronDelete", "cronRun"] {
        forbidden("reader", method, "cron:write");
    }
    forbidden("reader", "cron.add", "cron:write");
    allowed("writer", "cronList", json!({}));
    allowed(
        "writer",
        "cronCreate",
        json!({"workflow": "hello", "pattern": "@weekly", "cronId": "w"}),
    );
    allowed("writer", "cronDelete", json!({"cronId": "w"}));
    allowed("dotted", "cron.list", json!({}));
    forbidden("dotted", "cronList", "cron:read");
    forbidden("runner", "cronList", "cron:read");
    forbidden("runner", "cronRun", "cron:write");
}

/// Goal: the legacy names run the same handlers: same results, same refusals.
#[test]
fn legacy_aliases_reach_the_same_handlers() {
    let gateway = Gateway::start(|_| {});
    let (mut client, _) = Client::connect(gateway.addr);
    let created = ok_payload(&client.request(
        "a1",
        "cron.add",
        json!({"workflow": "hello", "pattern": "0 0 1 * *", "cronId": "legacy"}),
    ));
    assert_eq!(created["workflowPath"], "gateway:hello");
    let listed =
        ok_payload(&client.request("a2", "cron.list", json!({"filter": {"workflow": "hello"}})));
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["cronId"], "legacy");
    assert_eq!(listed[0]["nextRunAtMs"], created["nextRunAtMs"]);
    let ran = ok_payload(&client.request("a3", "cron.trigger", json!({"cronId": "legacy"})));
    let run_id = ran["runId"].as_str().unwrap_or_default().to_string();
    client.events_until_completed(&run_id);
    let removed = ok_payload(&client.request("a4", "cron.remove", json!({"cronId": "legacy"})));
    assert_eq!(removed, json!({"cronId": "legacy", "removed": true}));
    for (legacy, canonical, params) in [
        ("cron.add", "cronCreate", json!({})),
        ("cron.remove", "cronDelete", json!({"cronId": "legacy"})),
        ("cron.trigger", "cronRun", json!({})),
    ] {
        let a = client.request("x1", legacy, params.clone());
        let b = client.request("x2", canonical, params);
        assert_eq!(a["error"], b["error"], "{legacy} vs {canonical}");
        assert_eq!(a["ok"], false);
    }
}

/// Goal: a scheduled fire (`* * * * * *`, polled every second) starts a run with the system auth
/// context and broadcasts `cron.triggered` `{cronId, workflow, runId}` before the run's own
/// events; the row records the fire.
#[test]
fn scheduled_fire_runs_with_the_system_context() {
    let gateway = Gateway::start(|c| c.heartbeat_ms = 1_000);
    let (mut client, _) = Client::connect(gateway.addr);
    let before = now_ms();
    ok_payload(&client.request(
        "c1",
        "cronCreate",
        json!({"workflow": "hello", "pattern": "* * * * * *", "cronId": "every-second"}),
    ));
    let triggered = wait_cron_triggered(&mut client, "every-second");
    // Stop further fires before looking at this one.
    ok_payload(&client.request("d1", "cronDelete", json!({"cronId": "every-second"})));
    let run_id = triggered["payload"]["runId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        triggered["payload"],
        json!({"cronId": "every-second", "workflow": "hello", "runId": run_id})
    );
    // cron.triggered carries the run id, so it is the first frame of the run's window.
    assert!(triggered["seq"].is_u64(), "{triggered}");
    let events = client.events_until_completed(&run_id);
    let names: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(
        names,
        vec!["node.started", "node.finished", "run.completed"],
        "cron.triggered came first: {events:?}"
    );
    let run = ok_payload(&client.request("g1", "getRun", json!({"runId": run_id})));
    assert_eq!(run["workflowKey"], "hello");
    let config: Value =
        serde_json::from_str(run["configJson"].as_str().unwrap_or("{}")).unwrap_or_default();
    let auth = &config["auth"];
    assert_eq!(auth["triggeredBy"], "cron:gateway");
    assert_eq!(auth["role"], "system");
    assert_eq!(auth["scopes"], json!(["*"]));
    assert_eq!(auth["tokenId"], Value::Null);
    assert_eq!(config["gatewayTriggeredBy"], "cron:gateway");
    assert!(as_i64(&run["createdAtMs"]) >= before);
}

fn write_scheduled(dir: &Path, name: &str, schedule: Option<&str>) {
    let schedule = schedule
        .map(|s| format!("schedule = \"{s}\"\n"))
        .unwrap_or_default();
    write_workflow(
        dir,
        name,
        &format!("{schedule}[[nodes]]\nkind = \"task\"\nid = \"t\"\noutput = {{ ok = true }}\n"),
    );
}

/// Goal: the documented missed-fire policy. A schedule whose fire passed while the gateway was
/// down fires once at the first tick after the restart, and its next fire is the following one;
/// a workflow whose `schedule` was removed has its `gateway:<key>` row disabled, not deleted.
/// A row whose pattern cannot be evaluated records the error and is retried a minute later.
/// Method: stop the gateway, move the stored next fire into the past (as an outage would), edit
/// the workflow files, restart on the same data directory.
#[test]
fn restart_fires_a_missed_schedule_once() {
    let workflows = temp_dir("cron-workflows");
    let data = temp_dir("cron-data");
    write_scheduled(&workflows, "yearly", Some("0 0 1 1 *"));
    write_scheduled(&workflows, "dropped", Some("0 0 1 1 *"));
    let config = |c: &mut smithers_gateway::config::GatewayConfig| {
        c.auth = Some(token_auth(&[(ADMIN_TOKEN, grant("admin", &["*"]))]));
        c.heartbeat_ms = 1_000;
    };
    let mut gateway_config = smithers_gateway::config::GatewayConfig::default();
    config(&mut gateway_config);

    let mut first = Gateway::start_full(gateway_config.clone(), 1, &workflows, &data);
    let (mut client, _) = Client::connect(first.addr);
    let rows = ok_payload(&client.request("l1", "cronList", json!({})));
    let yearly = row_of(&rows, "gateway:yearly").unwrap_or_else(|| panic!("{rows}"));
    let next_new_year = as_i64(&yearly["nextRunAtMs"]);
    assert!(
        iso_from_ms(next_new_year).ends_with("-01-01T00:00:00.000Z"),
        "{yearly}"
    );
    let created_at = as_i64(&yearly["createdAtMs"]);
    ok_payload(&client.request(
        "c1",
        "cronCreate",
        json!({"workflow": "yearly", "pattern": "0 0 1 1 *", "cronId": "broken"}),
    ));
    drop(client);
    first.stop();

    // The outage: the fire was due an hour ago.
    let missed = now_ms() - 3_600_000;
    {
        let db =
            rusqlite::Connection::open(data.join("smithers.db")).unwrap_or_else(|e| panic!("{e}"));
        let changed = db
            .execute(
                "UPDATE _smithers_cron SET next_run_at_ms = ?1 WHERE cron_id = 'gateway:yearly'",
                [missed],
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(changed, 1);
        // A row whose pattern cannot be read (written by something else) takes the failure path.
        let changed = db
            .execute(
                "UPDATE _smithers_cron SET pattern = 'not a cron', next_run_at_ms = ?1 \
                 WHERE cron_id = 'broken'",
                [missed],
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(changed, 1);
    }
    write_scheduled(&workflows, "dropped", None);

    let restarted_at = now_ms();
    let second = Gateway::start_full(gateway_config, 1, &workflows, &data);
    let (mut client, _) = Client::connect(second.addr);
    // The fire may come before this socket connects, so the row is watched, not the event.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = ok_payload(&client.request("w", "cronList", json!({})));
        let yearly = row_of(&rows, "gateway:yearly").unwrap_or_else(|| panic!("{rows}"));
        // The claim is written before the launch: wait for both.
        let runs =
            ok_payload(&client.request("r", "listRuns", json!({"filter": {"workflow": "yearly"}})));
        let broken = row_of(&rows, "broken").unwrap_or_else(|| panic!("{rows}"));
        if !yearly["lastRunAtMs"].is_null()
            && runs.as_array().is_some_and(|r| !r.is_empty())
            && !broken["errorJson"].is_null()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the missed fire never came: {yearly}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let rows = ok_payload(&client.request("l2", "cronList", json!({})));
    let yearly = row_of(&rows, "gateway:yearly").unwrap_or_else(|| panic!("{rows}"));
    assert!(as_i64(&yearly["lastRunAtMs"]) >= restarted_at, "{yearly}");
    assert_eq!(
        yearly["nextRunAtMs"], next_new_year,
        "one fire, then the following one: {yearly}"
    );
    assert_eq!(yearly["createdAtMs"], created_at);
    assert_eq!(yearly["errorJson"], Value::Null);
    // DATA.md §8 step 3: the message kept, retried a minute after the failed attempt.
    let broken = row_of(&rows, "broken").unwrap_or_else(|| panic!("{rows}"));
    assert_eq!(
        broken["errorJson"],
        "Invalid cron expression: expected 5 or 6 fields, got 3"
    );
    assert_eq!(
        as_i64(&broken["nextRunAtMs"]) - as_i64(&broken["lastRunAtMs"]),
        60_000,
        "{broken}"
    );
    let dropped = row_of(&rows, "gateway:dropped").unwrap_or_else(|| panic!("{rows}"));
    assert_eq!(dropped["enabled"], false, "{dropped}");
    // Exactly one run of the missed schedule exists.
    let runs =
        ok_payload(&client.request("r1", "listRuns", json!({"filter": {"workflow": "yearly"}})));
    assert_eq!(runs.as_array().map(Vec::len), Some(1), "{runs}");
    drop(second);
    let _ = std::fs::remove_dir_all(&workflows);
}
