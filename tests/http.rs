//! The HTTP/1.1 transport over real sockets (PROTOCOL.md §1–§2, §16; RELIABILITY.md §2 and §6
//! rows 8–10): the fixed routes and the headers on every response, keep-alive and pipelining,
//! request-smuggling vectors, h1spec-style compliance cases, header and body limits, the header,
//! request and keep-alive deadlines, and the socket cap. HTTP RPC semantics live in rpc_http.rs.

use crate::support::*;
use serde_json::json;
use smithers_gateway::config::GatewayConfig;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// A request for `GET /health` that must never be answered when smuggled behind a refused head.
const SMUGGLED: &[u8] = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n";

/// The exact body of the 404 fallback (PROTOCOL.md §2 row 14).
const ROUTE_NOT_FOUND: &str = r#"{"error":{"code":"NOT_FOUND","message":"Route not found"}}"#;

/// Asserts the headers every gateway response carries (PROTOCOL.md §1) and that no CORS header
/// is ever sent.
fn assert_gateway_headers(response: &HttpResponse, content_type: &str) {
    assert_eq!(response.header("content-type"), Some(content_type));
    assert_eq!(response.header("cache-control"), Some("no-store"));
    assert_eq!(response.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(response.header("x-smithers-api-version"), Some("v1"));
    assert_eq!(
        response.header("content-length"),
        Some(response.body.len().to_string().as_str())
    );
    assert!(
        !response
            .headers
            .iter()
            .any(|(name, _)| name.starts_with("access-control-")),
        "no CORS headers: {:?}",
        response.headers
    );
}

/// The example workflows shipped in `workflows/`, sorted by key (GET /workflows order).
const EXAMPLE_WORKFLOWS: [&str; 6] = [
    "approve",
    "fanout-demo",
    "hello",
    "nightly",
    "signal",
    "slow",
];

/// The keys of a `GET /workflows` body, in order.
fn workflow_keys(body: &serde_json::Value) -> Vec<String> {
    body["workflows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter_map(|row| row["key"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Reads until the peer closes (EOF or reset), returning every byte; panics after IO_TIMEOUT.
fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return bytes,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return bytes,
            Err(e) => panic!(
                "connection not closed: {e}; got {:?}",
                String::from_utf8_lossy(&bytes)
            ),
        }
    }
}

/// Sends `request` on a fresh connection and asserts the answer has `status`.
fn check(addr: SocketAddr, request: &[u8], status: u16) -> HttpResponse {
    let response = http_once(addr, request);
    assert_eq!(
        response.status,
        status,
        "request {:?} answered {}: {}",
        String::from_utf8_lossy(request),
        response.status,
        response.text()
    );
    response
}

/// Sends `request` followed by a smuggled `GET /health` in the same write, and asserts exactly
/// one response with `status`, `Connection: close`, and then a closed connection.
fn check_refused(addr: SocketAddr, request: &[u8], status: u16) {
    let mut http = RawHttp::open(addr);
    let mut bytes = request.to_vec();
    bytes.extend_from_slice(SMUGGLED);
    http.send(&bytes);
    let response = http.response();
    let shown = String::from_utf8_lossy(request);
    assert_eq!(
        response.status,
        status,
        "request {shown:?} answered {}: {}",
        response.status,
        response.text()
    );
    assert_eq!(response.header("connection"), Some("close"), "{shown:?}");
    assert_gateway_headers(&response, "text/plain; charset=utf-8");
    assert!(
        http.closed_without_more(),
        "request {shown:?}: the smuggled request was answered or the connection stayed open"
    );
}

/// `GET /health` answers exactly the documented fields, with the gateway headers.
#[test]
fn health_has_every_field_and_the_gateway_headers() {
    let gateway = Gateway::start(|_| {});
    let response = check(
        gateway.addr,
        b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        200,
    );
    assert_gateway_headers(&response, "application/json");
    let body = response.json();
    let identity = &body["identity"];
    assert_eq!(identity["pid"], std::process::id());
    let started_at_ms = identity["startedAtMs"].as_u64().unwrap_or(0);
    assert!(started_at_ms > 1_600_000_000_000, "startedAtMs {identity}");
    assert!(identity["version"].is_string(), "version {identity}");
    assert_eq!(
        body,
        json!({
            "ok": true,
            "protocol": 1,
            "features": ["streaming", "runs"],
            "stateVersion": 0,
            "identity": {
                "workspaceRoot": null,
                "backend": "sqlite",
                "version": identity["version"],
                "pid": std::process::id(),
                "startedAtMs": started_at_ms,
            },
            "workflowsLoaded": EXAMPLE_WORKFLOWS.len(),
            "workflowsTotal": EXAMPLE_WORKFLOWS.len(),
        })
    );
}

