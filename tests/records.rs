//! The subsystem methods end to end (METHODS.md §3.16, §4): docs and tickets (CRUD, tombstones,
//! revival, `listDocs` filters), memory facts, scores (per run, across runs with paging, detail
//! with decoded JSON), prompt files from a workspace, accounts, and browser sessions' strict
//! validation; exact codes, messages and HTTP statuses; scopes.
//!
//! No product path writes memory facts or scores (our runtime has no memory or scorers), so those
//! tests launch real runs, stop the gateway, insert rows into its SQLite file with rusqlite, and
//! start it again on the same data directory.

use crate::support::*;
use serde_json::{json, Value};
use sha2::Digest;
use std::net::SocketAddr;
use std::path::Path;

/// The payload of a successful HTTP call.
fn http_ok(addr: SocketAddr, method: &str, params: Value) -> Value {
    let (status, frame) = rpc_post(addr, ADMIN_TOKEN, method, params.clone());
    assert_eq!(status, 200, "{method} {params}: {frame}");
    assert_eq!(frame["ok"], true, "{frame}");
    frame["payload"].clone()
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
    assert_eq!(
        (
            got_status,
            &frame["error"]["code"],
            &frame["error"]["message"]
        ),
        (status, &json!(code), &json!(message)),
        "{method} {params}: {frame}"
    );
    assert_eq!(frame["ok"], false, "{frame}");
}

