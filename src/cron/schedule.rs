//! Cron expressions with the meaning the reference gives them (its `cron-parser` 5.x, DATA.md §8,
//! RELIABILITY.md §5.4): five fields (minute hour day-of-month month day-of-week) or six with a
//! leading seconds field; `0` and `7` are Sunday and `1` is Monday; month and weekday names; lists,
//! ranges and steps; `?`; `L` (last day of the month, or `5L` the last Friday); `#` (`1#2`, the
//! second Monday); the `@yearly`/`@monthly`/… shorthands. When both day fields are restricted a
//! day matches either one (Vixie cron's rule, which cron-parser follows).
//!
//! Times are evaluated in UTC (docs/DECISIONS.md: the reference uses the server's local zone).
//! Not supported, on purpose: cron-parser's hashed `H` values (seeded per process, so a schedule
//! would move between restarts), fewer than five fields and the empty pattern (cron-parser pads
//! or defaults them); each is a typed error.
//!
//! Pure and total: no IO, no clock, no panic on any input, and every search is bounded. A pattern
//! that can never fire is refused when it is parsed (`0 0 30 2 *`, like cron-parser) or, for the
//! rarer combinations cron-parser only discovers while searching, when no fire exists within
//! `SEARCH_HORIZON_DAYS` (`Schedule::next_after` returns `None`; callers refuse the pattern).
//! The `cron` crate is not used: RELIABILITY.md §5.4 measured it reading five fields, weekday
//! numbers and impossible dates differently, and a normalising wrapper would have needed this
//! parser anyway.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use crate::clock::{civil_from_days, days_in_month};

/// Longest pattern accepted, in bytes: the longest meaningful expression (every value of every
/// field listed) is under 400 bytes; past this the text is refused before it is split.
pub const PATTERN_BYTES_MAX: usize = 1_024;
/// How far `next_after` looks, in days: 50 years. The rarest pattern that can fire (`0 0 * 2
/// 1#5`, a fifth Monday of February) repeats every 28 years and once waits 40 (2072 → 2112, no
/// leap day in 2100), so this finds every possible fire while keeping a search to at most
/// 18,300 cheap day checks.
pub const SEARCH_HORIZON_DAYS: i64 = 50 * 366;
/// Latest instant searched from: 9999-12-31T23:59:59.999Z, so date arithmetic stays far from
/// overflow whatever a stored row holds.
pub const EPOCH_MS_MAX: i64 = 253_402_300_799_999;

const MS_PER_DAY: i64 = 86_400_000;

/// One of the six fields, with its range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Second,
    Minute,
    Hour,
    DayOfMonth,
    Month,
    DayOfWeek,
}

impl Field {
    pub fn name(self) -> &'static str {
        match self {
            Field::Second => "second",
            Field::Minute => "minute",
            Field::Hour => "hour",
            Field::DayOfMonth => "dayOfMonth",
            Field::Month => "month",
            Field::DayOfWeek => "dayOfWeek",
        }
    }

    /// Inclusive range as written (day-of-week accepts 7 for Sunday).
    fn range(self) -> (u32, u32) {
        match self {
            Field::Second | Field::Minute => (0, 59),
            Field::Hour => (0, 23),
            Field::DayOfMonth => (1, 31),
            Field::Month => (1, 12),
            Field::DayOfWeek => (0, 7),
        }
    }
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a pattern was refused. Messages follow cron-parser's where it has one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    #[error("Cron pattern is empty")]
    Empty,
    #[error("Cron pattern exceeds {} bytes", PATTERN_BYTES_MAX)]
    TooLong,
    #[error("Invalid cron expression: expected 5 or 6 fields, got {0}")]
    FieldCount(usize),
    #[error("Validation error, cannot resolve alias \"{0}\"")]
    UnknownAlias(String),
    #[error("Invalid characters, got value: {value}")]
    InvalidCharacters { field: Field, value: String },
    #[error("Invalid list value format")]
    EmptyListItem { field: Field },
    #[error("Constraint error, got value {value} expected range {min}-{max}")]
    OutOfRange {
        field: Field,
        value: String,
        min: u32,
        max: u32,
    },
    #[error("Invalid range: {value}")]
    InvalidRange { field: Field, value: String },
    #[error("Constraint error, cannot repeat at every {value} time.")]
    InvalidStep { field: Field, value: String },
    #[error("Invalid repeat: {value}")]
    InvalidRepeat { field: Field, value: String },
    #[error("Constraint error, invalid dayOfWeek occurrence number (#): {0}")]
    InvalidNth(String),
    #[error("Validation error, duplicate values found in {field}")]
    Duplicate { field: Field },
    #[error("Invalid last weekday of the month expression: {0}")]
    LastWeekday(String),
    #[error(
        "Constraint error, invalid dayOfWeek `#` and `{0}` special characters are incompatible"
    )]
    NthWith(char),
    /// The day fields can never meet the months (cron-parser's message).
    #[error("Invalid explicit day of month definition")]
    ImpossibleDate,
    /// Parsed, but no fire exists within the search horizon from the instant asked.
    #[error("Cron pattern has no fire time within {} days", SEARCH_HORIZON_DAYS)]
    NoFireWithinHorizon,
}

