//! The WebSocket handshake of PROTOCOL.md §6: challenge, connect validation and negotiation,
//! hello, ticks, repeated connect, and what happens before connect.

use crate::support::*;
use serde_json::json;
use std::time::{Duration, Instant};

/// The challenge is event seq 1 with a UUID nonce; connect answers hello with every field.
#[test]
fn challenge_then_hello_with_every_field() {
    let gateway = Gateway::start(|c| c.heartbeat_ms = 60_000);
    let mut ws = ws_open(gateway.addr);
    let challenge = recv_json(&mut ws);
    assert_eq!(challenge["type"], "event");
    assert_eq!(challenge["event"], "connect.challenge");
    assert_eq!(challenge["seq"], 1);
    assert_eq!(challenge["apiVersion"], "v1");
    assert_eq!(challenge["stateVersion"], 0);
    let nonce = challenge["payload"]["nonce"].as_str().unwrap_or_default();
    assert_eq!(nonce.len(), 36, "nonce is a UUID: {nonce}");
    assert!(challenge["payload"]["ts"].as_u64().unwrap_or(0) > 1_600_000_000_000);

    let response = request(
        &mut ws,
        "connect-1",
        "connect",
        connect_params(Some(ADMIN_TOKEN)),
    );
    assert_eq!(response["ok"], true);
    assert_eq!(response["apiVersion"], "v1");
    assert!(response.get("seq").is_none(), "responses carry no seq");
    let hello = &response["payload"];
    assert_eq!(hello["protocol"], 1);
    assert_eq!(hello["features"], json!(["streaming", "runs"]));
    assert_eq!(hello["policy"], json!({"heartbeatMs": 60000}));
    assert_eq!(hello["identity"]["pid"], std::process::id());
    assert!(hello["identity"]["startedAtMs"].as_u64().unwrap_or(0) > 1_600_000_000_000);
    assert!(hello["identity"].get("workspaceRoot").is_some());
    assert!(hello["identity"].get("backend").is_some());
    assert!(hello["identity"]["version"].is_string());
    assert_eq!(hello["auth"]["role"], "admin");
    assert_eq!(hello["auth"]["scopes"], json!(["*"]));
    assert_eq!(hello["auth"]["userId"], serde_json::Value::Null);
    assert_eq!(
        hello["auth"]["sessionToken"].as_str().map(str::len),
        Some(36)
    );
    assert_eq!(
        hello["auth"]["tokenId"].as_str().map(str::len),
        Some(16),
        "default tokenId is 16 hex chars"
    );
    assert_eq!(
        hello["snapshot"],
        json!({"runs": [], "approvals": [], "stateVersion": 0})
    );
}

/// Ticks arrive every heartbeatMs after connect, numbered after the challenge.
#[test]
fn ticks_every_heartbeat_after_connect() {
    let gateway = Gateway::start(|c| c.heartbeat_ms = 100);
    let mut ws = ws_open(gateway.addr);
    // Nothing but the challenge before connect, even after several heartbeats.
    std::thread::sleep(Duration::from_millis(350));
    let (response, before) = {
        send_json(
            &mut ws,
            &json!({"type":"req","id":"c","method":"connect","params":connect_params(Some(ADMIN_TOKEN))}),
        );
        recv_response(&mut ws, "c")
    };
    assert_eq!(response["ok"], true);
    assert_eq!(
        before.len(),
        1,
        "only the challenge before connect: {before:?}"
    );
    let started = Instant::now();
    let mut previous_seq = 1;
    for _ in 0..3 {
        let tick = recv_json(&mut ws);
        assert_eq!(tick["event"], "tick");
        assert_eq!(
            tick["seq"],
            previous_seq + 1,
            "seq increments by one per event"
        );
        previous_seq = tick["seq"].as_u64().unwrap_or(0);
        assert!(tick["payload"]["ts"].is_u64());
        assert!(tick["stateVersion"].is_u64());
    }
    // Three ticks at 100 ms cannot arrive in less than ~300 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "ticks too early: {:?}",
        started.elapsed()
    );
}

/// Requests before connect are refused with their own id; the socket stays open.
#[test]
fn requests_before_connect_are_refused() {
    let gateway = Gateway::start(|_| {});
    let mut ws = ws_open(gateway.addr);
    let response = request(&mut ws, "h-1", "health", json!({}));
    assert_eq!(response["ok"], false);
    assert_eq!(response["error"]["code"], "UNAUTHORIZED");
    assert_eq!(response["error"]["message"], "Connect first");
    assert_eq!(response["error"]["version"], "v1");
    let hello = request(&mut ws, "c", "connect", connect_params(Some(ADMIN_TOKEN)));
    assert_eq!(hello["ok"], true);
    let health = request(&mut ws, "h-2", "health", json!({}));
    assert_eq!(health["ok"], true);
    assert_eq!(health["payload"]["protocol"], 1);
    assert!(health["payload"]["uptimeMs"].is_u64());
    assert!(health["payload"].get("ok").is_none());
}

