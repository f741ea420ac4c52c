//! JSON values as DevTools writes them (EVENTS.md §4.2 step 2): object keys sorted at every
//! level, nesting and size bounded, numbers as JavaScript prints them. Element props are parsed
//! from their string forms here too.
//!
//! DevTools keeps its own value type instead of `simd_json::OwnedValue` because the order of an
//! object's keys is part of its bytes on the wire, and simd-json's objects keep insertion order
//! only up to 32 keys. Serialization is hand-written for the same reason, and so that a snapshot
//! goes from tree to bytes without an intermediate value.
//!
//! Must never: panic on any input, recurse without a bound, or emit a key twice.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use crate::rpc::Value;
use simd_json::prelude::*;
use simd_json::StaticNode;

/// Containers nested deeper than this become `"[MaxDepth]"` (EVENTS.md §4.2 step 2).
pub const JSON_DEPTH_MAX: usize = 100;
/// Values traversed per sanitized value before the rest become `"[MaxEntries]"`.
pub const JSON_ENTRIES_MAX: usize = 100_000;
/// Largest integer a JavaScript number holds exactly (2^53 − 1).
const SAFE_INTEGER_MAX: f64 = 9_007_199_254_740_991.0;

/// A JSON value whose objects have sorted, unique keys. Deep equality is `==`.
#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    /// Integral numbers in JavaScript's exact range.
    Int(i64),
    /// Every other finite number.
    Float(f64),
    String(String),
    Array(Vec<Json>),
    /// Sorted by key (byte order, which is code-point order for UTF-8), keys unique.
    Object(Vec<(String, Json)>),
}

impl Json {
    pub fn empty_object() -> Json {
        Json::Object(Vec::new())
    }

    /// An object from pairs in any order; a repeated key keeps its last value.
    pub fn object(mut pairs: Vec<(String, Json)>) -> Json {
        // A stable sort keeps repeated keys in insertion order, so the last one survives dedup.
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut unique: Vec<(String, Json)> = Vec::with_capacity(pairs.len());
        for (key, value) in pairs {
            match unique.last_mut() {
                Some(last) if last.0 == key => last.1 = value,
                _ => unique.push((key, value)),
            }
        }
        Json::Object(unique)
    }

    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(pairs) => pairs
                .binary_search_by(|(k, _)| k.as_str().cmp(key))
                .ok()
                .and_then(|index| pairs.get(index))
                .map(|(_, value)| value),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(text) => Some(text),
            _ => None,
        }
    }

    /// A number as a float (for comparisons like `needsApproval == 1`).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Json::Int(value) => Some(*value as f64),
            Json::Float(value) => Some(*value),
            _ => None,
        }
    }

    /// A JavaScript number: integral values in the safe range are integers (`1.0` prints `1`).
    pub fn number(value: f64) -> Json {
        if !value.is_finite() {
            // JSON.stringify writes non-finite numbers as null; simd-json never produces them.
            return Json::Null;
        }
        if value.fract() == 0.0 && value.abs() <= SAFE_INTEGER_MAX {
            Json::Int(value as i64)
        } else {
            Json::Float(value)
        }
    }

    /// Serialized size in bytes.
    pub fn serialized_len(&self) -> usize {
        let mut out = Vec::new();
        self.write(&mut out);
        out.len()
    }

    /// Compact JSON, as `JSON.stringify(value)` writes it.
    pub fn write(&self, out: &mut Vec<u8>) {
        // Depth is bounded by construction (`JSON_DEPTH_MAX`), so recursion is bounded too.
        match self {
            Json::Null => out.extend_from_slice(b"null"),
            Json::Bool(true) => out.extend_from_slice(b"true"),
            Json::Bool(false) => out.extend_from_slice(b"false"),
            Json::Int(value) => write_i64(out, *value),
            Json::Float(value) => write_f64(out, *value),
            Json::String(text) => write_str(out, text),
            Json::Array(items) => {
                out.push(b'[');
                for (index, item) in items.iter().enumerate() {
                    if index > 0 {
                        out.push(b',');
                    }
                    item.write(out);
                }
                out.push(b']');
            }
            Json::Object(pairs) => {
                out.push(b'{');
                for (index, (key, value)) in pairs.iter().enumerate() {
                    if index > 0 {
                        out.push(b',');
                    }
                    write_str(out, key);
                    out.push(b':');
                    value.write(out);
                }
                out.push(b'}');
            }
        }
    }

    /// Indented JSON, as `JSON.stringify(value, null, 2)` writes it (for text diffs).
    pub fn write_pretty(&self, out: &mut Vec<u8>, indent: usize) {
        match self {
            Json::Array(items) if !items.is_empty() => {
                out.push(b'[');
                for (index, item) in items.iter().enumerate() {
                    if index > 0 {
                        out.push(b',');
                    }
                    newline(out, indent + 1);
                    item.write_pretty(out, indent + 1);
                }
                newline(out, indent);
                out.push(b']');
            }
            Json::Object(pairs) if !pairs.is_empty() => {
                out.push(b'{');
                for (index, (key, value)) in pairs.iter().enumerate() {
                    if index > 0 {
                        out.push(b',');
                    }
                    newline(out, indent + 1);
                    write_str(out, key);
                    out.extend_from_slice(b": ");
                    value.write_pretty(out, indent + 1);
                }
                newline(out, indent);
                out.push(b'}');
            }
            other => other.write(out),
        }
    }
}

