//! The persistent grant cache over the emulated grant table: what it keeps mapped is what the
//! guest's grant entries show as mapped (`GTF_reading`/`GTF_writing`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustbk_grant::emu::{DomainConfig, EmuDomain, EmuPlatform};
use rustbk_grant::{DomId, GrantMapping, GrantRef, GuestHandle, Platform};

use super::{CacheCounts, CacheLimits, GrantCache};
use crate::Stats;

const GUEST: DomId = DomId(3);
const BACKEND: DomId = DomId(0);

struct Fixture {
    _dir: tempfile::TempDir,
    dom: EmuDomain,
    guest: Arc<dyn GuestHandle>,
    grefs: Vec<GrantRef>,
}

impl Fixture {
    /// A guest with `n` pages granted writable to the backend.
    fn new(n: u32) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let cfg = DomainConfig {
            domid: GUEST,
            ram_pages: n + 8,
            grant_entries: n + 64,
        };
        let dom = EmuDomain::create(dir.path(), cfg).unwrap();
        let guest = EmuPlatform::new(dir.path(), BACKEND).attach(GUEST).unwrap();
        let grefs = (0..n)
            .map(|f| dom.grant(BACKEND, f, false).unwrap())
            .collect();
        Fixture {
            _dir: dir,
            dom,
            guest,
            grefs,
        }
    }

    fn get(&self, cache: &mut GrantCache, i: usize, now: Instant) -> Arc<GrantMapping> {
        cache.get(&*self.guest, self.grefs[i], now).unwrap()
    }

    /// Whether the guest's grant entry `i` shows a mapping.
    fn mapped(&self, i: usize) -> bool {
        self.dom.grant_in_use(self.grefs[i]).unwrap()
    }
}

fn cache(max: usize, unused_after: Option<Duration>, now: Instant) -> GrantCache {
    GrantCache::new(CacheLimits { max, unused_after }, now)
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

#[test]
fn a_full_cache_unmaps_the_least_recently_used_grant_first() {
    let f = Fixture::new(6);
    let t = Instant::now();
    let mut c = cache(4, None, t);
    for i in 0..4 {
        f.get(&mut c, i, t);
    }
    // 0 is used again: 1 is now the least recently used.
    f.get(&mut c, 0, t);
    f.get(&mut c, 4, t);
    assert!(
        !c.contains(f.grefs[1]) && !f.mapped(1),
        "1 should be purged"
    );
    for i in [0, 2, 3, 4] {
        assert!(c.contains(f.grefs[i]) && f.mapped(i), "{i} should stay");
    }
    f.get(&mut c, 2, t);
    f.get(&mut c, 5, t);
    assert!(!c.contains(f.grefs[3]) && !f.mapped(3), "3 is next");
    assert_eq!(c.len(), 4);
    let counts = c.take_counts();
    assert_eq!((counts.hits, counts.misses, counts.purged), (2, 6, 2));
}

#[test]
fn a_purge_takes_five_percent_of_the_cache_at_once() {
    let f = Fixture::new(101);
    let t = Instant::now();
    let mut c = cache(100, None, t);
    for i in 0..101 {
        f.get(&mut c, i, t);
    }
    // 5 % of 100 went to make room for the 101st.
    assert_eq!(c.len(), 96);
    for i in 0..5 {
        assert!(!f.mapped(i), "{i} is among the oldest five");
    }
    assert!((5..101).all(|i| f.mapped(i)));
}

#[test]
fn grants_held_by_in_flight_requests_survive_a_purge() {
    let f = Fixture::new(6);
    let t = Instant::now();
    let mut c = cache(3, None, t);
    // Grants 0 and 1 are in flight; 2 is idle although it was used last.
    let held: Vec<_> = (0..2).map(|i| f.get(&mut c, i, t)).collect();
    drop(f.get(&mut c, 2, t));
    let h3 = f.get(&mut c, 3, t);
    assert!(!c.contains(f.grefs[2]) && !f.mapped(2));
    assert!(c.contains(f.grefs[0]) && c.contains(f.grefs[1]) && c.contains(f.grefs[3]));
    // Everything cached is in flight: grant 4 is not kept (its request maps it alone).
    assert!(c.get(&*f.guest, f.grefs[4], t).is_none());
    assert!(!c.contains(f.grefs[4]) && !f.mapped(4));
    assert_eq!(c.len(), 3);
    // The requests finish; within 100 ms of the failed purge no new one is tried ...
    drop((held, h3));
    assert!(c.get(&*f.guest, f.grefs[5], t + secs(0.05)).is_none());
    assert!(!c.contains(f.grefs[5]) && !f.mapped(5));
    // ... and after that the least recently used idle grant goes.
    drop(f.get(&mut c, 5, t + secs(0.2)));
    assert!(c.contains(f.grefs[5]) && !c.contains(f.grefs[0]) && !f.mapped(0));
}

#[test]
fn a_grant_in_flight_is_neither_purged_nor_expired() {
    let f = Fixture::new(3);
    let t = Instant::now();
    let mut c = cache(1, Some(secs(1.0)), t);
    let m0 = f.get(&mut c, 0, t);
    assert!(c.get(&*f.guest, f.grefs[1], t).is_none());
    c.sweep(t + secs(10.0));
    assert!(c.contains(f.grefs[0]) && f.mapped(0));
    let mut page = [0u8; 16];
    m0.read(0, &mut page).unwrap();
    drop(m0);
    // Seen in use by the sweep at 10 s: idle from then on.
    c.sweep(t + secs(10.5));
    assert!(c.contains(f.grefs[0]));
    c.sweep(t + secs(11.0));
    assert!(!c.contains(f.grefs[0]) && !f.mapped(0));
}

#[test]
fn the_bound_holds_whatever_the_order_of_use() {
    let f = Fixture::new(40);
    let t = Instant::now();
    let mut c = cache(10, None, t);
    // Up to 7 grants in flight at once, as requests would hold them.
    let mut held: Vec<(usize, Arc<GrantMapping>)> = Vec::new();
    let mut x = 0x9e37_79b9_u32;
    for step in 0..2000u32 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let i = (x % 40) as usize;
        let now = t + Duration::from_millis(step.into());
        held.push((i, f.get(&mut c, i, now)));
        if held.len() > 6 {
            held.remove((x as usize / 40) % held.len());
        }
        assert!(c.len() <= 10, "step {step}: {} cached", c.len());
        let mapped = (0..40).filter(|i| f.mapped(*i)).count();
        assert_eq!(mapped, c.len(), "step {step}: only kept grants are mapped");
        assert!(held.iter().all(|(i, _)| c.contains(f.grefs[*i])));
    }
}

