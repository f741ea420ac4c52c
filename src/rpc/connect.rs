//! The `connect` handshake (PROTOCOL.md §6.2–6.4): parameter validation in the reference's order,
//! protocol negotiation, and the `hello` payload. Authentication and pool accounting are done by
//! the session with the results of these pure functions.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::dispatch::{hello_features, identity};
use super::frame::object;
use super::Value;
use crate::auth::Principal;
use crate::error::{ErrorCode, RpcError};
use crate::state::GatewayState;
use simd_json::prelude::*;
use std::collections::HashSet;

/// What a valid `connect` asked for, before authentication.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnectRequest {
    /// `auth.token` when it is a string.
    pub token: Option<String>,
    /// `subscribe`: `None` when absent, else its string entries.
    pub subscribe: Option<HashSet<String>>,
}

/// JavaScript truthiness, which the reference applies to `client`.
fn is_truthy(value: &Value) -> bool {
    match value {
        Value::Static(simd_json::StaticNode::Null) => false,
        Value::Static(simd_json::StaticNode::Bool(flag)) => *flag,
        Value::Static(simd_json::StaticNode::I64(n)) => *n != 0,
        Value::Static(simd_json::StaticNode::U64(n)) => *n != 0,
        Value::Static(simd_json::StaticNode::F64(n)) => *n != 0.0 && !n.is_nan(),
        Value::String(text) => !text.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

fn check_protocol_number(name: &str, value: f64) -> Result<u64, RpcError> {
    if !value.is_finite() || value <= 0.0 {
        return Err(RpcError::new(
            ErrorCode::InvalidInputLegacy,
            format!("{name} must be a finite number greater than 0."),
        ));
    }
    if value.fract() != 0.0 || value > 9_007_199_254_740_991.0 {
        return Err(RpcError::new(
            ErrorCode::InvalidInputLegacy,
            format!("{name} must be an integer greater than 0."),
        ));
    }
    Ok(value as u64)
}

/// Steps 1–4 of PROTOCOL.md §6.2 (shape, protocol numbers, negotiation).
pub fn validate(params: &Value, server_protocol: u32) -> Result<ConnectRequest, RpcError> {
    let Value::Object(fields) = params else {
        return Err(RpcError::new(
            ErrorCode::InvalidRequestLegacy,
            "Connect params must be an object",
        ));
    };
    let min = fields.get("minProtocol").and_then(|v| v.cast_f64());
    let max = fields.get("maxProtocol").and_then(|v| v.cast_f64());
    let client_ok = fields.get("client").is_some_and(is_truthy);
    let (Some(min), Some(max), true) = (min, max, client_ok) else {
        return Err(RpcError::new(
            ErrorCode::InvalidRequestLegacy,
            "Connect request is missing protocol negotiation fields",
        ));
    };
    let min = check_protocol_number("minProtocol", min)?;
    let max = check_protocol_number("maxProtocol", max)?;
    let protocol = u64::from(server_protocol);
    if min > protocol || max < protocol {
        return Err(RpcError::new(
            ErrorCode::ProtocolUnsupported,
            format!("Gateway protocol {server_protocol} is not supported by the client"),
        ));
    }
    let token = fields
        .get("auth")
        .and_then(|auth| auth.get("token"))
        .and_then(|t| t.as_str())
        .map(str::to_string);
    let subscribe = match fields.get("subscribe") {
        Some(Value::Array(entries)) => Some(
            entries
                .iter()
                .filter_map(|entry| entry.as_str().map(str::to_string))
                .collect(),
        ),
        _ => None,
    };
    Ok(ConnectRequest { token, subscribe })
}

/// The `hello` payload (PROTOCOL.md §6.3) with the snapshot the caller read from storage.
pub fn hello(
    state: &GatewayState,
    principal: &Principal,
    session_token: &str,
    runs: Vec<Value>,
    approvals: Vec<Value>,
) -> Value {
    let optional = |value: &Option<String>| value.as_deref().map_or(Value::null(), Value::from);
    object(vec![
        ("protocol", Value::from(u64::from(state.config.protocol))),
        ("features", hello_features(state)),
        ("identity", identity(state)),
        (
            "policy",
            object(vec![(
                "heartbeatMs",
                Value::from(state.config.heartbeat_ms),
            )]),
        ),
        (
            "auth",
            object(vec![
                ("sessionToken", Value::from(session_token)),
                ("role", Value::from(principal.role.as_str())),
                (
                    "scopes",
                    Value::Array(Box::new(
                        principal
                            .scopes
                            .iter()
                            .map(|s| Value::from(s.as_str()))
                            .collect(),
                    )),
                ),
                ("userId", optional(&principal.user_id)),
                ("tokenId", optional(&principal.token_id)),
            ]),
        ),
        (
            "snapshot",
            object(vec![
                ("runs", Value::Array(Box::new(runs))),
                ("approvals", Value::Array(Box::new(approvals))),
                ("stateVersion", Value::from(state.state_version())),
            ]),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(text: &str) -> Value {
        let mut bytes = text.as_bytes().to_vec();
        simd_json::to_owned_value(&mut bytes).unwrap_or_else(|e| panic!("{e}"))
    }

    fn error_of(text: &str) -> (ErrorCode, String) {
        match validate(&params(text), 1) {
            Ok(request) => panic!("expected an error, got {request:?}"),
            Err(error) => (error.code, error.message),
        }
    }

    /// The validation order of PROTOCOL.md §6.2, one row per step.
    #[test]
    fn validates_in_the_reference_order() {
        let rows: &[(&str, ErrorCode, &str)] = &[
            (
                "[]",
                ErrorCode::InvalidRequestLegacy,
                "Connect params must be an object",
            ),
            (
                "5",
                ErrorCode::InvalidRequestLegacy,
                "Connect params must be an object",
            ),
            (
                r#"{"maxProtocol":1,"client":{}}"#,
                ErrorCode::InvalidRequestLegacy,
                "Connect request is missing protocol negotiation fields",
            ),
            (
                r#"{"minProtocol":"1","maxProtocol":1,"client":{}}"#,
                ErrorCode::InvalidRequestLegacy,
                "Connect request is missing protocol negotiation fields",
            ),
            (
                r#"{"minProtocol":1,"maxProtocol":1}"#,
                ErrorCode::InvalidRequestLegacy,
                "Connect request is missing protocol negotiation fields",
            ),
            (
                r#"{"minProtocol":1,"maxProtocol":1,"client":""}"#,
                ErrorCode::InvalidRequestLegacy,
                "Connect request is missing protocol negotiation fields",
            ),
            (
                r#"{"minProtocol":1,"maxProtocol":1,"client":0}"#,
                ErrorCode::InvalidRequestLegacy,
                "Connect request is missing protocol negotiation fields",
            ),
            (
                r#"{"minProtocol":0,"maxProtocol":1,"client":{}}"#,
                ErrorCode::InvalidInputLegacy,
                "minProtocol must be a finite number greater than 0.",
            ),
            (
                r#"{"minProtocol":1,"maxProtocol":-2,"client":{}}"#,
                ErrorCode::InvalidInputLegacy,
                "maxProtocol must be a finite number greater than 0.",
            ),
            (
                r#"{"minProtocol":1.5,"maxProtocol":2,"client":{}}"#,
                ErrorCode::InvalidInputLegacy,
                "minProtocol must be an integer greater than 0.",
            ),
            (
                r#"{"minProtocol":2,"maxProtocol":3,"client":{}}"#,
                ErrorCode::ProtocolUnsupported,
                "Gateway protocol 1 is not supported by the client",
            ),
        ];
        for (text, code, message) in rows {
            assert_eq!(error_of(text), (*code, message.to_string()), "{text}");
        }
    }

    #[test]
    fn reads_token_and_subscribe() {
        let request = validate(
            &params(r#"{"minProtocol":1,"maxProtocol":3,"client":{"id":"x"},"auth":{"token":"t"},"subscribe":["r1",5,"browser:b"]}"#),
            1,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(request.token.as_deref(), Some("t"));
        let subscribe = request.subscribe.unwrap_or_default();
        assert_eq!(subscribe.len(), 2);
        assert!(subscribe.contains("r1") && subscribe.contains("browser:b"));
        let bare = validate(
            &params(r#"{"minProtocol":1,"maxProtocol":1,"client":true,"auth":{"token":7}}"#),
            1,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            bare,
            ConnectRequest {
                token: None,
                subscribe: None
            }
        );
        let one_float = validate(
            &params(r#"{"minProtocol":1.0,"maxProtocol":1,"client":1}"#),
            1,
        );
        assert!(one_float.is_ok());
    }
}
