//! Workloads run by the emulated guest: what `rustbk demo` and `rustbk bench` drive.

mod model;
mod pace;
mod pattern;
mod report;
mod runner;

pub use model::DiskModel;
pub use pattern::{fill as fill_pattern, matches as pattern_matches};
pub use report::{Latencies, LatencySummary, Report};
pub use runner::{run, run_with_model};

use std::time::Duration;

/// Order of block offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Pattern {
    /// Increasing offsets, wrapping at the end of the region.
    Sequential,
    /// Uniformly random blocks.
    Random,
}

/// What to run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Workload {
    /// Offset order.
    pub pattern: Pattern,
    /// Share of reads, 0 to 100.
    pub read_percent: u8,
    /// Bytes per request (a multiple of the disk's sector size).
    pub block_size: usize,
    /// Requests in flight.
    pub queue_depth: u32,
    /// How long to issue requests.
    pub duration: Duration,
    /// Stop after this many requests, if set.
    pub max_ops: Option<u64>,
    /// Write verifiable patterns and check every read.
    pub verify: bool,
    /// The disk is known to be all zeros at the start (unwritten blocks must read as zeros).
    pub fresh: bool,
    /// Bytes of the disk to use, from offset 0 (the whole disk if unset).
    pub region: Option<u64>,
    /// Send a flush after every this many writes.
    pub flush_every: Option<u64>,
    /// Seed of the random offsets and read/write choice.
    pub seed: u64,
    /// Issue at most this many requests per second (no limit if unset).
    pub rate: Option<u32>,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            pattern: Pattern::Random,
            read_percent: 50,
            block_size: 4096,
            queue_depth: 32,
            duration: Duration::from_secs(5),
            max_ops: None,
            verify: true,
            fresh: true,
            region: None,
            flush_every: None,
            seed: 0x5eed,
            rate: None,
        }
    }
}

/// A progress sample, reported about once a second.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// Time since the start.
    pub elapsed: Duration,
    /// Requests completed so far.
    pub ops: u64,
    /// Verify mismatches so far.
    pub mismatches: u64,
    /// Errors so far.
    pub errors: u64,
}
