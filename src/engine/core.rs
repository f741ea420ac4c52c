//! The engine thread: owns every non-terminal run in memory and advances it (WORKFLOWS.md).
//!
//! One loop turn: wait for a message (RPC command, process event) or the next timer; drain what
//! else is queued; apply it all to the runs in memory; then persist everything the turn changed in
//! one storage write (group commit), and only after COMMIT publish the turn's broadcasts and answer
//! the callers. If the write fails, the callers get the error and the touched runs are reloaded
//! from storage, so memory never runs ahead of what is durable.
//!
//! Invariants: only this thread mutates run state; every event is persisted before it is
//! broadcast; each node state change renders one frame, numbered from 1 per run.

use super::process::{self, AttemptKey, ProcessEvent, RunningProcess};
use super::render::{render, NodeStates, NodeStatus};
use super::workflow::{
    NodeDef, NodeKind, OnDeny, OnTimeout, Registry, TaskBody, TimerDef, WorkflowDef,
};
use crate::devtools::hub::{CommittedFrame, DevToolsHub};
use crate::devtools::snapshot::{agent_meta, AttemptMeta, FrameSource};
use crate::error::{ErrorCode, RpcError};
use crate::events::hub::Hub;
use crate::rpc::frame::{object, write_value};
use crate::rpc::Value;
use crate::storage::{
    ApprovalRow, AttemptRow, Command, FrameRow, Mutation, NodeRow, OutputRow, RunRow, RunState,
    SignalRow, StorageError, StorageHandle, TERMINAL_RUN_STATUSES,
};
use simd_json::prelude::*;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// Longest the loop sleeps without a message or timer (heartbeats are written on this cadence).
const TICK_MAX_MS: u64 = 1_000;
/// Messages drained into one turn at most.
const TURN_MESSAGES_MAX: usize = 4_096;
/// How often a running run's `heartbeat_at_ms` is refreshed.
const HEARTBEAT_EVERY_MS: i64 = 5_000;
/// Queue of RPC commands to the engine.
const ENGINE_QUEUE_MAX: usize = 4_096;

/// Who caused a run to start or resume: becomes `config.auth` (`ctx.auth`, AUTH.md §8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthContext {
    pub triggered_by: String,
    pub role: String,
    pub scopes: Vec<String>,
    pub token_id: Option<String>,
}

impl AuthContext {
    /// The context of an RPC caller.
    pub fn of_caller(principal: &crate::auth::Principal) -> AuthContext {
        AuthContext {
            triggered_by: principal
                .user_id
                .clone()
                .unwrap_or_else(|| "gateway".into()),
            role: principal.role.clone(),
            scopes: principal.scopes.clone(),
            token_id: principal.token_id.clone(),
        }
    }

    /// The system context of timers, cron and webhooks.
    pub fn system(triggered_by: &str) -> AuthContext {
        AuthContext {
            triggered_by: triggered_by.into(),
            role: "system".into(),
            scopes: vec!["*".into()],
            token_id: None,
        }
    }

    fn to_value(&self, now_ms: i64) -> Value {
        object(vec![
            ("triggeredBy", Value::from(self.triggered_by.as_str())),
            (
                "scopes",
                Value::Array(Box::new(
                    self.scopes
                        .iter()
                        .map(|s| Value::from(s.as_str()))
                        .collect(),
                )),
            ),
            ("role", Value::from(self.role.as_str())),
            (
                "tokenId",
                self.token_id.as_deref().map_or(Value::null(), Value::from),
            ),
            ("createdAt", Value::from(crate::clock::iso_from_ms(now_ms))),
        ])
    }
}

#[derive(Clone, Debug)]
pub struct LaunchRequest {
    pub workflow: String,
    pub input: Value,
    pub run_id: Option<String>,
    pub idempotency_key: Option<String>,
    pub auth: AuthContext,
    pub started_by: Option<Value>,
    /// Engine options recorded in the run config (`maxConcurrency`, …).
    pub options: Vec<(String, Value)>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LaunchOutcome {
    pub run_id: String,
    pub workflow: String,
    pub system: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CancelOutcome {
    pub run_id: String,
    pub won: bool,
    pub status: &'static str,
    pub terminal_status: String,
    pub repaired: bool,
}

#[derive(Clone, Debug)]
pub struct DecisionRequest {
    pub run_id: String,
    pub node_id: String,
    pub iteration: i64,
    pub approved: bool,
    pub decision: Option<Value>,
    pub note: Option<String>,
    pub caller: crate::auth::Principal,
}

#[derive(Clone, Debug)]
pub struct SignalRequest {
    pub run_id: String,
    pub signal_name: String,
    pub correlation_id: Option<String>,
    pub payload: Value,
    pub received_by: Option<String>,
    pub auth: AuthContext,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SignalOutcome {
    pub run_id: String,
    pub seq: i64,
    pub signal_name: String,
    pub correlation_id: Option<String>,
    pub received_at_ms: i64,
    /// Whether the run was resumed (the caller auto-subscribes).
    pub resumed: bool,
}

/// `retryTask` (METHODS.md §5.6) after its parameter checks.
#[derive(Clone, Debug)]
pub struct RetryRequest {
    pub run_id: String,
    pub node_id: String,
    pub iteration: i64,
    pub reset_dependents: bool,
    pub auth: AuthContext,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RetryOutcome {
    /// Node ids set back to `pending`, the retried node first.
    pub reset_nodes: Vec<String>,
}

/// `RUN_ACTIVE` of `retryTask`: the run executes in this process.
pub const RETRY_RUN_ACTIVE_MESSAGE: &str =
    "Run is currently executing — cancel or pause it before retrying a task";

type Reply<T> = flume::Sender<Result<T, RpcError>>;

enum Message {
    Launch(LaunchRequest, Reply<LaunchOutcome>),
    Cancel(String, Reply<CancelOutcome>),
    Resume(String, AuthContext, Reply<&'static str>),
    Decide(DecisionRequest, Reply<()>),
    Signal(SignalRequest, Reply<SignalOutcome>),
    /// A scheduled cron fire: a launch whose turn broadcasts `cron.triggered` first (cron id).
    CronFire(LaunchRequest, String, Reply<LaunchOutcome>),
    // Run control (pause, retry).
    Pause(String, Reply<()>),
    RetryTask(RetryRequest, Reply<RetryOutcome>),
    Stop,
}

/// The engine's send side, used by RPC handlers on the workers.
#[derive(Clone, Debug)]
pub struct EngineHandle {
    sender: flume::Sender<Message>,
}

fn unavailable() -> RpcError {
    RpcError::new(ErrorCode::ServerError, "The workflow engine is not running")
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Message::Launch(..) => "Launch",
            Message::Cancel(..) => "Cancel",
            Message::Resume(..) => "Resume",
            Message::Decide(..) => "Decide",
            Message::Signal(..) => "Signal",
            Message::CronFire(..) => "CronFire",
            Message::Pause(..) => "Pause",
            Message::RetryTask(..) => "RetryTask",
            Message::Stop => "Stop",
        })
    }
}

impl EngineHandle {
    async fn ask<T>(&self, build: impl FnOnce(Reply<T>) -> Message) -> Result<T, RpcError> {
        let (reply, receiver) = flume::bounded(1);
        self.sender
            .send_async(build(reply))
            .await
            .map_err(|_| unavailable())?;
        receiver.recv_async().await.map_err(|_| unavailable())?
    }

    pub async fn launch(&self, request: LaunchRequest) -> Result<LaunchOutcome, RpcError> {
        self.ask(|reply| Message::Launch(request, reply)).await
    }

    pub async fn cancel(&self, run_id: String) -> Result<CancelOutcome, RpcError> {
        self.ask(|reply| Message::Cancel(run_id, reply)).await
    }

    /// `resume_requested` or `already_terminal`.
    pub async fn resume(
        &self,
        run_id: String,
        auth: AuthContext,
    ) -> Result<&'static str, RpcError> {
        self.ask(|reply| Message::Resume(run_id, auth, reply)).await
    }

    pub async fn decide(&self, request: DecisionRequest) -> Result<(), RpcError> {
        self.ask(|reply| Message::Decide(request, reply)).await
    }

    pub async fn signal(&self, request: SignalRequest) -> Result<SignalOutcome, RpcError> {
        self.ask(|reply| Message::Signal(request, reply)).await
    }

    // Run control (pause, retry).

    /// Records a durable pause request on a `running` run (METHODS.md §3.5).
    pub async fn pause(&self, run_id: String) -> Result<(), RpcError> {
        self.ask(|reply| Message::Pause(run_id, reply)).await
    }

    /// Resets a node (and what ran after it) of a run that does not execute, and resumes the
    /// run (METHODS.md §5.6); `RUN_ACTIVE` while the run executes.
    pub async fn retry_task(&self, request: RetryRequest) -> Result<RetryOutcome, RpcError> {
        self.ask(|reply| Message::RetryTask(request, reply)).await
    }

    /// Blocking variants for plain threads (cron, tests).
    pub fn launch_blocking(&self, request: LaunchRequest) -> Result<LaunchOutcome, RpcError> {
        let (reply, receiver) = flume::bounded(1);
        self.sender
            .send(Message::Launch(request, reply))
            .map_err(|_| unavailable())?;
        receiver.recv().map_err(|_| unavailable())?
    }

    /// Launches the run of a scheduled cron fire (`cron::scheduler`): like `launch_blocking`, and
    /// the same turn broadcasts `cron.triggered` `{cronId, workflow, runId}` (EVENTS.md §2.3)
    /// ahead of the run's own events, after COMMIT like every broadcast.
    pub fn fire_cron_blocking(
        &self,
        request: LaunchRequest,
        cron_id: String,
    ) -> Result<LaunchOutcome, RpcError> {
        let (reply, receiver) = flume::bounded(1);
        self.sender
            .send(Message::CronFire(request, cron_id, reply))
            .map_err(|_| unavailable())?;
        receiver.recv().map_err(|_| unavailable())?
    }

    /// Asks the engine to stop after its current turn; running processes are left to the OS
    /// (they are in their own groups and are marked interrupted on the next start).
    pub fn stop(&self) {
        let _ = self.sender.send(Message::Stop);
    }
}

/// Settings of the engine.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// `runtime_owner_id` of runs this process executes.
    pub owner_id: String,
    /// Base of the exponential retry backoff (1 s in production; tests shorten it).
    pub retry_backoff_base_ms: u64,
    /// Where committed frames are announced (the gateway shares it with its workers).
    pub devtools: Arc<DevToolsHub>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            owner_id: format!("pid:{}", std::process::id()),
            retry_backoff_base_ms: 1_000,
            devtools: Arc::new(DevToolsHub::default()),
        }
    }
}

/// Starts the engine thread: loads every non-terminal run and resumes it.
pub fn start(
    storage: StorageHandle,
    registry: Arc<Registry>,
    hub: Arc<Hub>,
    options: EngineOptions,
) -> Result<(EngineHandle, std::thread::JoinHandle<()>), StorageError> {
    let active = storage.call_blocking(|reply| Command::LoadActiveRuns { reply })?;
    let (sender, receiver) = flume::bounded(ENGINE_QUEUE_MAX);
    let (process_sender, process_receiver) = flume::unbounded();
    let mut engine = Engine {
        storage,
        registry,
        hub,
        options,
        runs: HashMap::new(),
        timers: BinaryHeap::new(),
        process_sender,
        turn: Turn::default(),
    };
    let now = crate::clock::now_ms() as i64;
    for state in active {
        engine.recover(state, now);
    }
    engine.commit();
    let handle = std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || engine.run(receiver, process_receiver))
        .map_err(|error| {
            StorageError::Unavailable(format!("cannot start the engine thread: {error}"))
        })?;
    Ok((EngineHandle { sender }, handle))
}

