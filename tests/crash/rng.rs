//! The seeded generator of the crash tests (blkfront's), and the run's seed.

use std::time::{SystemTime, UNIX_EPOCH};

pub use rustbk_blkfront::rng::Rng;

/// The seed of this run: `CRASH_SEED` if set, else the clock. Printed with `what`.
pub fn seed(what: &str) -> u64 {
    let seed = match std::env::var("CRASH_SEED") {
        Ok(s) => s.parse().expect("CRASH_SEED must be a number"),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    };
    println!("{what}: seed {seed} (repeat with CRASH_SEED={seed})");
    seed
}
