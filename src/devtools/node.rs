//! `getNodeOutput` and `getNodeDiff` payloads (METHODS.md §3.20–3.21) from one node's stored rows,
//! after the steps that need storage (run and node existence) and before the size caps.
//!
//! Our engine stores every output as one JSON row in `_smithers_outputs` (DATA.md §7 allows it)
//! and runs no task in a VCS working copy, so the node diff is a diff of what the attempt
//! produced: the run's outputs as a tree of files, `outputs/<nodeId>/<iteration>.json`, between
//! the attempt's start and its end (docs/DECISIONS.md).
//!
//! Pure: the caller passes the rows and the caps, and gets bytes or the spec's error.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::json::{sanitize, write_i64, write_str, Budget, Json};
use crate::engine::workflow::{NodeDef, NodeKind, TaskBody, WorkflowDef};
use crate::error::{ErrorCode, RpcError};
use crate::rpc::Value;
use crate::storage::{AttemptRow, NodeRecords, NodeRow};
use simd_json::prelude::*;

/// The one output table of our engine (DATA.md §7).
pub const OUTPUT_TABLE: &str = "_smithers_outputs";
/// > serialized row ≤ 104,857,600 bytes (NODE_OUTPUT_MAX_BYTES)
pub const NODE_OUTPUT_BYTES_MAX: usize = 104_857_600;
/// > > 1,048,576 (NODE_OUTPUT_WARN_BYTES) only logs
pub const NODE_OUTPUT_WARN_BYTES: usize = 1_048_576;
/// > serialized bundle ≤ 52,428,800 bytes
pub const NODE_DIFF_BYTES_MAX: usize = 52_428_800;
/// `error.message` of a failed node keeps this many characters.
pub const ERROR_MESSAGE_CHARS_MAX: usize = 4_000;

/// The size caps, configurable so that tests can prove them with small values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeLimits {
    pub output_bytes_max: usize,
    pub diff_bytes_max: usize,
}

impl Default for NodeLimits {
    fn default() -> Self {
        NodeLimits {
            output_bytes_max: NODE_OUTPUT_BYTES_MAX,
            diff_bytes_max: NODE_DIFF_BYTES_MAX,
        }
    }
}

fn rpc_error(code: ErrorCode, message: String) -> RpcError {
    RpcError::new(code, message)
}

/// The node row of `iteration`, or `NodeNotFound`/`IterationNotFound` (METHODS.md §3.20 steps
/// 5–6; `records.run` is known to exist).
fn node_row<'a>(
    records: &'a NodeRecords,
    run_id: &str,
    node_id: &str,
    iteration: i64,
) -> Result<&'a NodeRow, RpcError> {
    if records.nodes.is_empty() {
        return Err(rpc_error(
            ErrorCode::NodeNotFound,
            format!("Node {node_id} not found in run {run_id}."),
        ));
    }
    records
        .nodes
        .iter()
        .find(|node| node.iteration == iteration)
        .ok_or_else(|| {
            rpc_error(
                ErrorCode::IterationNotFound,
                format!("Node {node_id} has no iteration {iteration} in run {run_id}."),
            )
        })
}

/// The latest attempt of one iteration (highest attempt number).
fn latest_attempt(records: &NodeRecords, iteration: i64) -> Option<&AttemptRow> {
    records
        .attempts
        .iter()
        .filter(|attempt| attempt.iteration == iteration)
        .max_by_key(|attempt| attempt.attempt)
}

fn parse(text: &str) -> Option<Value> {
    simd_json::to_owned_value(&mut text.as_bytes().to_vec()).ok()
}

fn find_node<'a>(nodes: &'a [NodeDef], id: &str) -> Option<&'a NodeDef> {
    nodes.iter().find_map(|node| {
        if node.id == id {
            return Some(node);
        }
        match &node.kind {
            NodeKind::Sequence { children }
            | NodeKind::Parallel { children, .. }
            | NodeKind::Loop { children, .. } => find_node(children, id),
            _ => None,
        }
    })
}

