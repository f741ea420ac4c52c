//! DevTools deltas (EVENTS.md §4.4): the ops that turn snapshot A into snapshot B, in the spec's
//! order, their bytes, and the client's application rule (for tests and for anyone embedding the
//! gateway's types in a client).
//!
//! Pure. Ops borrow the subtrees of B instead of copying them: a delta is serialized once and
//! dropped, so copying would only cost.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::json::{write_i64, Json};
use super::snapshot::{Node, Snapshot, TaskInfo};
use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};

/// One delta op (EVENTS.md §4.1).
#[derive(Clone, Debug, PartialEq)]
pub enum Op<'a> {
    RemoveNode {
        id: u32,
    },
    /// Inserts `node` (with its whole subtree) as child `index` of `parent_id`.
    AddNode {
        parent_id: u32,
        index: usize,
        node: &'a Node,
    },
    UpdateProps {
        id: u32,
        props: &'a Json,
    },
    /// `task: None` means the node no longer has task info (the key is omitted on the wire).
    UpdateTask {
        id: u32,
        task: Option<&'a TaskInfo>,
    },
    ReplaceRoot {
        node: &'a Node,
    },
}

/// A delta from the snapshot at `base_seq` to the one at `seq`.
#[derive(Clone, Debug, PartialEq)]
pub struct Delta<'a> {
    pub base_seq: i64,
    pub seq: i64,
    pub ops: Vec<Op<'a>>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    /// > Different `runId` → error.
    #[error("cannot diff snapshots of different runs ({base} and {target})")]
    RunMismatch { base: String, target: String },
    /// The client rule refused the delta (`InvalidDelta`).
    #[error("InvalidDelta: {0}")]
    Invalid(String),
}

/// Where a node sits in its tree.
struct Placement<'a> {
    node: &'a Node,
    parent: Option<u32>,
    index: usize,
    preorder: usize,
}

/// Every node by id, and the ids in pre-order. None when an id repeats (possible only after
/// 1,024 failed collision salts), which the op rules cannot express.
fn index_tree(root: &Node) -> Option<(HashMap<u32, Placement<'_>>, Vec<u32>)> {
    let mut placements = HashMap::new();
    let mut preorder = Vec::new();
    let mut stack: Vec<(&Node, Option<u32>, usize)> = vec![(root, None, 0)];
    while let Some((node, parent, index)) = stack.pop() {
        let placement = Placement {
            node,
            parent,
            index,
            preorder: preorder.len(),
        };
        if placements.insert(node.id, placement).is_some() {
            return None;
        }
        preorder.push(node.id);
        for (child_index, child) in node.children.iter().enumerate().rev() {
            stack.push((child, Some(node.id), child_index));
        }
    }
    Some((placements, preorder))
}

fn same_identity(a: &Node, b: &Node) -> bool {
    a.node_type == b.node_type && a.name == b.name && a.depth == b.depth
}

