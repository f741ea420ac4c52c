//! The report: medians over runs per server and phase, the gateway's advantage over the baseline
//! measured in the same invocation, the project's targets (reported, never asserted), the machine
//! setup, a table for people and JSON for tools, and `--save` under loadtest/runs/DATE-MACHINE/.

use crate::scenarios::{Outcome, Settings};
use crate::server::Kind;
use crate::stats::median;
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Which way is better for a figure.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Better {
    Higher,
    Lower,
    /// Context, not a score (counts, settings, seconds).
    Neither,
}

fn better(metric: &str) -> Better {
    if metric.ends_with("_per_s") && !metric.starts_with("frames_per_subscriber") {
        return Better::Higher;
    }
    if metric.ends_with("_ms")
        || metric.starts_with("server_cpu_ns_per_")
        || metric.ends_with("_per_conn_bytes")
        || metric == "server_rss_bytes"
        || metric == "server_rss_anon_bytes"
        || metric == "fast_p99_change_pct"
    {
        return Better::Lower;
    }
    Better::Neither
}

/// One scenario run against one server.
#[derive(Clone, Debug, Serialize)]
pub struct RunRecord {
    pub server: Kind,
    pub run: usize,
    pub outcome: Option<Outcome>,
    pub error: Option<String>,
}

/// A target from the issue, with what this invocation measured.
#[derive(Clone, Debug, Serialize)]
pub struct TargetLine {
    pub target: String,
    pub phase: String,
    pub metric: String,
    pub measured: Option<f64>,
    /// "met", "not met", or why it does not apply to these settings.
    pub status: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Setup {
    pub date_utc: String,
    pub machine: String,
    pub kernel: String,
    pub cpu: String,
    pub cpus: usize,
    pub memory_bytes: u64,
    pub commit: String,
    pub loadtest_version: String,
    pub command: String,
    pub nofile_limit: u64,
    pub pinning: String,
    /// /proc/loadavg when the invocation started: other work on a shared machine shows here.
    pub load_average: String,
}

type Medians = BTreeMap<String, BTreeMap<String, BTreeMap<String, f64>>>;

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub scenario: String,
    pub setup: Setup,
    pub settings: Settings,
    /// Phase names in the order they ran.
    pub phases: Vec<String>,
    pub runs: Vec<RunRecord>,
    /// server → phase → metric → median over the successful runs.
    pub medians: Medians,
    /// phase → metric → how many times better the gateway is than the baseline (> 1: better),
    /// for figures where higher or lower is better.
    pub advantage: BTreeMap<String, BTreeMap<String, f64>>,
    pub targets: Vec<TargetLine>,
    pub notes: Vec<String>,
    pub failures: Vec<String>,
}

