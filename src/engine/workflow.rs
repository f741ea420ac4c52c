//! Declarative workflow files (WORKFLOWS.md): TOML parsed into validated definitions, errors with
//! file, line and reason, and the registry of loaded workflows. Pure: reads files, runs nothing.
//!
//! The TOML text is first read into a generic tree that keeps the byte range of every value
//! (`RawValue` inside `toml::Spanned`), then checked by hand against WORKFLOWS.md. Checking by hand
//! rather than through `#[derive(Deserialize)]` lets every error name the line of the offending key
//! and lets unknown keys be refused per node kind, so a typo is never silently ignored.
//!
//! Invariant: nothing in a workflow file can make this module panic; every problem is a
//! `LoadError` with file, line and reason.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use crate::rpc::Value;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// What to do when an approval is denied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnDeny {
    /// The node fails (and with it the run, unless an enclosing rule says otherwise).
    Fail,
    /// The node finishes with the denial as its output; the run goes on.
    Continue,
    /// The node is skipped; the run goes on.
    Skip,
}

/// What to do when a signal wait times out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnTimeout {
    Fail,
    Skip,
    Continue,
}

/// `until` of a loop: stop when `node`'s latest output has `field` equal to `equals`.
#[derive(Clone, Debug, PartialEq)]
pub struct UntilDef {
    pub node: String,
    pub field: String,
    pub equals: Value,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TaskBody {
    /// Produces this object as its output row.
    Static { output: Value },
    /// Spawns this argv (no shell), JSON on stdin, one JSON object on stdout.
    Command { run: Vec<String> },
}

#[derive(Clone, Debug, PartialEq)]
pub struct TaskDef {
    pub body: TaskBody,
    pub delay_ms: u64,
    pub timeout_ms: Option<u64>,
    /// Attempts = retries + 1.
    pub retries: u32,
    pub env: BTreeMap<String, String>,
    pub sandbox: Option<String>,
    pub continue_on_fail: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ApprovalDef {
    pub title: String,
    pub summary: Option<String>,
    pub allowed_scopes: Vec<String>,
    pub allowed_users: Vec<String>,
    pub on_deny: OnDeny,
    /// Approve automatically after this long, when set.
    pub auto_approve_after_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SignalDef {
    /// Signal name: `event`, else the node id.
    pub name: String,
    /// Dotted path into the run input (`input.ticket`) whose value is the required correlation id.
    pub correlation: Option<String>,
    pub timeout_ms: Option<u64>,
    pub on_timeout: OnTimeout,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TimerDef {
    /// Wait this long after the node starts.
    DurationMs(u64),
    /// Wait until this instant (epoch ms).
    UntilMs(i64),
}

#[derive(Clone, Debug, PartialEq)]
pub enum NodeKind {
    Sequence {
        children: Vec<NodeDef>,
    },
    Parallel {
        children: Vec<NodeDef>,
        max_concurrency: Option<usize>,
    },
    Loop {
        children: Vec<NodeDef>,
        max_iterations: u32,
        until: Option<UntilDef>,
    },
    Task(TaskDef),
    Approval(ApprovalDef),
    Signal(SignalDef),
    Timer(TimerDef),
}

/// One node. `id` is required for task, approval, signal and timer nodes and unique across the
/// workflow; containers may omit it (then `id` is empty).
#[derive(Clone, Debug, PartialEq)]
pub struct NodeDef {
    pub id: String,
    pub label: Option<String>,
    pub kind: NodeKind,
}

/// A loaded workflow.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkflowDef {
    /// `name`, else the file stem; matches `^[a-z0-9][a-z0-9_-]{0,63}$`.
    pub key: String,
    pub readable_name: Option<String>,
    pub description: Option<String>,
    /// Cron pattern (validated by the cron work, kept as text here).
    pub schedule: Option<String>,
    /// `[ui] dir`, relative to the workflow file.
    pub ui_dir: Option<PathBuf>,
    pub system: bool,
    pub path: PathBuf,
    /// Lowercase hex SHA-256 of the file bytes.
    pub hash: String,
    /// The implicit root sequence.
    pub nodes: Vec<NodeDef>,
}

/// A workflow file that failed to load: where and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {reason}", file.display())]
pub struct LoadError {
    pub file: PathBuf,
    /// 1-based line of the offending key or table (1 when unknown).
    pub line: usize,
    pub reason: String,
}

/// All loaded workflows by key.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Registry {
    pub workflows: BTreeMap<String, WorkflowDef>,
}

/// Deepest nesting of container nodes accepted in one workflow. The TOML parser already refuses
/// very deep documents; this bound keeps the definition (and everything that walks it
/// recursively: validation, rendering, the engine) far from any stack limit.
pub const NODE_DEPTH_MAX: usize = 32;

/// Bounds from WORKFLOWS.md and the brief that introduced them.
pub const RETRIES_MAX: i64 = 100;
pub const LOOP_ITERATIONS_DEFAULT: u32 = 5;
pub const LOOP_ITERATIONS_MAX: i64 = 10_000;
pub const NODE_ID_BYTES_MAX: usize = 128;

/// Parses one workflow file's text (`path` for messages and the default key).
pub fn parse_workflow(path: &Path, text: &str) -> Result<WorkflowDef, LoadError> {
    parse_workflow_with_name_line(path, text).map(|(workflow, _)| workflow)
}

/// Loads every `*.toml` in `dir` (sorted by file name); the first bad file stops loading.
pub fn load_dir(dir: &Path) -> Result<Registry, LoadError> {
    let directory_error = |reason: String| LoadError {
        file: dir.to_path_buf(),
        line: 1,
        reason,
    };
    let entries = std::fs::read_dir(dir)
        .map_err(|error| directory_error(format!("cannot read workflow directory: {error}")))?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry
            .map_err(|error| directory_error(format!("cannot read workflow directory: {error}")))?;
        let path = entry.path();
        let is_toml = path
            .extension()
            .is_some_and(|extension| extension == "toml");
        // `metadata` follows symlinks, so a linked workflow file is loaded like a plain one.
        if is_toml && std::fs::metadata(&path).is_ok_and(|metadata| metadata.is_file()) {
            paths.push(path);
        }
    }
    // Sorted by file name so that loading, and the first error reported, never depend on the
    // order the file system lists entries in.
    paths.sort_by(|left, right| left.file_name().cmp(&right.file_name()));