fn newline(out: &mut Vec<u8>, indent: usize) {
    out.push(b'\n');
    out.resize(out.len() + 2 * indent, b' ');
}

pub fn write_i64(out: &mut Vec<u8>, value: i64) {
    let mut digits = [0u8; 20];
    let mut position = digits.len();
    let mut rest = value.unsigned_abs();
    loop {
        position -= 1;
        if let Some(digit) = digits.get_mut(position) {
            *digit = b'0' + (rest % 10) as u8;
        }
        rest /= 10;
        if rest == 0 || position == 0 {
            break;
        }
    }
    if value < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(digits.get(position..).unwrap_or_default());
}

pub fn write_u64(out: &mut Vec<u8>, value: u64) {
    match i64::try_from(value) {
        Ok(value) => write_i64(out, value),
        Err(_) => out.extend_from_slice(value.to_string().as_bytes()),
    }
}

fn write_f64(out: &mut Vec<u8>, value: f64) {
    if value.is_finite() {
        // Rust's Display is the shortest representation that round-trips, like JavaScript's
        // (without exponent notation at the extremes, which JSON accepts either way).
        out.extend_from_slice(value.to_string().as_bytes());
    } else {
        out.extend_from_slice(b"null");
    }
}

/// A JSON string literal: `"` and `\` escaped, control characters as `JSON.stringify` writes them.
pub fn write_str(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    let bytes = text.as_bytes();
    let mut start = 0;
    for (index, &byte) in bytes.iter().enumerate() {
        let escape: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0C => b"\\f",
            0x00..=0x1F => b"",
            _ => continue,
        };
        out.extend_from_slice(bytes.get(start..index).unwrap_or_default());
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            let hex = |nibble: u8| HEX.get(usize::from(nibble)).copied().unwrap_or(b'0');
            out.push(hex(byte >> 4));
            out.push(hex(byte & 0x0F));
        } else {
            out.extend_from_slice(escape);
        }
        start = index + 1;
    }
    out.extend_from_slice(bytes.get(start..).unwrap_or_default());
    out.push(b'"');
}

/// Counts values while sanitizing, so one huge prop cannot make a snapshot unbounded.
#[derive(Debug)]
pub struct Budget {
    entries_left: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            entries_left: JSON_ENTRIES_MAX,
        }
    }
}

