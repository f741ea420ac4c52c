//! How an event gets into a server.
//!
//! Gateway: through the real engine path, nothing mocked. loadtest launches a run of the pulse
//! workflow (server.rs) and writes one line per event into the FIFO that run's task copies to its
//! stderr; the engine persists each line as a `task.output` event and broadcasts it once. The
//! engine forwards at most 10,000 stderr lines per task attempt (engine::process
//! STDERR_LINES_MAX), so the publisher moves to a fresh run before that: a helper thread launches
//! the next run and opens its FIFO while the current one is still in use, and the switch is a
//! close (the old task sees end-of-file and its run finishes) and a pointer swap.
//!
//! Baseline: a WebSocket on `/publish` that sends the same line as a text message.

use crate::client::Client;
use crate::server::{Server, PULSE_WORKFLOW};
use crate::{control, sys, wire};
use anyhow::{anyhow, bail, Context, Result};
use std::io;
use std::net::SocketAddrV4;
use std::os::unix::io::RawFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Lines after which the next run is prepared.
const PREPARE_AFTER_LINES: u64 = 8_000;
/// Lines after which the publisher moves to the prepared run.
const ROTATE_AFTER_LINES: u64 = 9_000;
/// Lines a run may take at most: below the engine's 10,000 forwarded stderr lines per attempt.
const LINES_PER_RUN_MAX: u64 = 9_900;
/// How long the task of a new run may take to open its FIFO.
const FIFO_OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes the baseline publisher may have unsent before publishing waits.
const PUBLISH_UNSENT_MAX: usize = 1024 * 1024;

/// The overhead of a gateway `task.output` frame around its line (WebSocket head included), with
/// five-digit `seq` and six-digit `stateVersion`, so lines can be padded to a frame size.
pub fn frame_overhead(run_id_len: usize) -> usize {
    let json = format!(
        r#"{{"type":"event","seq":10000,"stateVersion":100000,"event":"task.output","payload":{{"runId":"{}","nodeId":"pulse","output":"","stream":"stderr"}},"apiVersion":"v1"}}"#,
        "r".repeat(run_id_len)
    );
    json.len() + 4
}

/// A run of the pulse workflow with its FIFO open for writing.
struct Lane {
    fd: RawFd,
    run_id: String,
}

enum Request {
    Launch,
}

pub enum Outcome {
    Sent,
    /// The server is not taking lines right now (pipe or socket full, or no run ready): retry.
    Busy,
}

pub struct FifoPublisher {
    lane: Lane,
    lines_in_run: u64,
    next: Option<Lane>,
    preparing: bool,
    requests: Option<mpsc::Sender<Request>>,
    lanes: mpsc::Receiver<Result<Lane, String>>,
    helper: Option<std::thread::JoinHandle<()>>,
    pub rotations: u64,
    pub runs: Vec<String>,
    buffer: Vec<u8>,
}

pub enum Publisher {
    Fifo(Box<FifoPublisher>),
    WebSocket { conn: usize },
}