fn sha256_hex(text: &str) -> String {
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn as_i64(value: &Value) -> i64 {
    value
        .as_i64()
        .unwrap_or_else(|| panic!("not an integer: {value}"))
}

fn paths(rows: &Value) -> Vec<String> {
    rows.as_array()
        .unwrap_or_else(|| panic!("not an array: {rows}"))
        .iter()
        .map(|row| row["path"].as_str().unwrap_or_default().to_string())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Tickets and docs
// ---------------------------------------------------------------------------------------------

/// Goal: the ticket CRUD over WebSocket with exact rows: defaults, content hashes, replacement
/// keeping kind and status, patching, tombstones hidden from `listTickets`, revival, unknown
/// kinds stored as given, `kind` filters; the `/v1/rpc/<method>` route reaches the same handler.
#[test]
fn tickets_crud_round_trip() {
    let gateway = Gateway::start(|_| {});
    let (mut client, _) = Client::connect(gateway.addr);
    let before = smithers_gateway::clock::now_ms() as i64;

    let created = ok_payload(&client.request(
        "c1",
        "createTicket",
        json!({"path": "feat-one", "content": "# One"}),
    ));
    let created_at = as_i64(&created["updatedAtMs"]);
    assert!(created_at >= before, "{created}");
    assert_eq!(
        created,
        json!({"path": "feat-one", "kind": "ticket", "content": "# One",
               "contentHash": sha256_hex("# One"), "status": null, "updatedAtMs": created_at})
    );
    let plan = ok_payload(&client.request(
        "c2",
        "createTicket",
        json!({"path": "plans/two", "content": "", "kind": "plan", "status": "draft"}),
    ));
    assert_eq!(
        (&plan["kind"], &plan["status"], &plan["contentHash"]),
        (&json!("plan"), &json!("draft"), &json!(sha256_hex("")))
    );
    // §4.8 validates only path and content: any other kind is stored as given.
    let odd = ok_payload(&client.request(
        "c3",
        "createTicket",
        json!({"path": "odd", "content": "x", "kind": "memo", "status": 7}),
    ));
    assert_eq!(
        (&odd["kind"], &odd["status"]),
        (&json!("memo"), &Value::Null)
    );

    let listed = ok_payload(&client.request("l1", "listTickets", json!({})));
    assert_eq!(paths(&listed).len(), 3, "{listed}");
    let plans = ok_payload(&client.request("l2", "listTickets", json!({"kind": "plan"})));
    assert_eq!(plans, json!([plan]));

    // Replacing keeps the stored kind and status; the content is re-hashed.
    let replaced = ok_payload(&client.request(
        "c4",
        "createTicket",
        json!({"path": "plans/two", "content": "v2"}),
    ));
    assert_eq!(
        (
            &replaced["kind"],
            &replaced["status"],
            &replaced["contentHash"]
        ),
        (&json!("plan"), &json!("draft"), &json!(sha256_hex("v2")))
    );

    let status_only = ok_payload(&client.request(
        "u1",
        "updateTicket",
        json!({"path": "feat-one", "status": "done"}),
    ));
    assert_eq!(
        (&status_only["content"], &status_only["status"]),
        (&json!("# One"), &json!("done"))
    );
    assert!(as_i64(&status_only["updatedAtMs"]) >= created_at);
    let content_only = ok_payload(&client.request(
        "u2",
        "updateTicket",
        json!({"path": "feat-one", "content": "# One, edited"}),
    ));
    assert_eq!(
        (
            &content_only["content"],
            &content_only["contentHash"],
            &content_only["status"]
        ),
        (
            &json!("# One, edited"),
            &json!(sha256_hex("# One, edited")),
            &json!("done")
        )
    );

    let deleted = ok_payload(&client.request("d1", "deleteTicket", json!({"path": "feat-one"})));
    assert_eq!(deleted, json!({"path": "feat-one", "deleted": true}));
    let listed = ok_payload(&client.request("l3", "listTickets", json!({})));
    assert!(
        !paths(&listed).contains(&"feat-one".to_string()),
        "{listed}"
    );
    let docs = ok_payload(&client.request("l4", "listDocs", json!({"includeDeleted": true})));
    let tombstone = docs
        .as_array()
        .and_then(|rows| rows.iter().find(|row| row["path"] == "feat-one"))
        .cloned()
        .unwrap_or_else(|| panic!("{docs}"));
    assert!(
        as_i64(&tombstone["deletedAtMs"]) >= created_at,
        "{tombstone}"
    );

    // Re-creating a deleted path revives it (its stored kind and status included).
    let revived = ok_payload(&client.request(
        "c5",
        "createTicket",
        json!({"path": "feat-one", "content": "back"}),
    ));
    assert_eq!(
        (&revived["content"], &revived["status"], &revived["kind"]),
        (&json!("back"), &json!("done"), &json!("ticket"))
    );
    let listed = ok_payload(&client.request("l5", "listTickets", json!({})));
    assert!(paths(&listed).contains(&"feat-one".to_string()), "{listed}");
    let docs = ok_payload(&client.request("l6", "listDocs", json!({"includeDeleted": true})));
    assert!(
        docs.as_array()
            .is_some_and(|rows| rows.iter().all(|row| row["deletedAtMs"].is_null())),
        "{docs}"
    );

    // The URL route: the body is the params.
    let response = post_json(
        gateway.addr,
        "/v1/rpc/createTicket",
        Some(ADMIN_TOKEN),
        &json!({"path": "via-url", "content": "u"}).to_string(),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["payload"]["path"], "via-url");
}

/// Goal: `listDocs` reads each filter from params or `filter`, orders newest first then by path,
/// hides tombstones unless asked, filters by kind and `updatedAfterMs` (strictly after), clamps
/// `limit` to 10,000 and refuses a non-positive one with `INVALID_INPUT`.
#[test]
fn list_docs_filters_order_and_limits() {
    let gateway = Gateway::start(|_| {});
    let addr = gateway.addr;
    assert_eq!(http_ok(addr, "listDocs", json!({})), json!([]));
    for path in ["b", "a", "c"] {
        http_ok(
            addr,
            "createTicket",
            json!({"path": path, "content": path, "kind": if path == "c" { "spec" } else { "ticket" }}),
        );
    }
    // Same-millisecond writes tie on updatedAtMs and are then ordered by path; make "c" newest.
    std::thread::sleep(std::time::Duration::from_millis(5));
    let c = http_ok(addr, "updateTicket", json!({"path": "c", "status": "s"}));
    let c_at = as_i64(&c["updatedAtMs"]);
    http_ok(addr, "deleteTicket", json!({"path": "b"}));

    let all = http_ok(addr, "listDocs", json!({}));
    assert_eq!(paths(&all), ["c", "a"]);
    let first = &all[0];
    assert_eq!(
        first,
        &json!({"path": "c", "kind": "spec", "content": "c", "contentHash": sha256_hex("c"),
                "status": "s", "updatedAtMs": c_at, "deletedAtMs": null})
    );
    assert_eq!(
        paths(&http_ok(addr, "listDocs", json!({"includeDeleted": true}))),
        ["c", "a", "b"]
    );
    assert_eq!(
        paths(&http_ok(
            addr,
            "listDocs",
            json!({"filter": {"includeDeleted": true, "kind": "ticket"}})
        )),
        ["a", "b"]
    );
    // Top-level wins over `filter`.
    assert_eq!(
        paths(&http_ok(
            addr,
            "listDocs",
            json!({"kind": "spec", "filter": {"kind": "ticket"}})
        )),
        ["c"]
    );
    assert_eq!(
        paths(&http_ok(
            addr,
            "listDocs",
            json!({"updatedAfterMs": c_at - 1})
        )),
        ["c"]
    );
    assert_eq!(
        paths(&http_ok(addr, "listDocs", json!({"updatedAfterMs": c_at}))),
        Vec::<String>::new()
    );
    // A non-number updatedAfterMs is ignored.
    assert_eq!(
        paths(&http_ok(addr, "listDocs", json!({"updatedAfterMs": "x"}))),
        ["c", "a"]
    );
    assert_eq!(
        paths(&http_ok(addr, "listDocs", json!({"filter": {"limit": 1}}))),
        ["c"]
    );
    assert_eq!(
        paths(&http_ok(addr, "listDocs", json!({"limit": 50_000}))),
        ["c", "a"]
    );
    // Non-object params are `{}` (METHODS.md §0 rule 4).
    assert_eq!(paths(&http_ok(addr, "listDocs", json!([1]))), ["c", "a"]);
    for limit in [json!(0), json!(-1), json!(1.5), json!("x")] {
        assert_http_error(
            addr,
            "listDocs",
            json!({"limit": limit}),
            400,
            "INVALID_INPUT",
            "limit must be a positive integer",
        );
    }
}

/// Goal: every ticket refusal with its code, message and status: missing or malformed path and
/// content, unknown and deleted tickets.
#[test]
fn ticket_errors_have_exact_codes_and_statuses() {
    let gateway = Gateway::start(|_| {});
    let addr = gateway.addr;
    let cases: Vec<(&str, Value, u16, &str, &str)> = vec![
        (
            "createTicket",
            json!({}),
            400,
            "INVALID_REQUEST",
            "path is required",
        ),
        (
            "createTicket",
            json!({"path": ""}),
            400,
            "INVALID_REQUEST",
            "path is required",
        ),
        (
            "createTicket",
            json!({"path": 5, "content": "x"}),
            400,
            "INVALID_REQUEST",
            "path is required",
        ),
        (
            "createTicket",
            json!({"path": "p"}),
            400,
            "INVALID_REQUEST",
            "content is required",
        ),
        (
            "createTicket",
            json!({"path": "p", "content": null}),
            400,
            "INVALID_REQUEST",
            "content is required",
        ),
        (
            "updateTicket",
            json!({"content": "x"}),
            400,
            "INVALID_REQUEST",
            "path is required",
        ),
        (
            "deleteTicket",
            json!({"path": ""}),
            400,
            "INVALID_REQUEST",
            "path is required",
        ),
        (
            "updateTicket",
            json!({"path": "nope", "content": "x"}),
            404,
            "NOT_FOUND",
            "Ticket not found: nope",
        ),
        (
            "deleteTicket",
            json!({"path": "nope"}),
            404,
            "NOT_FOUND",
            "Ticket not found: nope",
        ),
    ];
    for (method, params, status, code, message) in cases {
        assert_http_error(addr, method, params, status, code, message);
    }
    http_ok(
        addr,
        "createTicket",
        json!({"path": "gone", "content": "x"}),
    );
    http_ok(addr, "deleteTicket", json!({"path": "gone"}));
    assert_http_error(
        addr,
        "deleteTicket",
        json!({"path": "gone"}),
        404,
        "NOT_FOUND",
        "Ticket not found: gone",
    );
    assert_http_error(
        addr,
        "updateTicket",
        json!({"path": "gone", "status": "x"}),
        404,
        "NOT_FOUND",
        "Ticket not found: gone",
    );
}

// ---------------------------------------------------------------------------------------------
// Scores and memory facts
// ---------------------------------------------------------------------------------------------

struct Score<'a> {
    id: &'a str,
    run: &'a str,
    node: &'a str,
    scorer_id: &'a str,
    scorer_name: &'a str,
    source: &'a str,
    score: f64,
    scored_at: i64,
}

const SCORES: &[Score<'static>] = &[
    Score {
        id: "score-a-early",
        run: "run-a",
        node: "alpha",
        scorer_id: "judge",
        scorer_name: "Quality",
        source: "live",
        score: 0.91,
        scored_at: 100,
    },
    Score {
        id: "score-a-tie",
        run: "run-a",
        node: "beta",
        scorer_id: "judge",
        scorer_name: "Quality",
        source: "live",
        score: 0.8,
        scored_at: 200,
    },
    Score {
        id: "score-malformed",
        run: "run-a",
        node: "gamma",
        scorer_id: "judge",
        scorer_name: "Quality",
        source: "batch",
        score: 0.1,
        scored_at: 250,
    },
    Score {
        id: "score-b-middle",
        run: "run-b",
        node: "alpha",
        scorer_id: "judge",
        scorer_name: "quality",
        source: "batch",
        score: 0.7,
        scored_at: 150,
    },
    Score {
        id: "score-b-tie",
        run: "run-b",
        node: "alpha",
        scorer_id: "judge",
        scorer_name: "Quality",
        source: "live",
        score: 0.85,
        scored_at: 200,
    },
];

/// A gateway whose store holds runs `run-a`, `run-b` and `run-empty` (launched through the
/// product), the scores above and three memory facts, inserted while it was stopped.
fn seeded_gateway(
    adjust: impl Fn(&mut smithers_gateway::config::GatewayConfig),
) -> (Gateway, Gateway) {
    let data = temp_dir("records-data");
    let mut config = smithers_gateway::config::GatewayConfig {
        auth: Some(token_auth(&[(ADMIN_TOKEN, grant("admin", &["*"]))])),
        ..Default::default()
    };
    adjust(&mut config);
    let mut first = Gateway::start_full(config.clone(), 1, &example_workflows(), &data);
    let (mut client, _) = Client::connect(first.addr);
    for run_id in ["run-a", "run-b", "run-empty"] {
        client.launch(run_id, json!({"workflow": "hello", "runId": run_id}));
        client.events_until_completed(run_id);
    }
    drop(client);
    first.stop();
    seed(&data.join("smithers.db"));
    let second = Gateway::start_full(config, 1, &example_workflows(), &data);
    (first, second)
}

fn seed(db: &Path) {
    let db = rusqlite::Connection::open(db).unwrap_or_else(|e| panic!("{e}"));
    for s in SCORES {
        db.execute(
            "INSERT INTO _smithers_scorers (id, run_id, node_id, iteration, attempt, scorer_id, \
             scorer_name, source, score, scored_at_ms) VALUES (?1, ?2, ?3, 0, 1, ?4, ?5, ?6, ?7, ?8)",
            rusqlite::params![s.id, s.run, s.node, s.scorer_id, s.scorer_name, s.source, s.score, s.scored_at],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }
    db.execute(
        "UPDATE _smithers_scorers SET reason = 'good', latency_ms = 12, duration_ms = 34, \
         meta_json = '{\"rubric\":\"quality\"}', input_json = '[\"prompt\"]', \
         output_json = '\"pass\"', ground_truth_json = 'null' WHERE id = 'score-a-early'",
        [],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    db.execute(
        "UPDATE _smithers_scorers SET meta_json = '{not-json' WHERE id = 'score-malformed'",
        [],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    for (namespace, key, ttl) in [
        ("team", "b", None),
        ("proj", "z", Some(60_000)),
        ("team", "a", None),
    ] {
        db.execute(
            "INSERT INTO _smithers_memory_facts (namespace, key, value_json, schema_sig, \
             created_at_ms, updated_at_ms, ttl_ms, run_id) VALUES (?1, ?2, ?3, ?4, 10, 20, ?5, 'run-a')",
            rusqlite::params![namespace, key, format!("{{\"k\":\"{key}\"}}"), (key == "a").then_some("sig"), ttl],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }
}

fn score_ids(payload: &Value) -> Vec<&str> {
    payload["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("{payload}"))
        .iter()
        .filter_map(|row| row["scoreId"].as_str())
        .collect()
}

/// Goal: the score reads on stored rows: `listScores` (per run, by scoredAtMs, no identity or
/// detail), `listScoresForRuns` (trimmed and de-duplicated ids, global order and its tie-breaks
/// in both directions, paging with the total before paging, exact case-sensitive filters),
/// `getScoreDetail` (decoded JSON, nulls); and memory facts by namespace then key.
#[test]
fn scores_and_memory_facts_read_stored_rows() {
    let (_first, gateway) = seeded_gateway(|_| {});
    let addr = gateway.addr;

    let legacy = http_ok(addr, "listScores", json!({"runId": "run-a"}));
    assert_eq!(
        legacy[0],
        json!({"runId": "run-a", "nodeId": "alpha", "iteration": 0, "attempt": 1,
               "scorerId": "judge", "scorerName": "Quality", "source": "live", "score": 0.91,
               "reason": "good", "scoredAtMs": 100, "latencyMs": 12, "durationMs": 34})
    );
    let scored: Vec<i64> = legacy
        .as_array()
        .map(|rows| rows.iter().map(|r| as_i64(&r["scoredAtMs"])).collect())
        .unwrap_or_default();
    assert_eq!(scored, [100, 200, 250]);
    assert_eq!(legacy[1]["reason"], Value::Null);
    let beta = http_ok(
        addr,
        "listScores",
        json!({"runId": "run-a", "nodeId": "beta"}),
    );
    assert_eq!(beta.as_array().map(Vec::len), Some(1), "{beta}");
    assert_eq!(
        http_ok(addr, "listScores", json!({"runId": "run-empty"})),
        json!([])
    );

    let compared = http_ok(
        addr,
        "listScoresForRuns",
        json!({"runIds": [" run-b ", "run-a", "run-b"]}),
    );
    assert_eq!(compared["total"], 5);
    assert_eq!(
        score_ids(&compared),
        [
            "score-a-early",
            "score-b-middle",
            "score-a-tie",
            "score-b-tie",
            "score-malformed"
        ]
    );
    let mut expected_first = legacy[0].clone();
    expected_first["scoreId"] = json!("score-a-early");
    assert_eq!(compared["rows"][0], expected_first);

    let page = http_ok(
        addr,
        "listScoresForRuns",
        json!({"runIds": ["run-a", "run-b"], "offset": 1, "limit": 2}),
    );
    assert_eq!(page["total"], 5);
    assert_eq!(score_ids(&page), ["score-b-middle", "score-a-tie"]);
    // The timestamp direction flips; ties stay ascending by run and the other fields.
    let descending = http_ok(
        addr,
        "listScoresForRuns",
        json!({"runIds": ["run-a", "run-b"], "order": "scoredAtDesc", "offset": 1, "limit": 3}),
    );
    assert_eq!(
        score_ids(&descending),
        ["score-a-tie", "score-b-tie", "score-b-middle"]
    );
    let filtered = http_ok(
        addr,
        "listScoresForRuns",
        json!({"runIds": ["run-a", "run-b"], "nodeId": "alpha", "scorerId": "judge",
               "scorerName": "Quality", "source": "live", "order": "scoredAtAsc"}),
    );
    assert_eq!(score_ids(&filtered), ["score-a-early", "score-b-tie"]);
    assert_eq!(filtered["total"], 2);
    let case_sensitive = http_ok(
        addr,
        "listScoresForRuns",
        json!({"runIds": ["run-a", "run-b"], "scorerName": "quality", "source": "batch"}),
    );
    assert_eq!(score_ids(&case_sensitive), ["score-b-middle"]);
    assert_eq!(
        http_ok(addr, "listScoresForRuns", json!({"runIds": []})),
        json!({"rows": [], "total": 0})
    );
    // Thirty copies of one id are one id.
    let repeated = http_ok(
        addr,
        "listScoresForRuns",
        json!({"runIds": vec![" run-a "; 30], "limit": 1, "offset": 9_999 - 9_998}),
    );
    assert_eq!(
        (repeated["total"].clone(), score_ids(&repeated)),
        (json!(3), vec!["score-a-tie"])
    );

    let detail = http_ok(
        addr,
        "getScoreDetail",
        json!({"runId": " run-a ", "scoreId": " score-a-early "}),
    );
    let mut expected = expected_first.clone();
    for (key, value) in [
        ("meta", json!({"rubric": "quality"})),
        ("input", json!(["prompt"])),
        ("output", json!("pass")),
        ("groundTruth", Value::Null),
        ("context", Value::Null),
    ] {
        expected[key] = value;
    }
    assert_eq!(detail, expected);
    let bare = http_ok(
        addr,
        "getScoreDetail",
        json!({"runId": "run-a", "scoreId": "score-a-tie"}),
    );
    for key in ["meta", "input", "output", "groundTruth", "context"] {
        assert_eq!(bare[key], Value::Null, "{key}: {bare}");
    }

    // Over WebSocket too.
    let (mut client, _) = Client::connect(addr);
    let ws = ok_payload(&client.request(
        "s1",
        "listScoresForRuns",
        json!({"runIds": ["run-a", "run-b"], "limit": 1}),
    ));
    assert_eq!(
        (ws["total"].clone(), score_ids(&ws)),
        (json!(5), vec!["score-a-early"])
    );

    // Memory facts: namespace then key; `namespace` filters exactly.
    let facts = ok_payload(&client.request("m1", "listMemoryFacts", json!({})));
    let keys: Vec<(String, String)> = facts
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| (r["namespace"].to_string(), r["key"].to_string()))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        keys,
        [
            ("\"proj\"", "\"z\""),
            ("\"team\"", "\"a\""),
            ("\"team\"", "\"b\"")
        ]
        .map(|(n, k)| (n.to_string(), k.to_string()))
    );
    assert_eq!(
        facts[0],
        json!({"namespace": "proj", "key": "z", "valueJson": "{\"k\":\"z\"}", "schemaSig": null,
               "createdAtMs": 10, "updatedAtMs": 20, "ttlMs": 60000})
    );
    let team = ok_payload(&client.request("m2", "listMemoryFacts", json!({"namespace": "team"})));
    assert_eq!(team.as_array().map(Vec::len), Some(2), "{team}");
    assert_eq!(team[0]["schemaSig"], "sig");
    assert_eq!(
        ok_payload(&client.request("m3", "listMemoryFacts", json!({"namespace": "Team"}))),
        json!([])
    );
}

/// Goal: every score refusal: strict keys, runIds rules, filter types, offset/limit bounds and
/// their sum (all `INVALID_REQUEST` 400), unknown runs (`RunNotFound` 404, checked before any
/// score), unknown scores (`ScoreNotFound`), malformed stored JSON (`Internal` 500), and
/// `listScores`' legacy codes.
#[test]
fn score_errors_have_exact_codes_and_statuses() {
    let (_first, gateway) = seeded_gateway(|_| {});
    let addr = gateway.addr;
    let bad = |params: Value, message: &str| {
        assert_http_error(
            addr,
            "listScoresForRuns",
            params,
            400,
            "INVALID_REQUEST",
            message,
        );
    };
    let ids = "runIds must be an array of run ids";
    bad(json!({}), ids);
    bad(json!([1]), ids);
    bad(json!({"runIds": "run-a"}), ids);
    bad(json!({"runIds": null}), ids);
    bad(
        json!({"runIds": ["run-a"], "extra": true}),
        "Unexpected listScoresForRuns parameter: extra",
    );
    // Unknown keys are checked first.
    bad(
        json!({"extra": 1}),
        "Unexpected listScoresForRuns parameter: extra",
    );
    bad(json!({"runIds": [1]}), "runIds entries must be a string");
    bad(json!({"runIds": [" "]}), "runIds entries must not be blank");
    bad(
        json!({"runIds": ["x".repeat(257)]}),
        "runIds entries must be at most 256 characters",
    );
    bad(
        json!({"runIds": (0..31).map(|i| format!("run-{i}")).collect::<Vec<_>>()}),
        "runIds must contain at most 30 run ids",
    );
    bad(
        json!({"runIds": ["run-a"], "nodeId": 1}),
        "nodeId must be a string",
    );
    bad(
        json!({"runIds": ["run-a"], "scorerId": null}),
        "scorerId must be a string",
    );
    bad(
        json!({"runIds": ["run-a"], "scorerName": []}),
        "scorerName must be a string",
    );
    bad(
        json!({"runIds": ["run-a"], "source": "eval"}),
        "source must be live or batch",
    );
    bad(
        json!({"runIds": ["run-a"], "order": "newest"}),
        "order must be scoredAtAsc or scoredAtDesc",
    );
    for offset in [json!(-1), json!(10_000), json!(1.5), json!("1")] {
        bad(
            json!({"runIds": ["run-a"], "offset": offset}),
            "offset must be an integer from 0 to 9999",
        );
    }
    for limit in [json!(0), json!(501), json!(1.5), json!(null)] {
        bad(
            json!({"runIds": ["run-a"], "limit": limit}),
            "limit must be an integer from 1 to 500",
        );
    }
    bad(
        json!({"runIds": [], "limit": 0}),
        "limit must be an integer from 1 to 500",
    );
    bad(
        json!({"runIds": ["run-a"], "offset": 9_999, "limit": 2}),
        "offset + limit must not exceed 10000",
    );
    assert_http_error(
        addr,
        "listScoresForRuns",
        json!({"runIds": ["run-a", "missing", "also-missing"], "source": "live"}),
        404,
        "RunNotFound",
        "Run not found: missing",
    );

    let detail_cases: Vec<(Value, u16, &str, &str)> = vec![
        (
            json!({"runId": "run-a"}),
            400,
            "INVALID_REQUEST",
            "scoreId must be a string",
        ),
        (
            json!({"scoreId": "s"}),
            400,
            "INVALID_REQUEST",
            "runId must be a string",
        ),
        (
            json!({"runId": " ", "scoreId": " "}),
            400,
            "INVALID_REQUEST",
            "runId must not be blank",
        ),
        (
            json!({"runId": "run-a", "scoreId": "x".repeat(257)}),
            400,
            "INVALID_REQUEST",
            "scoreId must be at most 256 characters",
        ),
        (
            json!({"runId": "run-a", "scoreId": "s", "nodeId": "n"}),
            400,
            "INVALID_REQUEST",
            "Unexpected getScoreDetail parameter: nodeId",
        ),
        (
            json!({"runId": "missing", "scoreId": "score-a-early"}),
            404,
            "RunNotFound",
            "Run not found: missing",
        ),
        (
            json!({"runId": "run-b", "scoreId": "score-a-early"}),
            404,
            "ScoreNotFound",
            "Score not found on run run-b: score-a-early",
        ),
        (
            json!({"runId": "run-a", "scoreId": "score-malformed"}),
            500,
            "Internal",
            "Score score-malformed has malformed meta_json",
        ),
    ];
    for (params, status, code, message) in detail_cases {
        assert_http_error(addr, "getScoreDetail", params, status, code, message);
    }

    assert_http_error(
        addr,
        "listScores",
        json!({}),
        400,
        "INVALID_REQUEST",
        "runId is required",
    );
    assert_http_error(
        addr,
        "listScores",
        json!({"runId": ""}),
        400,
        "INVALID_REQUEST",
        "runId is required",
    );
    assert_http_error(
        addr,
        "listScores",
        json!({"runId": "missing"}),
        404,
        "NOT_FOUND",
        "Run not found: missing",
    );
}

// ---------------------------------------------------------------------------------------------
// Prompts, accounts
// ---------------------------------------------------------------------------------------------

/// Goal: `listPrompts` walks `<workspaceRoot>/.smithers/prompts/` for `.md`/`.mdx` files (dot
/// names and other extensions skipped, subdirectories entered), rows sorted by id with the file's
/// source and times; no prompts directory, or no workspace, lists nothing.
#[test]
fn list_prompts_walks_the_workspace() {
    let workspace = temp_dir("records-workspace");
    let prompts = workspace.join(".smithers/prompts");
    for dir in ["review/deep", ".drafts"] {
        std::fs::create_dir_all(prompts.join(dir)).unwrap_or_else(|e| panic!("{e}"));
    }
    for (file, text) in [
        ("summarize.md", "# Summarize\n"),
        ("review/deep/security.mdx", "<Security />"),
        ("review/basic.md", "Look at it."),
        (".hidden.md", "no"),
        (".drafts/draft.md", "no"),
        ("notes.txt", "no"),
    ] {
        std::fs::write(prompts.join(file), text).unwrap_or_else(|e| panic!("{e}"));
    }
    let root = workspace.to_string_lossy().into_owned();
    let gateway = Gateway::start(|c| c.workspace_root = Some(root.clone()));
    let (mut client, _) = Client::connect(gateway.addr);
    let rows = ok_payload(&client.request("p1", "listPrompts", json!({})));
    let summary: Vec<(Value, Value, Value)> = rows
        .as_array()
        .unwrap_or_else(|| panic!("{rows}"))
        .iter()
        .map(|row| {
            (
                row["id"].clone(),
                row["entryFile"].clone(),
                row["source"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                json!("review/basic"),
                json!("prompts/review/basic.md"),
                json!("Look at it.")
            ),
            (
                json!("review/deep/security"),
                json!("prompts/review/deep/security.mdx"),
                json!("<Security />")
            ),
            (
                json!("summarize"),
                json!("prompts/summarize.md"),
                json!("# Summarize\n")
            ),
        ]
    );
    let now = smithers_gateway::clock::now_ms() as i64;
    for row in rows.as_array().into_iter().flatten() {
        let updated = as_i64(&row["updatedAtMs"]);
        assert!(updated > now - 600_000 && updated <= now, "{row}");
        if let Some(created) = row.get("createdAtMs") {
            assert!(as_i64(created) <= now, "{row}");
        }
    }

    std::fs::remove_dir_all(&prompts).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(http_ok(gateway.addr, "listPrompts", json!({})), json!([]));
    drop(client);
    drop(gateway);
    let _ = std::fs::remove_dir_all(&workspace);

    let bare = Gateway::start(|_| {});
    assert_eq!(http_ok(bare.addr, "listPrompts", json!({})), json!([]));
}

/// Goal: accounts and usage reports answer the minimal `[]` (no accounts registry), `fresh`
/// accepted.
#[test]
fn accounts_and_usage_reports_are_empty() {
    let gateway = Gateway::start(|_| {});
    assert_eq!(http_ok(gateway.addr, "listAccounts", json!({})), json!([]));
    assert_eq!(
        http_ok(gateway.addr, "listUsageReports", json!({"fresh": true})),
        json!([])
    );
    let (mut client, _) = Client::connect(gateway.addr);
    assert_eq!(
        ok_payload(&client.request("a1", "listUsageReports", json!({}))),
        json!([])
    );
}

// ---------------------------------------------------------------------------------------------
// Browser sessions
// ---------------------------------------------------------------------------------------------

/// Goal: browser methods validate strictly (objects only, no unknown keys, required keys, ids
/// non-empty strings: `InvalidRequest` 400), then `listBrowserSessions` answers `[]` and the
/// others `Internal` 500 "browser sessions are not available"; non-object params reach them
/// as sent (over `/rpc` and WebSocket), unlike every other method.
#[test]
fn browser_methods_validate_then_report_unavailable() {
    let gateway = Gateway::start(|_| {});
    let addr = gateway.addr;
    let unavailable = "browser sessions are not available";
    let cases: Vec<(&str, Value, u16, &str, &str)> = vec![
        (
            "listBrowserSessions",
            json!([]),
            400,
            "InvalidRequest",
            "listBrowserSessions params must be an object",
        ),
        (
            "listBrowserSessions",
            json!("x"),
            400,
            "InvalidRequest",
            "listBrowserSessions params must be an object",
        ),
        (
            "listBrowserSessions",
            json!(null),
            400,
            "InvalidRequest",
            "listBrowserSessions params must be an object",
        ),
        (
            "listBrowserSessions",
            json!({"a": 1}),
            400,
            "InvalidRequest",
            "Unexpected listBrowserSessions parameter: a",
        ),
        (
            "createBrowserSession",
            json!({}),
            400,
            "InvalidRequest",
            "source is required",
        ),
        (
            "createBrowserSession",
            json!({"source": "https://example.com", "sessionId": "s"}),
            400,
            "InvalidRequest",
            "Unexpected createBrowserSession parameter: sessionId",
        ),
        (
            "createBrowserSession",
            json!({"source": "https://example.com", "viewport": {"width": 800, "height": 600}}),
            500,
            "Internal",
            unavailable,
        ),
        (
            "browserAct",
            json!({"sessionId": "s", "actionId": "a"}),
            400,
            "InvalidRequest",
            "action is required",
        ),
        (
            "browserAct",
            json!({"sessionId": "", "actionId": "a", "action": {}}),
            400,
            "InvalidRequest",
            "sessionId must be a non-empty string",
        ),
        (
            "browserAct",
            json!({"sessionId": "s", "actionId": 3, "action": {}}),
            400,
            "InvalidRequest",
            "actionId must be a non-empty string",
        ),
        (
            "browserAct",
            json!({"sessionId": "s", "actionId": "a", "action": {"type": "click"}, "expectedRevision": 2}),
            500,
            "Internal",
            unavailable,
        ),
        (
            "browserContext",
            json!({}),
            400,
            "InvalidRequest",
            "sessionId is required",
        ),
        (
            "browserContext",
            json!({"sessionId": "s", "sinceRevision": 1, "include": ["dom"]}),
            500,
            "Internal",
            unavailable,
        ),
        (
            "browserPick",
            json!({"sessionId": "s"}),
            400,
            "InvalidRequest",
            "point is required",
        ),
        (
            "browserPick",
            json!({"sessionId": "s", "point": {"x": 1, "y": 2}}),
            500,
            "Internal",
            unavailable,
        ),
        (
            "closeBrowserSession",
            json!({"sessionId": null}),
            400,
            "InvalidRequest",
            "sessionId is required",
        ),
        (
            "closeBrowserSession",
            json!({"sessionId": "s", "force": true}),
            400,
            "InvalidRequest",
            "Unexpected closeBrowserSession parameter: force",
        ),
        (
            "closeBrowserSession",
            json!({"sessionId": "s"}),
            500,
            "Internal",
            unavailable,
        ),
    ];
    for (method, params, status, code, message) in cases {
        assert_http_error(addr, method, params, status, code, message);
    }
    assert_eq!(http_ok(addr, "listBrowserSessions", json!({})), json!([]));
    // No params at all are `{}`.
    let response = post_json(
        addr,
        "/rpc",
        Some(ADMIN_TOKEN),
        &json!({"id": "b", "method": "listBrowserSessions"}).to_string(),
    );
    assert_eq!(
        (response.status, response.json()["payload"].clone()),
        (200, json!([]))
    );

    let (mut client, _) = Client::connect(addr);
    let refused = client.request("w1", "browserPick", json!([1, 2]));
    assert_eq!(
        (&refused["error"]["code"], &refused["error"]["message"]),
        (
            &json!("InvalidRequest"),
            &json!("browserPick params must be an object")
        )
    );
    let listed = client.request("w2", "listBrowserSessions", json!({}));
    assert_eq!(ok_payload(&listed), json!([]));
}

// ---------------------------------------------------------------------------------------------
// Scopes
// ---------------------------------------------------------------------------------------------

/// Goal: each method needs its catalog scope (METHODS.md §1): FORBIDDEN 403 with
/// `requiredScope` otherwise; `ticket:write` implies `ticket:read`; run scopes reach only the
/// run-scoped methods (listDocs, browser methods).
#[test]
fn scopes_are_enforced_per_method() {
    let gateway = Gateway::start(|c| {
        c.auth = Some(token_auth(&[
            (ADMIN_TOKEN, grant("admin", &["*"])),
            ("runner", grant("admin", &["run:admin"])),
            ("reader", grant("viewer", &["run:read"])),
            ("tickets", grant("operator", &["ticket:write"])),
            ("tickets-read", grant("viewer", &["ticket:read"])),
            ("scores", grant("viewer", &["score:read"])),
            ("memory", grant("viewer", &["memory:read"])),
            ("prompts", grant("viewer", &["prompt:read"])),
            ("accounts", grant("viewer", &["account:read"])),
            ("legacy-read", grant("viewer", &["read"])),
        ]));
    });
    let addr = gateway.addr;
    let catalog = [
        ("listDocs", "run:read"),
        ("listTickets", "ticket:read"),
        ("createTicket", "ticket:write"),
        ("updateTicket", "ticket:write"),
        ("deleteTicket", "ticket:write"),
        ("listMemoryFacts", "memory:read"),
        ("listPrompts", "prompt:read"),
        ("listScores", "score:read"),
        ("listScoresForRuns", "score:read"),
        ("getScoreDetail", "score:read"),
        ("listAccounts", "account:read"),
        ("listUsageReports", "account:read"),
        ("createBrowserSession", "run:write"),
        ("browserAct", "run:write"),
        ("closeBrowserSession", "run:write"),
        ("browserContext", "run:read"),
        ("browserPick", "run:read"),
        ("listBrowserSessions", "run:read"),
    ];
    let grants: &[(&str, &[&str])] = &[
        ("runner", &["run:read", "run:write"]),
        ("reader", &["run:read"]),
        ("tickets", &["ticket:read", "ticket:write"]),
        ("tickets-read", &["ticket:read"]),
        ("scores", &["score:read"]),
        ("memory", &["memory:read"]),
        ("prompts", &["prompt:read"]),
        ("accounts", &["account:read"]),
        (
            "legacy-read",
            &[
                "run:read",
                "ticket:read",
                "score:read",
                "memory:read",
                "prompt:read",
                "account:read",
            ],
        ),
    ];
    for (token, held) in grants {
        for (method, scope) in catalog {
            let (status, frame) = rpc_post(addr, token, method, json!({}));
            if held.contains(&scope) {
                assert_ne!(status, 403, "{token} {method}: {frame}");
            } else {
                assert_eq!(
                    (
                        status,
                        &frame["error"]["code"],
                        &frame["error"]["requiredScope"]
                    ),
                    (403, &json!("FORBIDDEN"), &json!(scope)),
                    "{token} {method}: {frame}"
                );
                assert_eq!(
                    frame["error"]["message"],
                    format!("Missing required scope {scope} for {method}")
                );
            }
        }
    }
}

/// Rows past every list's bound: one more than `RECORDS_LIST_MAX` (and the inspection bound).
const PAST_CAP: usize = 10_001;

/// Goal: the 10,000-row bounds of LIMITS.md hold. With 10,001 live tickets, memory facts,
/// scores of one run, token-usage events of one run and child runs of one root (inserted while
/// the gateway was stopped: no product path makes that many quickly), `listTickets`,
/// `listDocs` (asked for 20,000), `listMemoryFacts`, `listScores`, `listRunTokenUsage` and
/// `listRunDescendants` (asked for 20,000) each return exactly 10,000, in their documented order.
#[test]
fn lists_stop_at_ten_thousand_rows() {
    let data = temp_dir("records-caps");
    let config = smithers_gateway::config::GatewayConfig {
        auth: Some(token_auth(&[(ADMIN_TOKEN, grant("admin", &["*"]))])),
        ..Default::default()
    };
    let mut first = Gateway::start_full(config.clone(), 1, &example_workflows(), &data);
    let (mut client, _) = Client::connect(first.addr);
    client.launch("l", json!({"workflow": "hello", "runId": "cap-run"}));
    client.events_until_completed("cap-run");
    drop(client);
    first.stop();
    {
        let mut db =
            rusqlite::Connection::open(data.join("smithers.db")).unwrap_or_else(|e| panic!("{e}"));
        let tx = db.transaction().unwrap_or_else(|e| panic!("{e}"));
        for i in 0..PAST_CAP {
            let i = i as i64;
            tx.execute(
                "INSERT INTO _smithers_docs (path, kind, content, content_hash, updated_at_ms) \
                 VALUES (?1, 'ticket', 'c', 'h', ?2)",
                rusqlite::params![format!("t/{i:05}.md"), 1_000 + i],
            )
            .unwrap_or_else(|e| panic!("{e}"));
            tx.execute(
                "INSERT INTO _smithers_memory_facts (namespace, key, value_json, created_at_ms, \
                 updated_at_ms) VALUES ('ns', ?1, '1', 1, 1)",
                rusqlite::params![format!("k{i:05}")],
            )
            .unwrap_or_else(|e| panic!("{e}"));
            tx.execute(
                "INSERT INTO _smithers_scorers (id, run_id, node_id, iteration, attempt, \
                 scorer_id, scorer_name, source, score, scored_at_ms) \
                 VALUES (?1, 'cap-run', 'greet', 0, 1, ?1, 'q', 'live', 0.5, ?2)",
                rusqlite::params![format!("s{i:05}"), 1_000 + i],
            )
            .unwrap_or_else(|e| panic!("{e}"));
            tx.execute(
                "INSERT INTO _smithers_events (run_id, seq, timestamp_ms, type, payload_json) \
                 VALUES ('cap-run', ?1, ?2, 'TokenUsageReported', '{\"inputTokens\":1}')",
                rusqlite::params![1_000_000 + i, 5_000 + i],
            )
            .unwrap_or_else(|e| panic!("{e}"));
            tx.execute(
                "INSERT INTO _smithers_runs (run_id, parent_run_id, workflow_name, status, \
                 created_at_ms, input_json) VALUES (?1, 'cap-run', 'hello', 'finished', ?2, '{}')",
                rusqlite::params![format!("cap-child-{i:05}"), 2_000 + i],
            )
            .unwrap_or_else(|e| panic!("{e}"));
        }
        tx.commit().unwrap_or_else(|e| panic!("{e}"));
    }
    let gateway = Gateway::start_full(config, 1, &example_workflows(), &data);
    let (mut client, _) = Client::connect(gateway.addr);
    let rows = |client: &mut Client, method: &str, params: Value| -> Vec<Value> {
        let response = client.request("cap", method, params);
        assert_eq!(response["ok"], true, "{method}: {response}");
        let payload = &response["payload"];
        let list = payload
            .as_array()
            .or_else(|| payload["events"].as_array())
            .unwrap_or_else(|| panic!("{method}: no rows"));
        list.clone()
    };
    const CAP: usize = 10_000;

    let tickets = rows(&mut client, "listTickets", json!({}));
    assert_eq!(tickets.len(), CAP);
    // Newest first: the oldest ticket is the one left out.
    assert_eq!(tickets[0]["path"], "t/10000.md");
    assert_eq!(tickets[CAP - 1]["path"], "t/00001.md");
    let docs = rows(&mut client, "listDocs", json!({"limit": 20_000}));
    assert_eq!(docs.len(), CAP);
    let facts = rows(&mut client, "listMemoryFacts", json!({}));
    assert_eq!(facts.len(), CAP);
    assert_eq!(facts[CAP - 1]["key"], "k09999");
    let scores = rows(&mut client, "listScores", json!({"runId": "cap-run"}));
    assert_eq!(scores.len(), CAP);
    let usage = rows(
        &mut client,
        "listRunTokenUsage",
        json!({"runId": "cap-run"}),
    );
    assert_eq!(usage.len(), CAP);
    let descendants = rows(
        &mut client,
        "listRunDescendants",
        json!({"runId": "cap-run", "limit": 20_000}),
    );
    assert_eq!(descendants.len(), CAP);
    assert_eq!(descendants[0]["runId"], "cap-run");
    assert_eq!(descendants[CAP - 1]["runId"], "cap-child-09998");
    drop(gateway);
    drop(first);
}
