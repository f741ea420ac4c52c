//! Criterion benchmark of DevTools' per-frame work, on frames the engine's renderer produces for
//! workflows of about 10, 100 and 1,000 nodes (parallel blocks of ten static tasks):
//! - `devtools_snapshot`: a frame into a snapshot (ids, props, task info) and its event bytes;
//! - `devtools_snapshot_serialize`: the event bytes of a built snapshot alone;
//! - `devtools_delta`: the delta between two consecutive frames (one task changes state, the
//!   engine's usual frame) and its event bytes.
//!
//! The hub builds each of these once per frame of a watched run, whatever the number of
//! subscribers, so these figures are the DevTools cost per frame. It owns only measurements: it
//! checks once that each delta rebuilds the next snapshot, so a broken diff cannot report a fast
//! but meaningless number; it never touches the network or the file system.
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use smithers_gateway::devtools::delta::{apply, diff};
use smithers_gateway::devtools::snapshot::{build, FrameSource, Snapshot};
use smithers_gateway::engine::render::{render, NodeStates, NodeStatus};
use smithers_gateway::engine::workflow::parse_workflow;
use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;

const SIZES: [usize; 3] = [10, 100, 1_000];

/// A workflow of about `nodes` nodes: the root, then parallel blocks of up to ten static tasks.
fn workflow_text(nodes: usize) -> String {
    let blocks = nodes.div_ceil(11).max(1);
    let tasks = nodes.saturating_sub(1 + blocks).max(1);
    let mut text = String::new();
    for block in 0..blocks {
        text.push_str(&format!(
            "[[nodes]]\nkind = \"parallel\"\nid = \"block-{block}\"\nlabel = \"Block {block}\"\n"
        ));
        let in_block = tasks / blocks + usize::from(block < tasks % blocks);
        for task in 0..in_block {
            text.push_str(&format!(
                "  [[nodes.children]]\n  kind = \"task\"\n  id = \"task-{block}-{task}\"\n  \
                 label = \"Step {task} of block {block}\"\n  retries = 2\n  \
                 output = {{ ok = true }}\n"
            ));
        }
    }
    text
}

/// Frames `frame_no` and `frame_no + 1` of a run of `nodes` nodes: the first with a third of the
/// tasks finished, the next with one more task in progress.
fn frames(nodes: usize) -> (FrameSource, FrameSource) {
    let workflow = parse_workflow(Path::new("bench.toml"), &workflow_text(nodes))
        .unwrap_or_else(|e| panic!("bench workflow: {e}"));
    let mut ids = Vec::new();
    for block in &workflow.nodes {
        if let smithers_gateway::engine::workflow::NodeKind::Parallel { children, .. } = &block.kind
        {
            ids.extend(children.iter().map(|child| child.id.clone()));
        }
    }
    let mut states = NodeStates::new();
    for id in ids.iter().take(ids.len() / 3) {
        states.insert(
            (id.clone(), 0),
            NodeStatus {
                state: "finished".into(),
                attempt: 1,
            },
        );
    }
    let source = |frame_no: i64, states: &NodeStates| {
        let frame = render(&workflow, states, &HashMap::new());
        FrameSource {
            run_id: "bench-run".into(),
            frame_no,
            created_at_ms: frame_no,
            tree: frame.tree,
            task_index: frame.task_index,
            attempts: Vec::new(),
        }
    };
    let before = source(41, &states);
    let next_id = ids.get(ids.len() / 3).cloned().unwrap_or_default();
    states.insert(
        (next_id, 0),
        NodeStatus {
            state: "in-progress".into(),
            attempt: 1,
        },
    );
    (before, source(42, &states))
}

fn snapshot_of(source: &FrameSource) -> Snapshot {
    build(source).unwrap_or_else(|e| panic!("bench frame: {e}"))
}

fn snapshot_build(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("devtools_snapshot");
    for nodes in SIZES {
        let (source, _) = frames(nodes);
        group.throughput(Throughput::Elements(
            snapshot_of(&source).root.count() as u64
        ));
        group.bench_with_input(
            BenchmarkId::from_parameter(nodes),
            &source,
            |bencher, source| {
                bencher.iter(|| {
                    let snapshot = snapshot_of(black_box(source));
                    black_box(snapshot.to_event_bytes())
                });
            },
        );
    }
    group.finish();
}

fn snapshot_serialize(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("devtools_snapshot_serialize");
    for nodes in SIZES {
        let snapshot = snapshot_of(&frames(nodes).0);
        let bytes = snapshot.to_event_bytes().len();
        group.throughput(Throughput::Bytes(bytes as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(nodes),
            &snapshot,
            |bencher, snapshot| bencher.iter(|| black_box(black_box(snapshot).to_event_bytes())),
        );
    }
    group.finish();
}

fn delta(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("devtools_delta");
    for nodes in SIZES {
        let (before, after) = frames(nodes);
        let (base, target) = (snapshot_of(&before), snapshot_of(&after));
        let delta = diff(&base, &target).unwrap_or_else(|e| panic!("{e}"));
        let mut applied = base.clone();
        apply(&mut applied, &delta).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            applied, target,
            "the benchmark's delta must rebuild the next frame"
        );
        assert_eq!(delta.ops.len(), 1, "one task changed state");
        group.throughput(Throughput::Elements(target.root.count() as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(nodes),
            &(base, target),
            |bencher, (base, target)| {
                bencher.iter(|| {
                    let delta =
                        diff(black_box(base), black_box(target)).unwrap_or_else(|e| panic!("{e}"));
                    black_box(delta.to_event_bytes())
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, snapshot_build, snapshot_serialize, delta);
criterion_main!(benches);