impl Report {
    pub fn build(setup: Setup, settings: Settings, runs: Vec<RunRecord>) -> Report {
        let mut phases: Vec<String> = Vec::new();
        let mut values: BTreeMap<String, BTreeMap<String, BTreeMap<String, Vec<f64>>>> =
            BTreeMap::new();
        let mut notes = Vec::new();
        let mut failures = Vec::new();
        for run in &runs {
            let server = run.server.name().to_string();
            if let Some(error) = &run.error {
                failures.push(format!("{server} run {}: {error}", run.run + 1));
            }
            let Some(outcome) = &run.outcome else {
                continue;
            };
            for note in &outcome.notes {
                let note = format!("{server}: {note}");
                if !notes.contains(&note) {
                    notes.push(note);
                }
            }
            for failure in &outcome.failures {
                failures.push(format!("{server} run {}: {failure}", run.run + 1));
            }
            for phase in &outcome.phases {
                if !phases.contains(&phase.name) {
                    phases.push(phase.name.clone());
                }
                let slot = values
                    .entry(server.clone())
                    .or_default()
                    .entry(phase.name.clone())
                    .or_default();
                for (metric, value) in &phase.metrics {
                    slot.entry(metric.clone()).or_default().push(*value);
                }
            }
        }
        let medians: Medians = values
            .into_iter()
            .map(|(server, by_phase)| {
                let by_phase = by_phase
                    .into_iter()
                    .map(|(phase, by_metric)| {
                        let by_metric = by_metric
                            .into_iter()
                            .filter_map(|(metric, v)| median(&v).map(|m| (metric, m)))
                            .collect();
                        (phase, by_metric)
                    })
                    .collect();
                (server, by_phase)
            })
            .collect();
        let mut advantage: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
        if let (Some(gateway), Some(baseline)) = (medians.get("gateway"), medians.get("baseline")) {
            for (phase, metrics) in gateway {
                let Some(theirs) = baseline.get(phase) else {
                    continue;
                };
                for (metric, ours) in metrics {
                    let Some(theirs) = theirs.get(metric) else {
                        continue;
                    };
                    let ratio = match better(metric) {
                        Better::Higher if *theirs > 0.0 => ours / theirs,
                        Better::Lower if *ours > 0.0 => theirs / ours,
                        _ => continue,
                    };
                    if ratio.is_finite() {
                        advantage
                            .entry(phase.clone())
                            .or_default()
                            .insert(metric.clone(), ratio);
                    }
                }
            }
        }
        let mut report = Report {
            scenario: settings.scenario.name().to_string(),
            setup,
            settings,
            phases,
            runs,
            medians,
            advantage,
            targets: Vec::new(),
            notes,
            failures,
        };
        report.targets = report.evaluate_targets();
        report
    }

    fn gateway(&self, phase: &str, metric: &str) -> Option<f64> {
        self.medians
            .get("gateway")?
            .get(phase)?
            .get(metric)
            .copied()
    }

