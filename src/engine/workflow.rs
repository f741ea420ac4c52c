//! Declarative workflow files (WORKFLOWS.md): TOML parsed into validated definitions, errors with
//! file, line and reason, and the registry of loaded workflows. Pure: reads files, runs nothing.
//!
//! The TOML text is first read into a generic tree that keeps the byte range of every value
//! (`Located` values holding `RawValue`s), then checked by hand against WORKFLOWS.md. Checking by hand
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
        _ => {
            return Err(format!(
            "invalid duration `{text}`: expected a positive integer followed by ms, s, m, h or d"
        ))
        }
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
        if ms != 0 && ms.is_multiple_of(unit_ms) {
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
    // In range, so the casts below are exact.
    let month = month as u32;
    if day < 1 || day > i64::from(crate::clock::days_in_month(year, month)) {
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

    let days = crate::clock::days_from_civil(year, month, day as u32);
    let local_seconds = ((days * 24 + hour) * 60 + minute) * 60 + second;
    Ok((local_seconds - offset_minutes * 60) * 1000 + fraction_ms)
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
    Array(Vec<Located>),
    Table(Vec<(String, Located)>),
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
        match map.next_key::<String>()? {
            None => Ok(RawValue::Table(Vec::new())),
            Some(first_key) => raw_value_from_map(first_key, map),
        }
    }
}

/// The rest of a map whose first key has been read: a date-time literal or a table.
fn raw_value_from_map<'de, A: MapAccess<'de>>(
    first_key: String,
    mut map: A,
) -> Result<RawValue, A::Error> {
    if first_key == TOML_DATETIME_FIELD {
        let text: String = map.next_value()?;
        return Ok(RawValue::Datetime(text));
    }
    let mut entries = vec![(first_key, map.next_value()?)];
    while let Some(key) = map.next_key::<String>()? {
        entries.push((key, map.next_value()?));
    }
    Ok(RawValue::Table(entries))
}

impl<'de> Deserialize<'de> for RawValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<RawValue, D::Error> {
        deserializer.deserialize_any(RawValueVisitor)
    }
}

/// The struct name and fields through which the `toml` deserializer hands out a value with its
/// byte range (the protocol behind `toml::Spanned`, from serde_spanned 0.6). `toml::Spanned`
/// itself cannot be used: tables that are only implied by dotted keys (`output.x = 1`,
/// `[nodes.output.deep]`) have no span, and `Spanned` then fails to deserialize. `Located` asks
/// for a span the same way but accepts a value without one. Tests pin the line numbers, so a
/// change of protocol in a `toml` upgrade shows up as failing tests, not silent line 1s.
const SPANNED_STRUCT_NAME: &str = "$__serde_spanned_private_Spanned";
const SPANNED_START_FIELD: &str = "$__serde_spanned_private_start";
const SPANNED_END_FIELD: &str = "$__serde_spanned_private_end";
const SPANNED_VALUE_FIELD: &str = "$__serde_spanned_private_value";
const SPANNED_FIELDS: &[&str] = &[SPANNED_START_FIELD, SPANNED_END_FIELD, SPANNED_VALUE_FIELD];

/// A TOML value and the byte range it came from.
#[derive(Debug)]
struct Located {
    span: Range<usize>,
    /// False for implied tables until `place_implied_tables` gives them a position.
    span_known: bool,
    value: RawValue,
}

impl Located {
    fn unplaced(value: RawValue) -> Located {
        Located {
            span: 0..0,
            span_known: false,
            value,
        }
    }

    fn span(&self) -> &Range<usize> {
        &self.span
    }

    fn get_ref(&self) -> &RawValue {
        &self.value
    }
}

/// Gives every value without a span (implied tables) the start of its first placed entry, or
/// `fallback_start` when it has none, so that every error has a sensible line.
fn place_implied_tables(located: &mut Located, fallback_start: usize) {
    let own_start = if located.span_known {
        located.span.start
    } else {
        fallback_start
    };
    let mut first_child_start = None;
    match &mut located.value {
        RawValue::Table(entries) => {
            for (_, child) in entries.iter_mut() {
                place_implied_tables(child, own_start);
                first_child_start.get_or_insert(child.span.start);
            }
        }
        RawValue::Array(items) => {
            for child in items.iter_mut() {
                place_implied_tables(child, own_start);
                first_child_start.get_or_insert(child.span.start);
            }
        }
        _ => {}
    }
    if !located.span_known {
        let start = first_child_start.unwrap_or(fallback_start);
        located.span = start..start;
        located.span_known = true;
    }
}

struct LocatedVisitor;

