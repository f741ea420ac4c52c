//! The DevTools methods (METHODS.md §3.18–3.21): `getDevToolsSnapshot`, `getNodeOutput` and
//! `getNodeDiff` (with their legacy names), and the parameter checks of `streamDevTools`, whose
//! stream itself lives in `runtime::ws_session`. Validation runs in the spec's order; payloads are
//! built by `devtools` and returned as bytes (key order is part of the wire).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::common::{ask, storage};
use super::dispatch::CallContext;
use super::Value;
use crate::devtools::node::{node_diff, node_output};
use crate::devtools::snapshot::{build, empty, FrameSource};
use crate::engine::core::workflow_key_of;
use crate::error::{ErrorCode, RpcError};
use crate::storage::{Command, NodeRecords};
use simd_json::prelude::*;

/// Largest frame number and iteration a request may name (2^31 − 1).
pub const INT31_MAX: i64 = 2_147_483_647;
/// Largest stream cursor (JavaScript's `Number.MAX_SAFE_INTEGER`).
pub const CURSOR_MAX: u64 = 9_007_199_254_740_991;
/// The pattern error messages quote (DATA.md §2), though the accepted pattern is wider.
const RUN_ID_PATTERN_TEXT: &str = "/^[a-z0-9_-][a-z0-9_.-]{0,63}$/";

/// > run id read pattern (DATA.md §2):
/// > `^(?=.{1,256}$)(?:[a-z0-9_-][a-z0-9_.-]{0,63}|[a-z0-9_-][a-z0-9_.-]{0,255}(?::child:[A-Za-z0-9_.@,:=-]+:[0-9]+)+)$`
///
/// The base slug cannot hold `:`, so it ends at the first `:`. The repeated child segment's node
/// class holds `:` and digits, so one or many segments accept the same strings:
/// `:child:` + a non-empty run of node characters + `:` + digits.
pub fn is_read_run_id(run_id: &str) -> bool {
    if run_id.is_empty() || run_id.len() > 256 {
        return false;
    }
    let slug_first = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-';
    let slug_rest = |b: u8| slug_first(b) || b == b'.';
    let (base, children) = match run_id.find(':') {
        Some(colon) => run_id.split_at(colon),
        None => (run_id, ""),
    };
    let mut base_bytes = base.bytes();
    if !base_bytes.next().is_some_and(slug_first) || !base_bytes.all(slug_rest) {
        return false;
    }
    if children.is_empty() {
        return base.len() <= 64;
    }
    let Some(segment) = children.strip_prefix(":child:") else {
        return false;
    };
    let Some((node, iteration)) = segment.rsplit_once(':') else {
        return false;
    };
    let node_char = |b: u8| b.is_ascii_alphanumeric() || b"_.@,:=-".contains(&b);
    !node.is_empty()
        && node.bytes().all(node_char)
        && !iteration.is_empty()
        && iteration.bytes().all(|b| b.is_ascii_digit())
}

/// `^[a-zA-Z0-9:_-]{1,128}$`
pub fn is_node_id(node_id: &str) -> bool {
    (1..=128).contains(&node_id.len())
        && node_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b':' || b == b'_' || b == b'-')
}

/// An integral JSON number (`3.0` counts, as in JavaScript) within `0..=max`.
fn integer_in(value: &Value, max: u64) -> Option<u64> {
    let integer = value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= CURSOR_MAX as f64)
            .map(|f| f as u64)
    })?;
    (integer <= max).then_some(integer)
}

fn invalid_run_id(message: impl Into<String>) -> RpcError {
    RpcError::new(ErrorCode::InvalidRunId, message)
}

/// `runId`: a non-empty string (else "runId is required"), then the read pattern (also
/// `rewindRun`'s stage B check).
pub(crate) fn read_run_id(params: &Value) -> Result<String, RpcError> {
    let run_id = params
        .get("runId")
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid_run_id("runId is required"))?;
    if !is_read_run_id(run_id) {
        return Err(invalid_run_id(format!(
            "runId must match {RUN_ID_PATTERN_TEXT}"
        )));
    }
    Ok(run_id.to_string())
}

pub(crate) fn node_id_param(params: &Value) -> Result<String, RpcError> {
    params
        .get("nodeId")
        .and_then(|v| v.as_str())
        .filter(|id| is_node_id(id))
        .map(str::to_string)
        .ok_or_else(|| {
            RpcError::new(
                ErrorCode::InvalidNodeId,
                "nodeId must match /^[a-zA-Z0-9:_-]{1,128}$/",
            )
        })
}

