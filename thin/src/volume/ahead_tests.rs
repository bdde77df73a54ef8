//! Refills asked ahead of need: first writes take their blocks without a round trip to the
//! pool, a late answer is waited for rather than asked again, and a full pool answers a
//! refill asked ahead at once without asking the other volumes for their reserves.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rustbk_formats::suite::pattern;

use crate::error::Result;
use crate::pool::{LocalPort, PoolOptions, VolumeSpec};
use crate::port::{Handout, PoolPort};
use crate::testing::{TestPool, flush, forward_to_inner, get, new_pool, put, queue, thin_check};
use crate::volume::{ThinVolume, VolumeOptions};

const BS: u64 = 64 << 10;

/// What the test sees of its port.
#[derive(Default)]
struct Seen {
    /// Refills asked when the reserve was empty.
    provisions: AtomicUsize,
    /// Refills asked ahead.
    ahead: AtomicUsize,
    /// Answers taken by waiting for them.
    waited: AtomicUsize,
    /// Answers to refills asked ahead arrive only when waited for.
    late: AtomicBool,
    /// The pool asks for the reserve (once).
    give_back: AtomicBool,
}

/// A port asking ahead as a socket port does: the pool hands the blocks out when asked, and
/// the answer is taken later.
struct AskingAhead {
    inner: LocalPort,
    seen: Arc<Seen>,
    on_the_way: Vec<(u64, Result<Handout>)>,
}

impl PoolPort for AskingAhead {
    forward_to_inner!();
    fn provision_zeroed(&mut self, count: usize) -> Result<Handout> {
        self.seen.provisions.fetch_add(1, Ordering::SeqCst);
        self.inner.provision_zeroed(count)
    }
    fn provision_ahead(&mut self, count: usize) -> Option<u64> {
        let ticket = self.seen.ahead.fetch_add(1, Ordering::SeqCst) as u64;
        let answer = self.inner.provision_ahead(count);
        self.on_the_way.push((ticket, answer));
        Some(ticket)
    }
    fn provision_answer(&mut self, ticket: u64, wait: bool) -> Option<Result<Handout>> {
        if !wait && self.seen.late.load(Ordering::SeqCst) {
            return None;
        }
        let at = self.on_the_way.iter().position(|(t, _)| *t == ticket)?;
        if wait {
            self.seen.waited.fetch_add(1, Ordering::SeqCst);
        }
        Some(self.on_the_way.remove(at).1)
    }
    fn give_back_requested(&mut self) -> bool {
        self.seen.give_back.swap(false, Ordering::SeqCst)
    }
}

/// A pool of `blocks` data blocks with volume 1 of `vblocks` blocks, served through an
/// [`AskingAhead`] port.
fn served(blocks: u64, vblocks: u64) -> (TestPool, ThinVolume, Arc<Seen>) {
    let t = new_pool(BS, blocks, PoolOptions::default());
    let spec = VolumeSpec {
        size: vblocks * BS,
        ..VolumeSpec::default()
    };
    t.pool.create_volume(1, spec).expect("create");
    let inner = t.pool.open_port(1).expect("port");
    let data = inner.data_file();
    let seen = Arc::new(Seen::default());
    let port = AskingAhead {
        inner,
        seen: seen.clone(),
        on_the_way: Vec::new(),
    };
    let vol = ThinVolume::new(Box::new(port), data, VolumeOptions::default()).expect("volume");
    (t, vol, seen)
}

/// Writes 4 KiB into each of the first `n` blocks, one after the other, and reads them back.
fn first_writes(vol: &ThinVolume, n: u64) {
    let mut q = queue(vol);
    for vblock in 0..n {
        put(&mut *q, vblock * BS + 4096, &pattern(vblock, 4096));
    }
    for vblock in 0..n {
        let mut expected = vec![0; 4096];
        expected.extend(pattern(vblock, 4096));
        assert_eq!(get(&mut *q, vblock * BS, 8192), expected, "block {vblock}");
    }
    flush(&mut *q);
}

