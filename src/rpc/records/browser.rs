//! Browser sessions (METHODS.md §4.9). The reference drives a headless Chromium; our runtime has
//! none, so after the strict parameter validation the spec requires (an object with only the
//! method's keys and its required ones, else `InvalidRequest`) `listBrowserSessions` answers `[]`
//! and every other method `Internal` "browser sessions are not available".
//!
//! These are the only methods that see their params as sent: METHODS.md §0 rule 4 (non-objects
//! are `{}`) excepts them, so dispatch hands them over before that rule applies.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use crate::error::{ErrorCode, RpcError};
use crate::rpc::Value;
use simd_json::prelude::*;

/// One browser method's parameter rule: the keys it accepts and those it requires.
struct Shape {
    method: &'static str,
    allowed: &'static [&'static str],
    required: &'static [&'static str],
}

const SHAPES: &[Shape] = &[
    Shape {
        method: "createBrowserSession",
        allowed: &["source", "viewport"],
        required: &["source"],
    },
    Shape {
        method: "browserAct",
        allowed: &["sessionId", "actionId", "expectedRevision", "action"],
        required: &["sessionId", "actionId", "action"],
    },
    Shape {
        method: "browserContext",
        allowed: &["sessionId", "sinceRevision", "include"],
        required: &["sessionId"],
    },
    Shape {
        method: "browserPick",
        allowed: &["sessionId", "point"],
        required: &["sessionId", "point"],
    },
    Shape {
        method: "closeBrowserSession",
        allowed: &["sessionId"],
        required: &["sessionId"],
    },
    Shape {
        method: "listBrowserSessions",
        allowed: &[],
        required: &[],
    },
];

/// Keys holding identifiers: when present they must be non-empty strings.
const ID_KEYS: &[&str] = &["sessionId", "actionId"];

fn invalid(message: String) -> RpcError {
    RpcError::new(ErrorCode::InvalidRequest, message)
}

fn validate(shape: &Shape, params: &Value) -> Result<(), RpcError> {
    let Some(fields) = params.as_object() else {
        return Err(invalid(format!(
            "{} params must be an object",
            shape.method
        )));
    };
    if let Some(key) = fields
        .keys()
        .find(|key| !shape.allowed.contains(&key.as_ref()))
    {
        return Err(invalid(format!(
            "Unexpected {} parameter: {key}",
            shape.method
        )));
    }
    if let Some(missing) = shape
        .required
        .iter()
        .find(|key| fields.get(**key).is_none_or(|value| value.is_null()))
    {
        return Err(invalid(format!("{missing} is required")));
    }
    if let Some(key) = ID_KEYS.iter().find(|key| {
        fields
            .get(**key)
            .is_some_and(|value| value.as_str().is_none_or(str::is_empty))
    }) {
        return Err(invalid(format!("{key} must be a non-empty string")));
    }
    Ok(())
}

/// Runs a browser method on the params as sent; None when `method` is not one.
pub fn call(method: &str, params: &Value) -> Option<Result<Value, RpcError>> {
    let shape = SHAPES.iter().find(|shape| shape.method == method)?;
    Some(validate(shape, params).and_then(|()| {
        if method == "listBrowserSessions" {
            Ok(Value::Array(Box::default()))
        } else {
            Err(RpcError::new(
                ErrorCode::Internal,
                "browser sessions are not available",
            ))
        }
    }))
}
