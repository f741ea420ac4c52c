//! Criterion benchmark of the storage thread's commit path: rows per second at batch sizes 1, 16,
//! 64 and 512, under `synchronous=FULL` and `NORMAL` (RELIABILITY.md §4.2 asks for the FULL/NORMAL
//! ratio, never a timed assertion).
//!
//! Two shapes:
//! - `events_per_write`: one `Write` carrying N `AppendEvent`s, so exactly N rows per transaction;
//! - `concurrent_writes`: N single-event `Write`s queued at once, which the thread drains into
//!   group-commit transactions (the first usually commits alone while the rest queue behind it).
//!
//! It owns only measurements: it must never assert behaviour (the unit tests in `src/storage` do),
//! and it touches nothing but a temporary directory, which it removes.
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use smithers_gateway::storage::{
    open, Command, Mutation, RunRow, StorageHandle, StorageOptions, WriteOutcome,
};
use std::path::PathBuf;
use std::time::Duration;

const BATCHES: [usize; 4] = [1, 16, 64, 512];
const RUN_ID: &str = "bench-run";

/// About 200 bytes, like the rows measured in RELIABILITY.md §4.2.
fn payload() -> String {
    format!(
        "{{\"type\":\"NodeOutput\",\"text\":\"{}\"}}",
        "x".repeat(170)
    )
}

fn event(payload: &str) -> Mutation {
    Mutation::AppendEvent {
        run_id: RUN_ID.into(),
        timestamp_ms: 1,
        event_type: "NodeOutput".into(),
        payload_json: payload.into(),
    }
}

struct Store {
    dir: PathBuf,
    handle: Option<StorageHandle>,
    join: Option<std::thread::JoinHandle<()>>,
}

impl Store {
    fn open(full: bool) -> Store {
        let dir = std::env::temp_dir().join(format!("smithers-bench-{}", uuid::Uuid::new_v4()));
        let mut options = StorageOptions::new(dir.join("bench.db"));
        options.synchronous_full = full;
        let (handle, join) = open(options).unwrap_or_else(|error| panic!("open: {error}"));
        let run = RunRow {
            run_id: RUN_ID.into(),
            parent_run_id: None,
            workflow_name: "bench".into(),
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
        };
        write(&handle, vec![Mutation::InsertRun(run)]);
        Store {
            dir,
            handle: Some(handle),
            join: Some(join),
        }
    }

    fn handle(&self) -> &StorageHandle {
        self.handle
            .as_ref()
            .unwrap_or_else(|| panic!("store closed"))
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.handle.take();
        if let Some(join) = self.join.take() {
            let _ = join.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write(handle: &StorageHandle, mutations: Vec<Mutation>) -> WriteOutcome {
    handle
        .call_blocking(|reply| Command::Write { mutations, reply })
        .unwrap_or_else(|error| panic!("write: {error}"))
}

fn mode_name(full: bool) -> &'static str {
    if full {
        "full"
    } else {
        "normal"
    }
}

fn events_per_write(c: &mut Criterion) {
    let payload = payload();
    let mut group = c.benchmark_group("storage_commit/events_per_write");
    for full in [true, false] {
        let store = Store::open(full);
        for batch in BATCHES {
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_with_input(BenchmarkId::new(mode_name(full), batch), &batch, |b, &n| {
                b.iter(|| {
                    let mutations = (0..n).map(|_| event(&payload)).collect();
                    write(store.handle(), mutations)
                })
            });
        }
    }
    group.finish();
}

fn concurrent_writes(c: &mut Criterion) {
    let payload = payload();
    let mut group = c.benchmark_group("storage_commit/concurrent_writes");
    for full in [true, false] {
        let store = Store::open(full);
        for batch in BATCHES {
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_with_input(BenchmarkId::new(mode_name(full), batch), &batch, |b, &n| {
                b.iter(|| {
                    let receivers: Vec<_> = (0..n)
                        .map(|_| {
                            let (reply, receiver) = flume::bounded(1);
                            let command = Command::Write {
                                mutations: vec![event(&payload)],
                                reply,
                            };
                            store
                                .handle()
                                .send_blocking(command)
                                .unwrap_or_else(|error| panic!("send: {error}"));
                            receiver
                        })
                        .collect();
                    for receiver in receivers {
                        let _ = receiver
                            .recv()
                            .unwrap_or_else(|error| panic!("reply: {error}"))
                            .unwrap_or_else(|error| panic!("write: {error}"));
                    }
                })
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // Short runs: the numbers are a FULL/NORMAL ratio per batch size, not a regression gate.
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = events_per_write, concurrent_writes
}
criterion_main!(benches);
