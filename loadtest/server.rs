//! The servers under test: a gateway loadtest starts itself (fresh process, temporary data and
//! workflow directories, a config that lifts the connection caps above the scenario's count), a
//! gateway that is already running (`--url`), or the tokio baseline. Spawned servers are pinned
//! to the server CPU and get the hard open-file limit; they are stopped with SIGTERM, then SIGKILL.

use crate::{control, sys};
use anyhow::{anyhow, bail, Context, Result};
use std::io::BufRead;
use std::net::{SocketAddr, SocketAddrV4};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long a spawned server may take to print where it listens.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a server may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Name of the workflow whose runs carry loadtest's published lines.
pub const PULSE_WORKFLOW: &str = "loadtest-pulse";
/// Name of the workflow whose frames feed DevTools streams.
pub const CHURN_WORKFLOW: &str = "loadtest-churn";

/// The pulse workflow: one command task copies the FIFO named in the run input to its stderr, so
/// every line loadtest writes becomes one `task.output` broadcast through the real engine path
/// (persisted, then broadcast once). Closing the FIFO's writer ends the task and the run.
pub const PULSE_WORKFLOW_TOML: &str = r#"# Written by loadtest (docs/LOADTEST.md). One command task copies the lines of the FIFO named in
# the run input ({"fifo": "/path"}) to its stderr; the engine turns each line into a `task.output`
# broadcast. When loadtest closes the FIFO the task prints {} and the run finishes.
description = "loadtest publisher: FIFO lines become task.output events"

[[nodes]]
kind = "task"
id = "pulse"
timeout_ms = 3600000
run = ["sh", "-c", '''f=$(sed -n 's/.*"fifo":"\([^"]*\)".*/\1/p'); if [ ! -p "$f" ]; then echo "loadtest-pulse: input.fifo is not a FIFO" >&2; exit 3; fi; cat "$f" >&2; echo '{}' ''']
"#;

/// The churn workflow: a long loop of short static tasks, each state change a new frame.
pub fn churn_workflow_toml(delay_ms: u64) -> String {
    format!(
        r#"# Written by loadtest (docs/LOADTEST.md): a long loop of short static tasks, so the run renders
# a new frame every few milliseconds for DevTools streams to follow. loadtest cancels it.
description = "loadtest DevTools churn: a loop of short static tasks"

[[nodes]]
kind = "loop"
id = "churn"
max_iterations = 10000

  [[nodes.children]]
  kind = "task"
  id = "beat"
  output = {{ beat = true }}
  delay_ms = {delay_ms}
"#
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Gateway,
    Baseline,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Gateway => "gateway",
            Kind::Baseline => "baseline",
        }
    }
}

/// How to start servers.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub gateway_bin: PathBuf,
    pub baseline_bin: PathBuf,
    /// CPU the server is pinned to (None: not pinned).
    pub server_cpu: Option<usize>,
    pub workers: usize,
    /// Authenticated WebSockets the scenario needs (the config allows a margin above it).
    pub connections: usize,
    /// Handshakes the scenario runs in parallel (pre-auth slots).
    pub parallel_handshakes: usize,
    pub synchronous: String,
    pub outbound_bytes_max: Option<u64>,
    pub churn_delay_ms: u64,
    pub baseline_capacity: usize,
    pub keep_dirs: bool,
}

pub struct Server {
    pub kind: Kind,
    pub address: SocketAddrV4,
    pub token: Option<String>,
    pub pid: u32,
    /// Scratch directory for FIFOs (and, for a spawned gateway, its data and workflows).
    pub dir: PathBuf,
    pub external: bool,
    /// The CPU a spawned server is pinned to (its core's busy time is read from /proc/stat).
    pub cpu: Option<usize>,
    child: Option<Child>,
    log: Option<PathBuf>,
    keep_dir: bool,
}

static SCRATCH_COUNTER: AtomicU32 = AtomicU32::new(0);

fn scratch_dir() -> Result<PathBuf> {
    let n = SCRATCH_COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("loadtest-{}-{n}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).ok();
    }
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the scratch directory {}", dir.display()))?;
    Ok(dir)
}

fn pinned_command(binary: &Path, cpu: Option<usize>) -> Command {
    let mut command = Command::new(binary);
    // SAFETY: the closure runs between fork and exec and makes only async-signal-safe syscalls
    // (sched_setaffinity, getrlimit, setrlimit); it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if let Some(cpu) = cpu {
                sys::pin_to_cpu(0, cpu)?;
            }
            sys::raise_nofile_limit_in_child()
        });
    }
    command
}