/// `{fields:[{name, type, optional, nullable}]}` where the workflow declares the output's shape:
/// a static task's object, or an approval's decision. Command tasks and signals produce whatever
/// they are given, so their schema is unknown (null).
pub fn output_schema(workflow: Option<&WorkflowDef>, node_id: &str) -> Option<Json> {
    let node = find_node(&workflow?.nodes, node_id)?;
    let field = |name: &str, kind: &str, nullable: bool| {
        Json::object(vec![
            ("name".into(), Json::String(name.into())),
            ("type".into(), Json::String(kind.into())),
            ("optional".into(), Json::Bool(false)),
            ("nullable".into(), Json::Bool(nullable)),
        ])
    };
    let fields = match &node.kind {
        NodeKind::Task(task) => match &task.body {
            TaskBody::Static { output } => output
                .as_object()?
                .iter()
                .map(|(name, value)| {
                    let kind = match value {
                        Value::Static(simd_json::StaticNode::Null) => "null",
                        Value::Static(simd_json::StaticNode::Bool(_)) => "boolean",
                        Value::Static(_) => "number",
                        Value::String(_) => "string",
                        Value::Array(_) => "array",
                        Value::Object(_) => "object",
                    };
                    field(name, kind, value.is_null())
                })
                .collect(),
            TaskBody::Command { .. } => return None,
        },
        NodeKind::Approval(_) => vec![
            field("approved", "boolean", false),
            field("decision", "unknown", true),
            field("note", "string", true),
        ],
        _ => return None,
    };
    let mut fields: Vec<Json> = fields;
    fields.sort_by(|a, b| {
        let name = |j: &Json| j.get("name").and_then(Json::as_str).map(str::to_string);
        name(a).cmp(&name(b))
    });
    Some(Json::object(vec![("fields".into(), Json::Array(fields))]))
}