/// A parsed expression: the set of each field as a bit mask, plus the day-of-month and
/// day-of-week specials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    seconds: u64,
    minutes: u64,
    hours: u64,
    /// Bits 1..=31.
    days_of_month: u64,
    /// Bits 1..=12.
    months: u64,
    /// Bits 0..=6 (Sunday is 0; a written 7 is stored as 0).
    days_of_week: u64,
    /// `L` in day-of-month: the month's last day.
    last_day_of_month: bool,
    /// `nL` in day-of-week: the last weekday n of the month (bits 0..=6).
    last_weekdays: u64,
    /// `n#k`: the weekdays of `days_of_week` match only in the k-th week of the month (1..=5).
    nth_week: Option<u32>,
    /// The field was `*` or `?`: it does not restrict days (the OR rule needs this).
    day_of_month_wildcard: bool,
    day_of_week_wildcard: bool,
}

/// cron-parser's shorthands.
const PREDEFINED: &[(&str, &str)] = &[
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"),
    ("@daily", "0 0 * * *"),
    ("@hourly", "0 * * * *"),
    ("@minutely", "* * * * *"),
    ("@secondly", "* * * * * *"),
    ("@weekdays", "0 0 * * 1-5"),
    ("@weekends", "0 0 * * 0,6"),
];

const MONTH_NAMES: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAY_NAMES: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// Parses `text`. Leading and trailing whitespace is ignored; fields are separated by runs of
/// whitespace.
pub fn parse(text: &str) -> Result<Schedule, CronError> {
    if text.len() > PATTERN_BYTES_MAX {
        return Err(CronError::TooLong);
    }
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(CronError::Empty);
    }
    let expanded = PREDEFINED
        .iter()
        .find(|(name, _)| *name == trimmed)
        .map_or(trimmed, |(_, expression)| *expression);
    let atoms: Vec<&str> = expanded.split_whitespace().collect();
    let (second, rest) = match atoms.as_slice() {
        [second, rest @ ..] if rest.len() == 5 => (*second, rest),
        rest if rest.len() == 5 => ("0", rest),
        other => return Err(CronError::FieldCount(other.len())),
    };
    let [minute, hour, day_of_month, month, day_of_week] = rest else {
        return Err(CronError::FieldCount(atoms.len()));
    };
    // cron-parser's order: second, minute, hour, month, day of month, then day of week.
    let seconds = parse_field(Field::Second, second)?;
    let minutes = parse_field(Field::Minute, minute)?;
    let hours = parse_field(Field::Hour, hour)?;
    let months = parse_field(Field::Month, month)?;
    let days_of_month = parse_field(Field::DayOfMonth, day_of_month)?;
    let (day_of_week_text, nth_week) = split_nth(day_of_week)?;
    let days_of_week = parse_field(Field::DayOfWeek, day_of_week_text)?;
    let is_wildcard = |raw: &str| raw == "*" || raw == "?";
    let schedule = Schedule {
        seconds: seconds.bits(),
        minutes: minutes.bits(),
        hours: hours.bits(),
        days_of_month: days_of_month.bits(),
        months: months.bits(),
        days_of_week: days_of_week.bits(),
        last_day_of_month: days_of_month.has_last(),
        last_weekdays: days_of_week.last_weekdays()?,
        nth_week,
        day_of_month_wildcard: is_wildcard(day_of_month),
        day_of_week_wildcard: is_wildcard(day_of_week),
    };
    check_explicit_day(&months, &days_of_month)?;
    schedule.check_possible()?;
    Ok(schedule)
}

