//! One accepted TCP connection while it speaks HTTP/1.1: read heads and bodies under the header
//! and request deadlines, answer each request in order (keep-alive, pipelining), and hand the
//! socket to `ws_session` on a WebSocket upgrade. Every refusal closes the connection so that no
//! byte after a bad head is ever read as a request.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::worker::{ConnControl, WorkerContext};
use super::Service;
use crate::auth::{AuthError, REFRESH_HINT};
use crate::error::{ErrorCode, RpcError};
use crate::http::request::{
    parse_head, BodyFraming, ChunkedDecoder, HeadLimits, Method, RequestHead,
};
use crate::http::response::{Response, CONTENT_TYPE_HTML, CONTENT_TYPE_PROMETHEUS, CONTINUE};
use crate::http::router::{route, Route};
use crate::rpc::dispatch::{self, CallContext, Transport};
use crate::rpc::frame::{self, encode_response_error, HttpRoute};
use crate::rpc::Value;
use crate::state::{GatewayState, Slot, SlotKind};
use crate::ws::handshake;
use monoio::buf::IoBufMut;
use monoio::io::AsyncReadRent;
use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Bytes asked of the kernel per read.
const READ_CHUNK_BYTES: usize = 16 * 1024;

pub enum ReadOutcome {
    Data,
    Eof,
    TimedOut,
    Stopped,
    Failed,
}

/// Reads more bytes into `buf` (appending), bounded by `deadline` and by a stop request.
pub async fn read_more(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
    control: &ConnControl,
) -> ReadOutcome {
    if control.stop_reason().is_some() {
        return ReadOutcome::Stopped;
    }
    let remaining = deadline.saturating_duration_since(Instant::now());
    if remaining.is_zero() {
        return ReadOutcome::TimedOut;
    }
    buf.reserve(READ_CHUNK_BYTES);
    // monoio reads into a `Vec` from index 0 (its `write_ptr` is the start of the buffer), so
    // read into the spare capacity after the bytes already held, or they would be overwritten.
    let filled = buf.len();
    let owned = std::mem::take(buf).slice_mut(filled..);
    monoio::select! {
        (result, owned) = stream.read(owned) => {
            *buf = owned.into_inner();
            match result {
                Ok(0) => ReadOutcome::Eof,
                Ok(_) => ReadOutcome::Data,
                Err(_) => ReadOutcome::Failed,
            }
        }
        _ = monoio::time::sleep(remaining) => ReadOutcome::TimedOut,
        _ = control.wake.notified() => ReadOutcome::Stopped,
    }
}

/// Writes all of `bytes` within `timeout`; false when the peer did not take them in time.
pub async fn write_all(stream: &mut TcpStream, bytes: Vec<u8>, timeout: Duration) -> bool {
    matches!(
        monoio::time::timeout(timeout, stream.write_all(bytes)).await,
        Ok((Ok(_), _))
    )
}

fn head_limits(state: &GatewayState) -> HeadLimits {
    HeadLimits {
        header_count_max: state.config.header_count_max,
        header_bytes_max: state.config.header_bytes_max,
        request_line_bytes_max: state.config.request_line_bytes_max,
    }
}

