//! HTTP RPC over real sockets (PROTOCOL.md §4, ERRORS.md §3): `POST /rpc` and
//! `POST /v1/rpc/<method>`, where the method, params and id come from, the credential headers,
//! and every refusal with its exact code, message, id and HTTP status.

use crate::support::*;
use serde_json::{json, Value};
use smithers_gateway::config::TokenGrant;
use std::net::SocketAddr;

/// Sends `POST <path>` with `headers` and `body` (Content-Length framing, `Connection: close`).
fn rpc(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &str) -> HttpResponse {
    let mut request = format!("POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    let response = http_once(addr, request.as_bytes());
    assert_eq!(
        response.header("content-type"),
        Some("application/json"),
        "{path}"
    );
    assert_eq!(response.header("x-smithers-api-version"), Some("v1"));
    response
}

const BEARER: (&str, &str) = ("Authorization", "Bearer test-admin-token-0123456789");

/// Asserts an error frame: HTTP `status`, then the exact frame with `id` and the `error` object
/// (`version` added here).
fn assert_error(response: &HttpResponse, status: u16, id: &str, mut error: Value) {
    error["version"] = json!("v1");
    assert_eq!(response.status, status, "{}", response.text());
    assert_eq!(
        response.json(),
        json!({"type": "res", "id": id, "ok": false, "apiVersion": "v1", "error": error})
    );
}

fn is_uuid(text: &str) -> bool {
    uuid::Uuid::parse_str(text).is_ok() && text.len() == 36
}

/// `POST /rpc` with a body id answers a success frame echoing it, with the health payload.
#[test]
fn rpc_body_route_answers_health_with_the_body_id() {
    let gateway = Gateway::start(|_| {});
    let response = rpc(
        gateway.addr,
        "/rpc",
        &[BEARER],
        r#"{"id":"r1","method":"health","params":{}}"#,
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let frame = response.json();
    let payload = &frame["payload"];
    assert!(payload["uptimeMs"].is_u64(), "{frame}");
    assert_eq!(
        frame,
        json!({"type": "res", "id": "r1", "ok": true, "apiVersion": "v1", "payload": {
            "protocol": 1,
            "features": ["streaming", "runs"],
            "stateVersion": 0,
            "uptimeMs": payload["uptimeMs"],
            "identity": payload["identity"],
            "workflowsLoaded": 6,
            "workflowsTotal": 6,
        }})
    );
    assert_eq!(payload["identity"]["pid"], std::process::id());
    assert!(payload.get("ok").is_none(), "the RPC payload has no ok");
}

/// `POST /v1/rpc/health` answers with id = `X-Request-Id` when sent, else a fresh UUID.
#[test]
fn url_route_id_is_the_request_id_or_a_uuid() {
    let gateway = Gateway::start(|_| {});
    let with_id = rpc(
        gateway.addr,
        "/v1/rpc/health",
        &[BEARER, ("X-Request-Id", "req-42")],
        "{}",
    );
    assert_eq!(with_id.status, 200);
    assert_eq!(with_id.json()["id"], "req-42");
    assert_eq!(with_id.json()["ok"], true);

    let first = rpc(gateway.addr, "/v1/rpc/health", &[BEARER], "{}");
    let second = rpc(gateway.addr, "/v1/rpc/health", &[BEARER], "{}");
    let first_id = first.json()["id"].as_str().unwrap_or_default().to_string();
    let second_id = second.json()["id"].as_str().unwrap_or_default().to_string();
    assert!(is_uuid(&first_id), "{first_id}");
    assert!(is_uuid(&second_id), "{second_id}");
    assert_ne!(first_id, second_id, "a fresh UUID per request");

    // A string id in the body wins over the request id.
    let body_id = rpc(
        gateway.addr,
        "/v1/rpc/health",
        &[BEARER, ("X-Request-Id", "req-43")],
        r#"{"id":"body-1"}"#,
    );
    assert_eq!(body_id.json()["id"], "body-1");
    // A non-string body id is ignored.
    let numeric_id = rpc(
        gateway.addr,
        "/rpc",
        &[BEARER, ("X-Request-Id", "req-44")],
        r#"{"id":7,"method":"health"}"#,
    );
    assert_eq!(numeric_id.json()["id"], "req-44");
}

/// An empty (or whitespace) body is treated as `{}` on both routes' URL form.
#[test]
fn empty_body_is_an_empty_object() {
    let gateway = Gateway::start(|_| {});
    for body in ["", "  \r\n"] {
        let response = rpc(
            gateway.addr,
            "/v1/rpc/health",
            &[BEARER, ("X-Request-Id", "empty")],
            body,
        );
        assert_eq!(response.status, 200, "{body:?}: {}", response.text());
        assert_eq!(response.json()["id"], "empty");
        assert_eq!(response.json()["ok"], true);
    }
    // `/rpc` with an empty body has no method.
    let response = rpc(
        gateway.addr,
        "/rpc",
        &[BEARER, ("X-Request-Id", "empty")],
        "",
    );
    assert_error(
        &response,
        400,
        "empty",
        json!({"code": "INVALID_INPUT", "message": "Gateway method name must be a string."}),
    );
}

/// On `/v1/rpc/<method>` the URL method wins over any `method` in the body.
#[test]
fn url_method_wins_over_body_method() {
    let gateway = Gateway::start(|_| {});
    let response = rpc(
        gateway.addr,
        "/v1/rpc/health",
        &[BEARER],
        r#"{"id":"u1","method":"nope","params":{}}"#,
    );
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["id"], "u1");
    assert!(response.json()["payload"]["uptimeMs"].is_u64());
}

/// The URL method name is percent-decoded; an undecodable one is an invalid method name.
#[test]
fn url_method_is_percent_decoded() {
    let gateway = Gateway::start(|_| {});
    for path in ["/v1/rpc/heal%74h", "/v1/rpc/%68%65%61%6C%74%68"] {
        let response = rpc(gateway.addr, path, &[BEARER], "{}");
        assert_eq!(response.status, 200, "{path}: {}", response.text());
        assert!(response.json()["payload"]["uptimeMs"].is_u64(), "{path}");
    }
    let cases = [
        ("/v1/rpc/x%2", "Gateway method name is invalid."),
        ("/v1/rpc/%FF", "Gateway method name is invalid."),
        ("/v1/rpc/Health", "Gateway method name is invalid."),
        ("/v1/rpc/heal%20th", "Gateway method name is invalid."),
    ];
    for (path, message) in cases {
        let response = rpc(gateway.addr, path, &[BEARER, ("X-Request-Id", "pct")], "{}");
        assert_error(
            &response,
            400,
            "pct",
            json!({"code": "INVALID_INPUT", "message": message}),
        );
    }
    // A decoded name that is valid but unknown reaches dispatch.
    let response = rpc(
        gateway.addr,
        "/v1/rpc/no%74Here",
        &[BEARER, ("X-Request-Id", "pct")],
        "{}",
    );
    assert_error(
        &response,
        404,
        "pct",
        json!({"code": "METHOD_NOT_FOUND", "message": "Unknown method: notHere"}),
    );
}

/// Every credential form of PROTOCOL.md §3 authenticates: `Bearer`/`bearer` prefix, a bare
/// Authorization value, and `x-smithers-key`.
#[test]
fn every_credential_header_form_authenticates() {
    let gateway = Gateway::start(|_| {});
    let bearer_lower = format!("bearer {ADMIN_TOKEN}");
    let bearer_upper = format!("BEARER {ADMIN_TOKEN}");
    let forms: [(&str, &str); 5] = [
        ("Authorization", &bearer_lower),
        ("Authorization", &bearer_upper),
        ("Authorization", ADMIN_TOKEN),
        ("x-smithers-key", ADMIN_TOKEN),
        ("X-Smithers-Key", ADMIN_TOKEN),
    ];
    for header in forms {
        let response = rpc(
            gateway.addr,
            "/rpc",
            &[header],
            r#"{"id":"a","method":"health"}"#,
        );
        assert_eq!(response.status, 200, "{header:?}: {}", response.text());
        assert_eq!(response.json()["ok"], true, "{header:?}");
    }
    // x-smithers-key wins over a bad Authorization header.
    let response = rpc(
        gateway.addr,
        "/rpc",
        &[
            ("Authorization", "Bearer wrong"),
            ("x-smithers-key", ADMIN_TOKEN),
        ],
        r#"{"id":"a","method":"health"}"#,
    );
    assert_eq!(response.status, 200, "{}", response.text());
}

/// Missing and unknown tokens are refused 401 with the request id, before the body is read.
#[test]
fn missing_or_unknown_token_is_401() {
    let gateway = Gateway::start(|_| {});
    let cases: [(&[(&str, &str)], &str); 4] = [
        (&[], "A bearer token is required"),
        // The value is trimmed to `Bearer`, which lacks the `bearer ` prefix: the whole value is
        // the token.
        (&[("Authorization", "Bearer ")], "Invalid token"),
        (&[("Authorization", "Bearer nope")], "Invalid token"),
        (&[("x-smithers-key", "nope")], "Invalid token"),
    ];
    for (headers, message) in cases {
        let mut headers = headers.to_vec();
        headers.push(("X-Request-Id", "auth-1"));
        // The body is invalid JSON: authentication comes first.
        let response = rpc(gateway.addr, "/rpc", &headers, "{not json");
        assert_error(
            &response,
            401,
            "auth-1",
            json!({"code": "UNAUTHORIZED", "message": message}),
        );
    }
}

/// Frame refusals of PROTOCOL.md §4.2 steps 2–6 and dispatch errors, each with exact code,
/// message, HTTP status and id (the request id before dispatch, the body id after).
#[test]
fn refusals_have_exact_code_message_status_and_id() {
    let gateway = Gateway::start(|_| {});
    let nested = |levels: usize| format!("{}1{}", r#"{"a":"#.repeat(levels), "}".repeat(levels));
    let depth_33 = format!(r#"{{"id":"b","method":"health","params":{}}}"#, nested(31));
    let depth_32 = format!(r#"{{"id":"b","method":"health","params":{}}}"#, nested(30));
    let long_id = format!(r#"{{"id":"{}","method":"health"}}"#, "i".repeat(129));
    let id_128 = format!(r#"{{"id":"{}","method":"health"}}"#, "i".repeat(128));
    let long_array = format!(
        r#"{{"id":"b","method":"health","params":{{"a":[{}]}}}}"#,
        ["0"; 257].join(",")
    );
    let long_string = format!(
        r#"{{"id":"b","method":"health","params":{{"s":"{}"}}}}"#,
        "s".repeat(16_385)
    );
    let long_method = format!(r#"{{"id":"b","method":"{}"}}"#, "m".repeat(65));
    // (path, body, status, id, error)
    let cases: Vec<(&str, String, u16, &str, Value)> = vec![
        (
            "/rpc",
            "{not json".into(),
            400,
            "req",
            json!({"code": "INVALID_INPUT", "message": "Gateway RPC payload must be valid JSON."}),
        ),
        (
            "/v1/rpc/health",
            r#"{"id":"b","#.into(),
            400,
            "req",
            json!({"code": "INVALID_INPUT", "message": "Gateway RPC payload must be valid JSON."}),
        ),
        (
            "/rpc",
            "[1]".into(),
            400,
            "req",
            json!({"code": "INVALID_REQUEST", "message": "RPC body must be a JSON object"}),
        ),
        (
            "/v1/rpc/health",
            "null".into(),
            400,
            "req",
            json!({"code": "INVALID_REQUEST", "message": "RPC body must be a JSON object"}),
        ),
        (
            "/v1/rpc/health",
            "\"text\"".into(),
            400,
            "req",
            json!({"code": "INVALID_REQUEST", "message": "RPC body must be a JSON object"}),
        ),
        (
            "/rpc",
            r#"{"id":"b","method":"Bad"}"#.into(),
            400,
            "req",
            json!({"code": "INVALID_INPUT", "message": "Gateway method name is invalid."}),
        ),
        (
            "/rpc",
            r#"{"id":"b","method":"a..b"}"#.into(),
            400,
            "req",
            json!({"code": "INVALID_INPUT", "message": "Gateway method name is invalid."}),
        ),
        (
            "/rpc",
            long_method,
            400,
            "req",
            json!({"code": "INVALID_INPUT", "message": "Gateway method name is invalid."}),
        ),
        (
            "/rpc",
            r#"{"id":"b","method":5}"#.into(),
            400,
            "req",
            json!({"code": "INVALID_INPUT", "message": "Gateway method name must be a string."}),
        ),
        (
            "/rpc",
            depth_33,
            400,
            "req",
            json!({"code": "INVALID_INPUT", "message": "gateway frame exceeds the maximum JSON depth of 32."}),
        ),
        (
            "/rpc",
            long_array,
            400,
            "req",
            json!({"code": "INVALID_INPUT", "message": "gateway frame array exceeds the maximum length of 256."}),
        ),
        (
            "/rpc",
            long_string,
            400,
            "req",
            json!({"code": "INVALID_INPUT", "message": "gateway frame string exceeds the maximum length of 16384."}),
        ),
        (
            "/rpc",
            long_id,
            400,
            "req",
            json!({"code": "INVALID_INPUT", "message": "id exceeds the maximum length of 128 characters."}),
        ),
        (
            "/rpc",
            r#"{"id":"b","method":"x"}"#.into(),
            404,
            "b",
            json!({"code": "METHOD_NOT_FOUND", "message": "Unknown method: x"}),
        ),
        (
            "/v1/rpc/x",
            "{}".into(),
            404,
            "req",
            json!({"code": "METHOD_NOT_FOUND", "message": "Unknown method: x"}),
        ),
        (
            "/rpc",
            r#"{"id":"b","method":"ext.a.b"}"#.into(),
            500,
            "b",
            json!({"code": "EXTENSION_METHOD_NOT_FOUND", "message": "Unknown extension method: ext.a.b", "method": "ext.a.b"}),
        ),
        (
            "/rpc",
            r#"{"id":"b","method":"streamRunEvents","params":{"runId":"r"}}"#.into(),
            400,
            "b",
            json!({"code": "INVALID_REQUEST", "message": "streamRunEvents is only supported over websocket connections"}),
        ),
        (
            "/v1/rpc/streamRunEvents",
            r#"{"runId":"r"}"#.into(),
            400,
            "req",
            json!({"code": "INVALID_REQUEST", "message": "streamRunEvents is only supported over websocket connections"}),
        ),
    ];
    for (path, body, status, id, error) in cases {
        eprintln!("case: {path} {}", &body[..body.len().min(80)]);
        let response = rpc(
            gateway.addr,
            path,
            &[BEARER, ("X-Request-Id", "req")],
            &body,
        );
        assert_error(&response, status, id, error);
    }
    // One below each bound is accepted.
    for body in [depth_32, id_128] {
        let response = rpc(gateway.addr, "/rpc", &[BEARER], &body);
        assert_eq!(response.status, 200, "{}", response.text());
    }
}

/// `/rpc` is an exact route and POST-only; anything else falls to the 404 handler.
#[test]
fn rpc_route_is_exact_and_post_only() {
    let gateway = Gateway::start(|_| {});
    let response = rpc(gateway.addr, "/rpc?x=1", &[BEARER], "{}");
    assert_eq!(response.status, 404);
    assert_eq!(
        response.json(),
        json!({"error": {"code": "NOT_FOUND", "message": "Route not found"}})
    );
    let get = http_once(
        gateway.addr,
        format!("GET /rpc HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(get.status, 404);
    assert_eq!(
        get.json(),
        json!({"error": {"code": "NOT_FOUND", "message": "Route not found"}})
    );
}

/// A token without the method's scope gets 403 FORBIDDEN with `requiredScope`, echoing the body id.
#[test]
fn missing_scope_is_403_with_required_scope() {
    let gateway = Gateway::start(|c| {
        c.auth = Some(token_auth(&[
            (ADMIN_TOKEN, grant("admin", &["*"])),
            ("cron-reader", grant("viewer", &["cron:read"])),
        ]));
    });
    let response = rpc(
        gateway.addr,
        "/rpc",
        &[("Authorization", "Bearer cron-reader")],
        r#"{"id":"s1","method":"health"}"#,
    );
    assert_error(
        &response,
        403,
        "s1",
        json!({
            "code": "FORBIDDEN",
            "message": "Missing required scope run:read for health",
            "requiredScope": "run:read",
        }),
    );
}

fn expiring(expires_at_ms: Option<u64>, revoked_at_ms: Option<u64>) -> TokenGrant {
    TokenGrant {
        expires_at_ms,
        revoked_at_ms,
        ..grant("admin", &["*"])
    }
}

/// Expired and revoked tokens are 401 with `refresh: "smithers token issue"`; a future expiry
/// still authenticates.
#[test]
fn expired_and_revoked_tokens_are_401_with_refresh() {
    let far_future = smithers_gateway::clock::now_ms() + 3_600_000;
    let gateway = Gateway::start(|c| {
        c.auth = Some(token_auth(&[
            ("expired", expiring(Some(1), None)),
            ("revoked", expiring(None, Some(1))),
            ("revoked-and-expired", expiring(Some(1), Some(1))),
            ("valid-for-now", expiring(Some(far_future), None)),
        ]));
    });
    let cases = [
        ("expired", "Token expired; issue a refreshed token."),
        ("revoked", "Token has been revoked"),
        // Revocation is checked first (AUTH.md §3.1).
        ("revoked-and-expired", "Token has been revoked"),
    ];
    for (token, message) in cases {
        let response = rpc(
            gateway.addr,
            "/v1/rpc/health",
            &[
                ("Authorization", &format!("Bearer {token}")),
                ("X-Request-Id", "t1"),
            ],
            "{}",
        );
        assert_error(
            &response,
            401,
            "t1",
            json!({"code": "UNAUTHORIZED", "message": message, "refresh": "smithers token issue"}),
        );
    }
    let response = rpc(
        gateway.addr,
        "/v1/rpc/health",
        &[("Authorization", "Bearer valid-for-now")],
        "{}",
    );
    assert_eq!(response.status, 200, "{}", response.text());
}