/// One value of a field as cron-parser keeps it: a number, or an `L` form (`L`, `5L`).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Item {
    Number(u32),
    Last(String),
}

/// One parsed field: its values in the order produced (duplicates are refused).
#[derive(Clone, Debug, Default)]
struct Values(Vec<Item>);

impl Values {
    /// Numbers as a bit mask. A 7 in day-of-week (kept by ranges ending at 7) never equals a
    /// weekday, exactly as in cron-parser, which adds 0 to such a range instead.
    fn bits(&self) -> u64 {
        self.0.iter().fold(0, |bits, item| match item {
            Item::Number(n) if *n < 64 => bits | (1u64 << n),
            _ => bits,
        })
    }

    fn has_last(&self) -> bool {
        self.0.iter().any(|item| matches!(item, Item::Last(_)))
    }

    /// `nL` in day-of-week: cron-parser reads the weekday from the first character, modulo 7;
    /// a lone `L` makes it throw when searching, so it is refused here.
    fn last_weekdays(&self) -> Result<u64, CronError> {
        let mut bits = 0;
        for item in &self.0 {
            if let Item::Last(text) = item {
                let weekday = text
                    .chars()
                    .next()
                    .and_then(|c| c.to_digit(10))
                    .ok_or_else(|| CronError::LastWeekday(text.clone()))?;
                bits |= 1u64 << (weekday % 7);
            }
        }
        Ok(bits)
    }

    /// The first value after cron-parser's sort (numbers ascending, then the `L` forms).
    fn first(&self) -> Option<&Item> {
        self.0
            .iter()
            .filter_map(|item| match item {
                Item::Number(n) => Some((*n, item)),
                Item::Last(_) => None,
            })
            .min_by_key(|(n, _)| *n)
            .map(|(_, item)| item)
            .or_else(|| {
                self.0
                    .iter()
                    .filter(|item| matches!(item, Item::Last(_)))
                    .min_by(|a, b| match (a, b) {
                        (Item::Last(a), Item::Last(b)) => a.cmp(b),
                        _ => std::cmp::Ordering::Equal,
                    })
            })
    }
}

/// `1#2` → (`1`, Some(2)); cron-parser allows `#` only on a lone weekday.
fn split_nth(text: &str) -> Result<(&str, Option<u32>), CronError> {
    let mut parts = text.split('#');
    let head = parts.next().unwrap_or_default();
    let Some(nth) = parts.next() else {
        return Ok((text, None));
    };
    // cron-parser tests `/[,-/]/`, a character class from ',' to '/'.
    if let Some(special) = text.chars().find(|c| (','..='/').contains(c)) {
        return Err(CronError::NthWith(special));
    }
    if let Some(extra) = parts.next() {
        // More than one `#`.
        return Err(CronError::InvalidNth(extra.to_string()));
    }
    match parse_number(nth) {
        Some(n @ 1..=5) => Ok((head, Some(n))),
        _ => Err(CronError::InvalidNth(nth.to_string())),
    }
}

/// Replaces three-letter names the way cron-parser's global `/[a-z]{3}/gi` replacement does:
/// each run of letters is cut into threes from its start, every three must be a month or weekday
/// name (either, in both fields), and a shorter tail stays (so `L` survives and `monday` fails on
/// "day").
fn replace_names(text: &str) -> Result<String, CronError> {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| -> Result<(), CronError> {
        let letters: Vec<char> = run.chars().collect();
        for chunk in letters.chunks(3) {
            let piece: String = chunk.iter().collect();
            if chunk.len() < 3 {
                out.push_str(&piece);
                continue;
            }
            let lower = piece.to_ascii_lowercase();
            let number = MONTH_NAMES
                .iter()
                .position(|name| *name == lower)
                .map(|index| index + 1)
                .or_else(|| WEEKDAY_NAMES.iter().position(|name| *name == lower));
            match number {
                Some(number) => out.push_str(&number.to_string()),
                None => return Err(CronError::UnknownAlias(lower)),
            }
        }
        run.clear();
        Ok(())
    };
    for c in text.chars() {
        if c.is_ascii_alphabetic() {
            run.push(c);
        } else {
            flush(&mut run, &mut out)?;
            out.push(c);
        }
    }
    flush(&mut run, &mut out)?;
    Ok(out)
}