fn invalid_iteration() -> RpcError {
    RpcError::new(
        ErrorCode::InvalidIteration,
        format!("iteration must be an integer between 0 and {INT31_MAX}"),
    )
}

/// `getNodeOutput`'s iteration: an integer or a string of digits, 0…2^31−1, required.
pub(crate) fn iteration_lenient(params: &Value) -> Result<i64, RpcError> {
    let value = params.get("iteration").ok_or_else(invalid_iteration)?;
    let parsed = match value.as_str() {
        Some(text) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => {
            text.parse::<u64>().ok()
        }
        Some(_) => None,
        None => integer_in(value, INT31_MAX as u64),
    };
    parsed
        .filter(|n| *n <= INT31_MAX as u64)
        .map(|n| n as i64)
        .ok_or_else(invalid_iteration)
}

/// `getNodeDiff`'s iteration: a JSON integer 0…2^31−1 (strings refused), required.
fn iteration_strict(params: &Value) -> Result<i64, RpcError> {
    params
        .get("iteration")
        .and_then(|v| integer_in(v, INT31_MAX as u64))
        .map(|n| n as i64)
        .ok_or_else(invalid_iteration)
}

pub(crate) fn run_not_found(run_id: &str) -> RpcError {
    RpcError::new(ErrorCode::RunNotFound, format!("Run not found: {run_id}"))
}

/// > connection filter allows the run (null allows all; explicit empty denies all)
fn check_filter(context: &CallContext<'_>, run_id: &str) -> Result<(), RpcError> {
    if context.allows_run(run_id) {
        return Ok(());
    }
    Err(RpcError::new(
        ErrorCode::UnauthorizedV1,
        "Connection is not subscribed to this runId.",
    ))
}

/// `getDevToolsSnapshot` (METHODS.md §3.19): the snapshot of `frameNo` (the latest when absent),
/// with `runState`.
pub async fn get_snapshot(context: &CallContext<'_>, params: &Value) -> Result<Vec<u8>, RpcError> {
    let run_id = read_run_id(params)?;
    // A null frameNo counts as absent, as a null afterSeq does for streams.
    let frame_no = match params.get("frameNo").filter(|v| !v.is_null()) {
        None => None,
        Some(value) => Some(integer_in(value, INT31_MAX as u64).ok_or_else(|| {
            RpcError::new(
                ErrorCode::FrameOutOfRange,
                format!("frameNo must be an integer between 0 and {INT31_MAX}."),
            )
        })? as i64),
    };
    check_filter(context, &run_id)?;
    let storage = storage(context)?;
    let state = ask(&storage, |reply| Command::LoadRunState {
        run_id: run_id.clone(),
        reply,
    })
    .await?;
    if state.run.is_none() {
        return Err(run_not_found(&run_id));
    }
    let run_state = super::methods::run_state(&state, crate::clock::now_ms() as i64);
    let latest = state.last_frame_no;
    let out_of_range = |message: String| RpcError::new(ErrorCode::FrameOutOfRange, message);
    let mut out = Vec::with_capacity(1024);
    if latest == 0 {
        return match frame_no {
            None | Some(0) => {
                empty(&run_id).write(&mut out, Some(&run_state));
                Ok(out)
            }
            Some(asked) => Err(out_of_range(format!(
                "frameNo must be 0 for runs with no frames (got {asked})."
            ))),
        };
    }
    let target = frame_no.unwrap_or(latest);
    if target > latest {
        return Err(out_of_range(format!(
            "frameNo must be between 0 and {latest}."
        )));
    }
    let unavailable = || out_of_range(format!("Frame {target} is not available for run {run_id}."));
    if target == 0 {
        return Err(unavailable());
    }
    let frame = ask(&storage, |reply| Command::GetFrame {
        run_id: run_id.clone(),
        frame_no: target,
        reply,
    })
    .await?
    .ok_or_else(unavailable)?;
    let snapshot = FrameSource::from_rows(&frame, &state.attempts)
        .and_then(|source| build(&source))
        .map_err(|error| RpcError::new(ErrorCode::ServerError, error.to_string()))?;
    snapshot.write(&mut out, Some(&run_state));
    Ok(out)
}