/// The `getNodeOutput` payload `{status, row, schema, partial?, error?}` (METHODS.md §3.20 steps
/// 5–9), serialized.
pub fn node_output(
    records: &NodeRecords,
    workflow: Option<&WorkflowDef>,
    node_id: &str,
    iteration: i64,
    limits: NodeLimits,
) -> Result<Vec<u8>, RpcError> {
    let run_id = records.run.as_ref().map_or("", |run| run.run_id.as_str());
    let node = node_row(records, run_id, node_id, iteration)?;
    // Every node of our workflows declares its output in the one table: the row names it once it
    // is written, and is empty before. Any other name is a table this engine does not know.
    if !node.output_table.is_empty() && node.output_table != OUTPUT_TABLE {
        return Err(rpc_error(
            ErrorCode::NodeHasNoOutput,
            format!(
                "Node {node_id} has no output table (unknown table {}).",
                node.output_table
            ),
        ));
    }
    let malformed = || {
        rpc_error(
            ErrorCode::MalformedOutputRow,
            format!("The output row of node {node_id} iteration {iteration} is not a JSON object."),
        )
    };
    let row = match records.outputs.iter().find(|o| o.iteration == iteration) {
        None => None,
        Some(output) => match parse(&output.payload_json) {
            Some(value @ Value::Object(_)) => Some(value),
            Some(Value::Static(simd_json::StaticNode::Null)) => Some(Value::null()),
            _ => return Err(malformed()),
        },
    };
    let mut budget = Budget::default();
    let row = row.map(|value| {
        // > a row that only wraps a `payload` value yields that value
        let unwrapped = match value.as_object() {
            Some(object) if object.len() == 1 => object.get("payload").cloned(),
            _ => None,
        };
        sanitize(unwrapped.as_ref().unwrap_or(&value), 0, &mut budget)
    });
    let mut row_bytes = Vec::new();
    match &row {
        Some(row) => row.write(&mut row_bytes),
        None => row_bytes.extend_from_slice(b"null"),
    }
    if row_bytes.len() > limits.output_bytes_max {
        return Err(rpc_error(
            ErrorCode::PayloadTooLarge,
            format!(
                "The output row of node {node_id} iteration {iteration} is {} bytes, over the \
                 {}-byte limit.",
                row_bytes.len(),
                limits.output_bytes_max
            ),
        ));
    }
    if row_bytes.len() > NODE_OUTPUT_WARN_BYTES {
        tracing::warn!(
            run_id,
            node_id,
            iteration,
            bytes = row_bytes.len(),
            "large node output row"
        );
    }
    let latest = latest_attempt(records, iteration);
    let failed = row.is_none()
        && (node.state == "failed"
            || latest.is_some_and(|a| a.state == "failed" || a.error_json.is_some()));
    let status = match (&row, failed) {
        (Some(_), _) => "produced",
        (None, true) => "failed",
        (None, false) => "pending",
    };
    let mut out = Vec::with_capacity(row_bytes.len() + 128);
    out.extend_from_slice(br#"{"status":"#);
    write_str(&mut out, status);
    out.extend_from_slice(br#","row":"#);
    out.extend_from_slice(&row_bytes);
    out.extend_from_slice(br#","schema":"#);
    match output_schema(workflow, node_id) {
        Some(schema) => schema.write(&mut out),
        None => out.extend_from_slice(b"null"),
    }
    if failed {
        out.extend_from_slice(br#","partial":"#);
        let partial = latest
            .and_then(|a| a.heartbeat_data_json.as_deref())
            .and_then(parse)
            .filter(|v| v.is_object())
            .map(|v| sanitize(&v, 0, &mut Budget::default()));
        match partial {
            Some(partial) => partial.write(&mut out),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(br#","error":"#);
        match latest.and_then(failure_of) {
            Some(error) => error.write(&mut out),
            None => out.extend_from_slice(b"null"),
        }
    }
    out.push(b'}');
    Ok(out)
}

/// `{name?, code?, message, attempt?}` from an attempt's error (message ≤ 4,000 chars).
fn failure_of(attempt: &AttemptRow) -> Option<Json> {
    let error = parse(attempt.error_json.as_deref()?)?;
    let text = |key: &str| error.get(key).and_then(|v| v.as_str());
    let message: String = text("message")
        .unwrap_or("")
        .chars()
        .take(ERROR_MESSAGE_CHARS_MAX)
        .collect();
    let mut fields = vec![("message".to_string(), Json::String(message))];
    if let Some(name) = text("name") {
        fields.push(("name".into(), Json::String(name.into())));
    }
    if let Some(code) = text("code") {
        fields.push(("code".into(), Json::String(code.into())));
    }
    fields.push(("attempt".into(), Json::Int(attempt.attempt)));
    Some(Json::object(fields))
}

/// The file of one node iteration's output in the outputs tree.
pub fn output_path(node_id: &str, iteration: i64) -> String {
    format!("outputs/{node_id}/{iteration}.json")
}

/// The `getNodeDiff` bundle `{seq, baseRef, patches}` (METHODS.md §3.21 steps 5–7 and 11),
/// serialized. The latest attempt's change is its output row: a finished attempt added
/// `outputs/<nodeId>/<iteration>.json`; any other attempt changed nothing.
pub fn node_diff(
    records: &NodeRecords,
    node_id: &str,
    iteration: i64,
    limits: NodeLimits,
) -> Result<Vec<u8>, RpcError> {
    let run_id = records.run.as_ref().map_or("", |run| run.run_id.as_str());
    if !records.nodes.iter().any(|node| node.iteration == iteration) {
        return Err(rpc_error(
            ErrorCode::NodeNotFound,
            format!("Node {node_id} iteration {iteration} not found in run {run_id}."),
        ));
    }
    let Some(attempt) = latest_attempt(records, iteration) else {
        return Err(rpc_error(
            ErrorCode::AttemptNotFound,
            format!("Node {node_id} iteration {iteration} has no attempts."),
        ));
    };
    if attempt.state == "in-progress" {
        return Err(rpc_error(
            ErrorCode::AttemptNotFinished,
            format!(
                "Attempt {} of node {node_id} iteration {iteration} has not finished.",
                attempt.attempt
            ),
        ));
    }
    let output = records
        .outputs
        .iter()
        .find(|o| o.iteration == iteration)
        .filter(|_| attempt.state == "finished");
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(br#"{"seq":"#);
    write_i64(&mut out, attempt.attempt);
    // The base is the outputs tree as it stood when the attempt started.
    out.extend_from_slice(br#","baseRef":"#);
    write_str(&mut out, &format!("outputs@{}", attempt.started_at_ms));
    out.extend_from_slice(br#","patches":["#);
    if let Some(output) = output {
        let content = match parse(&output.payload_json) {
            Some(value) => {
                let mut pretty = Vec::new();
                sanitize(&value, 0, &mut Budget::default()).write_pretty(&mut pretty, 0);
                String::from_utf8(pretty).unwrap_or_default()
            }
            // Stored text that is not JSON is shown as stored.
            None => output.payload_json.clone(),
        };
        let path = output_path(node_id, iteration);
        out.extend_from_slice(br#"{"path":"#);
        write_str(&mut out, &path);
        out.extend_from_slice(br#","operation":"add","diff":"#);
        write_str(&mut out, &added_file_diff(&path, &content));
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    if out.len() > limits.diff_bytes_max {
        return Err(rpc_error(
            ErrorCode::DiffTooLarge,
            format!(
                "The diff of node {node_id} iteration {iteration} is {} bytes, over the \
                 {}-byte limit [truncated]",
                out.len(),
                limits.diff_bytes_max
            ),
        ));
    }
    Ok(out)
}

/// A unified diff creating `path` with `content`.
pub fn added_file_diff(path: &str, content: &str) -> String {
    let lines: Vec<&str> = content.lines().collect();
    let mut diff = format!(
        "--- /dev/null\n+++ b/{path}\n@@ -0,0 +1,{} @@\n",
        lines.len()
    );
    for line in &lines {
        diff.push('+');
        diff.push_str(line);
        diff.push('\n');
    }
    diff
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::engine::workflow::parse_workflow;
    use crate::storage::{OutputRow, RunRow};
    use serde_json::json;
    use std::path::Path;

    fn run() -> RunRow {
        RunRow {
            run_id: "r".into(),
            parent_run_id: None,
            workflow_name: "w".into(),
            workflow_path: None,
            workflow_hash: None,
            status: "running".into(),
            created_at_ms: 1,
            started_at_ms: Some(1),
            finished_at_ms: None,
            heartbeat_at_ms: None,
            runtime_owner_id: None,
            cancel_requested_at_ms: None,
            pause_requested_at_ms: None,
            error_json: None,
            config_json: None,
            input_json: "{}".into(),
            idempotency_key: None,
        }
    }

    fn node(iteration: i64, state: &str, table: &str) -> NodeRow {
        NodeRow {
            run_id: "r".into(),
            node_id: "n".into(),
            iteration,
            state: state.into(),
            last_attempt: Some(1),
            updated_at_ms: 1,
            output_table: table.into(),
            label: None,
        }
    }

    fn attempt(iteration: i64, attempt: i64, state: &str, error: Option<&str>) -> AttemptRow {
        AttemptRow {
            run_id: "r".into(),
            node_id: "n".into(),
            iteration,
            attempt,
            state: state.into(),
            started_at_ms: 100 + attempt,
            finished_at_ms: None,
            heartbeat_at_ms: None,
            heartbeat_data_json: Some(r#"{"progress":0.5}"#.into()),
            error_json: error.map(str::to_string),
            meta_json: None,
            exit_code: None,
        }
    }

    fn output(iteration: i64, payload: &str) -> OutputRow {
        OutputRow {
            run_id: "r".into(),
            node_id: "n".into(),
            iteration,
            payload_json: payload.into(),
            created_at_ms: 5,
        }
    }

    fn records(
        nodes: Vec<NodeRow>,
        attempts: Vec<AttemptRow>,
        outputs: Vec<OutputRow>,
    ) -> NodeRecords {
        NodeRecords {
            run: Some(run()),
            nodes,
            attempts,
            outputs,
        }
    }

    fn workflow() -> WorkflowDef {
        parse_workflow(
            Path::new("w.toml"),
            "[[nodes]]\nkind = \"task\"\nid = \"n\"\noutput = { b = \"x\", a = 1, c = [1], d = true }\n\n[[nodes]]\nkind = \"approval\"\nid = \"gate\"\ntitle = \"Go?\"\n",
        )
        .unwrap()
    }

    fn output_json(
        records: &NodeRecords,
        iteration: i64,
        limits: NodeLimits,
    ) -> Result<serde_json::Value, RpcError> {
        node_output(records, Some(&workflow()), "n", iteration, limits)
            .map(|bytes| serde_json::from_slice(&bytes).unwrap())
    }

    fn code(result: Result<serde_json::Value, RpcError>) -> ErrorCode {
        result.unwrap_err().code
    }

    // Goal: the three statuses of METHODS.md §3.20: produced (row, payload unwrapping, schema of
    // a static task), failed (partial from the heartbeat, error with attempt), pending.
    #[test]
    fn output_statuses() {
        let produced = records(
            vec![node(0, "finished", OUTPUT_TABLE)],
            vec![attempt(0, 1, "finished", None)],
            vec![output(0, r#"{"b":"x","a":1}"#)],
        );
        assert_eq!(
            output_json(&produced, 0, NodeLimits::default()).unwrap(),
            json!({"status": "produced", "row": {"a": 1, "b": "x"}, "schema": {"fields": [
                {"name": "a", "nullable": false, "optional": false, "type": "number"},
                {"name": "b", "nullable": false, "optional": false, "type": "string"},
                {"name": "c", "nullable": false, "optional": false, "type": "array"},
                {"name": "d", "nullable": false, "optional": false, "type": "boolean"}]}})
        );
        let wrapped = records(
            vec![node(0, "finished", OUTPUT_TABLE)],
            vec![],
            vec![output(0, r#"{"payload":[1,2]}"#)],
        );
        assert_eq!(
            output_json(&wrapped, 0, NodeLimits::default()).unwrap()["row"],
            json!([1, 2])
        );
        let failed = records(
            vec![node(0, "failed", "")],
            vec![
                attempt(0, 1, "failed", Some(r#"{"message":"one"}"#)),
                attempt(
                    0,
                    2,
                    "failed",
                    Some(&format!(
                        r#"{{"message":"{}","code":"E1"}}"#,
                        "m".repeat(5_000)
                    )),
                ),
            ],
            vec![],
        );
        let failed = output_json(&failed, 0, NodeLimits::default()).unwrap();
        assert_eq!(failed["status"], "failed");
        assert_eq!(failed["row"], serde_json::Value::Null);
        assert_eq!(failed["partial"], json!({"progress": 0.5}));
        assert_eq!(failed["error"]["attempt"], 2);
        assert_eq!(failed["error"]["code"], "E1");
        assert_eq!(
            failed["error"]["message"].as_str().unwrap().chars().count(),
            ERROR_MESSAGE_CHARS_MAX
        );
        let pending = records(
            vec![node(0, "in-progress", "")],
            vec![attempt(0, 1, "in-progress", None)],
            vec![],
        );
        assert_eq!(
            output_json(&pending, 0, NodeLimits::default()).unwrap(),
            json!({"status": "pending", "row": null, "schema": {"fields": [
                {"name": "a", "nullable": false, "optional": false, "type": "number"},
                {"name": "b", "nullable": false, "optional": false, "type": "string"},
                {"name": "c", "nullable": false, "optional": false, "type": "array"},
                {"name": "d", "nullable": false, "optional": false, "type": "boolean"}]}})
        );
        // An approval's schema; a node the workflow does not have has none.
        assert!(output_schema(Some(&workflow()), "gate").is_some());
        assert!(output_schema(Some(&workflow()), "ghost").is_none());
        assert!(output_schema(None, "n").is_none());
    }

    // Goal: refusals of steps 5–9 with their codes, and the row cap at exactly its limit.
    #[test]
    fn output_refusals_and_the_row_cap() {
        let none = records(vec![], vec![], vec![]);
        assert_eq!(
            code(output_json(&none, 0, NodeLimits::default())),
            ErrorCode::NodeNotFound
        );
        let one = records(
            vec![node(0, "finished", OUTPUT_TABLE)],
            vec![],
            vec![output(0, r#"{"k":"0123456789"}"#)],
        );
        assert_eq!(
            code(output_json(&one, 1, NodeLimits::default())),
            ErrorCode::IterationNotFound
        );
        let elsewhere = records(vec![node(0, "finished", "other_table")], vec![], vec![]);
        assert_eq!(
            code(output_json(&elsewhere, 0, NodeLimits::default())),
            ErrorCode::NodeHasNoOutput
        );
        for bad in ["[1]", "\"text\"", "{broken"] {
            let malformed = records(
                vec![node(0, "finished", OUTPUT_TABLE)],
                vec![],
                vec![output(0, bad)],
            );
            assert_eq!(
                code(output_json(&malformed, 0, NodeLimits::default())),
                ErrorCode::MalformedOutputRow,
                "{bad}"
            );
        }
        // `{"k":"0123456789"}` is 18 bytes.
        let at = NodeLimits {
            output_bytes_max: 18,
            ..NodeLimits::default()
        };
        assert!(output_json(&one, 0, at).is_ok());
        let under = NodeLimits {
            output_bytes_max: 17,
            ..NodeLimits::default()
        };
        let error = output_json(&one, 0, under).unwrap_err();
        assert_eq!(error.code, ErrorCode::PayloadTooLarge);
        assert_eq!(error.code.http_status(), 413);
        assert!(error.message.contains("18 bytes"), "{}", error.message);
    }

    // Goal: the diff bundle of a finished attempt adds the output file (pretty JSON, unified
    // diff); an unfinished attempt is refused; a failed attempt changed nothing; the bundle cap
    // refuses one byte over with a message ending in " [truncated]".
    #[test]
    fn diff_bundles_and_the_cap() {
        let finished = records(
            vec![node(2, "finished", OUTPUT_TABLE)],
            vec![
                attempt(2, 1, "failed", None),
                attempt(2, 2, "finished", None),
            ],
            vec![output(2, r#"{"b":[1],"a":"x"}"#)],
        );
        let bundle = node_diff(&finished, "n", 2, NodeLimits::default()).unwrap();
        let parsed: serde_json::Value = serde_json::from_slice(&bundle).unwrap();
        assert_eq!(
            parsed,
            json!({"seq": 2, "baseRef": "outputs@102", "patches": [{"path": "outputs/n/2.json", "operation": "add",
                "diff": "--- /dev/null\n+++ b/outputs/n/2.json\n@@ -0,0 +1,6 @@\n+{\n+  \"a\": \"x\",\n+  \"b\": [\n+    1\n+  ]\n+}\n"}]})
        );
        let at = NodeLimits {
            diff_bytes_max: bundle.len(),
            ..NodeLimits::default()
        };
        assert!(node_diff(&finished, "n", 2, at).is_ok());
        let over = NodeLimits {
            diff_bytes_max: bundle.len() - 1,
            ..NodeLimits::default()
        };
        let error = node_diff(&finished, "n", 2, over).unwrap_err();
        assert_eq!(error.code, ErrorCode::DiffTooLarge);
        assert_eq!(error.code.http_status(), 413);
        assert!(error.message.ends_with(" [truncated]"), "{}", error.message);

        let failed = records(
            vec![node(0, "failed", "")],
            vec![attempt(0, 1, "failed", None)],
            vec![],
        );
        let parsed: serde_json::Value =
            serde_json::from_slice(&node_diff(&failed, "n", 0, NodeLimits::default()).unwrap())
                .unwrap();
        assert_eq!(
            parsed,
            json!({"seq": 1, "baseRef": "outputs@101", "patches": []})
        );
        let running = records(
            vec![node(0, "in-progress", "")],
            vec![attempt(0, 1, "in-progress", None)],
            vec![],
        );
        assert_eq!(
            node_diff(&running, "n", 0, NodeLimits::default())
                .unwrap_err()
                .code,
            ErrorCode::AttemptNotFinished
        );
        let no_attempt = records(vec![node(0, "pending", "")], vec![], vec![]);
        assert_eq!(
            node_diff(&no_attempt, "n", 0, NodeLimits::default())
                .unwrap_err()
                .code,
            ErrorCode::AttemptNotFound
        );
        assert_eq!(
            node_diff(&no_attempt, "n", 1, NodeLimits::default())
                .unwrap_err()
                .code,
            ErrorCode::NodeNotFound
        );
    }
}