/// Serves HTTP requests on `stream` until it closes, fails, times out or is upgraded.
pub async fn serve(
    mut stream: TcpStream,
    peer: std::net::SocketAddr,
    context: Rc<WorkerContext>,
    control: Rc<ConnControl>,
) -> Option<Upgraded> {
    let state = context.state.clone();
    let config = &state.config;
    let limits = head_limits(&state);
    let write_timeout = Duration::from_millis(config.request_timeout_ms);
    let mut buf: Vec<u8> = Vec::new();
    let mut first_request = true;
    loop {
        // Waiting for a head: idle until its first byte, then an absolute header deadline.
        let idle_ms = if first_request {
            config.headers_timeout_ms
        } else {
            config.keep_alive_timeout_ms
        };
        let idle_deadline = Instant::now() + Duration::from_millis(idle_ms);
        let mut started: Option<Instant> = (!buf.is_empty()).then(Instant::now);
        let (head, head_bytes) = loop {
            match parse_head(&buf, &limits) {
                Ok(Some(parsed)) => break parsed,
                Ok(None) => {}
                Err(error) => {
                    state.counters.http_refusals.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, status = error.status(), %error, "request refused");
                    let body = format!("{error}\n");
                    let _ = write_all(
                        &mut stream,
                        Response::text(error.status(), &body).encode(false, false),
                        write_timeout,
                    )
                    .await;
                    return None;
                }
            }
            let deadline = match started {
                Some(at) => at + Duration::from_millis(config.headers_timeout_ms),
                None => idle_deadline,
            };
            match read_more(&mut stream, &mut buf, deadline, &control).await {
                ReadOutcome::Data => {
                    started.get_or_insert_with(Instant::now);
                }
                ReadOutcome::TimedOut if started.is_some() => {
                    tracing::debug!(%peer, "header deadline passed");
                    let _ = write_all(
                        &mut stream,
                        Response::text(408, "request timeout\n").encode(false, false),
                        write_timeout,
                    )
                    .await;
                    return None;
                }
                _ => return None,
            }
        };
        first_request = false;
        let request_started = started.unwrap_or_else(Instant::now);
        let request_deadline = request_started + Duration::from_millis(config.request_timeout_ms);
        state.counters.http_requests.fetch_add(1, Ordering::Relaxed);

        if handshake::is_upgrade_request(&head) {
            let leftover = buf.split_off(head_bytes.min(buf.len()));
            drop(buf);
            return upgrade(stream, peer, head, leftover, &context).await;
        }

        let routed = route(head.method, &head.target);
        // Bodies: refuse an oversized one before reading it, then read it whole.
        let (body, consumed) = match head.framing {
            BodyFraming::None => (Vec::new(), head_bytes),
            BodyFraming::ContentLength(length) => {
                if length > config.body_bytes_max as u64 {
                    let response = oversized_body(&state, &head, &routed);
                    let _ =
                        write_all(&mut stream, response.encode(false, false), write_timeout).await;
                    return None;
                }
                let end = head_bytes + length as usize;
                if head.expect_continue
                    && buf.len() < end
                    && !write_all(&mut stream, CONTINUE.to_vec(), write_timeout).await
                {
                    return None;
                }
                while buf.len() < end {
                    match read_more(&mut stream, &mut buf, request_deadline, &control).await {
                        ReadOutcome::Data => {}
                        ReadOutcome::TimedOut => {
                            let _ = write_all(
                                &mut stream,
                                Response::text(408, "request timeout\n").encode(false, false),
                                write_timeout,
                            )
                            .await;
                            return None;
                        }
                        _ => return None,
                    }
                }
                (
                    buf.get(head_bytes..end)
                        .map(<[u8]>::to_vec)
                        .unwrap_or_default(),
                    end,
                )
            }
            BodyFraming::Chunked => {
                if head.expect_continue
                    && !write_all(&mut stream, CONTINUE.to_vec(), write_timeout).await
                {
                    return None;
                }
                let mut decoder = ChunkedDecoder::new(config.body_bytes_max);
                let mut body = Vec::new();
                let mut position = head_bytes;
                loop {
                    let pending = buf.get(position..).unwrap_or_default();
                    match decoder.decode(pending, &mut body) {
                        Ok((used, true)) => break (body, position + used),
                        Ok((used, false)) => position += used,
                        Err(error) => {
                            let response = if error.status() == 413 {
                                oversized_body(&state, &head, &routed)
                            } else {
                                Response::text(error.status(), &format!("{error}\n"))
                            };
                            let _ = write_all(
                                &mut stream,
                                response.encode(false, false),
                                write_timeout,
                            )
                            .await;
                            return None;
                        }
                    }
                    match read_more(&mut stream, &mut buf, request_deadline, &control).await {
                        ReadOutcome::Data => {}
                        ReadOutcome::TimedOut => {
                            let _ = write_all(
                                &mut stream,
                                Response::text(408, "request timeout\n").encode(false, false),
                                write_timeout,
                            )
                            .await;
                            return None;
                        }
                        _ => return None,
                    }
                }
            }
        };
        let response = handle(&state, &head, routed, body).await;
        let keep_alive =
            head.keep_alive && control.stop_reason().is_none() && !context.is_stopping();
        let head_only = head.method == Method::Head;
        if !write_all(
            &mut stream,
            response.encode(keep_alive, head_only),
            write_timeout,
        )
        .await
            || !keep_alive
        {
            return None;
        }
        buf.drain(..consumed.min(buf.len()));
        if buf.capacity() > 4 * READ_CHUNK_BYTES && buf.len() < READ_CHUNK_BYTES {
            buf.shrink_to(READ_CHUNK_BYTES);
        }
    }
}