    let mut registry = Registry::default();
    for path in paths {
        let bytes = std::fs::read(&path).map_err(|error| LoadError {
            file: path.clone(),
            line: 1,
            reason: format!("cannot read workflow file: {error}"),
        })?;
        let text = String::from_utf8(bytes).map_err(|error| LoadError {
            file: path.clone(),
            line: line_of_offset_bytes(error.as_bytes(), error.utf8_error().valid_up_to()),
            reason: "workflow file is not valid UTF-8".to_string(),
        })?;
        let (workflow, name_line) = parse_workflow_with_name_line(&path, &text)?;
        if let Some(existing) = registry.workflows.get(&workflow.key) {
            return Err(LoadError {
                file: path.clone(),
                line: name_line,
                reason: format!(
                    "duplicate workflow key `{}`: already defined by {}",
                    workflow.key,
                    existing.path.display()
                ),
            });
        }
        registry.workflows.insert(workflow.key.clone(), workflow);
    }
    Ok(registry)
}

/// True when `key` matches `^[a-z0-9][a-z0-9_-]{0,63}$`.
pub fn is_valid_workflow_key(key: &str) -> bool {
    let bytes = key.as_bytes();
    match bytes.split_first() {
        None => false,
        Some((first, rest)) => {
            (first.is_ascii_lowercase() || first.is_ascii_digit())
                && rest.len() <= 63
                && rest.iter().all(|byte| {
                    byte.is_ascii_lowercase()
                        || byte.is_ascii_digit()
                        || *byte == b'_'
                        || *byte == b'-'
                })
        }
    }
}

/// True when `id` matches `^[a-zA-Z0-9:_-]{1,128}$` (DATA.md §2, node id).
pub fn is_valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= NODE_ID_BYTES_MAX
        && id.bytes().all(|byte| {
            byte.is_ascii_alphanumeric() || byte == b':' || byte == b'_' || byte == b'-'
        })
}

/// Parses a duration: a positive integer followed by `ms`, `s`, `m`, `h` or `d` ("500ms", "30s",
/// "2h", "7d"). Returns milliseconds, or a reason.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let digits_len = text.bytes().take_while(u8::is_ascii_digit).count();
    let (digits, unit) = text.split_at_checked(digits_len).unwrap_or((text, ""));
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!(
            "invalid duration `{text}`: expected a positive integer followed by ms, s, m, h or d"
        )),
    };
    let count: u64 = digits.parse().map_err(|_| {
        format!(
            "invalid duration `{text}`: expected a positive integer followed by ms, s, m, h or d"
        )
    })?;
    if count == 0 {
        return Err(format!("invalid duration `{text}`: must be positive"));
    }
    count
        .checked_mul(unit_ms)
        .filter(|ms| i64::try_from(*ms).is_ok())
        .ok_or_else(|| format!("invalid duration `{text}`: too long"))
}

/// Formats milliseconds in the largest unit that represents them exactly ("2h", "1500ms").
pub fn format_duration_ms(ms: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
    ];
    for (unit_ms, unit) in UNITS {
        if ms != 0 && ms % unit_ms == 0 {
            return format!("{}{unit}", ms / unit_ms);
        }
    }
    format!("{ms}ms")
}

