//! Persistent grants (`feature-persistent`): pages the frontend reuses for every request stay
//! mapped across requests, so most requests need no map or unmap at all.
//!
//! Bounded per ring the way Linux blkback has done it since 2018 (`max_persistent_grants`,
//! 1056 by default): when a new grant meets a full cache, a batch of the least recently used
//! grants (5 % of the cache, at least one) is unmapped, and grants nobody used for
//! `unused_after` (Linux's `persistent_grant_unused_seconds`, 60 s) are unmapped by a sweep the
//! ring loop runs at most once a second, so idle disks give a guest's grant table back.
//!
//! A grant is in use while an in-flight request's `GuestBuf` holds a clone of its `Arc`; an
//! entry in use is never purged nor expired, so no mapping is unmapped under the kernel's I/O
//! (and once removed from the cache, a mapping is unmapped only when its last holder drops it).

use foldhash::{HashMap, HashMapExt};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustbk_grant::{Access, GrantMapping, GrantRef, GuestHandle};

use crate::Stats;

/// Share of the cache unmapped by one purge, in percent (Linux's `LRU_PERCENT_CLEAN`).
const PURGE_PERCENT: usize = 5;
/// After a purge found every grant in use, no new attempt for this long (Linux's
/// `LRU_INTERVAL`), so a cache smaller than the ring's in-flight pages is not scanned per miss.
const PURGE_RETRY: Duration = Duration::from_millis(100);
/// The idle sweep runs at most this often.
pub(super) const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Limits of one ring's cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct CacheLimits {
    /// Most grants kept mapped (at least 1).
    pub max: usize,
    /// Unmap grants unused for this long; `None` keeps them until the ring goes away.
    pub unused_after: Option<Duration>,
}

/// One cached grant.
struct Entry {
    mapping: Arc<GrantMapping>,
    /// The image queue's fixed buffer slot the page is registered at (the registration holds
    /// a clone of `mapping`).
    slot: Option<u32>,
    /// Recency for the LRU order: the cache's use counter at the last lookup.
    stamp: u64,
    /// When it was last looked up (or last seen in use by a sweep).
    last_used: Instant,
}

impl Entry {
    /// Held by an in-flight request besides the cache (and its fixed buffer registration).
    fn in_use(&self) -> bool {
        Arc::strong_count(&self.mapping) > 1 + usize::from(self.slot.is_some())
    }
}

/// A kept grant as a request sees it.
pub(super) struct Cached {
    /// The mapping.
    pub mapping: Arc<GrantMapping>,
    /// Its fixed buffer slot, if the page is (to be) registered.
    pub slot: Option<u32>,
    /// Mapped by this lookup: the caller registers it at `slot`.
    pub fresh: bool,
}

/// Counter changes not yet added to the device's [`Stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct CacheCounts {
    /// Lookups found in the cache.
    pub hits: u64,
    /// Lookups not found in the cache.
    pub misses: u64,
    /// Grants unmapped to make room.
    pub purged: u64,
    /// Grants unmapped after going unused for too long.
    pub expired: u64,
    /// Grants added to the cache.
    pub added: u64,
}

/// Persistent mappings of one ring.
pub(super) struct GrantCache {
    entries: HashMap<GrantRef, Entry>,
    limits: CacheLimits,
    next_stamp: u64,
    /// No purge before this instant: the last one found every grant in use.
    purge_blocked_until: Option<Instant>,
    /// The idle sweep does nothing before this instant.
    next_sweep: Instant,
    counts: CacheCounts,
    /// Reused by purges: (stamp, grant) of the entries not in use.
    scratch: Vec<(u64, GrantRef)>,
    /// Fixed buffer slots no kept grant holds (empty without fixed buffers).
    free_slots: Vec<u32>,
    /// Slots of grants that left the cache: the caller unregisters them, then gives them back
    /// with [`GrantCache::slot_freed`].
    released: Vec<u32>,
    /// The kernel refused to register a kept page: no grant gets a slot any more.
    fixed_refused: bool,
}

