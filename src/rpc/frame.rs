//! Request frames in, response and event frames out (PROTOCOL.md §4, §5.2–5.3, §11).
//!
//! Parsing applies the protocol's checks in the reference's order and never panics on peer bytes.
//! Encoding writes the envelope by hand around values serialized by simd-json, so an event body
//! can be serialized once and shared (the per-connection `seq` and `stateVersion` live in a small
//! separate head, see `encode_event_head`).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::{Object, Value};
use crate::config::{
    FRAME_ARRAY_ITEMS_MAX, FRAME_DEPTH_MAX, FRAME_ID_CHARS_MAX, FRAME_STRING_UTF16_MAX,
    METHOD_NAME_CHARS_MAX, STARTED_BY_PROMPT_CHARS_MAX,
};
use crate::error::{ErrorCode, RpcError};
use simd_json::prelude::*;

/// A request that passed every frame check.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestFrame {
    pub id: String,
    pub method: String,
    /// As sent; handlers treat non-objects as `{}`.
    pub params: Value,
}

/// The id used when a WebSocket frame fails parsing (PROTOCOL.md §5.3).
pub const INVALID_FRAME_ID: &str = "invalid";

fn invalid_input(message: impl Into<String>) -> RpcError {
    RpcError::new(ErrorCode::InvalidInputLegacy, message)
}

/// Parses JSON text that the caller owns (simd-json parses in place). Depth past simd-json's own
/// limit (1,024) is reported as a depth violation, which it is.
fn parse_json(bytes: &mut [u8]) -> Result<Value, RpcError> {
    match simd_json::to_owned_value(bytes) {
        Ok(value) => Ok(value),
        Err(error) if matches!(error.error(), simd_json::ErrorType::DepthLimitExceeded) => {
            Err(depth_error())
        }
        Err(_) => Err(invalid_input("Gateway RPC payload must be valid JSON.")),
    }
}

fn depth_error() -> RpcError {
    invalid_input(format!(
        "gateway frame exceeds the maximum JSON depth of {FRAME_DEPTH_MAX}."
    ))
}

/// Clips `options.startedBy.prompt` of `container` to 8,192 code points (PROTOCOL.md §4.2 step 4):
/// an over-long prompt is truncated, not refused.
pub fn clip_started_by_prompt(container: &mut Value) {
    let prompt = container
        .get_mut("options")
        .and_then(|options| options.get_mut("startedBy"))
        .and_then(|started_by| started_by.get_mut("prompt"));
    if let Some(Value::String(prompt)) = prompt {
        if let Some((byte_index, _)) = prompt.char_indices().nth(STARTED_BY_PROMPT_CHARS_MAX) {
            prompt.truncate(byte_index);
        }
    }
}

fn string_within_bound(text: &str) -> bool {
    // UTF-16 units never exceed UTF-8 bytes, so short strings need no count.
    text.len() <= FRAME_STRING_UTF16_MAX || text.encode_utf16().count() <= FRAME_STRING_UTF16_MAX
}

/// The structural bounds of PROTOCOL.md §5.3 step 4: the top value is depth 1 and every value is
/// one level deeper than its container, scalars included.
pub fn check_bounds(value: &Value) -> Result<(), RpcError> {
    check_bounds_at(value, 1)
}

fn check_bounds_at(value: &Value, depth: usize) -> Result<(), RpcError> {
    if depth > FRAME_DEPTH_MAX {
        return Err(depth_error());
    }
    match value {
        Value::Static(simd_json::StaticNode::F64(number)) if !number.is_finite() => Err(
            invalid_input("gateway frame contains a number that is not finite."),
        ),
        Value::Static(_) => Ok(()),
        Value::String(text) => {
            if string_within_bound(text) {
                Ok(())
            } else {
                Err(invalid_input(format!(
                    "gateway frame string exceeds the maximum length of {FRAME_STRING_UTF16_MAX}."
                )))
            }
        }
        Value::Array(items) => {
            if items.len() > FRAME_ARRAY_ITEMS_MAX {
                return Err(invalid_input(format!(
                    "gateway frame array exceeds the maximum length of {FRAME_ARRAY_ITEMS_MAX}."
                )));
            }
            items
                .iter()
                .try_for_each(|item| check_bounds_at(item, depth + 1))
        }
        Value::Object(object) => object.iter().try_for_each(|(key, item)| {
            if !string_within_bound(key) {
                return Err(invalid_input(format!(
                    "gateway frame string exceeds the maximum length of {FRAME_STRING_UTF16_MAX}."
                )));
            }
            check_bounds_at(item, depth + 1)
        }),
    }
}