/// Reads a child's stdout on a thread until `wanted` lines have been seen (or the deadline), and
/// keeps draining it afterwards so the child never blocks on a full pipe.
fn read_banner(child: &mut Child, wanted: &[&str]) -> Result<Vec<String>> {
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no stdout pipe"))?;
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    std::thread::Builder::new()
        .name("server-stdout".into())
        .spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // The receiver is gone once the banner was read: keep draining.
                let _ = lines_tx.send(line);
            }
        })?;
    let deadline = Instant::now() + START_TIMEOUT;
    let mut found: Vec<Option<String>> = vec![None; wanted.len()];
    while found.iter().any(|f| f.is_none()) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("the server did not print {wanted:?} within {START_TIMEOUT:?}");
        }
        match lines_rx.recv_timeout(left.min(Duration::from_millis(200))) {
            Ok(line) => {
                for (index, prefix) in wanted.iter().enumerate() {
                    if found.get(index).is_some_and(|f| f.is_none()) && line.contains(prefix) {
                        if let Some(slot) = found.get_mut(index) {
                            *slot = Some(line.clone());
                        }
                    }
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if let Ok(Some(status)) = child.try_wait() {
                    bail!("the server exited during start-up ({status})");
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.try_wait().ok().flatten();
                bail!("the server closed its stdout during start-up (exit: {status:?})");
            }
        }
    }
    Ok(found.into_iter().flatten().collect())
}

/// The `host:port` after `marker` in `line`, up to the next space, `/` or `)`.
fn address_after(line: &str, marker: &str) -> Result<SocketAddrV4> {
    let at = line
        .find(marker)
        .ok_or_else(|| anyhow!("no {marker} in {line:?}"))?;
    let rest = line.get(at + marker.len()..).unwrap_or_default();
    let end = rest.find([' ', '/', ')']).unwrap_or(rest.len());
    let text = rest.get(..end).unwrap_or_default();
    match text.parse::<SocketAddr>() {
        Ok(SocketAddr::V4(address)) => Ok(address),
        _ => bail!("cannot read an IPv4 address from {line:?}"),
    }
}