/// Parses an RFC 3339 date-time (`2026-11-25T08:00:00Z`, `2026-11-25T09:30:00.250+01:30`) to epoch
/// milliseconds. Fractions beyond milliseconds are truncated; a leap second (`:60`) counts as the
/// first second of the next minute. Returns a reason on failure.
pub fn parse_rfc3339_ms(text: &str) -> Result<i64, String> {
    let invalid = |what: &str| format!("invalid RFC 3339 date-time `{text}`: {what}");
    let bytes = text.as_bytes();
    let number = |range: Range<usize>| -> Option<i64> {
        let digits = bytes.get(range)?;
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(
            digits
                .iter()
                .fold(0i64, |total, digit| total * 10 + i64::from(digit - b'0')),
        )
    };
    let separator =
        |index: usize, allowed: &[u8]| bytes.get(index).is_some_and(|byte| allowed.contains(byte));
    let layout_ok = separator(4, b"-")
        && separator(7, b"-")
        && separator(10, b"Tt ")
        && separator(13, b":")
        && separator(16, b":");
    if !layout_ok {
        return Err(invalid(
            "expected YYYY-MM-DDTHH:MM:SS followed by Z or an offset",
        ));
    }
    let fields = (
        number(0..4),
        number(5..7),
        number(8..10),
        number(11..13),
        number(14..16),
        number(17..19),
    );
    let (Some(year), Some(month), Some(day), Some(hour), Some(minute), Some(second)) = fields
    else {
        return Err(invalid(
            "expected YYYY-MM-DDTHH:MM:SS followed by Z or an offset",
        ));
    };
    if !(1..=12).contains(&month) {
        return Err(invalid("month out of range"));
    }
    if day < 1 || day > days_in_month(year, month) {
        return Err(invalid("day out of range"));
    }
    if hour > 23 {
        return Err(invalid("hour out of range"));
    }
    if minute > 59 {
        return Err(invalid("minute out of range"));
    }
    // > RFC 3339 §5.6: time-second = 2DIGIT ; 00-58, 00-59, 00-60 based on leap second rules
    if second > 60 {
        return Err(invalid("second out of range"));
    }

    let mut index = 19;
    let mut fraction_ms = 0i64;
    if bytes.get(index) == Some(&b'.') {
        let fraction_len = bytes
            .get(index + 1..)
            .unwrap_or_default()
            .iter()
            .take_while(|byte| byte.is_ascii_digit())
            .count();
        if fraction_len == 0 {
            return Err(invalid("empty fraction of a second"));
        }
        // Milliseconds are the engine's resolution: keep three digits, padded on the right.
        for position in 0..3 {
            let digit = if position < fraction_len {
                number(index + 1 + position..index + 2 + position).unwrap_or(0)
            } else {
                0
            };
            fraction_ms = fraction_ms * 10 + digit;
        }
        index += 1 + fraction_len;
    }

    let offset_minutes = match bytes.get(index) {
        Some(b'Z' | b'z') if bytes.len() == index + 1 => 0,
        Some(sign @ (b'+' | b'-')) if bytes.len() == index + 6 && separator(index + 3, b":") => {
            let (Some(offset_hour), Some(offset_minute)) =
                (number(index + 1..index + 3), number(index + 4..index + 6))
            else {
                return Err(invalid("offset must be Z or ±HH:MM"));
            };
            if offset_hour > 23 || offset_minute > 59 {
                return Err(invalid("offset out of range"));
            }
            let minutes = offset_hour * 60 + offset_minute;
            if *sign == b'-' {
                -minutes
            } else {
                minutes
            }
        }
        _ => return Err(invalid("offset must be Z or ±HH:MM")),
    };

    let days = days_from_civil(year, month, day);
    let local_seconds = ((days * 24 + hour) * 60 + minute) * 60 + second;
    Ok((local_seconds - offset_minutes * 60) * 1000 + fraction_ms)
}

/// Formats epoch milliseconds as RFC 3339 in UTC with milliseconds (`2026-11-25T08:00:00.000Z`).
pub fn format_rfc3339_ms(epoch_ms: i64) -> String {
    let days = epoch_ms.div_euclid(86_400_000);
    let day_ms = epoch_ms.rem_euclid(86_400_000);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1_000 % 60,
        day_ms % 1_000
    )
}

