//! DevTools snapshots (EVENTS.md §4.1–4.3): a frame's element tree and task index become a tree
//! of typed nodes with stable ids, props parsed and sorted, task info enriched from the attempts;
//! and that tree becomes bytes in the wire's key order.
//!
//! Pure: no IO, no clock. The same frame gives the same snapshot and the same bytes, which is
//! what lets a snapshot be built once per (run, frame) and shared by every subscriber.
//!
//! Node ids come from `engine::render::walk_ids`, the walk behind `assign_ids` that the renderer's
//! own tests pin, so there is one implementation of EVENTS.md §4.3; the snapshot is built in the
//! same pass.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::json::{props_of, sanitize, write_i64, write_str, Budget, Json};
use crate::engine::render::{is_element, walk_ids, IdTarget};
use crate::rpc::Value;
use crate::storage::{AttemptRow, FrameRow};
use simd_json::prelude::*;
use std::collections::HashMap;

/// `version` of every snapshot, delta and event (EVENTS.md §4.1).
pub const DEVTOOLS_VERSION: u32 = 1;
/// `task.prompt` keeps this many characters, then `…`.
pub const TASK_PROMPT_CHARS_MAX: usize = 4_000;

/// One node of a snapshot. Serialized as `{id, type, name, props, task?, children, depth}`.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub id: u32,
    pub node_type: &'static str,
    pub name: String,
    /// Always an object.
    pub props: Json,
    pub task: Option<TaskInfo>,
    pub children: Vec<Node>,
    pub depth: u32,
}

/// `task` of a task node (EVENTS.md §4.1); absent fields are omitted on the wire. Field order is
/// the wire order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskInfo {
    pub node_id: Option<String>,
    pub kind: &'static str,
    pub agent: Option<String>,
    pub agent_summary: Option<Json>,
    pub max_attempts: Option<Json>,
    pub label: Option<String>,
    pub output_table_name: Option<String>,
    pub iteration: Option<i64>,
    pub state: Option<String>,
    pub attempt: Option<i64>,
    pub agent_ran: Option<AgentRan>,
    pub prompt: Option<String>,
}

/// `task.agentRan`: what the newest attempt recorded about its agent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AgentRan {
    pub agent_id: Option<String>,
    pub engine: Option<String>,
    pub model: Option<String>,
}

/// A snapshot of one frame of one run (`seq` always equals `frame_no`; 0 is "no frames").
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub run_id: String,
    pub frame_no: i64,
    pub root: Node,
}

/// An attempt's metadata, for `agentRan` and `prompt` (EVENTS.md §4.2 step 5).
#[derive(Clone, Debug, PartialEq)]
pub struct AttemptMeta {
    pub node_id: String,
    pub iteration: i64,
    pub attempt: i64,
    pub started_at_ms: i64,
    pub meta: Value,
}

/// Everything a snapshot of one frame is built from.
#[derive(Clone, Debug, PartialEq)]
pub struct FrameSource {
    pub run_id: String,
    pub frame_no: i64,
    pub created_at_ms: i64,
    /// The element tree (`{kind:"element", tag, props, children}`).
    pub tree: Value,
    /// `[{nodeId, ordinal, iteration, kind, agent?, maxAttempts?, state, attempt}]`.
    pub task_index: Value,
    /// Attempts of the run that recorded an agent, started no later than the frame.
    pub attempts: Vec<AttemptMeta>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// Stored frame data that does not parse or whose root is not an element.
    #[error("Frame {frame_no} of run {run_id} is malformed: {reason}")]
    MalformedFrame {
        run_id: String,
        frame_no: i64,
        reason: &'static str,
    },
}

/// An attempt's metadata when it records an agent (`agentEngine`, `agentModel`, `agentId`,
/// `prompt`), the only keys a snapshot reads; other metadata (waits, timers) is not parsed.
pub fn agent_meta(meta_json: &str) -> Option<Value> {
    let mentions_agent = [
        "\"agentEngine\"",
        "\"agentModel\"",
        "\"agentId\"",
        "\"prompt\"",
    ]
    .iter()
    .any(|key| meta_json.contains(key));
    if !mentions_agent {
        return None;
    }
    simd_json::to_owned_value(&mut meta_json.as_bytes().to_vec()).ok()
}