/// Validation order of PROTOCOL.md §6.2; failures before auth keep the socket open.
#[test]
fn connect_validation_keeps_the_socket_open() {
    let gateway = Gateway::start(|_| {});
    let mut ws = ws_open(gateway.addr);
    let cases = [
        (json!([]), "INVALID_REQUEST"),
        (json!({"maxProtocol":1,"client":{}}), "INVALID_REQUEST"),
        (
            json!({"minProtocol":0,"maxProtocol":1,"client":{}}),
            "INVALID_INPUT",
        ),
        (
            json!({"minProtocol":1.5,"maxProtocol":2,"client":{}}),
            "INVALID_INPUT",
        ),
        (
            json!({"minProtocol":2,"maxProtocol":3,"client":{}}),
            "PROTOCOL_UNSUPPORTED",
        ),
    ];
    for (index, (params, code)) in cases.iter().enumerate() {
        let id = format!("c{index}");
        let response = request(&mut ws, &id, "connect", params.clone());
        assert_eq!(response["error"]["code"], *code, "{params}");
    }
    let hello = request(&mut ws, "ok", "connect", connect_params(Some(ADMIN_TOKEN)));
    assert_eq!(hello["ok"], true);
}

/// A failed connect on a fresh socket is answered, then closed with 1008.
#[test]
fn failed_authentication_closes_with_1008() {
    let gateway = Gateway::start(|_| {});
    let mut ws = ws_open(gateway.addr);
    let response = request(&mut ws, "c", "connect", connect_params(Some("wrong-token")));
    assert_eq!(response["error"]["code"], "UNAUTHORIZED");
    assert_eq!(response["error"]["message"], "Invalid token");
    assert_eq!(read_until_end(&mut ws), Ending::Closed(Some(1008)));
}

/// A repeated connect re-authenticates; a failed repeat keeps the old identity and the socket.
#[test]
fn repeated_connect_replaces_identity() {
    let reader = "reader-token-abcdefghijklmnop";
    let gateway = Gateway::start(|c| {
        c.auth = Some(token_auth(&[
            (ADMIN_TOKEN, grant("admin", &["*"])),
            (reader, grant("viewer", &["run:read"])),
        ]));
    });
    let (mut ws, first) = ws_connect(gateway.addr, ADMIN_TOKEN);
    let second = request(&mut ws, "c2", "connect", connect_params(Some(reader)));
    assert_eq!(second["payload"]["auth"]["role"], "viewer");
    assert_ne!(
        second["payload"]["auth"]["sessionToken"],
        first["payload"]["auth"]["sessionToken"]
    );
    let failed = request(&mut ws, "c3", "connect", connect_params(Some("nope")));
    assert_eq!(failed["error"]["code"], "UNAUTHORIZED");
    // Still open, still the viewer.
    let health = request(&mut ws, "h", "health", json!({}));
    assert_eq!(health["ok"], true);
    assert_eq!(
        gateway
            .state()
            .counters
            .authenticated_connections
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

/// No connect within authDeadlineMs: the TCP connection is dropped without a close frame.
#[test]
fn auth_deadline_drops_without_close_frame() {
    let gateway = Gateway::start(|c| c.auth_deadline_ms = 200);
    let mut ws = ws_open(gateway.addr);
    let challenge = recv_json(&mut ws);
    assert_eq!(challenge["event"], "connect.challenge");
    let started = Instant::now();
    assert_eq!(read_until_end(&mut ws), Ending::Dropped);
    assert!(started.elapsed() >= Duration::from_millis(150));
}

/// Invalid frames are answered with id "invalid" and INVALID_INPUT; the socket stays open.
#[test]
fn invalid_frames_answer_with_id_invalid() {
    let gateway = Gateway::start(|_| {});
    let (mut ws, _) = ws_connect(gateway.addr, ADMIN_TOKEN);
    for text in [
        "{",
        "[]",
        r#"{"type":"req","id":"real","method":"Bad"}"#,
        r#"{"type":"req","id":7,"method":"health"}"#,
    ] {
        ws.send(tungstenite::Message::text(text))
            .unwrap_or_else(|e| panic!("{e}"));
        let response = recv_response(&mut ws, "invalid").0;
        assert_eq!(response["ok"], false);
        assert_eq!(response["error"]["code"], "INVALID_INPUT", "{text}");
    }
    let unknown = request(&mut ws, "u", "noSuchMethod", json!({}));
    assert_eq!(unknown["error"]["code"], "METHOD_NOT_FOUND");
    assert_eq!(unknown["error"]["message"], "Unknown method: noSuchMethod");
    let binary = {
        ws.send(tungstenite::Message::binary(
            br#"{"type":"req","id":"b","method":"health","params":{}}"#.to_vec(),
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        recv_response(&mut ws, "b").0
    };
    assert_eq!(binary["ok"], true, "binary messages are decoded as UTF-8");
}