impl GrantCache {
    /// An empty cache; `now` starts the sweep clock.
    pub fn new(limits: CacheLimits, now: Instant) -> Self {
        GrantCache {
            entries: HashMap::new(),
            limits: CacheLimits {
                max: limits.max.max(1),
                ..limits
            },
            next_stamp: 0,
            purge_blocked_until: None,
            next_sweep: now + limits.unused_after.unwrap_or(SWEEP_INTERVAL),
            counts: CacheCounts::default(),
            scratch: Vec::new(),
            free_slots: Vec::new(),
            released: Vec::new(),
            fixed_refused: false,
        }
    }

    /// Gives new grants fixed buffer slots `0..slots` of the image queue while any is free.
    pub fn enable_fixed(&mut self, slots: u32) {
        self.free_slots = (0..slots).rev().collect();
    }

    /// The slots of grants that left the cache since the last call: unregister each, then
    /// give it back with [`GrantCache::slot_freed`].
    pub fn take_released(&mut self) -> Option<Vec<u32>> {
        (!self.released.is_empty()).then(|| std::mem::take(&mut self.released))
    }

    /// `slot` is free again (unregistered, or its registration failed).
    pub fn slot_freed(&mut self, slot: u32) {
        if !self.fixed_refused {
            self.free_slots.push(slot);
        }
    }

    /// The fresh grant `gref` could not be registered at its slot: it stays kept, unregistered.
    pub fn not_registered(&mut self, gref: GrantRef) {
        if let Some(slot) = self.entries.get_mut(&gref).and_then(|e| e.slot.take()) {
            self.slot_freed(slot);
        }
    }

    /// The kernel refused to register the fresh grant `gref`'s page: it stays kept,
    /// unregistered, and no grant gets a slot from now on (a kernel that refuses one mapped
    /// grant refuses them all, one failed system call per new grant). Pages registered before
    /// keep their slots until they leave the cache. True the first time.
    pub fn refuse_fixed(&mut self, gref: GrantRef) -> bool {
        let first = !self.fixed_refused;
        self.fixed_refused = true;
        self.free_slots.clear();
        self.not_registered(gref);
        first
    }

    fn forget(released: &mut Vec<u32>, entry: &Entry) {
        if let Some(slot) = entry.slot {
            released.push(slot);
        }
    }

    /// The kept mapping of `gref` for a request starting at `now`, mapping it (writable) now
    /// if there is room, made by purging if the cache is full. `None` when no room can be made
    /// (every kept grant is in flight) or the grant cannot be mapped writable (a read-only or a
    /// revoked grant): the caller then maps the request's pages for that request alone.
    #[cfg(test)]
    pub fn get(
        &mut self,
        guest: &dyn GuestHandle,
        gref: GrantRef,
        now: Instant,
    ) -> Option<Arc<GrantMapping>> {
        self.lookup(guest, gref, now).map(|c| c.mapping)
    }

    /// As [`GrantCache::get`], with the grant's fixed buffer slot.
    pub fn lookup(
        &mut self,
        guest: &dyn GuestHandle,
        gref: GrantRef,
        now: Instant,
    ) -> Option<Cached> {
        self.next_stamp += 1;
        if let Some(e) = self.entries.get_mut(&gref) {
            e.stamp = self.next_stamp;
            e.last_used = now;
            self.counts.hits += 1;
            return Some(Cached {
                mapping: Arc::clone(&e.mapping),
                slot: e.slot,
                fresh: false,
            });
        }
        self.counts.misses += 1;
        if self.entries.len() >= self.limits.max && !self.purge(now) {
            return None;
        }
        let mapping = Arc::new(guest.map_grants(&[gref], Access::ReadWrite).ok()?);
        let slot = self.free_slots.pop();
        let entry = Entry {
            mapping: Arc::clone(&mapping),
            slot,
            stamp: self.next_stamp,
            last_used: now,
        };
        self.entries.insert(gref, entry);
        self.counts.added += 1;
        Some(Cached {
            mapping,
            slot,
            fresh: true,
        })
    }

