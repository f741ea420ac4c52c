//! Frame rendering: a workflow definition plus node states become the element tree of a frame
//! (EVENTS.md §4.2 tags) and its task index. Pure functions.
//!
//! The tree carries only the definition (tags and static props): DevTools derives each task's
//! state from node rows, so putting state in props would make every state change look like a
//! props change. Per-node state and attempt live in the task index only.
//!
//! Also here: the DevTools node id algorithm (EVENTS.md §4.3), `node_dom_id` and `assign_ids`,
//! so that ids computed from a rendered tree are stable across frames.
//!
//! Invariant: the same inputs give byte-identical serializations (no hash-map iteration order
//! reaches the output: objects are built key by key in a fixed order).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::workflow::{
    format_duration_ms, format_rfc3339_ms, NodeDef, NodeKind, TaskBody, TimerDef, WorkflowDef,
};
use crate::rpc::frame::object;
use crate::rpc::Value;
use simd_json::prelude::*;
use std::collections::{HashMap, HashSet};

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

/// The key under which `render` looks up a loop's current iteration in `loop_iterations`: the
/// loop's id, or `#loop<n>` for a loop without one, `n` being its 0-based position among all loops
/// of the workflow in document order (`#` cannot occur in a node id, so the two never collide).
pub fn loop_iteration_key(loop_id: &str, loop_ordinal: usize) -> String {
    if loop_id.is_empty() {
        format!("#loop{loop_ordinal}")
    } else {
        loop_id.to_string()
    }
}

/// Renders the tree for `workflow` with `states`; `loop_iterations` gives each loop node's current
/// iteration (keyed as `loop_iteration_key` says; 0 when absent).
pub fn render(
    workflow: &WorkflowDef,
    states: &NodeStates,
    loop_iterations: &HashMap<String, i64>,
) -> RenderedFrame {
    let mut renderer = Renderer {
        states,
        loop_iterations,
        n_loops: 0,
        task_index: Vec::new(),
    };
    let children = workflow
        .nodes
        .iter()
        .map(|node| renderer.element(node, 0))
        .collect();
    let tree = element(
        "smithers:workflow",
        object(vec![("name", Value::from(workflow.key.clone()))]),
        children,
    );
    RenderedFrame {
        tree,
        task_index: Value::Array(Box::new(renderer.task_index)),
    }
}

struct Renderer<'a> {
    states: &'a NodeStates,
    loop_iterations: &'a HashMap<String, i64>,
    /// Loops rendered so far (the ordinal of the next id-less loop).
    n_loops: usize,
    task_index: Vec<Value>,
}

