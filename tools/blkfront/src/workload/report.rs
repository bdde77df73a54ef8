//! Results of a workload run.

use std::time::Duration;

/// Latency samples in nanoseconds.
#[derive(Debug, Default)]
pub struct Latencies {
    samples: Vec<u64>,
}

impl Latencies {
    /// Records one sample.
    pub fn record(&mut self, d: Duration) {
        self.samples
            .push(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Percentiles p50, p99, p99.9 and max, in microseconds.
    pub fn summary(&mut self) -> LatencySummary {
        self.samples.sort_unstable();
        let pick = |q: f64| {
            if self.samples.is_empty() {
                return 0.0;
            }
            let last = self.samples.len() - 1;
            // Nearest rank: q in [0, 1], so the product is within 0..=last.
            let rank = (last as f64 * q).round();
            let i = (0..=last).find(|i| *i as f64 >= rank).unwrap_or(last);
            self.samples[i] as f64 / 1000.0
        };
        LatencySummary {
            p50_us: pick(0.5),
            p99_us: pick(0.99),
            p999_us: pick(0.999),
            max_us: pick(1.0),
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LatencySummary {
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Slowest.
    pub max_us: f64,
}

/// Everything a run measured.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    /// Completed reads.
    pub reads: u64,
    /// Completed writes.
    pub writes: u64,
    /// Completed flushes.
    pub flushes: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Requests answered with an error.
    pub errors: u64,
    /// Reads whose data did not match what was written (verify mode).
    pub mismatches: u64,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Requests per second.
    pub iops: f64,
    /// Bytes per second (read plus written).
    pub bandwidth: f64,
    /// Request latency.
    pub latency: LatencySummary,
}

impl Report {
    /// Fills the derived rates from the counters and `elapsed`.
    pub fn finish(&mut self, elapsed: Duration, lat: &mut Latencies) {
        self.seconds = elapsed.as_secs_f64();
        let secs = self.seconds.max(1e-9);
        self.iops = (self.reads + self.writes + self.flushes) as f64 / secs;
        self.bandwidth = (self.bytes_read + self.bytes_written) as f64 / secs;
        self.latency = lat.summary();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_right_samples() {
        let mut l = Latencies::default();
        for us in 1..=1000u64 {
            l.record(Duration::from_micros(us));
        }
        let s = l.summary();
        assert!((s.p50_us - 500.0).abs() <= 1.0, "{s:?}");
        assert!((s.p99_us - 990.0).abs() <= 1.0, "{s:?}");
        assert_eq!(s.max_us, 1000.0);
    }
}