    /// The issue's targets that belong to this scenario, evaluated on the gateway's medians.
    fn evaluate_targets(&self) -> Vec<TargetLine> {
        let subscribers = self.settings.subscribers;
        let mut lines = Vec::new();
        let mut add = |target: &str,
                       phase: &str,
                       metric: &str,
                       needs: Option<usize>,
                       measured: Option<f64>,
                       ok: &dyn Fn(f64) -> bool| {
            let status = match (needs, measured) {
                (Some(needs), _) if needs != subscribers => {
                    format!("not applicable: needs {needs} subscribers, ran {subscribers}")
                }
                (_, None) => "not measured in this run".to_string(),
                (_, Some(value)) if ok(value) => "met".to_string(),
                (_, Some(_)) => "not met".to_string(),
            };
            lines.push(TargetLine {
                target: target.to_string(),
                phase: phase.to_string(),
                metric: metric.to_string(),
                measured,
                status,
            });
        };
        match self.scenario.as_str() {
            "idle" => {
                let phase = self.phases.first().cloned().unwrap_or_default();
                let measured = self.gateway(&phase, "rss_anon_per_conn_bytes");
                add(
                    "idle: ≤ 1 KiB user-space memory per connection",
                    &phase,
                    "rss_anon_per_conn_bytes",
                    None,
                    measured,
                    &|v| v <= 1024.0,
                );
            }
            "fanout" => {
                let p1 = "inflight=1";
                let p32 = "inflight=32";
                let p4 = "inflight=4";
                let adv = |phase: &str| {
                    self.advantage
                        .get(phase)
                        .and_then(|m| m.get("deliveries_per_s"))
                        .copied()
                };
                add(
                    "fanout 1,000 subscribers, single events: ≥ 190k deliveries/s",
                    p1,
                    "deliveries_per_s",
                    Some(1_000),
                    self.gateway(p1, "deliveries_per_s"),
                    &|v| v >= 190_000.0,
                );
                add(
                    "fanout 1,000 subscribers, single events: ≤ 5.2 µs server CPU per delivery",
                    p1,
                    "server_cpu_ns_per_delivery",
                    Some(1_000),
                    self.gateway(p1, "server_cpu_ns_per_delivery"),
                    &|v| v <= 5_200.0,
                );
                add(
                    "fanout 1,000 subscribers, single events: ≥ 1.35× the baseline",
                    p1,
                    "advantage deliveries_per_s",
                    Some(1_000),
                    adv(p1),
                    &|v| v >= 1.35,
                );
                add(
                    "fanout 1,000 subscribers, bursts of 32: ≥ 2M deliveries/s",
                    p32,
                    "deliveries_per_s",
                    Some(1_000),
                    self.gateway(p32, "deliveries_per_s"),
                    &|v| v >= 2_000_000.0,
                );
                add(
                    "fanout 1,000 subscribers, bursts of 32: ≥ 12× the baseline",
                    p32,
                    "advantage deliveries_per_s",
                    Some(1_000),
                    adv(p32),
                    &|v| v >= 12.0,
                );
                add(
                    "fanout 10,000 subscribers, single events: p99 broadcast completion ≤ 90 ms",
                    p1,
                    "completion_p99_ms",
                    Some(10_000),
                    self.gateway(p1, "completion_p99_ms"),
                    &|v| v <= 90.0,
                );
                add(
                    "fanout 10,000 subscribers, 4 in flight: p99 broadcast completion ≤ 130 ms",
                    p4,
                    "completion_p99_ms",
                    Some(10_000),
                    self.gateway(p4, "completion_p99_ms"),
                    &|v| v <= 130.0,
                );
            }
            "backpressure" if self.settings.bound == crate::scenarios::Bound::Stream => {
                let budget = self.gateway("stall", "cut_budget_ms");
                let cut = self.gateway("stall", "cut_after_ms");
                add(
                    &format!(
                        "slow consumer cut within (1000+600)/R + 20 ms{}",
                        budget
                            .map(|b| format!(" = {b:.0} ms here"))
                            .unwrap_or_default()
                    ),
                    "stall",
                    "cut_after_ms",
                    None,
                    cut,
                    &|v| budget.is_some_and(|b| v <= b),
                );
                add(
                    "fast subscribers' p99 within 5% of the run without a stall",
                    "stall",
                    "fast_p99_change_pct",
                    None,
                    self.gateway("stall", "fast_p99_change_pct"),
                    &|v| v <= 5.0,
                );
            }
            "rpc" => {
                add(
                    "POST /rpc health keep-alive: ≥ 130k requests/s",
                    "post-rpc",
                    "requests_per_s",
                    None,
                    self.gateway("post-rpc", "requests_per_s"),
                    &|v| v >= 130_000.0,
                );
                add(
                    "POST /rpc health keep-alive: p99 ≤ 1 ms",
                    "post-rpc",
                    "request_p99_ms",
                    None,
                    self.gateway("post-rpc", "request_p99_ms"),
                    &|v| v <= 1.0,
                );
                add(
                    "WebSocket requests, depth 1: ≥ 150k/s",
                    "ws-depth=1",
                    "requests_per_s",
                    None,
                    self.gateway("ws-depth=1", "requests_per_s"),
                    &|v| v >= 150_000.0,
                );
                add(
                    "WebSocket requests, depth 8: ≥ 900k/s",
                    "ws-depth=8",
                    "requests_per_s",
                    None,
                    self.gateway("ws-depth=8", "requests_per_s"),
                    &|v| v >= 900_000.0,
                );
            }
            _ => {}
        }
        lines
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The table: per phase, each figure's median for the gateway and the baseline and the
    /// gateway's advantage; then targets, notes and failures.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let runs_ok = |server: &str| {
            self.runs
                .iter()
                .filter(|r| r.server.name() == server && r.outcome.is_some())
                .count()
        };
        let _ = writeln!(
            out,
            "loadtest {} — medians of {} gateway run(s) and {} baseline run(s), {} on {} ({} CPUs, {}; load average at start {})",
            self.scenario,
            runs_ok("gateway"),
            runs_ok("baseline"),
            self.setup.date_utc,
            self.setup.machine,
            self.setup.cpus,
            self.setup.pinning,
            self.setup.load_average.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        );
        let empty = BTreeMap::new();
        for phase in &self.phases {
            let gateway = self
                .medians
                .get("gateway")
                .and_then(|m| m.get(phase))
                .unwrap_or(&empty);
            let baseline = self
                .medians
                .get("baseline")
                .and_then(|m| m.get(phase))
                .unwrap_or(&empty);
            let advantage = self.advantage.get(phase);
            let _ = writeln!(out, "\n[{phase}]");
            let _ = writeln!(
                out,
                "  {:<38} {:>16} {:>16} {:>12}",
                "figure", "gateway", "baseline", "advantage"
            );
            let mut metrics: Vec<&String> = gateway.keys().chain(baseline.keys()).collect();
            metrics.sort_by_key(|m| (order(m), (*m).clone()));
            metrics.dedup();
            for metric in metrics {
                let show =
                    |v: Option<&f64>| v.map_or("-".to_string(), |v| format_value(metric, *v));
                let edge = advantage
                    .and_then(|a| a.get(metric))
                    .map_or(String::new(), |v| format!("{v:.2}×"));
                let _ = writeln!(
                    out,
                    "  {:<38} {:>16} {:>16} {:>12}",
                    metric,
                    show(gateway.get(metric)),
                    show(baseline.get(metric)),
                    edge
                );
            }
        }
        if !self.targets.is_empty() {
            let _ = writeln!(out, "\ntargets (reported, not asserted):");
            for target in &self.targets {
                let measured = target
                    .measured
                    .map_or("-".to_string(), |v| format_value(&target.metric, v));
                let _ = writeln!(
                    out,
                    "  {:<86} {:>14}  {}",
                    target.target, measured, target.status
                );
            }
        }
        if !self.notes.is_empty() {
            let _ = writeln!(out, "\nnotes:");
            for note in &self.notes {
                let _ = writeln!(out, "  - {note}");
            }
        }
        if !self.failures.is_empty() {
            let _ = writeln!(out, "\nFAILURES:");
            for failure in &self.failures {
                let _ = writeln!(out, "  - {failure}");
            }
        }
        out
    }

    /// Writes the report under `runs_dir/DATE-MACHINE/`: SETUP.md (the machine, once per
    /// directory), and HHMMSS-SCENARIO.json / .md for this invocation. Returns the JSON's path.
    pub fn save(&self, runs_dir: &Path) -> Result<PathBuf> {
        let day = self.setup.date_utc.get(..10).unwrap_or("unknown-date");
        let time: String = self
            .setup
            .date_utc
            .get(11..19)
            .unwrap_or("000000")
            .chars()
            .filter(|c| c.is_ascii_digit())
            .collect();
        let dir = runs_dir.join(format!("{day}-{}", self.setup.machine));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let setup_path = dir.join("SETUP.md");
        if !setup_path.exists() {
            let s = &self.setup;
            let text = format!(
                "# Setup\n\n- machine: {}\n- kernel: {}\n- CPU: {} ({} CPUs)\n- memory: {} GiB\n- open-file limit: {}\n- pinning: {}\n- first commit measured here: {}\n\nEach `HHMMSS-SCENARIO.json` holds the full report (settings, every run, medians, targets) with its own commit and command; the `.md` beside it is the table.\n",
                s.machine, s.kernel, s.cpu, s.cpus, s.memory_bytes / (1 << 30), s.nofile_limit, s.pinning, s.commit
            );
            std::fs::write(&setup_path, text)?;
        }
        let stem = format!("{time}-{}", self.scenario);
        let json_path = dir.join(format!("{stem}.json"));
        std::fs::write(&json_path, self.json())?;
        std::fs::write(
            dir.join(format!("{stem}.md")),
            format!("```\n$ {}\n\n{}```\n", self.setup.command, self.table()),
        )?;
        Ok(json_path)
    }
}

