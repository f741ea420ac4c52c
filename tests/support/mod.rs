//! Test support: a real gateway on 127.0.0.1 with an ephemeral port (driver from GATEWAY_DRIVER),
//! a tungstenite WebSocket client, raw HTTP exchanges, and token/JWT minting.
#![allow(dead_code)]

use smithers_gateway::auth::Authenticator;
use smithers_gateway::config::{AuthConfig, Config, DriverKind, GatewayConfig, TokenGrant};
use smithers_gateway::state::GatewayState;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tungstenite::protocol::Message;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
/// Every socket read in tests gives up after this long, so no test can hang.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

pub fn driver_from_env() -> DriverKind {
    match std::env::var("GATEWAY_DRIVER").ok().as_deref() {
        Some("legacy") => DriverKind::Legacy,
        Some("io-uring") => DriverKind::IoUring,
        _ => DriverKind::Auto,
    }
}

/// A running gateway (storage, engine, workers) with its own data directory, shut down and
/// removed when dropped.
pub struct Gateway {
    inner: Option<smithers_gateway::gateway::Gateway>,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
}

/// The example workflows shipped in the repository.
pub fn example_workflows() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows")
}

pub fn temp_dir(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sgw-{label}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

impl Gateway {
    /// Token auth with one admin token, plus whatever `adjust` changes; the example workflows.
    pub fn start(adjust: impl FnOnce(&mut GatewayConfig)) -> Gateway {
        let mut config = GatewayConfig {
            auth: Some(token_auth(&[(ADMIN_TOKEN, grant("admin", &["*"]))])),
            ..GatewayConfig::default()
        };
        adjust(&mut config);
        Gateway::start_with(config, 1)
    }

    pub fn start_with(gateway: GatewayConfig, workers: usize) -> Gateway {
        Gateway::start_full(gateway, workers, &example_workflows(), &temp_dir("data"))
    }

    /// Starts on `data_dir` (kept when it has data, so a test can restart on it).
    pub fn start_full(
        gateway: GatewayConfig,
        workers: usize,
        workflows_dir: &Path,
        data_dir: &Path,
    ) -> Gateway {
        let engine = smithers_gateway::engine::core::EngineOptions {
            retry_backoff_base_ms: 50,
            ..Default::default()
        };
        Gateway::start_engine(gateway, workers, workflows_dir, data_dir, engine)
    }

    /// `start_full` with explicit engine options (e.g. a long retry backoff).
    pub fn start_engine(
        gateway: GatewayConfig,
        workers: usize,
        workflows_dir: &Path,
        data_dir: &Path,
        engine: smithers_gateway::engine::core::EngineOptions,
    ) -> Gateway {
        gateway
            .validate()
            .unwrap_or_else(|e| panic!("invalid test config: {e}"));
        let config = Config {
            listen: "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")),
            workers,
            data_dir: data_dir.to_path_buf(),
            driver: driver_from_env(),
            gateway: gateway.clone(),
        };
        let auth = gateway.auth.clone().unwrap_or(AuthConfig::None {
            trust_any_host: false,
        });
        let options = smithers_gateway::gateway::StartOptions {
            workflows_dir: workflows_dir.to_path_buf(),
            authenticator: Authenticator::new(auth, None),
            engine,
            synchronous_full: true,
        };
        let inner = smithers_gateway::gateway::start(config, options)
            .unwrap_or_else(|e| panic!("gateway did not start: {e}"));
        let addr = inner.server.local_addr();
        Gateway {
            inner: Some(inner),
            addr,
            data_dir: data_dir.to_path_buf(),
        }
    }

    pub fn state(&self) -> &GatewayState {
        match &self.inner {
            Some(inner) => inner.server.state(),
            None => panic!("server already stopped"),
        }
    }

    /// Stops the server and waits for its threads.
    pub fn stop(&mut self) {
        if let Some(inner) = self.inner.take() {
            inner.shutdown();
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/", self.addr)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

pub fn grant(role: &str, scopes: &[&str]) -> TokenGrant {
    TokenGrant {
        role: role.into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        user_id: None,
        token_id: None,
        issued_at_ms: None,
        expires_at_ms: None,
        revoked_at_ms: None,
    }
}

pub fn token_auth(tokens: &[(&str, TokenGrant)]) -> AuthConfig {
    AuthConfig::Token {
        tokens: tokens
            .iter()
            .map(|(t, g)| (t.to_string(), g.clone()))
            .collect::<BTreeMap<_, _>>(),
        allowed_origins: Vec::new(),
    }
}

pub type Ws = tungstenite::WebSocket<TcpStream>;

/// Opens a WebSocket to `path` with extra request headers.
pub fn ws_open_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(Ws, tungstenite::handshake::client::Response), tungstenite::Error> {
    // A signal can interrupt the handshake's blocking reads (as it can any read, see
    // `recv_json`); tungstenite cannot resume a blocking handshake, so it starts again on a new
    // connection, a bounded number of times.
    let mut attempts = 0;
    loop {
        attempts += 1;
        match ws_handshake(addr, path, headers) {
            Err(tungstenite::Error::Io(error))
                if error.kind() == std::io::ErrorKind::Interrupted && attempts < 5 =>
            {
                continue
            }
            other => return other,
        }
    }
}

fn ws_handshake(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(Ws, tungstenite::handshake::client::Response), tungstenite::Error> {
    let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect: {e}"));
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .unwrap_or_else(|e| panic!("{e}"));
    stream.set_nodelay(true).unwrap_or_else(|e| panic!("{e}"));
    let mut request =
        tungstenite::client::IntoClientRequest::into_client_request(format!("ws://{addr}{path}"))
            .unwrap_or_else(|e| panic!("{e}"));
    for (name, value) in headers {
        request.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(name.as_bytes())
                .unwrap_or_else(|e| panic!("{e}")),
            tungstenite::http::HeaderValue::from_str(value).unwrap_or_else(|e| panic!("{e}")),
        );
    }
    match tungstenite::client::client(request, stream) {
        Ok(pair) => Ok(pair),
        Err(tungstenite::HandshakeError::Failure(error)) => Err(error),
        Err(tungstenite::HandshakeError::Interrupted(_)) => panic!("handshake interrupted"),
    }
}

pub fn ws_open(addr: SocketAddr) -> Ws {
    ws_open_with(addr, "/", &[])
        .unwrap_or_else(|e| panic!("upgrade failed: {e}"))
        .0
}

/// Reads the next text frame as JSON; panics on anything else.
pub fn recv_json(ws: &mut Ws) -> serde_json::Value {
    loop {
        match ws.read() {
            Ok(Message::Text(text)) => {
                return serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("bad JSON {text}: {e}"))
            }
            Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => continue,
            Ok(other) => panic!("expected text, got {other:?}"),
            // A signal can interrupt a blocking read; that is not the server's doing.
            Err(tungstenite::Error::Io(error))
                if error.kind() == std::io::ErrorKind::Interrupted =>
            {
                continue
            }
            Err(error) => panic!("read failed: {error}"),
        }
    }
}

/// Reads frames until the response with `id`, returning it and the events seen before it.
pub fn recv_response(ws: &mut Ws, id: &str) -> (serde_json::Value, Vec<serde_json::Value>) {
    let mut events = Vec::new();
    loop {
        let frame = recv_json(ws);
        if frame["type"] == "res" && frame["id"] == id {
            return (frame, events);
        }
        events.push(frame);
    }
}

pub fn send_json(ws: &mut Ws, value: &serde_json::Value) {
    let mut result = ws.send(Message::text(value.to_string()));
    // Interrupted by a signal: the frame is queued in tungstenite; flushing sends the rest.
    while let Err(tungstenite::Error::Io(error)) = &result {
        if error.kind() != std::io::ErrorKind::Interrupted {
            break;
        }
        result = ws.flush();
    }
    result.unwrap_or_else(|e| panic!("send failed: {e}"));
}

pub fn request(
    ws: &mut Ws,
    id: &str,
    method: &str,
    params: serde_json::Value,
) -> serde_json::Value {
    send_json(
        ws,
        &serde_json::json!({"type":"req","id":id,"method":method,"params":params}),
    );
    recv_response(ws, id).0
}

pub fn connect_params(token: Option<&str>) -> serde_json::Value {
    let mut params = serde_json::json!({"minProtocol":1,"maxProtocol":1,"client":{"id":"test","version":"0","platform":"rust"}});
    if let Some(token) = token {
        params["auth"] = serde_json::json!({"token": token});
    }
    params
}

/// Opens a socket and completes `connect` with `token`; returns the socket and the hello frame.
pub fn ws_connect(addr: SocketAddr, token: &str) -> (Ws, serde_json::Value) {
    let mut ws = ws_open(addr);
    let response = request(&mut ws, "connect-1", "connect", connect_params(Some(token)));
    assert_eq!(response["ok"], true, "connect failed: {response}");
    (ws, response)
}

/// What the peer did after we stopped sending: a close frame (with its code) or a dropped socket.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    Closed(Option<u16>),
    Dropped,
}

