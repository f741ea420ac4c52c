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

use super::workflow::{format_duration_ms, NodeDef, NodeKind, TaskBody, TimerDef, WorkflowDef};
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
                    props.push(("until", Value::from(crate::clock::iso_from_ms(*until_ms))));
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
    walk_ids(tree, |_: Option<&()>, _, path, id, _| {
        assigned.push((path.to_string(), id));
    });
    assigned
}

/// What `walk_ids` assigned an id to.
#[derive(Clone, Copy, Debug)]
pub enum IdTarget<'a> {
    Element(&'a Value),
    /// The depth-cap marker standing for the `index`-th element child of its parent.
    MaxDepth {
        index: usize,
    },
}

/// Assigns the ids of `tree` in `assign_ids`' order and calls `visit(parent, target, path, id,
/// depth)` for each, the root first (with no parent). `visit` returns a token for the node; its
/// children receive their parent's token, so a caller can build the tree in the same pass.
pub fn walk_ids<'a, T>(
    tree: &'a Value,
    mut visit: impl FnMut(Option<&T>, IdTarget<'a>, &str, u32, usize) -> T,
) {
    if !is_element(tree) {
        return;
    }
    let mut used = HashSet::new();
    let root_path = fragment(tree);
    let root_id = assign_id(&root_path, &mut used);
    let root = visit(None, IdTarget::Element(tree), &root_path, root_id, 0);
    // An explicit stack instead of recursion: trees come from storage and may be deep.
    let mut pending: Vec<(&Value, String, usize, T)> = vec![(tree, root_path, 0, root)];
    while let Some((parent, parent_path, parent_depth, token)) = pending.pop() {
        let mut fragment_counts: HashMap<String, usize> = HashMap::new();
        let mut expanded = Vec::new();
        let children = parent
            .get("children")
            .and_then(|children| children.as_array())
            .map(|children| children.iter().filter(|child| is_element(child)))
            .into_iter()
            .flatten();
        let depth = parent_depth + 1;
        for (index, child) in children.enumerate() {
            if depth > DEVTOOLS_DEPTH_MAX {
                let path = max_depth_marker_path(&parent_path, index);
                let id = assign_id(&path, &mut used);
                visit(Some(&token), IdTarget::MaxDepth { index }, &path, id, depth);
                continue;
            }
            let child_fragment = fragment(child);
            let count = fragment_counts.entry(child_fragment.clone()).or_insert(0);
            let path = child_path(&parent_path, &child_fragment, *count);
            *count += 1;
            let id = assign_id(&path, &mut used);
            let child_token = visit(Some(&token), IdTarget::Element(child), &path, id, depth);
            expanded.push((child, path, depth, child_token));
        }
        pending.extend(expanded.into_iter().rev());
    }
}

/// Whether a tree value is an element (`{kind:"element", …}`); other children are ignored.
pub fn is_element(value: &Value) -> bool {
    value.get("kind").and_then(|kind| kind.as_str()) == Some("element")
}

/// > Path of a child = `parentPath + "/" + fragment`, with `"[" + k + "]"` appended when it is
/// > the k-th (k ≥ 1) earlier sibling with the same fragment.
///
/// `earlier_same` is how many earlier siblings have the same fragment.
pub fn child_path(parent_path: &str, fragment: &str, earlier_same: usize) -> String {
    if earlier_same == 0 {
        format!("{parent_path}/{fragment}")
    } else {
        format!("{parent_path}/{fragment}[{earlier_same}]")
    }
}

/// > Depth-cap markers use path `parentPath + "/__maxdepth__" + index`.
pub fn max_depth_marker_path(parent_path: &str, index: usize) -> String {
    format!("{parent_path}/__maxdepth__{index}")
}

