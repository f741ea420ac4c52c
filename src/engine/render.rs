//! Frame rendering: a workflow definition plus node states become the element tree of a frame
//! (EVENTS.md §4.2 tags) and its task index. Pure functions.

use super::workflow::WorkflowDef;
use crate::rpc::Value;
use std::collections::HashMap;

/// The state of one node (per id and iteration) at the moment of rendering.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    pub state: String,
    pub attempt: i64,
}

/// `(node_id, iteration)` → status; nodes without an entry are `pending`.
pub type NodeStates = HashMap<(String, i64), NodeStatus>;

/// A rendered frame: the element tree and the task index, both as JSON values.
#[derive(Clone, Debug, PartialEq)]
pub struct RenderedFrame {
    /// `{kind:"element", tag, props, children}` starting at `smithers:workflow`.
    pub tree: Value,
    /// `[{nodeId, ordinal, iteration, kind, maxAttempts?}]`.
    pub task_index: Value,
}

/// Renders the tree for `workflow` with `states`; `loop_iterations` gives each loop node's current
/// iteration (by loop id; 0 when absent).
pub fn render(
    workflow: &WorkflowDef,
    states: &NodeStates,
    loop_iterations: &HashMap<String, i64>,
) -> RenderedFrame {
    todo!(
        "workflow work {} {} {}",
        workflow.key,
        states.len(),
        loop_iterations.len()
    )
}
