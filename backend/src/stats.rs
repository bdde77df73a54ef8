//! Per-device counters, updated by the worker and read by tools.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one device. Relaxed atomics: they are statistics, not synchronisation.
#[derive(Debug, Default)]
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

    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
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
        }
    }
}