#[test]
fn grants_unused_for_the_limit_are_unmapped_by_a_sweep() {
    let f = Fixture::new(3);
    let t = Instant::now();
    let mut c = cache(8, Some(secs(60.0)), t);
    drop(f.get(&mut c, 0, t));
    drop(f.get(&mut c, 1, t));
    drop(f.get(&mut c, 1, t + secs(30.0)));
    c.sweep(t + secs(59.0));
    assert_eq!(c.len(), 2);
    c.sweep(t + secs(61.0));
    assert!(!c.contains(f.grefs[0]) && !f.mapped(0), "unused for 61 s");
    assert!(c.contains(f.grefs[1]) && f.mapped(1), "used 31 s ago");
    c.sweep(t + secs(91.0));
    assert_eq!(c.len(), 0);
    assert!(!f.mapped(1));
    assert_eq!(c.next_sweep(), None, "an empty cache needs no wake-up");
    assert_eq!(c.take_counts().expired, 2);
}

#[test]
fn the_sweep_runs_at_most_once_a_second() {
    let f = Fixture::new(2);
    let t = Instant::now();
    let mut c = cache(8, Some(secs(1.0)), t);
    drop(f.get(&mut c, 0, t));
    drop(f.get(&mut c, 1, t + secs(0.9)));
    c.sweep(t + secs(1.0));
    assert!(!c.contains(f.grefs[0]) && c.contains(f.grefs[1]));
    let next = c.next_sweep().unwrap();
    assert!(next >= t + secs(2.0), "next sweep a second later");
    // Grant 1 is due at 1.9 s, but the sweep waits for its second.
    c.sweep(t + secs(1.95));
    assert!(c.contains(f.grefs[1]));
    c.sweep(next);
    assert!(!c.contains(f.grefs[1]) && !f.mapped(1));
}

#[test]
fn without_an_idle_limit_grants_stay_until_cleared() {
    let f = Fixture::new(2);
    let t = Instant::now();
    let mut c = cache(8, None, t);
    drop(f.get(&mut c, 0, t));
    c.sweep(t + secs(1e6));
    assert!(c.contains(f.grefs[0]) && c.next_sweep().is_none());
    let stats = Stats::default();
    c.report(&stats);
    assert_eq!(stats.snapshot().persistent_cached, 1);
    c.clear(&stats);
    assert!(!f.mapped(0));
    assert_eq!(stats.snapshot().persistent_cached, 0);
}