fn launch(address: SocketAddrV4, token: Option<&str>, dir: &Path, n: u64) -> Result<Lane> {
    let path: PathBuf = dir.join(format!("lt-{n}.fifo"));
    sys::mkfifo(&path).with_context(|| format!("cannot create the FIFO {}", path.display()))?;
    let fifo = path
        .to_str()
        .filter(|p| !p.contains('"') && !p.contains('\\'))
        .ok_or_else(|| anyhow!("FIFO path {} is not plain text", path.display()))?
        .to_string();
    let launched = control::rpc(
        address,
        token,
        "launchRun",
        &serde_json::json!({"workflow": PULSE_WORKFLOW, "input": {"fifo": fifo}}),
    );
    let launched = match launched {
        Ok(launched) => launched,
        Err(error) => {
            std::fs::remove_file(&path).ok();
            return Err(error);
        }
    };
    let run_id = launched
        .get("runId")
        .and_then(|v| v.as_str())
        .ok_or_else(|| anyhow!("launchRun answered without a runId"))?
        .to_string();
    let deadline = Instant::now() + FIFO_OPEN_TIMEOUT;
    let fd = loop {
        match sys::open_fifo_writer(&path) {
            Ok(fd) => break fd,
            // ENXIO: the task has not opened its end yet.
            Err(error) if error.raw_os_error() == Some(libc::ENXIO) => {
                if Instant::now() > deadline {
                    std::fs::remove_file(&path).ok();
                    let status = control::rpc(
                        address,
                        token,
                        "getRun",
                        &serde_json::json!({"runId": run_id}),
                    )
                    .ok()
                    .and_then(|run| run.get("status").and_then(|s| s.as_str()).map(String::from))
                    .unwrap_or_else(|| "unknown".into());
                    bail!("run {run_id} of {PULSE_WORKFLOW} did not open its FIFO within {FIFO_OPEN_TIMEOUT:?} (run status: {status}); is `sh`, `sed` and `cat` available to the gateway?");
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(error) => {
                std::fs::remove_file(&path).ok();
                bail!("cannot open the FIFO {}: {error}", path.display());
            }
        }
    };
    // Both ends are open; the name is no longer needed.
    std::fs::remove_file(&path).ok();
    Ok(Lane { fd, run_id })
}

impl FifoPublisher {
    /// Launches the first pulse run (blocking) and starts the helper that prepares later ones.
    pub fn start(server: &Server) -> Result<FifoPublisher> {
        let address = server.address;
        let token = server.token.clone();
        let dir = server.dir.clone();
        let lane = launch(address, token.as_deref(), &dir, 0)?;
        let runs = vec![lane.run_id.clone()];
        let (requests_tx, requests_rx) = mpsc::channel::<Request>();
        let (lanes_tx, lanes_rx) = mpsc::channel::<Result<Lane, String>>();
        let helper = std::thread::Builder::new()
            .name("pulse-runs".into())
            .spawn(move || {
                let mut n = 1;
                while let Ok(Request::Launch) = requests_rx.recv() {
                    let lane =
                        launch(address, token.as_deref(), &dir, n).map_err(|e| format!("{e:#}"));
                    n += 1;
                    if let Err(mpsc::SendError(Ok(unused))) = lanes_tx.send(lane) {
                        sys::close(unused.fd);
                    }
                }
            })?;
        Ok(FifoPublisher {
            lane,
            lines_in_run: 0,
            next: None,
            preparing: false,
            requests: Some(requests_tx),
            lanes: lanes_rx,
            helper: Some(helper),
            rotations: 0,
            runs,
            buffer: Vec::with_capacity(1024),
        })
    }

    pub fn run_id(&self) -> &str {
        &self.lane.run_id
    }

    fn prepare(&mut self) {
        if self.preparing || self.next.is_some() {
            return;
        }
        if let Some(requests) = &self.requests {
            if requests.send(Request::Launch).is_ok() {
                self.preparing = true;
            }
        }
    }

    fn collect(&mut self, wait: Option<Duration>) -> Result<()> {
        if !self.preparing {
            return Ok(());
        }
        let received = match wait {
            Some(timeout) => self.lanes.recv_timeout(timeout).ok(),
            None => self.lanes.try_recv().ok(),
        };
        match received {
            Some(Ok(lane)) => {
                self.preparing = false;
                self.runs.push(lane.run_id.clone());
                self.next = Some(lane);
                Ok(())
            }
            Some(Err(message)) => {
                self.preparing = false;
                bail!("preparing the next pulse run failed: {message}")
            }
            None => Ok(()),
        }
    }

    fn switch(&mut self) {
        if let Some(next) = self.next.take() {
            // Closing the writer ends the old task: it reads end-of-file, prints {} and finishes.
            sys::close(self.lane.fd);
            self.lane = next;
            self.lines_in_run = 0;
            self.rotations += 1;
        }
    }

    /// Moves to a fresh run now (waiting for it at most FIFO_OPEN_TIMEOUT + launch time), so a
    /// phase that must stay on one run has 9,000 lines available.
    pub fn rotate_now(&mut self) -> Result<()> {
        self.prepare();
        let deadline = Instant::now() + FIFO_OPEN_TIMEOUT + Duration::from_secs(15);
        while self.next.is_none() {
            if Instant::now() > deadline || !self.preparing {
                bail!("no fresh pulse run became ready");
            }
            self.collect(Some(Duration::from_millis(100)))?;
        }
        self.switch();
        Ok(())
    }

    fn publish(&mut self, line: &[u8]) -> Result<Outcome> {
        if self.lines_in_run >= PREPARE_AFTER_LINES {
            self.prepare();
            self.collect(None)?;
            if self.lines_in_run >= ROTATE_AFTER_LINES {
                self.switch();
            }
        }
        if self.lines_in_run >= LINES_PER_RUN_MAX {
            // The next run is not ready yet; the engine would drop lines past its cap.
            return Ok(Outcome::Busy);
        }
        self.buffer.clear();
        self.buffer.extend_from_slice(line);
        self.buffer.push(b'\n');
        // Lines are shorter than PIPE_BUF, so a write is all or nothing (pipe(7)).
        match sys::write(self.lane.fd, &self.buffer) {
            Ok(n) if n == self.buffer.len() => {
                self.lines_in_run += 1;
                Ok(Outcome::Sent)
            }
            Ok(n) => bail!("short write of {n} bytes to the pulse FIFO"),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Outcome::Busy),
            Err(e) => bail!(
                "the pulse task of run {} stopped reading its FIFO: {e}",
                self.lane.run_id
            ),
        }
    }

    /// Closes every FIFO (each task finishes its run) and stops the helper.
    pub fn finish(&mut self) {
        sys::close(self.lane.fd);
        self.lane.fd = -1;
        if let Some(next) = self.next.take() {
            sys::close(next.fd);
        }
        self.requests = None;
        if self.preparing {
            if let Ok(Ok(lane)) = self
                .lanes
                .recv_timeout(FIFO_OPEN_TIMEOUT + Duration::from_secs(15))
            {
                sys::close(lane.fd);
            }
            self.preparing = false;
        }
        if let Some(helper) = self.helper.take() {
            let _ = helper.join();
        }
    }
}

impl Drop for FifoPublisher {
    fn drop(&mut self) {
        if self.lane.fd >= 0 {
            self.finish();
        }
    }
}

impl Publisher {
    /// Publishes one line (without newline).
    pub fn publish(&mut self, client: &mut Client, line: &[u8]) -> Result<Outcome> {
        match self {
            Publisher::Fifo(fifo) => fifo.publish(line),
            Publisher::WebSocket { conn } => {
                if client.unsent(*conn) > PUBLISH_UNSENT_MAX {
                    return Ok(Outcome::Busy);
                }
                if client.state(*conn) != crate::client::ConnState::Ready {
                    bail!("the baseline publisher connection closed");
                }
                client.send(*conn, &wire::client_text(line));
                Ok(Outcome::Sent)
            }
        }
    }

    pub fn run_id(&self) -> Option<&str> {
        match self {
            Publisher::Fifo(fifo) => Some(fifo.run_id()),
            Publisher::WebSocket { .. } => None,
        }
    }

    pub fn finish(&mut self) {
        if let Publisher::Fifo(fifo) = self {
            fifo.finish();
        }
    }
}