impl Renderer<'_> {
    /// Renders `node` inside a loop body at `iteration` (0 outside loops).
    fn element(&mut self, node: &NodeDef, iteration: i64) -> Value {
        // Props are pushed in sorted key order, the order DevTools normalises them to.
        let mut props: Vec<(&str, Value)> = Vec::new();
        let id = || Value::from(node.id.clone());
        let label = node
            .label
            .as_ref()
            .map(|label| ("label", Value::from(label.clone())));
        match &node.kind {
            NodeKind::Sequence { children } => {
                props.extend(self.optional_id(node));
                props.extend(label);
                let children = self.elements(children, iteration);
                element("smithers:sequence", object(props), children)
            }
            NodeKind::Parallel {
                children,
                max_concurrency,
            } => {
                props.extend(self.optional_id(node));
                props.extend(label);
                if let Some(max_concurrency) = max_concurrency {
                    props.push(("maxConcurrency", Value::from(*max_concurrency as u64)));
                }
                let children = self.elements(children, iteration);
                element("smithers:parallel", object(props), children)
            }
            NodeKind::Loop {
                children,
                max_iterations,
                ..
            } => {
                let key = loop_iteration_key(&node.id, self.n_loops);
                self.n_loops += 1;
                let loop_iteration = self.loop_iterations.get(&key).copied().unwrap_or(0);
                props.extend(self.optional_id(node));
                props.push(("iteration", Value::from(loop_iteration)));
                props.extend(label);
                props.push(("maxIterations", Value::from(u64::from(*max_iterations))));
                let children = self.elements(children, loop_iteration);
                element("smithers:ralph", object(props), children)
            }
            NodeKind::Task(task) => {
                let (kind, index_kind) = match task.body {
                    TaskBody::Static { .. } => ("static", "static"),
                    TaskBody::Command { .. } => ("compute", "compute"),
                };
                props.push(("id", id()));
                props.push(("kind", Value::from(kind)));
                props.extend(label);
                if task.retries > 0 {
                    props.push(("retries", Value::from(u64::from(task.retries))));
                }
                let max_attempts = u64::from(task.retries) + 1;
                self.index(node, iteration, index_kind, Some(max_attempts));
                element("smithers:task", object(props), Vec::new())
            }
            NodeKind::Approval(approval) => {
                props.push(("id", id()));
                props.extend(label);
                props.push(("needsApproval", Value::from(true)));
                if let Some(summary) = &approval.summary {
                    props.push(("summary", Value::from(summary.clone())));
                }
                props.push(("title", Value::from(approval.title.clone())));
                self.index(node, iteration, "approval", None);
                element("smithers:task", object(props), Vec::new())
            }
            NodeKind::Signal(signal) => {
                if let Some(correlation) = &signal.correlation {
                    props.push(("correlation", Value::from(correlation.clone())));
                }
                props.push(("event", Value::from(signal.name.clone())));
                props.push(("id", id()));
                props.extend(label);
                self.index(node, iteration, "wait-for-event", None);
                element("smithers:wait-for-event", object(props), Vec::new())
            }
            NodeKind::Timer(timer) => {
                if let TimerDef::DurationMs(duration_ms) = timer {
                    props.push(("duration", Value::from(format_duration_ms(*duration_ms))));
                }
                props.push(("id", id()));
                props.extend(label);
                if let TimerDef::UntilMs(until_ms) = timer {
                    props.push(("until", Value::from(format_rfc3339_ms(*until_ms))));
                }
                self.index(node, iteration, "timer", None);
                element("smithers:timer", object(props), Vec::new())
            }
        }
    }

    fn elements(&mut self, nodes: &[NodeDef], iteration: i64) -> Vec<Value> {
        nodes
            .iter()
            .map(|node| self.element(node, iteration))
            .collect()
    }

    fn optional_id(&self, node: &NodeDef) -> Option<(&'static str, Value)> {
        (!node.id.is_empty()).then(|| ("id", Value::from(node.id.clone())))
    }

    /// Appends the task index entry of a task-like node.
    fn index(&mut self, node: &NodeDef, iteration: i64, kind: &str, max_attempts: Option<u64>) {
        let (state, attempt) = match self.states.get(&(node.id.clone(), iteration)) {
            Some(status) => (status.state.as_str(), status.attempt),
            None => ("pending", 0),
        };
        let mut entry: Vec<(&str, Value)> = vec![
            ("nodeId", Value::from(node.id.clone())),
            ("ordinal", Value::from(self.task_index.len() as u64)),
            ("iteration", Value::from(iteration)),
            ("kind", Value::from(kind)),
        ];
        if let Some(max_attempts) = max_attempts {
            entry.push(("maxAttempts", Value::from(max_attempts)));
        }
        entry.push(("state", Value::from(state)));
        entry.push(("attempt", Value::from(attempt)));
        self.task_index.push(object(entry));
    }
}

/// `{kind:"element", tag, props, children}`.
fn element(tag: &str, props: Value, children: Vec<Value>) -> Value {
    object(vec![
        ("kind", Value::from("element")),
        ("tag", Value::from(tag)),
        ("props", props),
        ("children", Value::Array(Box::new(children))),
    ])
}

/// Deepest level at which a DevTools node still sits (root 0); a child below it becomes a
/// `[MaxDepth]` marker (EVENTS.md §4.2 step 4).
pub const DEVTOOLS_DEPTH_MAX: usize = 256;