/// The delta A → B (EVENTS.md §4.4).
pub fn diff<'b>(a: &Snapshot, b: &'b Snapshot) -> Result<Delta<'b>, DeltaError> {
    if a.run_id != b.run_id {
        return Err(DeltaError::RunMismatch {
            base: a.run_id.clone(),
            target: b.run_id.clone(),
        });
    }
    let replace_root = || Delta {
        base_seq: a.frame_no,
        seq: b.frame_no,
        ops: vec![Op::ReplaceRoot { node: &b.root }],
    };
    // > If `A.root.id ≠ B.root.id`, or root `type`/`name`/`depth` differ → ops = `[replaceRoot]`.
    if a.root.id != b.root.id || !same_identity(&a.root, &b.root) {
        return Ok(replace_root());
    }
    let (Some((in_a, order_a)), Some((in_b, order_b))) = (index_tree(&a.root), index_tree(&b.root))
    else {
        return Ok(replace_root());
    };
    let mut removes: Vec<(Reverse<u32>, usize, u32)> = Vec::new();
    let mut added: HashSet<u32> = HashSet::new();
    let mut updates: Vec<Op<'b>> = Vec::new();
    for id in &order_a {
        let Some(old) = in_a.get(id) else { continue };
        let remove = (Reverse(old.node.depth), old.preorder, *id);
        let Some(new) = in_b.get(id) else {
            removes.push(remove);
            continue;
        };
        if old.parent != new.parent || old.index != new.index || !same_identity(old.node, new.node)
        {
            removes.push(remove);
            added.insert(*id);
            continue;
        }
        if old.node.props != new.node.props {
            updates.push(Op::UpdateProps {
                id: *id,
                props: &new.node.props,
            });
        }
        if old.node.task != new.node.task {
            updates.push(Op::UpdateTask {
                id: *id,
                task: new.node.task.as_ref(),
            });
        }
    }
    added.extend(order_b.iter().filter(|id| !in_a.contains_key(id)));
    // > all `removeNode` sorted by depth in A descending (ties keep pre-order)
    removes.sort();
    // > then `addNode` only for added ids none of whose ancestors in B is also added, sorted by
    // > depth in B ascending then sibling index ascending (ties keep pre-order)
    let has_added_ancestor = |id: u32| {
        let mut parent = in_b.get(&id).and_then(|p| p.parent);
        while let Some(ancestor) = parent {
            if added.contains(&ancestor) {
                return true;
            }
            parent = in_b.get(&ancestor).and_then(|p| p.parent);
        }
        false
    };
    let mut adds: Vec<(u32, usize, usize, &Placement<'b>)> = order_b
        .iter()
        .filter(|id| added.contains(id) && !has_added_ancestor(**id))
        .filter_map(|id| in_b.get(id))
        .map(|placement| {
            (
                placement.node.depth,
                placement.index,
                placement.preorder,
                placement,
            )
        })
        .collect();
    adds.sort_by_key(|(depth, index, preorder, _)| (*depth, *index, *preorder));
    let mut ops = Vec::with_capacity(removes.len() + adds.len() + updates.len());
    ops.extend(removes.into_iter().map(|(_, _, id)| Op::RemoveNode { id }));
    for (_, index, _, placement) in adds {
        // Only the root has no parent, and the root is never added here (same id in A and B).
        if let Some(parent_id) = placement.parent {
            ops.push(Op::AddNode {
                parent_id,
                index,
                node: placement.node,
            });
        }
    }
    ops.extend(updates);
    Ok(Delta {
        base_seq: a.frame_no,
        seq: b.frame_no,
        ops,
    })
}

impl Delta<'_> {
    /// `{version, baseSeq, seq, ops}`.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(br#"{"version":1,"baseSeq":"#);
        write_i64(out, self.base_seq);
        out.extend_from_slice(br#","seq":"#);
        write_i64(out, self.seq);
        out.extend_from_slice(br#","ops":["#);
        for (index, op) in self.ops.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            op.write(out);
        }
        out.extend_from_slice(b"]}");
    }

    /// The DevTools event `{version, kind:"delta", delta}`.
    pub fn write_event(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(br#"{"version":1,"kind":"delta","delta":"#);
        self.write(out);
        out.push(b'}');
    }

    pub fn to_event_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        self.write_event(&mut out);
        out
    }
}