/// Reads until the socket ends, skipping data frames.
pub fn read_until_end(ws: &mut Ws) -> Ending {
    let deadline = Instant::now() + IO_TIMEOUT;
    while Instant::now() < deadline {
        match ws.read() {
            Ok(Message::Close(frame)) => return Ending::Closed(frame.map(|f| u16::from(f.code))),
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed) | Err(tungstenite::Error::AlreadyClosed) => {
                return Ending::Dropped
            }
            Err(tungstenite::Error::Io(error))
                if error.kind() == std::io::ErrorKind::Interrupted =>
            {
                continue
            }
            Err(tungstenite::Error::Io(error))
                if error.kind() == std::io::ErrorKind::WouldBlock
                    || error.kind() == std::io::ErrorKind::TimedOut =>
            {
                panic!("socket still open after {IO_TIMEOUT:?}")
            }
            Err(error) => {
                eprintln!("socket ended with {error}");
                return Ending::Dropped;
            }
        }
    }
    panic!("socket did not end")
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Parses one response from the front of `bytes`; returns it and its length.
pub fn parse_response(bytes: &[u8]) -> Option<(HttpResponse, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head_len) = response.parse(bytes).ok()? else {
        return None;
    };
    let status = response.code?;
    let headers: Vec<(String, String)> = response
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let body = if status == 101 || status == 100 {
        0
    } else {
        length
    };
    if bytes.len() < head_len + body {
        return None;
    }
    Some((
        HttpResponse {
            status,
            headers,
            body: bytes[head_len..head_len + body].to_vec(),
        },
        head_len + body,
    ))
}