/// Throughput first, then CPU, latency, memory, the rest.
fn order(metric: &str) -> u8 {
    if metric.ends_with("_per_s") {
        0
    } else if metric.starts_with("server_cpu") || metric.starts_with("client_") {
        1
    } else if metric.ends_with("_ms") {
        2
    } else if metric.contains("bytes") {
        3
    } else {
        4
    }
}

fn thousands(value: f64) -> String {
    let rounded = value.round();
    if !rounded.is_finite() || rounded.abs() >= 1e18 {
        return format!("{value}");
    }
    let digits = format!("{}", rounded.abs() as u64);
    let mut out = String::new();
    for (index, ch) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    if rounded < 0.0 {
        out.insert(0, '-');
    }
    out
}

pub fn format_value(metric: &str, value: f64) -> String {
    if metric.ends_with("_ms") {
        return format!("{value:.3} ms");
    }
    if metric.ends_with("_pct") {
        return format!("{value:.1}%");
    }
    if metric.starts_with("server_cpu_ns_per_") {
        return format!("{} ns", thousands(value));
    }
    if metric.contains("bytes") {
        if value >= 10.0 * 1024.0 * 1024.0 {
            return format!("{:.1} MiB", value / 1024.0 / 1024.0);
        }
        return format!("{} B", thousands(value));
    }
    if metric.starts_with("advantage") {
        return format!("{value:.2}×");
    }
    if metric == "seconds" || metric.ends_with("_seconds") {
        return format!("{value:.2} s");
    }
    if value.fract() != 0.0 && value.abs() < 100.0 {
        return format!("{value:.2}");
    }
    thousands(value)
}

