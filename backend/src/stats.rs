//! Per-device counters, updated by the ring workers and read by tools.
//!
//! Each ring (queue) of a device counts in its own [`Stats`], made by [`Stats::queue`] on the
//! device's: a worker's per-request increments never touch a cache line another queue writes.
//! Reading the device's counters sums them; a ring that disconnects folds its counts into the
//! device's own ([`Stats::retire`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Buckets of the latency histogram: bucket 0 counts requests answered in under 1 µs, bucket
/// `i` those answered in `[2^(i-1), 2^i)` µs, and the last one everything slower (from about
/// 4.2 s).
pub const LATENCY_BUCKETS: usize = 24;

/// The histogram bucket of a request answered after `elapsed`.
pub fn latency_bucket(elapsed: Duration) -> usize {
    let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    let bits = (u64::BITS - us.leading_zeros()) as usize;
    bits.min(LATENCY_BUCKETS - 1)
}

/// The upper bound of bucket `i` in microseconds (exclusive); `None` for the last bucket.
pub fn latency_bucket_limit_us(i: usize) -> Option<u64> {
    (i + 1 < LATENCY_BUCKETS).then(|| 1u64 << i)
}

/// Declares the counters once: the atomic [`Stats`], the plain [`StatsSnapshot`], and the
/// field-by-field reading and summing.
macro_rules! counters {
    ($($(#[doc = $doc:literal])* $name:ident,)*) => {
        /// Counters of one device or of one of its rings. Relaxed atomics: they are
        /// statistics, not synchronisation. Aligned so that two rings' counters never share a
        /// cache line.
        #[derive(Debug, Default)]
        #[repr(align(128))]
        pub struct Stats {
            $($(#[doc = $doc])* pub $name: AtomicU64,)*
            /// Requests answered, by latency from leaving the ring to their response (see
            /// [`latency_bucket`]).
            pub latency: [AtomicU64; LATENCY_BUCKETS],
            /// The counters of the device's connected rings, summed into every snapshot.
            queues: Mutex<Vec<Arc<Stats>>>,
        }

        /// A plain copy of the counters.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        pub struct StatsSnapshot {
            $($(#[doc = $doc])* pub $name: u64,)*
            /// See [`Stats::latency`].
            pub latency_us: [u64; LATENCY_BUCKETS],
        }

        impl Stats {
            /// This struct's own counters, without its rings'.
            fn own(&self) -> StatsSnapshot {
                let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
                StatsSnapshot {
                    $($name: get(&self.$name),)*
                    latency_us: std::array::from_fn(|i| get(&self.latency[i])),
                }
            }

            /// Adds `s` to these counters.
            fn absorb(&self, s: &StatsSnapshot) {
                $(Stats::add(&self.$name, s.$name);)*
                for (c, n) in self.latency.iter().zip(s.latency_us) {
                    Stats::add(c, n);
                }
            }
        }

        impl std::ops::Add for StatsSnapshot {
            type Output = StatsSnapshot;

            /// Field by field, wrapping (counters of one device never come near `u64::MAX`).
            fn add(self, o: StatsSnapshot) -> StatsSnapshot {
                StatsSnapshot {
                    $($name: self.$name.wrapping_add(o.$name),)*
                    latency_us: std::array::from_fn(|i| {
                        self.latency_us[i].wrapping_add(o.latency_us[i])
                    }),
                }
            }
        }
    };
}

counters! {
    /// Completed read requests.
    reads,
    /// Completed write requests (including barrier/flush requests with data).
    writes,
    /// Completed flush and barrier requests.
    flushes,
    /// Completed discard requests.
    discards,
    /// Bytes read for the guest.
    bytes_read,
    /// Bytes written for the guest.
    bytes_written,
    /// Requests answered with an error (bad requests and failed I/O).
    errors,
    /// Requests refused as malformed or not allowed.
    bad_requests,
    /// Requests taken off the ring (tap-ctl's requests in).
    requests,
    /// Responses put on the ring (tap-ctl's requests out).
    responses,
    /// Notifications from the guest that found work pending (kicks in).
    kicks_in,
    /// Notifications sent to the guest (kicks out).
    kicks_out,
    /// Waits that busy-polling ended (a request or a completion showed up while the worker
    /// spun), each saving a sleep and a wake-up.
    polled,
    /// Times the worker found every ring slot holding an unanswered request: the guest had
    /// to wait for a free slot (the ring's out-of-requests events).
    ring_full,
    /// Grants kept mapped as persistent grants now, over every ring.
    persistent_cached,
    /// Data pages found among the persistent grants.
    persistent_hits,
    /// Data pages not found among the persistent grants (mapped then).
    persistent_misses,
    /// Persistent grants unmapped to make room for others (least recently used first).
    persistent_purged,
    /// Persistent grants unmapped after going unused for too long.
    persistent_unused_unmapped,
    /// Requests whose data was grant-copied through a bounce buffer (the copy data path).
    grant_copy_requests,
    /// Requests read or written through an io_uring fixed buffer.
    fixed_buffer_requests,
    /// Requests the disk's I/O limits held back before they started (each counted once).
    qos_held,
    /// The latencies of every answered request added up, in microseconds.
    latency_us_sum,
}

impl Stats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Lowers a gauge, stopping at zero.
    pub(crate) fn sub(counter: &AtomicU64, n: u64) {
        if n > 0 {
            let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
        }
    }

    /// Counts one request answered `elapsed` after it left the ring.
    pub(crate) fn answered_after(&self, elapsed: Duration) {
        Stats::add(&self.latency[latency_bucket(elapsed)], 1);
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        Stats::add(&self.latency_us_sum, us);
    }

    /// New counters for one ring of this device, included in its snapshots until retired.
    pub fn queue(&self) -> Arc<Stats> {
        let q = Arc::new(Stats::default());
        self.lock_queues().push(Arc::clone(&q));
        q
    }

    /// Folds a ring's counters into the device's own and stops summing them separately (the
    /// ring's worker has ended).
    pub fn retire(&self, queue: &Arc<Stats>) {
        let mut queues = self.lock_queues();
        queues.retain(|q| !Arc::ptr_eq(q, queue));
        self.absorb(&queue.own());
    }

    fn lock_queues(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Stats>>> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads every counter: this one's and those of its rings.
    pub fn snapshot(&self) -> StatsSnapshot {
        let queues = self.lock_queues();
        queues.iter().fold(self.own(), |sum, q| sum + q.snapshot())
    }
}

impl StatsSnapshot {
    /// 512-byte sectors read (blkback's `rd_sect`).
    pub fn sectors_read(&self) -> u64 {
        self.bytes_read / 512
    }

    /// 512-byte sectors written (blkback's `wr_sect`).
    pub fn sectors_written(&self) -> u64 {
        self.bytes_written / 512
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{LATENCY_BUCKETS, Stats, latency_bucket, latency_bucket_limit_us};

    #[test]
    fn latency_buckets_double_and_the_last_takes_everything_slower() {
        let us = Duration::from_micros;
        assert_eq!(latency_bucket(Duration::from_nanos(999)), 0);
        assert_eq!(latency_bucket(us(1)), 1);
        assert_eq!(latency_bucket(us(3)), 2);
        assert_eq!(latency_bucket(us(4)), 3);
        assert_eq!(latency_bucket(us(1 << 21)), 22);
        assert_eq!(
            latency_bucket(Duration::from_secs(3600)),
            LATENCY_BUCKETS - 1
        );
        for i in 0..LATENCY_BUCKETS - 1 {
            let limit = latency_bucket_limit_us(i).unwrap();
            assert_eq!(latency_bucket(us(limit - 1)), i, "below the limit of {i}");
            assert_eq!(latency_bucket(us(limit)), i + 1, "at the limit of {i}");
        }
        assert_eq!(latency_bucket_limit_us(LATENCY_BUCKETS - 1), None);
    }

    #[test]
    fn device_counters_sum_its_rings_live_and_after_they_retire() {
        let dev = Stats::default();
        let (q0, q1) = (dev.queue(), dev.queue());
        Stats::add(&q0.reads, 3);
        Stats::add(&q1.reads, 4);
        Stats::add(&q1.bytes_written, 4096);
        Stats::add(&q1.persistent_cached, 2);
        Stats::add(&q1.qos_held, 5);
        assert_eq!(dev.snapshot().reads, 7);
        assert_eq!(dev.snapshot().bytes_written, 4096);
        Stats::sub(&q1.persistent_cached, 2);
        dev.retire(&q1);
        Stats::add(&q0.reads, 1);
        let s = dev.snapshot();
        assert_eq!(
            (s.reads, s.bytes_written, s.persistent_cached, s.qos_held),
            (8, 4096, 0, 5)
        );
        dev.retire(&q0);
        assert_eq!(dev.snapshot().reads, 8);
        assert_eq!(dev.lock_queues().len(), 0);
    }
}