fn valid_characters(field: Field, text: &str) -> bool {
    !text.is_empty()
        && text.chars().all(|c| match c {
            '0'..='9' | ',' | '*' | '/' | '-' => true,
            '?' => true,
            'L' => matches!(field, Field::DayOfMonth | Field::DayOfWeek),
            '#' => field == Field::DayOfWeek,
            _ => false,
        })
}

/// Decimal digits only, at most 9 of them (anything longer is out of every range anyway).
fn parse_number(text: &str) -> Option<u32> {
    if text.is_empty() || text.len() > 9 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// JavaScript's `parseInt(text, 10)` on our alphabet: the leading digits, if any (capped at 9
/// of them, beyond every range).
fn leading_number(text: &str) -> Option<u32> {
    let digits: String = text
        .chars()
        .take_while(char::is_ascii_digit)
        .take(9)
        .collect();
    parse_number(&digits)
}

fn out_of_range(field: Field, value: &str) -> CronError {
    let (min, max) = field.range();
    CronError::OutOfRange {
        field,
        value: value.to_string(),
        min,
        max,
    }
}

/// One field, by cron-parser's steps: names, the character check, `*`/`?` replaced by the
/// field's range as text, then the comma list, each item a value, an `L` form, a range, or either
/// with a step; finally the values are checked for range and duplicates.
fn parse_field(field: Field, raw: &str) -> Result<Values, CronError> {
    let named = match field {
        Field::Month | Field::DayOfWeek => replace_names(raw)?,
        _ => raw.to_string(),
    };
    if !valid_characters(field, &named) {
        return Err(CronError::InvalidCharacters {
            field,
            value: named,
        });
    }
    let (min, max) = field.range();
    let text = named.replace(['*', '?'], &format!("{min}-{max}"));
    let mut values = Values::default();
    for item in text.split(',') {
        if item.is_empty() {
            return Err(CronError::EmptyListItem { field });
        }
        parse_repeat(field, item, &mut values.0)?;
    }
    // Duplicates are refused as cron-parser's field validation refuses them: it sorts the
    // values (numbers first), takes the first one seen twice, and throws only if that value is
    // truthy, so a repeated 0 (`0,0`, or `0,7` in day-of-week) passes and hides any other repeat.
    let mut seen: u64 = 0;
    let mut repeated: u64 = 0;
    let mut repeated_last = false;
    let mut lasts: Vec<&str> = Vec::new();
    for item in &values.0 {
        match item {
            Item::Number(n) => {
                let bit = 1u64 << (n % 64);
                repeated |= seen & bit;
                seen |= bit;
            }
            Item::Last(text) => {
                repeated_last |= lasts.contains(&text.as_str());
                lasts.push(text);
                // `^\d{0,2}L$`
                let digits = text.strip_suffix('L').unwrap_or("x");
                if digits.len() > 2 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(out_of_range(field, text));
                }
            }
        }
    }
    let zero_first = repeated & 1 != 0;
    if !zero_first && (repeated != 0 || repeated_last) {
        return Err(CronError::Duplicate { field });
    }
    Ok(values)
}

/// `base/step`: a numeric base runs to the field's end (`5/15` is `5-59/15`).
fn parse_repeat(field: Field, item: &str, values: &mut Vec<Item>) -> Result<(), CronError> {
    let parts: Vec<&str> = item.split('/').collect();
    match parts.as_slice() {
        [single] => parse_range(field, single, 1, values),
        [base, step] => {
            let (_, max) = field.range();
            let base = if leading_number(base).is_some() {
                format!("{base}-{max}")
            } else {
                base.to_string()
            };
            let step = leading_number(step).ok_or_else(|| CronError::InvalidStep {
                field,
                value: step.to_string(),
            })?;
            parse_range(field, &base, step, values)
        }
        _ => Err(CronError::InvalidRepeat {
            field,
            value: item.to_string(),
        }),
    }
}

