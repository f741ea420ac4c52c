//! `listPrompts` (METHODS.md §4.4): the prompt files under `<workspaceRoot>/.smithers/prompts/`.
//!
//! Walking a directory is blocking disk I/O of a size the gateway does not control, so it never
//! runs on a worker: walks go to one `prompt-files` thread over a bounded queue, and the handler
//! awaits the answer (with a deadline). The walk itself is bounded in depth, entries visited,
//! files returned and bytes read; what lies beyond a bound is left out (logged), never an error.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use crate::error::{ErrorCode, RpcError};
use crate::rpc::dispatch::CallContext;
use crate::rpc::frame::object;
use crate::rpc::Value;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Bounds of one walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalkLimits {
    /// Directory levels below `prompts/` that are entered.
    pub depth_max: usize,
    /// Directory entries looked at, over the whole walk.
    pub entries_max: usize,
    /// Prompt files returned (the first ones by id).
    pub files_max: usize,
    /// A larger file is left out.
    pub file_bytes_max: u64,
    /// Sources returned in total; files past it are left out.
    pub total_bytes_max: u64,
}

pub const WALK_LIMITS: WalkLimits = WalkLimits {
    depth_max: 16,
    entries_max: 10_000,
    files_max: 1_000,
    file_bytes_max: 1_048_576,
    total_bytes_max: 16 * 1_048_576,
};

/// Walks waiting for the thread at most; a caller past that waits for room.
const QUEUE_CAPACITY: usize = 64;
/// How long a caller waits for its walk (queueing included).
const WALK_DEADLINE: Duration = Duration::from_secs(30);

/// One prompt file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptFile {
    /// The `/`-separated path below `prompts/`, without its extension.
    pub id: String,
    /// `prompts/<relative path>`.
    pub entry_file: String,
    pub source: String,
    pub created_at_ms: Option<i64>,
    pub updated_at_ms: Option<i64>,
}

type Job = Box<dyn FnOnce() + Send>;

/// The walk thread's queue, started on first use. It is stateless (each job carries its
/// directory), so one thread serves every gateway of the process and lives as long as it.
fn queue() -> Result<&'static flume::Sender<Job>, RpcError> {
    static QUEUE: OnceLock<Option<flume::Sender<Job>>> = OnceLock::new();
    QUEUE
        .get_or_init(|| {
            let (sender, receiver) = flume::bounded::<Job>(QUEUE_CAPACITY);
            let spawned = std::thread::Builder::new()
                .name("prompt-files".into())
                .spawn(move || {
                    for job in receiver.iter() {
                        job();
                    }
                });
            match spawned {
                Ok(_) => Some(sender),
                Err(error) => {
                    tracing::error!(%error, "could not start the prompt-files thread");
                    None
                }
            }
        })
        .as_ref()
        .ok_or_else(|| RpcError::new(ErrorCode::ServerError, "prompt listing is unavailable"))
}

fn epoch_ms(time: std::io::Result<SystemTime>) -> Option<i64> {
    let elapsed = time.ok()?.duration_since(UNIX_EPOCH).ok()?;
    i64::try_from(elapsed.as_millis()).ok()
}

/// The id and extension-less check: `.md` and `.mdx` files only.
fn prompt_id(relative: &str) -> Option<&str> {
    relative
        .strip_suffix(".md")
        .or_else(|| relative.strip_suffix(".mdx"))
}

/// Reads at most `max + 1` bytes, so a file that grew past the bound after its size was read is
/// still refused without reading it whole.
fn read_bounded(path: &Path, max: u64) -> Option<String> {
    let file = std::fs::File::open(path).ok()?;
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .ok()?;
    if bytes.len() as u64 > max {
        return None;
    }
    // As the reference reads them: UTF-8, invalid sequences replaced.
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// Lists the prompt files under `dir`, sorted by id; a missing directory lists nothing.
/// Symbolic links and names starting with `.` are skipped (links could leave the directory or
/// loop).
pub fn walk(dir: &Path, limits: WalkLimits) -> Vec<PromptFile> {
    // (directory, its relative path with a trailing '/', its depth)
    let mut pending: Vec<(PathBuf, String, usize)> = vec![(dir.to_path_buf(), String::new(), 0)];
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    let mut entries_seen = 0usize;
    'walk: while let Some((directory, prefix, depth)) = pending.pop() {
        let entries = match std::fs::read_dir(&directory) {
            Ok(entries) => entries,
            Err(error) => {
                if depth > 0 || error.kind() != std::io::ErrorKind::NotFound {
                    tracing::debug!(%error, dir = %directory.display(), "prompt directory not read");
                }
                continue;
            }
        };
        for entry in entries {
            entries_seen += 1;
            if entries_seen > limits.entries_max {
                tracing::warn!(
                    limit = limits.entries_max,
                    "prompt directory walk stopped at its entry bound"
                );
                break 'walk;
            }
            let Ok(entry) = entry else { continue };
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let relative = format!("{prefix}{name}");
            if kind.is_dir() {
                if depth < limits.depth_max {
                    pending.push((entry.path(), format!("{relative}/"), depth + 1));
                }
            } else if kind.is_file() && prompt_id(&relative).is_some() {
                found.push((relative, entry.path()));
            }
        }
    }
    found.sort_by(|(a, _), (b, _)| {
        let id = |relative: &str| prompt_id(relative).unwrap_or(relative).to_string();
        id(a).cmp(&id(b)).then_with(|| a.cmp(b))
    });
    if found.len() > limits.files_max {
        tracing::warn!(
            found = found.len(),
            limit = limits.files_max,
            "prompt files past the bound are not listed"
        );
        found.truncate(limits.files_max);
    }
    let mut total = 0u64;
    let mut files = Vec::with_capacity(found.len());
    for (relative, path) in found {
        let Some(source) = read_bounded(&path, limits.file_bytes_max) else {
            tracing::warn!(file = %path.display(), "prompt file unreadable or over the size bound");
            continue;
        };
        total = total.saturating_add(source.len() as u64);
        if total > limits.total_bytes_max {
            tracing::warn!(
                limit = limits.total_bytes_max,
                "prompt files past the total size bound are not listed"
            );
            break;
        }
        let metadata = std::fs::metadata(&path).ok();
        let id = prompt_id(&relative).unwrap_or(&relative).to_string();
        files.push(PromptFile {
            id,
            entry_file: format!("prompts/{relative}"),
            source,
            created_at_ms: metadata.as_ref().and_then(|m| epoch_ms(m.created())),
            updated_at_ms: metadata.as_ref().and_then(|m| epoch_ms(m.modified())),
        });
    }
    files
}