#[test]
fn a_read_only_grant_is_not_cached() {
    let f = Fixture::new(1);
    let ro = f.dom.grant(BACKEND, 0, true).unwrap();
    let t = Instant::now();
    let mut c = cache(8, None, t);
    assert!(c.get(&*f.guest, ro, t).is_none());
    assert_eq!(c.len(), 0);
    assert!(!f.dom.grant_in_use(ro).unwrap());
}

#[test]
fn counters_reach_the_device_stats() {
    let f = Fixture::new(3);
    let t = Instant::now();
    let mut c = cache(2, Some(secs(5.0)), t);
    for i in [0, 1, 0, 2] {
        drop(f.get(&mut c, i, t));
    }
    let stats = Stats::default();
    c.report(&stats);
    c.sweep(t + secs(6.0));
    c.report(&stats);
    assert_eq!(c.take_counts(), CacheCounts::default());
    let s = stats.snapshot();
    assert_eq!(
        (
            s.persistent_hits,
            s.persistent_misses,
            s.persistent_purged,
            s.persistent_unused_unmapped,
            s.persistent_cached
        ),
        (1, 3, 1, 2, 0)
    );
}

#[test]
fn fixed_buffer_slots_go_to_new_grants_and_come_back_only_when_freed() {
    let f = Fixture::new(5);
    let t = Instant::now();
    let mut c = cache(3, None, t);
    c.enable_fixed(2);
    // The image queue's registrations hold a clone of each registered mapping.
    let mut registered = Vec::new();
    let mut slots = Vec::new();
    for i in 0..3 {
        let got = c.lookup(&*f.guest, f.grefs[i], t).unwrap();
        assert!(got.fresh);
        if let Some(slot) = got.slot {
            registered.push((slot, Arc::clone(&got.mapping)));
        }
        slots.push(got.slot);
    }
    assert_eq!(
        slots,
        [Some(0), Some(1), None],
        "two slots, handed out in order"
    );
    let again = c.lookup(&*f.guest, f.grefs[0], t).unwrap();
    assert_eq!((again.fresh, again.slot), (false, Some(0)));
    drop(again);
    // A registered grant held only by the cache and its registration is idle: purged to make
    // room, its slot released, still mapped through the registration until unregistered.
    let third = c.lookup(&*f.guest, f.grefs[3], t).unwrap();
    assert!(!c.contains(f.grefs[1]));
    assert_eq!(
        third.slot, None,
        "the released slot is not free before it is unregistered"
    );
    assert_eq!(c.take_released(), Some(vec![1]));
    assert!(f.mapped(1), "the registration still holds grant 1");
    registered.retain(|(slot, _)| *slot != 1);
    assert!(!f.mapped(1));
    c.slot_freed(1);
    drop(third);
    let fourth = c.lookup(&*f.guest, f.grefs[4], t).unwrap();
    assert_eq!(fourth.slot, Some(1));
    // A failed registration gives the slot back at once; clearing releases every slot.
    c.not_registered(f.grefs[4]);
    let stats = Stats::default();
    drop(fourth);
    c.clear(&stats);
    let mut released = c.take_released().unwrap();
    released.sort_unstable();
    assert_eq!(released, [0]);
    drop(registered);
}

#[test]
fn a_refused_registration_stops_handing_out_slots_and_the_registered_keep_theirs() {
    let f = Fixture::new(4);
    let t = Instant::now();
    let mut c = cache(4, None, t);
    c.enable_fixed(4);
    let first = c.lookup(&*f.guest, f.grefs[0], t).unwrap();
    let second = c.lookup(&*f.guest, f.grefs[1], t).unwrap();
    assert_eq!((first.slot, second.slot), (Some(0), Some(1)));
    assert!(c.refuse_fixed(f.grefs[1]), "the first refusal is reported");
    assert!(!c.refuse_fixed(f.grefs[1]), "and only the first");
    let third = c.lookup(&*f.guest, f.grefs[2], t).unwrap();
    assert_eq!(
        (third.fresh, third.slot),
        (true, None),
        "no slot after a refusal"
    );
    let again = c.lookup(&*f.guest, f.grefs[1], t).unwrap();
    assert_eq!(
        again.slot, None,
        "the refused grant stays kept, without a slot"
    );
    let again = c.lookup(&*f.guest, f.grefs[0], t).unwrap();
    assert_eq!(
        again.slot,
        Some(0),
        "the one registered before keeps its slot"
    );
    // Its slot, freed later, is not handed out again.
    drop((first, second, third, again));
    c.clear(&Stats::default());
    for slot in c.take_released().unwrap() {
        c.slot_freed(slot);
    }
    let fourth = c.lookup(&*f.guest, f.grefs[3], t).unwrap();
    assert_eq!(fourth.slot, None);
}