fn parse_range(
    field: Field,
    text: &str,
    step: u32,
    values: &mut Vec<Item>,
) -> Result<(), CronError> {
    let (min, max) = field.range();
    let parts: Vec<&str> = text.split('-').collect();
    let (Some(low_text), Some(high_text)) = (parts.first(), parts.get(1)) else {
        return parse_single(field, text, values);
    };
    let (Some(low), Some(high)) = (leading_number(low_text), leading_number(high_text)) else {
        return Err(CronError::InvalidRange {
            field,
            value: text.to_string(),
        });
    };
    if low < min || high > max {
        return Err(out_of_range(field, &format!("{low}-{high}")));
    }
    if low > high {
        return Err(CronError::InvalidRange {
            field,
            value: text.to_string(),
        });
    }
    if step == 0 {
        return Err(CronError::InvalidStep {
            field,
            value: step.to_string(),
        });
    }
    let mut range = Vec::new();
    // cron-parser: a day-of-week range ending at 7 (or 0) also holds 0, Sunday.
    if field == Field::DayOfWeek && high % 7 == 0 {
        range.push(Item::Number(0));
    }
    let mut value = low;
    while value <= high {
        if !range.contains(&Item::Number(value)) {
            range.push(Item::Number(value));
        }
        value = value.saturating_add(step);
    }
    values.extend(range);
    Ok(())
}

/// A lone value: a number in range (a day-of-week 7 is Sunday), or an `L` form.
fn parse_single(field: Field, text: &str, values: &mut Vec<Item>) -> Result<(), CronError> {
    if text.contains('L') {
        values.push(Item::Last(text.to_string()));
        return Ok(());
    }
    let (min, max) = field.range();
    match leading_number(text) {
        Some(value) if (min..=max).contains(&value) => {
            let value = if field == Field::DayOfWeek {
                value % 7
            } else {
                value
            };
            values.push(Item::Number(value));
            Ok(())
        }
        _ => Err(out_of_range(field, text)),
    }
}

/// cron-parser's "Invalid explicit day of month definition": with a single month and no `L` in
/// the day of the month, the first day-of-month value (the smallest) must exist in that month
/// (February counts 29 days), whatever the day of the week says.
fn check_explicit_day(months: &Values, days_of_month: &Values) -> Result<(), CronError> {
    if days_of_month.has_last() {
        return Ok(());
    }
    let numbers: Vec<u32> = months
        .0
        .iter()
        .filter_map(|item| match item {
            Item::Number(n) => Some(*n),
            Item::Last(_) => None,
        })
        .collect();
    let [month] = numbers.as_slice() else {
        return Ok(());
    };
    let first = match days_of_month.first() {
        Some(Item::Number(n)) => Some(*n),
        Some(Item::Last(text)) => leading_number(text),
        None => return Ok(()),
    };
    match first {
        Some(day) if day <= days_in_month(2000, *month) => Ok(()),
        _ => Err(CronError::ImpossibleDate),
    }
}

fn has(bits: u64, index: u32) -> bool {
    index < 64 && bits & (1u64 << index) != 0
}

/// The lowest set bit at or above `from`, if any.
fn first_at_or_after(bits: u64, from: u32) -> Option<u32> {
    if from >= 64 {
        return None;
    }
    let masked = bits & (u64::MAX << from);
    (masked != 0).then(|| masked.trailing_zeros())
}

impl Schedule {
    /// cron-parser refuses, at parse time, a day-of-month list that no chosen month can hold
    /// ("Invalid explicit day of month definition": `0 0 30 2 *`, `0 0 31 4,6 *`) when only the
    /// day of the month decides.
    fn check_possible(&self) -> Result<(), CronError> {
        if self.last_day_of_month || !self.day_of_week_wildcard || self.day_of_month_wildcard {
            return Ok(());
        }
        let Some(smallest_day) = first_at_or_after(self.days_of_month, 1) else {
            return Ok(());
        };
        let longest_month = (1..=12)
            .filter(|month| has(self.months, *month))
            .map(|month| days_in_month(2000, month))
            .max()
            .unwrap_or(31);
        if smallest_day > longest_month {
            return Err(CronError::ImpossibleDate);
        }
        Ok(())
    }

