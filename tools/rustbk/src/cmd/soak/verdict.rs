//! Whether resource usage stayed flat: every series, after a warm-up and a reference window,
//! must stay within a stated allowance of its maximum in the reference window.

use std::time::Duration;

use serde::Serialize;

use super::sample::{Sample, Usage};

/// The windows and allowances of the check.
#[derive(Clone, Debug, Serialize)]
pub struct Bounds {
    /// Samples before this are warm-up, not checked.
    pub warmup_s: f64,
    /// Samples from `warmup_s` to this form the reference window.
    pub reference_end_s: f64,
    /// How far above its reference maximum the daemon may go.
    pub daemon: Usage,
    /// How far above its reference maximum the sum over the workers may go (fixed part).
    pub workers: Usage,
    /// Share of the workers' reference RSS added to `workers.rss_kib`, in percent.
    pub workers_rss_percent: u64,
    /// Guest pages the workers may map at most at any time (persistent grants and rings of
    /// every disk that can be attached at once): a ceiling, not a growth. It is also the limit
    /// of the workers' grant pages after the reference window, whose caches refill with load.
    pub grant_ceiling: u64,
}

impl Bounds {
    /// The windows for a run of `duration`: a minute of warm-up and a minute of reference,
    /// shortened to a quarter of the run each for short runs (half the run is checked).
    pub fn windows(duration: Duration) -> (f64, f64) {
        let quarter = (duration.as_secs_f64() / 4.0).min(60.0);
        (quarter, 2.0 * quarter)
    }
}

/// The result of one series.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// Which series, e.g. `workers fds`.
    pub series: String,
    /// Maximum in the reference window.
    pub reference: u64,
    /// Maximum after the reference window.
    pub max_after: u64,
    /// The largest value allowed after the reference window.
    pub limit: u64,
    /// Whether `max_after <= limit` (false if either window had no sample).
    pub ok: bool,
}

/// Checks every series of `samples` against `bounds`.
pub fn check(samples: &[Sample], b: &Bounds) -> Vec<Check> {
    let reference: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.t >= b.warmup_s && s.t < b.reference_end_s)
        .collect();
    let after: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.t >= b.reference_end_s)
        .collect();
    let mut out = Vec::new();
    for i in 0..Usage::SERIES {
        let get = |u: &Usage| u.series()[i].1;
        let name = b.daemon.series()[i].0;
        let d = series(&reference, &after, |s| get(&s.daemon));
        out.push(d.check(format!("daemon {name}"), get(&b.daemon)));
        let w = series(&reference, &after, |s| get(&s.workers));
        let mut allow = get(&b.workers);
        if name == "rss_kib" {
            allow += w.0.unwrap_or(0) * b.workers_rss_percent / 100;
        }
        if name == "grant_pages" {
            // Held to the exact ceiling instead (see `Bounds::grant_ceiling`).
            allow = b.grant_ceiling.saturating_sub(w.0.unwrap_or(0));
        }
        out.push(w.check(format!("workers {name}"), allow));
    }
    let peak = samples
        .iter()
        .map(|s| s.workers.grant_pages)
        .max()
        .unwrap_or(0);
    out.push(Check {
        series: "workers grant_pages (any time)".into(),
        reference: 0,
        max_after: peak,
        limit: b.grant_ceiling,
        ok: peak <= b.grant_ceiling,
    });
    out
}

/// The maxima of one series in the reference window and after it.
struct Series(Option<u64>, Option<u64>);

fn series(reference: &[&Sample], after: &[&Sample], get: impl Fn(&Sample) -> u64) -> Series {
    Series(
        reference.iter().map(|s| get(s)).max(),
        after.iter().map(|s| get(s)).max(),
    )
}

impl Series {
    fn check(&self, series: String, allowance: u64) -> Check {
        let (reference, max_after) = (self.0.unwrap_or(0), self.1.unwrap_or(0));
        let limit = reference + allowance;
        Check {
            series,
            reference,
            max_after,
            limit,
            ok: self.0.is_some() && self.1.is_some() && max_after <= limit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t: f64, fds: u64, rss_kib: u64) -> Sample {
        let u = Usage {
            fds,
            threads: 2,
            rss_kib,
            grant_pages: 10,
        };
        Sample {
            t,
            daemon: u,
            workers: u,
            workers_up: 1,
        }
    }

    fn bounds() -> Bounds {
        let allow = Usage {
            fds: 4,
            threads: 1,
            rss_kib: 1000,
            grant_pages: 0,
        };
        Bounds {
            warmup_s: 10.0,
            reference_end_s: 20.0,
            daemon: allow,
            workers: allow,
            workers_rss_percent: 10,
            grant_ceiling: 10,
        }
    }

    fn failed(checks: &[Check]) -> Vec<&str> {
        checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.series.as_str())
            .collect()
    }

    #[test]
    fn flat_series_pass_and_warmup_growth_is_ignored() {
        let samples = [
            sample(0.0, 1, 100),
            sample(12.0, 50, 9000),
            sample(25.0, 54, 9900),
        ];
        assert_eq!(failed(&check(&samples, &bounds())), Vec::<&str>::new());
    }

    #[test]
    fn growth_beyond_the_allowance_fails_that_series() {
        // Workers may grow 1000 KiB + 10 % of 9000 = 1900 KiB; the daemon only 1000 KiB.
        let samples = [sample(12.0, 50, 9000), sample(25.0, 55, 10900)];
        assert_eq!(
            failed(&check(&samples, &bounds())),
            ["daemon fds", "workers fds", "daemon rss_kib"]
        );
    }

    #[test]
    fn a_run_without_samples_after_the_reference_window_fails() {
        let samples = [sample(12.0, 50, 9000)];
        assert!(check(&samples, &bounds()).iter().take(8).all(|c| !c.ok));
    }

    #[test]
    fn workers_grant_pages_may_refill_up_to_the_ceiling_after_the_reference_window() {
        let with_pages = |t, pages| {
            let mut s = sample(t, 1, 1);
            s.workers.grant_pages = pages;
            s
        };
        let refill = [with_pages(12.0, 4), with_pages(25.0, 10)];
        assert_eq!(failed(&check(&refill, &bounds())), Vec::<&str>::new());
        let leak = [with_pages(12.0, 4), with_pages(25.0, 11)];
        assert_eq!(
            failed(&check(&leak, &bounds())),
            ["workers grant_pages", "workers grant_pages (any time)"]
        );
    }

    #[test]
    fn grant_pages_above_the_ceiling_fail_even_during_warmup() {
        let mut s = sample(1.0, 1, 1);
        s.workers.grant_pages = 11;
        let samples = [s, sample(12.0, 1, 1), sample(25.0, 1, 1)];
        assert_eq!(
            failed(&check(&samples, &bounds())),
            ["workers grant_pages (any time)"]
        );
    }
}