/// Why a timer was set; checked against the current state when it fires.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    StaticDone,
    TaskTimeout,
    Retry,
    AutoApprove,
    SignalTimeout,
    TimerWake,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Timer {
    at_ms: i64,
    kind: TimerKind,
    run_id: String,
    node_id: String,
    iteration: i64,
    attempt: i64,
}

/// Runs once the turn's write is settled: with the error when it failed.
type AfterCommit = Box<dyn FnOnce(Option<&StorageError>) + Send>;

/// Effects of one loop turn, persisted and published together.
#[derive(Default)]
struct Turn {
    mutations: Vec<Mutation>,
    broadcasts: Vec<(String, Value)>,
    /// Frames rendered this turn, announced to DevTools after COMMIT.
    frames: Vec<CommittedFrame>,
    after_commit: Vec<AfterCommit>,
    touched: HashSet<String>,
}

struct Run {
    row: RunRow,
    workflow: Arc<WorkflowDef>,
    input: Value,
    nodes: HashMap<(String, i64), NodeRow>,
    attempts: HashMap<(String, i64), AttemptRow>,
    outputs: HashMap<(String, i64), Value>,
    approvals: HashMap<(String, i64), ApprovalRow>,
    /// Signals not yet consumed by a wait.
    signals: Vec<SignalRow>,
    next_signal_seq: i64,
    frame_no: i64,
    loop_iterations: HashMap<String, i64>,
    /// Loop iteration keys by position path (`loop_keys_of`).
    loop_keys: HashMap<String, String>,
    processes: HashMap<(String, i64), RunningProcess>,
    /// Per node iteration, the attempt number before its current start: attempts of a node
    /// started again by `retryTask` continue the numbering, and retries count from the start.
    attempt_bases: HashMap<(String, i64), i64>,
    /// Re-evaluate this run at the end of the turn.
    dirty: bool,
}

/// How far a subtree got.
enum Progress {
    Done,
    Failed(String),
    Active(Blocked),
}

#[derive(Default, Clone, Copy)]
struct Blocked {
    running: bool,
    approval: bool,
    event: bool,
    timer: bool,
}

impl Blocked {
    fn merge(&mut self, other: Blocked) {
        self.running |= other.running;
        self.approval |= other.approval;
        self.event |= other.event;
        self.timer |= other.timer;
    }
}

fn parse_json(text: &str) -> Value {
    let mut bytes = text.as_bytes().to_vec();
    simd_json::to_owned_value(&mut bytes).unwrap_or_else(|_| Value::null())
}

fn to_json(value: &Value) -> String {
    let mut out = Vec::new();
    write_value(&mut out, value);
    String::from_utf8(out).unwrap_or_default()
}

fn error_value(message: &str) -> Value {
    object(vec![("message", Value::from(message))])
}

fn is_terminal(status: &str) -> bool {
    TERMINAL_RUN_STATUSES.contains(&status)
}

fn not_found(run_id: &str) -> RpcError {
    RpcError::new(ErrorCode::NotFound, format!("Run not found: {run_id}"))
}

/// Each loop's iteration key by its position path (`.0.2`), numbered as the renderer numbers
/// loops (`render::loop_iteration_key`: pre-order, document order).
fn loop_keys_of(nodes: &[NodeDef]) -> HashMap<String, String> {
    fn walk(nodes: &[NodeDef], path: &str, ordinal: &mut usize, out: &mut HashMap<String, String>) {
        for (index, node) in nodes.iter().enumerate() {
            let here = format!("{path}.{index}");
            match &node.kind {
                NodeKind::Loop { children, .. } => {
                    out.insert(
                        here.clone(),
                        super::render::loop_iteration_key(&node.id, *ordinal),
                    );
                    *ordinal += 1;
                    walk(children, &here, ordinal, out);
                }
                NodeKind::Sequence { children } | NodeKind::Parallel { children, .. } => {
                    walk(children, &here, ordinal, out)
                }
                _ => {}
            }
        }
    }
    let mut out = HashMap::new();
    walk(nodes, "", &mut 0, &mut out);
    out
}

fn leaf_ids(nodes: &[NodeDef], out: &mut Vec<String>) {
    for node in nodes {
        match &node.kind {
            NodeKind::Sequence { children }
            | NodeKind::Parallel { children, .. }
            | NodeKind::Loop { children, .. } => leaf_ids(children, out),
            _ => out.push(node.id.clone()),
        }
    }
}

fn find_node<'a>(nodes: &'a [NodeDef], id: &str) -> Option<&'a NodeDef> {
    for node in nodes {
        if node.id == id {
            return Some(node);
        }
        match &node.kind {
            NodeKind::Sequence { children }
            | NodeKind::Parallel { children, .. }
            | NodeKind::Loop { children, .. } => {
                if let Some(found) = find_node(children, id) {
                    return Some(found);
                }
            }
            _ => {}
        }
    }
    None
}

/// Follows a dotted `input.a.b` path into the run input.
fn correlation_value(input: &Value, path: &str) -> Option<String> {
    let mut current = input;
    for segment in path.strip_prefix("input.").unwrap_or(path).split('.') {
        current = current.get(segment)?;
    }
    match current {
        Value::String(text) => Some(text.trim().to_string()).filter(|t| !t.is_empty()),
        Value::Static(simd_json::StaticNode::Null) => None,
        other => Some(to_json(other)),
    }
}

struct Engine {
    storage: StorageHandle,
    registry: Arc<Registry>,
    hub: Arc<Hub>,
    options: EngineOptions,
    runs: HashMap<String, Run>,
    timers: BinaryHeap<Reverse<Timer>>,
    process_sender: flume::Sender<ProcessEvent>,
    turn: Turn,
}

impl Engine {
    fn run(mut self, messages: flume::Receiver<Message>, processes: flume::Receiver<ProcessEvent>) {
        loop {
            let now = crate::clock::now_ms() as i64;
            let next_timer = self.timers.peek().map(|Reverse(timer)| timer.at_ms);
            let wait_ms = next_timer.map_or(TICK_MAX_MS as i64, |at| {
                (at - now).clamp(0, TICK_MAX_MS as i64)
            });
            let mut stop = false;
            let mut drained = 0;
            // Wait for the first message, then take whatever else is queued.
            let first = flume::Selector::new()
                .recv(&messages, |message| {
                    message.map(Some).unwrap_or(Some(Message::Stop))
                })
                .recv(&processes, |event| {
                    if let Ok(event) = event {
                        self.on_process_event(event);
                    }
                    None
                })
                .wait_timeout(Duration::from_millis(wait_ms as u64));
            if let Ok(Some(message)) = first {
                stop |= self.on_message(message);
                drained += 1;
            }
            while drained < TURN_MESSAGES_MAX {
                if let Ok(event) = processes.try_recv() {
                    self.on_process_event(event);
                    drained += 1;
                    continue;
                }
                match messages.try_recv() {
                    Ok(message) => {
                        stop |= self.on_message(message);
                        drained += 1;
                    }
                    Err(flume::TryRecvError::Empty) => break,
                    Err(flume::TryRecvError::Disconnected) => {
                        stop = true;
                        break;
                    }
                }
            }
            self.fire_timers(crate::clock::now_ms() as i64);
            self.advance_dirty();
            self.heartbeats(crate::clock::now_ms() as i64);
            self.commit();
            if stop {
                tracing::info!(runs = self.runs.len(), "engine stopped");
                return;
            }
        }
    }

    /// Persists the turn, then publishes and answers; on failure answers with the error and
    /// reloads the runs the turn touched.
    fn commit(&mut self) {
        let turn = std::mem::take(&mut self.turn);
        if turn.mutations.is_empty() {
            for callback in turn.after_commit {
                callback(None);
            }
            return;
        }
        let mutations = turn.mutations;
        let result = self
            .storage
            .call_blocking(|reply| Command::Write { mutations, reply });
        match result {
            Ok(_) => {
                // Answers first: a caller that launched a run should see its response before the
                // run's events whenever both reach the same socket.
                for callback in turn.after_commit {
                    callback(None);
                }
                self.hub.publish(turn.broadcasts);
                self.options.devtools.frames_committed(turn.frames);
            }
            Err(error) => {
                tracing::error!(%error, runs = turn.touched.len(), "engine write failed; reloading runs");
                for callback in turn.after_commit {
                    callback(Some(&error));
                }
                for run_id in turn.touched {
                    self.reload(&run_id);
                }
            }
        }
    }

    fn reload(&mut self, run_id: &str) {
        if let Some(mut run) = self.runs.remove(run_id) {
            for process in run.processes.values() {
                process.kill_group();
            }
            run.processes.clear();
        }
        let loaded = self.storage.call_blocking(|reply| Command::LoadRunState {
            run_id: run_id.to_string(),
            reply,
        });
        match loaded {
            Ok(state) if state.run.as_ref().is_some_and(|r| !is_terminal(&r.status)) => {
                self.recover(state, crate::clock::now_ms() as i64)
            }
            Ok(_) => {}
            Err(error) => tracing::error!(%error, run_id, "cannot reload run"),
        }
    }