    /// cron-parser's day rule: each day field matches by value or `L`; when both are restricted
    /// either may match, when one is `*`/`?` the other decides; then `#` keeps only days in the
    /// n-th week of the month (`ceil(day / 7)`), whichever field matched.
    fn day_matches(&self, year: i64, month: u32, day: u32, weekday: u32) -> bool {
        if !has(self.months, month) {
            return false;
        }
        let month_days = days_in_month(year, month);
        let by_month_day =
            has(self.days_of_month, day) || (self.last_day_of_month && day == month_days);
        let by_weekday = has(self.days_of_week, weekday)
            || (has(self.last_weekdays, weekday) && day + 7 > month_days);
        let matched = match (self.day_of_month_wildcard, self.day_of_week_wildcard) {
            (false, false) => by_month_day || by_weekday,
            (_, true) => by_month_day,
            (true, false) => by_weekday,
        };
        matched && self.nth_week.is_none_or(|nth| day.div_ceil(7) == nth)
    }

    /// The first second of the day at or after `from` (seconds of the day) that matches.
    fn first_time_of_day(&self, from: u32) -> Option<u32> {
        let (from_hour, from_minute, from_second) = (from / 3_600, from / 60 % 60, from % 60);
        let mut hour = first_at_or_after(self.hours, from_hour)?;
        loop {
            if hour > 23 {
                return None;
            }
            let minute_from = if hour == from_hour { from_minute } else { 0 };
            let mut minute = first_at_or_after(self.minutes, minute_from);
            while let Some(m) = minute.filter(|m| *m < 60) {
                let second_from = if hour == from_hour && m == from_minute {
                    from_second
                } else {
                    0
                };
                if let Some(second) = first_at_or_after(self.seconds, second_from) {
                    if second < 60 {
                        return Some(hour * 3_600 + m * 60 + second);
                    }
                }
                minute = first_at_or_after(self.minutes, m + 1);
            }
            hour = first_at_or_after(self.hours, hour + 1)?;
        }
    }

    /// The first fire strictly after `after_ms` (epoch milliseconds, UTC), at a whole second;
    /// `None` when there is none within `SEARCH_HORIZON_DAYS` or `after_ms` is outside
    /// 1970 … 9999.
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        if !(0..=EPOCH_MS_MAX).contains(&after_ms) {
            return None;
        }
        // Strictly after, at second resolution: 12:00:00.000 and 12:00:00.500 both look from
        // 12:00:01.
        let start_s = after_ms / 1_000 + 1;
        let start_day = start_s.div_euclid(86_400);
        let start_second = start_s.rem_euclid(86_400) as u32;
        for offset in 0..SEARCH_HORIZON_DAYS {
            let day_number = start_day + offset;
            let (year, month, day) = civil_from_days(day_number);
            // 1970-01-01 was a Thursday (4).
            let weekday = (day_number + 4).rem_euclid(7) as u32;
            if !self.day_matches(year, month, day, weekday) {
                continue;
            }
            let from = if offset == 0 { start_second } else { 0 };
            if let Some(second) = self.first_time_of_day(from) {
                return Some(day_number * MS_PER_DAY + i64::from(second) * 1_000);
            }
        }
        None
    }

    /// `next_after`, refusing a pattern that has no fire in the horizon with a typed error (what
    /// `cronCreate` and workflow loading need).
    pub fn require_next_after(&self, after_ms: i64) -> Result<i64, CronError> {
        self.next_after(after_ms)
            .ok_or(CronError::NoFireWithinHorizon)
    }
}

/// Parses `pattern` and computes its first fire strictly after `after_ms`: the check made when a
/// pattern is accepted (`cronCreate`, workflow `schedule`), so a pattern that is stored can fire.
pub fn next_fire(pattern: &str, after_ms: i64) -> Result<i64, CronError> {
    parse(pattern)?.require_next_after(after_ms)
}