/// Steps 1–4 shared by the node methods: run id, node id, iteration, and the run's rows.
async fn node_records(
    context: &CallContext<'_>,
    params: &Value,
    iteration: fn(&Value) -> Result<i64, RpcError>,
) -> Result<(NodeRecords, String, i64), RpcError> {
    let run_id = read_run_id(params)?;
    let node_id = node_id_param(params)?;
    let iteration = iteration(params)?;
    let records = ask(&storage(context)?, |reply| Command::LoadNodeRecords {
        run_id: run_id.clone(),
        node_id: node_id.clone(),
        reply,
    })
    .await?;
    if records.run.is_none() {
        return Err(run_not_found(&run_id));
    }
    Ok((records, node_id, iteration))
}

/// `getNodeOutput` / `devtools.getNodeOutput` (METHODS.md §3.20).
pub async fn get_node_output(
    context: &CallContext<'_>,
    params: &Value,
) -> Result<Vec<u8>, RpcError> {
    let (records, node_id, iteration) = node_records(context, params, iteration_lenient).await?;
    let workflow = records
        .run
        .as_ref()
        .and_then(|run| context.state.registry.workflows.get(&workflow_key_of(run)));
    node_output(
        &records,
        workflow,
        &node_id,
        iteration,
        context.state.config.node_limits,
    )
}

/// `getNodeDiff` / `devtools.getNodeDiff` (METHODS.md §3.21).
pub async fn get_node_diff(context: &CallContext<'_>, params: &Value) -> Result<Vec<u8>, RpcError> {
    let (records, node_id, iteration) = node_records(context, params, iteration_strict).await?;
    node_diff(
        &records,
        &node_id,
        iteration,
        context.state.config.node_limits,
    )
}