/// `/health` is an exact route: a query string makes it miss and the 404 fallback answers.
#[test]
fn health_with_a_query_string_is_not_found() {
    let gateway = Gateway::start(|_| {});
    let response = check(
        gateway.addr,
        b"GET /health?x=1 HTTP/1.1\r\nHost: x\r\n\r\n",
        404,
    );
    assert_gateway_headers(&response, "application/json");
    assert_eq!(response.text(), ROUTE_NOT_FOUND);
}

/// Each fixed route answers its status, content type and body, with no CORS headers.
#[test]
fn fixed_routes_answer_their_exact_bodies() {
    let gateway = Gateway::start(|_| {});
    let addr = gateway.addr;

    let metrics = check(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 200);
    assert_gateway_headers(&metrics, "text/plain; version=0.0.4; charset=utf-8");
    assert!(
        metrics
            .text()
            .contains("smithers_gateway_http_requests_total"),
        "{}",
        metrics.text()
    );

    let workflows = check(addr, b"GET /workflows HTTP/1.1\r\nHost: x\r\n\r\n", 200);
    assert_gateway_headers(&workflows, "application/json");
    assert_eq!(workflow_keys(&workflows.json()), EXAMPLE_WORKFLOWS);

    let index = check(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 200);
    assert_gateway_headers(&index, "text/html; charset=utf-8");
    for link in [
        r#"href="/health""#,
        r#"href="/metrics""#,
        r#"href="/workflows""#,
    ] {
        assert!(index.text().contains(link), "{link}: {}", index.text());
    }

    // No CORS: a preflight falls through to the 404 handler.
    let preflight = check(
        addr,
        b"OPTIONS / HTTP/1.1\r\nHost: x\r\nOrigin: http://evil.example\r\nAccess-Control-Request-Method: POST\r\n\r\n",
        404,
    );
    assert_gateway_headers(&preflight, "application/json");
    assert_eq!(preflight.text(), ROUTE_NOT_FOUND);

    let webhook = post_json(addr, "/webhooks/x", None, "{}");
    assert_eq!(webhook.status, 404);
    assert_gateway_headers(&webhook, "application/json");
    assert_eq!(
        webhook.json(),
        json!({"ok": false, "error": {"code": "NOT_FOUND", "message": "Unknown workflow: x"}})
    );

    let unknown = check(addr, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", 404);
    assert_gateway_headers(&unknown, "application/json");
    assert_eq!(unknown.text(), ROUTE_NOT_FOUND);
}

/// The REST API authenticates first: 401 envelope without a token, 404 envelope with one.
#[test]
fn rest_api_answers_envelopes_with_and_without_a_token() {
    let gateway = Gateway::start(|_| {});
    let with_token = format!(
        "GET /v1/api/runs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\r\n"
    );
    let found = check(gateway.addr, with_token.as_bytes(), 404);
    assert_gateway_headers(&found, "application/json");
    assert_eq!(
        found.json(),
        json!({"ok": false, "error": {"code": "NOT_FOUND", "message": "Route not found"}})
    );

    let refused = check(
        gateway.addr,
        b"GET /v1/api/runs HTTP/1.1\r\nHost: x\r\n\r\n",
        401,
    );
    assert_gateway_headers(&refused, "application/json");
    assert_eq!(
        refused.json(),
        json!({"ok": false, "error": {"code": "UNAUTHORIZED", "message": "A bearer token is required"}})
    );
}

/// HEAD sends the head a GET would (Content-Length included) but no body. Routes match GET
/// only (PROTOCOL.md §2 row 1 lists `GET`), so `HEAD /health` gets the 404 fallback's head.
#[test]
fn head_sends_content_length_without_a_body() {
    let gateway = Gateway::start(|_| {});
    let mut stream = TcpStream::connect(gateway.addr).unwrap_or_else(|e| panic!("{e}"));
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .unwrap_or_else(|e| panic!("{e}"));
    stream
        .write_all(b"HEAD /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let bytes = read_to_close(&mut stream);
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        panic!("no complete head: {text:?}");
    };
    assert!(head.starts_with("HTTP/1.1 404 Not Found\r\n"), "{head}");
    assert!(
        head.contains(&format!(
            "\r\nContent-Length: {}\r\n",
            ROUTE_NOT_FOUND.len()
        )),
        "{head}"
    );
    assert!(head.contains("\r\nX-Smithers-API-Version: v1"), "{head}");
    assert_eq!(body, "", "HEAD must not carry a body");
}

/// Two requests on one HTTP/1.1 connection are both answered with `Connection: keep-alive`.
#[test]
fn keep_alive_serves_two_requests_on_one_connection() {
    let gateway = Gateway::start(|_| {});
    let mut http = RawHttp::open(gateway.addr);
    for _ in 0..2 {
        http.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
        let response = http.response();
        assert_eq!(response.status, 200);
        assert_eq!(response.header("connection"), Some("keep-alive"));
    }
}

/// HTTP/1.0 without keep-alive and HTTP/1.1 with `Connection: close` are closed after the answer;
/// HTTP/1.0 with `Connection: keep-alive` stays open.
#[test]
fn connection_close_rules_follow_version_and_header() {
    let gateway = Gateway::start(|_| {});
    for request in [
        &b"GET /health HTTP/1.0\r\n\r\n"[..],
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, CLOSE\r\n\r\n",
    ] {
        let mut http = RawHttp::open(gateway.addr);
        http.send(request);
        let response = http.response();
        let shown = String::from_utf8_lossy(request);
        assert_eq!(response.status, 200, "{shown:?}");
        assert_eq!(response.header("connection"), Some("close"), "{shown:?}");
        assert!(http.closed_without_more(), "{shown:?} left open");
    }

    let mut http = RawHttp::open(gateway.addr);
    for _ in 0..2 {
        http.send(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        let response = http.response();
        assert_eq!(response.status, 200);
        assert_eq!(response.header("connection"), Some("keep-alive"));
    }
}

/// Three pipelined requests written at once (one with a body) get three responses in order.
#[test]
fn pipelined_requests_are_answered_in_order() {
    let gateway = Gateway::start(|_| {});
    let rpc_body = r#"{"id":"p2","method":"health","params":{}}"#;
    let pipeline = format!(
        "GET /workflows HTTP/1.1\r\nHost: x\r\n\r\n\
         POST /rpc HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Length: {}\r\n\r\n{rpc_body}\
         GET /health?x HTTP/1.1\r\nHost: x\r\n\r\n",
        rpc_body.len()
    );
    let mut http = RawHttp::open(gateway.addr);
    http.send(pipeline.as_bytes());
    let first = http.response();
    assert_eq!(first.status, 200);
    assert_eq!(workflow_keys(&first.json()), EXAMPLE_WORKFLOWS);
    let second = http.response();
    assert_eq!(second.status, 200);
    assert_eq!(second.json()["id"], "p2");
    assert_eq!(second.json()["ok"], true);
    let third = http.response();
    assert_eq!(third.status, 404);
    assert_eq!(third.text(), ROUTE_NOT_FOUND);
}

/// Smuggling vectors (RELIABILITY.md §2.2, §6 row 8): each gets its exact status, the connection
/// closes, and the request appended in the same write is never answered.
#[test]
fn smuggling_vectors_are_refused_and_the_connection_closed() {
    let gateway = Gateway::start(|_| {});
    let cases: &[(&str, &[u8], u16)] = &[
        (
            "duplicate equal Content-Length",
            b"POST /rpc HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
            400,
        ),
        (
            "duplicate differing Content-Length",
            b"POST /rpc HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
            400,
        ),
        (
            "Content-Length list",
            b"POST /rpc HTTP/1.1\r\nHost: x\r\nContent-Length: 2, 2\r\n\r\n{}",
            400,
        ),
        (
            "CL then TE",
            b"POST /rpc HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (
            "TE then CL, mixed case",
            b"POST /rpc HTTP/1.1\r\nHost: x\r\ntransfer-ENCODING: Chunked\r\ncontent-LENGTH: 5\r\n\r\n0\r\n\r\n",
            400,
        ),
        (
            "CL and TE, upper case",
            b"POST /rpc HTTP/1.1\r\nHost: x\r\nCONTENT-LENGTH: 5\r\nTRANSFER-ENCODING: CHUNKED\r\n\r\n0\r\n\r\n",
            400,
        ),
        (
            "TE gzip (chunked not final)",
            b"POST /rpc HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
            400,
        ),
        (
            "TE chunked, gzip (chunked not final)",
            b"POST /rpc HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            400,
        ),
        (
            "TE gzip, chunked (unknown coding)",
            b"POST /rpc HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            501,
        ),
        (
            "TE chunked twice",
            b"POST /rpc HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (
            "duplicate TE header",
            b"POST /rpc HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (
            "TE on HTTP/1.0",
            b"POST /rpc HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (
            "Content-Length +5",
            b"POST /rpc HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n{\"a\"}",
            400,
        ),
        (
            "Content-Length -1",
            b"POST /rpc HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
            400,
        ),
        (
            "Content-Length overflowing u64",
            b"POST /rpc HTTP/1.1\r\nHost: x\r\nContent-Length: 18446744073709551616\r\n\r\n",
            400,
        ),
        (
            "Content-Length overflowing negative",
            b"POST /rpc HTTP/1.1\r\nHost: x\r\nContent-Length: -18446744073709551616\r\n\r\n",
            400,
        ),
        (
            "Content-Length not digits",
            b"POST /rpc HTTP/1.1\r\nHost: x\r\nContent-Length: 5a\r\n\r\n",
            400,
        ),
        (
            "Content-Length hex",
            b"POST /rpc HTTP/1.1\r\nHost: x\r\nContent-Length: 0x5\r\n\r\n",
            400,
        ),
        (
            "empty Content-Length",
            b"POST /rpc HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n\r\n",
            400,
        ),
        (
            "obs-fold",
            b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
            400,
        ),
        (
            "obs-fold with a tab",
            b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\r\n\tb\r\n\r\n",
            400,
        ),
        (
            "space before colon",
            b"GET /health HTTP/1.1\r\nHost : x\r\n\r\n",
            400,
        ),
        (
            "space before colon on Content-Length",
            b"POST /rpc HTTP/1.1\r\nHost: x\r\nContent-Length : 2\r\n\r\n{}",
            400,
        ),
        (
            "NUL in a header value",
            b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n",
            400,
        ),
        (
            "CTL in a header value",
            b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n",
            400,
        ),
        (
            "DEL in a header value",
            b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\x7fb\r\n\r\n",
            400,
        ),
        (
            "bare CR in a header value",
            b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n",
            400,
        ),
        (
            "missing Host on HTTP/1.1",
            b"GET /health HTTP/1.1\r\n\r\n",
            400,
        ),
        (
            "duplicate Host",
            b"GET /health HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
            400,
        ),
        (
            "invalid Host value",
            b"GET /health HTTP/1.1\r\nHost: x/y\r\n\r\n",
            400,
        ),
        ("HTTP/1.2", b"GET /health HTTP/1.2\r\nHost: x\r\n\r\n", 505),
        ("HTTP/2.0", b"GET /health HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (
            "malformed chunk size",
            b"POST /rpc HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n",
            400,
        ),
        (
            "chunk data longer than its size",
            b"POST /rpc HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}xx\r\n0\r\n\r\n",
            400,
        ),
    ];
    for (name, request, status) in cases {
        eprintln!("case: {name}");
        check_refused(gateway.addr, request, *status);
    }
}

/// h1spec-style cases (RELIABILITY.md §2.3): valid edge cases are answered, invalid ones get
/// their exact status.
#[test]
fn h1spec_style_cases_get_their_exact_status() {
    let gateway = Gateway::start(|_| {});
    let rpc_body = r#"{"method":"health"}"#;
    let post_health = format!(
        "POST /rpc HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Length: {}\r\n\r\n{rpc_body}",
        rpc_body.len()
    );
    let cases: &[(&str, &[u8], u16)] = &[
        (
            "valid GET",
            b"GET /health HTTP/1.1\r\nHost: 127.0.0.1:7331\r\n\r\n",
            200,
        ),
        (
            "empty Host (RFC 9112 §3.2)",
            b"GET /health HTTP/1.1\r\nHost:\r\n\r\n",
            200,
        ),
        (
            "HTTP/1.0 without Host",
            b"GET /health HTTP/1.0\r\n\r\n",
            200,
        ),
        (
            "empty header value",
            b"GET /health HTTP/1.1\r\nHost: x\r\nX-Empty:\r\n\r\n",
            200,
        ),
        (
            "tab and spaces around a value",
            b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: \t a \t\r\n\r\n",
            200,
        ),
        (
            "bare LF line endings",
            b"GET /health HTTP/1.1\nHost: x\n\n",
            200,
        ),
        (
            "leading empty line",
            b"\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n",
            200,
        ),
        (
            "header name case does not matter",
            b"GET /health HTTP/1.1\r\nhOsT: x\r\n\r\n",
            200,
        ),
        ("POST with a body", post_health.as_bytes(), 200),
        (
            "POST with Content-Length 0",
            b"POST /v1/rpc/health HTTP/1.1\r\nHost: x\r\nX-Smithers-Key: test-admin-token-0123456789\r\nContent-Length: 0\r\n\r\n",
            200,
        ),
        (
            "chunked body with an extension and a trailer",
            b"POST /v1/rpc/health HTTP/1.1\r\nHost: x\r\nX-Smithers-Key: test-admin-token-0123456789\r\nTransfer-Encoding: chunked\r\n\r\n1;ext=1\r\n{\r\n1\r\n}\r\n0\r\nX-Trailer: t\r\n\r\n",
            200,
        ),
        ("request without a version", b"GET /health\r\n\r\n", 400),
        (
            "invalid request prefix",
            b" GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
            400,
        ),
        (
            "invalid version text",
            b"GET /health HTTP/x.y\r\nHost: x\r\n\r\n",
            400,
        ),
        (
            "lower-case version",
            b"GET /health http/1.1\r\nHost: x\r\n\r\n",
            400,
        ),
        (
            "invalid line ending (bare CR)",
            b"GET /health HTTP/1.1\rHost: x\r\r",
            400,
        ),
        (
            "invalid header name character",
            b"GET /health HTTP/1.1\r\nHost: x\r\nX(A): b\r\n\r\n",
            400,
        ),
        (
            "header without a colon",
            b"GET /health HTTP/1.1\r\nHost: x\r\nX-A\r\n\r\n",
            400,
        ),
        (
            "space in the request target",
            b"GET /he alth HTTP/1.1\r\nHost: x\r\n\r\n",
            400,
        ),
        (
            "lower-case method is another method",
            b"get /health HTTP/1.1\r\nHost: x\r\n\r\n",
            404,
        ),
    ];
    for (name, request, status) in cases {
        eprintln!("case: {name}");
        let response = check(gateway.addr, request, *status);
        assert_eq!(response.header("x-smithers-api-version"), Some("v1"));
        if *status == 400 {
            assert_eq!(response.header("connection"), Some("close"), "{name}");
        }
    }
}

/// Writes `bytes` one byte per write; the server must wait for the rest, never fail early.
fn send_byte_by_byte(http: &mut RawHttp, bytes: &[u8]) {
    http.stream
        .set_nodelay(true)
        .unwrap_or_else(|e| panic!("{e}"));
    for byte in bytes {
        http.send(std::slice::from_ref(byte));
    }
}

/// Requests fragmented at every byte (method, target, version, names, values, terminators,
/// Content-Length and chunked bodies) are answered as if sent at once.
#[test]
fn requests_sent_one_byte_per_write_are_answered() {
    let gateway = Gateway::start(|_| {});
    let mut http = RawHttp::open(gateway.addr);
    send_byte_by_byte(
        &mut http,
        b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Long-Name: some value\r\n\r\n",
    );
    let response = http.response();
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["ok"], true);

    let body = r#"{"id":"frag","method":"health","params":{}}"#;
    let post = format!(
        "POST /rpc HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    send_byte_by_byte(&mut http, post.as_bytes());
    let response = http.response();
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["id"], "frag");

    let chunked = format!(
        "POST /rpc HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{{\"id\"\r\n{:x}\r\n{}\r\n0\r\n\r\n",
        r#":"chunk","method":"health"}"#.len(),
        r#":"chunk","method":"health"}"#
    );
    send_byte_by_byte(&mut http, chunked.as_bytes());
    let response = http.response();
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["id"], "chunk");
}