/// Properties checked for any input by the `cron_expr` fuzz target and its seed replay: parsing
/// never panics; a parsed schedule's next fire is strictly later, on a whole second, and is
/// itself not repeated by asking again from it (the search moves forward). Panics when one is
/// violated.
pub fn check_fuzz_properties(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(schedule) = parse(&text) else {
        return;
    };
    for after_ms in [0, 1_767_225_600_000, 4_102_444_799_999, EPOCH_MS_MAX] {
        if let Some(next) = schedule.next_after(after_ms) {
            assert!(next > after_ms, "{text:?}: {next} not after {after_ms}");
            assert_eq!(next % 1_000, 0, "{text:?}: {next} not on a second");
            if let Some(following) = schedule.next_after(next) {
                assert!(following > next, "{text:?}: {following} not after {next}");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn at(iso: &str) -> i64 {
        // "YYYY-MM-DDTHH:MM:SS" in UTC, for readable tests.
        let number = |range: std::ops::Range<usize>| iso[range].parse::<i64>().unwrap();
        let (year, month, day) = (number(0..4), number(5..7) as u32, number(8..10) as u32);
        let mut days = 0i64;
        // Count days from 1970 by walking months: slow but obviously right for tests.
        for y in 1970..year {
            days += if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 {
                366
            } else {
                365
            };
        }
        for m in 1..month {
            days += i64::from(days_in_month(year, m));
        }
        days += i64::from(day) - 1;
        let seconds = number(11..13) * 3_600 + number(14..16) * 60 + number(17..19);
        days * MS_PER_DAY + seconds * 1_000
    }

    fn next(pattern: &str, from: &str) -> String {
        let ms = parse(pattern).unwrap().next_after(at(from)).unwrap();
        crate::clock::iso_from_ms(ms)
    }

    #[test]
    fn civil_dates_round_trip_with_the_test_helper() {
        for iso in [
            "1970-01-01T00:00:00",
            "2000-02-29T12:34:56",
            "2026-11-25T06:00:00",
            "2100-03-01T00:00:00",
        ] {
            assert_eq!(crate::clock::iso_from_ms(at(iso)), format!("{iso}.000Z"));
        }
    }

    /// Goal: the four measured incompatibilities of RELIABILITY.md §5.4 come out as cron-parser
    /// reads them. 2026-01-01 is a Thursday.
    #[test]
    fn the_measured_incompatibilities_follow_cron_parser() {
        assert_eq!(
            next("*/5 * * * *", "2026-01-01T00:00:00"),
            "2026-01-01T00:05:00.000Z"
        );
        // Monday.
        assert_eq!(
            next("0 9 * * 1", "2026-01-01T00:00:00"),
            "2026-01-05T09:00:00.000Z"
        );
        // Sunday, both spellings.
        assert_eq!(
            next("0 0 * * 0", "2026-01-01T00:00:00"),
            "2026-01-04T00:00:00.000Z"
        );
        assert_eq!(
            next("0 0 * * 7", "2026-01-01T00:00:00"),
            "2026-01-04T00:00:00.000Z"
        );
        assert_eq!(parse("0 0 31 2 *"), Err(CronError::ImpossibleDate));
        assert_eq!(parse("0 0 30 2 *"), Err(CronError::ImpossibleDate));
        assert_eq!(parse("0 0 31 4,6,9,11 *"), Err(CronError::ImpossibleDate));
    }

    #[test]
    fn six_fields_names_and_specials() {
        assert_eq!(
            next("* * * * * *", "2026-01-01T00:00:00"),
            "2026-01-01T00:00:01.000Z"
        );
        assert_eq!(
            next("30 15 10 * * *", "2026-01-01T10:15:30"),
            "2026-01-02T10:15:30.000Z"
        );
        assert_eq!(
            next("0 12 * JAN-MAR mon-FRI", "2026-03-31T12:00:00"),
            "2027-01-01T12:00:00.000Z"
        );
        // Last day of February in a leap year, last Friday, second Monday.
        assert_eq!(
            next("0 0 L 2 *", "2028-01-01T00:00:00"),
            "2028-02-29T00:00:00.000Z"
        );
        assert_eq!(
            next("0 0 * * 5L", "2026-01-01T00:00:00"),
            "2026-01-30T00:00:00.000Z"
        );
        assert_eq!(
            next("0 0 * * 1#2", "2026-01-01T00:00:00"),
            "2026-01-12T00:00:00.000Z"
        );
        // Both day fields restricted: either matches (the 15th, or a Monday).
        assert_eq!(
            next("0 0 15 * 1", "2026-01-01T00:00:00"),
            "2026-01-05T00:00:00.000Z"
        );
        assert_eq!(
            next("@hourly", "2026-01-01T00:59:59"),
            "2026-01-01T01:00:00.000Z"
        );
        // Leap day: eight years apart across 2100.
        assert_eq!(
            next("0 0 29 2 *", "2096-03-01T00:00:00"),
            "2104-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn refusals_are_typed() {
        assert_eq!(parse(""), Err(CronError::Empty));
        assert_eq!(parse("   "), Err(CronError::Empty));
        assert_eq!(parse("* * * *"), Err(CronError::FieldCount(4)));
        assert_eq!(parse("* * * * * * *"), Err(CronError::FieldCount(7)));
        assert!(matches!(
            parse("60 * * * *"),
            Err(CronError::OutOfRange { .. })
        ));
        assert!(matches!(
            parse("* * * * 8"),
            Err(CronError::OutOfRange { .. })
        ));
        assert!(matches!(
            parse("5-1 * * * *"),
            Err(CronError::InvalidRange { .. })
        ));
        assert!(matches!(
            parse("*/0 * * * *"),
            Err(CronError::InvalidStep { .. })
        ));
        assert!(matches!(
            parse("* * * foo *"),
            Err(CronError::UnknownAlias(_))
        ));
        assert!(matches!(
            parse("* * * * monday"),
            Err(CronError::UnknownAlias(_))
        ));
        assert!(matches!(
            parse("1,,2 * * * *"),
            Err(CronError::EmptyListItem { .. })
        ));
        assert!(matches!(
            parse("* * * * 1#6"),
            Err(CronError::InvalidNth(_))
        ));
        assert!(matches!(
            parse("1,1 * * * *"),
            Err(CronError::Duplicate { .. })
        ));
        assert!(
            parse("0 0 * * 0,7").is_ok(),
            "a repeated 0 passes, as in cron-parser"
        );
        assert!(matches!(parse("0 0 * * L"), Err(CronError::LastWeekday(_))));
        assert!(parse("0 0 L 2 *").is_ok());
        assert_eq!(parse("* * * * 1,2#2"), Err(CronError::NthWith(',')));
        assert_eq!(
            parse(&"1,".repeat(600)),
            Err(CronError::TooLong),
            "the length bound applies before splitting"
        );
    }

    /// Goal: a pattern that parses but can never fire is refused with a typed error, and the
    /// search stops at the horizon instead of looping.
    #[test]
    fn no_fire_within_the_horizon_is_an_error_not_a_loop() {
        // With one month, cron-parser checks the first day even when a weekday could match.
        assert_eq!(
            next_fire("0 0 30 2 1", at("2026-01-01T00:00:00")),
            Err(CronError::ImpossibleDate)
        );
        // The fifth Monday of February exists only when 29 February is a Monday.
        assert_eq!(
            crate::clock::iso_from_ms(next_fire("0 0 * 2 1#5", at("2026-01-01T00:00:00")).unwrap()),
            "2044-02-29T00:00:00.000Z"
        );
        assert_eq!(
            crate::clock::iso_from_ms(next_fire("0 0 * 2 1#5", at("2073-01-01T00:00:00")).unwrap()),
            "2112-02-29T00:00:00.000Z"
        );
        let schedule = parse("0 0 * * * *").unwrap();
        assert_eq!(schedule.next_after(-1), None);
        assert_eq!(schedule.next_after(EPOCH_MS_MAX + 1), None);
        assert_eq!(
            schedule.require_next_after(EPOCH_MS_MAX + 1),
            Err(CronError::NoFireWithinHorizon)
        );
    }

    /// Goal: nothing panics or runs away on arbitrary input. Method: a seeded generator over the
    /// cron alphabet (so most inputs get deep into the parser), plus raw bytes, through the same
    /// property check as the fuzz target.
    #[test]
    fn random_strings_never_panic() {
        const ALPHABET: &[u8] = b"0123456789*/-,?L#W @ abcdefjmnorstuwyADFJMNOSTW\t\xff";
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut random = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let length = (random() % 40) as usize;
            let bytes: Vec<u8> = (0..length)
                .map(|_| ALPHABET[(random() % ALPHABET.len() as u64) as usize])
                .collect();
            check_fuzz_properties(&bytes);
            let raw: Vec<u8> = (0..length).map(|_| random() as u8).collect();
            check_fuzz_properties(&raw);
        }
    }
}

#[cfg(test)]
mod fuzz_seeds {
    /// Replays every committed seed of the `cron_expr` fuzz target through the same properties.
    #[test]
    fn fuzz_seeds_cron() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz/seeds/cron_expr");
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{dir}: {e}"));
        let mut replayed = 0;
        for entry in entries {
            let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            super::check_fuzz_properties(&bytes);
            replayed += 1;
        }
        assert!(replayed >= 10, "only {replayed} seeds");
    }
}