impl Server {
    /// Starts a fresh gateway with one worker on a free port, its own data and workflows.
    pub fn start_gateway(options: &ServerOptions) -> Result<Server> {
        if !options.gateway_bin.is_file() {
            bail!(
                "gateway binary {} not found: build it with `cargo build --release -p smithers-gateway` or pass --gateway-bin",
                options.gateway_bin.display()
            );
        }
        let dir = scratch_dir()?;
        let workflows = dir.join("workflows");
        std::fs::create_dir_all(&workflows)?;
        write_workflows(&workflows, options.churn_delay_ms)?;
        let connections = (options.connections + 256).clamp(1_000, 19_000);
        let pre_auth = (options.parallel_handshakes * 2).clamp(64, 19_000);
        let mut config = format!(
            "# Written by loadtest for one run.\nmaxConnections = {connections}\nmaxPreAuthConnections = {pre_auth}\n\
             maxSockets = 19000\nsynchronous = \"{}\"\n",
            options.synchronous
        );
        if let Some(bytes) = options.outbound_bytes_max {
            config.push_str(&format!("maxOutboundBytes = {bytes}\n"));
        }
        let config_path = dir.join("gateway.toml");
        std::fs::write(&config_path, config)?;
        let log = dir.join("gateway.log");
        let log_file = std::fs::File::create(&log)?;
        let mut command = pinned_command(&options.gateway_bin, options.server_cpu);
        command
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--workers")
            .arg(options.workers.to_string())
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--workflows")
            .arg(&workflows)
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file));
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", options.gateway_bin.display()))?;
        let pid = child.id();
        let banner = match read_banner(&mut child, &["listening on http://", "admin token"]) {
            Ok(banner) => banner,
            Err(error) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{error}; gateway log:\n{}", tail(&log));
            }
        };
        let address = address_after(banner.first().map_or("", |s| s), "http://")?;
        let token = banner
            .get(1)
            .and_then(|line| line.rsplit(": ").next())
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| anyhow!("no admin token in the gateway's banner"))?;
        Ok(Server {
            kind: Kind::Gateway,
            address,
            token: Some(token),
            pid,
            dir,
            external: false,
            child: Some(child),
            log: Some(log),
            keep_dir: options.keep_dirs,
            cpu: options.server_cpu,
        })
    }

    /// A gateway started by someone else on this machine (`--url`). Its pid comes from `health`.
    pub fn attach_gateway(url: &str, token: &str, keep_dirs: bool) -> Result<Server> {
        let rest = url
            .strip_prefix("ws://")
            .or_else(|| url.strip_prefix("http://"))
            .ok_or_else(|| anyhow!("--url must look like ws://127.0.0.1:PORT/"))?;
        let host_port = rest.split('/').next().unwrap_or_default();
        let address = match host_port.parse::<SocketAddr>() {
            Ok(SocketAddr::V4(address)) => address,
            _ => bail!(
                "--url {url}: give an IPv4 loopback address and port, e.g. ws://127.0.0.1:7331/"
            ),
        };
        if !address.ip().is_loopback() {
            bail!("--url {url}: loadtest runs against loopback addresses only");
        }
        let health = control::rpc(address, Some(token), "health", &serde_json::json!({}))
            .context("the gateway at --url did not answer health")?;
        let pid = health
            .pointer("/identity/pid")
            .and_then(|v| v.as_u64())
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| anyhow!("health has no identity.pid"))?;
        if !sys::process_alive(pid) {
            bail!("the gateway reports pid {pid}, which is not a process on this machine: --url must point at a gateway running here");
        }
        Ok(Server {
            kind: Kind::Gateway,
            address,
            token: Some(token.to_string()),
            pid,
            dir: scratch_dir()?,
            external: true,
            child: None,
            log: None,
            keep_dir: keep_dirs,
            cpu: None,
        })
    }

    /// Starts the tokio baseline on a free port.
    pub fn start_baseline(options: &ServerOptions) -> Result<Server> {
        if !options.baseline_bin.is_file() {
            bail!(
                "baseline binary {} not found: build it with `cargo build --release -p loadtest-baseline` or pass --baseline-bin (or --no-baseline)",
                options.baseline_bin.display()
            );
        }
        let dir = scratch_dir()?;
        let log = dir.join("baseline.log");
        let mut command = pinned_command(&options.baseline_bin, options.server_cpu);
        command
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--capacity")
            .arg(options.baseline_capacity.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&log)?));
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", options.baseline_bin.display()))?;
        let pid = child.id();
        let banner = match read_banner(&mut child, &["listening on ws://"]) {
            Ok(banner) => banner,
            Err(error) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{error}; baseline log:\n{}", tail(&log));
            }
        };
        let address = address_after(banner.first().map_or("", |s| s), "ws://")?;
        Ok(Server {
            kind: Kind::Baseline,
            address,
            token: None,
            pid,
            dir,
            external: false,
            child: Some(child),
            log: Some(log),
            keep_dir: options.keep_dirs,
            cpu: options.server_cpu,
        })
    }

    pub fn alive(&self) -> bool {
        sys::process_alive(self.pid)
    }

    /// The last lines of the server's log, for error messages.
    pub fn log_tail(&self) -> String {
        self.log.as_deref().map(tail).unwrap_or_default()
    }

    /// Checks that an external gateway loaded loadtest's workflows.
    pub fn check_workflows(&self, needed: &[&str]) -> Result<()> {
        let listed = control::rpc(
            self.address,
            self.token.as_deref(),
            "listWorkflows",
            &serde_json::json!({}),
        )?;
        let text = listed.to_string();
        for name in needed {
            if !text.contains(&format!("\"{name}\"")) {
                bail!(
                    "the gateway has no workflow {name}: run `loadtest print-workflow {} > WORKFLOWS/{name}.toml` in its workflows directory and restart it (docs/LOADTEST.md, --url)",
                    name.trim_start_matches("loadtest-")
                );
            }
        }
        Ok(())
    }

    /// Stops a spawned server (SIGTERM, then SIGKILL) and removes its scratch directory.
    pub fn stop(mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            sys::signal(child.id(), libc::SIGTERM);
            let deadline = Instant::now() + STOP_TIMEOUT;
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        if !self.keep_dir {
            std::fs::remove_dir_all(&self.dir).ok();
        } else {
            eprintln!("loadtest: kept {}", self.dir.display());
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Only reached when `stop` was not called (an error unwound past it): never leave a
        // server behind.
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn write_workflows(dir: &Path, churn_delay_ms: u64) -> Result<()> {
    std::fs::write(
        dir.join(format!("{PULSE_WORKFLOW}.toml")),
        PULSE_WORKFLOW_TOML,
    )?;
    std::fs::write(
        dir.join(format!("{CHURN_WORKFLOW}.toml")),
        churn_workflow_toml(churn_delay_ms),
    )?;
    Ok(())
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines
        .get(lines.len().saturating_sub(20)..)
        .unwrap_or_default()
        .join("\n")
}