/// A raw HTTP connection for byte-exact tests.
pub struct RawHttp {
    pub stream: TcpStream,
    pending: Vec<u8>,
}

impl RawHttp {
    pub fn open(addr: SocketAddr) -> RawHttp {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect: {e}"));
        stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .unwrap_or_else(|e| panic!("{e}"));
        RawHttp {
            stream,
            pending: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("write: {e}"));
    }

    /// Reads one response (skipping `100 Continue`).
    pub fn response(&mut self) -> HttpResponse {
        loop {
            if let Some((response, used)) = parse_response(&self.pending) {
                self.pending.drain(..used);
                if response.status == 100 {
                    continue;
                }
                return response;
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!(
                    "connection closed before a response; got {:?}",
                    String::from_utf8_lossy(&self.pending)
                ),
                Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => panic!(
                    "read: {e}; got {:?}",
                    String::from_utf8_lossy(&self.pending)
                ),
            }
        }
    }

    /// True when the server closed the connection with nothing more to say (any further bytes,
    /// e.g. an answer to a smuggled request, make this false).
    pub fn closed_without_more(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return self.pending.is_empty(),
                Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return self.pending.is_empty()
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => panic!(
                    "connection not closed: {e}; pending {:?}",
                    String::from_utf8_lossy(&self.pending)
                ),
            }
        }
    }
}

/// One request on a fresh connection; returns the response.
pub fn http_once(addr: SocketAddr, request: &[u8]) -> HttpResponse {
    let mut http = RawHttp::open(addr);
    http.send(request);
    http.response()
}