/// `streamDevTools` steps 2–6 (METHODS.md §3.18): the run id and the cursor.
pub fn stream_params(params: &Value) -> Result<(String, Option<u64>), RpcError> {
    let run_id = params
        .get("runId")
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid_run_id("runId is required"))?;
    let from_seq = params.get("fromSeq");
    let after_seq = params.get("afterSeq");
    let number = |value: Option<&Value>| value.and_then(|v| v.cast_f64());
    if let (Some(from), Some(after)) = (number(from_seq), number(after_seq)) {
        if from != after {
            return Err(RpcError::new(
                ErrorCode::SeqOutOfRange,
                "fromSeq and afterSeq must match when both are provided",
            ));
        }
    }
    // > cursor = `fromSeq` if a number, else `afterSeq` (whatever it is)
    let cursor = if number(from_seq).is_some() {
        from_seq
    } else {
        after_seq
    };
    if !is_read_run_id(run_id) {
        return Err(invalid_run_id(format!(
            "runId must match {RUN_ID_PATTERN_TEXT}"
        )));
    }
    // A null cursor counts as absent.
    let cursor = match cursor.filter(|v| !v.is_null()) {
        None => None,
        Some(value) => Some(integer_in(value, CURSOR_MAX).ok_or_else(|| {
            RpcError::new(
                ErrorCode::SeqOutOfRange,
                "fromSeq must be a non-negative integer.",
            )
        })?),
    };
    Ok((run_id.to_string(), cursor))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn value(text: &str) -> Value {
        simd_json::to_owned_value(&mut text.as_bytes().to_vec()).unwrap()
    }

    // Goal: the read pattern of DATA.md §2, including child segments, lengths and the
    // characters each part allows.
    #[test]
    fn read_run_ids() {
        let accepted = [
            "r",
            "run-1",
            "a.b_c",
            "-x",
            "0123456789",
            &"a".repeat(64),
            "p:child:node:0",
            "p:child:a.b@c,d=e-f:12",
            "p:child:n:1:child:m:2",
            "p:child:n:x:3",
        ];
        for id in accepted {
            assert!(is_read_run_id(id), "{id}");
        }
        let long_child = format!("{}:child:n:1", "a".repeat(100));
        assert!(is_read_run_id(&long_child));
        let refused = [
            "",
            ".r",
            "R",
            "run id",
            &"a".repeat(65),
            "p:child:",
            "p:child::1",
            "p:child:n:",
            "p:child:n:1x",
            "p:kid:n:1",
            "p:child:n",
            "p:child:n!:1",
            "é",
        ];
        for id in refused {
            assert!(!is_read_run_id(id), "{id}");
        }
        let too_long = format!("{}:child:n:1", "a".repeat(250));
        assert!(!is_read_run_id(&too_long));
        assert!(is_node_id("a:b_c-D9"));
        assert!(!is_node_id(""));
        assert!(!is_node_id("a.b"));
        assert!(!is_node_id(&"n".repeat(129)));
    }

    // Goal: streamDevTools steps 2–6 in the spec's order, with their codes and messages.
    #[test]
    fn stream_params_follow_the_spec_order() {
        type Expected<'a> = Result<(&'a str, Option<u64>), (ErrorCode, &'a str)>;
        let cases: &[(&str, Expected)] = &[
            (r#"{}"#, Err((ErrorCode::InvalidRunId, "runId is required"))),
            (
                r#"{"runId":5}"#,
                Err((ErrorCode::InvalidRunId, "runId is required")),
            ),
            // Step 3 comes before the pattern check of step 5.
            (
                r#"{"runId":"BAD","fromSeq":1,"afterSeq":2}"#,
                Err((
                    ErrorCode::SeqOutOfRange,
                    "fromSeq and afterSeq must match when both are provided",
                )),
            ),
            (
                r#"{"runId":"BAD"}"#,
                Err((
                    ErrorCode::InvalidRunId,
                    "runId must match /^[a-z0-9_-][a-z0-9_.-]{0,63}$/",
                )),
            ),
            (
                r#"{"runId":"r","fromSeq":-1}"#,
                Err((
                    ErrorCode::SeqOutOfRange,
                    "fromSeq must be a non-negative integer.",
                )),
            ),
            (
                r#"{"runId":"r","fromSeq":1.5}"#,
                Err((
                    ErrorCode::SeqOutOfRange,
                    "fromSeq must be a non-negative integer.",
                )),
            ),
            (
                r#"{"runId":"r","afterSeq":"3"}"#,
                Err((
                    ErrorCode::SeqOutOfRange,
                    "fromSeq must be a non-negative integer.",
                )),
            ),
            (
                r#"{"runId":"r","fromSeq":9007199254740992}"#,
                Err((
                    ErrorCode::SeqOutOfRange,
                    "fromSeq must be a non-negative integer.",
                )),
            ),
            (r#"{"runId":"r"}"#, Ok(("r", None))),
            (r#"{"runId":"r","afterSeq":null}"#, Ok(("r", None))),
            (
                r#"{"runId":"r","fromSeq":7,"afterSeq":7}"#,
                Ok(("r", Some(7))),
            ),
            (r#"{"runId":"r","afterSeq":12}"#, Ok(("r", Some(12)))),
            // fromSeq not a number: the cursor is afterSeq.
            (
                r#"{"runId":"r","fromSeq":"x","afterSeq":4}"#,
                Ok(("r", Some(4))),
            ),
            (r#"{"runId":"r","fromSeq":3.0}"#, Ok(("r", Some(3)))),
        ];
        for (params, expected) in cases {
            let got = stream_params(&value(params));
            match expected {
                Ok((run_id, cursor)) => {
                    assert_eq!(got.unwrap(), (run_id.to_string(), *cursor), "{params}")
                }
                Err((code, message)) => {
                    let error = got.unwrap_err();
                    assert_eq!(
                        (error.code, error.message.as_str()),
                        (*code, *message),
                        "{params}"
                    );
                }
            }
        }
    }

    // Goal: the two iteration rules: getNodeOutput takes digit strings, getNodeDiff only JSON
    // integers; both refuse absent, negative, fractional and past 2^31−1.
    #[test]
    fn iteration_rules() {
        let lenient = |text: &str| iteration_lenient(&value(text)).ok();
        let strict = |text: &str| iteration_strict(&value(text)).ok();
        assert_eq!(lenient(r#"{"iteration":3}"#), Some(3));
        assert_eq!(lenient(r#"{"iteration":"3"}"#), Some(3));
        assert_eq!(lenient(r#"{"iteration":2147483647}"#), Some(INT31_MAX));
        assert_eq!(strict(r#"{"iteration":0}"#), Some(0));
        assert_eq!(strict(r#"{"iteration":"3"}"#), None);
        for refused in [
            r#"{}"#,
            r#"{"iteration":-1}"#,
            r#"{"iteration":1.5}"#,
            r#"{"iteration":2147483648}"#,
            r#"{"iteration":"2147483648"}"#,
            r#"{"iteration":"-1"}"#,
            r#"{"iteration":""}"#,
            r#"{"iteration":null}"#,
        ] {
            assert_eq!(lenient(refused), None, "{refused}");
            assert_eq!(strict(refused), None, "{refused}");
        }
    }
}