/// A parsed JSON value made JSON-safe: keys sorted, containers deeper than `JSON_DEPTH_MAX`
/// replaced by `"[MaxDepth]"`, values past the budget by `"[MaxEntries]"`. `depth` is the depth
/// of `value`'s container (a prop value sits at depth 1, inside the props object).
pub fn sanitize(value: &Value, depth: usize, budget: &mut Budget) -> Json {
    if budget.entries_left == 0 {
        return Json::String("[MaxEntries]".into());
    }
    budget.entries_left -= 1;
    match value {
        Value::Static(StaticNode::Null) => Json::Null,
        Value::Static(StaticNode::Bool(flag)) => Json::Bool(*flag),
        // A stored integer is shown as stored, even past 2^53 where JavaScript would round it.
        Value::Static(StaticNode::I64(number)) => Json::Int(*number),
        Value::Static(StaticNode::U64(number)) => match i64::try_from(*number) {
            Ok(number) => Json::Int(number),
            Err(_) => Json::number(*number as f64),
        },
        Value::Static(StaticNode::F64(number)) => Json::number(*number),
        Value::String(text) => Json::String(text.clone()),
        Value::Array(_) | Value::Object(_) if depth > JSON_DEPTH_MAX => {
            Json::String("[MaxDepth]".into())
        }
        Value::Array(items) => Json::Array(
            items
                .iter()
                .map(|item| sanitize(item, depth + 1, budget))
                .collect(),
        ),
        Value::Object(map) => Json::object(
            map.iter()
                .map(|(key, item)| (key.to_string(), sanitize(item, depth + 1, budget)))
                .collect(),
        ),
    }
}

/// > Props: a string value is parsed — `"true"`/`"false"`/`"null"` → literals,
/// > `-?\d+(\.\d+)?` → number, text starting `{`…`}` or `[`…`]` → JSON if it parses; others stay
/// > strings. Then made JSON-safe.
pub fn prop_value(value: &Value, budget: &mut Budget) -> Json {
    let Value::String(text) = value else {
        return sanitize(value, 1, budget);
    };
    match text.as_str() {
        "true" => return Json::Bool(true),
        "false" => return Json::Bool(false),
        "null" => return Json::Null,
        _ => {}
    }
    if is_decimal(text) {
        if let Ok(number) = text.parse::<f64>() {
            return Json::number(number);
        }
    }
    let bracketed = (text.starts_with('{') && text.ends_with('}'))
        || (text.starts_with('[') && text.ends_with(']'));
    if bracketed {
        let mut bytes = text.as_bytes().to_vec();
        if let Ok(parsed) = simd_json::to_owned_value(&mut bytes) {
            return sanitize(&parsed, 1, budget);
        }
    }
    Json::String(text.clone())
}

/// `-?\d+(\.\d+)?`, whole string.
fn is_decimal(text: &str) -> bool {
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let (whole, fraction) = match unsigned.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (unsigned, None),
    };
    let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    digits(whole) && fraction.is_none_or(digits)
}