impl FrameSource {
    /// A source from stored rows: the frame, and the run's attempts (those with metadata that
    /// started no later than the frame are kept).
    pub fn from_rows(
        frame: &FrameRow,
        attempts: &[AttemptRow],
    ) -> Result<FrameSource, SnapshotError> {
        let malformed = |reason| SnapshotError::MalformedFrame {
            run_id: frame.run_id.clone(),
            frame_no: frame.frame_no,
            reason,
        };
        let parse = |text: &str| simd_json::to_owned_value(&mut text.as_bytes().to_vec());
        let tree = parse(&frame.xml_json).map_err(|_| malformed("xml_json is not JSON"))?;
        let task_index =
            parse(&frame.task_index_json).map_err(|_| malformed("task_index_json is not JSON"))?;
        let attempts = attempts
            .iter()
            .filter(|attempt| attempt.started_at_ms <= frame.created_at_ms)
            .filter_map(|attempt| {
                let meta = agent_meta(attempt.meta_json.as_deref()?)?;
                Some(AttemptMeta {
                    node_id: attempt.node_id.clone(),
                    iteration: attempt.iteration,
                    attempt: attempt.attempt,
                    started_at_ms: attempt.started_at_ms,
                    meta,
                })
            })
            .collect();
        Ok(FrameSource {
            run_id: frame.run_id.clone(),
            frame_no: frame.frame_no,
            created_at_ms: frame.created_at_ms,
            tree,
            task_index,
            attempts,
        })
    }
}

/// > `frameNo: 0`/`seq: 0` means "no frames yet" and comes with the empty root
/// > `{"id":0,"type":"workflow","name":"(empty)","props":{},"children":[],"depth":0}`.
pub fn empty(run_id: &str) -> Snapshot {
    Snapshot {
        run_id: run_id.to_string(),
        frame_no: 0,
        root: Node {
            id: 0,
            node_type: "workflow",
            name: "(empty)".into(),
            props: Json::empty_object(),
            task: None,
            children: Vec::new(),
            depth: 0,
        },
    }
}

/// > Type from tag (EVENTS.md §4.2 step 1); anything else → unknown.
pub fn node_type(tag: &str) -> &'static str {
    match tag {
        "smithers:workflow" => "workflow",
        "smithers:task" => "task",
        "smithers:sequence" => "sequence",
        "smithers:parallel" => "parallel",
        "smithers:merge-queue" => "merge-queue",
        "smithers:branch" => "branch",
        "smithers:ralph" => "loop",
        "smithers:worktree" => "worktree",
        "smithers:approval" => "approval",
        "smithers:timer" => "timer",
        "smithers:subflow" => "subflow",
        "smithers:wait-for-event" => "wait-for-event",
        "smithers:saga" => "saga",
        "smithers:try-catch-finally" => "try-catch",
        _ => "unknown",
    }
}

/// Builds the snapshot of a frame (EVENTS.md §4.2).
pub fn build(source: &FrameSource) -> Result<Snapshot, SnapshotError> {
    let malformed = || SnapshotError::MalformedFrame {
        run_id: source.run_id.clone(),
        frame_no: source.frame_no,
        reason: "the tree's root is not an element",
    };
    if !is_element(&source.tree) {
        return Err(malformed());
    }
    let context = Context {
        task_index: task_index_by_node(&source.task_index),
        source,
    };
    // Nodes are made as `walk_ids` assigns their ids (EVENTS.md §4.3 order, which decides
    // collisions) into an arena, each remembering its children, then assembled into a tree.
    let mut arena: Vec<Option<(Node, Vec<usize>)>> = Vec::new();
    walk_ids(
        &source.tree,
        |parent: Option<&usize>, target, _, id, depth| {
            let node = match target {
                IdTarget::Element(element) => context.node(element, id, depth),
                IdTarget::MaxDepth { .. } => max_depth_marker(id, depth),
            };
            let index = arena.len();
            arena.push(Some((node, Vec::new())));
            if let Some(Some((_, children))) = parent.and_then(|parent| arena.get_mut(*parent)) {
                children.push(index);
            }
            index
        },
    );
    let root = assemble(&mut arena, 0).ok_or_else(malformed)?;
    Ok(Snapshot {
        run_id: source.run_id.clone(),
        frame_no: source.frame_no,
        root,
    })
}