/// Whether `name` is a valid method name: ≤ 64 chars matching
/// `^[a-z][a-zA-Z0-9]*(\.[a-z][a-zA-Z0-9]*)*$`.
pub fn is_valid_method_name(name: &str) -> bool {
    if name.is_empty() || name.len() > METHOD_NAME_CHARS_MAX {
        return false;
    }
    name.split('.').all(|segment| {
        let mut bytes = segment.bytes();
        matches!(bytes.next(), Some(b'a'..=b'z')) && bytes.all(|byte| byte.is_ascii_alphanumeric())
    })
}

fn check_method(method: Option<&Value>) -> Result<String, RpcError> {
    match method {
        Some(Value::String(name)) if is_valid_method_name(name) => Ok(name.clone()),
        Some(Value::String(_)) => Err(invalid_input("Gateway method name is invalid.")),
        _ => Err(invalid_input("Gateway method name must be a string.")),
    }
}

/// Parses one WebSocket message (PROTOCOL.md §5.3). On error the caller answers with id
/// `"invalid"`. `message_bytes_max` is `maxPayload`.
pub fn parse_ws_request(
    mut bytes: Vec<u8>,
    message_bytes_max: usize,
) -> Result<RequestFrame, RpcError> {
    if bytes.len() > message_bytes_max {
        return Err(invalid_input(format!(
            "Gateway RPC payload exceeds {message_bytes_max} bytes."
        )));
    }
    let mut value = parse_json(&mut bytes)?;
    if let Some(params) = value.get_mut("params") {
        clip_started_by_prompt(params);
    }
    check_bounds(&value)?;
    let Value::Object(mut object) = value else {
        return Err(invalid_input("Gateway frame must be a request object."));
    };
    if object.get("type").and_then(|kind| kind.as_str()) != Some("req") {
        return Err(invalid_input("Gateway frame must be a request object."));
    }
    let id = match object.get("id") {
        Some(Value::String(id)) if id.chars().count() <= FRAME_ID_CHARS_MAX => id.clone(),
        Some(Value::String(_)) => {
            return Err(invalid_input(format!(
                "id exceeds the maximum length of {FRAME_ID_CHARS_MAX} characters."
            )))
        }
        _ => return Err(invalid_input("Gateway frame id must be a string.")),
    };
    let method = check_method(object.get("method"))?;
    let params = object
        .remove("params")
        .unwrap_or_else(|| Value::Object(Box::default()));
    Ok(RequestFrame { id, method, params })
}

/// Where an HTTP RPC takes its method name from (PROTOCOL.md §4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpRoute<'a> {
    /// `POST /rpc`: method from the body.
    Body,
    /// `POST /v1/rpc/<method>`: method from the (percent-decoded) URL segment.
    Url(&'a str),
}

/// An HTTP RPC that failed before dispatch, with the id its answer must carry.
#[derive(Debug)]
pub struct HttpFrameError {
    pub error: RpcError,
    pub id: String,
}