/// A chunked `POST /rpc` with a token is decoded and answered.
#[test]
fn chunked_rpc_body_is_decoded() {
    let gateway = Gateway::start(|_| {});
    let request = format!(
        "POST /rpc HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nTransfer-Encoding: chunked\r\nX-Request-Id: chunked-1\r\n\r\n4\r\n{{\"me\r\nF\r\nthod\":\"health\"}}\r\n0\r\n\r\n"
    );
    let response = check(gateway.addr, request.as_bytes(), 200);
    let frame = response.json();
    assert_eq!(frame["id"], "chunked-1");
    assert_eq!(frame["ok"], true);
    assert!(frame["payload"]["uptimeMs"].is_u64(), "{frame}");
}

/// `Expect: 100-continue` gets exactly `HTTP/1.1 100 Continue` before the body is sent, then 200.
#[test]
fn expect_continue_sends_an_interim_response_then_the_answer() {
    let gateway = Gateway::start(|_| {});
    let body = r#"{"id":"c1","method":"health"}"#;
    let mut http = RawHttp::open(gateway.addr);
    http.send(
        format!(
            "POST /rpc HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    let interim = b"HTTP/1.1 100 Continue\r\n\r\n";
    let mut got = vec![0u8; interim.len()];
    http.stream
        .read_exact(&mut got)
        .unwrap_or_else(|e| panic!("no interim response: {e}"));
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(interim)
    );
    http.send(body.as_bytes());
    let response = http.response();
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["id"], "c1");
}

