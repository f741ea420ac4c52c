//! Child processes of command tasks: each runs in its own process group with a JSON object on
//! stdin; stdout is captured up to a bound (the output row), every stderr line is reported as it
//! arrives (task output and heartbeat), and the exit is reported once. Killing a task kills its
//! whole group, so no grandchild outlives a cancelled or timed-out task.
//!
//! Reader threads only forward messages to the engine; the engine owns every decision.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

/// Most stdout bytes kept per attempt; more makes the attempt fail ("output too large").
pub const STDOUT_BYTES_MAX: usize = 1024 * 1024;
/// Longest stderr line forwarded; longer lines are cut (the rest is dropped up to the newline).
pub const STDERR_LINE_BYTES_MAX: usize = 16 * 1024;
/// Most stderr lines forwarded per attempt; later lines are counted but not forwarded.
pub const STDERR_LINES_MAX: usize = 10_000;

/// Identifies one attempt of one node of one run.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AttemptKey {
    pub run_id: String,
    pub node_id: String,
    pub iteration: i64,
    pub attempt: i64,
}

/// How an attempt's process ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessExit {
    /// Exit code, None when killed by a signal.
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: Vec<u8>,
    /// Stdout passed `STDOUT_BYTES_MAX` (the excess was discarded).
    pub stdout_truncated: bool,
}

/// What reader threads send to the engine.
#[derive(Debug)]
pub enum ProcessEvent {
    StderrLine {
        key: AttemptKey,
        line: String,
    },
    Exited {
        key: AttemptKey,
        exit: ProcessExit,
    },
    /// The process could not be started.
    SpawnFailed {
        key: AttemptKey,
        message: String,
    },
}

/// A started process: its group id, used to kill the whole group.
#[derive(Debug)]
pub struct RunningProcess {
    pub pid: u32,
}

impl RunningProcess {
    /// SIGKILL to the whole process group. Safe to call after the process has exited (the group
    /// id is not reused while the child is unreaped, and the waiter thread reaps it).
    pub fn kill_group(&self) {
        let Ok(pgid) = libc::pid_t::try_from(self.pid) else {
            return;
        };
        // SAFETY: kill(2) with a negative pid signals the process group; no memory is touched.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

/// Spawns `argv` in a new process group with `stdin_json` on stdin and `env` added to the
/// environment. Reader threads report stderr lines and the exit on `events`.
pub fn spawn(
    key: AttemptKey,
    argv: &[String],
    env: &[(String, String)],
    stdin_json: Vec<u8>,
    events: flume::Sender<ProcessEvent>,
) -> Option<RunningProcess> {
    let Some((program, arguments)) = argv.split_first() else {
        let _ = events.send(ProcessEvent::SpawnFailed {
            key,
            message: "empty command".into(),
        });
        return None;
    };
    let mut command = Command::new(program);
    command
        .args(arguments)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so a kill reaches everything it started.
        .process_group(0);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            let _ = events.send(ProcessEvent::SpawnFailed {
                key,
                message: format!("cannot start {program}: {error}"),
            });
            return None;
        }
    };
    let pid = child.id();
    if let Some(mut stdin) = child.stdin.take() {
        // A writer thread, so a child that never reads stdin cannot block the engine.
        std::thread::Builder::new()
            .name("task-stdin".into())
            .spawn(move || {
                let _ = stdin.write_all(&stdin_json);
            })
            .ok();
    }
    let stderr = child.stderr.take();
    let stderr_key = key.clone();
    let stderr_events = events.clone();
    let stderr_thread = std::thread::Builder::new()
        .name("task-stderr".into())
        .spawn(move || {
            if let Some(stderr) = stderr {
                forward_stderr(stderr, &stderr_key, &stderr_events);
            }
        });
    let spawned = std::thread::Builder::new()
        .name("task-wait".into())
        .spawn(move || {
            let (stdout, stdout_truncated) = read_stdout(&mut child);
            if let Ok(handle) = stderr_thread {
                let _ = handle.join();
            }
            let status = child.wait();
            let (code, signal) = match status {
                Ok(status) => (
                    status.code(),
                    std::os::unix::process::ExitStatusExt::signal(&status),
                ),
                Err(_) => (None, None),
            };
            let _ = events.send(ProcessEvent::Exited {
                key,
                exit: ProcessExit {
                    code,
                    signal,
                    stdout,
                    stdout_truncated,
                },
            });
        });
    if spawned.is_err() {
        // Without a waiter nobody would report the exit: kill the group now.
        let process = RunningProcess { pid };
        process.kill_group();
        return None;
    }
    Some(RunningProcess { pid })
}

fn read_stdout(child: &mut Child) -> (Vec<u8>, bool) {
    let Some(mut stdout) = child.stdout.take() else {
        return (Vec::new(), false);
    };
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut chunk = [0u8; 8192];
    loop {
        match stdout.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                let room = STDOUT_BYTES_MAX.saturating_sub(kept.len());
                if n > room {
                    truncated = true;
                }
                kept.extend_from_slice(chunk.get(..n.min(room)).unwrap_or_default());
            }
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    (kept, truncated)
}

