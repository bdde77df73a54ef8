//! How many data blocks a volume asks of the pool when its reserve runs dry.
//!
//! Each refill is a round trip to the pool (through the service: a socket, two thread hops
//! each way and the pool's lock) while the queue that needs a block stands still. A volume
//! taking blocks fast (random first writes at tens of thousands a second) would make
//! thousands of them a second with a fixed small batch, so the batch doubles on every
//! refill that follows the one before within [`BUSY`], up to 16 MiB of blocks. A volume
//! that writes new blocks now and then keeps the small batch, so blocks held back from the
//! other volumes stay few; so does one the pool answers short (little space is left).
//! Through a pool service the next refill is asked ahead, when half of the last one is left
//! (see `reserve.rs`).

use std::time::{Duration, Instant};

/// Blocks asked at a time by a volume that is not taking blocks fast, and at least.
pub(crate) const MIN_BATCH: usize = 16;
/// The most blocks asked at a time.
const MAX_BATCH: usize = 256;
/// The most bytes of data blocks asked at a time (when [`MIN_BATCH`] blocks are less).
const MAX_BYTES: u64 = 16 << 20;
/// Refills closer together than this make the next one larger.
const BUSY: Duration = Duration::from_secs(1);
/// A volume that asked for no blocks for this long keeps [`MIN_BATCH`] of its reserve and
/// gives the rest back at its next commit.
const IDLE: Duration = Duration::from_secs(10);

/// The size of the next refill.
#[derive(Debug)]
pub(crate) struct Refill {
    batch: usize,
    max: usize,
    /// The last refill, while refills come in quick succession.
    last: Option<Instant>,
    /// The last refill, ever.
    asked_at: Option<Instant>,
}

impl Refill {
    /// Batches for a pool of `block_size`-byte data blocks.
    pub(crate) fn new(block_size: u64) -> Refill {
        let fit = usize::try_from(MAX_BYTES / block_size.max(1)).unwrap_or(MAX_BATCH);
        Refill {
            batch: MIN_BATCH,
            max: fit.clamp(MIN_BATCH, MAX_BATCH),
            last: None,
            asked_at: None,
        }
    }

    /// The number of blocks to ask for now.
    pub(crate) fn ask(&mut self, now: Instant) -> usize {
        self.batch = self.next(now);
        self.last = Some(now);
        self.asked_at = Some(now);
        self.batch
    }

    /// The number of blocks [`Refill::ask`] would ask for at `now`.
    pub(crate) fn next(&self, now: Instant) -> usize {
        let busy = self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < BUSY);
        match busy {
            true => self.batch.saturating_mul(2).min(self.max),
            false => MIN_BATCH,
        }
    }

    /// A reserve this small asks for the next refill ahead of need: half of the last one.
    pub(crate) fn low_water(&self) -> usize {
        self.batch / 2
    }

    /// How many reserved blocks to keep at `now`: all of them while the volume takes blocks
    /// (asked for some within [`IDLE`]), [`MIN_BATCH`] once it stopped.
    pub(crate) fn keep(&self, now: Instant) -> usize {
        let taking = self
            .asked_at
            .is_some_and(|last| now.saturating_duration_since(last) < IDLE);
        match taking {
            true => usize::MAX,
            false => MIN_BATCH,
        }
    }

    /// The pool handed out `got` of the `asked` blocks: a short answer means space runs
    /// low, so the next refill starts small again.
    pub(crate) fn answered(&mut self, asked: usize, got: usize) {
        if got < asked {
            self.restart();
        }
    }

    /// Starts again at [`MIN_BATCH`] (space runs low).
    pub(crate) fn restart(&mut self) {
        self.batch = MIN_BATCH;
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refills_in_quick_succession_double_up_to_16_mib() {
        let mut r = Refill::new(64 << 10);
        let t = Instant::now();
        let asked: Vec<usize> = (0..7)
            .map(|i| r.ask(t + Duration::from_millis(10 * i)))
            .collect();
        assert_eq!(asked, [16, 32, 64, 128, 256, 256, 256]);
        let mut big = Refill::new(1 << 20);
        assert_eq!((big.ask(t), big.ask(t), big.ask(t)), (16, 16, 16));
    }

    #[test]
    fn a_pause_or_a_short_answer_starts_small_again() {
        let mut r = Refill::new(64 << 10);
        let t = Instant::now();
        assert_eq!((r.ask(t), r.ask(t), r.ask(t)), (16, 32, 64));
        assert_eq!((r.next(t), r.next(t), r.low_water()), (128, 128, 32));
        assert_eq!(r.ask(t + Duration::from_secs(2)), 16);
        assert_eq!(r.ask(t + Duration::from_secs(2)), 32);
        r.answered(32, 5);
        assert_eq!(r.ask(t + Duration::from_secs(2)), 16);
        r.answered(16, 16);
        assert_eq!(r.ask(t + Duration::from_secs(2)), 32);
    }

    #[test]
    fn a_volume_that_stopped_asking_keeps_a_small_reserve() {
        let mut r = Refill::new(64 << 10);
        let t = Instant::now();
        assert_eq!(r.keep(t), MIN_BATCH);
        r.ask(t);
        assert_eq!(r.keep(t + Duration::from_secs(9)), usize::MAX);
        r.answered(16, 3);
        assert_eq!(r.keep(t + Duration::from_secs(9)), usize::MAX);
        assert_eq!(r.keep(t + IDLE), MIN_BATCH);
    }
}