fn prompt_value(file: &PromptFile) -> Value {
    let mut fields = vec![
        ("id", Value::from(file.id.as_str())),
        ("entryFile", Value::from(file.entry_file.as_str())),
        ("source", Value::from(file.source.as_str())),
    ];
    if let Some(ms) = file.created_at_ms {
        fields.push(("createdAtMs", Value::from(ms)));
    }
    if let Some(ms) = file.updated_at_ms {
        fields.push(("updatedAtMs", Value::from(ms)));
    }
    object(fields)
}

/// `listPrompts`: `[]` without a configured `workspaceRoot` or without the directory.
pub async fn list_prompts(context: &CallContext<'_>) -> Result<Value, RpcError> {
    let Some(root) = context.state.config.workspace_root.as_deref() else {
        return Ok(Value::Array(Box::default()));
    };
    let dir = Path::new(root).join(".smithers").join("prompts");
    let (reply, answer) = flume::bounded(1);
    let job: Job = Box::new(move || {
        // The caller may have given up; its answer is then dropped.
        let _ = reply.send(walk(&dir, WALK_LIMITS));
    });
    let timed_out = || {
        RpcError::new(
            ErrorCode::ServerError,
            "listing prompt files did not finish in time",
        )
    };
    let queued = queue()?.send_async(job);
    monoio::time::timeout(WALK_DEADLINE, queued)
        .await
        .map_err(|_| timed_out())?
        .map_err(|_| RpcError::new(ErrorCode::ServerError, "prompt listing is unavailable"))?;
    let files = monoio::time::timeout(WALK_DEADLINE, answer.recv_async())
        .await
        .map_err(|_| timed_out())?
        .map_err(|_| RpcError::new(ErrorCode::ServerError, "prompt listing failed"))?;
    Ok(Value::Array(Box::new(
        files.iter().map(prompt_value).collect(),
    )))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn temp() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sgw-prompts-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn ids(files: &[PromptFile]) -> Vec<&str> {
        files.iter().map(|f| f.id.as_str()).collect()
    }

    #[test]
    fn missing_directory_lists_nothing() {
        let dir = temp();
        assert!(walk(&dir.join("absent"), WALK_LIMITS).is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bounds_leave_files_out() {
        let dir = temp();
        std::fs::create_dir_all(dir.join("a/b/c")).unwrap();
        std::fs::write(dir.join("top.md"), "t").unwrap();
        std::fs::write(dir.join("a/one.md"), "1").unwrap();
        std::fs::write(dir.join("a/b/two.mdx"), "22").unwrap();
        std::fs::write(dir.join("a/b/c/three.md"), "333").unwrap();
        std::fs::write(dir.join("big.md"), "x".repeat(100)).unwrap();
        assert_eq!(
            ids(&walk(&dir, WALK_LIMITS)),
            ["a/b/c/three", "a/b/two", "a/one", "big", "top"]
        );
        let shallow = WalkLimits {
            depth_max: 1,
            ..WALK_LIMITS
        };
        assert_eq!(ids(&walk(&dir, shallow)), ["a/one", "big", "top"]);
        let small = WalkLimits {
            file_bytes_max: 10,
            ..WALK_LIMITS
        };
        assert_eq!(
            ids(&walk(&dir, small)),
            ["a/b/c/three", "a/b/two", "a/one", "top"]
        );
        let few = WalkLimits {
            files_max: 2,
            ..WALK_LIMITS
        };
        assert_eq!(ids(&walk(&dir, few)), ["a/b/c/three", "a/b/two"]);
        let budget = WalkLimits {
            total_bytes_max: 5,
            ..WALK_LIMITS
        };
        assert_eq!(ids(&walk(&dir, budget)), ["a/b/c/three", "a/b/two"]);
        let entries = WalkLimits {
            entries_max: 0,
            ..WALK_LIMITS
        };
        assert!(walk(&dir, entries).is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