fn forward_stderr(stderr: impl Read, key: &AttemptKey, events: &flume::Sender<ProcessEvent>) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    let mut forwarded = 0usize;
    loop {
        line.clear();
        // Bounded line read: take at most the cap, then skip to the newline.
        let read = (&mut reader)
            .take(STDERR_LINE_BYTES_MAX as u64)
            .read_until(b'\n', &mut line);
        match read {
            Ok(0) => return,
            Ok(_) => {
                if !line.ends_with(b"\n") && line.len() >= STDERR_LINE_BYTES_MAX {
                    let mut rest = Vec::new();
                    let _ = reader.read_until(b'\n', &mut rest);
                }
                while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    line.pop();
                }
                if forwarded < STDERR_LINES_MAX {
                    forwarded += 1;
                    let text = String::from_utf8_lossy(&line).into_owned();
                    if events
                        .send(ProcessEvent::StderrLine {
                            key: key.clone(),
                            line: text,
                        })
                        .is_err()
                    {
                        return;
                    }
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn key() -> AttemptKey {
        AttemptKey {
            run_id: "r".into(),
            node_id: "n".into(),
            iteration: 0,
            attempt: 1,
        }
    }

    fn argv(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn wait_exit(events: &flume::Receiver<ProcessEvent>) -> (Vec<String>, ProcessExit) {
        let mut lines = Vec::new();
        loop {
            match events.recv_timeout(Duration::from_secs(10)) {
                Ok(ProcessEvent::StderrLine { line, .. }) => lines.push(line),
                Ok(ProcessEvent::Exited { exit, .. }) => return (lines, exit),
                Ok(other) => panic!("unexpected {other:?}"),
                Err(error) => panic!("no exit: {error}"),
            }
        }
    }

    #[test]
    fn stdin_reaches_the_child_and_stdout_comes_back() {
        let (sender, receiver) = flume::unbounded();
        let process = spawn(
            key(),
            &argv(&["sh", "-c", "cat; echo x >&2; echo y >&2"]),
            &[],
            br#"{"a":1}"#.to_vec(),
            sender,
        );
        assert!(process.is_some());
        let (lines, exit) = wait_exit(&receiver);
        assert_eq!(exit.code, Some(0));
        assert_eq!(exit.stdout, br#"{"a":1}"#.to_vec());
        assert_eq!(lines, vec!["x".to_string(), "y".to_string()]);
    }

    #[test]
    fn kill_reaches_the_whole_group() {
        let (sender, receiver) = flume::unbounded();
        // The child starts a grandchild that would outlive it; both must die.
        let marker = std::env::temp_dir().join(format!("sgw-pg-{}", std::process::id()));
        let script = format!("sleep 30 & echo $! > {}; wait", marker.display());
        let process = spawn(
            key(),
            &argv(&["sh", "-c", &script]),
            &[],
            Vec::new(),
            sender,
        )
        .unwrap_or_else(|| panic!("spawn"));
        let mut grandchild = String::new();
        for _ in 0..200 {
            grandchild = std::fs::read_to_string(&marker).unwrap_or_default();
            if grandchild.trim().parse::<i32>().is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let grandchild: i32 = grandchild
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("no grandchild pid"));
        process.kill_group();
        let (_, exit) = wait_exit(&receiver);
        assert_eq!(exit.signal, Some(libc::SIGKILL));
        // SAFETY: signal 0 only checks whether the pid exists.
        let mut alive = true;
        for _ in 0..200 {
            alive = unsafe { libc::kill(grandchild, 0) } == 0;
            if !alive {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = std::fs::remove_file(&marker);
        assert!(!alive, "grandchild {grandchild} survived the group kill");
    }

    #[test]
    fn stdout_is_bounded() {
        let (sender, receiver) = flume::unbounded();
        let script = format!("head -c {} /dev/zero", STDOUT_BYTES_MAX + 10);
        spawn(
            key(),
            &argv(&["sh", "-c", &script]),
            &[],
            Vec::new(),
            sender,
        );
        let (_, exit) = wait_exit(&receiver);
        assert_eq!(exit.stdout.len(), STDOUT_BYTES_MAX);
        assert!(exit.stdout_truncated);
    }

    #[test]
    fn missing_program_reports_spawn_failure() {
        let (sender, receiver) = flume::unbounded();
        assert!(spawn(
            key(),
            &argv(&["/nonexistent/program"]),
            &[],
            Vec::new(),
            sender
        )
        .is_none());
        assert!(matches!(
            receiver.recv_timeout(Duration::from_secs(5)),
            Ok(ProcessEvent::SpawnFailed { .. })
        ));
    }
}