/// `tag#id` when the element has a non-empty string `id` (or `nodeId`) prop, else `tag`.
pub fn fragment(element: &Value) -> String {
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
fn assign_id(path: &str, used: &mut HashSet<u32>) -> u32 {
    let mut id = node_dom_id(path);
    if used.contains(&id) {
        for salt in 1..=ID_COLLISION_SALTS_MAX {
            id = node_dom_id(&format!("{path}\u{0}{salt}"));
            if !used.contains(&id) {
                break;
            }
        }
    }
    used.insert(id);
    id
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::engine::workflow::{load_dir, parse_workflow, Registry};
    use std::path::Path;

    fn examples() -> Registry {
        load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows")).unwrap()
    }

    fn json(value: &Value) -> serde_json::Value {
        serde_json::from_str(&simd_json::to_string(value).unwrap()).unwrap()
    }

    fn status(state: &str, attempt: i64) -> NodeStatus {
        NodeStatus {
            state: state.to_string(),
            attempt,
        }
    }

    // Goal: approve.toml renders the EVENTS.md §4.2 tags with static props, and the task index
    // carries state and attempt from `states` (pending/0 when absent).
    #[test]
    fn approve_renders_tree_and_task_index() {
        let registry = examples();
        let mut states = NodeStates::new();
        states.insert(("build".into(), 0), status("finished", 1));
        states.insert(("ship-it".into(), 0), status("waiting-approval", 1));
        // A state for another iteration must not leak into iteration 0.
        states.insert(("ship".into(), 3), status("failed", 2));
        let frame = render(&registry.workflows["approve"], &states, &HashMap::new());
        assert_eq!(
            json(&frame.tree),
            serde_json::json!({
                "kind": "element", "tag": "smithers:workflow", "props": {"name": "approve"},
                "children": [
                    {"kind": "element", "tag": "smithers:task",
                     "props": {"id": "build", "kind": "static"}, "children": []},
                    {"kind": "element", "tag": "smithers:task",
                     "props": {"id": "ship-it", "needsApproval": true, "summary": "Artifact built",
                               "title": "Ship it?"}, "children": []},
                    {"kind": "element", "tag": "smithers:task",
                     "props": {"id": "ship", "kind": "static"}, "children": []}
                ]
            })
        );
        assert_eq!(
            json(&frame.task_index),
            serde_json::json!([
                {"nodeId": "build", "ordinal": 0, "iteration": 0, "kind": "static", "maxAttempts": 1,
                 "state": "finished", "attempt": 1},
                {"nodeId": "ship-it", "ordinal": 1, "iteration": 0, "kind": "approval",
                 "state": "waiting-approval", "attempt": 1},
                {"nodeId": "ship", "ordinal": 2, "iteration": 0, "kind": "static", "maxAttempts": 1,
                 "state": "pending", "attempt": 0}
            ])
        );
    }

    // Goal: the serialization is pinned byte for byte (key order included), so frames hash the
    // same on every machine.
    #[test]
    fn hello_serializes_byte_exact() {
        let frame = render(
            &examples().workflows["hello"],
            &NodeStates::new(),
            &HashMap::new(),
        );
        assert_eq!(
            simd_json::to_string(&frame.tree).unwrap(),
            r#"{"kind":"element","tag":"smithers:workflow","props":{"name":"hello"},"children":[{"kind":"element","tag":"smithers:task","props":{"id":"greet","kind":"static"},"children":[]}]}"#
        );
        assert_eq!(
            simd_json::to_string(&frame.task_index).unwrap(),
            r#"[{"nodeId":"greet","ordinal":0,"iteration":0,"kind":"static","maxAttempts":1,"state":"pending","attempt":0}]"#
        );
    }

    // Goal: the same inputs give byte-identical output, whatever order the hash maps were
    // filled in (each HashMap has its own random seed).
    #[test]
    fn rendering_is_deterministic() {
        let registry = examples();
        let workflow = &registry.workflows["fanout-demo"];
        let entries = [
            (("fan-a".to_string(), 0), status("finished", 1)),
            (("fan-b".to_string(), 0), status("in-progress", 2)),
            (("tick".to_string(), 1), status("finished", 1)),
            (("tick".to_string(), 2), status("in-progress", 1)),
        ];
        let mut outputs = Vec::new();
        for round in 0..8 {
            let mut states = NodeStates::new();
            let mut ordered: Vec<_> = entries.to_vec();
            ordered.rotate_left(round % entries.len());
            states.extend(ordered);
            let loop_iterations =
                HashMap::from([("repeat".to_string(), 2), ("other".to_string(), 9)]);
            let frame = render(workflow, &states, &loop_iterations);
            outputs.push((
                simd_json::to_string(&frame.tree).unwrap(),
                simd_json::to_string(&frame.task_index).unwrap(),
            ));
        }
        assert!(outputs.windows(2).all(|pair| pair[0] == pair[1]));
    }

    // Goal: a loop's current iteration shows in the `smithers:ralph` props and in the index
    // entries of its body; parallel blocks keep their id.
    #[test]
    fn loop_iteration_shows_in_props_and_index() {
        let registry = examples();
        let mut states = NodeStates::new();
        states.insert(("tick".into(), 1), status("finished", 1));
        states.insert(("tick".into(), 2), status("in-progress", 3));
        let loop_iterations = HashMap::from([("repeat".to_string(), 2)]);
        let frame = render(
            &registry.workflows["fanout-demo"],
            &states,
            &loop_iterations,
        );
        let tree = json(&frame.tree);
        let task = |id: &str| serde_json::json!({"kind": "element", "tag": "smithers:task", "props": {"id": id, "kind": "static"}, "children": []});
        assert_eq!(
            tree["children"],
            serde_json::json!([
                {"kind": "element", "tag": "smithers:parallel", "props": {"id": "fanout"},
                 "children": [task("fan-a"), task("fan-b"), task("fan-c")]},
                {"kind": "element", "tag": "smithers:ralph",
                 "props": {"id": "repeat", "iteration": 2, "maxIterations": 3},
                 "children": [task("tick")]}
            ])
        );
        let index = json(&frame.task_index);
        assert_eq!(
            index[3],
            serde_json::json!({"nodeId": "tick", "ordinal": 3, "iteration": 2, "kind": "static",
                               "maxAttempts": 1, "state": "in-progress", "attempt": 3})
        );
        let ordinals: Vec<i64> = index
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| entry["ordinal"].as_i64().unwrap())
            .collect();
        assert_eq!(ordinals, [0, 1, 2, 3]);

        // Without an entry the loop is at iteration 0.
        let frame = render(&registry.workflows["fanout-demo"], &states, &HashMap::new());
        assert_eq!(json(&frame.tree)["children"][1]["props"]["iteration"], 0);
        assert_eq!(json(&frame.task_index)[3]["state"], "pending");
    }

    // Goal: the remaining node kinds render with their tags and props: command tasks (compute,
    // retries, maxAttempts, label), signals, timers, id-less containers and nested loops keyed
    // by `loop_iteration_key`.
    #[test]
    fn other_kinds_render() {
        let text = r#"
[[nodes]]
kind = "task"
id = "cmd"
label = "Run it"
run = ["true"]
retries = 2

[[nodes]]
kind = "signal"
id = "qa"
event = "qa-passed"
correlation = "input.ticket"

[[nodes]]
kind = "sequence"
  [[nodes.children]]
  kind = "timer"
  id = "short"
  duration = "30s"
  [[nodes.children]]
  kind = "timer"
  id = "later"
  until = "2026-11-25T09:30:00+01:30"

[[nodes]]
kind = "parallel"
max_concurrency = 2
  [[nodes.children]]
  kind = "loop"
  max_iterations = 4
    [[nodes.children.children]]
    kind = "signal"
    id = "inner"
"#;
        let workflow = parse_workflow(Path::new("kinds.toml"), text).unwrap();
        let mut states = NodeStates::new();
        states.insert(("inner".into(), 3), status("waiting-event", 0));
        let loop_iterations = HashMap::from([(loop_iteration_key("", 0), 3)]);
        assert_eq!(loop_iteration_key("", 0), "#loop0");
        assert_eq!(loop_iteration_key("named", 5), "named");
        let frame = render(&workflow, &states, &loop_iterations);
        assert_eq!(
            json(&frame.tree)["children"],
            serde_json::json!([
                {"kind": "element", "tag": "smithers:task",
                 "props": {"id": "cmd", "kind": "compute", "label": "Run it", "retries": 2}, "children": []},
                {"kind": "element", "tag": "smithers:wait-for-event",
                 "props": {"correlation": "input.ticket", "event": "qa-passed", "id": "qa"}, "children": []},
                {"kind": "element", "tag": "smithers:sequence", "props": {}, "children": [
                    {"kind": "element", "tag": "smithers:timer", "props": {"duration": "30s", "id": "short"}, "children": []},
                    {"kind": "element", "tag": "smithers:timer", "props": {"id": "later", "until": "2026-11-25T08:00:00.000Z"}, "children": []}
                ]},
                {"kind": "element", "tag": "smithers:parallel", "props": {"maxConcurrency": 2}, "children": [
                    {"kind": "element", "tag": "smithers:ralph", "props": {"iteration": 3, "maxIterations": 4}, "children": [
                        {"kind": "element", "tag": "smithers:wait-for-event", "props": {"event": "inner", "id": "inner"}, "children": []}
                    ]}
                ]}
            ])
        );
        assert_eq!(
            json(&frame.task_index),
            serde_json::json!([
                {"nodeId": "cmd", "ordinal": 0, "iteration": 0, "kind": "compute", "maxAttempts": 3, "state": "pending", "attempt": 0},
                {"nodeId": "qa", "ordinal": 1, "iteration": 0, "kind": "wait-for-event", "state": "pending", "attempt": 0},
                {"nodeId": "short", "ordinal": 2, "iteration": 0, "kind": "timer", "state": "pending", "attempt": 0},
                {"nodeId": "later", "ordinal": 3, "iteration": 0, "kind": "timer", "state": "pending", "attempt": 0},
                {"nodeId": "inner", "ordinal": 4, "iteration": 3, "kind": "wait-for-event", "state": "waiting-event", "attempt": 0}
            ])
        );
    }

    // Goal: FNV-1a over UTF-16 code units, masked to 31 bits. Method: values worked out by hand
    // ("" is the offset basis; "a" is the published FNV-1a 32 test vector 0xE40C292C) or with an
    // independent implementation (Python over `encode("utf-16-le")`), including a character
    // outside the BMP, which counts as two code units.
    #[test]
    fn node_dom_id_matches_hand_computed_values() {
        assert_eq!(node_dom_id(""), 0x811C_9DC5 & 0x7FFF_FFFF);
        assert_eq!(node_dom_id(""), 18_652_613);
        assert_eq!(node_dom_id("a"), 0xE40C_292C & 0x7FFF_FFFF);
        assert_eq!(node_dom_id("a"), 1_678_518_572);
        assert_eq!(node_dom_id("smithers:workflow"), 1_753_301_139);
        assert_eq!(
            node_dom_id("smithers:workflow/smithers:task#greet"),
            1_842_096_210
        );
        assert_eq!(node_dom_id("é"), 1_812_687_940);
        assert_eq!(node_dom_id("😀"), 1_261_552_824);
    }

    // Goal: paths follow the fragment and sibling-index rules, and ids are assigned root first,
    // then a node's children when it is expanded, depth-first from the first child.
    #[test]
    fn assign_ids_follows_path_and_order_rules() {
        let tree: Value = simd_json::to_owned_value(
            &mut br#"{"kind":"element","tag":"smithers:workflow","props":{"name":"w"},"children":[
                {"kind":"element","tag":"smithers:sequence","props":{},"children":[
                    {"kind":"element","tag":"smithers:task","props":{"id":"a"},"children":[]},
                    {"kind":"text","text":"ignored"},
                    {"kind":"element","tag":"smithers:task","props":{"nodeId":"b"},"children":[]}]},
                "plain text is ignored too",
                {"kind":"element","tag":"smithers:sequence","props":{"id":""},"children":[
                    {"kind":"element","tag":"smithers:task","props":{"id":"a"},"children":[]},
                    {"kind":"element","tag":"smithers:task","props":{"id":"a"},"children":[]}]},
                {"kind":"element","tag":"smithers:parallel","props":{"id":"p"},"children":[]}]}"#
                .to_vec(),
        )
        .unwrap();
        let paths: Vec<String> = assign_ids(&tree)
            .into_iter()
            .map(|(path, _)| path)
            .collect();
        assert_eq!(
            paths,
            [
                "smithers:workflow",
                "smithers:workflow/smithers:sequence",
                "smithers:workflow/smithers:sequence[1]",
                "smithers:workflow/smithers:parallel#p",
                "smithers:workflow/smithers:sequence/smithers:task#a",
                "smithers:workflow/smithers:sequence/smithers:task#b",
                "smithers:workflow/smithers:sequence[1]/smithers:task#a",
                "smithers:workflow/smithers:sequence[1]/smithers:task#a[1]",
            ]
        );
        for (path, id) in assign_ids(&tree) {
            assert_eq!(id, node_dom_id(&path), "{path}");
        }
        // A rendered frame gives the same ids every time.
        let frame = render(
            &examples().workflows["hello"],
            &NodeStates::new(),
            &HashMap::new(),
        );
        assert_eq!(
            assign_ids(&frame.tree),
            [
                ("smithers:workflow".to_string(), 1_753_301_139),
                (
                    "smithers:workflow/smithers:task#greet".to_string(),
                    1_842_096_210
                ),
            ]
        );
        assert!(assign_ids(&Value::from("not an element")).is_empty());
    }

    // Goal: a colliding id is rehashed with `"\u0000" + salt`. Method: two task ids whose paths
    // collide in 31 bits (found by a birthday search in Python).
    #[test]
    fn assign_ids_rehashes_collisions() {
        let first = "smithers:workflow/smithers:task#t132789";
        let second = "smithers:workflow/smithers:task#t729192";
        assert_eq!(node_dom_id(first), 1_668_139_851);
        assert_eq!(node_dom_id(second), 1_668_139_851);
        let tree: Value = simd_json::to_owned_value(
            &mut br#"{"kind":"element","tag":"smithers:workflow","props":{},"children":[
                {"kind":"element","tag":"smithers:task","props":{"id":"t132789"},"children":[]},
                {"kind":"element","tag":"smithers:task","props":{"id":"t729192"},"children":[]}]}"#
                .to_vec(),
        )
        .unwrap();
        let assigned = assign_ids(&tree);
        assert_eq!(assigned[1], (first.to_string(), 1_668_139_851));
        assert_eq!(assigned[2], (second.to_string(), 1_652_569_952));
        assert_eq!(node_dom_id(&format!("{second}\u{0}1")), 1_652_569_952);
    }

    // Goal: children deeper than 256 become `__maxdepth__` markers and are not expanded; a deep
    // tree does not exhaust the stack.
    #[test]
    fn assign_ids_caps_depth() {
        let mut tree = object(vec![
            ("kind", Value::from("element")),
            ("tag", Value::from("smithers:sequence")),
            ("props", object(vec![])),
            ("children", Value::Array(Box::default())),
        ]);
        for _ in 0..300 {
            tree = object(vec![
                ("kind", Value::from("element")),
                ("tag", Value::from("smithers:sequence")),
                ("props", object(vec![])),
                ("children", Value::Array(Box::new(vec![tree]))),
            ]);
        }
        let assigned = assign_ids(&tree);
        // The root (depth 0), depths 1..=256, then one marker for the child at depth 257.
        assert_eq!(assigned.len(), 258);
        let (marker_path, _) = assigned.last().unwrap();
        let expected_parent = std::iter::repeat_n("smithers:sequence", 257)
            .collect::<Vec<_>>()
            .join("/");
        assert_eq!(marker_path, &format!("{expected_parent}/__maxdepth__0"));
        let ids: HashSet<u32> = assigned.iter().map(|(_, id)| *id).collect();
        assert_eq!(ids.len(), assigned.len(), "ids are unique within a tree");
    }
}