    /// Replies to `reply` after the turn commits: `value` on success, the storage error otherwise.
    fn reply_after_commit<T: Send + 'static>(&mut self, reply: Reply<T>, value: T) {
        self.turn.after_commit.push(Box::new(move |error| {
            let _ = reply.send(match error {
                None => Ok(value),
                Some(error) => Err(storage_rpc_error(error)),
            });
        }));
    }

    fn on_message(&mut self, message: Message) -> bool {
        match message {
            Message::Launch(request, reply) => match self.launch(request) {
                Ok(outcome) => self.reply_after_commit(reply, outcome),
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
            },
            Message::Cancel(run_id, reply) => match self.cancel(&run_id) {
                Ok(outcome) => self.reply_after_commit(reply, outcome),
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
            },
            Message::Resume(run_id, auth, reply) => match self.resume(&run_id, auth) {
                Ok(status) => self.reply_after_commit(reply, status),
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
            },
            Message::Decide(request, reply) => match self.decide(request) {
                Ok(()) => self.reply_after_commit(reply, ()),
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
            },
            Message::Signal(request, reply) => match self.signal(request) {
                Ok(outcome) => self.reply_after_commit(reply, outcome),
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
            },
            Message::CronFire(request, cron_id, reply) => {
                // Everything the launch broadcasts comes after this mark.
                let mark = self.turn.broadcasts.len();
                match self.launch(request) {
                    Ok(outcome) => {
                        let payload = object(vec![
                            ("cronId", Value::from(cron_id.as_str())),
                            ("workflow", Value::from(outcome.workflow.as_str())),
                            ("runId", Value::from(outcome.run_id.as_str())),
                        ]);
                        let at = mark.min(self.turn.broadcasts.len());
                        self.turn
                            .broadcasts
                            .insert(at, ("cron.triggered".into(), payload));
                        self.reply_after_commit(reply, outcome)
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error));
                    }
                }
            }
            Message::Pause(run_id, reply) => match self.pause(&run_id) {
                Ok(()) => self.reply_after_commit(reply, ()),
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
            },
            Message::RetryTask(request, reply) => match self.retry_task(request) {
                Ok(outcome) => self.reply_after_commit(reply, outcome),
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
            },
            Message::Stop => return true,
        }
        false
    }

    fn stored_run(&self, run_id: &str) -> Result<Option<RunRow>, RpcError> {
        self.storage
            .call_blocking(|reply| Command::GetRun {
                run_id: run_id.to_string(),
                reply,
            })
            .map_err(|error| storage_rpc_error(&error))
    }

    // ---- Commands ----

    fn launch(&mut self, request: LaunchRequest) -> Result<LaunchOutcome, RpcError> {
        let Some(workflow) = self.registry.workflows.get(&request.workflow).cloned() else {
            return Err(RpcError::new(
                ErrorCode::NotFound,
                format!("Unknown workflow: {}", request.workflow),
            ));
        };
        if let Some(key) = &request.idempotency_key {
            let existing = self
                .storage
                .call_blocking(|reply| Command::FindRunByIdempotencyKey {
                    key: key.clone(),
                    reply,
                })
                .map_err(|error| storage_rpc_error(&error))?;
            if let Some(existing) = existing {
                let system = system_of(&existing);
                let workflow = workflow_key_of(&existing);
                return Ok(LaunchOutcome {
                    run_id: existing.run_id,
                    workflow,
                    system,
                });
            }
        }
        let run_id = request
            .run_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        if self.runs.contains_key(&run_id) || self.stored_run(&run_id)?.is_some() {
            return Err(RpcError::new(
                ErrorCode::Conflict,
                format!("Run {run_id} is already active"),
            ));
        }
        let now = crate::clock::now_ms() as i64;
        let mut config = vec![
            ("gatewayWorkflowKey", Value::from(workflow.key.as_str())),
            (
                "gatewayTriggeredBy",
                Value::from(request.auth.triggered_by.as_str()),
            ),
            ("gatewaySystem", Value::from(workflow.system)),
            ("auth", request.auth.to_value(now)),
        ];
        if let Some(started_by) = request.started_by.clone() {
            config.push(("startedBy", started_by));
        }
        let mut config = match object(config) {
            Value::Object(map) => *map,
            _ => simd_json::owned::Object::default(),
        };
        for (key, value) in request.options {
            config.insert(key, value);
        }
        let row = RunRow {
            run_id: run_id.clone(),
            parent_run_id: None,
            workflow_name: workflow.key.clone(),
            workflow_path: Some(workflow.path.display().to_string()),
            workflow_hash: Some(workflow.hash.clone()),
            status: "running".into(),
            created_at_ms: now,
            started_at_ms: Some(now),
            finished_at_ms: None,
            heartbeat_at_ms: Some(now),
            runtime_owner_id: Some(self.options.owner_id.clone()),
            cancel_requested_at_ms: None,
            pause_requested_at_ms: None,
            error_json: None,
            config_json: Some(to_json(&Value::Object(Box::new(config)))),
            input_json: to_json(&request.input),
            idempotency_key: request.idempotency_key.clone(),
        };
        self.turn.mutations.push(Mutation::InsertRun(row.clone()));
        self.turn.touched.insert(run_id.clone());
        let run = Run {
            row,
            workflow: Arc::new(workflow.clone()),
            input: request.input,
            nodes: HashMap::new(),
            attempts: HashMap::new(),
            outputs: HashMap::new(),
            approvals: HashMap::new(),
            signals: Vec::new(),
            next_signal_seq: 0,
            frame_no: 0,
            loop_iterations: HashMap::new(),
            loop_keys: loop_keys_of(&workflow.nodes),
            processes: HashMap::new(),
            attempt_bases: HashMap::new(),
            dirty: true,
        };
        self.runs.insert(run_id.clone(), run);
        self.persist_event(
            &run_id,
            "RunStarted",
            object(vec![("runId", Value::from(run_id.as_str()))]),
            None,
        );
        self.render_frame(&run_id);
        Ok(LaunchOutcome {
            run_id,
            workflow: workflow.key,
            system: workflow.system,
        })
    }

    fn cancel(&mut self, run_id: &str) -> Result<CancelOutcome, RpcError> {
        if !self.runs.contains_key(run_id) {
            let Some(row) = self.stored_run(run_id)? else {
                return Err(RpcError::new(ErrorCode::RunNotFound, "Run not found"));
            };
            if row.status == "cancelled" || row.status == "canceled" {
                return Ok(CancelOutcome {
                    run_id: run_id.into(),
                    won: false,
                    status: "already-terminal",
                    terminal_status: "cancelled".into(),
                    repaired: false,
                });
            }
            return Err(RpcError::new(
                ErrorCode::RunNotActive,
                "Run is not currently active",
            ));
        }
        let now = crate::clock::now_ms() as i64;
        self.terminate_run(run_id, now, "cancelled", None);
        Ok(CancelOutcome {
            run_id: run_id.into(),
            won: true,
            status: "cancelled",
            terminal_status: "cancelled".into(),
            repaired: false,
        })
    }

    fn resume(&mut self, run_id: &str, auth: AuthContext) -> Result<&'static str, RpcError> {
        let now = crate::clock::now_ms() as i64;
        let Some(run) = self.runs.get_mut(run_id) else {
            return match self.stored_run(run_id)? {
                None => Err(not_found(run_id)),
                Some(row) if ["finished", "failed", "cancelled"].contains(&row.status.as_str()) => {
                    Ok("already_terminal")
                }
                // `continued` is not terminal for resume, but nothing of it runs here.
                Some(_) => Ok("resume_requested"),
            };
        };
        restamp_auth(&mut run.row, &auth, now);
        let was_paused = run.row.pause_requested_at_ms.take().is_some();
        run.dirty = true;
        self.turn.mutations.push(Mutation::PutRun(run.row.clone()));
        self.turn.touched.insert(run_id.to_string());
        if was_paused {
            self.rearm_retries(run_id, now);
        }
        Ok("resume_requested")
    }

    fn decide(&mut self, request: DecisionRequest) -> Result<(), RpcError> {
        let key = (request.node_id.clone(), request.iteration);
        let Some(run) = self.runs.get(&request.run_id) else {
            if self.stored_run(&request.run_id)?.is_none() {
                return Err(not_found(&request.run_id));
            }
            let stored = self
                .storage
                .call_blocking(|reply| Command::GetApproval {
                    run_id: request.run_id.clone(),
                    node_id: request.node_id.clone(),
                    iteration: request.iteration,
                    reply,
                })
                .map_err(|error| storage_rpc_error(&error))?;
            if let Some(approval) = stored.filter(|a| a.status != "requested") {
                return Err(already_decided(&approval));
            }
            return Err(not_waiting(&request.node_id));
        };
        if let Some(approval) = run.approvals.get(&key) {
            if approval.status != "requested" {
                return Err(already_decided(approval));
            }
        }
        let waiting = run
            .nodes
            .get(&key)
            .is_some_and(|node| node.state == "waiting-approval");
        let Some(approval) = run.approvals.get(&key).filter(|_| waiting).cloned() else {
            return Err(not_waiting(&request.node_id));
        };
        check_restrictions(&approval, &request.caller)?;
        let decision_value = request.decision.as_ref().map(|decision| {
            decision
                .get("value")
                .cloned()
                .unwrap_or_else(|| decision.clone())
        });
        let now = crate::clock::now_ms() as i64;
        let mut decided = approval;
        decided.status = if request.approved {
            "approved"
        } else {
            "denied"
        }
        .into();
        decided.decided_at_ms = Some(now);
        decided.note = request.note.clone();
        decided.decided_by = request.caller.user_id.clone();
        decided.decision_json = decision_value.as_ref().map(to_json);
        let auth = AuthContext::of_caller(&request.caller);
        self.apply_decision(&request.run_id, decided, request.approved, false, now);
        if let Some(run) = self.runs.get_mut(&request.run_id) {
            restamp_auth(&mut run.row, &auth, now);
            self.turn.mutations.push(Mutation::PutRun(run.row.clone()));
        }
        Ok(())
    }

    fn signal(&mut self, request: SignalRequest) -> Result<SignalOutcome, RpcError> {
        let now = crate::clock::now_ms() as i64;
        if !self.runs.contains_key(&request.run_id) {
            // Stored for the record even when nothing of the run waits any more.
            let Some(_) = self.stored_run(&request.run_id)? else {
                return Err(not_found(&request.run_id));
            };
            let state = self
                .storage
                .call_blocking(|reply| Command::LoadRunState {
                    run_id: request.run_id.clone(),
                    reply,
                })
                .map_err(|error| storage_rpc_error(&error))?;
            let seq = state
                .signals
                .iter()
                .map(|s| s.seq)
                .max()
                .map_or(0, |max| max + 1);
            self.turn
                .mutations
                .push(Mutation::InsertSignal(signal_row(&request, seq, now)));
            return Ok(outcome_of(&request, seq, now, false));
        }
        let Some(run) = self.runs.get_mut(&request.run_id) else {
            return Err(not_found(&request.run_id));
        };
        let seq = run.next_signal_seq;
        run.next_signal_seq += 1;
        let row = signal_row(&request, seq, now);
        self.turn
            .mutations
            .push(Mutation::InsertSignal(row.clone()));
        run.signals.push(row);
        restamp_auth(&mut run.row, &request.auth, now);
        run.dirty = true;
        self.turn.mutations.push(Mutation::PutRun(run.row.clone()));
        self.turn.touched.insert(request.run_id.clone());
        // A node already waiting for it is resolved now.
        self.match_waiting_signals(&request.run_id, now);
        Ok(outcome_of(&request, seq, now, true))
    }
}

fn signal_row(request: &SignalRequest, seq: i64, now: i64) -> SignalRow {
    SignalRow {
        run_id: request.run_id.clone(),
        seq,
        signal_name: request.signal_name.clone(),
        correlation_id: request.correlation_id.clone(),
        payload_json: to_json(&request.payload),
        received_at_ms: now,
        received_by: request.received_by.clone(),
        consumed_by_node: None,
        consumed_by_iteration: None,
    }
}

fn outcome_of(request: &SignalRequest, seq: i64, now: i64, resumed: bool) -> SignalOutcome {
    SignalOutcome {
        run_id: request.run_id.clone(),
        seq,
        signal_name: request.signal_name.clone(),
        correlation_id: request.correlation_id.clone(),
        received_at_ms: now,
        resumed,
    }
}

fn restamp_auth(row: &mut RunRow, auth: &AuthContext, now: i64) {
    let mut config = row
        .config_json
        .as_deref()
        .map(parse_json)
        .unwrap_or_else(|| Value::Object(Box::default()));
    if let Value::Object(map) = &mut config {
        map.insert("auth".into(), auth.to_value(now));
    }
    row.config_json = Some(to_json(&config));
}

fn already_decided(approval: &ApprovalRow) -> RpcError {
    RpcError::new(
        ErrorCode::AlreadyDecided,
        format!("Approval for {} has already been decided", approval.node_id),
    )
    .with("runId", approval.run_id.as_str())
    .with("nodeId", approval.node_id.as_str())
    .with("iteration", approval.iteration)
    .with("status", approval.status.as_str())
}

fn not_waiting(node_id: &str) -> RpcError {
    RpcError::new(
        ErrorCode::InvalidInputLegacy,
        format!("Node {node_id} is not waiting for approval."),
    )
}

/// AUTH.md §6: `allowedUsers`, then `allowedScopes`.
fn check_restrictions(
    approval: &ApprovalRow,
    caller: &crate::auth::Principal,
) -> Result<(), RpcError> {
    let request = approval
        .request_json
        .as_deref()
        .map(parse_json)
        .unwrap_or_else(Value::null);
    let list = |name: &str| -> Result<Vec<String>, RpcError> {
        match request.get(name) {
            None => Ok(Vec::new()),
            Some(Value::Static(simd_json::StaticNode::Null)) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| match item.as_str() {
                    Some(text) if !text.is_empty() => Ok(text.to_string()),
                    _ => Err(RpcError::new(ErrorCode::InvalidRequestLegacy, format!("Malformed approval request: {name} must be an array of non-empty strings"))),
                })
                .collect(),
            Some(_) => Err(RpcError::new(ErrorCode::InvalidRequestLegacy, format!("Malformed approval request: {name} must be an array of non-empty strings"))),
        }
    };
    let users = list("allowedUsers")?;
    let scopes = list("allowedScopes")?;
    if !users.is_empty()
        && !caller
            .user_id
            .as_ref()
            .is_some_and(|user| users.contains(user))
    {
        return Err(RpcError::new(
            ErrorCode::Forbidden,
            "User is not allowed to decide this approval",
        ));
    }
    if !scopes.is_empty() {
        let granted = scopes
            .iter()
            .any(|wanted| match crate::auth::scope::Scope::parse(wanted) {
                Some(scope) => {
                    crate::auth::scope::has_scope(&caller.scopes, scope, "submitApproval")
                }
                None => caller
                    .scopes
                    .iter()
                    .any(|held| held.trim() == "*" || held.trim() == wanted),
            });
        if !granted {
            return Err(RpcError::new(
                ErrorCode::Forbidden,
                "Connection is missing required approval scope",
            ));
        }
    }
    Ok(())
}