/// Parses an HTTP RPC body (PROTOCOL.md §4.2 steps 2–6). `request_id` is `X-Request-Id` or a
/// fresh UUID: failures here are answered with it, not with the body's id.
pub fn parse_http_request(
    mut body: Vec<u8>,
    route: HttpRoute<'_>,
    request_id: &str,
) -> Result<RequestFrame, HttpFrameError> {
    let fail = |error: RpcError| HttpFrameError {
        error,
        id: request_id.to_string(),
    };
    let mut value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Box::default())
    } else {
        parse_json(&mut body).map_err(fail)?
    };
    let Value::Object(_) = value else {
        return Err(fail(RpcError::new(
            ErrorCode::InvalidRequestLegacy,
            "RPC body must be a JSON object",
        )));
    };
    if let Some(params) = value.get_mut("params") {
        clip_started_by_prompt(params);
    }
    clip_started_by_prompt(&mut value);
    check_bounds(&value).map_err(fail)?;
    let Value::Object(mut object) = value else {
        return Err(fail(RpcError::new(
            ErrorCode::InvalidRequestLegacy,
            "RPC body must be a JSON object",
        )));
    };
    let method = match route {
        HttpRoute::Url(name) => {
            if is_valid_method_name(name) {
                name.to_string()
            } else {
                return Err(fail(invalid_input("Gateway method name is invalid.")));
            }
        }
        HttpRoute::Body => check_method(object.get("method")).map_err(fail)?,
    };
    let id = match object.get("id") {
        Some(Value::String(id)) if id.chars().count() > FRAME_ID_CHARS_MAX => {
            return Err(fail(invalid_input(format!(
                "id exceeds the maximum length of {FRAME_ID_CHARS_MAX} characters."
            ))))
        }
        Some(Value::String(id)) => id.clone(),
        _ => request_id.to_string(),
    };
    let params = match route {
        HttpRoute::Url(_) if !object.contains_key("method") => Value::Object(object),
        _ => object
            .remove("params")
            .unwrap_or_else(|| Value::Object(Box::default())),
    };
    Ok(RequestFrame { id, method, params })
}

/// Writes `value` as JSON into `out`.
pub fn write_value(out: &mut Vec<u8>, value: &Value) {
    // Writing into a Vec cannot fail.
    let _ = value.write(out);
}

/// Writes `text` as a JSON string literal into `out`.
pub fn write_string(out: &mut Vec<u8>, text: &str) {
    let _ = Value::String(text.to_string()).write(out);
}