fn request_id(head: &RequestHead) -> String {
    head.header_str("x-request-id")
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

pub fn auth_rpc_error(error: &AuthError) -> RpcError {
    let rpc_error = RpcError::new(ErrorCode::Unauthorized, error.message);
    if error.refresh {
        rpc_error.with("refresh", REFRESH_HINT)
    } else {
        rpc_error
    }
}

fn rpc_error_response(id: &str, error: &RpcError) -> Response {
    Response::json(error.code.http_status(), encode_response_error(id, error))
}

/// The REST and webhook envelope: `{"ok":false,"error":{"code","message"}}`.
fn envelope_error(error: &RpcError) -> Response {
    let body = frame::object(vec![
        ("ok", Value::from(false)),
        (
            "error",
            frame::object(vec![
                ("code", Value::from(error.code.as_str())),
                ("message", Value::from(error.message.as_str())),
            ]),
        ),
    ]);
    let mut bytes = Vec::new();
    frame::write_value(&mut bytes, &body);
    Response::json(error.code.http_status(), bytes)
}

fn route_not_found() -> RpcError {
    RpcError::new(ErrorCode::NotFound, "Route not found")
}

/// A body over `maxBodyBytes`: RPC routes authenticate first, as the reference reads the body
/// only after authentication; the connection is closed either way (the body is never read).
fn oversized_body(state: &GatewayState, head: &RequestHead, routed: &Route) -> Response {
    let limit = state.config.body_bytes_max;
    let too_large = RpcError::new(
        ErrorCode::PayloadTooLarge,
        format!("Gateway request payload exceeds {limit} bytes."),
    );
    match routed {
        Route::RpcBody | Route::RpcUrl { .. } => {
            let id = request_id(head);
            match state
                .authenticator
                .authenticate(head, None, crate::clock::now_ms())
            {
                Err(error) => rpc_error_response(&id, &auth_rpc_error(&error)),
                Ok(_) => rpc_error_response(&id, &too_large),
            }
        }
        _ => envelope_error(&too_large),
    }
}

async fn handle(
    state: &GatewayState,
    head: &RequestHead,
    routed: Route,
    body: Vec<u8>,
) -> Response {
    match routed {
        Route::Health => {
            let mut bytes = Vec::new();
            frame::write_value(&mut bytes, &dispatch::health_http_body(state));
            Response::json(200, bytes)
        }
        Route::Metrics => Response::new(
            200,
            CONTENT_TYPE_PROMETHEUS,
            crate::metrics::render(state).into_bytes(),
        ),
        Route::Workflows => {
            let rows = crate::rpc::methods::list_workflows(
                &state.registry,
                &Value::Object(Box::default()),
            );
            let mut bytes = Vec::new();
            frame::write_value(&mut bytes, &frame::object(vec![("workflows", rows)]));
            Response::json(200, bytes)
        }
        Route::Webhook { workflow_key } => {
            // Workflow files do not configure webhooks yet (a later issue), so a registered
            // workflow answers as one without a webhook (PROTOCOL.md §9 step 1).
            let message = if state.registry.workflows.contains_key(&workflow_key) {
                format!("No webhook configured for workflow: {workflow_key}")
            } else {
                format!("Unknown workflow: {workflow_key}")
            };
            envelope_error(&RpcError::new(ErrorCode::NotFound, message))
        }
        Route::ApiStream | Route::Api => {
            match state
                .authenticator
                .authenticate(head, None, crate::clock::now_ms())
            {
                Err(error) => envelope_error(&auth_rpc_error(&error)),
                Ok(_) => envelope_error(&route_not_found()),
            }
        }
        Route::AuthSession => crate::session::hand_off(state, head),
        Route::RpcBody => http_rpc(state, head, HttpRoute::Body, body).await,
        Route::RpcUrl { method: Some(name) } => {
            http_rpc(state, head, HttpRoute::Url(&name), body).await
        }
        Route::RpcUrl { method: None } => http_rpc(state, head, HttpRoute::Url(""), body).await,
        Route::Index => Response::new(200, CONTENT_TYPE_HTML, INDEX_PAGE.as_bytes().to_vec()),
        Route::ElectricWrite | Route::NotFound => Response::json(
            404,
            br#"{"error":{"code":"NOT_FOUND","message":"Route not found"}}"#.to_vec(),
        ),
    }
}

const INDEX_PAGE: &str = "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Smithers Gateway</title></head>\n<body><h1>Smithers Gateway</h1><ul><li><a href=\"/health\">/health</a></li><li><a href=\"/metrics\">/metrics</a></li><li><a href=\"/workflows\">/workflows</a></li></ul></body></html>\n";

/// `POST /rpc` and `POST /v1/rpc/<method>` (PROTOCOL.md §4.2).
async fn http_rpc(
    state: &GatewayState,
    head: &RequestHead,
    route: HttpRoute<'_>,
    body: Vec<u8>,
) -> Response {
    let id = request_id(head);
    let principal = match state
        .authenticator
        .authenticate(head, None, crate::clock::now_ms())
    {
        Ok(principal) => principal,
        Err(error) => {
            state.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                code = "UNAUTHORIZED",
                reason = error.message,
                "HTTP RPC refused"
            );
            return rpc_error_response(&id, &auth_rpc_error(&error));
        }
    };
    let request = match frame::parse_http_request(body, route, &id) {
        Ok(request) => request,
        Err(failure) => return rpc_error_response(&failure.id, &failure.error),
    };
    let context = CallContext {
        state,
        principal: &principal,
        transport: Transport::Http,
        subscriber: None,
        run_filter: None,
    };
    match dispatch::dispatch(&context, &request.method, &request.params).await {
        Ok(payload) => Response::json(200, payload.encode_response(&request.id)),
        Err(error) => {
            state.counters.rpc_errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(method = %request.method, code = error.code.as_str(), "RPC failed");
            rpc_error_response(&request.id, &error)
        }
    }
}