/// A `GET /health` head with exactly `count` header lines: Host and `X-H<i>: v`.
fn head_with_headers(count: usize) -> String {
    let mut head = String::from("GET /health HTTP/1.1\r\nHost: x\r\n");
    for i in 1..count {
        head.push_str(&format!("X-H{i}: v\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// A `GET /health` head of exactly `total` bytes (padding one header value).
fn head_of_bytes(total: usize) -> String {
    let prefix = "GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: ";
    let suffix = "\r\n\r\n";
    let pad = total - prefix.len() - suffix.len();
    let head = format!("{prefix}{}{suffix}", "a".repeat(pad));
    assert_eq!(head.len(), total);
    head
}

/// A request line of exactly `total` bytes (without its CRLF).
fn request_with_line_of(total: usize) -> String {
    let prefix = "GET /";
    let suffix = " HTTP/1.1";
    let line = format!(
        "{prefix}{}{suffix}",
        "a".repeat(total - prefix.len() - suffix.len())
    );
    assert_eq!(line.len(), total);
    format!("{line}\r\nHost: x\r\n\r\n")
}

/// Header count, header bytes and request line limits (RELIABILITY.md §6 row 10), each at the
/// limit (answered) and one past it (refused and closed).
#[test]
fn head_limits_refuse_one_past_the_limit() {
    let gateway = Gateway::start(|c| {
        c.header_count_max = 100;
        c.header_bytes_max = 16 * 1024;
        c.request_line_bytes_max = 8 * 1024;
    });
    let addr = gateway.addr;
    check(addr, head_with_headers(100).as_bytes(), 200);
    check_refused(addr, head_with_headers(101).as_bytes(), 431);
    check(addr, head_of_bytes(16 * 1024).as_bytes(), 200);
    check_refused(addr, head_of_bytes(16 * 1024 + 1).as_bytes(), 431);
    check(addr, request_with_line_of(8 * 1024).as_bytes(), 404);
    check_refused(addr, request_with_line_of(8 * 1024 + 1).as_bytes(), 414);
    // A request line past the limit is refused before its end arrives.
    let mut http = RawHttp::open(addr);
    http.send(format!("GET /{}", "a".repeat(8 * 1024)).as_bytes());
    assert_eq!(http.response().status, 414);
    assert!(http.closed_without_more());
}

/// `POST <path>` with a Content-Length `body`, an optional token and `X-Request-Id: big-1`.
fn post_with_body(path: &str, token: Option<&str>, body: &str) -> Vec<u8> {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nX-Request-Id: big-1\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A JSON `health` call padded to exactly `total` bytes.
fn health_body_of_bytes(total: usize) -> String {
    let prefix = r#"{"id":"b","method":"health","pad":""#;
    let suffix = r#""}"#;
    let body = format!(
        "{prefix}{}{suffix}",
        "x".repeat(total - prefix.len() - suffix.len())
    );
    assert_eq!(body.len(), total);
    body
}

/// A body of `body_bytes_max + 1` is refused 413 with the RPC frame (401 first without a token),
/// and the connection closes; a body of exactly `body_bytes_max` is served.
#[test]
fn body_limit_refuses_one_byte_past_the_limit() {
    const LIMIT: usize = 1000;
    let gateway = Gateway::start(|c| c.body_bytes_max = LIMIT);
    let addr = gateway.addr;

    let at_limit = check(
        addr,
        &post_with_body("/rpc", Some(ADMIN_TOKEN), &health_body_of_bytes(LIMIT)),
        200,
    );
    assert_eq!(at_limit.json()["id"], "b");

    for path in ["/rpc", "/v1/rpc/health"] {
        let mut http = RawHttp::open(addr);
        http.send(&post_with_body(
            path,
            Some(ADMIN_TOKEN),
            &health_body_of_bytes(LIMIT + 1),
        ));
        let response = http.response();
        assert_eq!(response.status, 413, "{path}: {}", response.text());
        assert_eq!(response.header("connection"), Some("close"));
        assert_gateway_headers(&response, "application/json");
        assert_eq!(
            response.json(),
            json!({"type": "res", "id": "big-1", "ok": false, "apiVersion": "v1", "error": {
                "version": "v1",
                "code": "PayloadTooLarge",
                "message": "Gateway request payload exceeds 1000 bytes.",
            }})
        );
        assert!(http.closed_without_more(), "{path}");

        let mut http = RawHttp::open(addr);
        http.send(&post_with_body(
            path,
            None,
            &health_body_of_bytes(LIMIT + 1),
        ));
        let response = http.response();
        assert_eq!(response.status, 401, "{path}: {}", response.text());
        assert_eq!(response.json()["error"]["code"], "UNAUTHORIZED");
        assert_eq!(
            response.json()["error"]["message"],
            "A bearer token is required"
        );
        assert_eq!(response.json()["id"], "big-1");
        assert!(http.closed_without_more(), "{path}");
    }

    // A chunked body past the limit is refused the same way.
    let chunked = format!(
        "POST /rpc HTTP/1.1\r\nHost: x\r\nX-Request-Id: big-1\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{}\r\n0\r\n\r\n",
        LIMIT + 1,
        health_body_of_bytes(LIMIT + 1)
    );
    let mut http = RawHttp::open(addr);
    http.send(chunked.as_bytes());
    let response = http.response();
    assert_eq!(response.status, 413);
    assert_eq!(response.json()["error"]["code"], "PayloadTooLarge");
    assert!(http.closed_without_more());

    // Other routes answer the REST envelope.
    let response = check(
        addr,
        &post_with_body("/webhooks/x", None, &"x".repeat(LIMIT + 1)),
        413,
    );
    assert_eq!(
        response.json(),
        json!({"ok": false, "error": {"code": "PayloadTooLarge", "message": "Gateway request payload exceeds 1000 bytes."}})
    );
}

/// Small deadlines for the timeout tests: headers 300 ms, request 600 ms, keep-alive idle 300 ms.
fn short_deadlines(config: &mut GatewayConfig) {
    config.headers_timeout_ms = 300;
    config.request_timeout_ms = 600;
    config.keep_alive_timeout_ms = 300;
}

/// Asserts a 408 with `Connection: close`, then a closed connection.
fn assert_timed_out(http: &mut RawHttp) {
    let response = http.response();
    assert_eq!(response.status, 408, "{}", response.text());
    assert_eq!(response.header("connection"), Some("close"));
    assert_gateway_headers(&response, "text/plain; charset=utf-8");
    assert!(http.closed_without_more());
}

/// A head that stops arriving is answered 408 at the header deadline, then closed.
#[test]
fn partial_head_then_silence_gets_408_and_close() {
    let gateway = Gateway::start(short_deadlines);
    let mut http = RawHttp::open(gateway.addr);
    http.send(b"GET /health HTTP/1.1\r\nHo");
    assert_timed_out(&mut http);
}

/// A body shorter than its Content-Length is answered 408 at the request deadline, then closed.
#[test]
fn short_body_then_silence_gets_408_and_close() {
    let gateway = Gateway::start(short_deadlines);
    let mut http = RawHttp::open(gateway.addr);
    http.send(
        format!(
            "POST /rpc HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Length: 10\r\n\r\n{{\"a\":"
        )
        .as_bytes(),
    );
    assert_timed_out(&mut http);

    // The same for a chunked body that never ends.
    let mut http = RawHttp::open(gateway.addr);
    http.send(
        format!(
            "POST /rpc HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{{}}\r\n"
        )
        .as_bytes(),
    );
    assert_timed_out(&mut http);
}

/// An idle connection (before a first request, or between keep-alive requests) is closed
/// silently at its idle deadline.
#[test]
fn idle_connections_are_closed_without_a_response() {
    let gateway = Gateway::start(short_deadlines);
    let mut http = RawHttp::open(gateway.addr);
    http.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    let response = http.response();
    assert_eq!(response.status, 200);
    assert_eq!(response.header("connection"), Some("keep-alive"));
    assert!(http.closed_without_more(), "keep-alive idle not closed");

    let mut silent = RawHttp::open(gateway.addr);
    assert!(silent.closed_without_more(), "silent connection not closed");
}

/// A slowloris client (one header byte every 100 ms) is cut off by the absolute header deadline:
/// it gets 408 and a closed connection long before its 4 KiB header is sent.
#[test]
fn slowloris_is_closed_by_the_absolute_header_deadline() {
    const HEADER_BYTES: usize = 4096;
    let gateway = Gateway::start(short_deadlines);
    let mut stream = TcpStream::connect(gateway.addr).unwrap_or_else(|e| panic!("{e}"));
    stream.set_nodelay(true).unwrap_or_else(|e| panic!("{e}"));
    let mut head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', HEADER_BYTES));
    let mut received = Vec::new();
    let mut sent = 0;
    let mut chunk = [0u8; 4096];
    while sent < head.len() {
        // Stop writing once the server has said something or closed.
        stream
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("{e}"));
        let answered = match stream.read(&mut chunk) {
            Ok(0) => true,
            Ok(n) => {
                received.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                false
            }
            Err(_) => true,
        };
        stream
            .set_nonblocking(false)
            .unwrap_or_else(|e| panic!("{e}"));
        if answered || stream.write_all(&head[sent..sent + 1]).is_err() {
            break;
        }
        sent += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        sent < head.len(),
        "the whole slow header was accepted without a timeout"
    );
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .unwrap_or_else(|e| panic!("{e}"));
    received.extend(read_to_close(&mut stream));
    let Some((response, used)) = parse_response(&received) else {
        panic!("no response: {:?}", String::from_utf8_lossy(&received));
    };
    assert_eq!(response.status, 408);
    assert_eq!(response.header("connection"), Some("close"));
    assert_eq!(used, received.len(), "nothing after the 408");
}

/// Past `sockets_max` open sockets a new one is closed at once without a response, while the
/// open ones keep being served.
#[test]
fn sockets_past_the_cap_are_closed_without_a_response() {
    const SOCKETS: usize = 3;
    let gateway = Gateway::start(|c| {
        c.sockets_max = SOCKETS;
        c.connections_max = 2;
        c.pre_auth_connections_max = 2;
    });
    let mut open: Vec<RawHttp> = (0..SOCKETS).map(|_| RawHttp::open(gateway.addr)).collect();
    // Each socket is accepted (and holds its slot) once it has been answered.
    for http in &mut open {
        http.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(http.response().status, 200);
    }
    let mut extra = RawHttp::open(gateway.addr);
    // The request may race with the close; it must never be answered either way.
    let _ = extra
        .stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(extra.closed_without_more(), "extra socket answered");
    assert_eq!(
        gateway
            .state()
            .counters
            .sockets_refused
            .load(Ordering::Relaxed),
        1
    );
    for http in &mut open {
        http.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(http.response().status, 200);
    }
}