/// A storage failure as the RPC error the caller sees (ERRORS.md §6: engine failures are
/// `SERVER_ERROR`).
pub fn storage_rpc_error(error: &StorageError) -> RpcError {
    RpcError::new(ErrorCode::ServerError, format!("Storage failure: {error}"))
}

/// `config.gatewaySystem`; missing or malformed counts as true (fail closed, METHODS.md §3.9).
pub fn system_of(row: &RunRow) -> bool {
    row.config_json
        .as_deref()
        .map(parse_json)
        .and_then(|config| config.get("gatewaySystem").and_then(|v| v.as_bool()))
        .unwrap_or(true)
}

/// The run's resolved workflow key: the key recorded at launch, else its workflow name.
pub fn workflow_key_of(row: &RunRow) -> String {
    row.config_json
        .as_deref()
        .map(parse_json)
        .and_then(|config| {
            config
                .get("gatewayWorkflowKey")
                .and_then(|v| v.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| row.workflow_name.clone())
}

impl Engine {
    // ---- Recovery ----

    /// Takes a persisted non-terminal run back into memory (start-up or after a failed write).
    /// In-flight attempts were interrupted: they fail and retry per their policy; waits keep
    /// waiting with their original deadlines.
    fn recover(&mut self, state: RunState, now: i64) {
        let Some(row) = state.run else { return };
        let Some(workflow) = self.registry.workflows.get(&workflow_key_of(&row)).cloned() else {
            tracing::error!(run_id = %row.run_id, workflow = %row.workflow_name, "run's workflow is no longer registered; failing it");
            let mut row = row;
            let run_id = row.run_id.clone();
            row.status = "failed".into();
            row.finished_at_ms = Some(now);
            row.error_json = Some(to_json(&error_value("workflow no longer registered")));
            self.turn.mutations.push(Mutation::PutRun(row));
            self.persist_event(
                &run_id,
                "RunFailed",
                object(vec![("runId", Value::from(run_id.as_str()))]),
                Some((
                    "run.completed",
                    object(vec![
                        ("runId", Value::from(run_id.as_str())),
                        ("status", Value::from("failed")),
                        ("error", error_value("workflow no longer registered")),
                    ]),
                )),
            );
            return;
        };
        let run_id = row.run_id.clone();
        let mut run = Run {
            input: parse_json(&row.input_json),
            row,
            workflow: Arc::new(workflow),
            nodes: state
                .nodes
                .into_iter()
                .map(|n| ((n.node_id.clone(), n.iteration), n))
                .collect(),
            attempts: HashMap::new(),
            outputs: state
                .outputs
                .into_iter()
                .map(|o| {
                    (
                        (o.node_id.clone(), o.iteration),
                        parse_json(&o.payload_json),
                    )
                })
                .collect(),
            approvals: state
                .approvals
                .into_iter()
                .map(|a| ((a.node_id.clone(), a.iteration), a))
                .collect(),
            next_signal_seq: state
                .signals
                .iter()
                .map(|s| s.seq)
                .max()
                .map_or(0, |m| m + 1),
            signals: state
                .signals
                .into_iter()
                .filter(|s| s.consumed_by_node.is_none())
                .collect(),
            frame_no: state.last_frame_no,
            loop_iterations: HashMap::new(),
            loop_keys: HashMap::new(),
            processes: HashMap::new(),
            attempt_bases: HashMap::new(),
            dirty: true,
        };
        run.loop_keys = loop_keys_of(&run.workflow.nodes);
        for attempt in state.attempts {
            // A cancelled or finished attempt ends a start (`begin_attempts`).
            if attempt.state == "cancelled" || attempt.state == "finished" {
                let key = (attempt.node_id.clone(), attempt.iteration);
                let base = run.attempt_bases.entry(key).or_insert(0);
                *base = (*base).max(attempt.attempt);
            }
            let key = (attempt.node_id.clone(), attempt.iteration);
            let newer = run
                .attempts
                .get(&key)
                .is_none_or(|existing| existing.attempt < attempt.attempt);
            if newer {
                run.attempts.insert(key, attempt);
            }
        }
        // Loop counters: the highest iteration any of a loop's leaves reached.
        let mut loops = Vec::new();
        collect_loops(&run.workflow.nodes, "", &run.loop_keys, &mut loops);
        for (key, leaves) in loops {
            let highest = run
                .nodes
                .keys()
                .filter(|(id, _)| leaves.contains(id))
                .map(|(_, iteration)| *iteration)
                .max()
                .unwrap_or(0);
            run.loop_iterations.insert(key, highest);
        }
        run.row.runtime_owner_id = Some(self.options.owner_id.clone());
        run.row.heartbeat_at_ms = Some(now);
        self.turn.mutations.push(Mutation::PutRun(run.row.clone()));
        self.turn.touched.insert(run_id.clone());
        let attempts: Vec<AttemptRow> = run.attempts.values().cloned().collect();
        self.runs.insert(run_id.clone(), run);
        for attempt in attempts {
            let node_state = self
                .runs
                .get(&run_id)
                .and_then(|r| r.nodes.get(&(attempt.node_id.clone(), attempt.iteration)))
                .map(|n| n.state.clone());
            match (attempt.state.as_str(), node_state.as_deref()) {
                ("in-progress", Some("in-progress")) => {
                    let key = AttemptKey {
                        run_id: run_id.clone(),
                        node_id: attempt.node_id.clone(),
                        iteration: attempt.iteration,
                        attempt: attempt.attempt,
                    };
                    self.attempt_failed(&key, "interrupted", now);
                }
                // A failed attempt of a node still in progress was waiting for its retry
                // backoff; that timer lived only in memory, so set it again.
                ("failed", Some("in-progress")) => {
                    let due = attempt.finished_at_ms.unwrap_or(now).saturating_add(
                        self.retry_backoff_ms(
                            attempt.attempt
                                - self.attempt_base(&run_id, &attempt.node_id, attempt.iteration),
                        ) as i64,
                    );
                    self.set_timer(
                        due,
                        TimerKind::Retry,
                        &run_id,
                        &attempt.node_id,
                        attempt.iteration,
                        attempt.attempt,
                    );
                }
                ("waiting-timer", Some("waiting-timer")) => {
                    let fires = attempt
                        .meta_json
                        .as_deref()
                        .map(parse_json)
                        .and_then(|m| {
                            m.get("timer")
                                .and_then(|t| t.get("firesAtMs"))
                                .and_then(|v| v.as_i64())
                        })
                        .unwrap_or(now);
                    self.set_timer(
                        fires,
                        TimerKind::TimerWake,
                        &run_id,
                        &attempt.node_id,
                        attempt.iteration,
                        attempt.attempt,
                    );
                }
                ("waiting-event", Some("waiting-event")) => {
                    if let Some(NodeKind::Signal(signal)) =
                        self.node_kind(&run_id, &attempt.node_id)
                    {
                        if let Some(timeout) = signal.timeout_ms {
                            self.set_timer(
                                attempt.started_at_ms + timeout as i64,
                                TimerKind::SignalTimeout,
                                &run_id,
                                &attempt.node_id,
                                attempt.iteration,
                                attempt.attempt,
                            );
                        }
                    }
                }
                ("waiting-approval", Some("waiting-approval")) => {
                    if let Some(NodeKind::Approval(approval)) =
                        self.node_kind(&run_id, &attempt.node_id)
                    {
                        if let Some(after) = approval.auto_approve_after_ms {
                            self.set_timer(
                                attempt.started_at_ms + after as i64,
                                TimerKind::AutoApprove,
                                &run_id,
                                &attempt.node_id,
                                attempt.iteration,
                                attempt.attempt,
                            );
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// Exponential backoff before the attempt after `attempt` (1-based).
    fn retry_backoff_ms(&self, attempt: i64) -> u64 {
        self.options
            .retry_backoff_base_ms
            .saturating_mul(1 << (attempt - 1).clamp(0, 16))
    }

    fn node_kind(&self, run_id: &str, node_id: &str) -> Option<NodeKind> {
        let run = self.runs.get(run_id)?;
        find_node(&run.workflow.nodes, node_id).map(|node| node.kind.clone())
    }

    // ---- Events, frames, timers ----

    /// Persists an engine event and, when it maps to a wire event, queues its broadcast.
    fn persist_event(
        &mut self,
        run_id: &str,
        event_type: &str,
        mut payload: Value,
        broadcast: Option<(&str, Value)>,
    ) {
        let now = crate::clock::now_ms() as i64;
        if let Value::Object(map) = &mut payload {
            map.insert("type".into(), Value::from(event_type));
            map.insert("timestampMs".into(), Value::from(now));
        }
        self.turn.mutations.push(Mutation::AppendEvent {
            run_id: run_id.to_string(),
            timestamp_ms: now,
            event_type: event_type.to_string(),
            payload_json: to_json(&payload),
        });
        self.turn.touched.insert(run_id.to_string());
        if let Some((name, wire)) = broadcast {
            self.turn.broadcasts.push((name.to_string(), wire));
        }
    }

    fn set_timer(
        &mut self,
        at_ms: i64,
        kind: TimerKind,
        run_id: &str,
        node_id: &str,
        iteration: i64,
        attempt: i64,
    ) {
        self.timers.push(Reverse(Timer {
            at_ms,
            kind,
            run_id: run_id.into(),
            node_id: node_id.into(),
            iteration,
            attempt,
        }));
    }

    fn render_frame(&mut self, run_id: &str) {
        let Some(run) = self.runs.get_mut(run_id) else {
            return;
        };
        let states: NodeStates = run
            .nodes
            .iter()
            .map(|(key, node)| {
                (
                    key.clone(),
                    NodeStatus {
                        state: node.state.clone(),
                        attempt: node.last_attempt.unwrap_or(0),
                    },
                )
            })
            .collect();
        let frame = render(&run.workflow, &states, &run.loop_iterations);
        run.frame_no += 1;
        let xml_json = to_json(&frame.tree);
        let xml_hash = {
            use sha2::Digest;
            let digest = sha2::Sha256::digest(xml_json.as_bytes());
            digest.iter().map(|b| format!("{b:02x}")).collect()
        };
        let created_at_ms = crate::clock::now_ms() as i64;
        let task_index_json = to_json(&frame.task_index);
        // A watched run's frame goes to DevTools as rendered, so its streams never read it back
        // from storage; with it the attempts that recorded an agent (all started by now).
        let source = self.options.devtools.is_watched(run_id).then(|| {
            let attempts = run
                .attempts
                .values()
                .filter_map(|attempt| {
                    Some(AttemptMeta {
                        node_id: attempt.node_id.clone(),
                        iteration: attempt.iteration,
                        attempt: attempt.attempt,
                        started_at_ms: attempt.started_at_ms,
                        meta: agent_meta(attempt.meta_json.as_deref()?)?,
                    })
                })
                .collect();
            Arc::new(FrameSource {
                run_id: run_id.to_string(),
                frame_no: run.frame_no,
                created_at_ms,
                tree: frame.tree,
                task_index: frame.task_index,
                attempts,
            })
        });
        self.turn.frames.push(CommittedFrame {
            run_id: run_id.to_string(),
            frame_no: run.frame_no,
            source,
        });
        self.turn.mutations.push(Mutation::InsertFrame(FrameRow {
            run_id: run_id.to_string(),
            frame_no: run.frame_no,
            created_at_ms,
            xml_json,
            xml_hash,
            task_index_json,
        }));
    }

    /// Changes a node's state, persists the row and renders a frame.
    fn set_node_state(
        &mut self,
        run_id: &str,
        node_id: &str,
        iteration: i64,
        state: &str,
        attempt: Option<i64>,
    ) {
        let now = crate::clock::now_ms() as i64;
        let Some(run) = self.runs.get_mut(run_id) else {
            return;
        };
        let label = find_node(&run.workflow.nodes, node_id).and_then(|n| n.label.clone());
        let node = run
            .nodes
            .entry((node_id.to_string(), iteration))
            .or_insert_with(|| NodeRow {
                run_id: run_id.to_string(),
                node_id: node_id.to_string(),
                iteration,
                state: "pending".into(),
                last_attempt: None,
                updated_at_ms: now,
                output_table: String::new(),
                label,
            });
        node.state = state.to_string();
        if attempt.is_some() {
            node.last_attempt = attempt;
        }
        node.updated_at_ms = now;
        let row = node.clone();
        run.dirty = true;
        self.turn.mutations.push(Mutation::PutNode(row));
        self.turn.touched.insert(run_id.to_string());
        self.render_frame(run_id);
    }

    fn put_attempt(&mut self, attempt: AttemptRow) {
        if let Some(run) = self.runs.get_mut(&attempt.run_id) {
            run.attempts.insert(
                (attempt.node_id.clone(), attempt.iteration),
                attempt.clone(),
            );
        }
        self.turn.mutations.push(Mutation::PutAttempt(attempt));
    }

    fn node_event(
        &mut self,
        run_id: &str,
        node_id: &str,
        engine_type: &str,
        wire: &str,
        fields: Vec<(&str, Value)>,
    ) {
        let mut payload = vec![
            ("runId", Value::from(run_id)),
            ("nodeId", Value::from(node_id)),
        ];
        payload.extend(fields);
        let payload = object(payload);
        self.persist_event(run_id, engine_type, payload.clone(), Some((wire, payload)));
    }

    fn fire_timers(&mut self, now: i64) {
        while self
            .timers
            .peek()
            .is_some_and(|Reverse(timer)| timer.at_ms <= now)
        {
            let Some(Reverse(timer)) = self.timers.pop() else {
                break;
            };
            self.on_timer(timer, now);
        }
    }

    fn current_attempt(&self, timer: &Timer) -> Option<AttemptRow> {
        let run = self.runs.get(&timer.run_id)?;
        let attempt = run
            .attempts
            .get(&(timer.node_id.clone(), timer.iteration))?;
        (attempt.attempt == timer.attempt).then(|| attempt.clone())
    }

    fn on_timer(&mut self, timer: Timer, now: i64) {
        let Some(attempt) = self.current_attempt(&timer) else {
            return;
        };
        let key = AttemptKey {
            run_id: timer.run_id.clone(),
            node_id: timer.node_id.clone(),
            iteration: timer.iteration,
            attempt: timer.attempt,
        };
        match timer.kind {
            TimerKind::StaticDone if attempt.state == "in-progress" => {
                if let Some(NodeKind::Task(task)) = self.node_kind(&timer.run_id, &timer.node_id) {
                    if let TaskBody::Static { output } = task.body {
                        self.attempt_succeeded(&key, output, None, now);
                    }
                }
            }
            TimerKind::TaskTimeout if attempt.state == "in-progress" => {
                if let Some(process) = self.runs.get_mut(&timer.run_id).and_then(|run| {
                    run.processes
                        .remove(&(timer.node_id.clone(), timer.iteration))
                }) {
                    process.kill_group();
                }
                self.attempt_failed(&key, "timed out", now);
            }
            // A pausing or paused run starts no new attempt; resuming sets the retry again.
            TimerKind::Retry if !self.pause_requested(&timer.run_id) => {
                let node_state = self
                    .runs
                    .get(&timer.run_id)
                    .and_then(|r| r.nodes.get(&(timer.node_id.clone(), timer.iteration)))
                    .map(|n| n.state.clone());
                if node_state.as_deref() == Some("in-progress") && attempt.state == "failed" {
                    self.start_task_attempt(
                        &timer.run_id,
                        &timer.node_id,
                        timer.iteration,
                        timer.attempt + 1,
                        now,
                    );
                }
            }
            TimerKind::AutoApprove if attempt.state == "waiting-approval" => {
                let approval = self
                    .runs
                    .get(&timer.run_id)
                    .and_then(|r| r.approvals.get(&(timer.node_id.clone(), timer.iteration)))
                    .cloned();
                if let Some(mut approval) = approval.filter(|a| a.status == "requested") {
                    approval.status = "approved".into();
                    approval.decided_at_ms = Some(now);
                    approval.auto_approved = true;
                    self.apply_decision(&timer.run_id, approval, true, true, now);
                }
            }
            TimerKind::SignalTimeout if attempt.state == "waiting-event" => {
                if let Some(NodeKind::Signal(signal)) =
                    self.node_kind(&timer.run_id, &timer.node_id)
                {
                    let mut done = attempt.clone();
                    done.finished_at_ms = Some(now);
                    match signal.on_timeout {
                        OnTimeout::Fail => {
                            done.state = "failed".into();
                            done.error_json = Some(to_json(&error_value("signal wait timed out")));
                            self.put_attempt(done);
                            self.set_node_state(
                                &timer.run_id,
                                &timer.node_id,
                                timer.iteration,
                                "failed",
                                None,
                            );
                            self.node_event(
                                &timer.run_id,
                                &timer.node_id,
                                "NodeFailed",
                                "node.failed",
                                vec![
                                    ("state", Value::from("failed")),
                                    ("error", error_value("signal wait timed out")),
                                ],
                            );
                        }
                        OnTimeout::Skip => {
                            done.state = "cancelled".into();
                            self.put_attempt(done);
                            self.set_node_state(
                                &timer.run_id,
                                &timer.node_id,
                                timer.iteration,
                                "skipped",
                                None,
                            );
                            self.node_event(
                                &timer.run_id,
                                &timer.node_id,
                                "NodeSkipped",
                                "node.skipped",
                                vec![("state", Value::from("skipped"))],
                            );
                        }
                        OnTimeout::Continue => {
                            self.complete_node(
                                done,
                                object(vec![("timedOut", Value::from(true))]),
                                now,
                            );
                        }
                    }
                }
            }
            TimerKind::TimerWake if attempt.state == "waiting-timer" => {
                let done = attempt.clone();
                self.complete_node(done, object(vec![("firedAtMs", Value::from(now))]), now);
            }
            _ => {}
        }
    }

    fn store_output(
        &mut self,
        run_id: &str,
        node_id: &str,
        iteration: i64,
        output: Value,
        now: i64,
    ) {
        self.turn.mutations.push(Mutation::PutOutput(OutputRow {
            run_id: run_id.to_string(),
            node_id: node_id.to_string(),
            iteration,
            payload_json: to_json(&output),
            created_at_ms: now,
        }));
        if let Some(run) = self.runs.get_mut(run_id) {
            run.outputs.insert((node_id.to_string(), iteration), output);
            if let Some(node) = run.nodes.get_mut(&(node_id.to_string(), iteration)) {
                node.output_table = "_smithers_outputs".into();
            }
        }
    }

    fn heartbeats(&mut self, now: i64) {
        let stale: Vec<String> = self
            .runs
            .iter()
            .filter(|(_, run)| {
                run.row
                    .heartbeat_at_ms
                    .is_none_or(|at| now - at >= HEARTBEAT_EVERY_MS)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for run_id in stale {
            if let Some(run) = self.runs.get_mut(&run_id) {
                run.row.heartbeat_at_ms = Some(now);
                self.turn.mutations.push(Mutation::PutRun(run.row.clone()));
                self.turn.touched.insert(run_id);
            }
        }
    }
}

fn collect_loops(
    nodes: &[NodeDef],
    path: &str,
    keys: &HashMap<String, String>,
    out: &mut Vec<(String, Vec<String>)>,
) {
    for (index, node) in nodes.iter().enumerate() {
        let here = format!("{path}.{index}");
        match &node.kind {
            NodeKind::Loop { children, .. } => {
                let mut leaves = Vec::new();
                leaf_ids(children, &mut leaves);
                if let Some(key) = keys.get(&here) {
                    out.push((key.clone(), leaves));
                }
                collect_loops(children, &here, keys, out);
            }
            NodeKind::Sequence { children } | NodeKind::Parallel { children, .. } => {
                collect_loops(children, &here, keys, out)
            }
            _ => {}
        }
    }
}

impl Engine {
    // ---- Advancing runs ----

    fn advance_dirty(&mut self) {
        // Bounded: each pass either settles a run or changes a node state.
        for _ in 0..64 {
            let dirty: Vec<String> = self
                .runs
                .iter()
                .filter(|(_, run)| run.dirty)
                .map(|(id, _)| id.clone())
                .collect();
            if dirty.is_empty() {
                return;
            }
            for run_id in dirty {
                if let Some(run) = self.runs.get_mut(&run_id) {
                    run.dirty = false;
                }
                self.advance(&run_id);
            }
        }
    }

    fn advance(&mut self, run_id: &str) {
        let Some(run) = self.runs.get(run_id) else {
            return;
        };
        if run.row.pause_requested_at_ms.is_some() {
            // Pausing (METHODS.md §3.5): nothing new is scheduled; once the attempts in flight
            // have ended, the run is `paused`.
            let in_flight = !run.processes.is_empty()
                || run.attempts.values().any(|a| a.state == "in-progress");
            if !in_flight && run.row.status != "paused" {
                self.set_run_status(run_id, "paused");
            }
            return;
        }
        let workflow = run.workflow.clone();
        let now = crate::clock::now_ms() as i64;
        let progress = self.evaluate_sequence(run_id, &workflow.nodes, 0, "", now);
        match progress {
            Progress::Done => self.finish_run(run_id, now),
            Progress::Failed(message) => self.terminate_run(run_id, now, "failed", Some(message)),
            Progress::Active(blocked) => {
                let status = if blocked.running {
                    "running"
                } else if blocked.approval {
                    "waiting-approval"
                } else if blocked.event {
                    "waiting-event"
                } else if blocked.timer {
                    "waiting-timer"
                } else {
                    "running"
                };
                let current = self.runs.get(run_id).map(|r| r.row.status.clone());
                if current.as_deref() != Some(status) {
                    self.set_run_status(run_id, status);
                }
            }
        }
    }

    fn set_run_status(&mut self, run_id: &str, status: &str) {
        if let Some(run) = self.runs.get_mut(run_id) {
            run.row.status = status.to_string();
            self.turn.mutations.push(Mutation::PutRun(run.row.clone()));
            self.turn.touched.insert(run_id.to_string());
        }
    }

    fn evaluate_sequence(
        &mut self,
        run_id: &str,
        nodes: &[NodeDef],
        iteration: i64,
        path: &str,
        now: i64,
    ) -> Progress {
        for (index, node) in nodes.iter().enumerate() {
            match self.evaluate(run_id, node, iteration, &format!("{path}.{index}"), now) {
                Progress::Done => continue,
                other => return other,
            }
        }
        Progress::Done
    }

    fn untouched(&self, run_id: &str, node: &NodeDef, iteration: i64) -> bool {
        let mut leaves = Vec::new();
        leaf_ids(std::slice::from_ref(node), &mut leaves);
        let Some(run) = self.runs.get(run_id) else {
            return true;
        };
        let untouched = leaves.iter().all(|id| {
            run.nodes
                .get(&(id.clone(), iteration))
                .is_none_or(|n| n.state == "pending")
        });
        untouched
    }

    fn evaluate(
        &mut self,
        run_id: &str,
        node: &NodeDef,
        iteration: i64,
        path: &str,
        now: i64,
    ) -> Progress {
        match &node.kind {
            NodeKind::Sequence { children } => {
                self.evaluate_sequence(run_id, children, iteration, path, now)
            }
            NodeKind::Parallel {
                children,
                max_concurrency,
            } => {
                let mut blocked = Blocked::default();
                let mut active = 0usize;
                let mut all_done = true;
                for (index, child) in children.iter().enumerate() {
                    if max_concurrency.is_some_and(|max| active >= max)
                        && self.untouched(run_id, child, iteration)
                    {
                        all_done = false;
                        blocked.running = true;
                        continue;
                    }
                    match self.evaluate(run_id, child, iteration, &format!("{path}.{index}"), now) {
                        Progress::Done => {}
                        Progress::Failed(message) => return Progress::Failed(message),
                        Progress::Active(child_blocked) => {
                            all_done = false;
                            active += 1;
                            blocked.merge(child_blocked);
                        }
                    }
                }
                if all_done {
                    Progress::Done
                } else {
                    Progress::Active(blocked)
                }
            }
            NodeKind::Loop {
                children,
                max_iterations,
                until,
            } => {
                let Some(key) = self
                    .runs
                    .get(run_id)
                    .and_then(|r| r.loop_keys.get(path).cloned())
                else {
                    return Progress::Failed(format!("loop at {path} has no iteration key"));
                };
                // Bounded by max_iterations: each pass either stops or moves to the next iteration.
                loop {
                    let current = self
                        .runs
                        .get(run_id)
                        .and_then(|r| r.loop_iterations.get(&key).copied())
                        .unwrap_or(0);
                    match self.evaluate_sequence(run_id, children, current, path, now) {
                        Progress::Done => {}
                        other => return other,
                    }
                    let satisfied = until.as_ref().is_some_and(|until| {
                        self.runs
                            .get(run_id)
                            .and_then(|r| r.outputs.get(&(until.node.clone(), current)))
                            .and_then(|output| output.get(until.field.as_str()))
                            .is_some_and(|value| *value == until.equals)
                    });
                    if satisfied || current + 1 >= i64::from(*max_iterations) {
                        return Progress::Done;
                    }
                    if let Some(run) = self.runs.get_mut(run_id) {
                        run.loop_iterations.insert(key.clone(), current + 1);
                    }
                    self.render_frame(run_id);
                }
            }
            _ => self.evaluate_leaf(run_id, node, iteration, now),
        }
    }

    fn evaluate_leaf(
        &mut self,
        run_id: &str,
        node: &NodeDef,
        iteration: i64,
        now: i64,
    ) -> Progress {
        let state = self
            .runs
            .get(run_id)
            .and_then(|r| r.nodes.get(&(node.id.clone(), iteration)))
            .map(|n| n.state.clone());
        let state = match state {
            None => {
                self.start_leaf(run_id, node, iteration, now);
                self.runs
                    .get(run_id)
                    .and_then(|r| r.nodes.get(&(node.id.clone(), iteration)))
                    .map(|n| n.state.clone())
                    .unwrap_or_default()
            }
            Some(state) if state == "pending" => {
                self.start_leaf(run_id, node, iteration, now);
                self.runs
                    .get(run_id)
                    .and_then(|r| r.nodes.get(&(node.id.clone(), iteration)))
                    .map(|n| n.state.clone())
                    .unwrap_or_default()
            }
            Some(state) => state,
        };
        let continue_on_fail = matches!(&node.kind, NodeKind::Task(task) if task.continue_on_fail);
        match state.as_str() {
            "finished" | "skipped" => Progress::Done,
            "failed" if continue_on_fail => Progress::Done,
            "failed" => Progress::Failed(format!("node {} failed", node.id)),
            "cancelled" => Progress::Failed(format!("node {} was cancelled", node.id)),
            "waiting-approval" => Progress::Active(Blocked {
                approval: true,
                ..Blocked::default()
            }),
            "waiting-event" => Progress::Active(Blocked {
                event: true,
                ..Blocked::default()
            }),
            "waiting-timer" => Progress::Active(Blocked {
                timer: true,
                ..Blocked::default()
            }),
            _ => Progress::Active(Blocked {
                running: true,
                ..Blocked::default()
            }),
        }
    }

    fn new_attempt(
        &self,
        run_id: &str,
        node_id: &str,
        iteration: i64,
        attempt: i64,
        state: &str,
        now: i64,
    ) -> AttemptRow {
        AttemptRow {
            run_id: run_id.to_string(),
            node_id: node_id.to_string(),
            iteration,
            attempt,
            state: state.to_string(),
            started_at_ms: now,
            finished_at_ms: None,
            heartbeat_at_ms: None,
            heartbeat_data_json: None,
            error_json: None,
            meta_json: None,
            exit_code: None,
        }
    }

    fn start_leaf(&mut self, run_id: &str, node: &NodeDef, iteration: i64, now: i64) {
        // A node started again (retryTask) keeps its earlier attempts: numbering continues, and
        // retries count from this start.
        let first = self.begin_attempts(run_id, &node.id, iteration);
        match &node.kind {
            NodeKind::Task(_) => self.start_task_attempt(run_id, &node.id, iteration, first, now),
            NodeKind::Approval(approval) => {
                let request = object(vec![
                    ("mode", Value::from("gate")),
                    ("title", Value::from(approval.title.as_str())),
                    (
                        "summary",
                        approval
                            .summary
                            .as_deref()
                            .map_or(Value::null(), Value::from),
                    ),
                    (
                        "allowedScopes",
                        Value::Array(Box::new(
                            approval
                                .allowed_scopes
                                .iter()
                                .map(|s| Value::from(s.as_str()))
                                .collect(),
                        )),
                    ),
                    (
                        "allowedUsers",
                        Value::Array(Box::new(
                            approval
                                .allowed_users
                                .iter()
                                .map(|s| Value::from(s.as_str()))
                                .collect(),
                        )),
                    ),
                    (
                        "autoApprove",
                        approval
                            .auto_approve_after_ms
                            .map_or(Value::null(), |after| {
                                object(vec![("afterMs", Value::from(after))])
                            }),
                    ),
                ]);
                let row = ApprovalRow {
                    run_id: run_id.to_string(),
                    node_id: node.id.clone(),
                    iteration,
                    status: "requested".into(),
                    requested_at_ms: Some(now),
                    decided_at_ms: None,
                    note: None,
                    decided_by: None,
                    request_json: Some(to_json(&request)),
                    decision_json: None,
                    auto_approved: false,
                };
                if let Some(run) = self.runs.get_mut(run_id) {
                    run.approvals
                        .insert((node.id.clone(), iteration), row.clone());
                }
                self.turn.mutations.push(Mutation::PutApproval(row));
                let attempt =
                    self.new_attempt(run_id, &node.id, iteration, first, "waiting-approval", now);
                self.put_attempt(attempt);
                self.set_node_state(run_id, &node.id, iteration, "waiting-approval", Some(first));
                self.node_event(
                    run_id,
                    &node.id,
                    "NodeWaitingApproval",
                    "node.waiting_approval",
                    vec![
                        ("state", Value::from("waiting")),
                        ("iteration", Value::from(iteration)),
                    ],
                );
                self.node_event(
                    run_id,
                    &node.id,
                    "ApprovalRequested",
                    "approval.requested",
                    vec![("iteration", Value::from(iteration))],
                );
                if let Some(after) = approval.auto_approve_after_ms {
                    self.set_timer(
                        now + after as i64,
                        TimerKind::AutoApprove,
                        run_id,
                        &node.id,
                        iteration,
                        first,
                    );
                }
            }
            NodeKind::Signal(signal) => {
                let correlation = signal.correlation.as_deref().and_then(|path| {
                    self.runs
                        .get(run_id)
                        .and_then(|r| correlation_value(&r.input, path))
                });
                let meta = object(vec![(
                    "waitForEvent",
                    object(vec![
                        ("signalName", Value::from(signal.name.as_str())),
                        (
                            "correlationId",
                            correlation.as_deref().map_or(Value::null(), Value::from),
                        ),
                    ]),
                )]);
                let mut attempt =
                    self.new_attempt(run_id, &node.id, iteration, first, "waiting-event", now);
                attempt.meta_json = Some(to_json(&meta));
                self.put_attempt(attempt);
                self.set_node_state(run_id, &node.id, iteration, "waiting-event", Some(first));
                if let Some(timeout) = signal.timeout_ms {
                    self.set_timer(
                        now + timeout as i64,
                        TimerKind::SignalTimeout,
                        run_id,
                        &node.id,
                        iteration,
                        first,
                    );
                }
                self.match_waiting_signals(run_id, now);
            }
            NodeKind::Timer(timer) => {
                let fires = match timer {
                    TimerDef::DurationMs(ms) => now + *ms as i64,
                    TimerDef::UntilMs(at) => *at,
                };
                let mut attempt =
                    self.new_attempt(run_id, &node.id, iteration, first, "waiting-timer", now);
                attempt.meta_json = Some(to_json(&object(vec![(
                    "timer",
                    object(vec![("firesAtMs", Value::from(fires))]),
                )])));
                self.put_attempt(attempt);
                self.set_node_state(run_id, &node.id, iteration, "waiting-timer", Some(first));
                self.node_event(
                    run_id,
                    &node.id,
                    "NodeWaitingTimer",
                    "node.waiting_timer",
                    vec![
                        ("state", Value::from("waiting")),
                        ("iteration", Value::from(iteration)),
                    ],
                );
                self.set_timer(
                    fires,
                    TimerKind::TimerWake,
                    run_id,
                    &node.id,
                    iteration,
                    first,
                );
            }
            NodeKind::Sequence { .. } | NodeKind::Parallel { .. } | NodeKind::Loop { .. } => {}
        }
    }

    fn start_task_attempt(
        &mut self,
        run_id: &str,
        node_id: &str,
        iteration: i64,
        attempt_no: i64,
        now: i64,
    ) {
        let Some(NodeKind::Task(task)) = self.node_kind(run_id, node_id) else {
            return;
        };
        let attempt = self.new_attempt(run_id, node_id, iteration, attempt_no, "in-progress", now);
        self.put_attempt(attempt);
        self.set_node_state(run_id, node_id, iteration, "in-progress", Some(attempt_no));
        if attempt_no == self.attempt_base(run_id, node_id, iteration) + 1 {
            self.node_event(
                run_id,
                node_id,
                "NodeStarted",
                "node.started",
                vec![("state", Value::from("in-progress"))],
            );
        }
        let key = AttemptKey {
            run_id: run_id.to_string(),
            node_id: node_id.to_string(),
            iteration,
            attempt: attempt_no,
        };
        match &task.body {
            TaskBody::Static { output } => {
                if task.delay_ms == 0 {
                    self.attempt_succeeded(&key, output.clone(), None, now);
                } else {
                    self.set_timer(
                        now + task.delay_ms as i64,
                        TimerKind::StaticDone,
                        run_id,
                        node_id,
                        iteration,
                        attempt_no,
                    );
                }
            }
            TaskBody::Command { run: argv } => {
                let Some(run) = self.runs.get(run_id) else {
                    return;
                };
                let deps = object(
                    run.outputs
                        .iter()
                        .map(|((id, _), output)| (id.as_str(), output.clone()))
                        .collect::<BTreeMap<_, _>>()
                        .into_iter()
                        .collect(),
                );
                let stdin = object(vec![
                    ("runId", Value::from(run_id)),
                    ("nodeId", Value::from(node_id)),
                    ("iteration", Value::from(iteration)),
                    ("attempt", Value::from(attempt_no)),
                    ("input", run.input.clone()),
                    ("deps", deps),
                ]);
                let mut env: Vec<(String, String)> = task
                    .env
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                env.push(("SMITHERS_RUN_ID".into(), run_id.to_string()));
                env.push(("SMITHERS_NODE_ID".into(), node_id.to_string()));
                let mut bytes = Vec::new();
                write_value(&mut bytes, &stdin);
                bytes.push(b'\n');
                if let Some(process) =
                    process::spawn(key, argv, &env, bytes, self.process_sender.clone())
                {
                    if let Some(run) = self.runs.get_mut(run_id) {
                        run.processes
                            .insert((node_id.to_string(), iteration), process);
                    }
                    if let Some(timeout) = task.timeout_ms {
                        self.set_timer(
                            now + timeout as i64,
                            TimerKind::TaskTimeout,
                            run_id,
                            node_id,
                            iteration,
                            attempt_no,
                        );
                    }
                }
            }
        }
    }

    fn on_process_event(&mut self, event: ProcessEvent) {
        let now = crate::clock::now_ms() as i64;
        match event {
            ProcessEvent::StderrLine { key, line } => {
                let current = self
                    .runs
                    .get(&key.run_id)
                    .and_then(|r| r.attempts.get(&(key.node_id.clone(), key.iteration)))
                    .is_some_and(|a| a.attempt == key.attempt && a.state == "in-progress");
                if !current {
                    return;
                }
                if let Some(mut attempt) = self
                    .runs
                    .get(&key.run_id)
                    .and_then(|r| r.attempts.get(&(key.node_id.clone(), key.iteration)))
                    .cloned()
                {
                    attempt.heartbeat_at_ms = Some(now);
                    attempt.heartbeat_data_json =
                        Some(to_json(&object(vec![("line", Value::from(line.as_str()))])));
                    self.put_attempt(attempt);
                }
                self.node_event(
                    &key.run_id,
                    &key.node_id,
                    "NodeOutput",
                    "task.output",
                    vec![
                        ("output", Value::from(line.as_str())),
                        ("stream", Value::from("stderr")),
                    ],
                );
                self.node_event(
                    &key.run_id,
                    &key.node_id,
                    "TaskHeartbeat",
                    "task.heartbeat",
                    vec![
                        ("iteration", Value::from(key.iteration)),
                        ("attempt", Value::from(key.attempt)),
                    ],
                );
            }
            ProcessEvent::SpawnFailed { key, message } => self.attempt_failed(&key, &message, now),
            ProcessEvent::Exited { key, exit } => {
                let current = self
                    .runs
                    .get(&key.run_id)
                    .and_then(|r| r.attempts.get(&(key.node_id.clone(), key.iteration)))
                    .is_some_and(|a| a.attempt == key.attempt && a.state == "in-progress");
                if let Some(run) = self.runs.get_mut(&key.run_id) {
                    run.processes.remove(&(key.node_id.clone(), key.iteration));
                    run.dirty = true;
                }
                if !current {
                    return;
                }
                if exit.stdout_truncated {
                    return self.attempt_failed(&key, "output too large", now);
                }
                if exit.code != Some(0) {
                    let message = match (exit.code, exit.signal) {
                        (Some(code), _) => format!("exited with code {code}"),
                        (None, Some(signal)) => format!("killed by signal {signal}"),
                        _ => "exited abnormally".into(),
                    };
                    return self.attempt_failed_with_code(&key, &message, exit.code, now);
                }
                let mut stdout = exit.stdout;
                match simd_json::to_owned_value(&mut stdout) {
                    Ok(output @ Value::Object(_)) => {
                        self.attempt_succeeded(&key, output, Some(0), now)
                    }
                    _ => self.attempt_failed_with_code(
                        &key,
                        "stdout is not one JSON object",
                        Some(0),
                        now,
                    ),
                }
            }
        }
    }

    fn attempt_succeeded(
        &mut self,
        key: &AttemptKey,
        output: Value,
        exit_code: Option<i32>,
        now: i64,
    ) {
        let Some(mut attempt) = self
            .runs
            .get(&key.run_id)
            .and_then(|r| r.attempts.get(&(key.node_id.clone(), key.iteration)))
            .cloned()
        else {
            return;
        };
        attempt.exit_code = exit_code.map(i64::from);
        self.complete_node(attempt, output, now);
    }

    /// Finishes a node: its attempt `finished`, its output stored, the node `finished`, and
    /// `node.finished` broadcast.
    fn complete_node(&mut self, mut attempt: AttemptRow, output: Value, now: i64) {
        let (run_id, node_id, iteration) = (
            attempt.run_id.clone(),
            attempt.node_id.clone(),
            attempt.iteration,
        );
        attempt.state = "finished".into();
        attempt.finished_at_ms = Some(now);
        self.put_attempt(attempt);
        self.store_output(&run_id, &node_id, iteration, output, now);
        self.set_node_state(&run_id, &node_id, iteration, "finished", None);
        self.node_event(
            &run_id,
            &node_id,
            "NodeFinished",
            "node.finished",
            vec![("state", Value::from("finished"))],
        );
    }

    fn attempt_failed(&mut self, key: &AttemptKey, message: &str, now: i64) {
        self.attempt_failed_with_code(key, message, None, now);
    }

    /// Fails the attempt; retries with exponential backoff while attempts remain, else fails the
    /// node.
    fn attempt_failed_with_code(
        &mut self,
        key: &AttemptKey,
        message: &str,
        exit_code: Option<i32>,
        now: i64,
    ) {
        let Some(mut attempt) = self
            .runs
            .get(&key.run_id)
            .and_then(|r| r.attempts.get(&(key.node_id.clone(), key.iteration)))
            .cloned()
        else {
            return;
        };
        attempt.state = "failed".into();
        attempt.finished_at_ms = Some(now);
        attempt.exit_code = exit_code.map(i64::from);
        attempt.error_json = Some(to_json(&error_value(message)));
        self.put_attempt(attempt);
        let retries = match self.node_kind(&key.run_id, &key.node_id) {
            Some(NodeKind::Task(task)) => i64::from(task.retries),
            _ => 0,
        };
        let relative = key.attempt - self.attempt_base(&key.run_id, &key.node_id, key.iteration);
        if relative <= retries {
            let backoff = self.retry_backoff_ms(relative);
            self.node_event(
                &key.run_id,
                &key.node_id,
                "NodeRetrying",
                "node.retrying",
                vec![
                    ("state", Value::from("in-progress")),
                    ("attempt", Value::from(key.attempt + 1)),
                ],
            );
            self.set_timer(
                now + backoff as i64,
                TimerKind::Retry,
                &key.run_id,
                &key.node_id,
                key.iteration,
                key.attempt,
            );
            if let Some(run) = self.runs.get_mut(&key.run_id) {
                run.dirty = true;
            }
            return;
        }
        self.set_node_state(&key.run_id, &key.node_id, key.iteration, "failed", None);
        self.node_event(
            &key.run_id,
            &key.node_id,
            "NodeFailed",
            "node.failed",
            vec![
                ("state", Value::from("failed")),
                ("error", error_value(message)),
            ],
        );
    }

    fn apply_decision(
        &mut self,
        run_id: &str,
        approval: ApprovalRow,
        approved: bool,
        auto: bool,
        now: i64,
    ) {
        let node_id = approval.node_id.clone();
        let iteration = approval.iteration;
        let decision = approval
            .decision_json
            .as_deref()
            .map(parse_json)
            .unwrap_or_else(Value::null);
        let note = approval.note.clone();
        if let Some(run) = self.runs.get_mut(run_id) {
            run.approvals
                .insert((node_id.clone(), iteration), approval.clone());
        }
        self.turn.mutations.push(Mutation::PutApproval(approval));
        let (engine_type, wire) = if auto {
            ("ApprovalAutoApproved", "approval.auto_approved")
        } else if approved {
            ("ApprovalGranted", "approval.decided")
        } else {
            ("ApprovalDenied", "approval.decided")
        };
        let mut fields = vec![("iteration", Value::from(iteration))];
        if !auto {
            fields.push(("approved", Value::from(approved)));
        }
        self.node_event(run_id, &node_id, engine_type, wire, fields);
        let Some(mut attempt) = self
            .runs
            .get(run_id)
            .and_then(|r| r.attempts.get(&(node_id.clone(), iteration)))
            .cloned()
        else {
            return;
        };
        attempt.finished_at_ms = Some(now);
        let output = object(vec![
            ("approved", Value::from(approved)),
            ("decision", decision),
            ("note", note.as_deref().map_or(Value::null(), Value::from)),
        ]);
        let on_deny = match self.node_kind(run_id, &node_id) {
            Some(NodeKind::Approval(def)) => def.on_deny,
            _ => OnDeny::Fail,
        };
        if approved || on_deny == OnDeny::Continue {
            self.complete_node(attempt, output, now);
        } else if on_deny == OnDeny::Skip {
            attempt.state = "cancelled".into();
            self.put_attempt(attempt);
            self.store_output(run_id, &node_id, iteration, output, now);
            self.set_node_state(run_id, &node_id, iteration, "skipped", None);
            self.node_event(
                run_id,
                &node_id,
                "NodeSkipped",
                "node.skipped",
                vec![("state", Value::from("skipped"))],
            );
        } else {
            attempt.state = "failed".into();
            attempt.error_json = Some(to_json(&error_value("approval denied")));
            self.put_attempt(attempt);
            self.set_node_state(run_id, &node_id, iteration, "failed", None);
            self.node_event(
                run_id,
                &node_id,
                "NodeFailed",
                "node.failed",
                vec![
                    ("state", Value::from("failed")),
                    ("error", error_value("approval denied")),
                ],
            );
        }
    }

    /// Resolves every waiting signal node of the run that an unconsumed signal matches.
    fn match_waiting_signals(&mut self, run_id: &str, now: i64) {
        let Some(run) = self.runs.get(run_id) else {
            return;
        };
        let mut matches = Vec::new();
        let mut taken = HashSet::new();
        for ((node_id, iteration), node) in &run.nodes {
            if node.state != "waiting-event" {
                continue;
            }
            let Some(attempt) = run.attempts.get(&(node_id.clone(), *iteration)) else {
                continue;
            };
            let wait = attempt
                .meta_json
                .as_deref()
                .map(parse_json)
                .and_then(|m| m.get("waitForEvent").cloned());
            let Some(wait) = wait else { continue };
            let name = wait
                .get("signalName")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .trim()
                .to_string();
            let correlation = wait
                .get("correlationId")
                .and_then(|v| v.as_str())
                .map(|s| s.trim().to_string());
            let found = run
                .signals
                .iter()
                .filter(|s| !taken.contains(&s.seq))
                .find(|signal| {
                    signal.signal_name.trim() == name
                        && signal.correlation_id.as_deref().map(str::trim) == correlation.as_deref()
                });
            if let Some(signal) = found {
                taken.insert(signal.seq);
                matches.push((node_id.clone(), *iteration, signal.clone(), attempt.clone()));
            }
        }
        for (node_id, iteration, signal, attempt) in matches {
            if let Some(run) = self.runs.get_mut(run_id) {
                run.signals.retain(|s| s.seq != signal.seq);
            }
            self.turn.mutations.push(Mutation::ConsumeSignal {
                run_id: run_id.to_string(),
                seq: signal.seq,
                node_id: node_id.clone(),
                iteration,
            });
            self.complete_node(attempt, parse_json(&signal.payload_json), now);
        }
    }

    fn finish_run(&mut self, run_id: &str, now: i64) {
        let Some(mut run) = self.runs.remove(run_id) else {
            return;
        };
        run.row.status = "finished".into();
        run.row.finished_at_ms = Some(now);
        run.row.heartbeat_at_ms = Some(now);
        self.turn.mutations.push(Mutation::PutRun(run.row.clone()));
        self.turn.touched.insert(run_id.to_string());
        // EVENTS.md §2.2: children that failed without failing the run (continue_on_fail).
        let mut failed_keys: Vec<(String, i64)> = run
            .nodes
            .values()
            .filter(|node| node.state == "failed")
            .map(|node| (node.node_id.clone(), node.iteration))
            .collect();
        failed_keys.sort();
        let mut fields = vec![
            ("runId", Value::from(run_id)),
            ("status", Value::from("finished")),
        ];
        if !failed_keys.is_empty() {
            fields.push(("failedChildren", Value::from(failed_keys.len() as u64)));
            fields.push((
                "failedChildKeys",
                Value::Array(Box::new(
                    failed_keys
                        .iter()
                        .map(|(id, iteration)| Value::from(format!("{id}::{iteration}")))
                        .collect(),
                )),
            ));
        }
        let payload = object(fields);
        self.persist_event(
            run_id,
            "RunFinished",
            payload.clone(),
            Some(("run.completed", payload)),
        );
    }

    /// Ends a run as `cancelled` or `failed`: kills its processes, cancels what is still running
    /// or waiting, denies pending approvals (on cancel), and broadcasts `run.completed` once.
    fn terminate_run(&mut self, run_id: &str, now: i64, status: &str, error: Option<String>) {
        let Some(run) = self.runs.get_mut(run_id) else {
            return;
        };
        for process in run.processes.values() {
            process.kill_group();
        }
        run.processes.clear();
        let open: Vec<(String, i64)> = run
            .nodes
            .iter()
            .filter(|(_, node)| {
                matches!(
                    node.state.as_str(),
                    "in-progress"
                        | "waiting-approval"
                        | "waiting-event"
                        | "waiting-timer"
                        | "pending"
                )
            })
            .map(|(key, _)| key.clone())
            .collect();
        let pending_approvals: Vec<ApprovalRow> = if status == "cancelled" {
            run.approvals
                .values()
                .filter(|a| a.status == "requested")
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        for mut approval in pending_approvals {
            approval.status = "denied".into();
            approval.decided_at_ms = Some(now);
            approval.note = Some("Run cancelled".into());
            approval.decided_by = Some("smithers:cancel".into());
            approval.decision_json = Some(r#"{"cancelled":true}"#.into());
            self.turn.mutations.push(Mutation::PutApproval(approval));
        }
        for (node_id, iteration) in open {
            if let Some(mut attempt) = self
                .runs
                .get(run_id)
                .and_then(|r| r.attempts.get(&(node_id.clone(), iteration)))
                .cloned()
            {
                if matches!(
                    attempt.state.as_str(),
                    "in-progress" | "waiting-approval" | "waiting-event" | "waiting-timer"
                ) {
                    attempt.state = "cancelled".into();
                    attempt.finished_at_ms = Some(now);
                    self.put_attempt(attempt);
                }
            }
            self.set_node_state(run_id, &node_id, iteration, "cancelled", None);
            self.node_event(
                run_id,
                &node_id,
                "NodeCancelled",
                "node.cancelled",
                vec![("state", Value::from("cancelled"))],
            );
        }
        let Some(mut run) = self.runs.remove(run_id) else {
            return;
        };
        run.row.status = status.to_string();
        run.row.finished_at_ms = Some(now);
        if status == "cancelled" {
            run.row.cancel_requested_at_ms = Some(now);
        }
        if let Some(message) = &error {
            run.row.error_json = Some(to_json(&error_value(message)));
        }
        self.turn.mutations.push(Mutation::PutRun(run.row.clone()));
        self.turn.touched.insert(run_id.to_string());
        let mut payload = vec![
            ("runId", Value::from(run_id)),
            ("status", Value::from(status)),
        ];
        if let Some(message) = &error {
            payload.push(("error", error_value(message)));
        }
        let payload = object(payload);
        let engine_type = if status == "cancelled" {
            "RunCancelled"
        } else {
            "RunFailed"
        };
        self.persist_event(
            run_id,
            engine_type,
            payload.clone(),
            Some(("run.completed", payload)),
        );
    }
}

impl Engine {
    // ---- Run control (pause, retry) ----

    fn pause_requested(&self, run_id: &str) -> bool {
        self.runs
            .get(run_id)
            .is_some_and(|run| run.row.pause_requested_at_ms.is_some())
    }

    /// The attempt number before the node iteration's current start (0 for a first start).
    fn attempt_base(&self, run_id: &str, node_id: &str, iteration: i64) -> i64 {
        self.runs
            .get(run_id)
            .and_then(|run| {
                run.attempt_bases
                    .get(&(node_id.to_string(), iteration))
                    .copied()
            })
            .unwrap_or(0)
    }

    /// Begins a start of a node iteration: its first attempt number (after any earlier one).
    fn begin_attempts(&mut self, run_id: &str, node_id: &str, iteration: i64) -> i64 {
        let Some(run) = self.runs.get_mut(run_id) else {
            return 1;
        };
        let key = (node_id.to_string(), iteration);
        let base = run.attempts.get(&key).map_or(0, |a| a.attempt.max(0));
        run.attempt_bases.insert(key, base);
        base + 1
    }

    /// Retry timers that fired while the run was pausing did nothing; set them again.
    fn rearm_retries(&mut self, run_id: &str, now: i64) {
        let Some(run) = self.runs.get(run_id) else {
            return;
        };
        let waiting: Vec<AttemptRow> = run
            .attempts
            .iter()
            .filter(|(key, attempt)| {
                attempt.state == "failed"
                    && run
                        .nodes
                        .get(*key)
                        .is_some_and(|n| n.state == "in-progress")
            })
            .map(|(_, attempt)| attempt.clone())
            .collect();
        for attempt in waiting {
            let relative =
                attempt.attempt - self.attempt_base(run_id, &attempt.node_id, attempt.iteration);
            let due = attempt
                .finished_at_ms
                .unwrap_or(now)
                .saturating_add(self.retry_backoff_ms(relative) as i64)
                .max(now);
            self.set_timer(
                due,
                TimerKind::Retry,
                run_id,
                &attempt.node_id,
                attempt.iteration,
                attempt.attempt,
            );
        }
    }

    /// `pauseRun`: only a `running` run can be paused; the request is durable (the run row), so
    /// a restart keeps pausing it.
    fn pause(&mut self, run_id: &str) -> Result<(), RpcError> {
        let not_executing =
            || RpcError::new(ErrorCode::RunNotActive, "Run is not currently executing");
        let Some(run) = self.runs.get_mut(run_id) else {
            return match self.stored_run(run_id)? {
                None => Err(RpcError::new(ErrorCode::RunNotFound, "Run not found")),
                Some(_) => Err(not_executing()),
            };
        };
        if run.row.status != "running" {
            return Err(not_executing());
        }
        if run.row.pause_requested_at_ms.is_none() {
            run.row.pause_requested_at_ms = Some(crate::clock::now_ms() as i64);
        }
        run.dirty = true;
        self.turn.mutations.push(Mutation::PutRun(run.row.clone()));
        self.turn.touched.insert(run_id.to_string());
        Ok(())
    }

    /// `retryTask`'s reset and resume (METHODS.md §5.6). A run that is not in memory (it ended)
    /// is loaded back first; the reset and the resumed run commit in this turn.
    fn retry_task(&mut self, request: RetryRequest) -> Result<RetryOutcome, RpcError> {
        let now = crate::clock::now_ms() as i64;
        let run_id = request.run_id.as_str();
        let key = (request.node_id.clone(), request.iteration);
        let node_missing = || {
            RpcError::new(
                ErrorCode::NotFound,
                format!(
                    "Node {} (iteration {}) not found in run {run_id}",
                    request.node_id, request.iteration
                ),
            )
        };
        match self.runs.get(run_id) {
            Some(run) if run.row.status == "running" => {
                return Err(RpcError::new(
                    ErrorCode::RunActive,
                    RETRY_RUN_ACTIVE_MESSAGE,
                ));
            }
            Some(run) if !run.nodes.contains_key(&key) => return Err(node_missing()),
            Some(_) => {}
            None => {
                let state = self
                    .storage
                    .call_blocking(|reply| Command::LoadRunState {
                        run_id: run_id.to_string(),
                        reply,
                    })
                    .map_err(|error| storage_rpc_error(&error))?;
                let Some(row) = &state.run else {
                    return Err(not_found(run_id));
                };
                let workflow = workflow_key_of(row);
                if !self.registry.workflows.contains_key(&workflow) {
                    return Err(RpcError::new(
                        ErrorCode::InvalidRequestLegacy,
                        format!("Workflow {workflow} of run {run_id} is no longer registered"),
                    ));
                }
                if !state
                    .nodes
                    .iter()
                    .any(|n| n.node_id == request.node_id && n.iteration == request.iteration)
                {
                    return Err(node_missing());
                }
                self.recover(state, now);
            }
        }
        let Some(run) = self.runs.get(run_id) else {
            return Err(not_found(run_id));
        };
        if run.processes.contains_key(&key) {
            return Err(RpcError::new(
                ErrorCode::RunActive,
                format!("Node {} is still running", request.node_id),
            ));
        }
        // "What ran after it": nodes whose latest attempt (or last change, without one) came
        // after the retried node's latest attempt started, and the nodes the run's end cancelled.
        let time_of = |key: &(String, i64), node: &NodeRow| {
            run.attempts
                .get(key)
                .map_or(node.updated_at_ms, |a| a.started_at_ms)
        };
        let since = run.nodes.get(&key).map_or(now, |node| time_of(&key, node));
        let mut targets = vec![key.clone()];
        if request.reset_dependents {
            let mut later: Vec<(i64, (String, i64))> = run
                .nodes
                .iter()
                .filter(|(other, node)| {
                    **other != key
                        && node.state != "pending"
                        && (time_of(other, node) > since || node.state == "cancelled")
                })
                .map(|(other, node)| (time_of(other, node), other.clone()))
                .collect();
            later.sort();
            targets.extend(later.into_iter().map(|(_, other)| other));
        }
        let mut reset_nodes: Vec<String> = Vec::new();
        for (node_id, iteration) in &targets {
            self.reset_node(run_id, node_id, *iteration, now);
            if !reset_nodes.contains(node_id) {
                reset_nodes.push(node_id.clone());
            }
        }
        let was_paused = self.pause_requested(run_id);
        if let Some(run) = self.runs.get_mut(run_id) {
            run.row.status = "running".into();
            run.row.finished_at_ms = None;
            run.row.error_json = None;
            run.row.cancel_requested_at_ms = None;
            run.row.pause_requested_at_ms = None;
            run.row.heartbeat_at_ms = Some(now);
            run.row.runtime_owner_id = Some(self.options.owner_id.clone());
            restamp_auth(&mut run.row, &request.auth, now);
            run.dirty = true;
            self.turn.mutations.push(Mutation::PutRun(run.row.clone()));
            self.turn.touched.insert(run_id.to_string());
        }
        if was_paused {
            self.rearm_retries(run_id, now);
        }
        Ok(RetryOutcome { reset_nodes })
    }

    /// One node iteration back to `pending`: its open or failed attempt cancelled, its output
    /// dropped, `node.pending` broadcast.
    fn reset_node(&mut self, run_id: &str, node_id: &str, iteration: i64, now: i64) {
        let key = (node_id.to_string(), iteration);
        let Some(run) = self.runs.get_mut(run_id) else {
            return;
        };
        let attempt = run.attempts.get(&key).cloned();
        run.outputs.remove(&key);
        if let Some(mut attempt) = attempt.filter(|a| {
            matches!(
                a.state.as_str(),
                "in-progress" | "failed" | "waiting-approval" | "waiting-event" | "waiting-timer"
            )
        }) {
            attempt.state = "cancelled".into();
            attempt.finished_at_ms = Some(now);
            self.put_attempt(attempt);
        }
        self.turn.mutations.push(Mutation::DeleteOutput {
            run_id: run_id.to_string(),
            node_id: node_id.to_string(),
            iteration,
        });
        self.set_node_state(run_id, node_id, iteration, "pending", None);
        self.node_event(
            run_id,
            node_id,
            "NodePending",
            "node.pending",
            vec![
                ("state", Value::from("pending")),
                ("iteration", Value::from(iteration)),
            ],
        );
    }
}
