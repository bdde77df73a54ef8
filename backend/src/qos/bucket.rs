//! One leaky bucket ("leaky bucket as a meter", as QEMU's throttling uses it).
//!
//! The bucket holds the work done recently (`level`, in bytes or requests) and leaks it at the
//! sustained rate `avg` per second. A request may start while the level is at most the
//! bucket's size; its cost is then poured in, even if that overfills the bucket, and later
//! requests wait until enough has leaked. In the long run the rate is `avg` exactly.
//!
//! * Without a burst (`max` 0) the size is a tenth of a second of `avg`: short bursts of
//!   requests go through together instead of one at a time.
//! * With a burst (`max` > 0, `max_length` seconds) the size is `max * max_length`: an idle
//!   disk may run that much above `avg` before it is held to `avg`. When the burst lasts
//!   longer than a second, a second bucket of size `max / 10` leaking at `max` holds the burst
//!   itself to `max` per second.

use super::limits::BucketLimit;

/// The state of one bucket. Levels are in the bucket's unit (bytes or requests).
#[derive(Clone, Debug, PartialEq)]
pub(super) struct LeakyBucket {
    avg: f64,
    max: f64,
    max_length: f64,
    level: f64,
    burst_level: f64,
}

impl LeakyBucket {
    /// An empty bucket with `limit`.
    pub fn new(limit: &BucketLimit) -> LeakyBucket {
        LeakyBucket {
            avg: limit.avg as f64,
            max: limit.max as f64,
            max_length: limit.max_length.max(1) as f64,
            level: 0.0,
            burst_level: 0.0,
        }
    }

    /// Whether it limits anything.
    pub fn is_active(&self) -> bool {
        self.avg > 0.0
    }

    /// Leaks what `secs` seconds drain.
    pub fn leak(&mut self, secs: f64) {
        self.level = (self.level - self.avg * secs).max(0.0);
        if self.has_burst_bucket() {
            self.burst_level = (self.burst_level - self.max * secs).max(0.0);
        }
    }

    /// Seconds until a request may start (0: now).
    pub fn wait(&self) -> f64 {
        if !self.is_active() {
            return 0.0;
        }
        let over = self.level - self.size();
        if over > 0.0 {
            return over / self.avg;
        }
        if self.has_burst_bucket() {
            let over = self.burst_level - self.max / 10.0;
            if over > 0.0 {
                return over / self.max;
            }
        }
        0.0
    }

    /// Pours in the cost of a request that starts.
    pub fn add(&mut self, units: f64) {
        if !self.is_active() {
            return;
        }
        self.level += units;
        if self.has_burst_bucket() {
            self.burst_level += units;
        }
    }

    /// How much may be in the bucket when a request starts.
    fn size(&self) -> f64 {
        if self.max > 0.0 {
            self.max * self.max_length
        } else {
            self.avg / 10.0
        }
    }

    fn has_burst_bucket(&self) -> bool {
        self.max > 0.0 && self.max_length > 1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(avg: u64, max: u64, max_length: u64) -> LeakyBucket {
        LeakyBucket::new(&BucketLimit {
            avg,
            max,
            max_length,
        })
    }

    /// Requests of `units` each started as soon as allowed over `secs` seconds, in steps of
    /// `step` seconds; how many started.
    fn run(b: &mut LeakyBucket, units: f64, secs: f64, step: f64) -> u64 {
        let mut started = 0;
        let mut t = 0.0;
        while t < secs {
            while b.wait() == 0.0 {
                b.add(units);
                started += 1;
            }
            b.leak(step);
            t += step;
        }
        started
    }

    /// Requests of one unit started at once, without time passing.
    fn starts_now(b: &mut LeakyBucket) -> u64 {
        let mut n = 0;
        while b.wait() == 0.0 && n < 100_000 {
            b.add(1.0);
            n += 1;
        }
        n
    }

    #[test]
    fn an_inactive_bucket_never_waits() {
        let mut b = bucket(0, 0, 1);
        b.add(1e12);
        assert!(!b.is_active());
        assert_eq!(b.wait(), 0.0);
    }

    #[test]
    fn without_a_burst_a_tenth_of_a_second_goes_at_once_then_the_rate_holds() {
        let mut b = bucket(100, 0, 1);
        // Level 0..=10 allows a start: 11 requests at once.
        assert_eq!(starts_now(&mut b), 11);
        assert!((b.wait() - 0.01).abs() < 1e-9, "{}", b.wait());
        let mut b = bucket(100, 0, 1);
        let n = run(&mut b, 1.0, 10.0, 0.001);
        assert!((1000..=1012).contains(&n), "{n} requests in 10 s at 100/s");
    }

    #[test]
    fn the_wait_is_the_time_to_leak_the_excess() {
        let mut b = bucket(1000, 0, 1);
        b.add(1100.0);
        // Size 100: 1000 over, leaking at 1000/s.
        assert!((b.wait() - 1.0).abs() < 1e-9);
        b.leak(0.5);
        assert!((b.wait() - 0.5).abs() < 1e-9);
        b.leak(0.5);
        assert_eq!(b.wait(), 0.0);
        b.leak(100.0);
        assert_eq!(b.level, 0.0, "never below empty");
    }

    #[test]
    fn a_burst_runs_at_max_for_its_length_then_falls_to_avg() {
        // 100/s sustained, bursts of 1000/s for 5 s: size 5000.
        let mut b = bucket(100, 1000, 5);
        let first = run(&mut b, 1.0, 1.0, 0.001);
        assert!((990..=1110).contains(&first), "first second: {first}");
        let mut total = first;
        for _ in 0..4 {
            total += run(&mut b, 1.0, 1.0, 0.001);
        }
        // The bucket fills at max - avg = 900/s: full after about 5.6 s, not yet at 5 s.
        assert!((4900..=5200).contains(&total), "five seconds: {total}");
        run(&mut b, 1.0, 2.0, 0.001);
        let settled = run(&mut b, 1.0, 10.0, 0.001);
        assert!(
            (990..=1010).contains(&settled),
            "ten settled seconds: {settled}"
        );
    }

    #[test]
    fn a_one_second_burst_goes_at_once() {
        let mut b = bucket(10, 500, 1);
        assert_eq!(starts_now(&mut b), 501, "level 0..=500 allows a start");
    }

    #[test]
    fn an_idle_bucket_allows_a_burst_again() {
        let mut b = bucket(100, 1000, 2);
        run(&mut b, 1.0, 10.0, 0.001);
        let held = run(&mut b, 1.0, 1.0, 0.001);
        assert!((95..=105).contains(&held), "held to avg: {held}");
        b.leak(30.0);
        assert_eq!(b.wait(), 0.0);
        let again = run(&mut b, 1.0, 1.0, 0.001);
        assert!(again > 900, "{again}");
    }
}
