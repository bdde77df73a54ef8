//! Per-device counters, updated by the ring workers and read by tools.
//!
//! Each ring (queue) of a device counts in its own [`Stats`], made by [`Stats::queue`] on the
//! device's: a worker's per-request increments never touch a cache line another queue writes.
//! Reading the device's counters sums them; a ring that disconnects folds its counts into the
//! device's own ([`Stats::retire`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Counters of one device or of one of its rings. Relaxed atomics: they are statistics, not
/// synchronisation. Aligned so that two rings' counters never share a cache line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Stats {
    /// Completed read requests.
    pub reads: AtomicU64,
    /// Completed write requests (including barrier/flush requests with data).
    pub writes: AtomicU64,
    /// Completed flush and barrier requests.
    pub flushes: AtomicU64,
    /// Completed discard requests.
    pub discards: AtomicU64,
    /// Bytes read for the guest.
    pub bytes_read: AtomicU64,
    /// Bytes written for the guest.
    pub bytes_written: AtomicU64,
    /// Requests answered with an error (bad requests and failed I/O).
    pub errors: AtomicU64,
    /// Requests refused as malformed or not allowed.
    pub bad_requests: AtomicU64,
    /// Grants kept mapped as persistent grants now, over every ring.
    pub persistent_cached: AtomicU64,
    /// Data pages found among the persistent grants.
    pub persistent_hits: AtomicU64,
    /// Data pages not found among the persistent grants (mapped then).
    pub persistent_misses: AtomicU64,
    /// Persistent grants unmapped to make room for others (least recently used first).
    pub persistent_purged: AtomicU64,
    /// Persistent grants unmapped after going unused for too long.
    pub persistent_unused_unmapped: AtomicU64,
    /// Requests the disk's I/O limits held back before they started (each counted once).
    pub qos_held: AtomicU64,
    /// The counters of the device's connected rings, summed into every snapshot.
    queues: Mutex<Vec<Arc<Stats>>>,
}

/// A plain copy of the counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    /// See [`Stats::reads`].
    pub reads: u64,
    /// See [`Stats::writes`].
    pub writes: u64,
    /// See [`Stats::flushes`].
    pub flushes: u64,
    /// See [`Stats::discards`].
    pub discards: u64,
    /// See [`Stats::bytes_read`].
    pub bytes_read: u64,
    /// See [`Stats::bytes_written`].
    pub bytes_written: u64,
    /// See [`Stats::errors`].
    pub errors: u64,
    /// See [`Stats::bad_requests`].
    pub bad_requests: u64,
    /// See [`Stats::persistent_cached`].
    pub persistent_cached: u64,
    /// See [`Stats::persistent_hits`].
    pub persistent_hits: u64,
    /// See [`Stats::persistent_misses`].
    pub persistent_misses: u64,
    /// See [`Stats::persistent_purged`].
    pub persistent_purged: u64,
    /// See [`Stats::persistent_unused_unmapped`].
    pub persistent_unused_unmapped: u64,
    /// See [`Stats::qos_held`].
    pub qos_held: u64,
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
        let s = queue.own();
        let add = |c: &AtomicU64, n: u64| Stats::add(c, n);
        add(&self.reads, s.reads);
        add(&self.writes, s.writes);
        add(&self.flushes, s.flushes);
        add(&self.discards, s.discards);
        add(&self.bytes_read, s.bytes_read);
        add(&self.bytes_written, s.bytes_written);
        add(&self.errors, s.errors);
        add(&self.bad_requests, s.bad_requests);
        add(&self.persistent_cached, s.persistent_cached);
        add(&self.persistent_hits, s.persistent_hits);
        add(&self.persistent_misses, s.persistent_misses);
        add(&self.persistent_purged, s.persistent_purged);
        add(
            &self.persistent_unused_unmapped,
            s.persistent_unused_unmapped,
        );
        add(&self.qos_held, s.qos_held);
    }

    fn lock_queues(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Stats>>> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads every counter: this one's and those of its rings.
    pub fn snapshot(&self) -> StatsSnapshot {
        let queues = self.lock_queues();
        queues.iter().fold(self.own(), |sum, q| sum + q.snapshot())
    }

    /// This struct's own counters, without its rings'.
    fn own(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            reads: get(&self.reads),
            writes: get(&self.writes),
            flushes: get(&self.flushes),
            discards: get(&self.discards),
            bytes_read: get(&self.bytes_read),
            bytes_written: get(&self.bytes_written),
            errors: get(&self.errors),
            bad_requests: get(&self.bad_requests),
            persistent_cached: get(&self.persistent_cached),
            persistent_hits: get(&self.persistent_hits),
            persistent_misses: get(&self.persistent_misses),
            persistent_purged: get(&self.persistent_purged),
            persistent_unused_unmapped: get(&self.persistent_unused_unmapped),
            qos_held: get(&self.qos_held),
        }
    }
}

impl std::ops::Add for StatsSnapshot {
    type Output = StatsSnapshot;

    /// Field by field, wrapping (counters of one device never come near `u64::MAX`).
    fn add(self, o: StatsSnapshot) -> StatsSnapshot {
        StatsSnapshot {
            reads: self.reads.wrapping_add(o.reads),
            writes: self.writes.wrapping_add(o.writes),
            flushes: self.flushes.wrapping_add(o.flushes),
            discards: self.discards.wrapping_add(o.discards),
            bytes_read: self.bytes_read.wrapping_add(o.bytes_read),
            bytes_written: self.bytes_written.wrapping_add(o.bytes_written),
            errors: self.errors.wrapping_add(o.errors),
            bad_requests: self.bad_requests.wrapping_add(o.bad_requests),
            persistent_cached: self.persistent_cached.wrapping_add(o.persistent_cached),
            persistent_hits: self.persistent_hits.wrapping_add(o.persistent_hits),
            persistent_misses: self.persistent_misses.wrapping_add(o.persistent_misses),
            persistent_purged: self.persistent_purged.wrapping_add(o.persistent_purged),
            persistent_unused_unmapped: self
                .persistent_unused_unmapped
                .wrapping_add(o.persistent_unused_unmapped),
            qos_held: self.qos_held.wrapping_add(o.qos_held),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Stats;

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
