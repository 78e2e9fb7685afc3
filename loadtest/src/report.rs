//! Figures: latency samples and their percentiles, errors by code, and the pieces of the
//! table every report prints.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// Latency samples, in microseconds (exact: sorted when summarised).
#[derive(Clone, Debug, Default)]
pub struct Samples(Vec<u32>);

impl Samples {
    /// Records one duration.
    pub fn record(&mut self, d: Duration) {
        self.record_micros(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    /// Records one duration given in microseconds.
    pub fn record_micros(&mut self, micros: u64) {
        self.0.push(u32::try_from(micros).unwrap_or(u32::MAX));
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: Samples) {
        self.0.extend(other.0);
    }

    /// How many samples there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Count, percentiles (nearest rank), mean and max.
    pub fn summary(&self) -> Summary {
        let mut v = self.0.clone();
        v.sort_unstable();
        let ms = |us: u32| f64::from(us) / 1000.0;
        let at = |p: f64| v.get(((p * v.len() as f64).ceil() as usize).saturating_sub(1)).copied().map_or(0.0, ms);
        let sum: u64 = v.iter().map(|&x| u64::from(x)).sum();
        Summary {
            count: v.len(),
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
            max_ms: v.last().copied().map_or(0.0, ms),
            mean_ms: if v.is_empty() { 0.0 } else { sum as f64 / v.len() as f64 / 1000.0 },
        }
    }
}

/// A latency distribution, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Number of samples.
    pub count: usize,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

/// Errors by code: `error` frames' codes (`busy`, `limit_exceeded`, …), close codes
/// (`close_4429`), refused upgrades and REST calls (`http_403_limit_exceeded`), replies that
/// ended badly (`done_error_upstream_error`), `timeout`, `io`, ….
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Errors(pub BTreeMap<String, u64>);

impl Errors {
    /// Counts one error.
    pub fn add(&mut self, key: impl Into<String>) {
        *self.0.entry(key.into()).or_default() += 1;
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: Errors) {
        for (k, n) in other.0 {
            *self.0.entry(k).or_default() += n;
        }
    }

    /// All errors together.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

impl fmt::Display for Errors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let parts: Vec<String> = self.0.iter().map(|(k, n)| format!("{k} {n}")).collect();
        f.write_str(&parts.join(", "))
    }
}

/// Writes the latency table: one row per distribution.
pub(crate) fn latency_rows(f: &mut fmt::Formatter<'_>, rows: &[(&str, &Summary)]) -> fmt::Result {
    writeln!(f, "  {:<26} {:>9} {:>9} {:>9} {:>9} {:>9}", "latency (ms)", "count", "p50", "p90", "p99", "max")?;
    for (name, s) in rows {
        if s.count == 0 {
            writeln!(f, "  {name:<26} {:>9} {:>9}", 0, "-")?;
        } else {
            writeln!(
                f,
                "  {name:<26} {:>9} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                s.count, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms
            )?;
        }
    }
    Ok(())
}

/// Writes one `name: value` line.
pub(crate) fn line(f: &mut fmt::Formatter<'_>, name: &str, value: impl fmt::Display) -> fmt::Result {
    writeln!(f, "  {:<26} {value}", format!("{name}:"))
}

/// `a / b`, or zero when `b` is zero.
pub(crate) fn rate(a: u64, secs: f64) -> f64 {
    if secs > 0.0 { a as f64 / secs } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut s = Samples::default();
        for ms in 1..=100u64 {
            s.record(Duration::from_millis(ms));
        }
        let sum = s.summary();
        assert_eq!((sum.count, sum.p50_ms, sum.p90_ms, sum.p99_ms, sum.max_ms), (100, 50.0, 90.0, 99.0, 100.0));
        assert_eq!(sum.mean_ms, 50.5);
        assert_eq!(Samples::default().summary(), Summary::default());
    }

    #[test]
    fn errors_count_and_merge() {
        let mut e = Errors::default();
        e.add("busy");
        let mut other = Errors::default();
        other.add("busy");
        other.add("close_4429");
        e.merge(other);
        assert_eq!(e.total(), 3);
        assert_eq!(e.to_string(), "busy 2, close_4429 1");
    }
}