/// Moves node `index` and its subtree out of the arena. Recursion is bounded by the depth cap.
fn assemble(arena: &mut [Option<(Node, Vec<usize>)>], index: usize) -> Option<Node> {
    let (mut node, children) = arena.get_mut(index)?.take()?;
    node.children = children
        .into_iter()
        .filter_map(|child| assemble(arena, child))
        .collect();
    Some(node)
}

/// > A child that would sit deeper is replaced by `{type:"unknown", name:"[MaxDepth]",
/// > props:{value:"[MaxDepth]"}, children:[]}`.
fn max_depth_marker(id: u32, depth: usize) -> Node {
    Node {
        id,
        node_type: "unknown",
        name: "[MaxDepth]".into(),
        props: Json::object(vec![("value".into(), Json::String("[MaxDepth]".into()))]),
        task: None,
        children: Vec::new(),
        depth: depth as u32,
    }
}

struct Context<'a> {
    task_index: HashMap<&'a str, &'a Value>,
    source: &'a FrameSource,
}

/// The first task index entry of each node id.
fn task_index_by_node(index: &Value) -> HashMap<&str, &Value> {
    let mut by_node = HashMap::new();
    for entry in index.as_array().into_iter().flatten() {
        if let Some(node_id) = entry.get("nodeId").and_then(|v| v.as_str()) {
            by_node.entry(node_id).or_insert(entry);
        }
    }
    by_node
}

impl Context<'_> {
    /// The node of `element` (children are added by `build`).
    fn node(&self, element: &Value, id: u32, depth: usize) -> Node {
        let tag = element.get("tag").and_then(|t| t.as_str()).unwrap_or("");
        let node_type = node_type(tag);
        let raw_props = element.get("props");
        let raw_string = |name: &str| raw_props.and_then(|p| p.get(name)).and_then(|v| v.as_str());
        let bare_tag = tag.strip_prefix("smithers:").unwrap_or(tag);
        let name = match raw_string("name") {
            Some(name) if node_type == "workflow" => name,
            _ => bare_tag,
        };
        let name = if name.is_empty() { "unknown" } else { name };
        Node {
            id,
            node_type,
            name: name.to_string(),
            props: props_of(raw_props),
            task: (node_type == "task").then(|| self.task_info(raw_props)),
            children: Vec::new(),
            depth: depth as u32,
        }
    }

    /// EVENTS.md §4.2 steps 3 and 5, from the raw (string) props.
    fn task_info(&self, raw_props: Option<&Value>) -> TaskInfo {
        let raw = |name: &str| raw_props.and_then(|p| p.get(name));
        let raw_string = |name: &str| raw(name).and_then(|v| v.as_str());
        let declared_id = raw_string("id")
            .filter(|id| !id.is_empty())
            .or_else(|| raw_string("nodeId").filter(|id| !id.is_empty()));
        // > a trailing `::<n>` is stripped and `n` becomes the iteration unless an `iteration`
        // > prop exists; else the task index iteration.
        let (node_id, suffix_iteration) = match declared_id {
            Some(id) => match split_iteration_suffix(id) {
                Some((base, iteration)) => (Some(base), Some(iteration)),
                None => (Some(id), None),
            },
            None => (None, None),
        };
        let entry = node_id.and_then(|id| self.task_index.get(id).copied());
        let entry_field = |name: &str| entry.and_then(|e| e.get(name));
        let iteration = raw("iteration")
            .and_then(integer_of)
            .or(suffix_iteration)
            .or_else(|| entry_field("iteration").and_then(integer_of));
        let kinds = [
            raw_string("__smithersKind"),
            raw_string("kind"),
            entry_field("kind").and_then(|v| v.as_str()),
        ];
        let any_kind = |wanted: &str| kinds.contains(&Some(wanted));
        let needs_approval = match raw("needsApproval") {
            Some(Value::Static(simd_json::StaticNode::Bool(flag))) => *flag,
            Some(Value::String(text)) => text == "true" || text == "1",
            Some(other) => other.cast_f64() == Some(1.0),
            None => false,
        };
        let kind = if any_kind("human") {
            "human"
        } else if needs_approval {
            "approval"
        } else if any_kind("agent") {
            "agent"
        } else if any_kind("compute") {
            "compute"
        } else {
            "static"
        };
        let agent_summary = entry_field("agentSummary")
            .filter(|v| v.is_object())
            .map(|v| sanitize(v, 1, &mut Budget::default()));
        let max_attempts = entry_field("maxAttempts")
            .and_then(|v| v.cast_f64())
            .filter(|n| n.is_finite())
            .map(Json::number);
        // The task index records each node's row as of the frame (state and last attempt).
        let state = entry_field("state")
            .and_then(|v| v.as_str())
            .map(str::to_string);
        let attempt = state
            .as_ref()
            .map(|_| entry_field("attempt").and_then(integer_of).unwrap_or(0));
        let (agent_ran, prompt) = match (node_id, iteration) {
            (Some(node_id), Some(iteration)) => self.agent_of(node_id, iteration),
            _ => (None, None),
        };
        TaskInfo {
            node_id: node_id.map(str::to_string),
            kind,
            agent: raw_string("agent").map(str::to_string),
            agent_summary,
            max_attempts,
            label: raw_string("label").map(str::to_string),
            output_table_name: raw_string("outputTableName")
                .or_else(|| raw_string("output"))
                .map(str::to_string),
            iteration,
            state,
            attempt,
            agent_ran,
            prompt,
        }
    }

    /// > `agentRan`/`prompt` from the newest attempt (per node id and the task's iteration) that
    /// > started no later than the frame's creation time.
    fn agent_of(&self, node_id: &str, iteration: i64) -> (Option<AgentRan>, Option<String>) {
        let newest = self
            .source
            .attempts
            .iter()
            .filter(|a| a.node_id == node_id && a.iteration == iteration)
            .filter(|a| a.started_at_ms <= self.source.created_at_ms)
            .max_by_key(|a| (a.started_at_ms, a.attempt));
        let Some(newest) = newest else {
            return (None, None);
        };
        let text = |key: &str| {
            newest
                .meta
                .get(key)
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        let agent_ran = AgentRan {
            agent_id: text("agentId"),
            engine: text("agentEngine"),
            model: text("agentModel"),
        };
        let has_agent =
            agent_ran.agent_id.is_some() || agent_ran.engine.is_some() || agent_ran.model.is_some();
        let prompt = text("prompt").map(|prompt| clip_prompt(&prompt));
        (has_agent.then_some(agent_ran), prompt)
    }
}