    /// Unmaps the least recently used batch of grants no request holds; false if none could go.
    fn purge(&mut self, now: Instant) -> bool {
        if self.purge_blocked_until.is_some_and(|t| now < t) {
            return false;
        }
        self.scratch.clear();
        let idle = self.entries.iter().filter(|(_, e)| !e.in_use());
        self.scratch.extend(idle.map(|(g, e)| (e.stamp, *g)));
        if self.scratch.is_empty() {
            self.purge_blocked_until = Some(now + PURGE_RETRY);
            return false;
        }
        self.purge_blocked_until = None;
        let batch = (self.limits.max * PURGE_PERCENT / 100).clamp(1, self.scratch.len());
        if batch < self.scratch.len() {
            self.scratch.select_nth_unstable(batch - 1);
        }
        for (_, gref) in self.scratch.drain(..batch) {
            if let Some(e) = self.entries.remove(&gref) {
                Self::forget(&mut self.released, &e);
            }
        }
        self.counts.purged += batch as u64;
        true
    }

    /// Unmaps grants unused for `unused_after`, if a sweep is due at `now` (cheap otherwise).
    /// Grants in use count as used now.
    pub fn sweep(&mut self, now: Instant) {
        let Some(unused_after) = self.limits.unused_after else {
            return;
        };
        if now < self.next_sweep {
            return;
        }
        let before = self.entries.len();
        let mut earliest = now + unused_after;
        let released = &mut self.released;
        self.entries.retain(|_, e| {
            if e.in_use() {
                e.last_used = now;
                return true;
            }
            let expires = e.last_used + unused_after;
            earliest = earliest.min(expires);
            let keep = expires > now;
            if !keep {
                Self::forget(released, e);
            }
            keep
        });
        self.counts.expired += (before - self.entries.len()) as u64;
        self.next_sweep = earliest.max(now + SWEEP_INTERVAL);
    }

    /// When the ring loop should wake up for the next sweep; `None` when there is nothing to
    /// expire (an empty cache, or no idle limit).
    pub fn next_sweep(&self) -> Option<Instant> {
        (self.limits.unused_after.is_some() && !self.entries.is_empty()).then_some(self.next_sweep)
    }

    /// Number of grants kept mapped.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether `gref` is kept mapped.
    #[cfg(test)]
    pub fn contains(&self, gref: GrantRef) -> bool {
        self.entries.contains_key(&gref)
    }

    /// Takes the counter changes since the last call.
    pub fn take_counts(&mut self) -> CacheCounts {
        std::mem::take(&mut self.counts)
    }

    /// Adds the counter changes since the last call to `stats`; nothing to do most calls.
    pub fn report(&mut self, stats: &Stats) {
        if self.counts == CacheCounts::default() {
            return;
        }
        let c = self.take_counts();
        Stats::add(&stats.persistent_hits, c.hits);
        Stats::add(&stats.persistent_misses, c.misses);
        Stats::add(&stats.persistent_purged, c.purged);
        Stats::add(&stats.persistent_unused_unmapped, c.expired);
        Stats::add(&stats.persistent_cached, c.added);
        Stats::sub(&stats.persistent_cached, c.purged + c.expired);
    }

    /// Drops every grant (the ring is going away: nothing is in flight any more) and reports.
    /// Registered slots go to [`GrantCache::take_released`].
    pub fn clear(&mut self, stats: &Stats) {
        self.report(stats);
        Stats::sub(&stats.persistent_cached, self.entries.len() as u64);
        for (_, e) in self.entries.drain() {
            Self::forget(&mut self.released, &e);
        }
    }
}

#[cfg(test)]
#[path = "persistent_tests.rs"]
mod tests;