/// The machine and the command, for the report and SETUP.md.
pub fn setup(pinning: String, nofile_limit: u64) -> Setup {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map(|(_, name)| name.trim().to_string())
        .unwrap_or_default();
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let memory_bytes = read("/proc/meminfo")
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024);
    let commit = std::process::Command::new("git")
        .args(["describe", "--always", "--dirty", "--abbrev=12"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let machine = read("/proc/sys/kernel/hostname")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect::<String>();
    Setup {
        date_utc: utc_now(),
        machine: if machine.is_empty() {
            "unknown".into()
        } else {
            machine
        },
        kernel: read("/proc/sys/kernel/osrelease"),
        cpu,
        cpus,
        memory_bytes,
        commit,
        loadtest_version: env!("CARGO_PKG_VERSION").to_string(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        nofile_limit,
        pinning,
        load_average: read("/proc/loadavg"),
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` from the system clock (civil-from-days, H. Hinnant's algorithm).
fn utc_now() -> String {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let days = seconds.div_euclid(86_400);
    let of_day = seconds.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        of_day / 3_600,
        of_day % 3_600 / 60,
        of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_readable() {
        assert_eq!(thousands(1_234_567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(format_value("delivery_p99_ms", 1.23456), "1.235 ms");
        assert_eq!(
            format_value("server_cpu_ns_per_delivery", 5_210.2),
            "5,210 ns"
        );
        assert_eq!(format_value("rss_anon_per_conn_bytes", 980.0), "980 B");
    }

    #[test]
    fn directions() {
        assert!(better("deliveries_per_s") == Better::Higher);
        assert!(better("completion_p99_ms") == Better::Lower);
        assert!(better("server_cpu_ns_per_delivery") == Better::Lower);
        assert!(better("incomplete") == Better::Neither);
    }

    #[test]
    fn the_date_is_iso_8601() {
        let date = utc_now();
        assert_eq!(date.len(), 20);
        assert!(date.starts_with("20"));
        assert!(date.ends_with('Z'));
    }
}