/// `"build::3"` → `("build", 3)`.
fn split_iteration_suffix(id: &str) -> Option<(&str, i64)> {
    let (base, digits) = id.rsplit_once("::")?;
    if base.is_empty() || digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((base, digits.parse().ok()?))
}

/// An integral JSON number or a string of digits.
fn integer_of(value: &Value) -> Option<i64> {
    if let Some(text) = value.as_str() {
        return text.trim().parse().ok();
    }
    value.as_i64().or_else(|| {
        value
            .cast_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
            .map(|f| f as i64)
    })
}

fn clip_prompt(prompt: &str) -> String {
    match prompt.char_indices().nth(TASK_PROMPT_CHARS_MAX) {
        Some((byte_index, _)) => {
            let mut clipped = prompt.get(..byte_index).unwrap_or_default().to_string();
            clipped.push('…');
            clipped
        }
        None => prompt.to_string(),
    }
}

impl Node {
    /// `{id, type, name, props, task?, children, depth}` in that order.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(br#"{"id":"#);
        write_i64(out, i64::from(self.id));
        out.extend_from_slice(br#","type":"#);
        write_str(out, self.node_type);
        out.extend_from_slice(br#","name":"#);
        write_str(out, &self.name);
        out.extend_from_slice(br#","props":"#);
        self.props.write(out);
        if let Some(task) = &self.task {
            out.extend_from_slice(br#","task":"#);
            task.write(out);
        }
        out.extend_from_slice(br#","children":["#);
        for (index, child) in self.children.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            child.write(out);
        }
        out.extend_from_slice(br#"],"depth":"#);
        write_i64(out, i64::from(self.depth));
        out.push(b'}');
    }

    /// Nodes in the subtree, this one included.
    pub fn count(&self) -> usize {
        1 + self.children.iter().map(Node::count).sum::<usize>()
    }
}

impl TaskInfo {
    pub fn write(&self, out: &mut Vec<u8>) {
        let mut fields = FieldWriter::new(out);
        if let Some(node_id) = &self.node_id {
            fields.string("nodeId", node_id);
        }
        fields.string("kind", self.kind);
        if let Some(agent) = &self.agent {
            fields.string("agent", agent);
        }
        if let Some(summary) = &self.agent_summary {
            fields.json("agentSummary", summary);
        }
        if let Some(max_attempts) = &self.max_attempts {
            fields.json("maxAttempts", max_attempts);
        }
        if let Some(label) = &self.label {
            fields.string("label", label);
        }
        if let Some(table) = &self.output_table_name {
            fields.string("outputTableName", table);
        }
        if let Some(iteration) = self.iteration {
            fields.int("iteration", iteration);
        }
        if let Some(state) = &self.state {
            fields.string("state", state);
        }
        if let Some(attempt) = self.attempt {
            fields.int("attempt", attempt);
        }
        if let Some(agent_ran) = &self.agent_ran {
            fields.key("agentRan");
            let out = &mut *fields.out;
            let mut inner = FieldWriter::new(out);
            if let Some(agent_id) = &agent_ran.agent_id {
                inner.string("agentId", agent_id);
            }
            if let Some(engine) = &agent_ran.engine {
                inner.string("engine", engine);
            }
            if let Some(model) = &agent_ran.model {
                inner.string("model", model);
            }
            inner.finish();
        }
        if let Some(prompt) = &self.prompt {
            fields.string("prompt", prompt);
        }
        fields.finish();
    }
}

/// Writes `{"k":v,…}` one field at a time.
struct FieldWriter<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> FieldWriter<'a> {
    fn new(out: &'a mut Vec<u8>) -> FieldWriter<'a> {
        out.push(b'{');
        FieldWriter { out, first: true }
    }

    fn key(&mut self, key: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        write_str(self.out, key);
        self.out.push(b':');
    }

    fn string(&mut self, key: &str, value: &str) {
        self.key(key);
        write_str(self.out, value);
    }

    fn int(&mut self, key: &str, value: i64) {
        self.key(key);
        write_i64(self.out, value);
    }

    fn json(&mut self, key: &str, value: &Json) {
        self.key(key);
        value.write(self.out);
    }

    fn finish(self) {
        self.out.push(b'}');
    }
}

impl Snapshot {
    /// The snapshot object `{version, runId, frameNo, seq, root, runState?}`.
    pub fn write(&self, out: &mut Vec<u8>, run_state: Option<&Value>) {
        out.extend_from_slice(br#"{"version":1,"runId":"#);
        write_str(out, &self.run_id);
        out.extend_from_slice(br#","frameNo":"#);
        write_i64(out, self.frame_no);
        out.extend_from_slice(br#","seq":"#);
        write_i64(out, self.frame_no);
        out.extend_from_slice(br#","root":"#);
        self.root.write(out);
        if let Some(run_state) = run_state {
            out.extend_from_slice(br#","runState":"#);
            crate::rpc::frame::write_value(out, run_state);
        }
        out.push(b'}');
    }

    /// The DevTools event `{version, kind:"snapshot", snapshot}`.
    pub fn write_event(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(br#"{"version":1,"kind":"snapshot","snapshot":"#);
        self.write(out, None);
        out.push(b'}');
    }

    pub fn to_event_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        self.write_event(&mut out);
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::engine::render::{assign_ids, node_dom_id, render, NodeStates, NodeStatus};
    use crate::engine::workflow::load_dir;
    use std::path::Path;

    fn value(text: &str) -> Value {
        simd_json::to_owned_value(&mut text.as_bytes().to_vec()).unwrap()
    }

    pub fn source(tree: &str, index: &str) -> FrameSource {
        FrameSource {
            run_id: "r1".into(),
            frame_no: 7,
            created_at_ms: 1_000,
            tree: value(tree),
            task_index: value(index),
            attempts: Vec::new(),
        }
    }

    fn json_of(snapshot: &Snapshot) -> serde_json::Value {
        let mut out = Vec::new();
        snapshot.write(&mut out, None);
        serde_json::from_slice(&out).unwrap()
    }

    // Goal: the approve workflow's rendered frame becomes the snapshot EVENTS.md §4.1 shows:
    // ids of §4.3, types and names from tags, props sorted, task info from the props and the
    // task index (state and attempt as of the frame). The bytes are pinned, key order included.
    #[test]
    fn rendered_frame_becomes_the_wire_snapshot() {
        let registry = load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows")).unwrap();
        let mut states = NodeStates::new();
        states.insert(
            ("build".into(), 0),
            NodeStatus {
                state: "finished".into(),
                attempt: 1,
            },
        );
        let frame = render(&registry.workflows["approve"], &states, &HashMap::new());
        let source = FrameSource {
            run_id: "r1".into(),
            frame_no: 3,
            created_at_ms: 5,
            tree: frame.tree,
            task_index: frame.task_index,
            attempts: Vec::new(),
        };
        let snapshot = build(&source).unwrap();
        let root_id = node_dom_id("smithers:workflow");
        let build_id = node_dom_id("smithers:workflow/smithers:task#build");
        let gate_id = node_dom_id("smithers:workflow/smithers:task#ship-it");
        let ship_id = node_dom_id("smithers:workflow/smithers:task#ship");
        let mut out = Vec::new();
        snapshot.write(&mut out, None);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!(
                concat!(
                    r#"{{"version":1,"runId":"r1","frameNo":3,"seq":3,"root":{{"id":{},"type":"workflow","name":"approve","props":{{"name":"approve"}},"children":["#,
                    r#"{{"id":{},"type":"task","name":"task","props":{{"id":"build","kind":"static"}},"task":{{"nodeId":"build","kind":"static","maxAttempts":1,"iteration":0,"state":"finished","attempt":1}},"children":[],"depth":1}},"#,
                    r#"{{"id":{},"type":"task","name":"task","props":{{"id":"ship-it","needsApproval":true,"summary":"Artifact built","title":"Ship it?"}},"task":{{"nodeId":"ship-it","kind":"approval","iteration":0,"state":"pending","attempt":0}},"children":[],"depth":1}},"#,
                    r#"{{"id":{},"type":"task","name":"task","props":{{"id":"ship","kind":"static"}},"task":{{"nodeId":"ship","kind":"static","maxAttempts":1,"iteration":0,"state":"pending","attempt":0}},"children":[],"depth":1}}"#,
                    r#"],"depth":0}}}}"#
                ),
                root_id, build_id, gate_id, ship_id
            )
        );
    }

    // Goal: every tag of EVENTS.md §4.2 step 1 maps to its type, anything else is unknown; names
    // follow the workflow-root and tag rules.
    #[test]
    fn types_and_names_follow_the_tag() {
        let tags = [
            ("smithers:workflow", "workflow"),
            ("smithers:task", "task"),
            ("smithers:sequence", "sequence"),
            ("smithers:parallel", "parallel"),
            ("smithers:merge-queue", "merge-queue"),
            ("smithers:branch", "branch"),
            ("smithers:ralph", "loop"),
            ("smithers:worktree", "worktree"),
            ("smithers:approval", "approval"),
            ("smithers:timer", "timer"),
            ("smithers:subflow", "subflow"),
            ("smithers:wait-for-event", "wait-for-event"),
            ("smithers:saga", "saga"),
            ("smithers:try-catch-finally", "try-catch"),
            ("smithers:fragment", "unknown"),
            ("div", "unknown"),
        ];
        for (tag, expected) in tags {
            assert_eq!(node_type(tag), expected, "{tag}");
        }
        let snapshot = build(&source(
            r#"{"kind":"element","tag":"smithers:workflow","props":{"name":5},"children":[
                {"kind":"element","tag":"smithers:ralph","props":{"name":"x"},"children":[]},
                {"kind":"element","tag":"","props":{},"children":[]},
                {"kind":"element","tag":"custom","props":{},"children":[]}]}"#,
            "[]",
        ))
        .unwrap();
        let names: Vec<&str> = snapshot
            .root
            .children
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        // A non-string name on the root falls back to the tag.
        assert_eq!(snapshot.root.name, "workflow");
        assert_eq!(names, ["ralph", "unknown", "custom"]);
        assert_eq!(snapshot.root.children[0].node_type, "loop");
    }

    // Goal: task info rules of step 3: nodeId from `id` or `nodeId`, the `::<n>` suffix and the
    // `iteration` prop, kind precedence, label/outputTableName/agent props, index fields; and
    // step 5: agentRan and a clipped prompt from the newest attempt started by the frame's time.
    #[test]
    fn task_info_rules() {
        let mut source = source(
            r#"{"kind":"element","tag":"smithers:workflow","props":{},"children":[
              {"kind":"element","tag":"smithers:task","props":{"nodeId":"a::3","label":"A","output":"out_a","agent":"claude"},"children":[]},
              {"kind":"element","tag":"smithers:task","props":{"id":"b::3","iteration":"5","kind":"human","needsApproval":"true"},"children":[]},
              {"kind":"element","tag":"smithers:task","props":{"id":"c","needsApproval":"1","outputTableName":"t","output":"ignored"},"children":[]},
              {"kind":"element","tag":"smithers:task","props":{"id":"d","__smithersKind":"agent"},"children":[]},
              {"kind":"element","tag":"smithers:task","props":{},"children":[]}]}"#,
            r#"[{"nodeId":"a","iteration":9,"kind":"compute","maxAttempts":3,"agentSummary":{"model":"m","label":"L"},"state":"in-progress","attempt":2},
                {"nodeId":"c","iteration":1,"kind":"static"},
                {"nodeId":"d","iteration":0,"kind":"static","state":"finished","attempt":null}]"#,
        );
        let long_prompt = "p".repeat(TASK_PROMPT_CHARS_MAX + 10);
        let meta = |engine: &str| {
            value(&format!(
                r#"{{"agentEngine":"{engine}","agentModel":"m1","agentId":"ag","prompt":"{long_prompt}"}}"#
            ))
        };
        source.attempts = vec![
            AttemptMeta {
                node_id: "a".into(),
                iteration: 3,
                attempt: 1,
                started_at_ms: 10,
                meta: meta("old"),
            },
            AttemptMeta {
                node_id: "a".into(),
                iteration: 3,
                attempt: 2,
                started_at_ms: 20,
                meta: meta("new"),
            },
            // Started after the frame: not this frame's agent.
            AttemptMeta {
                node_id: "a".into(),
                iteration: 3,
                attempt: 3,
                started_at_ms: 2_000,
                meta: meta("late"),
            },
            // Another iteration.
            AttemptMeta {
                node_id: "a".into(),
                iteration: 9,
                attempt: 1,
                started_at_ms: 30,
                meta: meta("other"),
            },
        ];
        let snapshot = build(&source).unwrap();
        let tasks: Vec<serde_json::Value> = json_of(&snapshot)["root"]["children"]
            .as_array()
            .unwrap()
            .iter()
            .map(|child| child["task"].clone())
            .collect();
        let clipped = format!("{}…", "p".repeat(TASK_PROMPT_CHARS_MAX));
        assert_eq!(
            tasks[0],
            serde_json::json!({"nodeId": "a", "kind": "compute", "agent": "claude",
                "agentSummary": {"label": "L", "model": "m"}, "maxAttempts": 3, "label": "A",
                "outputTableName": "out_a", "iteration": 3, "state": "in-progress", "attempt": 2,
                "agentRan": {"agentId": "ag", "engine": "new", "model": "m1"}, "prompt": clipped})
        );
        assert_eq!(
            tasks[1],
            serde_json::json!({"nodeId": "b", "kind": "human", "iteration": 5})
        );
        assert_eq!(
            tasks[2],
            serde_json::json!({"nodeId": "c", "kind": "approval", "outputTableName": "t", "iteration": 1})
        );
        assert_eq!(
            tasks[3],
            serde_json::json!({"nodeId": "d", "kind": "agent", "iteration": 0, "state": "finished", "attempt": 0})
        );
        assert_eq!(tasks[4], serde_json::json!({"kind": "static"}));
        // Key order on the wire: nodeId first, prompt last.
        let mut out = Vec::new();
        snapshot.root.children[0]
            .task
            .as_ref()
            .unwrap()
            .write(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with(r#"{"nodeId":"a","kind":"compute","agent":"claude","agentSummary":"#),
            "{text}"
        );
        assert!(
            text.contains(r#""agentRan":{"agentId":"ag","engine":"new","model":"m1"},"prompt":"#),
            "{text}"
        );
    }

    // Goal: ids are those of `assign_ids` for every node (the same algorithm, one
    // implementation), sibling duplicates get `[k]`, text children are skipped.
    #[test]
    fn ids_match_assign_ids() {
        let source = source(
            r#"{"kind":"element","tag":"smithers:workflow","props":{"name":"w"},"children":[
                {"kind":"element","tag":"smithers:sequence","props":{},"children":[
                    {"kind":"element","tag":"smithers:task","props":{"id":"a"},"children":[]},
                    {"kind":"text","text":"x"},
                    {"kind":"element","tag":"smithers:task","props":{"id":"a"},"children":[]}]},
                {"kind":"element","tag":"smithers:sequence","props":{},"children":[]}]}"#,
            "[]",
        );
        let snapshot = build(&source).unwrap();
        let expected: HashMap<String, u32> = assign_ids(&source.tree).into_iter().collect();
        let mut ids = Vec::new();
        fn walk(node: &Node, out: &mut Vec<u32>) {
            out.push(node.id);
            node.children.iter().for_each(|c| walk(c, out));
        }
        walk(&snapshot.root, &mut ids);
        let mut expected_ids: Vec<u32> = expected.values().copied().collect();
        expected_ids.sort();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(sorted, expected_ids);
        assert_eq!(
            snapshot.root.children[0].children[1].id,
            expected["smithers:workflow/smithers:sequence/smithers:task#a[1]"]
        );
        assert_eq!(snapshot.root.children[0].children.len(), 2);
    }

    // Goal: a chain deeper than 256 ends in one `[MaxDepth]` marker at depth 257 with the marker
    // path's id, and nothing below it.
    #[test]
    fn depth_cap_makes_a_marker() {
        let mut tree = String::from(
            r#"{"kind":"element","tag":"smithers:task","props":{"id":"leaf"},"children":[]}"#,
        );
        for _ in 0..300 {
            tree = format!(
                r#"{{"kind":"element","tag":"smithers:sequence","props":{{}},"children":[{tree}]}}"#
            );
        }
        let source = source(&tree, "[]");
        let snapshot = build(&source).unwrap();
        let mut node = &snapshot.root;
        let mut path = String::from("smithers:sequence");
        while node.depth < 256 {
            node = &node.children[0];
            path.push_str("/smithers:sequence");
        }
        assert_eq!(node.children.len(), 1);
        let marker = &node.children[0];
        assert_eq!(marker.depth, 257);
        assert_eq!(marker.node_type, "unknown");
        assert_eq!(marker.name, "[MaxDepth]");
        assert_eq!(
            marker.props,
            Json::object(vec![("value".into(), Json::String("[MaxDepth]".into()))])
        );
        assert!(marker.children.is_empty());
        assert_eq!(marker.id, node_dom_id(&format!("{path}/__maxdepth__0")));
        assert_eq!(snapshot.root.count(), 258);
    }

    // Goal: stored frames that are not JSON, or whose root is not an element, are errors, not
    // panics; the empty snapshot has the spec's exact bytes.
    #[test]
    fn malformed_frames_and_the_empty_snapshot() {
        let frame = FrameRow {
            run_id: "r".into(),
            frame_no: 2,
            created_at_ms: 0,
            xml_json: "{not json".into(),
            xml_hash: String::new(),
            task_index_json: "[]".into(),
        };
        assert!(matches!(
            FrameSource::from_rows(&frame, &[]),
            Err(SnapshotError::MalformedFrame { frame_no: 2, .. })
        ));
        let text_root = FrameRow {
            xml_json: r#""text""#.into(),
            ..frame
        };
        let source = FrameSource::from_rows(&text_root, &[]).unwrap();
        assert!(build(&source).is_err());
        let mut out = Vec::new();
        empty("r9").write_event(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"version":1,"kind":"snapshot","snapshot":{"version":1,"runId":"r9","frameNo":0,"seq":0,"root":{"id":0,"type":"workflow","name":"(empty)","props":{},"children":[],"depth":0}}}"#
        );
    }
}
