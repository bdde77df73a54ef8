//! The six buckets of one disk, shared by its ring workers.
//!
//! A request may start when every bucket that counts it (the totals, and the read or the
//! write buckets) allows a start; its cost is then added to all of them at once. The buckets
//! sit behind one mutex taken for a few arithmetic operations per request of a limited disk:
//! the rings of a multi-queue disk share the disk's limit. The time is passed in by the
//! caller, so tests drive the clock themselves.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::bucket::LeakyBucket;
use super::limits::{BucketKind, QosLimits};

/// Longest wait reported: a disk limited to 1 byte per second is still woken now and then.
const MAX_WAIT: Duration = Duration::from_secs(1);

/// What starting a request costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cost {
    /// A write (else a read).
    pub write: bool,
    /// Bytes moved (0 for a discard).
    pub bytes: u64,
}

#[derive(Debug)]
struct Buckets {
    /// Indexed as [`BucketKind::ALL`].
    buckets: [LeakyBucket; 6],
    iops_size: u64,
    /// When the buckets last leaked.
    last: Instant,
}

/// The token buckets of one disk, all empty at first.
#[derive(Debug)]
pub struct Throttle {
    state: Mutex<Buckets>,
}

impl Throttle {
    /// Buckets for `limits`, starting empty at `now`.
    pub fn new(limits: &QosLimits, now: Instant) -> Throttle {
        let buckets = limits.buckets.map(|b| LeakyBucket::new(&b));
        Throttle {
            state: Mutex::new(Buckets {
                buckets,
                iops_size: limits.iops_size,
                last: now,
            }),
        }
    }

    /// Starts a request of `cost` at `now` if the limits allow it; else how long to wait
    /// before asking again (more than zero, at most a second).
    pub fn admit(&self, cost: Cost, now: Instant) -> Result<(), Duration> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.leak_to(now);
        let wait = s.wait(cost.write);
        if wait > 0.0 {
            let wait = Duration::try_from_secs_f64(wait).unwrap_or(MAX_WAIT);
            return Err(wait.clamp(Duration::from_nanos(1), MAX_WAIT));
        }
        s.account(cost);
        Ok(())
    }
}

impl Buckets {
    fn leak_to(&mut self, now: Instant) {
        // Rings race to the lock: an earlier `now` leaks nothing and never moves time back.
        let secs = now.saturating_duration_since(self.last).as_secs_f64();
        if secs > 0.0 {
            self.buckets.iter_mut().for_each(|b| b.leak(secs));
            self.last = now;
        }
    }

    /// Seconds until a request of this direction may start.
    fn wait(&self, write: bool) -> f64 {
        self.counting(write)
            .map(|(_, b)| b.wait())
            .fold(0.0, f64::max)
    }

    fn account(&mut self, cost: Cost) {
        let bytes = cost.bytes as f64;
        let requests = match self.iops_size {
            size if size > 0 && cost.bytes > size => bytes / size as f64,
            _ => 1.0,
        };
        for (kind, b) in self.counting_mut(cost.write) {
            b.add(if kind.counts_bytes() { bytes } else { requests });
        }
    }

    fn counting(&self, write: bool) -> impl Iterator<Item = (BucketKind, &LeakyBucket)> {
        BucketKind::ALL
            .into_iter()
            .zip(self.buckets.iter())
            .filter(move |(k, _)| k.applies_to(write))
    }

    fn counting_mut(
        &mut self,
        write: bool,
    ) -> impl Iterator<Item = (BucketKind, &mut LeakyBucket)> {
        BucketKind::ALL
            .into_iter()
            .zip(self.buckets.iter_mut())
            .filter(move |(k, _)| k.applies_to(write))
    }
}

#[cfg(test)]
#[path = "throttle_tests.rs"]
mod tests;