/// A socket that completed the WebSocket handshake, with what its session needs.
pub struct Upgraded {
    pub stream: TcpStream,
    /// The upgrade request's headers that authentication may read.
    pub headers: Vec<(String, String)>,
    /// Bytes read after the upgrade head.
    pub leftover: Vec<u8>,
    pub slot: Option<Slot>,
}

/// The WebSocket upgrade (PROTOCOL.md §5.1): pool limits, then the gates, then the handshake.
/// Returns the upgraded socket; the HTTP buffers are gone by the time its session runs.
async fn upgrade(
    mut stream: TcpStream,
    peer: std::net::SocketAddr,
    head: RequestHead,
    leftover: Vec<u8>,
    context: &WorkerContext,
) -> Option<Upgraded> {
    let state = context.state.clone();
    let config = &state.config;
    let write_timeout = Duration::from_millis(config.request_timeout_ms);
    let refuse = |status: u16, body: &str| {
        state
            .counters
            .ws_upgrade_refusals
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%peer, status, "upgrade refused");
        handshake::refusal(status, body)
    };
    if head.path() == "/v1/pty/hijack" {
        let bytes = refuse(501, "Terminal hand-off is not supported by this gateway\n");
        let _ = write_all(&mut stream, bytes, write_timeout).await;
        return None;
    }
    let counters = &state.counters;
    let slot = if context.service == Service::Echo {
        None
    } else {
        let slot = if counters.authenticated_connections.load(Ordering::Acquire)
            >= config.connections_max
        {
            None
        } else {
            Slot::try_acquire(&state, SlotKind::PreAuth, config.pre_auth_connections_max)
        };
        let Some(slot) = slot else {
            let bytes = refuse(503, "Gateway connection limit reached\n");
            let _ = write_all(&mut stream, bytes, write_timeout).await;
            return None;
        };
        if state.authenticator.check_gates(&head, None).is_err() {
            let bytes = refuse(403, "Origin or host is not allowed\n");
            let _ = write_all(&mut stream, bytes, write_timeout).await;
            return None;
        }
        Some(slot)
    };
    let accept = match handshake::accept_key(&head) {
        Ok(accept) => accept,
        Err(error) => {
            let bytes = refuse(error.status(), &format!("{error}\n"));
            let _ = write_all(&mut stream, bytes, write_timeout).await;
            return None;
        }
    };
    if !write_all(
        &mut stream,
        handshake::switching_protocols(&accept),
        write_timeout,
    )
    .await
    {
        return None;
    }
    counters.ws_upgrades.fetch_add(1, Ordering::Relaxed);
    let mut kept = Vec::new();
    let extra = state.authenticator.extra_header_names();
    for header in &head.headers {
        let wanted = crate::auth::AUTH_HEADER_NAMES_FIXED.contains(&header.name.as_str())
            || extra.contains(&header.name);
        if wanted
            && !kept
                .iter()
                .any(|(name, _): &(String, String)| name == &header.name)
        {
            if let Ok(value) = std::str::from_utf8(&header.value) {
                kept.push((header.name.clone(), value.to_string()));
            }
        }
    }
    Some(Upgraded {
        stream,
        headers: kept,
        leftover,
        slot,
    })
}