impl<'de> Visitor<'de> for LocatedVisitor {
    type Value = Located;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a TOML value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Located, E> {
        Ok(Located::unplaced(RawValue::Boolean(value)))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Located, E> {
        Ok(Located::unplaced(RawValue::Integer(value)))
    }

    fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Located, E> {
        RawValueVisitor.visit_u64(value).map(Located::unplaced)
    }

    fn visit_f64<E>(self, value: f64) -> Result<Located, E> {
        Ok(Located::unplaced(RawValue::Float(value)))
    }

    fn visit_str<E>(self, value: &str) -> Result<Located, E> {
        Ok(Located::unplaced(RawValue::String(value.to_string())))
    }

    fn visit_string<E>(self, value: String) -> Result<Located, E> {
        Ok(Located::unplaced(RawValue::String(value)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, sequence: A) -> Result<Located, A::Error> {
        RawValueVisitor.visit_seq(sequence).map(Located::unplaced)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Located, A::Error> {
        let Some(first_key) = map.next_key::<String>()? else {
            return Ok(Located::unplaced(RawValue::Table(Vec::new())));
        };
        if first_key != SPANNED_START_FIELD {
            return raw_value_from_map(first_key, map).map(Located::unplaced);
        }
        let start: usize = map.next_value()?;
        let end_key = map.next_key::<String>()?;
        if end_key.as_deref() != Some(SPANNED_END_FIELD) {
            return Err(serde::de::Error::custom("malformed spanned value"));
        }
        let end: usize = map.next_value()?;
        let value_key = map.next_key::<String>()?;
        if value_key.as_deref() != Some(SPANNED_VALUE_FIELD) {
            return Err(serde::de::Error::custom("malformed spanned value"));
        }
        let value: RawValue = map.next_value()?;
        Ok(Located {
            span: start..end,
            span_known: true,
            value,
        })
    }
}

impl<'de> Deserialize<'de> for Located {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Located, D::Error> {
        deserializer.deserialize_struct(SPANNED_STRUCT_NAME, SPANNED_FIELDS, LocatedVisitor)
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
    entries: &'v [(String, Located)],
}

impl<'v> TableView<'v> {
    fn get(&self, key: &str) -> Option<&'v Located> {
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
    let mut root: Located = toml::from_str(text).map_err(|error| LoadError {
        file: path.to_path_buf(),
        line: error
            .span()
            .map_or(1, |span| line_of_offset_bytes(text.as_bytes(), span.start)),
        reason: format!("TOML syntax: {}", error.message().trim()),
    })?;
    place_implied_tables(&mut root, 0);
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
    if let (Some(pattern), Some(value)) = (&schedule, table.get("schedule")) {
        // A schedule that cannot be read would otherwise only show up as a failed fire.
        crate::cron::schedule::parse(pattern).map_err(|error| {
            loader.error(
                value,
                format!("`schedule` is not a valid cron pattern: {error}"),
            )
        })?;
    }
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
    fn line(&self, value: &Located) -> usize {
        line_of_offset_bytes(self.text.as_bytes(), value.span().start)
    }

    fn error(&self, value: &Located, reason: impl Into<String>) -> LoadError {
        self.error_at_line(self.line(value), reason)
    }

    fn error_at_line(&self, line: usize, reason: impl Into<String>) -> LoadError {
        LoadError {
            file: self.file.to_path_buf(),
            line,
            reason: reason.into(),
        }
    }

    fn table<'v>(&self, value: &'v Located, what: &str) -> Result<TableView<'v>, LoadError> {
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

    fn string<'v>(&self, value: &'v Located, key: &str) -> Result<&'v str, LoadError> {
        match value.get_ref() {
            RawValue::String(text) => Ok(text),
            other => Err(self.error(
                value,
                format!("`{key}` must be a string, not {}", other.type_name()),
            )),
        }
    }

    fn non_empty_string<'v>(&self, value: &'v Located, key: &str) -> Result<&'v str, LoadError> {
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
        value: &Located,
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

    fn node(&mut self, value: &Located, depth: usize) -> Result<NodeDef, LoadError> {
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
        let node_what = format!("{} {kind_name} node", article(kind_name));
        self.check_keys(table, &[COMMON_NODE_KEYS, kind_keys], &node_what)?;

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
                return Err(self.error(value, format!("{node_what} needs `id`")));
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
        node: &Located,
        table: TableView,
        kind_name: &str,
        depth: usize,
    ) -> Result<Vec<NodeDef>, LoadError> {
        let children = table.get("children").ok_or_else(|| {
            self.error(
                node,
                format!(
                    "{} {kind_name} node needs at least one node in `children`",
                    article(kind_name)
                ),
            )
        })?;
        self.node_list(children, "children", depth + 1)
    }

    fn loop_node(
        &mut self,
        node: &Located,
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
                if !inside.contains(&node_id) {
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

    fn task(&self, node: &Located, table: TableView) -> Result<TaskDef, LoadError> {
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

    fn argv(&self, run: &Located) -> Result<Vec<String>, LoadError> {
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

    fn timer(&self, node: &Located, table: TableView) -> Result<TimerDef, LoadError> {
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
    fn json(&self, value: &Located) -> Result<Value, LoadError> {
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

/// "an approval node", "a task node".
fn article(kind_name: &str) -> &'static str {
    if kind_name.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    /// Test texts are written indented; TOML ignores leading whitespace, so each line is trimmed
    /// and line 1 is the first line after the opening quote.
    fn text(indented: &str) -> String {
        let body = indented.strip_prefix('\n').unwrap_or(indented);
        body.lines()
            .map(str::trim_start)
            .collect::<Vec<_>>()
            .join("\n")
            + "\n"
    }

    fn parse(indented: &str) -> Result<WorkflowDef, LoadError> {
        parse_workflow(Path::new("dir/test.toml"), &text(indented))
    }

    /// A unique empty directory for one test (removed first if a previous run left it).
    fn scratch_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("smithers-workflow-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    // Goal: one file using every node kind and every field parses into the expected definition.
    #[test]
    fn every_node_kind_parses() {
        let workflow = parse(
            r#"
            name = "all-kinds"
            readable_name = "All kinds"
            description = "every node kind"
            schedule = "0 8 * * 1-5"
            system = true
            [ui]
            dir = "ui/all"

            [[nodes]]
            kind = "task"
            id = "build"
            label = "Build it"
            run = ["sh", "-c", "echo '{}'"]
            timeout_ms = 600000
            retries = 2
            sandbox = "work/app"
            continue_on_fail = true
            env = { MODE = "release" }

            [[nodes]]
            kind = "approval"
            id = "ship-it"
            title = "Ship it?"
            summary = "Artifact built"
            allowed_scopes = ["approval:submit"]
            allowed_users = ["alice", "bob"]
            on_deny = "skip"
            auto_approve_after = "2h"

            [[nodes]]
            kind = "approval"
            id = "plain-approval"

            [[nodes]]
            kind = "parallel"
            id = "checks"
            max_concurrency = 4
            [[nodes.children]]
            kind = "task"
            id = "lint"
            output = { ok = true, count = 3, ratio = 0.5, tags = ["a"], nested = { deep = "yes" } }
            delay_ms = 200
            [[nodes.children]]
            kind = "signal"
            id = "qa-passed"
            correlation = "input.ticket"
            timeout_ms = 3600000
            on_timeout = "skip"
            [[nodes.children]]
            kind = "signal"
            id = "named"
            event = "custom-event"

            [[nodes]]
            kind = "sequence"
            [[nodes.children]]
            kind = "timer"
            id = "wait-a-bit"
            duration = "500ms"
            [[nodes.children]]
            kind = "timer"
            id = "wait-until"
            until = "2026-11-25T09:30:00+01:30"
            [[nodes.children]]
            kind = "timer"
            id = "wait-until-literal"
            until = 2026-11-25T08:00:00Z

            [[nodes]]
            kind = "loop"
            id = "retry-loop"
            max_iterations = 7
            until = { node = "probe", field = "done", equals = true }
            [[nodes.children]]
            kind = "task"
            id = "probe"
            output = { done = false }

            [[nodes]]
            kind = "loop"
            [[nodes.children]]
            kind = "task"
            id = "default-loop-body"
            output = {}
            "#,
        )
        .unwrap();
        assert_eq!(workflow.key, "all-kinds");
        assert_eq!(workflow.readable_name.as_deref(), Some("All kinds"));
        assert_eq!(workflow.description.as_deref(), Some("every node kind"));
        assert_eq!(workflow.schedule.as_deref(), Some("0 8 * * 1-5"));
        assert!(workflow.system);
        assert_eq!(workflow.ui_dir, Some(PathBuf::from("ui/all")));
        assert_eq!(workflow.nodes.len(), 7);

        let build = &workflow.nodes[0];
        assert_eq!(build.id, "build");
        assert_eq!(build.label.as_deref(), Some("Build it"));
        let NodeKind::Task(task) = &build.kind else {
            panic!("{build:?}")
        };
        assert_eq!(
            task.body,
            TaskBody::Command {
                run: vec!["sh".into(), "-c".into(), "echo '{}'".into()]
            }
        );
        assert_eq!(task.timeout_ms, Some(600_000));
        assert_eq!(task.retries, 2);
        assert_eq!(task.delay_ms, 0);
        assert_eq!(task.sandbox.as_deref(), Some("work/app"));
        assert!(task.continue_on_fail);
        assert_eq!(task.env.get("MODE").map(String::as_str), Some("release"));

        let NodeKind::Approval(approval) = &workflow.nodes[1].kind else {
            panic!()
        };
        assert_eq!(
            approval,
            &ApprovalDef {
                title: "Ship it?".into(),
                summary: Some("Artifact built".into()),
                allowed_scopes: vec!["approval:submit".into()],
                allowed_users: vec!["alice".into(), "bob".into()],
                on_deny: OnDeny::Skip,
                auto_approve_after_ms: Some(7_200_000),
            }
        );
        let NodeKind::Approval(plain) = &workflow.nodes[2].kind else {
            panic!()
        };
        assert_eq!(plain.title, "plain-approval", "title defaults to the id");
        assert_eq!(plain.on_deny, OnDeny::Fail);
        assert_eq!(plain.auto_approve_after_ms, None);

        let NodeKind::Parallel {
            children,
            max_concurrency,
        } = &workflow.nodes[3].kind
        else {
            panic!()
        };
        assert_eq!(workflow.nodes[3].id, "checks");
        assert_eq!(*max_concurrency, Some(4));
        let NodeKind::Task(lint) = &children[0].kind else {
            panic!()
        };
        let TaskBody::Static { output } = &lint.body else {
            panic!()
        };
        let output_json: serde_json::Value =
            serde_json::from_str(&simd_json::to_string(output).unwrap()).unwrap();
        assert_eq!(
            output_json,
            serde_json::json!({"ok": true, "count": 3, "ratio": 0.5, "tags": ["a"], "nested": {"deep": "yes"}})
        );
        assert_eq!(lint.delay_ms, 200);
        assert_eq!(lint.retries, 0);
        let NodeKind::Signal(signal) = &children[1].kind else {
            panic!()
        };
        assert_eq!(
            signal,
            &SignalDef {
                name: "qa-passed".into(),
                correlation: Some("input.ticket".into()),
                timeout_ms: Some(3_600_000),
                on_timeout: OnTimeout::Skip,
            }
        );
        let NodeKind::Signal(named) = &children[2].kind else {
            panic!()
        };
        assert_eq!(named.name, "custom-event");
        assert_eq!(named.on_timeout, OnTimeout::Fail);

        let NodeKind::Sequence { children } = &workflow.nodes[4].kind else {
            panic!()
        };
        assert_eq!(workflow.nodes[4].id, "", "containers may omit the id");
        assert_eq!(children[0].kind, NodeKind::Timer(TimerDef::DurationMs(500)));
        assert_eq!(
            children[1].kind,
            NodeKind::Timer(TimerDef::UntilMs(1_795_593_600_000))
        );
        assert_eq!(
            children[2].kind,
            NodeKind::Timer(TimerDef::UntilMs(1_795_593_600_000))
        );

        let NodeKind::Loop {
            children,
            max_iterations,
            until,
        } = &workflow.nodes[5].kind
        else {
            panic!()
        };
        assert_eq!(*max_iterations, 7);
        assert_eq!(children.len(), 1);
        let until = until.as_ref().unwrap();
        assert_eq!(
            (until.node.as_str(), until.field.as_str()),
            ("probe", "done")
        );
        assert_eq!(until.equals, Value::from(true));
        let NodeKind::Loop {
            max_iterations,
            until,
            ..
        } = &workflow.nodes[6].kind
        else {
            panic!()
        };
        assert_eq!(
            (*max_iterations, until.is_none()),
            (LOOP_ITERATIONS_DEFAULT, true)
        );
    }

    // Goal: the key defaults to the file stem, and the hash is the SHA-256 of the file bytes.
    #[test]
    fn key_defaults_to_file_stem_and_hash_covers_the_bytes() {
        let bytes = "[[nodes]]\nkind = \"task\"\nid = \"a\"\noutput = {}\n";
        let workflow = parse_workflow(Path::new("somewhere/my-flow_2.toml"), bytes).unwrap();
        assert_eq!(workflow.key, "my-flow_2");
        assert_eq!(workflow.path, PathBuf::from("somewhere/my-flow_2.toml"));
        // Computed independently (Python hashlib.sha256).
        assert_eq!(
            workflow.hash,
            "17e2dfbf9481f308b41748ee60374edd76e3cb1c5f94f439f013589e313eb33a"
        );
        assert!(!workflow.system);
    }

    // Goal: every validation rule refuses a bad file with the line of the offending key or table
    // and a reason naming the problem. Method: one table of (text, line, reason substring).
    #[test]
    fn each_validation_rule_reports_line_and_reason() {
        let task = "[[nodes]]\nkind = \"task\"\nid = \"ok\"\noutput = {}\n";
        let cases: Vec<(String, usize, &str)> = vec![
            // Workflow level.
            (format!("name = \"Bad\"\n{task}"), 1, "`name` `Bad` must match"),
            (format!("name = \"{}\"\n{task}", "a".repeat(65)), 1, "must match"),
            (format!("name = 7\n{task}"), 1, "`name` must be a string"),
            ("description = \"x\"\n".to_string(), 1, "at least one node"),
            ("nodes = []\n".to_string(), 1, "`nodes` needs at least one node"),
            ("nodes = 3\n".to_string(), 1, "`nodes` must be an array"),
            (format!("system = \"yes\"\n{task}"), 1, "`system` must be a boolean"),
            (format!("{task}\nsystem = true\n"), 6, "unknown key `system` in a task node"),
            (format!("descripton = \"x\"\n{task}"), 1, "unknown key `descripton` in the workflow file"),
            (format!("schedule = \"\"\n{task}"), 1, "`schedule` must not be empty"),
            (format!("\nschedule = \"0 0 30 2 *\"\n{task}"), 2, "`schedule` is not a valid cron pattern: Invalid explicit day of month definition"),
            (format!("[ui]\n\n{task}"), 1, "`ui` needs `dir`"),
            (format!("{task}[ui]\ndir = \"x\"\nbundle = \"y\"\n"), 7, "unknown key `bundle` in `ui`"),
            // Nodes.
            ("[[nodes]]\nid = \"a\"\n".to_string(), 1, "a node needs `kind`"),
            ("[[nodes]]\nkind = \"job\"\nid = \"a\"\n".to_string(), 2, "unknown node kind `job`"),
            ("nodes = [\"task\"]\n".to_string(), 1, "a node must be a table"),
            ("\n[[nodes]]\nkind = \"task\"\noutput = {}\n".to_string(), 2, "a task node needs `id`"),
            ("[[nodes]]\nkind = \"approval\"\n".to_string(), 1, "an approval node needs `id`"),
            ("[[nodes]]\nkind = \"signal\"\n".to_string(), 1, "a signal node needs `id`"),
            ("[[nodes]]\nkind = \"timer\"\nduration = \"1s\"\n".to_string(), 1, "a timer node needs `id`"),
            ("[[nodes]]\nkind = \"task\"\nid = \"has space\"\noutput = {}\n".to_string(), 3, "node id `has space` must match"),
            (format!("[[nodes]]\nkind = \"task\"\nid = \"{}\"\noutput = {{}}\n", "x".repeat(129)), 3, "must match"),
            ("[[nodes]]\nkind = \"task\"\nid = \"\"\noutput = {}\n".to_string(), 3, "must match"),
            ("[[nodes]]\nkind = \"task\"\nid = \"a\"\nouput = {}\n".to_string(), 4, "unknown key `ouput` in a task node"),
            ("[[nodes]]\nkind = \"task\"\nid = \"a\"\noutput = {}\nduration = \"1s\"\n".to_string(), 5, "unknown key `duration` in a task node"),
            ("[[nodes]]\nkind = \"task\"\nid = \"a\"\nlabel = \"\"\noutput = {}\n".to_string(), 4, "`label` must not be empty"),
            // Tasks.
            ("[[nodes]]\nkind = \"task\"\nid = \"a\"\n".to_string(), 1, "exactly one of `output` or `run`"),
            ("[[nodes]]\nkind = \"task\"\nid = \"a\"\noutput = {}\nrun = [\"true\"]\n".to_string(), 5, "not both"),
            ("[[nodes]]\nkind = \"task\"\nid = \"a\"\nrun = [\"true\"]\noutput = {}\n".to_string(), 5, "not both"),
            ("[[nodes]]\nkind = \"task\"\nid = \"a\"\noutput = 3\n".to_string(), 4, "`output` must be a table"),
            ("[[nodes]]\nkind = \"task\"\nid = \"a\"\nrun = []\n".to_string(), 4, "`run` must be a non-empty array of strings"),
            ("[[nodes]]\nkind = \"task\"\nid = \"a\"\nrun = \"make\"\n".to_string(), 4, "`run` must be a non-empty array"),
            ("[[nodes]]\nkind = \"task\"\nid = \"a\"\nrun = [\n\"sh\",\n3]\n".to_string(), 6, "`run` must be a non-empty array of strings"),
            ("[[nodes]]\nkind = \"task\"\nid = \"a\"\nrun = [\"\"]\n".to_string(), 4, "program name must not be empty"),
            ("[[nodes]]\nkind = \"task\"\nid = \"a\"\nrun = [\"a\\u0000b\"]\n".to_string(), 4, "NUL"),
            ("[[nodes]]\nkind = \"task\"\nid = \"a\"\noutput = {}\nretries = 101\n".to_string(), 5, "`retries` = 101 is out of range 0..=100"),
            ("[[nodes]]\nkind = \"task\"\nid = \"a\"\noutput = {}\nretries = -1\n".to_string(), 5, "out of range"),
            ("[[nodes]]\nkind = \"task\"\nid = \"a\"\noutput = {}\nretries = \"2\"\n".to_string(), 5, "`retries` must be an integer"),
            ("[[nodes]]\nkind = \"task\"\nid = \"a\"\noutput = {}\ndelay_ms = -5\n".to_string(), 5, "`delay_ms` = -5 is out of range"),
            ("[[nodes]]\nkind = \"task\"\nid = \"a\"\noutput = {}\ntimeout_ms = 0\n".to_string(), 5, "`timeout_ms` = 0 is out of range"),
            ("[[nodes]]\nkind = \"task\"\nid = \"a\"\noutput = {}\n[nodes.env]\nA = \"1\"\nB = 2\n".to_string(), 7, "`env.B` must be a string"),
            ("[[nodes]]\nkind = \"task\"\nid = \"a\"\noutput = {}\nenv = { \"A=B\" = \"1\" }\n".to_string(), 5, "not a valid variable name"),
            ("[[nodes]]\nkind = \"task\"\nid = \"a\"\noutput = {}\nsandbox = \"\"\n".to_string(), 5, "`sandbox` must not be empty"),
            ("[[nodes]]\nkind = \"task\"\nid = \"a\"\noutput = {}\ncontinue_on_fail = 1\n".to_string(), 5, "`continue_on_fail` must be a boolean"),
            ("[[nodes]]\nkind = \"task\"\nid = \"a\"\noutput = { x = nan }\n".to_string(), 4, "NaN"),
            // Approvals.
            ("[[nodes]]\nkind = \"approval\"\nid = \"a\"\non_deny = \"retry\"\n".to_string(), 4, "`on_deny` = \"retry\" must be one of: fail, continue, skip"),
            ("[[nodes]]\nkind = \"approval\"\nid = \"a\"\nallowed_users = [\"alice\", \"\"]\n".to_string(), 4, "`allowed_users` must be an array of non-empty strings"),
            ("[[nodes]]\nkind = \"approval\"\nid = \"a\"\nallowed_scopes = \"approval:submit\"\n".to_string(), 4, "`allowed_scopes` must be an array"),
            ("[[nodes]]\nkind = \"approval\"\nid = \"a\"\nauto_approve_after = \"soon\"\n".to_string(), 4, "invalid duration `soon`"),
            ("[[nodes]]\nkind = \"approval\"\nid = \"a\"\ntitle = \"\"\n".to_string(), 4, "`title` must not be empty"),
            ("[[nodes]]\nkind = \"approval\"\nid = \"a\"\nrun = [\"x\"]\n".to_string(), 4, "unknown key `run` in an approval node"),
            // Signals.
            ("[[nodes]]\nkind = \"signal\"\nid = \"a\"\ncorrelation = \"ticket\"\n".to_string(), 4, "must be a dotted path starting with `input.`"),
            ("[[nodes]]\nkind = \"signal\"\nid = \"a\"\ncorrelation = \"input.\"\n".to_string(), 4, "dotted path"),
            ("[[nodes]]\nkind = \"signal\"\nid = \"a\"\ncorrelation = \"input.a..b\"\n".to_string(), 4, "dotted path"),
            ("[[nodes]]\nkind = \"signal\"\nid = \"a\"\non_timeout = \"retry\"\n".to_string(), 4, "`on_timeout` = \"retry\" must be one of: fail, skip, continue"),
            ("[[nodes]]\nkind = \"signal\"\nid = \"a\"\ntimeout_ms = 0\n".to_string(), 4, "out of range"),
            ("[[nodes]]\nkind = \"signal\"\nid = \"a\"\nevent = \"\"\n".to_string(), 4, "`event` must not be empty"),
            // Timers.
            ("[[nodes]]\nkind = \"timer\"\nid = \"a\"\n".to_string(), 1, "exactly one of `duration` or `until`"),
            ("[[nodes]]\nkind = \"timer\"\nid = \"a\"\nduration = \"1s\"\nuntil = \"2026-11-25T08:00:00Z\"\n".to_string(), 5, "not both"),
            ("[[nodes]]\nkind = \"timer\"\nid = \"a\"\nduration = \"0s\"\n".to_string(), 4, "must be positive"),
            ("[[nodes]]\nkind = \"timer\"\nid = \"a\"\nduration = \"5x\"\n".to_string(), 4, "invalid duration `5x`"),
            ("[[nodes]]\nkind = \"timer\"\nid = \"a\"\nduration = 500\n".to_string(), 4, "`duration` must be a string"),
            ("[[nodes]]\nkind = \"timer\"\nid = \"a\"\nuntil = \"2026-13-01T00:00:00Z\"\n".to_string(), 4, "month out of range"),
            ("[[nodes]]\nkind = \"timer\"\nid = \"a\"\nuntil = 2026-11-25T08:00:00\n".to_string(), 4, "offset must be Z"),
            ("[[nodes]]\nkind = \"timer\"\nid = \"a\"\nuntil = 5\n".to_string(), 4, "`until` must be an RFC 3339 date-time"),
            // Containers.
            ("[[nodes]]\nkind = \"sequence\"\n".to_string(), 1, "a sequence node needs at least one node in `children`"),
            ("[[nodes]]\nkind = \"parallel\"\nchildren = []\n".to_string(), 3, "`children` needs at least one node"),
            ("[[nodes]]\nkind = \"parallel\"\nmax_concurrency = 0\n[[nodes.children]]\nkind = \"task\"\nid = \"b\"\noutput = {}\n".to_string(), 3, "`max_concurrency` = 0 is out of range"),
            ("[[nodes]]\nkind = \"loop\"\nmax_iterations = 0\n[[nodes.children]]\nkind = \"task\"\nid = \"b\"\noutput = {}\n".to_string(), 3, "`max_iterations` = 0 is out of range 1..=10000"),
            ("[[nodes]]\nkind = \"loop\"\nmax_iterations = 10001\n[[nodes.children]]\nkind = \"task\"\nid = \"b\"\noutput = {}\n".to_string(), 3, "out of range 1..=10000"),
            (format!("{task}[[nodes]]\nkind = \"loop\"\nuntil = {{ node = \"ok\", field = \"done\", equals = true }}\n[[nodes.children]]\nkind = \"task\"\nid = \"b\"\noutput = {{}}\n"), 7, "`until.node` `ok` does not name a node inside the loop"),
            ("[[nodes]]\nkind = \"loop\"\n[nodes.until]\nnode = \"b\"\nequals = true\n[[nodes.children]]\nkind = \"task\"\nid = \"b\"\noutput = {}\n".to_string(), 3, "`until` needs `field`"),
            ("[[nodes]]\nkind = \"loop\"\n[nodes.until]\nnode = \"b\"\nfield = \"x\"\nequals = true\nequal = 1\n[[nodes.children]]\nkind = \"task\"\nid = \"b\"\noutput = {}\n".to_string(), 7, "unknown key `equal` in `until`"),
            ("[[nodes]]\nkind = \"sequence\"\nmax_concurrency = 2\nchildren = [{ kind = \"task\", id = \"b\", output = {} }]\n".to_string(), 3, "unknown key `max_concurrency` in a sequence node"),
            // Duplicate ids, leaf and container, across nesting.
            (format!("{task}\n[[nodes]]\nkind = \"task\"\nid = \"ok\"\noutput = {{}}\n"), 8, "duplicate node id `ok` (first used at line 3)"),
            ("[[nodes]]\nkind = \"sequence\"\nid = \"group\"\n[[nodes.children]]\nkind = \"task\"\nid = \"group\"\noutput = {}\n".to_string(), 6, "duplicate node id `group` (first used at line 3)"),
        ];
        let mut failures = Vec::new();
        for (text, line, reason) in cases {
            match parse_workflow(Path::new("dir/test.toml"), &text) {
                Ok(_) => failures.push(format!("parsed, expected line {line} `{reason}`:\n{text}")),
                Err(error) => {
                    assert_eq!(error.file, PathBuf::from("dir/test.toml"), "{text}");
                    if error.line != line || !error.reason.contains(reason) {
                        failures.push(format!(
                            "expected line {line} `{reason}`, got `{error}` for:\n{text}"
                        ));
                    }
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    }

    // Goal: a file stem that is not a valid key is refused unless `name` overrides it.
    #[test]
    fn invalid_file_stem_needs_a_name() {
        let bytes = "[[nodes]]\nkind = \"task\"\nid = \"a\"\noutput = {}\n";
        let error = parse_workflow(Path::new("Bad Name.toml"), bytes).unwrap_err();
        assert_eq!(error.line, 1);
        assert!(error.reason.contains("file stem `Bad Name`"), "{error}");
        let renamed = format!("name = \"good\"\n{bytes}");
        assert_eq!(
            parse_workflow(Path::new("Bad Name.toml"), &renamed)
                .unwrap()
                .key,
            "good"
        );
    }

    // Goal: TOML syntax errors carry the line the parser stopped at.
    #[test]
    fn syntax_errors_carry_the_line() {
        let cases = [
            ("name = \"x\"\n[[nodes]]\nkind = \n", 3),
            (
                "name = \"x\"\n\n[[nodes]]\nkind = \"task\"\nkind = \"task\"\n",
                5,
            ),
            (
                "[[nodes]]\nkind = \"task\"\nid = \"a\"\noutput = { a = 1\n",
                4,
            ),
            ("name = \"unterminated\n", 1),
            ("a = 99999999999999999999\n", 1),
        ];
        for (text, line) in cases {
            let error = parse_workflow(Path::new("x.toml"), text).unwrap_err();
            assert_eq!(error.line, line, "{text:?}: {error}");
            assert!(error.reason.starts_with("TOML syntax: "), "{error}");
        }
        let display = parse_workflow(Path::new("x.toml"), "a = \n")
            .unwrap_err()
            .to_string();
        assert!(display.starts_with("x.toml:1: TOML syntax"), "{display}");
    }

    // Goal: nesting deeper than NODE_DEPTH_MAX is an error, not a stack overflow.
    #[test]
    fn deep_nesting_is_refused() {
        let mut text = String::new();
        let mut header = String::from("nodes");
        for _ in 0..40 {
            text.push_str(&format!("[[{header}]]\nkind = \"sequence\"\n"));
            header.push_str(".children");
        }
        text.push_str(&format!(
            "[[{header}]]\nkind = \"task\"\nid = \"leaf\"\noutput = {{}}\n"
        ));
        let error = parse_workflow(Path::new("deep.toml"), &text).unwrap_err();
        // The 33rd level's header sits on line 65 (two lines per level).
        assert_eq!(error.line, 65, "{error}");
        assert!(
            error.reason.contains("nodes nest deeper than 32 levels"),
            "{error}"
        );
    }

    // Goal: durations accept a positive integer and one of the five units, nothing else.
    #[test]
    fn durations() {
        let accepted = [
            ("500ms", 500),
            ("30s", 30_000),
            ("2m", 120_000),
            ("2h", 7_200_000),
            ("7d", 604_800_000),
            ("1ms", 1),
            ("0010s", 10_000),
        ];
        for (text, ms) in accepted {
            assert_eq!(parse_duration_ms(text), Ok(ms), "{text}");
        }
        for text in [
            "",
            "0s",
            "0ms",
            "5",
            "s",
            "-5s",
            "+5s",
            "5 s",
            " 5s",
            "5s ",
            "5sec",
            "1.5s",
            "5S",
            "5µs",
            "99999999999999999999d",
            "999999999999d",
        ] {
            assert!(
                parse_duration_ms(text).is_err(),
                "{text:?} should be refused"
            );
        }
        assert_eq!(format_duration_ms(500), "500ms");
        assert_eq!(format_duration_ms(30_000), "30s");
        assert_eq!(format_duration_ms(90_000), "90s");
        assert_eq!(format_duration_ms(120_000), "2m");
        assert_eq!(format_duration_ms(7_200_000), "2h");
        assert_eq!(format_duration_ms(604_800_000), "7d");
        assert_eq!(format_duration_ms(1_500), "1500ms");
        assert_eq!(format_duration_ms(0), "0ms");
    }

    // Goal: RFC 3339 parsing gets calendars, offsets and fractions right and refuses out-of-range
    // fields. Expected values computed independently (Python datetime).
    #[test]
    fn rfc3339_parsing() {
        let accepted = [
            ("1970-01-01T00:00:00Z", 0),
            ("1969-12-31T23:59:59.999Z", -1),
            ("2026-11-25T08:00:00Z", 1_795_593_600_000),
            ("2026-11-25t08:00:00z", 1_795_593_600_000),
            ("2026-11-25 08:00:00Z", 1_795_593_600_000),
            ("2026-11-25T09:30:00+01:30", 1_795_593_600_000),
            ("2026-11-25T03:00:00-05:00", 1_795_593_600_000),
            ("2026-11-25T08:00:00+00:00", 1_795_593_600_000),
            ("2026-11-25T08:00:00-00:00", 1_795_593_600_000),
            ("2026-11-25T08:00:00.25Z", 1_795_593_600_250),
            ("2026-11-25T08:00:00.123456789Z", 1_795_593_600_123),
            ("2024-02-29T00:00:00Z", 1_709_164_800_000),
            ("2000-02-29T12:00:00Z", 951_825_600_000),
            // A leap second counts as the first second of the next minute.
            ("2016-12-31T23:59:60Z", 1_483_228_800_000),
        ];
        for (text, ms) in accepted {
            assert_eq!(parse_rfc3339_ms(text), Ok(ms), "{text}");
        }
        let refused = [
            ("2023-02-29T00:00:00Z", "day out of range"),
            ("1900-02-29T00:00:00Z", "day out of range"),
            ("2026-02-30T00:00:00Z", "day out of range"),
            ("2026-04-31T00:00:00Z", "day out of range"),
            ("2026-01-32T00:00:00Z", "day out of range"),
            ("2026-01-00T00:00:00Z", "day out of range"),
            ("2026-13-01T00:00:00Z", "month out of range"),
            ("2026-00-01T00:00:00Z", "month out of range"),
            ("2026-01-01T24:00:00Z", "hour out of range"),
            ("2026-01-01T00:60:00Z", "minute out of range"),
            ("2026-01-01T00:00:61Z", "second out of range"),
            ("2026-01-01T00:00:00+24:00", "offset out of range"),
            ("2026-01-01T00:00:00+01:60", "offset out of range"),
            ("2026-01-01T00:00:00", "offset must be Z"),
            ("2026-01-01T00:00:00+0100", "offset must be Z"),
            ("2026-01-01T00:00:00+01", "offset must be Z"),
            ("2026-01-01T00:00:00Zjunk", "offset must be Z"),
            ("2026-01-01T00:00:00.Z", "empty fraction"),
            ("2026-01-01", "expected YYYY-MM-DD"),
            ("", "expected YYYY-MM-DD"),
            ("26-01-01T00:00:00Z", "expected YYYY-MM-DD"),
            ("2026-1-01T00:00:00Z", "expected YYYY-MM-DD"),
            ("２０２６-01-01T00:00:00Z", "expected YYYY-MM-DD"),
            ("2026-01-01T00:00:00+０1:00", "offset must be Z"),
        ];
        for (text, reason) in refused {
            let error = parse_rfc3339_ms(text).expect_err(text);
            assert!(error.contains(reason), "{text:?}: {error}");
        }
    }

    // Goal: formatting inverts parsing (UTC, milliseconds), including before 1970.
    #[test]
    fn rfc3339_formatting_round_trips() {
        for ms in [
            0,
            -1,
            951_825_600_000,
            1_709_164_800_000,
            1_795_593_600_123,
            -62_135_596_800_000,
        ] {
            let text = crate::clock::iso_from_ms(ms);
            assert_eq!(parse_rfc3339_ms(&text), Ok(ms), "{text}");
        }
        assert_eq!(
            crate::clock::iso_from_ms(1_795_593_600_000),
            "2026-11-25T08:00:00.000Z"
        );
        assert_eq!(crate::clock::iso_from_ms(-1), "1969-12-31T23:59:59.999Z");
    }

    // Goal: the example workflows shipped in `workflows/` all load, with the expected keys and
    // node kinds.
    #[test]
    fn example_workflows_load() {
        fn kinds(nodes: &[NodeDef]) -> Vec<String> {
            nodes
                .iter()
                .map(|node| match &node.kind {
                    NodeKind::Sequence { children } => {
                        format!("sequence({})", kinds(children).join(","))
                    }
                    NodeKind::Parallel { children, .. } => {
                        format!("parallel({})", kinds(children).join(","))
                    }
                    NodeKind::Loop { children, .. } => {
                        format!("loop({})", kinds(children).join(","))
                    }
                    NodeKind::Task(TaskDef {
                        body: TaskBody::Static { .. },
                        ..
                    }) => format!("static:{}", node.id),
                    NodeKind::Task(TaskDef {
                        body: TaskBody::Command { .. },
                        ..
                    }) => format!("command:{}", node.id),
                    NodeKind::Approval(_) => format!("approval:{}", node.id),
                    NodeKind::Signal(_) => format!("signal:{}", node.id),
                    NodeKind::Timer(_) => format!("timer:{}", node.id),
                })
                .collect()
        }
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows");
        let registry = load_dir(&dir).unwrap();
        let summary: Vec<(String, String)> = registry
            .workflows
            .iter()
            .map(|(key, workflow)| (key.clone(), kinds(&workflow.nodes).join(" ")))
            .collect();
        let expected = [
            ("approve", "static:build approval:ship-it static:ship"),
            (
                "fanout-demo",
                "parallel(static:fan-a,static:fan-b,static:fan-c) loop(static:tick)",
            ),
            ("hello", "static:greet"),
            ("nightly", "static:housekeeping"),
            ("signal", "signal:qa-passed static:report"),
            (
                "slow",
                "command:step-1 command:step-2 command:step-3 command:step-4 command:step-5",
            ),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(key, kinds)| (key.to_string(), kinds.to_string()))
            .collect();
        assert_eq!(summary, expected);

        let approve = &registry.workflows["approve"];
        let NodeKind::Approval(approval) = &approve.nodes[1].kind else {
            panic!()
        };
        assert_eq!(approval.title, "Ship it?");
        assert_eq!(
            registry.workflows["nightly"].schedule.as_deref(),
            Some("0 3 * * *")
        );
        let NodeKind::Loop { max_iterations, .. } =
            &registry.workflows["fanout-demo"].nodes[1].kind
        else {
            panic!()
        };
        assert_eq!(*max_iterations, 3);
        let NodeKind::Parallel { children, .. } = &registry.workflows["fanout-demo"].nodes[0].kind
        else {
            panic!()
        };
        for child in children {
            let NodeKind::Task(task) = &child.kind else {
                panic!()
            };
            assert_eq!(task.delay_ms, 50);
        }
        for node in &registry.workflows["slow"].nodes {
            let NodeKind::Task(TaskDef {
                body: TaskBody::Command { run },
                ..
            }) = &node.kind
            else {
                panic!()
            };
            let step = node.id.trim_start_matches("step-");
            assert_eq!(
                run,
                &[
                    "sh",
                    "-c",
                    &format!("sleep 0.2; echo '{{\"step\":{step}}}'")
                ]
            );
        }
        // Computed independently (Python hashlib.sha256 of workflows/hello.toml).
        assert_eq!(
            registry.workflows["hello"].hash,
            "8f7243bfe949b96f4559bb91065af765acea4cfedeb567ab050321b010bdf901"
        );
    }

    // Goal: load_dir reads only `*.toml`, in file-name order, and refuses a key defined twice,
    // naming the second file and its `name` line.
    #[test]
    fn load_dir_refuses_duplicate_keys() {
        let dir = scratch_dir("duplicates");
        let body = "[[nodes]]\nkind = \"task\"\nid = \"a\"\noutput = {}\n";
        std::fs::write(dir.join("a.toml"), format!("name = \"same\"\n{body}")).unwrap();
        std::fs::write(
            dir.join("b.toml"),
            format!("# comment\nname = \"same\"\n{body}"),
        )
        .unwrap();
        std::fs::write(dir.join("notes.txt"), "not a workflow").unwrap();
        let error = load_dir(&dir).unwrap_err();
        assert_eq!(error.file, dir.join("b.toml"));
        assert_eq!(error.line, 2);
        assert!(
            error.reason.contains("duplicate workflow key `same`"),
            "{error}"
        );
        assert!(error.reason.contains("a.toml"), "{error}");

        // A stem-derived key clashing with a `name` points at line 1.
        std::fs::remove_file(dir.join("b.toml")).unwrap();
        std::fs::write(dir.join("same.toml"), body).unwrap();
        let error = load_dir(&dir).unwrap_err();
        assert_eq!((error.file, error.line), (dir.join("same.toml"), 1));

        std::fs::remove_file(dir.join("same.toml")).unwrap();
        let registry = load_dir(&dir).unwrap();
        assert_eq!(registry.workflows.keys().collect::<Vec<_>>(), ["same"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    // Goal: the first bad file (in name order) stops loading and is the one reported.
    #[test]
    fn load_dir_stops_at_first_bad_file() {
        let dir = scratch_dir("first-bad");
        let body = "[[nodes]]\nkind = \"task\"\nid = \"a\"\noutput = {}\n";
        std::fs::write(dir.join("a-good.toml"), body).unwrap();
        std::fs::write(dir.join("b-bad.toml"), "[[nodes]]\nkind = \"task\"\n").unwrap();
        std::fs::write(dir.join("c-bad.toml"), "= broken").unwrap();
        std::fs::write(dir.join("d-bytes.toml"), [0xff, 0xfe]).unwrap();
        let error = load_dir(&dir).unwrap_err();
        assert_eq!(
            (error.file.clone(), error.line),
            (dir.join("b-bad.toml"), 1),
            "{error}"
        );
        std::fs::remove_file(dir.join("b-bad.toml")).unwrap();
        std::fs::remove_file(dir.join("c-bad.toml")).unwrap();
        let error = load_dir(&dir).unwrap_err();
        assert_eq!(error.file, dir.join("d-bytes.toml"));
        assert!(error.reason.contains("UTF-8"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);

        let missing = load_dir(&dir).unwrap_err();
        assert!(
            missing.reason.contains("cannot read workflow directory"),
            "{missing}"
        );
    }

    // Goal: hostile input never panics (a light property check over truncations and byte flips).
    #[test]
    fn no_panic_on_mangled_input() {
        let source = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows/fanout-demo.toml"),
        )
        .unwrap();
        for end in 0..source.len() {
            if source.is_char_boundary(end) {
                let _ = parse_workflow(Path::new("x.toml"), &source[..end]);
            }
        }
        let bytes = source.as_bytes();
        for index in 0..bytes.len() {
            for replacement in [b'"', b'[', b'=', b'\n', b'.', b'{'] {
                let mut mangled = bytes.to_vec();
                mangled[index] = replacement;
                if let Ok(text) = String::from_utf8(mangled) {
                    let _ = parse_workflow(Path::new("x.toml"), &text);
                }
            }
        }
    }

    // Goal: tables implied by dotted keys or headers (which carry no span in the TOML parser)
    // are read like explicit ones, and errors inside them still get a line.
    #[test]
    fn implied_tables_parse_and_locate_errors() {
        let workflow = parse(
            r#"
            ui.dir = "ui/x"
            [[nodes]]
            kind = "task"
            id = "a"
            output.x = 1
            output.y.z = "deep"
            [[nodes]]
            kind = "task"
            id = "b"
            [nodes.output.deep]
            x = 1
            "#,
        )
        .unwrap();
        assert_eq!(workflow.ui_dir, Some(PathBuf::from("ui/x")));
        let outputs: Vec<String> = workflow
            .nodes
            .iter()
            .map(|node| match &node.kind {
                NodeKind::Task(TaskDef {
                    body: TaskBody::Static { output },
                    ..
                }) => simd_json::to_string(output).unwrap(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            outputs,
            [r#"{"x":1,"y":{"z":"deep"}}"#, r#"{"deep":{"x":1}}"#]
        );

        let cases = [
            ("[ui.x]\ny = 1\n", 1, "unknown key `x` in `ui`"),
            ("\nui.dir = 3\n", 2, "`dir` must be a string"),
            ("[[nodes]]\nkind = \"task\"\nid = \"a\"\noutput = {}\nenv.A.B = \"x\"\n", 5, "`env.A` must be a string"),
            ("[[nodes]]\nkind = \"loop\"\nuntil.node = \"zz\"\nuntil.field = \"f\"\nuntil.equals = 1\n[[nodes.children]]\nkind = \"task\"\nid = \"a\"\noutput = {}\n", 3, "`until.node` `zz`"),
        ];
        for (text, line, reason) in cases {
            let error = parse_workflow(Path::new("x.toml"), text).unwrap_err();
            assert_eq!(
                (error.line, error.reason.contains(reason)),
                (line, true),
                "{text:?}: {error}"
            );
        }
    }
}
