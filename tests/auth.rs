//! Authentication end to end over real sockets (AUTH.md, PROTOCOL.md §3, §5.1, §6,
//! RELIABILITY.md §3.3): the JWT vectors through the real `connect`, token, trusted-proxy and
//! no-auth modes, the request gates at the upgrade and on HTTP RPC, the session-cookie hand-off,
//! the connection limits, and the real binary (its logs never carry a token or secret; the
//! first-start admin token). The auth module's unit tests live in src/auth.

use crate::support::*;
use base64::Engine;
use serde_json::{json, Value};
use smithers_gateway::config::{AuthConfig, OneOrMany, TokenGrant};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier};
use std::time::Duration;

const SECRET: &str = "jwt-test-secret-0123456789abcdef";
const REFRESH: &str = "smithers token issue";
const UPGRADE_LIMIT_BODY: &str = "Gateway connection limit reached\n";
const UPGRADE_GATE_BODY: &str = "Origin or host is not allowed\n";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// What a `connect` must produce.
#[derive(Clone, Copy, Debug)]
enum Expect {
    Accepted,
    /// `UNAUTHORIZED` with this message and no `refresh`, then close 1008.
    Refused(&'static str),
    /// `UNAUTHORIZED` with this message and `refresh: "smithers token issue"`, then close 1008.
    RefusedRefresh(&'static str),
}

/// Opens a socket (extra upgrade headers) and sends `connect` with `token`; returns the socket
/// and the response.
fn connect_response(
    addr: SocketAddr,
    headers: &[(&str, &str)],
    token: Option<&str>,
) -> (Ws, Value) {
    let (mut ws, _) =
        ws_open_with(addr, "/", headers).unwrap_or_else(|e| panic!("upgrade refused: {e}"));
    let response = request(&mut ws, "c", "connect", connect_params(token));
    (ws, response)
}

/// The hello payload, or the error object after checking `UNAUTHORIZED` and the 1008 close.
fn settle(mut ws: Ws, response: Value) -> Result<Value, Value> {
    if response["ok"] == true {
        return Ok(response["payload"].clone());
    }
    assert_eq!(response["error"]["code"], "UNAUTHORIZED", "{response}");
    assert_eq!(
        read_until_end(&mut ws),
        Ending::Closed(Some(1008)),
        "{response}"
    );
    Err(response["error"].clone())
}

fn connect_outcome(
    addr: SocketAddr,
    headers: &[(&str, &str)],
    token: Option<&str>,
) -> Result<Value, Value> {
    let (ws, response) = connect_response(addr, headers, token);
    settle(ws, response)
}

/// Asserts `outcome` matches `expect`; returns the hello payload when accepted.
fn check_outcome(name: &str, expect: Expect, outcome: Result<Value, Value>) -> Option<Value> {
    match (expect, outcome) {
        (Expect::Accepted, Ok(hello)) => Some(hello),
        (Expect::Refused(message), Err(error)) => {
            assert_eq!(error["message"], message, "{name}");
            assert!(error.get("refresh").is_none(), "{name}: {error}");
            None
        }
        (Expect::RefusedRefresh(message), Err(error)) => {
            assert_eq!(error["message"], message, "{name}");
            assert_eq!(error["refresh"], REFRESH, "{name}");
            None
        }
        (expect, outcome) => panic!("{name}: expected {expect:?}, got {outcome:?}"),
    }
}

fn check_connect(
    addr: SocketAddr,
    name: &str,
    headers: &[(&str, &str)],
    token: Option<&str>,
    expect: Expect,
) -> Option<Value> {
    check_outcome(name, expect, connect_outcome(addr, headers, token))
}

/// Runs `attempt(now)` so that the server read the same whole second as `now` (the test and the
/// in-process server share the clock); retries when the second changed during the attempt.
fn within_one_second<T>(mut attempt: impl FnMut(i64) -> T) -> T {
    for _ in 0..5 {
        let before = now_s();
        let result = attempt(before);
        if now_s() == before {
            return result;
        }
    }
    panic!("the clock second changed during each of 5 attempts");
}

/// First 16 hex chars of SHA-256 of the token (the default tokenId).
fn token_id(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Sends a raw WebSocket upgrade request (Host defaults to the gateway address) and reads the
/// response; the connection is returned so an accepted socket stays open.
fn raw_upgrade(addr: SocketAddr, headers: &[(&str, &str)]) -> (RawHttp, HttpResponse) {
    let mut text = String::from("GET / HTTP/1.1\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        text.push_str(&format!("Host: {addr}\r\n"));
    }
    text.push_str("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    let mut http = RawHttp::open(addr);
    http.send(text.as_bytes());
    let response = http.response();
    (http, response)
}

/// Asserts a refused upgrade: exact status, text body, and `Connection: close`.
fn assert_upgrade_refused(response: &HttpResponse, status: u16, body: &str, name: &str) {
    assert_eq!(response.status, status, "{name}: {}", response.text());
    assert_eq!(response.text(), body, "{name}");
    assert_eq!(response.header("connection"), Some("close"), "{name}");
}

/// One HTTP request on a fresh connection, with extra header lines.
fn http_request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> HttpResponse {
    let mut text = format!("{method} {target} HTTP/1.1\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        text.push_str(&format!("Host: {addr}\r\n"));
    }
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    http_once(addr, text.as_bytes())
}

// JWT material -------------------------------------------------------------------------------

fn jwt_auth(adjust: impl FnOnce(&mut AuthConfig)) -> AuthConfig {
    let mut auth = AuthConfig::Jwt {
        issuer: "smithers".into(),
        audience: OneOrMany::Many(vec!["gateway".into(), "console".into()]),
        secret: SECRET.into(),
        scopes_claim: Some("perms".into()),
        role_claim: Some("smithersRole".into()),
        user_claim: Some("email".into()),
        default_role: Some("viewer".into()),
        default_scopes: Some(vec!["run:read".into()]),
        clock_skew_seconds: Some(60),
        allow_missing_exp: false,
        allowed_origins: Vec::new(),
    };
    adjust(&mut auth);
    auth
}

fn jwt_gateway() -> Gateway {
    Gateway::start(|c| c.auth = Some(jwt_auth(|_| {})))
}

fn hs256() -> Value {
    json!({"alg": "HS256", "typ": "JWT"})
}

/// Valid claims for the configured names, expiring in an hour.
fn claims() -> Value {
    json!({
        "iss": "smithers",
        "aud": "gateway",
        "exp": now_s() + 3600,
        "email": "alice@example.com",
        "smithersRole": "admin",
        "perms": "run:read run:write",
    })
}

fn with(mut base: Value, key: &str, value: Value) -> Value {
    base[key] = value;
    base
}

fn without(mut base: Value, key: &str) -> Value {
    if let Some(map) = base.as_object_mut() {
        map.remove(key);
    }
    base
}

fn mint(header: Value, claims: Value) -> String {
    mint_jwt(&header, &claims, SECRET.as_bytes())
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn b64_decode(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Extra request headers of one table row.
type Headers<'a> = Vec<(&'a str, &'a str)>;

/// A table row: name, token (None = no auth.token), expectation.
type Vector = (&'static str, Option<String>, Expect);

fn check_vectors(addr: SocketAddr, vectors: &[Vector]) {
    for (name, token, expect) in vectors {
        check_connect(addr, name, &[], token.as_deref(), *expect);
    }
}

const SEGMENTS: &str = "JWT must have three segments";
const NOT_JSON: &str = "JWT header or payload was not valid JSON";
const BAD_ALG: &str = "Unsupported JWT algorithm";
const BAD_SIGNATURE: &str = "JWT signature verification failed";
const BAD_ISSUER: &str = "JWT issuer did not match";
const BAD_AUDIENCE: &str = "JWT audience did not match";
const MISSING_EXP: &str = "JWT is missing a valid exp claim";
const EXPIRED: &str = "JWT has expired";
const NOT_ACTIVE: &str = "JWT is not active yet";
const TOKEN_REQUIRED: &str = "A bearer token is required";

// ---------------------------------------------------------------------------------------------
// JWT (RELIABILITY.md §3.3 items 1–12)
// ---------------------------------------------------------------------------------------------

/// A valid HS256 token connects with role, scopes and userId from the configured claims.
#[test]
fn jwt_valid_token_maps_the_configured_claims() {
    let gateway = jwt_gateway();
    let token = mint(hs256(), claims());
    let hello = connect_outcome(gateway.addr, &[], Some(&token))
        .unwrap_or_else(|e| panic!("valid JWT refused: {e}"));
    let auth = &hello["auth"];
    assert_eq!(auth["role"], "admin");
    assert_eq!(auth["scopes"], json!(["run:read", "run:write"]));
    assert_eq!(auth["userId"], "alice@example.com");
    let id = auth["tokenId"].as_str().unwrap_or_default();
    assert_eq!(id.len(), 16);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    assert_eq!(id, token_id(&token));
    // The same token as an Authorization header on the upgrade, and over HTTP RPC.
    let bearer = format!("Bearer {token}");
    let hello = connect_outcome(gateway.addr, &[("authorization", &bearer)], None)
        .unwrap_or_else(|e| panic!("header JWT refused: {e}"));
    assert_eq!(hello["auth"]["userId"], "alice@example.com");
    let health = post_json(gateway.addr, "/v1/rpc/health", Some(&token), "{}");
    assert_eq!(health.status, 200, "{}", health.text());
    assert_eq!(health.json()["ok"], true);
}

/// Forged, malformed and wrongly signed tokens: exact message, then close 1008.
#[test]
fn jwt_forgeries_and_malformed_tokens_are_refused() {
    let gateway = jwt_gateway();
    let token = mint(hs256(), claims());
    let parts: Vec<&str> = token.split('.').collect();
    let [header, payload, signature] = parts.as_slice() else {
        panic!("three segments expected")
    };
    let signed_as = |alg: Value| mint(json!({"alg": alg, "typ": "JWT"}), claims());
    let mut flipped = b64_decode(signature);
    flipped[0] ^= 0x01;
    let none_header = b64(br#"{"alg":"none","typ":"JWT"}"#);
    let escalated = b64(with(claims(), "smithersRole", json!("root"))
        .to_string()
        .as_bytes());
    let attacker_jwk = json!({"kty": "oct", "k": b64(b"attacker-key-0123456789")});
    let vectors: Vec<Vector> = vec![
        ("no token", None, Expect::Refused(TOKEN_REQUIRED)),
        (
            "empty token",
            Some(String::new()),
            Expect::Refused(TOKEN_REQUIRED),
        ),
        // Item 2: alg none.
        (
            "alg none, empty signature",
            Some(format!("{none_header}.{payload}.")),
            Expect::Refused(SEGMENTS),
        ),
        (
            "alg none with a signature",
            Some(format!("{none_header}.{payload}.{signature}")),
            Expect::Refused(BAD_ALG),
        ),
        // Item 3: other algorithms with a valid HMAC-SHA256 signature.
        (
            "alg HS384",
            Some(signed_as(json!("HS384"))),
            Expect::Refused(BAD_ALG),
        ),
        (
            "alg HS512",
            Some(signed_as(json!("HS512"))),
            Expect::Refused(BAD_ALG),
        ),
        (
            "alg RS256",
            Some(signed_as(json!("RS256"))),
            Expect::Refused(BAD_ALG),
        ),
        (
            "alg hs256",
            Some(signed_as(json!("hs256"))),
            Expect::Refused(BAD_ALG),
        ),
        (
            "no alg",
            Some(mint(json!({"typ": "JWT"}), claims())),
            Expect::Refused(BAD_ALG),
        ),
        // Item 4: signature and structure.
        (
            "wrong secret",
            Some(mint_jwt(&hs256(), &claims(), b"another-secret-0123456789")),
            Expect::Refused(BAD_SIGNATURE),
        ),
        (
            "one flipped signature bit",
            Some(format!("{header}.{payload}.{}", b64(&flipped))),
            Expect::Refused(BAD_SIGNATURE),
        ),
        (
            "truncated signature (one char)",
            Some(format!(
                "{header}.{payload}.{}",
                &signature[..signature.len() - 1]
            )),
            Expect::Refused(BAD_SIGNATURE),
        ),
        (
            "truncated signature (half)",
            Some(format!("{header}.{payload}.{}", &signature[..20])),
            Expect::Refused(BAD_SIGNATURE),
        ),
        (
            "trailing bytes",
            Some(format!("{token}AAAA")),
            Expect::Refused(BAD_SIGNATURE),
        ),
        (
            "trailing dot",
            Some(format!("{token}.")),
            Expect::Refused(SEGMENTS),
        ),
        (
            "two segments",
            Some(format!("{header}.{payload}")),
            Expect::Refused(SEGMENTS),
        ),
        (
            "four segments",
            Some(format!("{token}.{signature}")),
            Expect::Refused(SEGMENTS),
        ),
        (
            "empty payload segment",
            Some(format!("{header}..{signature}")),
            Expect::Refused(SEGMENTS),
        ),
        (
            "non-base64url chars in the signature",
            Some(format!("{header}.{payload}.+{}", &signature[1..])),
            Expect::Refused(BAD_SIGNATURE),
        ),
        (
            "non-base64url chars in the header",
            Some(format!("{header}+/.{payload}.{signature}")),
            Expect::Refused(NOT_JSON),
        ),
        (
            "padding in the payload",
            Some(format!("{header}.{payload}=.{signature}")),
            Expect::Refused(NOT_JSON),
        ),
        (
            "header not JSON",
            Some(format!("{}.{payload}.{signature}", b64(b"not json"))),
            Expect::Refused(NOT_JSON),
        ),
        (
            "payload an array",
            Some(format!("{header}.{}.{signature}", b64(b"[1]"))),
            Expect::Refused(NOT_JSON),
        ),
        (
            "escalated payload with the original signature",
            Some(format!("{header}.{escalated}.{signature}")),
            Expect::Refused(BAD_SIGNATURE),
        ),
        // Item 10: header fields that must not matter.
        (
            "kid path traversal",
            Some(mint(
                json!({"alg": "HS256", "kid": "../../etc/passwd"}),
                claims(),
            )),
            Expect::Accepted,
        ),
        (
            "kid SQL",
            Some(mint(
                json!({"alg": "HS256", "kid": "' OR 1=1 --"}),
                claims(),
            )),
            Expect::Accepted,
        ),
        (
            "jku and x5u ignored",
            Some(mint(
                json!({"alg": "HS256", "jku": "http://127.0.0.1:1/jwks.json", "x5u": "http://127.0.0.1:1/x"}),
                claims(),
            )),
            Expect::Accepted,
        ),
        (
            "embedded jwk is never the key",
            Some(mint_jwt(
                &json!({"alg": "HS256", "jwk": attacker_jwk}),
                &claims(),
                b"attacker-key-0123456789",
            )),
            Expect::Refused(BAD_SIGNATURE),
        ),
        // Item 11: crit is refused (our check; its own message).
        (
            "crit b64",
            Some(mint(json!({"alg": "HS256", "crit": ["b64"]}), claims())),
            Expect::Refused("Unsupported JWT header"),
        ),
    ];
    check_vectors(gateway.addr, &vectors);
}

/// Item 4, size: tokens past 16 KiB are refused without a panic; a large one under it verifies.
#[test]
fn jwt_oversized_tokens_are_refused_without_panicking() {
    // In connect the frame bound (16,384 UTF-16 units) answers first and the socket stays open;
    // in a header (maxHeaderBytes raised) the JWT bound answers "JWT is too large".
    let gateway = Gateway::start(|c| {
        c.auth = Some(jwt_auth(|_| {}));
        c.header_bytes_max = 64 * 1024;
    });
    // Over 16 KiB in connect.params.auth.token: refused by the frame bounds before auth.
    let mut ws = ws_open(gateway.addr);
    let huge = format!(
        "{}.{}.{}",
        "A".repeat(6000),
        "B".repeat(6000),
        "C".repeat(6000)
    );
    send_json(
        &mut ws,
        &json!({"type": "req", "id": "c", "method": "connect", "params": connect_params(Some(&huge))}),
    );
    // Frame errors are answered with id "invalid".
    let (response, _) = recv_response(&mut ws, "invalid");
    assert_eq!(response["error"]["code"], "INVALID_INPUT");
    assert_eq!(
        response["error"]["message"],
        "gateway frame string exceeds the maximum length of 16384."
    );
    // The socket is still open and can authenticate.
    let hello = request(
        &mut ws,
        "c2",
        "connect",
        connect_params(Some(&mint(hs256(), claims()))),
    );
    assert_eq!(hello["ok"], true, "{hello}");

    // Just under 16 KiB and validly signed: accepted.
    let padded = mint(hs256(), with(claims(), "pad", json!("p".repeat(11_000))));
    assert!(
        padded.len() > 14_000 && padded.len() <= 16_384,
        "{}",
        padded.len()
    );
    check_connect(
        gateway.addr,
        "large valid token",
        &[],
        Some(&padded),
        Expect::Accepted,
    );

    // 20 KiB in an Authorization header on the upgrade: refused as too large (our bound).
    let big = mint(hs256(), with(claims(), "pad", json!("p".repeat(20_000))));
    assert!(big.len() > 16 * 1024);
    let bearer = format!("Bearer {big}");
    check_connect(
        gateway.addr,
        "20 KiB header token",
        &[("authorization", &bearer)],
        None,
        Expect::Refused("JWT is too large"),
    );
}

/// Item 5: exp missing or not a finite number is refused; past numbers expire (with refresh).
#[test]
fn jwt_exp_forms() {
    let gateway = jwt_gateway();
    let now = now_s();
    let exp = |value: Value| Some(mint(hs256(), with(claims(), "exp", value)));
    let vectors: Vec<Vector> = vec![
        (
            "exp missing",
            Some(mint(hs256(), without(claims(), "exp"))),
            Expect::Refused(MISSING_EXP),
        ),
        (
            "exp string",
            exp(json!("9999999999")),
            Expect::Refused(MISSING_EXP),
        ),
        ("exp null", exp(json!(null)), Expect::Refused(MISSING_EXP)),
        ("exp bool", exp(json!(true)), Expect::Refused(MISSING_EXP)),
        (
            "exp array",
            exp(json!([now + 3600])),
            Expect::Refused(MISSING_EXP),
        ),
        (
            "exp negative",
            exp(json!(-5)),
            Expect::RefusedRefresh(EXPIRED),
        ),
        (
            "exp i64::MIN",
            exp(json!(i64::MIN)),
            Expect::RefusedRefresh(EXPIRED),
        ),
        (
            "exp float in the past",
            exp(json!(1.5)),
            Expect::RefusedRefresh(EXPIRED),
        ),
        (
            "exp an hour ago",
            exp(json!(now - 3600)),
            Expect::RefusedRefresh(EXPIRED),
        ),
        // A float is a finite number (AUTH.md §3.2 step 7): compared like the reference.
        (
            "exp float in the future",
            exp(json!(now as f64 + 3600.25)),
            Expect::Accepted,
        ),
        ("exp u64::MAX", exp(json!(u64::MAX)), Expect::Accepted),
    ];
    check_vectors(gateway.addr, &vectors);
    // Over HTTP RPC the expired token is a 401 with the same refresh hint.
    let expired = mint(hs256(), with(claims(), "exp", json!(now - 3600)));
    let response = post_json(gateway.addr, "/v1/rpc/health", Some(&expired), "{}");
    assert_eq!(response.status, 401);
    let body = response.json();
    assert_eq!(body["error"]["code"], "UNAUTHORIZED");
    assert_eq!(body["error"]["message"], EXPIRED);
    assert_eq!(body["error"]["refresh"], REFRESH);
}

/// Items 6–7: the exp and nbf boundaries with clockSkewSeconds 60, pinned to the second.
#[test]
fn jwt_exp_and_nbf_boundaries_with_skew_60() {
    // src/auth/jwt.rs: expired when now − 60 ≥ exp (now−59 accepted, now−60 and now−61 refused);
    // not active when now + 60 < nbf (now+60 accepted, now+61 refused); now = the server's
    // whole epoch second, which `within_one_second` makes equal to the test's.
    let gateway = jwt_gateway();
    let cases: [(&str, &str, i64, Expect); 7] = [
        ("exp now-59", "exp", -59, Expect::Accepted),
        ("exp now-60", "exp", -60, Expect::RefusedRefresh(EXPIRED)),
        ("exp now-61", "exp", -61, Expect::RefusedRefresh(EXPIRED)),
        ("nbf now+59", "nbf", 59, Expect::Accepted),
        ("nbf now+60", "nbf", 60, Expect::Accepted),
        ("nbf now+61", "nbf", 61, Expect::Refused(NOT_ACTIVE)),
        ("nbf now-3600", "nbf", -3600, Expect::Accepted),
    ];
    for (name, claim, offset, expect) in cases {
        let (ws, response) = within_one_second(|now| {
            let token = mint(hs256(), with(claims(), claim, json!(now + offset)));
            connect_response(gateway.addr, &[], Some(&token))
        });
        check_outcome(name, expect, settle(ws, response));
    }
    let vectors: Vec<Vector> = vec![(
        "nbf string",
        Some(mint(hs256(), with(claims(), "nbf", json!("0")))),
        Expect::Refused(NOT_ACTIVE),
    )];
    check_vectors(gateway.addr, &vectors);
}

/// Items 8–9: aud must intersect the configured audiences; iss must match exactly.
#[test]
fn jwt_audience_and_issuer_forms() {
    let gateway = jwt_gateway();
    let aud = |value: Value| Some(mint(hs256(), with(claims(), "aud", value)));
    let iss = |value: Value| Some(mint(hs256(), with(claims(), "iss", value)));
    let vectors: Vec<Vector> = vec![
        ("aud string match", aud(json!("gateway")), Expect::Accepted),
        (
            "aud second configured",
            aud(json!("console")),
            Expect::Accepted,
        ),
        (
            "aud array with a match",
            aud(json!(["x", "gateway"])),
            Expect::Accepted,
        ),
        (
            "aud array without",
            aud(json!(["x", "y"])),
            Expect::Refused(BAD_AUDIENCE),
        ),
        (
            "aud empty array",
            aud(json!([])),
            Expect::Refused(BAD_AUDIENCE),
        ),
        ("aud number", aud(json!(5)), Expect::Refused(BAD_AUDIENCE)),
        (
            "aud other case",
            aud(json!("Gateway")),
            Expect::Refused(BAD_AUDIENCE),
        ),
        (
            "aud missing",
            Some(mint(hs256(), without(claims(), "aud"))),
            Expect::Refused(BAD_AUDIENCE),
        ),
        ("iss wrong", iss(json!("evil")), Expect::Refused(BAD_ISSUER)),
        (
            "iss missing",
            Some(mint(hs256(), without(claims(), "iss"))),
            Expect::Refused(BAD_ISSUER),
        ),
        (
            "iss other case",
            iss(json!("Smithers")),
            Expect::Refused(BAD_ISSUER),
        ),
        (
            "iss trailing space",
            iss(json!("smithers ")),
            Expect::Refused(BAD_ISSUER),
        ),
        (
            "iss array",
            iss(json!(["smithers"])),
            Expect::Refused(BAD_ISSUER),
        ),
    ];
    check_vectors(gateway.addr, &vectors);
}

/// Item 12: scopes claim forms and defaultScopes; a method outside them → FORBIDDEN.
#[test]
fn jwt_scope_claim_forms_and_forbidden_method() {
    let gateway = jwt_gateway();
    let perms = |value: Option<Value>| {
        let base = claims();
        mint(
            hs256(),
            match value {
                Some(value) => with(base, "perms", value),
                None => without(base, "perms"),
            },
        )
    };
    let cases: [(&str, Option<Value>, Value); 6] = [
        (
            "space string",
            Some(json!("run:read approval:submit")),
            json!(["run:read", "approval:submit"]),
        ),
        (
            "comma string",
            Some(json!("run:read,approval:submit")),
            json!(["run:read", "approval:submit"]),
        ),
        (
            "comma and space string",
            Some(json!(" run:read , approval:submit\t")),
            json!(["run:read", "approval:submit"]),
        ),
        (
            "array",
            Some(json!(["run:read", 7, "approval:submit"])),
            json!(["run:read", "approval:submit"]),
        ),
        ("absent", None, json!(["run:read"])),
        ("empty string", Some(json!("")), json!(["run:read"])),
    ];
    for (name, value, scopes) in cases {
        let hello = check_connect(
            gateway.addr,
            name,
            &[],
            Some(&perms(value)),
            Expect::Accepted,
        );
        assert_eq!(
            hello.map(|h| h["auth"]["scopes"].clone()),
            Some(scopes),
            "{name}"
        );
    }
    // Role and user claims absent: defaultRole, userId null.
    let bare = mint(hs256(), without(without(claims(), "smithersRole"), "email"));
    let hello =
        check_connect(gateway.addr, "bare", &[], Some(&bare), Expect::Accepted).unwrap_or_default();
    assert_eq!(hello["auth"]["role"], "viewer");
    assert_eq!(hello["auth"]["userId"], Value::Null);

    // A read-only token: launchRun is forbidden over the socket, which stays open.
    let reader = perms(Some(json!("run:read")));
    let (mut ws, response) = connect_response(gateway.addr, &[], Some(&reader));
    assert_eq!(response["ok"], true, "{response}");
    let forbidden = request(&mut ws, "l", "launchRun", json!({"workflow": "x"}));
    assert_eq!(forbidden["ok"], false);
    assert_eq!(forbidden["error"]["code"], "FORBIDDEN");
    assert_eq!(
        forbidden["error"]["message"],
        "Missing required scope run:write for launchRun"
    );
    assert_eq!(forbidden["error"]["requiredScope"], "run:write");
    let health = request(&mut ws, "h", "health", json!({}));
    assert_eq!(health["ok"], true, "{health}");
    // Same over HTTP RPC: 403 with the same error.
    let response = post_json(gateway.addr, "/v1/rpc/launchRun", Some(&reader), "{}");
    assert_eq!(response.status, 403);
    let body = response.json();
    assert_eq!(body["error"]["code"], "FORBIDDEN");
    assert_eq!(body["error"]["requiredScope"], "run:write");
}

// ---------------------------------------------------------------------------------------------
// Token mode
// ---------------------------------------------------------------------------------------------

const VALID: &str = "tok-valid-0123456789abcdef";
const PLAIN: &str = "tok-plain-0123456789abcdef";

fn full_grant(role: &str, scopes: &[&str], user: Option<&str>, id: Option<&str>) -> TokenGrant {
    TokenGrant {
        user_id: user.map(str::to_string),
        token_id: id.map(str::to_string),
        ..grant(role, scopes)
    }
}

fn token_gateway(allowed_origins: &[&str]) -> Gateway {
    let far = smithers_gateway::clock::now_ms() + 3_600_000;
    let tokens = [
        (
            VALID,
            full_grant("operator", &["run:read"], Some("bob"), Some("bob-token")),
        ),
        (PLAIN, grant("viewer", &["run:read"])),
        (
            "tok-revoked",
            TokenGrant {
                revoked_at_ms: Some(1),
                ..grant("admin", &["*"])
            },
        ),
        (
            "tok-revoked-and-expired",
            TokenGrant {
                revoked_at_ms: Some(1),
                expires_at_ms: Some(1),
                ..grant("admin", &["*"])
            },
        ),
        (
            "tok-expired",
            TokenGrant {
                expires_at_ms: Some(1_000),
                ..grant("admin", &["*"])
            },
        ),
        (
            "tok-future-dates",
            TokenGrant {
                revoked_at_ms: Some(far),
                expires_at_ms: Some(far),
                issued_at_ms: Some(far),
                ..grant("admin", &["*"])
            },
        ),
    ];
    let origins: Vec<String> = allowed_origins.iter().map(|s| s.to_string()).collect();
    Gateway::start(move |c| {
        let mut auth = token_auth(&tokens);
        if let AuthConfig::Token {
            allowed_origins, ..
        } = &mut auth
        {
            *allowed_origins = origins;
        }
        c.auth = Some(auth);
    })
}

/// Unknown, prefix, same-length and revoked/expired tokens; grant identity in hello.
#[test]
fn token_mode_vectors_and_grant_identity() {
    let gateway = token_gateway(&[]);
    let mut last_byte = VALID.to_string();
    last_byte.pop();
    last_byte.push('g');
    let vectors: Vec<Vector> = vec![
        (
            "unknown",
            Some("nope".into()),
            Expect::Refused("Invalid token"),
        ),
        (
            "prefix of a valid token",
            Some(VALID[..VALID.len() - 1].to_string()),
            Expect::Refused("Invalid token"),
        ),
        (
            "same length, last byte differs",
            Some(last_byte),
            Expect::Refused("Invalid token"),
        ),
        (
            "valid token plus a byte",
            Some(format!("{VALID}f")),
            Expect::Refused("Invalid token"),
        ),
        (
            "prototype key",
            Some("__proto__".into()),
            Expect::Refused("Invalid token"),
        ),
        (
            "empty",
            Some(String::new()),
            Expect::Refused(TOKEN_REQUIRED),
        ),
        ("absent", None, Expect::Refused(TOKEN_REQUIRED)),
        (
            "revoked",
            Some("tok-revoked".into()),
            Expect::RefusedRefresh("Token has been revoked"),
        ),
        (
            "revoked is checked before expired",
            Some("tok-revoked-and-expired".into()),
            Expect::RefusedRefresh("Token has been revoked"),
        ),
        (
            "expired",
            Some("tok-expired".into()),
            Expect::RefusedRefresh("Token expired; issue a refreshed token."),
        ),
        (
            "revocation and expiry in the future",
            Some("tok-future-dates".into()),
            Expect::Accepted,
        ),
    ];
    check_vectors(gateway.addr, &vectors);

    let hello = check_connect(gateway.addr, "valid", &[], Some(VALID), Expect::Accepted)
        .unwrap_or_default();
    assert_eq!(hello["auth"]["role"], "operator");
    assert_eq!(hello["auth"]["scopes"], json!(["run:read"]));
    assert_eq!(hello["auth"]["userId"], "bob");
    assert_eq!(hello["auth"]["tokenId"], "bob-token");
    let hello = check_connect(gateway.addr, "plain", &[], Some(PLAIN), Expect::Accepted)
        .unwrap_or_default();
    assert_eq!(hello["auth"]["userId"], Value::Null);
    assert_eq!(hello["auth"]["tokenId"], token_id(PLAIN));

    // Over HTTP RPC: revoked → 401 with refresh.
    let response = post_json(gateway.addr, "/v1/rpc/health", Some("tok-revoked"), "{}");
    assert_eq!(response.status, 401);
    assert_eq!(
        response.json()["error"]["message"],
        "Token has been revoked"
    );
    assert_eq!(response.json()["error"]["refresh"], REFRESH);
}

/// Upgrade headers authenticate a connect without auth.token; auth.token takes precedence.
#[test]
fn token_mode_header_credentials_and_precedence() {
    let gateway = token_gateway(&[]);
    let bearer = format!("Bearer {VALID}");
    let lower = format!("bearer {VALID}");
    let plain_bearer = format!("Bearer {PLAIN}");
    // (name, headers, auth.token, expected userId or refusal message)
    type Case<'a> = (
        &'a str,
        Headers<'a>,
        Option<&'a str>,
        Result<Value, &'a str>,
    );
    let cases: Vec<Case> = vec![
        (
            "x-smithers-key",
            vec![("x-smithers-key", VALID)],
            None,
            Ok(json!("bob")),
        ),
        (
            "Authorization Bearer",
            vec![("authorization", &bearer)],
            None,
            Ok(json!("bob")),
        ),
        (
            "Authorization bearer",
            vec![("authorization", &lower)],
            None,
            Ok(json!("bob")),
        ),
        (
            "Authorization whole value",
            vec![("authorization", VALID)],
            None,
            Ok(json!("bob")),
        ),
        (
            "Authorization with another scheme is the whole value",
            vec![("authorization", "Basic dG9rLXZhbGlk")],
            None,
            Err("Invalid token"),
        ),
        (
            "x-smithers-key wins over Authorization",
            vec![("x-smithers-key", "wrong"), ("authorization", &bearer)],
            None,
            Err("Invalid token"),
        ),
        (
            "auth.token wins over x-smithers-key",
            vec![("x-smithers-key", VALID)],
            Some(PLAIN),
            Ok(Value::Null),
        ),
        (
            "auth.token wins over Authorization",
            vec![("authorization", &plain_bearer)],
            Some(VALID),
            Ok(json!("bob")),
        ),
        (
            "a wrong auth.token is not rescued by a valid header",
            vec![("x-smithers-key", VALID)],
            Some("wrong"),
            Err("Invalid token"),
        ),
    ];
    for (name, headers, token, expected) in cases {
        let outcome = connect_outcome(gateway.addr, &headers, token);
        match (expected, outcome) {
            (Ok(user), Ok(hello)) => assert_eq!(hello["auth"]["userId"], user, "{name}"),
            (Err(message), Err(error)) => assert_eq!(error["message"], message, "{name}"),
            (expected, outcome) => panic!("{name}: expected {expected:?}, got {outcome:?}"),
        }
    }
}

/// allowedOrigins in token mode: a listed Origin and no Origin pass; another Origin → 403.
#[test]
fn token_mode_allowed_origins_at_the_upgrade() {
    let gateway = token_gateway(&["https://console.example"]);
    let cases: [(&str, Headers, bool); 4] = [
        (
            "listed origin",
            vec![("origin", "https://console.example")],
            true,
        ),
        ("no origin", vec![], true),
        (
            "other origin",
            vec![("origin", "https://evil.example")],
            false,
        ),
        (
            "listed origin with a trailing slash",
            vec![("origin", "https://console.example/")],
            false,
        ),
    ];
    for (name, headers, accepted) in cases {
        if accepted {
            check_connect(gateway.addr, name, &headers, Some(VALID), Expect::Accepted);
        } else {
            let (_, response) = raw_upgrade(gateway.addr, &headers);
            assert_upgrade_refused(&response, 403, UPGRADE_GATE_BODY, name);
        }
    }
    // Over HTTP RPC the Origin gate answers 401 before the token is checked.
    let response = http_request(
        gateway.addr,
        "POST",
        "/v1/rpc/health",
        &[
            ("authorization", &format!("Bearer {VALID}")),
            ("origin", "https://evil.example"),
        ],
        "{}",
    );
    assert_eq!(response.status, 401);
    assert_eq!(response.json()["error"]["message"], "Origin is not allowed");
}

// ---------------------------------------------------------------------------------------------
// Trusted proxy
// ---------------------------------------------------------------------------------------------

const MISSING_SCOPES: &str =
    "trusted-proxy request is missing the user scopes header and no defaultScopes is configured";

fn proxy_gateway(
    headers: Option<&[&str]>,
    default_role: Option<&str>,
    default_scopes: Option<&[&str]>,
) -> Gateway {
    let auth = AuthConfig::TrustedProxy {
        trusted_headers: headers.map(|h| h.iter().map(|s| s.to_string()).collect()),
        default_role: default_role.map(str::to_string),
        default_scopes: default_scopes.map(|s| s.iter().map(|s| s.to_string()).collect()),
        allowed_origins: Vec::new(),
    };
    Gateway::start(move |c| c.auth = Some(auth))
}

/// Upgrade headers map to identity; a missing scopes header fails closed without defaultScopes.
#[test]
fn trusted_proxy_headers_map_to_identity() {
    let gateway = proxy_gateway(None, None, None);
    let hello = check_connect(
        gateway.addr,
        "all headers",
        &[
            ("x-user-id", "alice"),
            ("x-user-scopes", "run:read, approval:submit  signal:submit"),
            ("x-user-role", "reviewer"),
            ("x-smithers-token-id", "proxy-7"),
        ],
        None,
        Expect::Accepted,
    )
    .unwrap_or_default();
    assert_eq!(
        hello["auth"],
        json!({
            "sessionToken": hello["auth"]["sessionToken"].clone(),
            "role": "reviewer",
            "scopes": ["run:read", "approval:submit", "signal:submit"],
            "userId": "alice",
            "tokenId": "proxy-7",
        })
    );
    let hello = check_connect(
        gateway.addr,
        "scopes only",
        &[("x-user-scopes", "run:read")],
        None,
        Expect::Accepted,
    )
    .unwrap_or_default();
    assert_eq!(hello["auth"]["role"], "operator");
    assert_eq!(hello["auth"]["userId"], Value::Null);
    assert_eq!(hello["auth"]["tokenId"], Value::Null);
    let refusals: [(&str, Headers, Option<&str>); 4] = [
        ("no headers", vec![("x-user-id", "alice")], None),
        ("empty scopes header", vec![("x-user-scopes", "")], None),
        ("separators only", vec![("x-user-scopes", " , ")], None),
        ("a token is not read", vec![], Some("anything")),
    ];
    for (name, headers, token) in refusals {
        check_connect(
            gateway.addr,
            name,
            &headers,
            token,
            Expect::Refused(MISSING_SCOPES),
        );
    }
    // Over HTTP RPC the same refusal is a 401.
    let response = http_request(gateway.addr, "POST", "/v1/rpc/health", &[], "{}");
    assert_eq!(response.status, 401);
    assert_eq!(response.json()["error"]["message"], MISSING_SCOPES);
}

/// defaultScopes [] is used as is (then every method is forbidden); custom trustedHeaders names.
#[test]
fn trusted_proxy_default_scopes_and_custom_headers() {
    let gateway = proxy_gateway(None, Some("guest"), Some(&[]));
    let (mut ws, response) = connect_response(gateway.addr, &[], None);
    assert_eq!(response["ok"], true, "{response}");
    assert_eq!(response["payload"]["auth"]["scopes"], json!([]));
    assert_eq!(response["payload"]["auth"]["role"], "guest");
    let health = request(&mut ws, "h", "health", json!({}));
    assert_eq!(health["error"]["code"], "FORBIDDEN");
    assert_eq!(
        health["error"]["message"],
        "Missing required scope run:read for health"
    );

    let gateway = proxy_gateway(
        Some(&["X-Remote-User", "X-Remote-Scopes", "X-Remote-Role"]),
        None,
        None,
    );
    let hello = check_connect(
        gateway.addr,
        "custom names",
        &[
            ("x-remote-user", "carol"),
            ("x-remote-scopes", "cron:read,cron:write"),
            ("x-remote-role", "ops"),
            ("x-user-role", "ignored"),
        ],
        None,
        Expect::Accepted,
    )
    .unwrap_or_default();
    assert_eq!(hello["auth"]["userId"], "carol");
    assert_eq!(hello["auth"]["scopes"], json!(["cron:read", "cron:write"]));
    assert_eq!(hello["auth"]["role"], "ops");
    check_connect(
        gateway.addr,
        "default names are not read",
        &[("x-user-scopes", "*"), ("x-user-id", "mallory")],
        None,
        Expect::Refused(MISSING_SCOPES),
    );
}

// ---------------------------------------------------------------------------------------------
// No auth configured
// ---------------------------------------------------------------------------------------------

fn open_gateway(trust_any_host: bool) -> Gateway {
    Gateway::start(move |c| c.auth = Some(AuthConfig::None { trust_any_host }))
}

/// Without auth every connect is operator/*; the Host and Origin gates refuse at the upgrade.
#[test]
fn no_auth_identity_and_upgrade_gates() {
    let gateway = open_gateway(false);
    let hello =
        check_connect(gateway.addr, "no token", &[], None, Expect::Accepted).unwrap_or_default();
    assert_eq!(hello["auth"]["role"], "operator");
    assert_eq!(hello["auth"]["scopes"], json!(["*"]));
    assert_eq!(hello["auth"]["userId"], Value::Null);
    assert_eq!(hello["auth"]["tokenId"], Value::Null);

    let cases: [(&str, Headers, bool); 9] = [
        ("Host evil.example", vec![("host", "evil.example")], false),
        (
            "Host evil.example:80",
            vec![("host", "evil.example:80")],
            false,
        ),
        (
            "Host localhost:1234",
            vec![("host", "localhost:1234")],
            true,
        ),
        ("Host app.localhost", vec![("host", "app.localhost")], true),
        (
            "Origin evil",
            vec![("origin", "http://evil.example")],
            false,
        ),
        (
            "Origin localhost subdomain trick",
            vec![("origin", "http://localhost.evil.example")],
            false,
        ),
        (
            "Origin localhost:1234",
            vec![("origin", "http://localhost:1234")],
            true,
        ),
        (
            "Origin 127.0.0.1",
            vec![("origin", "http://127.0.0.1:9")],
            true,
        ),
        ("Origin null", vec![("origin", "null")], true),
    ];
    for (name, headers, accepted) in cases {
        if accepted {
            check_connect(gateway.addr, name, &headers, None, Expect::Accepted);
        } else {
            let (_, response) = raw_upgrade(gateway.addr, &headers);
            assert_upgrade_refused(&response, 403, UPGRADE_GATE_BODY, name);
        }
    }
    // Through tungstenite the refusal is an HTTP error with status 403.
    match ws_open_with(gateway.addr, "/", &[("host", "evil.example")]) {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("upgrade with Host evil.example was accepted"),
    }

    // HTTP RPC: Host gate → 401 UNAUTHORIZED "Host is not allowed"; loopback Host works.
    let body = r#"{"id":"r1","method":"health","params":{}}"#;
    let refused = http_request(
        gateway.addr,
        "POST",
        "/rpc",
        &[("host", "evil.example")],
        body,
    );
    assert_eq!(refused.status, 401);
    let error = refused.json();
    assert_eq!(error["ok"], false);
    assert_eq!(error["error"]["code"], "UNAUTHORIZED");
    assert_eq!(error["error"]["message"], "Host is not allowed");
    let refused = http_request(
        gateway.addr,
        "POST",
        "/rpc",
        &[("origin", "http://evil.example")],
        body,
    );
    assert_eq!(refused.status, 401);
    assert_eq!(refused.json()["error"]["message"], "Origin is not allowed");
    let accepted = post_json(gateway.addr, "/rpc", None, body);
    assert_eq!(accepted.status, 200, "{}", accepted.text());
    assert_eq!(accepted.json()["id"], "r1");
}

/// trust_any_host: any Host and Origin pass, at the upgrade and on HTTP RPC.
#[test]
fn no_auth_trust_any_host() {
    let gateway = open_gateway(true);
    for headers in [
        vec![("host", "evil.example")],
        vec![("host", "evil.example"), ("origin", "http://evil.example")],
    ] {
        check_connect(
            gateway.addr,
            "trusted host",
            &headers,
            None,
            Expect::Accepted,
        );
    }
    let response = http_request(
        gateway.addr,
        "POST",
        "/v1/rpc/health",
        &[("host", "evil.example")],
        "{}",
    );
    assert_eq!(response.status, 200, "{}", response.text());
}

// ---------------------------------------------------------------------------------------------
// Session cookie (AUTH.md §7)
// ---------------------------------------------------------------------------------------------

/// GET /v1/auth/session sets the HttpOnly cookie and redirects to a same-origin path only.
#[test]
fn session_hand_off_sets_the_cookie() {
    let gateway = token_gateway(&[]);
    let port = gateway.addr.port();
    let cookie_value = "tok-valid-0123456789abcdef";
    let cases: [(&str, &str, Headers, String, &str); 4] = [
        (
            "plain",
            "/v1/auth/session?token=tok-valid-0123456789abcdef&next=/x",
            vec![],
            format!("smithers_session_{port}={cookie_value}; HttpOnly; Path=/; SameSite=Lax"),
            "/x",
        ),
        (
            "behind TLS",
            "/v1/auth/session?token=tok-valid-0123456789abcdef&next=/runs?id=1",
            vec![("x-forwarded-proto", "https, http")],
            format!(
                "smithers_session_{port}={cookie_value}; HttpOnly; Path=/; SameSite=Lax; Secure"
            ),
            "/runs?id=1",
        ),
        (
            "protocol-relative next",
            "/v1/auth/session?token=tok-valid-0123456789abcdef&next=//evil.example/x",
            vec![],
            format!("smithers_session_{port}={cookie_value}; HttpOnly; Path=/; SameSite=Lax"),
            "/",
        ),
        (
            "Host without a port",
            "/v1/auth/session?token=tok-valid-0123456789abcdef&next=https://evil.example",
            vec![("host", "localhost")],
            format!("smithers_session={cookie_value}; HttpOnly; Path=/; SameSite=Lax"),
            "/",
        ),
    ];
    for (name, target, headers, cookie, next) in cases {
        let response = http_request(gateway.addr, "GET", target, &headers, "");
        assert_eq!(response.status, 200, "{name}: {}", response.text());
        assert_eq!(
            response.header("content-type"),
            Some("text/html; charset=utf-8"),
            "{name}"
        );
        assert_eq!(
            response.header("set-cookie"),
            Some(cookie.as_str()),
            "{name}"
        );
        let html = response.text();
        assert!(
            html.contains(&format!("window.location.replace(\"{next}\")")),
            "{name}: {html}"
        );
        assert!(
            html.contains(&format!("content=\"0;url={next}\"")),
            "{name}: {html}"
        );
        assert!(
            !html.contains(VALID),
            "{name}: the page must not echo the token"
        );
    }
    // A bad token: 401 JSON error frame, no cookie.
    let response = http_request(
        gateway.addr,
        "GET",
        "/v1/auth/session?token=nope&next=/x",
        &[],
        "",
    );
    assert_eq!(response.status, 401);
    assert_eq!(response.header("set-cookie"), None);
    let body = response.json();
    assert_eq!(body["type"], "res");
    assert_eq!(body["ok"], false);
    assert_eq!(body["error"]["code"], "UNAUTHORIZED");
    assert_eq!(body["error"]["message"], "Invalid token");
    // A token that needs percent-encoding round-trips through the cookie.
    let odd = "tok/with=odd chars";
    let gateway =
        Gateway::start(|c| c.auth = Some(token_auth(&[(odd, grant("viewer", &["run:read"]))])));
    let port = gateway.addr.port();
    let response = http_request(
        gateway.addr,
        "GET",
        "/v1/auth/session?token=tok%2Fwith%3Dodd%20chars",
        &[],
        "",
    );
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        response.header("set-cookie"),
        Some(
            format!(
                "smithers_session_{port}=tok%2Fwith%3Dodd%20chars; HttpOnly; Path=/; SameSite=Lax"
            )
            .as_str()
        )
    );
    let cookie = format!("smithers_session_{port}=tok%2Fwith%3Dodd%20chars");
    let hello = check_connect(
        gateway.addr,
        "encoded cookie",
        &[("cookie", &cookie)],
        None,
        Expect::Accepted,
    )
    .unwrap_or_default();
    assert_eq!(hello["auth"]["role"], "viewer");
}

/// The session cookie alone authenticates a connect, behind the cookie-origin gate.
#[test]
fn session_cookie_authenticates_the_socket() {
    let gateway = token_gateway(&[]);
    let port = gateway.addr.port();
    let cookie = format!("theme=dark; smithers_session_{port}={VALID}");
    let same_origin = format!("http://127.0.0.1:{port}");
    let cases: [(&str, Headers, bool); 6] = [
        ("cookie only", vec![("cookie", &cookie)], true),
        (
            "cookie and same-origin Origin",
            vec![("cookie", &cookie), ("origin", &same_origin)],
            true,
        ),
        (
            "cookie and Origin null",
            vec![("cookie", &cookie), ("origin", "null")],
            true,
        ),
        (
            "cookie and cross-site Origin",
            vec![("cookie", &cookie), ("origin", "http://evil.example")],
            false,
        ),
        (
            "cookie and same host, other port",
            vec![("cookie", &cookie), ("origin", "http://127.0.0.1:1")],
            false,
        ),
        (
            "cross-site Origin with a header credential",
            vec![
                ("cookie", &cookie),
                ("origin", "http://evil.example"),
                ("x-smithers-key", VALID),
            ],
            true,
        ),
    ];
    for (name, headers, accepted) in cases {
        if accepted {
            let hello = check_connect(gateway.addr, name, &headers, None, Expect::Accepted)
                .unwrap_or_default();
            assert_eq!(hello["auth"]["userId"], "bob", "{name}");
        } else {
            let (_, response) = raw_upgrade(gateway.addr, &headers);
            assert_upgrade_refused(&response, 403, UPGRADE_GATE_BODY, name);
        }
    }
    // A cookie under another port's name is not this gateway's credential.
    let other = format!("smithers_session_1={VALID}");
    check_connect(
        gateway.addr,
        "other port's cookie",
        &[("cookie", &other)],
        None,
        Expect::Refused(TOKEN_REQUIRED),
    );
    // Over HTTP RPC the cookie-origin gate is a 401 with its own message.
    let response = http_request(
        gateway.addr,
        "POST",
        "/v1/rpc/health",
        &[("cookie", &cookie), ("origin", "http://evil.example")],
        "{}",
    );
    assert_eq!(response.status, 401);
    assert_eq!(
        response.json()["error"]["message"],
        "Origin is not allowed for cookie-authenticated requests"
    );
}

// ---------------------------------------------------------------------------------------------
// Connection limits (PROTOCOL.md §5.1, §6.2 step 6; RELIABILITY.md §6 row 12)
// ---------------------------------------------------------------------------------------------

fn authenticated(gateway: &Gateway) -> usize {
    gateway
        .state()
        .counters
        .authenticated_connections
        .load(Ordering::SeqCst)
}

/// maxConnections N: the (N+1)th upgrade is a 503; a closed socket frees its slot.
#[test]
fn authenticated_pool_full_refuses_the_upgrade() {
    const N: usize = 5;
    let gateway = Gateway::start(|c| c.connections_max = N);
    let mut sockets: Vec<Ws> = (0..N)
        .map(|_| ws_connect(gateway.addr, ADMIN_TOKEN).0)
        .collect();
    assert_eq!(authenticated(&gateway), N);
    let (_, response) = raw_upgrade(gateway.addr, &[]);
    assert_upgrade_refused(&response, 503, UPGRADE_LIMIT_BODY, "pool full");
    // Closing one frees its slot (the server notices asynchronously; bounded wait).
    if let Some(mut ws) = sockets.pop() {
        let _ = ws.close(None);
        let _ = read_until_end(&mut ws);
    }
    let mut freed = false;
    for _ in 0..200 {
        if authenticated(&gateway) < N {
            freed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(freed, "slot not released after close");
    let (ws, _) = ws_connect(gateway.addr, ADMIN_TOKEN);
    sockets.push(ws);
    assert_eq!(authenticated(&gateway), N);
}

/// maxPreAuthConnections 3: a 4th unauthenticated upgrade is a 503 until one connects.
#[test]
fn pre_auth_pool_full_refuses_the_upgrade() {
    let gateway = Gateway::start(|c| c.pre_auth_connections_max = 3);
    let mut waiting: Vec<Ws> = (0..3).map(|_| ws_open(gateway.addr)).collect();
    let (_, response) = raw_upgrade(gateway.addr, &[]);
    assert_upgrade_refused(&response, 503, UPGRADE_LIMIT_BODY, "pre-auth full");
    // One connects: its pre-auth slot is released before the hello is sent.
    let hello = request(
        &mut waiting[0],
        "c",
        "connect",
        connect_params(Some(ADMIN_TOKEN)),
    );
    assert_eq!(hello["ok"], true, "{hello}");
    let (_kept, response) = raw_upgrade(gateway.addr, &[]);
    assert_eq!(response.status, 101, "{}", response.text());
    // And the pool is full again.
    let (_, response) = raw_upgrade(gateway.addr, &[]);
    assert_upgrade_refused(&response, 503, UPGRADE_LIMIT_BODY, "pre-auth full again");
}

/// A socket upgraded while the pool had room, connecting after it filled: CONNECTION_LIMIT, 1013.
#[test]
fn connect_after_the_pool_filled_is_refused_with_1013() {
    let gateway = Gateway::start(|c| c.connections_max = 2);
    let mut early = ws_open(gateway.addr);
    let _first = ws_connect(gateway.addr, ADMIN_TOKEN);
    let _second = ws_connect(gateway.addr, ADMIN_TOKEN);
    let response = request(
        &mut early,
        "c",
        "connect",
        connect_params(Some(ADMIN_TOKEN)),
    );
    assert_eq!(response["ok"], false);
    assert_eq!(response["error"]["code"], "CONNECTION_LIMIT");
    assert_eq!(
        response["error"]["message"],
        "Gateway connection limit reached"
    );
    assert_eq!(read_until_end(&mut early), Ending::Closed(Some(1013)));
    assert_eq!(authenticated(&gateway), 2);
}

enum Attempt {
    Accepted(Box<Ws>),
    RefusedAtUpgrade,
    RefusedAtConnect,
}

fn attempt(addr: SocketAddr, connect: bool) -> Attempt {
    match ws_open_with(addr, "/", &[]) {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
            Attempt::RefusedAtUpgrade
        }
        Err(other) => panic!("upgrade failed: {other}"),
        Ok((mut ws, _)) if connect => {
            let response = request(&mut ws, "c", "connect", connect_params(Some(ADMIN_TOKEN)));
            if response["ok"] == true {
                return Attempt::Accepted(Box::new(ws));
            }
            assert_eq!(response["error"]["code"], "CONNECTION_LIMIT", "{response}");
            assert_eq!(read_until_end(&mut ws), Ending::Closed(Some(1013)));
            Attempt::RefusedAtConnect
        }
        Ok((ws, _)) => Attempt::Accepted(Box::new(ws)),
    }
}

/// cap + 50 concurrent attempts: exactly cap accepted and exactly 50 refused.
#[test]
fn concurrent_attempts_past_the_cap() {
    // Authenticated pool: a refusal is a 503 at the upgrade or CONNECTION_LIMIT + 1013 at
    // connect, depending on the interleaving. Pre-auth pool: always a 503 at the upgrade.
    const CAP: usize = 20;
    const EXTRA: usize = 50;
    // (name, sends connect, maxConnections, maxPreAuthConnections)
    for (name, connect, connections_max, pre_auth_max) in [
        ("authenticated pool", true, CAP, 64),
        ("pre-auth pool", false, 1_000, CAP),
    ] {
        let gateway = Gateway::start(|c| {
            c.connections_max = connections_max;
            c.pre_auth_connections_max = pre_auth_max;
            c.auth_deadline_ms = 120_000;
        });
        let addr = gateway.addr;
        let barrier = Arc::new(Barrier::new(CAP + EXTRA));
        let threads: Vec<_> = (0..CAP + EXTRA)
            .map(|_| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    attempt(addr, connect)
                })
            })
            .collect();
        let outcomes: Vec<Attempt> = threads
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| panic!("{name}: attempt panicked"))
            })
            .collect();
        let accepted = outcomes
            .iter()
            .filter(|o| matches!(o, Attempt::Accepted(_)))
            .count();
        let at_upgrade = outcomes
            .iter()
            .filter(|o| matches!(o, Attempt::RefusedAtUpgrade))
            .count();
        let at_connect = outcomes
            .iter()
            .filter(|o| matches!(o, Attempt::RefusedAtConnect))
            .count();
        assert_eq!(accepted, CAP, "{name}");
        assert_eq!(at_upgrade + at_connect, EXTRA, "{name}");
        if !connect {
            assert_eq!(at_connect, 0, "{name}");
        } else {
            assert_eq!(authenticated(&gateway), CAP, "{name}");
        }
        // Every accepted socket is live: authenticated ones answer, pre-auth ones ask to connect.
        for outcome in outcomes {
            if let Attempt::Accepted(mut ws) = outcome {
                let health = request(&mut ws, "h", "health", json!({}));
                if connect {
                    assert_eq!(health["ok"], true, "{name}: {health}");
                } else {
                    assert_eq!(health["error"]["message"], "Connect first", "{name}");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The real binary
// ---------------------------------------------------------------------------------------------

/// A directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path =
            std::env::temp_dir().join(format!("sgw-auth-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("{e}"));
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The spawned binary; killed (and reaped) when dropped, even when the test panics.
struct Spawned {
    child: std::process::Child,
    addr: SocketAddr,
    stdout: String,
    stderr_path: PathBuf,
}

impl Spawned {
    /// Kills the process and returns everything it wrote on stderr.
    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `smithers-gateway serve` on 127.0.0.1:0 with RUST_LOG=debug; waits (bounded) for the
/// listening line, and for the admin-token line when `admin` is set.
fn spawn_binary(dir: &Path, run: &str, config: Option<&str>, admin: bool) -> Spawned {
    let stdout_path = dir.join(format!("{run}.stdout"));
    let stderr_path = dir.join(format!("{run}.stderr"));
    let create = |path: &Path| std::fs::File::create(path).unwrap_or_else(|e| panic!("{e}"));
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_smithers-gateway"));
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--data-dir",
        ])
        .arg(dir.join("data"))
        .env("RUST_LOG", "debug")
        // Not a terminal, and no NO_COLOR either: the binary itself must keep logs plain.
        .env_remove("NO_COLOR")
        .env_remove("SMITHERS_GATEWAY_TRUST_ANY_HOST")
        .env_remove("GATEWAY_LOG_FORMAT")
        .stdin(std::process::Stdio::null())
        .stdout(create(&stdout_path))
        .stderr(create(&stderr_path));
    if let Some(text) = config {
        let path = dir.join(format!("{run}.toml"));
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        command.arg("--config").arg(path);
    }
    let child = command.spawn().unwrap_or_else(|e| panic!("spawn: {e}"));
    let mut spawned = Spawned {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        stdout: String::new(),
        stderr_path,
    };
    for _ in 0..400 {
        let text = std::fs::read_to_string(&stdout_path).unwrap_or_default();
        let ready = |marker: &str| {
            text.lines()
                .any(|line| line.starts_with(marker) && text.contains(&format!("{line}\n")))
        };
        if ready("smithers-gateway listening on http://") && (!admin || ready("admin token (")) {
            spawned.stdout = text;
            let addr = spawned
                .stdout
                .split("listening on http://")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|addr| addr.parse().ok())
                .unwrap_or_else(|| panic!("no address in {:?}", spawned.stdout));
            spawned.addr = addr;
            return spawned;
        }
        if let Ok(Some(status)) = spawned.child.try_wait() {
            let stderr = std::fs::read_to_string(&spawned.stderr_path).unwrap_or_default();
            panic!("gateway exited with {status}: {stderr}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("gateway did not print its address");
}

/// Tokens, JWTs and the JWT secret never appear in the binary's debug logs (item 14).
#[test]
fn binary_logs_never_contain_tokens() {
    let dir = TempDir::new("logs");
    let good = "tok-log-secret-AAAA1111";
    let wrong = "tok-log-wrong-BBBB2222";
    let jwt_secret = "jwt-log-secret-CCCC3333dddd";
    let token_config = format!(
        "heartbeatMs = 15000\n[auth]\nmode = \"token\"\n[auth.tokens.\"{good}\"]\nrole = \"admin\"\nscopes = [\"*\"]\nuserId = \"alice\"\n"
    );
    let jwt_config = format!(
        "[auth]\nmode = \"jwt\"\nissuer = \"smithers\"\naudience = \"gateway\"\nsecret = \"{jwt_secret}\"\n"
    );
    let jwt_claims = json!({"iss": "smithers", "aud": "gateway", "exp": now_s() + 3600, "sub": "alice", "scope": "*"});
    let good_jwt = mint_jwt(&hs256(), &jwt_claims, jwt_secret.as_bytes());
    let forged_jwt = mint_jwt(&hs256(), &jwt_claims, b"some-other-secret-0000");
    let expired_jwt = mint_jwt(
        &hs256(),
        &with(jwt_claims.clone(), "exp", json!(1)),
        jwt_secret.as_bytes(),
    );
    let runs: [(&str, String, &str, Vec<&str>); 2] = [
        (
            "token",
            token_config,
            good,
            vec![wrong, "tok-log-secret-AAAA111"],
        ),
        (
            "jwt",
            jwt_config,
            good_jwt.as_str(),
            vec![forged_jwt.as_str(), expired_jwt.as_str()],
        ),
    ];
    for (run, config, valid, invalid) in runs {
        let spawned = spawn_binary(&dir.0, run, Some(&config), false);
        let addr = spawned.addr;
        // Successful auth: connect (param, header), HTTP RPC, session hand-off.
        check_connect(addr, run, &[], Some(valid), Expect::Accepted);
        check_connect(
            addr,
            run,
            &[("x-smithers-key", valid)],
            None,
            Expect::Accepted,
        );
        let response = post_json(addr, "/v1/rpc/health", Some(valid), "{}");
        assert_eq!(response.status, 200, "{run}: {}", response.text());
        let response = http_request(
            addr,
            "GET",
            &format!("/v1/auth/session?token={valid}"),
            &[],
            "",
        );
        assert_eq!(response.status, 200, "{run}: {}", response.text());
        // Failed auth the same ways, plus a malformed request carrying the token.
        for bad in &invalid {
            let outcome = connect_outcome(addr, &[], Some(bad));
            assert!(outcome.is_err(), "{run}: {bad} accepted");
            let outcome =
                connect_outcome(addr, &[("authorization", &format!("Bearer {bad}"))], None);
            assert!(outcome.is_err(), "{run}: {bad} accepted");
            let response = post_json(addr, "/v1/rpc/health", Some(bad), "{}");
            assert_eq!(response.status, 401, "{run}");
            let response = http_request(
                addr,
                "GET",
                &format!("/v1/auth/session?token={bad}"),
                &[],
                "",
            );
            assert_eq!(response.status, 401, "{run}");
        }
        let malformed = format!("GET /v1/auth/session?token={valid} HTTP/9.9\r\nHost: x\r\nX-Smithers-Key: {valid}\r\n\r\n");
        let response = http_once(addr, malformed.as_bytes());
        assert!(response.status >= 400, "{run}: {}", response.status);
        let stderr = spawned.stop();
        // The capture really holds debug logs.
        assert!(stderr.contains("gateway started"), "{run}: {stderr}");
        assert!(stderr.contains("connected"), "{run}: {stderr}");
        assert!(stderr.contains("HTTP RPC refused"), "{run}: {stderr}");
        // Captured stderr is not a terminal: plain text, no colour codes.
        assert!(
            !stderr.contains('\u{1b}'),
            "{run}: ANSI codes in redirected logs"
        );
        let mut secrets: Vec<&str> = vec![valid, jwt_secret];
        secrets.extend(invalid.iter().copied());
        for secret in secrets {
            assert!(
                !stderr.contains(secret),
                "{run}: a secret is in the logs:\n{stderr}"
            );
        }
        if run == "jwt" {
            // Not even the signature segment of a token.
            let signature = valid.rsplit('.').next().unwrap_or_default();
            assert!(
                !stderr.contains(signature),
                "{run}: a JWT signature is in the logs"
            );
        }
    }
}

/// First start without auth config: the admin token is printed, kept, works, and gets ticks.
#[test]
fn binary_first_start_admin_token() {
    // (run, data dir — shared by the first two runs, config, note on the token line)
    let dir = TempDir::new("admin");
    let heartbeat_dir = TempDir::new("admin-heartbeat");
    let runs: [(&str, &Path, Option<&str>, &str); 3] = [
        ("first", &dir.0, None, "created"),
        ("restart", &dir.0, None, "kept"),
        (
            "heartbeat",
            &heartbeat_dir.0,
            Some("heartbeatMs = 200\n"),
            "created",
        ),
    ];
    let mut tokens: Vec<String> = Vec::new();
    for (run, data, config, note) in runs {
        let spawned = spawn_binary(data, run, config, true);
        let line = spawned
            .stdout
            .lines()
            .find(|line| line.starts_with("admin token ("))
            .unwrap_or_default()
            .to_string();
        assert!(
            line.starts_with(&format!("admin token ({note} in ")),
            "{run}: {line}"
        );
        let token = line.rsplit(": ").next().unwrap_or_default().to_string();
        assert_eq!(token.len(), 68, "{run}: sgw_ + 64 hex: {token}");
        assert!(token.starts_with("sgw_"), "{run}");
        let health = http_request(spawned.addr, "GET", "/health", &[], "");
        assert_eq!(health.status, 200, "{run}");
        assert_eq!(health.json()["ok"], true, "{run}");
        let (mut ws, hello) = ws_connect(spawned.addr, &token);
        assert_eq!(hello["payload"]["auth"]["role"], "admin", "{run}");
        assert_eq!(hello["payload"]["auth"]["scopes"], json!(["*"]), "{run}");
        if config.is_some() {
            assert_eq!(hello["payload"]["policy"]["heartbeatMs"], 200, "{run}");
            let tick = recv_json(&mut ws);
            assert_eq!(tick["event"], "tick", "{run}: {tick}");
            assert_eq!(tick["seq"], 2, "{run}: the challenge was seq 1");
        }
        let stderr = spawned.stop();
        assert!(
            !stderr.contains(&token),
            "{run}: the admin token is in the logs"
        );
        tokens.push(token);
    }
    assert_eq!(tokens[0], tokens[1], "a restart keeps the admin token");
    assert_ne!(tokens[0], tokens[2], "a fresh data dir gets a new token");
}
