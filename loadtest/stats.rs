//! Measurement helpers: a fixed-size latency histogram (no per-sample storage, so a run of
//! millions of deliveries costs the same memory as one of ten), medians over runs, and CPU/memory
//! snapshots of the server process and of this one.

use crate::sys;

/// Sub-buckets per power of two: values are kept within 1/64 (about 1.6%) of their true value.
const SUB_BUCKET_BITS: u32 = 6;
const SUB_BUCKETS: usize = 1 << SUB_BUCKET_BITS;
/// Powers of two covered: up to 2^44 ns (about 4.9 hours); larger values land in the last bucket.
const MAGNITUDES: usize = 45;

/// A log-linear histogram of nanosecond values.
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; (MAGNITUDES + 1) * SUB_BUCKETS],
            total: 0,
            max: 0,
        }
    }
}

impl Histogram {
    fn index(value: u64) -> usize {
        if value < SUB_BUCKETS as u64 {
            return value as usize;
        }
        let magnitude = 63 - value.leading_zeros();
        let shift = magnitude - SUB_BUCKET_BITS;
        let index = (shift as usize + 1) * SUB_BUCKETS + ((value >> shift) as usize - SUB_BUCKETS);
        index.min((MAGNITUDES + 1) * SUB_BUCKETS - 1)
    }

    /// The smallest value that falls into bucket `index` (a lower bound of its values).
    fn value_of(index: usize) -> u64 {
        if index < SUB_BUCKETS {
            return index as u64;
        }
        let shift = (index / SUB_BUCKETS - 1) as u32;
        let mantissa = (index % SUB_BUCKETS + SUB_BUCKETS) as u64;
        mantissa << shift
    }

    pub fn record(&mut self, value: u64) {
        if let Some(count) = self.counts.get_mut(Self::index(value)) {
            *count += 1;
        }
        self.total += 1;
        self.max = self.max.max(value);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0..=1): the bucket's midpoint, capped at the true maximum.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let low = Self::value_of(index);
                let high = Self::value_of(index + 1);
                return ((low + high) / 2).min(self.max);
            }
        }
        self.max
    }
}

/// The median of the finite values (mean of the middle two for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(|a, b| a.total_cmp(b));
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted.get(mid).copied()
    } else {
        Some((sorted.get(mid - 1)? + sorted.get(mid)?) / 2.0)
    }
}

/// CPU and memory of the server and of the client at one instant.
#[derive(Clone, Copy, Debug)]
pub struct Snapshot {
    pub at_ns: u64,
    pub server_cpu_ns: u64,
    pub client_cpu_ns: u64,
    pub server_rss: u64,
    pub server_rss_anon: u64,
    /// (busy, total, softirq) ticks of the server's CPU when it is pinned.
    pub server_core: Option<(u64, u64, u64)>,
}

impl Snapshot {
    /// Reads /proc for `server_pid`; a vanished server reads as zeros and is reported elsewhere.
    pub fn take(server_pid: u32, server_cpu: Option<usize>) -> Snapshot {
        let (server_rss, server_rss_anon) = sys::process_memory(server_pid).unwrap_or((0, 0));
        Snapshot {
            at_ns: sys::now_ns(),
            server_cpu_ns: sys::process_cpu_ns(server_pid).unwrap_or(0),
            client_cpu_ns: sys::self_cpu_ns(),
            server_rss,
            server_rss_anon,
            server_core: server_cpu.and_then(sys::cpu_ticks),
        }
    }
}

/// What happened between two snapshots.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub seconds: f64,
    pub server_cpu_ns: u64,
    pub client_cpu_ns: u64,
    pub end: Snapshot,
    /// Busy and softirq share of the server's CPU, in percent (pinned servers only).
    pub server_core_busy_pct: Option<f64>,
    pub server_core_softirq_pct: Option<f64>,
}

impl Window {
    pub fn between(start: &Snapshot, end: &Snapshot) -> Window {
        Window {
            seconds: end.at_ns.saturating_sub(start.at_ns) as f64 / 1e9,
            server_cpu_ns: end.server_cpu_ns.saturating_sub(start.server_cpu_ns),
            client_cpu_ns: end.client_cpu_ns.saturating_sub(start.client_cpu_ns),
            end: *end,
            server_core_busy_pct: core_share(start, end, |(busy, _, _)| busy),
            server_core_softirq_pct: core_share(start, end, |(_, _, softirq)| softirq),
        }
    }

    pub fn server_cpu_percent(&self) -> f64 {
        percent(self.server_cpu_ns, self.seconds)
    }

    pub fn client_cpu_percent(&self) -> f64 {
        percent(self.client_cpu_ns, self.seconds)
    }
}

fn core_share(start: &Snapshot, end: &Snapshot, part: fn((u64, u64, u64)) -> u64) -> Option<f64> {
    let (a, b) = (start.server_core?, end.server_core?);
    let total = b.1.checked_sub(a.1).filter(|t| *t > 0)?;
    Some(part(b).saturating_sub(part(a)) as f64 / total as f64 * 100.0)
}

fn percent(cpu_ns: u64, seconds: f64) -> f64 {
    if seconds <= 0.0 {
        return 0.0;
    }
    cpu_ns as f64 / 1e9 / seconds * 100.0
}

pub fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_two_percent() {
        let mut histogram = Histogram::default();
        for value in 1..=100_000u64 {
            histogram.record(value * 1_000);
        }
        for (q, expected) in [
            (0.5, 50_000_000.0),
            (0.99, 99_000_000.0),
            (1.0, 100_000_000.0),
        ] {
            let got = histogram.quantile(q) as f64;
            assert!(
                (got - expected).abs() / expected < 0.02,
                "q{q}: {got} vs {expected}"
            );
        }
        assert_eq!(histogram.max(), 100_000_000);
        assert_eq!(histogram.count(), 100_000);
    }

    #[test]
    fn small_and_huge_values_have_buckets() {
        let mut histogram = Histogram::default();
        histogram.record(0);
        histogram.record(63);
        histogram.record(u64::MAX);
        assert_eq!(histogram.count(), 3);
        assert_eq!(histogram.quantile(0.0), 0);
        assert_eq!(histogram.max(), u64::MAX);
        for value in [64u64, 65, 1000, 123_456_789] {
            let low = Histogram::value_of(Histogram::index(value));
            let high = Histogram::value_of(Histogram::index(value) + 1);
            assert!(low <= value && value < high, "{value}: {low}..{high}");
        }
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN]), None);
        assert_eq!(median(&[]), None);
    }
}