fn is_leap_year(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_from_march = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The inverse of `days_from_civil`.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

// ---------------------------------------------------------------------------------------------
// The spanned TOML tree.

/// The field name under which the `toml` deserializer hands out a date-time literal when asked
/// for "any" value (it presents it as a one-entry map). Matching it here lets an unquoted
/// `until = 2026-11-25T08:00:00Z` be read like the quoted string.
const TOML_DATETIME_FIELD: &str = "$__toml_private_datetime";

/// A TOML value with every nested value's byte range; table entries keep document order.
#[derive(Debug)]
enum RawValue {
    String(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    /// A date-time literal in its TOML text form.
    Datetime(String),
    Array(Vec<Spanned<RawValue>>),
    Table(Vec<(String, Spanned<RawValue>)>),
}

impl RawValue {
    fn type_name(&self) -> &'static str {
        match self {
            RawValue::String(_) => "a string",
            RawValue::Integer(_) => "an integer",
            RawValue::Float(_) => "a float",
            RawValue::Boolean(_) => "a boolean",
            RawValue::Datetime(_) => "a date-time",
            RawValue::Array(_) => "an array",
            RawValue::Table(_) => "a table",
        }
    }
}

struct RawValueVisitor;

impl<'de> Visitor<'de> for RawValueVisitor {
    type Value = RawValue;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a TOML value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<RawValue, E> {
        Ok(RawValue::Boolean(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<RawValue, E> {
        Ok(RawValue::Integer(value))
    }

    fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<RawValue, E> {
        i64::try_from(value)
            .map(RawValue::Integer)
            .map_err(|_| E::custom("integer out of range"))
    }

    fn visit_f64<E>(self, value: f64) -> Result<RawValue, E> {
        Ok(RawValue::Float(value))
    }

    fn visit_str<E>(self, value: &str) -> Result<RawValue, E> {
        Ok(RawValue::String(value.to_string()))
    }

    fn visit_string<E>(self, value: String) -> Result<RawValue, E> {
        Ok(RawValue::String(value))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut sequence: A) -> Result<RawValue, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = sequence.next_element()? {
            items.push(item);
        }
        Ok(RawValue::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawValue, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if entries.is_empty() && key == TOML_DATETIME_FIELD {
                let text: String = map.next_value()?;
                return Ok(RawValue::Datetime(text));
            }
            entries.push((key, map.next_value()?));
        }
        Ok(RawValue::Table(entries))
    }
}

impl<'de> Deserialize<'de> for RawValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<RawValue, D::Error> {
        deserializer.deserialize_any(RawValueVisitor)
    }
}

/// 1-based line of byte `offset` in `bytes` (offsets past the end count as the last line).
fn line_of_offset_bytes(bytes: &[u8], offset: usize) -> usize {
    let prefix = bytes.get(..offset).unwrap_or(bytes);
    1 + prefix.iter().filter(|byte| **byte == b'\n').count()
}

/// A table being checked (a view of a `RawValue::Table`).
#[derive(Clone, Copy)]
struct TableView<'v> {
    entries: &'v [(String, Spanned<RawValue>)],
}

impl<'v> TableView<'v> {
    fn get(&self, key: &str) -> Option<&'v Spanned<RawValue>> {
        self.entries
            .iter()
            .find(|(entry_key, _)| entry_key == key)
            .map(|(_, value)| value)
    }
}

/// The checker: turns the spanned tree into definitions, or the first error.
struct Loader<'a> {
    file: &'a Path,
    text: &'a str,
    /// Node ids seen so far, with the line of their first use.
    node_id_lines: HashMap<String, usize>,
}

const ROOT_KEYS: &[&str] = &[
    "name",
    "readable_name",
    "description",
    "schedule",
    "ui",
    "system",
    "nodes",
];
const COMMON_NODE_KEYS: &[&str] = &["kind", "id", "label"];
const SEQUENCE_KEYS: &[&str] = &["children"];
const PARALLEL_KEYS: &[&str] = &["children", "max_concurrency"];
const LOOP_KEYS: &[&str] = &["children", "max_iterations", "until"];
const TASK_KEYS: &[&str] = &[
    "output",
    "run",
    "delay_ms",
    "timeout_ms",
    "retries",
    "env",
    "sandbox",
    "continue_on_fail",
];
const APPROVAL_KEYS: &[&str] = &[
    "title",
    "summary",
    "allowed_scopes",
    "allowed_users",
    "on_deny",
    "auto_approve_after",
];
const SIGNAL_KEYS: &[&str] = &["event", "correlation", "timeout_ms", "on_timeout"];
const TIMER_KEYS: &[&str] = &["duration", "until"];
const UNTIL_KEYS: &[&str] = &["node", "field", "equals"];

