//! Criterion benchmark of engine throughput (the issue's "hello runs launched and completed per
//! second, and persisted events per second"), under `synchronous=FULL` and `NORMAL`.
//!
//! Three shapes, each iteration launching `RUNS` runs of the shipped `workflows/hello.toml` and
//! waiting until the hub has broadcast every one's `run.completed`:
//! - `engine/hello_runs`: the engine started directly (storage thread, hub, engine thread; no
//!   HTTP), with `RUNS` launches spread over `launchers` threads calling `launch_blocking`, so at
//!   most `launchers` launches are in flight (a launch is answered after its turn commits).
//!   Throughput is runs per second.
//! - `engine/persisted_events`: the same work, with throughput counted as the `_smithers_events`
//!   rows it persists (`RunStarted`, `NodeStarted`, `NodeFinished`, `RunFinished`: the per-run count
//!   is read back from storage before measuring, never assumed).
//! - `engine/http_hello_runs`: the real gateway (`gateway::start`, token auth, one worker) driven
//!   by keep-alive clients sending `POST /v1/rpc/launchRun` with a bearer token.
//!
//! Storage alone (`Write`s of `AppendEvent` batches, the ceiling for persisted events) is measured
//! by `bench/storage_commit.rs` (`events_per_write`, `concurrent_writes`) and not repeated here.
//!
//! The client threads share this 2-core machine with the storage, engine and worker threads, so
//! the figures are for the whole system on this box. The database grows by `RUNS` runs per
//! iteration (B-tree depth barely moves at this size). It measures only: it never asserts a figure
//! (the issue asks for a report), it panics only when the workload itself goes wrong, and it
//! touches nothing but temporary directories, which it removes.
use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use smithers_gateway::auth::Authenticator;
use smithers_gateway::config::{AuthConfig, Config, DriverKind, GatewayConfig, TokenGrant};
use smithers_gateway::engine::core::{self as engine, AuthContext, EngineHandle, LaunchRequest};
use smithers_gateway::engine::workflow::load_dir;
use smithers_gateway::events::hub::Hub;
use smithers_gateway::rpc::Value;
use smithers_gateway::storage::{self, Command, StorageHandle, StorageOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs per iteration: about a second of work at the issue's 2,000 runs/s target, long enough
/// that thread start-up and the completion tail are noise.
const RUNS: usize = 2_000;
/// In-flight launches. Each launch waits for its turn's commit, so this bounds how many runs one
/// turn (one transaction, one fsync under FULL) can carry: 4 shows the per-commit cost, 64 how far
/// group commit amortizes it (like 64 concurrent HTTP callers).
const LAUNCHERS: [usize; 2] = [4, 64];
/// Keep-alive HTTP connections for the gateway shape.
const HTTP_CONNECTIONS: usize = 64;
/// A stuck engine must fail the bench, not hang it.
const COMPLETION_TIMEOUT: Duration = Duration::from_secs(120);
/// Broadcasts of one `hello` run: node.started, node.finished, run.completed (checked in setup).
const HELLO_BROADCASTS: u64 = 3;
const TOKEN: &str = "bench-admin-token-0123456789";

fn workflows_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows")
}