fn mapped_blocks(t: &TestPool, n: u64) -> Vec<u64> {
    let mut port = t.pool.open_port(1).expect("port");
    let found = port.lookup(0..n).expect("lookup");
    assert_eq!(found.len() as u64, n, "every block written is mapped");
    found.iter().map(|(_, m)| m.block).collect()
}

#[test]
fn first_writes_take_their_blocks_from_refills_asked_ahead_in_ascending_order() {
    let (t, vol, seen) = served(1024, 512);
    first_writes(&vol, 300);
    assert_eq!(
        seen.provisions.load(Ordering::SeqCst),
        1,
        "only the first refill waits for the pool"
    );
    // 16, then 32, 64, 128 and 256 asked ahead (the batch doubles while refills are quick).
    assert!(seen.ahead.load(Ordering::SeqCst) >= 4);
    let blocks = mapped_blocks(&t, 300);
    assert!(
        blocks.windows(2).all(|w| w[0] < w[1]),
        "sequential first writes land in ascending blocks: {blocks:?}"
    );
    drop(vol);
    thin_check(&t.meta);
    assert_eq!(t.pool.usage().expect("usage").data_free, 1024 - 300);
}

#[test]
fn a_refill_that_is_late_is_waited_for_rather_than_asked_again() {
    let (t, vol, seen) = served(1024, 512);
    seen.late.store(true, Ordering::SeqCst);
    first_writes(&vol, 100);
    assert_eq!(seen.provisions.load(Ordering::SeqCst), 1);
    let (ahead, waited) = (
        seen.ahead.load(Ordering::SeqCst),
        seen.waited.load(Ordering::SeqCst),
    );
    assert!(
        waited >= 2 && ahead - waited <= 1,
        "asked {ahead}, waited {waited}"
    );
    drop(vol);
    thin_check(&t.meta);
}

#[test]
fn giving_the_reserve_back_gives_the_refill_on_its_way_too() {
    let (t, vol, seen) = served(1024, 512);
    seen.late.store(true, Ordering::SeqCst);
    let mut q = queue(&vol);
    let mut vblock = 0;
    while seen.ahead.load(Ordering::SeqCst) == seen.waited.load(Ordering::SeqCst) {
        put(&mut *q, vblock * BS, &pattern(vblock, 4096));
        vblock += 1;
    }
    seen.give_back.store(true, Ordering::SeqCst);
    // Any op answers the pool's requests first.
    get(&mut *q, 0, 4096);
    assert!(
        !seen.give_back.load(Ordering::SeqCst),
        "the request was seen"
    );
    assert_eq!(
        seen.waited.load(Ordering::SeqCst),
        seen.ahead.load(Ordering::SeqCst)
    );
    let free = t.pool.usage().expect("usage").data_free;
    assert_eq!(
        free,
        1024 - vblock,
        "no block is held back after {vblock} writes"
    );
    flush(&mut *q);
}

#[test]
fn a_full_pool_answers_a_refill_asked_ahead_at_once_and_asks_no_one() {
    let t = new_pool(BS, 64, PoolOptions::default());
    for id in [1, 2] {
        let spec = VolumeSpec {
            size: 64 * BS,
            ..VolumeSpec::default()
        };
        t.pool.create_volume(id, spec).expect("create");
    }
    let mut a = t.pool.open_port(1).expect("port");
    while t.pool.usage().expect("usage").data_free > 0 {
        a.provision_zeroed(64).expect("provision");
    }
    let mut b = t.pool.open_port(2).expect("port");
    let started = Instant::now();
    let got = b.provision_ahead(16).expect("ahead");
    assert!(got.blocks.is_empty());
    assert!(started.elapsed() < Duration::from_millis(500));
    assert!(
        !a.give_back_requested(),
        "no one is asked for their reserve"
    );
    assert!(b.provision_ahead(0).is_err(), "a count of 0 is refused");
    a.release(&[5]).expect("release");
    assert_eq!(b.provision_ahead(16).expect("ahead").blocks, [5]);
}