/// A success response frame. `payload` is always present (null when there is nothing).
pub fn encode_response_ok(id: &str, payload: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(br#"{"type":"res","id":"#);
    write_string(&mut out, id);
    out.extend_from_slice(br#","ok":true,"apiVersion":"v1","payload":"#);
    write_value(&mut out, payload);
    out.push(b'}');
    out
}

/// A success response frame around a payload already serialized as JSON.
pub fn encode_response_raw(id: &str, payload_json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + payload_json.len());
    out.extend_from_slice(br#"{"type":"res","id":"#);
    write_string(&mut out, id);
    out.extend_from_slice(br#","ok":true,"apiVersion":"v1","payload":"#);
    out.extend_from_slice(payload_json);
    out.push(b'}');
    out
}

/// An error response frame (PROTOCOL.md §11).
pub fn encode_response_error(id: &str, error: &RpcError) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(br#"{"type":"res","id":"#);
    write_string(&mut out, id);
    out.extend_from_slice(br#","ok":false,"apiVersion":"v1","error":"#);
    write_value(&mut out, &error.to_value());
    out.push(b'}');
    out
}

/// The shared part of an event frame: `"event":…,"payload":…,"apiVersion":"v1"}`. It is the same
/// for every recipient, so it is serialized once per event.
pub fn encode_event_body(event: &str, payload: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(br#""event":"#);
    write_string(&mut out, event);
    out.extend_from_slice(br#","payload":"#);
    write_value(&mut out, payload);
    out.extend_from_slice(br#","apiVersion":"v1"}"#);
    out
}

/// Longest event head: `{"type":"event","seq":` (21) + 20 digits + `,"stateVersion":` (16) + 20
/// digits + `,`.
pub const EVENT_HEAD_MAX: usize = 80;

/// The per-connection part of an event frame: `{"type":"event","seq":N,"stateVersion":M,`,
/// written into a stack buffer (it is built once per recipient, so it allocates nothing).
/// Returns its length; together with an event body it forms one JSON object.
pub fn event_head(seq: u64, state_version: u64, out: &mut [u8; EVENT_HEAD_MAX]) -> usize {
    let mut at = 0;
    let mut put = |bytes: &[u8]| {
        if let Some(slot) = out.get_mut(at..at + bytes.len()) {
            slot.copy_from_slice(bytes);
        }
        at += bytes.len();
    };
    let mut digits = [0u8; 20];
    put(br#"{"type":"event","seq":"#);
    put(decimal(seq, &mut digits));
    put(br#","stateVersion":"#);
    put(decimal(state_version, &mut digits));
    put(b",");
    debug_assert!(at <= EVENT_HEAD_MAX);
    at
}

/// The same head appended to `out`.
pub fn encode_event_head(out: &mut Vec<u8>, seq: u64, state_version: u64) {
    let mut head = [0u8; EVENT_HEAD_MAX];
    let len = event_head(seq, state_version, &mut head);
    out.extend_from_slice(head.get(..len).unwrap_or_default());
}

/// `value` in decimal, in the tail of `digits`.
fn decimal(mut value: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut start = digits.len();
    loop {
        start -= 1;
        if let Some(digit) = digits.get_mut(start) {
            *digit = b'0' + (value % 10) as u8;
        }
        value /= 10;
        if value == 0 {
            return digits.get(start..).unwrap_or_default();
        }
    }
}

/// Builds an object value from key/value pairs, in order.
pub fn object(pairs: Vec<(&str, Value)>) -> Value {
    let mut object = Object::with_capacity(pairs.len());
    for (key, value) in pairs {
        object.insert(key.into(), value);
    }
    Value::Object(Box::new(object))
}

/// Fuzz properties shared by `tests/fuzz/fuzz_targets/rpc_frame.rs` and the seed replay: parsing
/// never panics, and an accepted frame obeys every rule it was checked against (valid method name,
/// id within bounds, params within the structural bounds). Panics on a violation.
#[doc(hidden)]
pub fn check_parse_properties(data: &[u8]) {
    let message_bytes_max = 64 * 1024;
    let check_accepted = |frame: &RequestFrame| {
        assert!(
            is_valid_method_name(&frame.method),
            "accepted method {:?}",
            frame.method
        );
        assert!(
            frame.id.chars().count() <= FRAME_ID_CHARS_MAX,
            "accepted a long id"
        );
        assert!(
            check_bounds(&frame.params).is_ok(),
            "accepted params outside the bounds"
        );
    };
    match parse_ws_request(data.to_vec(), message_bytes_max) {
        Ok(frame) => check_accepted(&frame),
        Err(error) => {
            assert_eq!(
                error.code,
                ErrorCode::InvalidInputLegacy,
                "WebSocket frame errors are INVALID_INPUT"
            );
            if data.len() > message_bytes_max {
                assert!(error.message.contains("exceeds"), "size is checked first");
            }
        }
    }
    for route in [HttpRoute::Body, HttpRoute::Url("health")] {
        match parse_http_request(data.to_vec(), route, "request-id") {
            Ok(frame) => check_accepted(&frame),
            Err(failure) => assert_eq!(
                failure.id, "request-id",
                "failures answer with the request id"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws(text: &str) -> Result<RequestFrame, RpcError> {
        parse_ws_request(text.as_bytes().to_vec(), 1 << 20)
    }

    fn message_of(result: Result<RequestFrame, RpcError>) -> String {
        match result {
            Ok(frame) => panic!("expected an error, got {frame:?}"),
            Err(error) => {
                assert_eq!(error.code, ErrorCode::InvalidInputLegacy);
                error.message
            }
        }
    }

    #[test]
    fn accepts_a_request() {
        let frame = ws(r#"{"type":"req","id":"a-1","method":"getRun","params":{"runId":"r"}}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(frame.id, "a-1");
        assert_eq!(frame.method, "getRun");
        assert_eq!(
            frame.params.get("runId").and_then(|v| v.as_str()),
            Some("r")
        );
        let no_params =
            ws(r#"{"type":"req","id":"b","method":"health"}"#).unwrap_or_else(|e| panic!("{e}"));
        assert!(no_params.params.is_object());
    }

    /// Each check of PROTOCOL.md §5.3, in order, with its message.
    #[test]
    fn refuses_invalid_frames_in_order() {
        assert_eq!(
            message_of(parse_ws_request(vec![b' '; 11], 10)),
            "Gateway RPC payload exceeds 10 bytes."
        );
        assert_eq!(
            message_of(ws("{")),
            "Gateway RPC payload must be valid JSON."
        );
        assert_eq!(
            message_of(ws("[1,2]")),
            "Gateway frame must be a request object."
        );
        assert_eq!(
            message_of(ws(r#"{"type":"res","id":"x","method":"a"}"#)),
            "Gateway frame must be a request object."
        );
        assert_eq!(
            message_of(ws(r#"{"type":"req","id":5,"method":"a"}"#)),
            "Gateway frame id must be a string."
        );
        let long_id = "x".repeat(129);
        assert_eq!(
            message_of(ws(&format!(
                r#"{{"type":"req","id":"{long_id}","method":"a"}}"#
            ))),
            "id exceeds the maximum length of 128 characters."
        );
        let id_128 = "é".repeat(128);
        assert!(ws(&format!(r#"{{"type":"req","id":"{id_128}","method":"a"}}"#)).is_ok());
        assert_eq!(
            message_of(ws(r#"{"type":"req","id":"x"}"#)),
            "Gateway method name must be a string."
        );
        assert_eq!(
            message_of(ws(r#"{"type":"req","id":"x","method":"Bad"}"#)),
            "Gateway method name is invalid."
        );
        assert_eq!(
            message_of(ws(r#"{"type":"req","id":"x","method":"a..b"}"#)),
            "Gateway method name is invalid."
        );
        let long_method = format!("a{}", "b".repeat(64));
        assert_eq!(
            message_of(ws(&format!(
                r#"{{"type":"req","id":"x","method":"{long_method}"}}"#
            ))),
            "Gateway method name is invalid."
        );
    }

    #[test]
    fn method_names_follow_the_pattern() {
        for good in [
            "health",
            "runs.create",
            "a",
            "getRun2",
            "cron.list",
            "a.b.c",
        ] {
            assert!(is_valid_method_name(good), "{good}");
        }
        for bad in [
            "",
            "Health",
            "runs.",
            ".runs",
            "runs..create",
            "run-s",
            "1run",
            "runs.Create",
            "ü",
        ] {
            assert!(!is_valid_method_name(bad), "{bad}");
        }
    }

    #[test]
    fn bounds_count_depth_from_one_with_scalars() {
        // Top object is depth 1; `params` is depth 2, so k nested arrays put the scalar at depth k + 2.
        let nest = |arrays: usize| {
            format!(
                r#"{{"type":"req","id":"x","method":"a","params":{}1{}}}"#,
                "[".repeat(arrays),
                "]".repeat(arrays)
            )
        };
        assert!(ws(&nest(30)).is_ok(), "scalar at depth 32");
        assert!(message_of(ws(&nest(31))).contains("maximum JSON depth of 32"));
        assert!(message_of(ws(&nest(2000))).contains("maximum JSON depth of 32"));
        let big_array = format!(
            r#"{{"type":"req","id":"x","method":"a","params":[{}0]}}"#,
            "0,".repeat(256)
        );
        assert!(message_of(ws(&big_array)).contains("array exceeds"));
        let long_string = format!(
            r#"{{"type":"req","id":"x","method":"a","params":"{}"}}"#,
            "a".repeat(16_385)
        );
        assert!(message_of(ws(&long_string)).contains("string exceeds"));
        // 16,384 UTF-16 units is the limit, counted in UTF-16 (an astral char is two units).
        let astral = format!(
            r#"{{"type":"req","id":"x","method":"a","params":"{}"}}"#,
            "😀".repeat(8_192)
        );
        assert!(ws(&astral).is_ok());
        let astral_over = format!(
            r#"{{"type":"req","id":"x","method":"a","params":"{}a"}}"#,
            "😀".repeat(8_192)
        );
        assert!(message_of(ws(&astral_over)).contains("string exceeds"));
    }

    #[test]
    fn prompt_is_clipped_before_bounds() {
        let prompt = "p".repeat(20_000);
        let text = format!(
            r#"{{"type":"req","id":"x","method":"launchRun","params":{{"options":{{"startedBy":{{"prompt":"{prompt}"}}}}}}}}"#
        );
        let frame = ws(&text).unwrap_or_else(|e| panic!("{e}"));
        let clipped = frame
            .params
            .get("options")
            .and_then(|o| o.get("startedBy"))
            .and_then(|s| s.get("prompt"))
            .and_then(|p| p.as_str())
            .map(str::len);
        assert_eq!(clipped, Some(8_192));
    }

    #[test]
    fn http_bodies_follow_the_route() {
        let url = parse_http_request(
            br#"{"runId":"r"}"#.to_vec(),
            HttpRoute::Url("getRun"),
            "req-1",
        )
        .unwrap_or_else(|e| panic!("{:?}", e.error));
        assert_eq!((url.id.as_str(), url.method.as_str()), ("req-1", "getRun"));
        assert_eq!(url.params.get("runId").and_then(|v| v.as_str()), Some("r"));
        let enveloped = parse_http_request(
            br#"{"id":"b1","method":"ignored","params":{"runId":"r"}}"#.to_vec(),
            HttpRoute::Url("getRun"),
            "req-2",
        )
        .unwrap_or_else(|e| panic!("{:?}", e.error));
        assert_eq!(
            (enveloped.id.as_str(), enveloped.method.as_str()),
            ("b1", "getRun")
        );
        assert_eq!(
            enveloped.params.get("runId").and_then(|v| v.as_str()),
            Some("r")
        );
        let body = parse_http_request(br#"{"method":"health"}"#.to_vec(), HttpRoute::Body, "req-3")
            .unwrap_or_else(|e| panic!("{:?}", e.error));
        assert_eq!(
            (body.id.as_str(), body.method.as_str()),
            ("req-3", "health")
        );
        let empty = parse_http_request(Vec::new(), HttpRoute::Url("health"), "req-4")
            .unwrap_or_else(|e| panic!("{:?}", e.error));
        assert!(empty.params.is_object());
        let not_object = parse_http_request(b"[1]".to_vec(), HttpRoute::Body, "req-5")
            .err()
            .map(|e| (e.error.code, e.id));
        assert_eq!(
            not_object,
            Some((ErrorCode::InvalidRequestLegacy, "req-5".to_string()))
        );
        let bad_json = parse_http_request(b"{".to_vec(), HttpRoute::Body, "req-6")
            .err()
            .map(|e| e.error.message);
        assert_eq!(
            bad_json.as_deref(),
            Some("Gateway RPC payload must be valid JSON.")
        );
    }

    /// Replays the committed fuzz seeds through the fuzz properties.
    #[test]
    fn fuzz_seeds_rpc() {
        let directory = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz/seeds/rpc_frame");
        let mut count = 0;
        for entry in std::fs::read_dir(directory).unwrap_or_else(|e| panic!("{directory}: {e}")) {
            let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            check_parse_properties(&data);
            count += 1;
        }
        assert!(count >= 10, "only {count} seeds");
    }

    #[test]
    fn encodes_frames() {
        let ok = encode_response_ok("a\"1", &Value::Static(simd_json::StaticNode::Null));
        assert_eq!(
            String::from_utf8_lossy(&ok),
            r#"{"type":"res","id":"a\"1","ok":true,"apiVersion":"v1","payload":null}"#
        );
        let mut event = Vec::new();
        encode_event_head(&mut event, 7, 42);
        let mut head = [0u8; EVENT_HEAD_MAX];
        let len = event_head(u64::MAX, 0, &mut head);
        assert_eq!(
            head.get(..len).unwrap_or_default(),
            br#"{"type":"event","seq":18446744073709551615,"stateVersion":0,"#
        );
        event.extend_from_slice(&encode_event_body(
            "tick",
            &object(vec![("ts", Value::from(5u64))]),
        ));
        let parsed: serde_json::Value = serde_json::from_slice(&event).unwrap_or_default();
        assert_eq!(
            parsed,
            serde_json::json!({"type":"event","event":"tick","payload":{"ts":5},"seq":7,"stateVersion":42,"apiVersion":"v1"})
        );
    }
}