/// Salts tried when a node id collides inside one tree (EVENTS.md §4.3).
const ID_COLLISION_SALTS_MAX: u32 = 1_024;

/// DevTools node id of an element path (EVENTS.md §4.3).
///
/// > Id = 32-bit FNV-1a over the path's **UTF-16 code units** (offset basis 0x811C9DC5, prime
/// > 0x01000193, xor-then-multiply, mod 2^32), then `& 0x7FFFFFFF`.
pub fn node_dom_id(path: &str) -> u32 {
    let mut hash: u32 = 0x811C_9DC5;
    for code_unit in path.encode_utf16() {
        hash ^= u32::from(code_unit);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash & 0x7FFF_FFFF
}

/// Paths and ids of every element of `tree`, in assignment order (EVENTS.md §4.3): the root
/// first, then each node's children (in order) when that node is expanded, expanding depth-first
/// from the first child. Non-element children are skipped; a child deeper than
/// `DEVTOOLS_DEPTH_MAX` gets the marker path `parentPath/__maxdepth__<index>` and is not expanded.
/// Returns nothing when `tree` is not an element.
pub fn assign_ids(tree: &Value) -> Vec<(String, u32)> {
    let mut assigned = Vec::new();
    let mut used = HashSet::new();
    if !is_element(tree) {
        return assigned;
    }
    let root_path = fragment(tree);
    assign_id(root_path.clone(), &mut used, &mut assigned);
    // An explicit stack instead of recursion: trees come from storage and may be deep.
    let mut pending: Vec<(&Value, String, usize)> = vec![(tree, root_path, 0)];
    while let Some((parent, parent_path, parent_depth)) = pending.pop() {
        let mut fragment_counts: HashMap<String, usize> = HashMap::new();
        let mut expanded = Vec::new();
        let children = parent
            .get("children")
            .and_then(|children| children.as_array())
            .map(|children| children.iter().filter(|child| is_element(child)))
            .into_iter()
            .flatten();
        for (index, child) in children.enumerate() {
            if parent_depth + 1 > DEVTOOLS_DEPTH_MAX {
                assign_id(
                    format!("{parent_path}/__maxdepth__{index}"),
                    &mut used,
                    &mut assigned,
                );
                continue;
            }
            let child_fragment = fragment(child);
            let count = fragment_counts.entry(child_fragment.clone()).or_insert(0);
            let child_path = if *count == 0 {
                format!("{parent_path}/{child_fragment}")
            } else {
                format!("{parent_path}/{child_fragment}[{count}]")
            };
            *count += 1;
            assign_id(child_path.clone(), &mut used, &mut assigned);
            expanded.push((child, child_path, parent_depth + 1));
        }
        pending.extend(expanded.into_iter().rev());
    }
    assigned
}

fn is_element(value: &Value) -> bool {
    value.get("kind").and_then(|kind| kind.as_str()) == Some("element")
}

/// `tag#id` when the element has a non-empty string `id` (or `nodeId`) prop, else `tag`.
fn fragment(element: &Value) -> String {
    let tag = element
        .get("tag")
        .and_then(|tag| tag.as_str())
        .unwrap_or("");
    let props = element.get("props");
    let prop = |name: &str| {
        props
            .and_then(|props| props.get(name))
            .and_then(|value| value.as_str())
            .filter(|text| !text.is_empty())
    };
    match prop("id").or_else(|| prop("nodeId")) {
        Some(id) => format!("{tag}#{id}"),
        None => tag.to_string(),
    }
}

/// > Collision inside one tree: rehash `path + "\u0000" + salt` for salt = 1, 2, … (≤ 1,024)
/// > until unused.
fn assign_id(path: String, used: &mut HashSet<u32>, assigned: &mut Vec<(String, u32)>) {
    let mut id = node_dom_id(&path);
    if used.contains(&id) {
        for salt in 1..=ID_COLLISION_SALTS_MAX {
            id = node_dom_id(&format!("{path}\u{0}{salt}"));
            if !used.contains(&id) {
                break;
            }
        }
    }
    used.insert(id);
    assigned.push((path, id));
}