impl Op<'_> {
    pub fn write(&self, out: &mut Vec<u8>) {
        match self {
            Op::RemoveNode { id } => {
                out.extend_from_slice(br#"{"op":"removeNode","id":"#);
                write_i64(out, i64::from(*id));
            }
            Op::AddNode {
                parent_id,
                index,
                node,
            } => {
                out.extend_from_slice(br#"{"op":"addNode","parentId":"#);
                write_i64(out, i64::from(*parent_id));
                out.extend_from_slice(br#","index":"#);
                write_i64(out, i64::try_from(*index).unwrap_or(i64::MAX));
                out.extend_from_slice(br#","node":"#);
                node.write(out);
            }
            Op::UpdateProps { id, props } => {
                out.extend_from_slice(br#"{"op":"updateProps","id":"#);
                write_i64(out, i64::from(*id));
                out.extend_from_slice(br#","props":"#);
                props.write(out);
            }
            Op::UpdateTask { id, task } => {
                out.extend_from_slice(br#"{"op":"updateTask","id":"#);
                write_i64(out, i64::from(*id));
                if let Some(task) = task {
                    out.extend_from_slice(br#","task":"#);
                    task.write(out);
                }
            }
            Op::ReplaceRoot { node } => {
                out.extend_from_slice(br#"{"op":"replaceRoot","node":"#);
                node.write(out);
            }
        }
        out.push(b'}');
    }
}

/// The client application rule (EVENTS.md §4.4): `baseSeq` must equal the snapshot's seq;
/// `addNode` clamps `index` into range; removing the root or unknown ids is invalid. On error
/// the snapshot may be partly changed: a client must resubscribe.
pub fn apply(snapshot: &mut Snapshot, delta: &Delta<'_>) -> Result<(), DeltaError> {
    if delta.base_seq != snapshot.frame_no {
        return Err(DeltaError::Invalid(format!(
            "delta baseSeq {} does not match snapshot seq {}",
            delta.base_seq, snapshot.frame_no
        )));
    }
    for op in &delta.ops {
        match op {
            Op::ReplaceRoot { node } => snapshot.root = (*node).clone(),
            Op::RemoveNode { id } => {
                if *id == snapshot.root.id {
                    return Err(DeltaError::Invalid("cannot remove the root".into()));
                }
                if !remove_node(&mut snapshot.root, *id) {
                    return Err(unknown(*id));
                }
            }
            Op::AddNode {
                parent_id,
                index,
                node,
            } => {
                let parent = find_mut(&mut snapshot.root, *parent_id).ok_or(unknown(*parent_id))?;
                let index = (*index).min(parent.children.len());
                parent.children.insert(index, (*node).clone());
            }
            Op::UpdateProps { id, props } => {
                find_mut(&mut snapshot.root, *id).ok_or(unknown(*id))?.props = (*props).clone();
            }
            Op::UpdateTask { id, task } => {
                find_mut(&mut snapshot.root, *id).ok_or(unknown(*id))?.task = task.cloned();
            }
        }
    }
    snapshot.frame_no = delta.seq;
    Ok(())
}

fn unknown(id: u32) -> DeltaError {
    DeltaError::Invalid(format!("unknown node id {id}"))
}

/// Recursion depth is the tree's depth, bounded by the snapshot depth cap.
fn find_mut(node: &mut Node, id: u32) -> Option<&mut Node> {
    if node.id == id {
        return Some(node);
    }
    node.children
        .iter_mut()
        .find_map(|child| find_mut(child, id))
}

fn remove_node(node: &mut Node, id: u32) -> bool {
    if let Some(position) = node.children.iter().position(|c| c.id == id) {
        node.children.remove(position);
        return true;
    }
    node.children.iter_mut().any(|child| remove_node(child, id))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::devtools::snapshot::{build, empty, FrameSource};
    use serde_json::{json, Value as J};

    fn snapshot(frame_no: i64, tree: J, index: J) -> Snapshot {
        let source = FrameSource {
            run_id: "r".into(),
            frame_no,
            created_at_ms: 0,
            tree: simd_json::to_owned_value(&mut tree.to_string().into_bytes()).unwrap(),
            task_index: simd_json::to_owned_value(&mut index.to_string().into_bytes()).unwrap(),
            attempts: Vec::new(),
        };
        build(&source).unwrap()
    }

    fn element(tag: &str, props: J, children: Vec<J>) -> J {
        json!({"kind": "element", "tag": tag, "props": props, "children": children})
    }

    fn task(id: &str) -> J {
        element("smithers:task", json!({"id": id}), vec![])
    }

    fn ops_json(delta: &Delta<'_>) -> J {
        let mut out = Vec::new();
        delta.write(&mut out);
        serde_json::from_slice::<J>(&out).unwrap()["ops"].clone()
    }

    fn id_of(snapshot: &Snapshot, path: &[usize]) -> u32 {
        let mut node = &snapshot.root;
        for index in path {
            node = &node.children[*index];
        }
        node.id
    }

    // Goal: op order of §4.4 step 5 on a hand-made case: removes deepest first (pre-order among
    // equals), then adds by depth then index with subtrees carried whole, then updates in A's
    // pre-order; a moved node is a remove plus an add; a node under an added node is not added
    // separately.
    #[test]
    fn ops_follow_the_ordering_rules() {
        let a = snapshot(
            7,
            element(
                "smithers:workflow",
                json!({"name": "w"}),
                vec![
                    element(
                        "smithers:sequence",
                        json!({"id": "s1"}),
                        vec![task("x"), task("y")],
                    ),
                    element("smithers:sequence", json!({"id": "s2"}), vec![task("z")]),
                    task("m"),
                ],
            ),
            json!([{"nodeId": "x", "state": "pending", "attempt": 0}]),
        );
        let b = snapshot(
            8,
            element(
                "smithers:workflow",
                json!({"name": "w", "extra": "1"}),
                vec![
                    element("smithers:sequence", json!({"id": "s1"}), vec![task("x")]),
                    task("m"),
                    element(
                        "smithers:parallel",
                        json!({"id": "p"}),
                        vec![
                            task("q"),
                            element("smithers:sequence", json!({"id": "s3"}), vec![]),
                        ],
                    ),
                ],
            ),
            json!([{"nodeId": "x", "state": "finished", "attempt": 1}]),
        );
        let delta = diff(&a, &b).unwrap();
        assert_eq!((delta.base_seq, delta.seq), (7, 8));
        let (y, z, s2, m) = (
            id_of(&a, &[0, 1]),
            id_of(&a, &[1, 0]),
            id_of(&a, &[1]),
            id_of(&a, &[2]),
        );
        let (root, x, p) = (a.root.id, id_of(&a, &[0, 0]), id_of(&b, &[2]));
        let ops = ops_json(&delta);
        let kinds: Vec<(String, u64)> = ops
            .as_array()
            .unwrap()
            .iter()
            .map(|op| {
                let id = op
                    .get("id")
                    .or(op["node"].get("id"))
                    .and_then(J::as_u64)
                    .unwrap();
                (op["op"].as_str().unwrap().to_string(), id)
            })
            .collect();
        let expected: Vec<(String, u64)> = vec![
            ("removeNode".into(), u64::from(y)),
            ("removeNode".into(), u64::from(z)),
            ("removeNode".into(), u64::from(s2)),
            ("removeNode".into(), u64::from(m)),
            ("addNode".into(), u64::from(m)),
            ("addNode".into(), u64::from(p)),
            ("updateProps".into(), u64::from(root)),
            ("updateTask".into(), u64::from(x)),
        ];
        assert_eq!(kinds, expected);
        // m moved from index 2 to 1; p arrives with its children inside.
        assert_eq!(ops[4]["index"], 1);
        assert_eq!(ops[4]["parentId"], root);
        assert_eq!(ops[5]["index"], 2);
        assert_eq!(ops[5]["node"]["children"].as_array().unwrap().len(), 2);
        assert_eq!(ops[6]["props"], json!({"extra": 1, "name": "w"}));
        assert_eq!(ops[7]["task"]["state"], "finished");
        let mut applied = a.clone();
        apply(&mut applied, &delta).unwrap();
        assert_eq!(applied, b);
    }

    // Goal: root changes replace the root; a task that loses its info gets `updateTask` without
    // the key; different runs cannot be diffed.
    #[test]
    fn root_changes_and_task_removal() {
        let a = snapshot(
            1,
            element("smithers:workflow", json!({"name": "w"}), vec![task("t")]),
            json!([]),
        );
        let renamed = snapshot(
            2,
            element("smithers:workflow", json!({"name": "v"}), vec![task("t")]),
            json!([]),
        );
        let delta = diff(&a, &renamed).unwrap();
        assert!(matches!(delta.ops.as_slice(), [Op::ReplaceRoot { .. }]));
        let retagged = snapshot(
            2,
            element("smithers:sequence", json!({}), vec![]),
            json!([]),
        );
        assert!(matches!(
            diff(&a, &retagged).unwrap().ops.as_slice(),
            [Op::ReplaceRoot { .. }]
        ));
        assert!(matches!(
            diff(&empty("r"), &a).unwrap().ops.as_slice(),
            [Op::ReplaceRoot { .. }]
        ));

        // The same id becomes a non-task element: type changes, so it is removed and added.
        let untasked = snapshot(
            2,
            element(
                "smithers:workflow",
                json!({"name": "w"}),
                vec![element("smithers:task", json!({"id": "t"}), vec![])],
            ),
            json!([]),
        );
        assert!(diff(&a, &untasked).unwrap().ops.is_empty());
        let mut without_task = untasked.clone();
        without_task.root.children[0].task = None;
        let delta = diff(&a, &without_task).unwrap();
        assert_eq!(
            ops_json(&delta),
            json!([{"op": "updateTask", "id": a.root.children[0].id}])
        );

        let mut other = a.clone();
        other.run_id = "other".into();
        assert!(matches!(
            diff(&a, &other),
            Err(DeltaError::RunMismatch { .. })
        ));
    }

    // Goal: the client rule refuses a wrong baseSeq, removing the root and unknown ids, and
    // clamps addNode's index.
    #[test]
    fn apply_rule_refusals_and_clamping() {
        let a = snapshot(
            3,
            element("smithers:workflow", json!({}), vec![task("t")]),
            json!([]),
        );
        let b = snapshot(
            4,
            element("smithers:workflow", json!({}), vec![task("t")]),
            json!([]),
        );
        let mut target = a.clone();
        let wrong_base = Delta {
            base_seq: 2,
            seq: 4,
            ops: vec![],
        };
        assert!(matches!(
            apply(&mut target, &wrong_base),
            Err(DeltaError::Invalid(_))
        ));
        let remove_root = Delta {
            base_seq: 3,
            seq: 4,
            ops: vec![Op::RemoveNode { id: a.root.id }],
        };
        assert!(apply(&mut target.clone(), &remove_root).is_err());
        let remove_unknown = Delta {
            base_seq: 3,
            seq: 4,
            ops: vec![Op::RemoveNode { id: 12_345 }],
        };
        assert!(apply(&mut target.clone(), &remove_unknown).is_err());
        let add = Delta {
            base_seq: 3,
            seq: 4,
            ops: vec![Op::AddNode {
                parent_id: a.root.id,
                index: 99,
                node: &b.root.children[0],
            }],
        };
        apply(&mut target, &add).unwrap();
        assert_eq!(target.root.children.len(), 2);
        assert_eq!(target.frame_no, 4);
        let bad_parent = Delta {
            base_seq: 4,
            seq: 5,
            ops: vec![Op::AddNode {
                parent_id: 1,
                index: 0,
                node: &b.root,
            }],
        };
        assert!(apply(&mut target, &bad_parent).is_err());
    }

    // ---- Property test ----------------------------------------------------------------------

    /// SplitMix64: small, deterministic, seeded per case.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }

        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len())]
        }
    }

    /// The generator's own tree: what a renderer would produce, kept simple to mutate.
    #[derive(Clone, Debug)]
    struct Model {
        tag: &'static str,
        id: Option<&'static str>,
        props: Vec<(&'static str, String)>,
        children: Vec<Model>,
    }

    const TAGS: &[&str] = &[
        "smithers:task",
        "smithers:task",
        "smithers:sequence",
        "smithers:parallel",
        "smithers:ralph",
        "smithers:timer",
        "smithers:wait-for-event",
        "custom",
    ];
    // Few ids, so that siblings share fragments (`[k]` paths) and nodes move between parents.
    const IDS: &[&str] = &["a", "b", "c", "d", "e"];
    const PROP_KEYS: &[&str] = &["label", "kind", "retries", "meta", "needsApproval", "title"];
    const PROP_VALUES: &[&str] = &[
        "x",
        "y",
        "true",
        "1",
        "2.5",
        "{\"k\":[1,2]}",
        "[3]",
        "null",
        "static",
        "compute",
    ];
    const STATES: &[&str] = &[
        "pending",
        "in-progress",
        "finished",
        "failed",
        "waiting-approval",
    ];

    fn random_node(rng: &mut Rng, depth: usize) -> Model {
        let tag = *rng.pick(TAGS);
        let mut node = Model {
            tag,
            id: (rng.below(4) > 0).then(|| *rng.pick(IDS)),
            props: Vec::new(),
            children: Vec::new(),
        };
        for _ in 0..rng.below(3) {
            node.props
                .push((*rng.pick(PROP_KEYS), rng.pick(PROP_VALUES).to_string()));
        }
        if tag != "smithers:task" && depth < 5 {
            for _ in 0..rng.below(4) {
                node.children.push(random_node(rng, depth + 1));
            }
        }
        node
    }

    fn count(model: &Model) -> usize {
        1 + model.children.iter().map(count).sum::<usize>()
    }

    /// The `n`-th node in pre-order, as a path of child indexes.
    fn path_of(model: &Model, mut n: usize) -> Vec<usize> {
        let mut path = Vec::new();
        let mut node = model;
        'descend: while n > 0 {
            n -= 1;
            for (index, child) in node.children.iter().enumerate() {
                let size = count(child);
                if n < size {
                    path.push(index);
                    node = child;
                    continue 'descend;
                }
                n -= size;
            }
            break;
        }
        path
    }

    fn at<'m>(model: &'m mut Model, path: &[usize]) -> &'m mut Model {
        let mut node = model;
        for index in path {
            node = &mut node.children[*index];
        }
        node
    }

    fn mutate(rng: &mut Rng, root: &mut Model, states: &mut HashMap<&'static str, (usize, i64)>) {
        let n = count(root);
        match rng.below(9) {
            0 => {
                let parent = at(root, &path_of(root, rng.below(n)));
                let index = rng.below(parent.children.len() + 1);
                let child = random_node(rng, 3);
                parent.children.insert(index, child);
            }
            1 if n > 1 => {
                let path = path_of(root, 1 + rng.below(n - 1));
                let (last, parent_path) = path.split_last().unwrap();
                at(root, parent_path).children.remove(*last);
            }
            2 if n > 1 => {
                // Move a subtree somewhere outside itself.
                let path = path_of(root, 1 + rng.below(n - 1));
                let (last, parent_path) = path.split_last().unwrap();
                let subtree = at(root, parent_path).children.remove(*last);
                let remaining = count(root);
                let target = at(root, &path_of(root, rng.below(remaining)));
                let index = rng.below(target.children.len() + 1);
                target.children.insert(index, subtree);
            }
            3 => {
                let node = at(root, &path_of(root, rng.below(n)));
                if node.children.len() > 1 {
                    let i = rng.below(node.children.len());
                    let j = rng.below(node.children.len());
                    node.children.swap(i, j);
                }
            }
            4 | 5 => {
                let node = at(root, &path_of(root, rng.below(n)));
                if node.props.is_empty() || rng.below(2) == 0 {
                    node.props
                        .push((*rng.pick(PROP_KEYS), rng.pick(PROP_VALUES).to_string()));
                } else {
                    let index = rng.below(node.props.len());
                    node.props.remove(index);
                }
            }
            6 => {
                let id = *rng.pick(IDS);
                let state = (rng.below(STATES.len()), rng.below(3) as i64);
                states.insert(id, state);
            }
            7 => {
                let node = at(root, &path_of(root, rng.below(n)));
                node.id = (rng.below(3) > 0).then(|| *rng.pick(IDS));
            }
            _ => {
                // Root changes: its name (a replaceRoot) or, rarely, its tag.
                if rng.below(4) == 0 {
                    root.tag = if root.tag == "smithers:workflow" {
                        "smithers:sequence"
                    } else {
                        "smithers:workflow"
                    };
                } else {
                    root.props.retain(|(k, _)| *k != "name");
                    root.props
                        .push(("name", rng.pick(&["w1", "w2"]).to_string()));
                }
            }
        }
    }

    fn to_json(model: &Model) -> J {
        let mut props = serde_json::Map::new();
        if let Some(id) = model.id {
            props.insert("id".into(), J::from(id));
        }
        for (key, value) in &model.props {
            props.insert(key.to_string(), J::from(value.as_str()));
        }
        element(
            model.tag,
            J::Object(props),
            model.children.iter().map(to_json).collect(),
        )
    }

    fn index_json(states: &HashMap<&'static str, (usize, i64)>) -> J {
        let mut entries: Vec<J> = states
            .iter()
            .map(|(id, (state, attempt))| {
                json!({"nodeId": id, "iteration": 0, "kind": "static", "state": STATES[*state], "attempt": attempt})
            })
            .collect();
        entries.sort_by_key(|e| e["nodeId"].as_str().unwrap_or_default().to_string());
        J::Array(entries)
    }

    fn wire(snapshot: &Snapshot) -> J {
        let mut out = Vec::new();
        snapshot.write(&mut out, None);
        serde_json::from_slice(&out).unwrap()
    }

    // Goal: a client that applies each delta to the previous snapshot always ends with the fresh
    // snapshot of that frame, and baseSeq/seq chain. Method: 400 seeded cases of random trees (a
    // few dozen nodes, repeated fragments) through 25 frames of random edits each (adds, removals,
    // moves, reorders, prop and id changes, task state changes, root renames and retags); each
    // delta is applied both to the typed snapshot and, as a parsed JSON client would, to the
    // previous snapshot's wire form.
    #[test]
    fn applying_deltas_reproduces_fresh_snapshots() {
        let mut n_ops = 0usize;
        for case in 0..400u64 {
            let mut rng = Rng(case.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0xD1B5_4A32_D192_ED03);
            let mut root = random_node(&mut rng, 0);
            root.tag = "smithers:workflow";
            root.id = None;
            root.props = vec![("name", "w1".into())];
            let mut states: HashMap<&'static str, (usize, i64)> = HashMap::new();
            let mut previous = snapshot(1, to_json(&root), index_json(&states));
            let mut client_typed = previous.clone();
            let mut client_wire = wire(&previous);
            for frame_no in 2..=26 {
                for _ in 0..1 + rng.below(3) {
                    mutate(&mut rng, &mut root, &mut states);
                }
                let fresh = snapshot(frame_no, to_json(&root), index_json(&states));
                let delta = diff(&previous, &fresh).unwrap();
                assert_eq!((delta.base_seq, delta.seq), (frame_no - 1, frame_no));
                n_ops += delta.ops.len();
                apply(&mut client_typed, &delta)
                    .unwrap_or_else(|e| panic!("case {case} frame {frame_no}: {e}"));
                assert_eq!(client_typed, fresh, "case {case} frame {frame_no}: typed");
                let mut bytes = Vec::new();
                delta.write(&mut bytes);
                wire_client::apply_wire(&mut client_wire, &serde_json::from_slice(&bytes).unwrap());
                assert_eq!(
                    client_wire,
                    wire(&fresh),
                    "case {case} frame {frame_no}: wire"
                );
                previous = fresh;
            }
        }
        // The generator does exercise the rules (not only empty deltas).
        assert!(n_ops > 10_000, "{n_ops} ops");
    }

    // Goal: the same holds across the depth cap: a chain that grows past 256 levels gets a
    // marker, and the delta that adds or removes levels still rebuilds the fresh snapshot.
    #[test]
    fn deltas_across_the_depth_cap() {
        fn chain(levels: usize) -> J {
            let mut tree = task("leaf");
            for _ in 0..levels {
                tree = element("smithers:sequence", json!({}), vec![tree]);
            }
            element("smithers:workflow", json!({"name": "deep"}), vec![tree])
        }
        let mut previous = snapshot(1, chain(250), json!([]));
        for (frame_no, levels) in [(2, 258), (3, 262), (4, 255), (5, 300)] {
            let fresh = snapshot(frame_no, chain(levels), json!([]));
            let delta = diff(&previous, &fresh).unwrap();
            let mut client = previous.clone();
            apply(&mut client, &delta).unwrap();
            assert_eq!(client, fresh, "frame {frame_no}");
            previous = fresh;
        }
        assert_eq!(previous.root.count(), 258);
    }
}

/// A JSON client of the delta wire form, for tests here and in `hub`: it applies a parsed delta
/// as a JavaScript client does (EVENTS.md §4.4), checking that `baseSeq` chains.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
pub(crate) mod wire_client {
    use serde_json::Value as J;

    /// Applies `delta` to `snapshot` (both parsed wire JSON).
    pub(crate) fn apply_wire(snapshot: &mut J, delta: &J) {
        assert_eq!(delta["baseSeq"], snapshot["seq"], "baseSeq chain");
        fn find<'j>(node: &'j mut J, id: &J) -> Option<&'j mut J> {
            if node["id"] == *id {
                return Some(node);
            }
            node["children"]
                .as_array_mut()?
                .iter_mut()
                .find_map(|c| find(c, id))
        }
        fn remove(node: &mut J, id: &J) -> bool {
            let children = node["children"].as_array_mut().unwrap();
            if let Some(position) = children.iter().position(|c| c["id"] == *id) {
                children.remove(position);
                return true;
            }
            children.iter_mut().any(|c| remove(c, id))
        }
        for op in delta["ops"].as_array().unwrap() {
            let root = &mut snapshot["root"];
            match op["op"].as_str().unwrap() {
                "replaceRoot" => *root = op["node"].clone(),
                "removeNode" => {
                    assert_ne!(root["id"], op["id"]);
                    assert!(remove(root, &op["id"]), "unknown id {op}");
                }
                "addNode" => {
                    let parent = find(root, &op["parentId"]).unwrap();
                    let children = parent["children"].as_array_mut().unwrap();
                    let index = (op["index"].as_u64().unwrap() as usize).min(children.len());
                    children.insert(index, op["node"].clone());
                }
                "updateProps" => find(root, &op["id"]).unwrap()["props"] = op["props"].clone(),
                "updateTask" => {
                    let node = find(root, &op["id"]).unwrap().as_object_mut().unwrap();
                    match op.get("task") {
                        // `task` sits between props and children on the wire; key order does not
                        // matter to a JSON client, so it is compared as a map.
                        Some(task) => {
                            node.insert("task".into(), task.clone());
                        }
                        None => {
                            node.remove("task");
                        }
                    }
                }
                other => panic!("unknown op {other}"),
            }
        }
        snapshot["seq"] = delta["seq"].clone();
        snapshot["frameNo"] = delta["seq"].clone();
    }
}