fn temp_dir(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("smithers-bench-{label}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

fn mode_name(full: bool) -> &'static str {
    if full {
        "full"
    } else {
        "normal"
    }
}

fn hello_request() -> LaunchRequest {
    LaunchRequest {
        workflow: "hello".into(),
        input: Value::Object(Box::default()),
        run_id: None,
        idempotency_key: None,
        auth: AuthContext::system("bench"),
        started_by: None,
        options: Vec::new(),
    }
}

/// Counts `run.completed` broadcasts by draining the hub's one worker queue, as a worker would.
/// Draining is also required: the queue is bounded, and a full queue would stall the engine.
fn spawn_drainer(hub: &Hub, completed: Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    let receiver = hub
        .take_receiver(0)
        .unwrap_or_else(|| panic!("hub worker queue already taken"));
    std::thread::spawn(move || {
        // Ends when the hub (its senders) is dropped.
        while let Ok(batch) = receiver.recv() {
            let done = batch
                .iter()
                .filter(|broadcast| broadcast.event == "run.completed")
                .count();
            completed.fetch_add(done as u64, Ordering::Release);
        }
    })
}

/// Waits until `counter` reaches `target`; the short sleep keeps the waiter off the two cores.
fn wait_for(counter: impl Fn() -> u64, target: u64) {
    let deadline = Instant::now() + COMPLETION_TIMEOUT;
    while counter() < target {
        assert!(
            Instant::now() < deadline,
            "only {} of {target} runs completed",
            counter()
        );
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// Storage, hub and engine threads on a temporary database (what `gateway::start` wires, minus
/// the workers).
struct Engine {
    dir: PathBuf,
    storage: Option<StorageHandle>,
    engine: Option<EngineHandle>,
    hub: Option<Arc<Hub>>,
    completed: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// `_smithers_events` rows one `hello` run persists, read back in `start`.
    events_per_run: u64,
}

impl Engine {
    fn start(full: bool) -> Engine {
        let dir = temp_dir("engine");
        let registry =
            Arc::new(load_dir(&workflows_dir()).unwrap_or_else(|e| panic!("workflows: {e}")));
        let mut options = StorageOptions::new(dir.join("bench.db"));
        options.synchronous_full = full;
        let (storage, storage_thread) =
            storage::open(options).unwrap_or_else(|e| panic!("storage: {e}"));
        let hub = Hub::new(1, 10_000);
        let completed = Arc::new(AtomicU64::new(0));
        let drainer = spawn_drainer(&hub, completed.clone());
        let (engine, engine_thread) = engine::start(
            storage.clone(),
            registry,
            hub.clone(),
            engine::EngineOptions::default(),
        )
        .unwrap_or_else(|e| panic!("engine: {e}"));
        let mut started = Engine {
            dir,
            storage: Some(storage),
            engine: Some(engine),
            hub: Some(hub),
            completed,
            threads: vec![engine_thread, storage_thread, drainer],
            events_per_run: 0,
        };
        started.events_per_run = started.check_one_run();
        started
    }

    /// Runs one `hello` and checks the figures the throughputs rest on: 3 broadcasts, and the
    /// events it persisted (returned).
    fn check_one_run(&self) -> u64 {
        let published = self.hub().published();
        let outcome = self
            .engine()
            .launch_blocking(hello_request())
            .unwrap_or_else(|e| panic!("launch: {e:?}"));
        wait_for(|| self.completed.load(Ordering::Acquire), 1);
        let broadcasts = self.hub().published() - published;
        assert_eq!(broadcasts, HELLO_BROADCASTS, "broadcasts of one hello run");
        let events = self
            .storage()
            .call_blocking(|reply| Command::ListEvents {
                run_id: outcome.run_id.clone(),
                after_seq: -1,
                limit: 1_000,
                reply,
            })
            .unwrap_or_else(|e| panic!("list events: {e}"));
        let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        eprintln!(
            "hello run: {broadcasts} broadcasts, {} persisted events {types:?}",
            events.len()
        );
        events.len() as u64
    }

    fn engine(&self) -> &EngineHandle {
        self.engine
            .as_ref()
            .unwrap_or_else(|| panic!("engine stopped"))
    }

    fn storage(&self) -> &StorageHandle {
        self.storage
            .as_ref()
            .unwrap_or_else(|| panic!("storage closed"))
    }

    fn hub(&self) -> &Hub {
        self.hub.as_ref().unwrap_or_else(|| panic!("hub dropped"))
    }

    /// Launches `RUNS` hello runs from `launchers` threads and waits for every `run.completed`.
    fn launch_and_wait(&self, launchers: usize) {
        let target = self.completed.load(Ordering::Acquire) + RUNS as u64;
        std::thread::scope(|scope| {
            for index in 0..launchers {
                // Spread RUNS exactly, whatever the division leaves over.
                let share = RUNS / launchers + usize::from(index < RUNS % launchers);
                let engine = self.engine();
                scope.spawn(move || {
                    for _ in 0..share {
                        if let Err(error) = engine.launch_blocking(hello_request()) {
                            panic!("launch: {error:?}");
                        }
                    }
                });
            }
        });
        wait_for(|| self.completed.load(Ordering::Acquire), target);
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(engine) = self.engine.take() {
            engine.stop();
        }
        // Storage ends when its last handle (ours, the engine's) is gone; the drainer when the
        // hub is.
        self.storage.take();
        self.hub.take();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn configure(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    // One iteration is about a second: flat sampling takes one per sample instead of criterion's
    // linear 1+2+…+10 (55 iterations).
    group.sampling_mode(SamplingMode::Flat);
}

fn hello_runs(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine/hello_runs");
    configure(&mut group);
    group.throughput(Throughput::Elements(RUNS as u64));
    for full in [true, false] {
        let engine = Engine::start(full);
        for launchers in LAUNCHERS {
            group.bench_with_input(
                BenchmarkId::new(mode_name(full), format!("launchers={launchers}")),
                &launchers,
                |b, &launchers| b.iter(|| engine.launch_and_wait(launchers)),
            );
        }
    }
    group.finish();
}

fn persisted_events(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine/persisted_events");
    configure(&mut group);
    // The wider setting only: the narrow one is a commit-latency figure, already in hello_runs.
    let launchers = LAUNCHERS[LAUNCHERS.len() - 1];
    for full in [true, false] {
        let engine = Engine::start(full);
        group.throughput(Throughput::Elements(RUNS as u64 * engine.events_per_run));
        group.bench_with_input(
            BenchmarkId::new(mode_name(full), format!("launchers={launchers}")),
            &launchers,
            |b, &launchers| b.iter(|| engine.launch_and_wait(launchers)),
        );
    }
    group.finish();
}

/// A gateway with one worker and one admin token on an ephemeral port.
struct HttpGateway {
    dir: PathBuf,
    inner: Option<smithers_gateway::gateway::Gateway>,
    addr: SocketAddr,
}

impl HttpGateway {
    fn start(full: bool) -> HttpGateway {
        let dir = temp_dir("gateway");
        let grant = TokenGrant {
            role: "admin".into(),
            scopes: vec!["*".into()],
            user_id: None,
            token_id: None,
            issued_at_ms: None,
            expires_at_ms: None,
            revoked_at_ms: None,
        };
        let auth = AuthConfig::Token {
            tokens: [(TOKEN.to_string(), grant)].into_iter().collect(),
            allowed_origins: Vec::new(),
        };
        let config = Config {
            listen: "127.0.0.1:0"
                .parse()
                .unwrap_or_else(|e| panic!("listen: {e}")),
            // One worker, as in PERFORMANCE.md's one-server-core RPC figures.
            workers: 1,
            data_dir: dir.clone(),
            driver: DriverKind::Auto,
            gateway: GatewayConfig {
                auth: Some(auth.clone()),
                ..GatewayConfig::default()
            },
        };
        let options = smithers_gateway::gateway::StartOptions {
            workflows_dir: workflows_dir(),
            authenticator: Authenticator::new(auth, None),
            engine: engine::EngineOptions::default(),
            synchronous_full: full,
        };
        let inner = smithers_gateway::gateway::start(config, options)
            .unwrap_or_else(|e| panic!("gateway: {e}"));
        let addr = inner.server.local_addr();
        HttpGateway {
            dir,
            inner: Some(inner),
            addr,
        }
    }

    fn hub(&self) -> &Hub {
        match &self.inner {
            Some(inner) => &inner.server.state().hub,
            None => panic!("gateway stopped"),
        }
    }

    /// `RUNS` launches over `HTTP_CONNECTIONS` keep-alive connections, then waits until the hub
    /// has published every run's broadcasts (no WebSocket subscriber: the worker drops them).
    fn launch_and_wait(&self) {
        let target = self.hub().published() + RUNS as u64 * HELLO_BROADCASTS;
        std::thread::scope(|scope| {
            for index in 0..HTTP_CONNECTIONS {
                let share = RUNS / HTTP_CONNECTIONS + usize::from(index < RUNS % HTTP_CONNECTIONS);
                let addr = self.addr;
                scope.spawn(move || {
                    let mut client = HttpClient::connect(addr);
                    for _ in 0..share {
                        client.launch_hello();
                    }
                });
            }
        });
        wait_for(|| self.hub().published(), target);
    }
}

impl Drop for HttpGateway {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            inner.shutdown();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A minimal keep-alive HTTP/1.1 client: one request at a time, Content-Length framing.
struct HttpClient {
    stream: TcpStream,
    buffer: Vec<u8>,
}

/// On `/v1/rpc/<method>` the body is the params object.
const LAUNCH_BODY: &str = r#"{"workflow":"hello"}"#;

impl HttpClient {
    fn connect(addr: SocketAddr) -> HttpClient {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect: {e}"));
        stream
            .set_nodelay(true)
            .unwrap_or_else(|e| panic!("nodelay: {e}"));
        stream
            .set_read_timeout(Some(COMPLETION_TIMEOUT))
            .unwrap_or_else(|e| panic!("timeout: {e}"));
        HttpClient {
            stream,
            buffer: Vec::with_capacity(4096),
        }
    }

    fn launch_hello(&mut self) {
        let request = format!(
            "POST /v1/rpc/launchRun HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{LAUNCH_BODY}",
            LAUNCH_BODY.len()
        );
        self.stream
            .write_all(request.as_bytes())
            .unwrap_or_else(|e| panic!("write: {e}"));
        let body = self.read_response();
        // A refused launch would make the figure meaningless.
        if !body.windows(9).any(|w| w == br#""ok":true"#) {
            panic!("launch refused: {}", String::from_utf8_lossy(&body));
        }
    }

    /// Reads one response and returns its body.
    fn read_response(&mut self) -> Vec<u8> {
        self.buffer.clear();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buffer[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length:"))
                    .and_then(|value| value.trim().parse().ok())
                    .unwrap_or_else(|| panic!("no content-length in {head}"));
                let start = end + 4;
                while self.buffer.len() < start + length {
                    self.fill(&mut chunk);
                }
                // One request in flight, so nothing follows the body.
                return self.buffer[start..start + length].to_vec();
            }
            self.fill(&mut chunk);
        }
    }

    fn fill(&mut self, chunk: &mut [u8]) {
        let n = self
            .stream
            .read(chunk)
            .unwrap_or_else(|e| panic!("read: {e}"));
        assert!(n > 0, "connection closed mid-response");
        self.buffer.extend_from_slice(&chunk[..n]);
    }
}

fn http_hello_runs(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine/http_hello_runs");
    configure(&mut group);
    group.throughput(Throughput::Elements(RUNS as u64));
    for full in [true, false] {
        let gateway = HttpGateway::start(full);
        group.bench_function(
            BenchmarkId::new(mode_name(full), format!("connections={HTTP_CONNECTIONS}")),
            |b| b.iter(|| gateway.launch_and_wait()),
        );
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // Bounded: 10 one-second iterations per benchmark, so the whole file runs in a few minutes.
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    targets = hello_runs, persisted_events, http_hello_runs
}
criterion_main!(benches);