fn parse_workflow_with_name_line(
    path: &Path,
    text: &str,
) -> Result<(WorkflowDef, usize), LoadError> {
    let mut loader = Loader {
        file: path,
        text,
        node_id_lines: HashMap::new(),
    };
    let root: Spanned<RawValue> = toml::from_str(text).map_err(|error| LoadError {
        file: path.to_path_buf(),
        line: error
            .span()
            .map_or(1, |span| line_of_offset_bytes(text.as_bytes(), span.start)),
        reason: format!("TOML syntax: {}", error.message().trim()),
    })?;
    let table = loader.table(&root, "the workflow file")?;
    loader.check_keys(table, &[ROOT_KEYS], "the workflow file")?;

    let (key, name_line) = match table.get("name") {
        Some(name) => {
            let key = loader.string(name, "name")?;
            if !is_valid_workflow_key(key) {
                return Err(loader.error(
                    name,
                    format!("`name` `{key}` must match ^[a-z0-9][a-z0-9_-]{{0,63}}$"),
                ));
            }
            (key.to_string(), loader.line(name))
        }
        None => {
            let stem = path
                .file_stem()
                .and_then(|stem| stem.to_str())
                .unwrap_or("");
            if !is_valid_workflow_key(stem) {
                return Err(loader.error_at_line(
                    1,
                    format!(
                        "file stem `{stem}` is not a valid workflow key (^[a-z0-9][a-z0-9_-]{{0,63}}$); set `name`"
                    ),
                ));
            }
            (stem.to_string(), 1)
        }
    };
    let readable_name = loader.optional_non_empty_string(table, "readable_name")?;
    let description = loader.optional_string(table, "description")?;
    let schedule = loader.optional_non_empty_string(table, "schedule")?;
    let system = loader.optional_boolean(table, "system")?.unwrap_or(false);
    let ui_dir = match table.get("ui") {
        None => None,
        Some(ui) => {
            let ui_table = loader.table(ui, "`ui`")?;
            loader.check_keys(ui_table, &[&["dir"]], "`ui`")?;
            let dir = ui_table
                .get("dir")
                .ok_or_else(|| loader.error(ui, "`ui` needs `dir`"))?;
            Some(PathBuf::from(loader.non_empty_string(dir, "dir")?))
        }
    };
    let nodes_value = table.get("nodes").ok_or_else(|| {
        loader.error_at_line(
            1,
            "a workflow needs at least one node: add a [[nodes]] table",
        )
    })?;
    let nodes = loader.node_list(nodes_value, "nodes", 0)?;

    let hash = Sha256::digest(text.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<String>();
    let workflow = WorkflowDef {
        key,
        readable_name,
        description,
        schedule,
        ui_dir,
        system,
        path: path.to_path_buf(),
        hash,
        nodes,
    };
    Ok((workflow, name_line))
}

impl<'a> Loader<'a> {
    fn line(&self, value: &Spanned<RawValue>) -> usize {
        line_of_offset_bytes(self.text.as_bytes(), value.span().start)
    }

    fn error(&self, value: &Spanned<RawValue>, reason: impl Into<String>) -> LoadError {
        self.error_at_line(self.line(value), reason)
    }

    fn error_at_line(&self, line: usize, reason: impl Into<String>) -> LoadError {
        LoadError {
            file: self.file.to_path_buf(),
            line,
            reason: reason.into(),
        }
    }

    fn table<'v>(
        &self,
        value: &'v Spanned<RawValue>,
        what: &str,
    ) -> Result<TableView<'v>, LoadError> {
        match value.get_ref() {
            RawValue::Table(entries) => Ok(TableView { entries }),
            other => Err(self.error(
                value,
                format!("{what} must be a table, not {}", other.type_name()),
            )),
        }
    }

    /// Refuses the first key not in any of `allowed`, at its line.
    fn check_keys(
        &self,
        table: TableView,
        allowed: &[&[&str]],
        what: &str,
    ) -> Result<(), LoadError> {
        for (key, value) in table.entries {
            if !allowed.iter().any(|keys| keys.contains(&key.as_str())) {
                let expected: Vec<&str> = allowed
                    .iter()
                    .flat_map(|keys| keys.iter().copied())
                    .collect();
                return Err(self.error(
                    value,
                    format!(
                        "unknown key `{key}` in {what} (expected one of: {})",
                        expected.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    fn string<'v>(&self, value: &'v Spanned<RawValue>, key: &str) -> Result<&'v str, LoadError> {
        match value.get_ref() {
            RawValue::String(text) => Ok(text),
            other => Err(self.error(
                value,
                format!("`{key}` must be a string, not {}", other.type_name()),
            )),
        }
    }

    fn non_empty_string<'v>(
        &self,
        value: &'v Spanned<RawValue>,
        key: &str,
    ) -> Result<&'v str, LoadError> {
        let text = self.string(value, key)?;
        if text.is_empty() {
            return Err(self.error(value, format!("`{key}` must not be empty")));
        }
        Ok(text)
    }

    fn optional_string(&self, table: TableView, key: &str) -> Result<Option<String>, LoadError> {
        table
            .get(key)
            .map(|value| self.string(value, key).map(str::to_string))
            .transpose()
    }

    fn optional_non_empty_string(
        &self,
        table: TableView,
        key: &str,
    ) -> Result<Option<String>, LoadError> {
        table
            .get(key)
            .map(|value| self.non_empty_string(value, key).map(str::to_string))
            .transpose()
    }

    fn optional_boolean(&self, table: TableView, key: &str) -> Result<Option<bool>, LoadError> {
        match table.get(key) {
            None => Ok(None),
            Some(value) => match value.get_ref() {
                RawValue::Boolean(flag) => Ok(Some(*flag)),
                other => Err(self.error(
                    value,
                    format!("`{key}` must be a boolean, not {}", other.type_name()),
                )),
            },
        }
    }

    /// An optional integer within `min..=max`.
    fn optional_integer(
        &self,
        table: TableView,
        key: &str,
        min: i64,
        max: i64,
    ) -> Result<Option<i64>, LoadError> {
        match table.get(key) {
            None => Ok(None),
            Some(value) => match value.get_ref() {
                RawValue::Integer(number) if (min..=max).contains(number) => Ok(Some(*number)),
                RawValue::Integer(number) => Err(self.error(
                    value,
                    format!("`{key}` = {number} is out of range {min}..={max}"),
                )),
                other => Err(self.error(
                    value,
                    format!("`{key}` must be an integer, not {}", other.type_name()),
                )),
            },
        }
    }

    fn optional_u64(
        &self,
        table: TableView,
        key: &str,
        min: i64,
    ) -> Result<Option<u64>, LoadError> {
        Ok(self
            .optional_integer(table, key, min, i64::MAX)?
            .and_then(|number| u64::try_from(number).ok()))
    }

    fn optional_string_array(&self, table: TableView, key: &str) -> Result<Vec<String>, LoadError> {
        let Some(value) = table.get(key) else {
            return Ok(Vec::new());
        };
        let RawValue::Array(items) = value.get_ref() else {
            return Err(self.error(
                value,
                format!("`{key}` must be an array of non-empty strings"),
            ));
        };
        items
            .iter()
            .map(|item| match item.get_ref() {
                RawValue::String(text) if !text.is_empty() => Ok(text.clone()),
                _ => Err(self.error(
                    item,
                    format!("`{key}` must be an array of non-empty strings"),
                )),
            })
            .collect()
    }

    fn optional_choice<T: Copy>(
        &self,
        table: TableView,
        key: &str,
        choices: &[(&str, T)],
    ) -> Result<Option<T>, LoadError> {
        let Some(value) = table.get(key) else {
            return Ok(None);
        };
        let text = self.string(value, key)?;
        choices
            .iter()
            .find(|(name, _)| *name == text)
            .map(|(_, choice)| Some(*choice))
            .ok_or_else(|| {
                let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
                self.error(
                    value,
                    format!("`{key}` = \"{text}\" must be one of: {}", names.join(", ")),
                )
            })
    }

    /// A non-empty array of node tables (`nodes` or `children`).
    fn node_list(
        &mut self,
        value: &Spanned<RawValue>,
        key: &str,
        depth: usize,
    ) -> Result<Vec<NodeDef>, LoadError> {
        let RawValue::Array(items) = value.get_ref() else {
            return Err(self.error(
                value,
                format!("`{key}` must be an array of node tables ([[{key}]])"),
            ));
        };
        if items.is_empty() {
            return Err(self.error(value, format!("`{key}` needs at least one node")));
        }
        items.iter().map(|item| self.node(item, depth)).collect()
    }

    fn node(&mut self, value: &Spanned<RawValue>, depth: usize) -> Result<NodeDef, LoadError> {
        if depth >= NODE_DEPTH_MAX {
            return Err(self.error(
                value,
                format!("nodes nest deeper than {NODE_DEPTH_MAX} levels"),
            ));
        }
        let table = self.table(value, "a node")?;
        let kind_value = table
            .get("kind")
            .ok_or_else(|| self.error(value, "a node needs `kind`"))?;
        let kind_name = self.string(kind_value, "kind")?;
        let (kind_keys, needs_id): (&[&str], bool) = match kind_name {
            "sequence" => (SEQUENCE_KEYS, false),
            "parallel" => (PARALLEL_KEYS, false),
            "loop" => (LOOP_KEYS, false),
            "task" => (TASK_KEYS, true),
            "approval" => (APPROVAL_KEYS, true),
            "signal" => (SIGNAL_KEYS, true),
            "timer" => (TIMER_KEYS, true),
            other => {
                return Err(self.error(
                    kind_value,
                    format!(
                        "unknown node kind `{other}` (expected sequence, parallel, loop, task, approval, signal or timer)"
                    ),
                ))
            }
        };
        self.check_keys(
            table,
            &[COMMON_NODE_KEYS, kind_keys],
            &format!("a {kind_name} node"),
        )?;

        let id = match table.get("id") {
            Some(id_value) => {
                let id = self.string(id_value, "id")?;
                if !is_valid_node_id(id) {
                    return Err(self.error(
                        id_value,
                        format!("node id `{id}` must match ^[a-zA-Z0-9:_-]{{1,128}}$"),
                    ));
                }
                let line = self.line(id_value);
                if let Some(first_line) = self.node_id_lines.get(id) {
                    return Err(self.error(
                        id_value,
                        format!("duplicate node id `{id}` (first used at line {first_line})"),
                    ));
                }
                self.node_id_lines.insert(id.to_string(), line);
                id.to_string()
            }
            None if needs_id => {
                return Err(self.error(value, format!("a {kind_name} node needs `id`")));
            }
            None => String::new(),
        };
        let label = self.optional_non_empty_string(table, "label")?;

        let kind = match kind_name {
            "sequence" => NodeKind::Sequence {
                children: self.children(value, table, kind_name, depth)?,
            },
            "parallel" => {
                let max_concurrency = self
                    .optional_integer(table, "max_concurrency", 1, i64::MAX)?
                    .and_then(|number| usize::try_from(number).ok());
                NodeKind::Parallel {
                    children: self.children(value, table, kind_name, depth)?,
                    max_concurrency,
                }
            }
            "loop" => self.loop_node(value, table, depth)?,
            "task" => NodeKind::Task(self.task(value, table)?),
            "approval" => NodeKind::Approval(self.approval(table, &id)?),
            "signal" => NodeKind::Signal(self.signal(table, &id)?),
            _ => NodeKind::Timer(self.timer(value, table)?),
        };
        Ok(NodeDef { id, label, kind })
    }

    fn children(
        &mut self,
        node: &Spanned<RawValue>,
        table: TableView,
        kind_name: &str,
        depth: usize,
    ) -> Result<Vec<NodeDef>, LoadError> {
        let children = table.get("children").ok_or_else(|| {
            self.error(
                node,
                format!("a {kind_name} node needs at least one node in `children`"),
            )
        })?;
        self.node_list(children, "children", depth + 1)
    }

    fn loop_node(
        &mut self,
        node: &Spanned<RawValue>,
        table: TableView,
        depth: usize,
    ) -> Result<NodeKind, LoadError> {
        let max_iterations = self
            .optional_integer(table, "max_iterations", 1, LOOP_ITERATIONS_MAX)?
            .and_then(|number| u32::try_from(number).ok())
            .unwrap_or(LOOP_ITERATIONS_DEFAULT);
        let children = self.children(node, table, "loop", depth)?;
        let until = match table.get("until") {
            None => None,
            Some(until_value) => {
                let until_table = self.table(until_value, "`until`")?;
                self.check_keys(until_table, &[UNTIL_KEYS], "`until`")?;
                let required = |key: &str| {
                    until_table
                        .get(key)
                        .ok_or_else(|| self.error(until_value, format!("`until` needs `{key}`")))
                };
                let node_value = required("node")?;
                let field_value = required("field")?;
                let equals_value = required("equals")?;
                let node_id = self.string(node_value, "node")?;
                let mut inside = Vec::new();
                collect_node_ids(&children, &mut inside);
                if !inside.iter().any(|id| *id == node_id) {
                    return Err(self.error(
                        node_value,
                        format!("`until.node` `{node_id}` does not name a node inside the loop"),
                    ));
                }
                Some(UntilDef {
                    node: node_id.to_string(),
                    field: self.non_empty_string(field_value, "field")?.to_string(),
                    equals: self.json(equals_value)?,
                })
            }
        };
        Ok(NodeKind::Loop {
            children,
            max_iterations,
            until,
        })
    }

    fn task(&self, node: &Spanned<RawValue>, table: TableView) -> Result<TaskDef, LoadError> {
        let body = match (table.get("output"), table.get("run")) {
            (None, None) => {
                return Err(self.error(node, "a task needs exactly one of `output` or `run`"))
            }
            (Some(output), Some(run)) => {
                // Point at whichever of the two comes second: that is the one that conflicts.
                let later = if output.span().start > run.span().start {
                    output
                } else {
                    run
                };
                return Err(self.error(
                    later,
                    "a task takes exactly one of `output` or `run`, not both",
                ));
            }
            (Some(output), None) => {
                if !matches!(output.get_ref(), RawValue::Table(_)) {
                    return Err(self.error(
                        output,
                        "`output` must be a table (it becomes the output object)",
                    ));
                }
                TaskBody::Static {
                    output: self.json(output)?,
                }
            }
            (None, Some(run)) => TaskBody::Command {
                run: self.argv(run)?,
            },
        };
        let mut env = BTreeMap::new();
        if let Some(env_value) = table.get("env") {
            let env_table = self.table(env_value, "`env`")?;
            for (name, value) in env_table.entries {
                // `=` and NUL cannot appear in an environment variable name, nor NUL in a value;
                // refusing them here beats a spawn failure on every attempt.
                if name.is_empty() || name.contains('=') || name.contains('\0') {
                    return Err(self.error(
                        value,
                        format!("`env` name `{name}` is not a valid variable name"),
                    ));
                }
                let text = self.string(value, &format!("env.{name}"))?;
                if text.contains('\0') {
                    return Err(self.error(value, format!("`env.{name}` must not contain NUL")));
                }
                env.insert(name.clone(), text.to_string());
            }
        }
        let retries = self
            .optional_integer(table, "retries", 0, RETRIES_MAX)?
            .and_then(|number| u32::try_from(number).ok())
            .unwrap_or(0);
        Ok(TaskDef {
            body,
            delay_ms: self.optional_u64(table, "delay_ms", 0)?.unwrap_or(0),
            timeout_ms: self.optional_u64(table, "timeout_ms", 1)?,
            retries,
            env,
            sandbox: self.optional_non_empty_string(table, "sandbox")?,
            continue_on_fail: self
                .optional_boolean(table, "continue_on_fail")?
                .unwrap_or(false),
        })
    }

    fn argv(&self, run: &Spanned<RawValue>) -> Result<Vec<String>, LoadError> {
        let reason = "`run` must be a non-empty array of strings (argv; the program first)";
        let RawValue::Array(items) = run.get_ref() else {
            return Err(self.error(run, reason));
        };
        if items.is_empty() {
            return Err(self.error(run, reason));
        }
        let mut argv = Vec::with_capacity(items.len());
        for item in items {
            let RawValue::String(text) = item.get_ref() else {
                return Err(self.error(item, reason));
            };
            if text.contains('\0') {
                return Err(self.error(item, "`run` arguments must not contain NUL"));
            }
            if argv.is_empty() && text.is_empty() {
                return Err(self.error(item, "`run` program name must not be empty"));
            }
            argv.push(text.clone());
        }
        Ok(argv)
    }

    fn approval(&self, table: TableView, id: &str) -> Result<ApprovalDef, LoadError> {
        let auto_approve_after_ms = match table.get("auto_approve_after") {
            None => None,
            Some(value) => {
                let text = self.string(value, "auto_approve_after")?;
                Some(parse_duration_ms(text).map_err(|reason| self.error(value, reason))?)
            }
        };
        Ok(ApprovalDef {
            title: self
                .optional_non_empty_string(table, "title")?
                .unwrap_or_else(|| id.to_string()),
            summary: self.optional_string(table, "summary")?,
            allowed_scopes: self.optional_string_array(table, "allowed_scopes")?,
            allowed_users: self.optional_string_array(table, "allowed_users")?,
            on_deny: self
                .optional_choice(
                    table,
                    "on_deny",
                    &[
                        ("fail", OnDeny::Fail),
                        ("continue", OnDeny::Continue),
                        ("skip", OnDeny::Skip),
                    ],
                )?
                .unwrap_or(OnDeny::Fail),
            auto_approve_after_ms,
        })
    }

    fn signal(&self, table: TableView, id: &str) -> Result<SignalDef, LoadError> {
        let correlation = match table.get("correlation") {
            None => None,
            Some(value) => {
                let path = self.string(value, "correlation")?;
                if !is_valid_correlation_path(path) {
                    return Err(self.error(
                        value,
                        format!("`correlation` `{path}` must be a dotted path starting with `input.` (e.g. input.ticket)"),
                    ));
                }
                Some(path.to_string())
            }
        };
        Ok(SignalDef {
            name: self
                .optional_non_empty_string(table, "event")?
                .unwrap_or_else(|| id.to_string()),
            correlation,
            timeout_ms: self.optional_u64(table, "timeout_ms", 1)?,
            on_timeout: self
                .optional_choice(
                    table,
                    "on_timeout",
                    &[
                        ("fail", OnTimeout::Fail),
                        ("skip", OnTimeout::Skip),
                        ("continue", OnTimeout::Continue),
                    ],
                )?
                .unwrap_or(OnTimeout::Fail),
        })
    }

    fn timer(&self, node: &Spanned<RawValue>, table: TableView) -> Result<TimerDef, LoadError> {
        match (table.get("duration"), table.get("until")) {
            (None, None) => {
                Err(self.error(node, "a timer needs exactly one of `duration` or `until`"))
            }
            (Some(duration), Some(until)) => {
                let later = if duration.span().start > until.span().start {
                    duration
                } else {
                    until
                };
                Err(self.error(
                    later,
                    "a timer takes exactly one of `duration` or `until`, not both",
                ))
            }
            (Some(duration), None) => {
                let text = self.string(duration, "duration")?;
                parse_duration_ms(text)
                    .map(TimerDef::DurationMs)
                    .map_err(|reason| self.error(duration, reason))
            }
            (None, Some(until)) => {
                let text = match until.get_ref() {
                    RawValue::String(text) | RawValue::Datetime(text) => text,
                    other => {
                        return Err(self.error(
                            until,
                            format!(
                                "`until` must be an RFC 3339 date-time, not {}",
                                other.type_name()
                            ),
                        ))
                    }
                };
                parse_rfc3339_ms(text)
                    .map(TimerDef::UntilMs)
                    .map_err(|reason| self.error(until, reason))
            }
        }
    }

    /// Converts a TOML value to JSON: tables become objects (document key order), date-times
    /// become their text.
    fn json(&self, value: &Spanned<RawValue>) -> Result<Value, LoadError> {
        Ok(match value.get_ref() {
            RawValue::String(text) | RawValue::Datetime(text) => Value::from(text.clone()),
            RawValue::Integer(number) => Value::from(*number),
            RawValue::Float(number) if number.is_finite() => Value::from(*number),
            RawValue::Float(_) => {
                return Err(self.error(value, "JSON has no infinity or NaN"));
            }
            RawValue::Boolean(flag) => Value::from(*flag),
            RawValue::Array(items) => Value::Array(Box::new(
                items
                    .iter()
                    .map(|item| self.json(item))
                    .collect::<Result<Vec<_>, _>>()?,
            )),
            RawValue::Table(entries) => {
                let mut object = simd_json::owned::Object::with_capacity(entries.len());
                for (key, item) in entries {
                    object.insert(key.clone(), self.json(item)?);
                }
                Value::Object(Box::new(object))
            }
        })
    }
}

/// Ids of every node in `nodes` and below, in document order.
fn collect_node_ids<'d>(nodes: &'d [NodeDef], ids: &mut Vec<&'d str>) {
    for node in nodes {
        if !node.id.is_empty() {
            ids.push(&node.id);
        }
        match &node.kind {
            NodeKind::Sequence { children }
            | NodeKind::Parallel { children, .. }
            | NodeKind::Loop { children, .. } => collect_node_ids(children, ids),
            NodeKind::Task(_)
            | NodeKind::Approval(_)
            | NodeKind::Signal(_)
            | NodeKind::Timer(_) => {}
        }
    }
}

/// `input.` followed by one or more non-empty dot-separated segments without whitespace.
fn is_valid_correlation_path(path: &str) -> bool {
    match path.strip_prefix("input.") {
        None => false,
        Some(rest) => rest
            .split('.')
            .all(|segment| !segment.is_empty() && !segment.chars().any(char::is_whitespace)),
    }
}