/// The props object of an element, parsed and sorted; anything but an object gives `{}`.
pub fn props_of(props: Option<&Value>) -> Json {
    let mut budget = Budget::default();
    match props {
        Some(Value::Object(map)) => Json::object(
            map.iter()
                .map(|(key, value)| (key.to_string(), prop_value(value, &mut budget)))
                .collect(),
        ),
        _ => Json::empty_object(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn value(text: &str) -> Value {
        simd_json::to_owned_value(&mut text.as_bytes().to_vec()).unwrap()
    }

    fn text(json: &Json) -> String {
        let mut out = Vec::new();
        json.write(&mut out);
        String::from_utf8(out).unwrap()
    }

    // Goal: the prop string rules of EVENTS.md §4.2 step 2, one case per rule and its edges.
    #[test]
    fn prop_strings_are_parsed_by_the_spec_rules() {
        let cases = [
            (r#""true""#, "true"),
            (r#""false""#, "false"),
            (r#""null""#, "null"),
            (r#""42""#, "42"),
            (r#""-7""#, "-7"),
            (r#""007""#, "7"),
            (r#""1.50""#, "1.5"),
            (r#""2.0""#, "2"),
            (r#""-0""#, "0"),
            (r#""1.""#, r#""1.""#),
            (r#""+1""#, r#""+1""#),
            (r#""1e3""#, r#""1e3""#),
            (
                r#""{\"b\":1,\"a\":[2,{\"d\":1,\"c\":2}]}""#,
                r#"{"a":[2,{"c":2,"d":1}],"b":1}"#,
            ),
            (r#""[1,\"x\"]""#, r#"[1,"x"]"#),
            (r#""{not json}""#, r#""{not json}""#),
            (r#""[1,2""#, r#""[1,2""#),
            (r#""True""#, r#""True""#),
            (r#""plain""#, r#""plain""#),
            // Non-strings are kept (made JSON-safe).
            ("12", "12"),
            ("1.25", "1.25"),
            (r#"{"z":{"y":1,"x":2}}"#, r#"{"z":{"x":2,"y":1}}"#),
        ];
        for (input, expected) in cases {
            let mut budget = Budget::default();
            assert_eq!(
                text(&prop_value(&value(input), &mut budget)),
                expected,
                "{input}"
            );
        }
    }

    // Goal: keys are sorted at every level, including objects past simd-json's 32-key limit
    // where insertion order is lost.
    #[test]
    fn objects_are_sorted_at_every_level() {
        let mut source = String::from("{");
        for index in (0..40).rev() {
            source.push_str(&format!("\"k{index:02}\":{{\"b\":1,\"a\":{index}}},"));
        }
        source.pop();
        source.push('}');
        let json = props_of(Some(&value(&source)));
        let Json::Object(pairs) = &json else {
            panic!("not an object")
        };
        let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        assert_eq!(keys.len(), 40);
        assert_eq!(text(json.get("k07").unwrap()), r#"{"a":7,"b":1}"#);
    }

    // Goal: containers deeper than 100 become "[MaxDepth]"; past 100,000 values the rest
    // become "[MaxEntries]".
    #[test]
    fn depth_and_entries_are_bounded() {
        let deep = format!("{}1{}", "[".repeat(120), "]".repeat(120));
        let json = prop_value(&value(&deep), &mut Budget::default());
        let mut current = &json;
        let mut depth = 1;
        while let Json::Array(items) = current {
            current = &items[0];
            depth += 1;
        }
        assert_eq!(current, &Json::String("[MaxDepth]".into()));
        assert_eq!(depth, JSON_DEPTH_MAX + 1);

        let many = format!("[{}]", vec!["1"; JSON_ENTRIES_MAX + 5].join(","));
        let Json::Array(items) = prop_value(&value(&many), &mut Budget::default()) else {
            panic!("not an array")
        };
        // The array itself is one value, so JSON_ENTRIES_MAX - 1 items fit.
        assert_eq!(items[JSON_ENTRIES_MAX - 2], Json::Int(1));
        assert_eq!(
            items[JSON_ENTRIES_MAX - 1],
            Json::String("[MaxEntries]".into())
        );
        assert_eq!(items.len(), JSON_ENTRIES_MAX + 5);
    }

    // Goal: strings are escaped as JSON.stringify does; numbers print as JavaScript prints them.
    #[test]
    fn serialization_matches_javascript() {
        let json = Json::object(vec![
            (
                "s".into(),
                Json::String("a\"b\\c\n\t\u{1}\u{8}\u{c}é😀".into()),
            ),
            ("i".into(), Json::Int(-12)),
            ("f".into(), Json::number(0.1)),
            ("g".into(), Json::number(3.0)),
            ("big".into(), Json::Int(i64::MIN)),
            ("e".into(), Json::empty_object()),
            ("a".into(), Json::Array(vec![])),
        ]);
        assert_eq!(
            text(&json),
            r#"{"a":[],"big":-9223372036854775808,"e":{},"f":0.1,"g":3,"i":-12,"s":"a\"b\\c\n\t\u0001\b\fé😀"}"#
        );
        let mut pretty = Vec::new();
        Json::object(vec![
            (
                "b".into(),
                Json::Array(vec![Json::Int(1), Json::empty_object()]),
            ),
            ("a".into(), Json::Null),
        ])
        .write_pretty(&mut pretty, 0);
        assert_eq!(
            String::from_utf8(pretty).unwrap(),
            "{\n  \"a\": null,\n  \"b\": [\n    1,\n    {}\n  ]\n}"
        );
        let mut out = Vec::new();
        write_u64(&mut out, u64::MAX);
        assert_eq!(out, b"18446744073709551615");
    }

    // Goal: a repeated key keeps its last value, and lookups find keys in the sorted vector.
    #[test]
    fn object_keys_are_unique() {
        let json = Json::object(vec![
            ("b".into(), Json::Int(1)),
            ("a".into(), Json::Int(2)),
            ("b".into(), Json::Int(3)),
        ]);
        assert_eq!(text(&json), r#"{"a":2,"b":3}"#);
        assert_eq!(json.get("b"), Some(&Json::Int(3)));
        assert_eq!(json.get("c"), None);
    }
}