pub fn post_json(addr: SocketAddr, path: &str, token: Option<&str>, body: &str) -> HttpResponse {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    http_once(addr, request.as_bytes())
}

/// `POST /rpc` of `method` with `params` as `token` (body id `h1`): the status and the frame.
pub fn rpc_post(
    addr: SocketAddr,
    token: &str,
    method: &str,
    params: serde_json::Value,
) -> (u16, serde_json::Value) {
    let body = serde_json::json!({"id": "h1", "method": method, "params": params}).to_string();
    let response = post_json(addr, "/rpc", Some(token), &body);
    (response.status, response.json())
}

/// The payload of a successful response frame (asserts `ok`).
pub fn ok_payload(response: &serde_json::Value) -> serde_json::Value {
    assert_eq!(response["ok"], true, "{response}");
    response["payload"].clone()
}

/// Mints an HS256 JWT with free-form header and claims.
pub fn mint_jwt(header: &serde_json::Value, claims: &serde_json::Value, secret: &[u8]) -> String {
    use base64::Engine;
    use hmac::Mac;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let signing_input = format!(
        "{}.{}",
        engine.encode(header.to_string()),
        engine.encode(claims.to_string())
    );
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap_or_else(|e| panic!("{e}"));
    mac.update(signing_input.as_bytes());
    format!(
        "{signing_input}.{}",
        engine.encode(mac.finalize().into_bytes())
    )
}

pub fn now_s() -> i64 {
    (smithers_gateway::clock::now_ms() / 1000) as i64
}

/// A connected socket that keeps events which arrive while it waits for a response.
pub struct Client {
    pub ws: Ws,
    pub backlog: std::collections::VecDeque<serde_json::Value>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> (Client, serde_json::Value) {
        Client::connect_as(addr, ADMIN_TOKEN)
    }

    /// Connects with `token`.
    pub fn connect_as(addr: SocketAddr, token: &str) -> (Client, serde_json::Value) {
        let (ws, hello) = ws_connect(addr, token);
        (
            Client {
                ws,
                backlog: Default::default(),
            },
            hello,
        )
    }

    pub fn request(
        &mut self,
        id: &str,
        method: &str,
        params: serde_json::Value,
    ) -> serde_json::Value {
        send_json(
            &mut self.ws,
            &serde_json::json!({"type":"req","id":id,"method":method,"params":params}),
        );
        let (response, events) = recv_response(&mut self.ws, id);
        self.backlog.extend(events);
        response
    }

    pub fn next_event(&mut self) -> serde_json::Value {
        loop {
            let frame = match self.backlog.pop_front() {
                Some(frame) => frame,
                None => recv_json(&mut self.ws),
            };
            if frame["type"] == "event" {
                return frame;
            }
        }
    }

    /// Events until `run.completed` for `run_id`, inclusive.
    pub fn events_until_completed(&mut self, run_id: &str) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut events = Vec::new();
        while Instant::now() < deadline {
            let frame = self.next_event();
            let done = frame["event"] == "run.completed" && frame["payload"]["runId"] == run_id;
            if frame["payload"]["runId"] == run_id {
                events.push(frame);
            }
            if done {
                return events;
            }
        }
        panic!("run {run_id} did not complete; events: {events:?}")
    }

    /// Events until one named `name` for `run_id`.
    pub fn wait_event(&mut self, run_id: &str, name: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let frame = self.next_event();
            if frame["event"] == name && frame["payload"]["runId"] == run_id {
                return frame;
            }
        }
        panic!("no {name} for {run_id}")
    }

    pub fn launch(&mut self, id: &str, params: serde_json::Value) -> serde_json::Value {
        let response = self.request(id, "launchRun", params);
        assert_eq!(response["ok"], true, "launch failed: {response}");
        response["payload"].clone()
    }
}

/// Writes `<dir>/<name>.toml`.
pub fn write_workflow(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(format!("{name}.toml")), text).unwrap_or_else(|e| panic!("{e}"));
}
