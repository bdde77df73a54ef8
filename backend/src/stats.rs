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
}

impl Stats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
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
        }
    }
}
