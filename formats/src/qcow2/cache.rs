//! A least-recently-used cache of one-cluster metadata tables (L2 tables, refcount blocks),
//! bounded in bytes. Entries may carry a dirty byte range that must be written back before
//! they are dropped; the cache hands evicted dirty entries back to its owner for that, and
//! tells it beforehand when an insertion would evict one (so it can write back in order).

use std::collections::{BTreeMap, HashMap, HashSet};

struct Slot {
    data: Vec<u8>,
    tick: u64,
    dirty: Option<(usize, usize)>,
}

/// A table evicted with unwritten changes: write `data[range]` at `offset + range.start`.
pub(crate) struct Evicted {
    /// File offset of the table.
    pub offset: u64,
    /// The table's bytes.
    pub data: Vec<u8>,
    /// The dirty byte range.
    pub range: (usize, usize),
}

/// LRU table cache keyed by file offset.
pub(crate) struct TableCache {
    capacity: usize,
    used: usize,
    tick: u64,
    slots: HashMap<u64, Slot>,
    order: BTreeMap<u64, u64>,
}

impl TableCache {
    /// A cache holding up to `capacity` bytes (always at least one table).
    pub fn new(capacity: usize) -> TableCache {
        TableCache {
            capacity,
            used: 0,
            tick: 0,
            slots: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    /// The table at `offset`, marked most recently used.
    pub fn get(&mut self, offset: u64) -> Option<&mut Vec<u8>> {
        self.tick += 1;
        let tick = self.tick;
        let slot = self.slots.get_mut(&offset)?;
        self.order.remove(&slot.tick);
        slot.tick = tick;
        self.order.insert(tick, offset);
        Some(&mut slot.data)
    }

    /// True if the table at `offset` is cached.
    pub fn contains(&self, offset: u64) -> bool {
        self.slots.contains_key(&offset)
    }

    /// Adds a table; returns the dirty tables evicted to make room (never the new one). With
    /// `keep`, only clean tables whose offset is not in `keep` are evicted (the cache may grow
    /// past its capacity).
    pub fn insert(
        &mut self,
        offset: u64,
        data: Vec<u8>,
        keep: Option<&HashSet<u64>>,
    ) -> Vec<Evicted> {
        if let Some(old) = self.remove(offset) {
            debug_assert!(old.dirty.is_none(), "replacing a dirty table");
        }
        self.tick += 1;
        self.used += data.len();
        self.order.insert(self.tick, offset);
        self.slots.insert(
            offset,
            Slot {
                data,
                tick: self.tick,
                dirty: None,
            },
        );
        let mut evicted = Vec::new();
        while self.used > self.capacity {
            let Some(victim) = self.victim(offset, keep) else {
                break;
            };
            if let Some(slot) = self.remove(victim) {
                if let Some(range) = slot.dirty {
                    evicted.push(Evicted {
                        offset: victim,
                        data: slot.data,
                        range,
                    });
                }
            }
        }
        evicted
    }

    /// The least recently used table other than `new`; with `keep`, the least recently used
    /// clean one outside `keep`.
    fn victim(&self, new: u64, keep: Option<&HashSet<u64>>) -> Option<u64> {
        let clean = |o: &u64| self.slots.get(o).is_some_and(|s| s.dirty.is_none());
        let mut oldest_first = self.order.values().copied().filter(|&o| o != new);
        match keep {
            None => oldest_first.next(),
            Some(keep) => oldest_first.find(|o| clean(o) && !keep.contains(o)),
        }
    }

    fn remove(&mut self, offset: u64) -> Option<Slot> {
        let slot = self.slots.remove(&offset)?;
        self.order.remove(&slot.tick);
        self.used -= slot.data.len();
        Some(slot)
    }

    /// Records that bytes `[start, end)` of the table at `offset` changed.
    pub fn mark_dirty(&mut self, offset: u64, start: usize, end: usize) {
        if let Some(slot) = self.slots.get_mut(&offset) {
            slot.dirty = Some(match slot.dirty {
                None => (start, end),
                Some((s, e)) => (s.min(start), e.max(end)),
            });
        }
    }

    /// True if adding a table of `len` bytes would evict one with unwritten changes.
    pub fn would_evict_dirty(&self, len: usize) -> bool {
        let mut used = self.used + len;
        for offset in self.order.values() {
            if used <= self.capacity {
                return false;
            }
            let Some(slot) = self.slots.get(offset) else {
                continue;
            };
            if slot.dirty.is_some() {
                return true;
            }
            used -= slot.data.len();
        }
        false
    }

    /// Takes every dirty range (marking them clean), in file offset order.
    pub fn take_dirty(&mut self) -> Vec<(u64, Vec<u8>)> {
        self.take_dirty_if(|_| true)
    }

    /// Takes the dirty ranges of the tables whose offset passes `pick` (marking them clean),
    /// in file offset order.
    pub fn take_dirty_if(&mut self, pick: impl Fn(u64) -> bool) -> Vec<(u64, Vec<u8>)> {
        let mut out: Vec<(u64, Vec<u8>)> = self
            .slots
            .iter_mut()
            .filter(|(offset, _)| pick(**offset))
            .filter_map(|(&offset, slot)| {
                let (s, e) = slot.dirty.take()?;
                Some((offset + s as u64, slot.data.get(s..e)?.to_vec()))
            })
            .collect();
        out.sort_by_key(|(offset, _)| *offset);
        out
    }

    /// True if some table has unwritten changes.
    pub fn has_dirty(&self) -> bool {
        self.slots.values().any(|s| s.dirty.is_some())
    }

    /// Drops the table at `offset` (it must be clean).
    pub fn forget(&mut self, offset: u64) {
        self.remove(offset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_recently_used_table_is_evicted_first_and_dirty_ones_are_returned() {
        let mut c = TableCache::new(2048);
        assert!(c.insert(0, vec![0; 1024], None).is_empty());
        assert!(c.insert(1024, vec![1; 1024], None).is_empty());
        c.mark_dirty(0, 8, 16);
        assert!(c.get(1024).is_some());
        assert!(c.get(0).is_some());
        let evicted = c.insert(2048, vec![2; 1024], None);
        assert!(
            evicted.is_empty(),
            "the clean table 1024 was least recently used"
        );
        assert!(!c.contains(1024));
        assert!(c.get(2048).is_some());
        let evicted = c.insert(4096, vec![3; 1024], None);
        assert_eq!(evicted.len(), 1);
        assert_eq!((evicted[0].offset, evicted[0].range), (0, (8, 16)));
    }

    #[test]
    fn would_evict_dirty_looks_only_at_the_tables_that_would_go() {
        let mut c = TableCache::new(2048);
        c.insert(0, vec![0; 1024], None);
        c.insert(1024, vec![0; 1024], None);
        assert!(!c.would_evict_dirty(0));
        c.mark_dirty(1024, 0, 8);
        assert!(!c.would_evict_dirty(1024), "table 0 (clean) goes first");
        assert!(c.would_evict_dirty(2048), "both would go");
        c.mark_dirty(0, 0, 8);
        assert!(c.would_evict_dirty(1));
        assert_eq!(c.take_dirty_if(|o| o == 1024), vec![(1024, vec![0; 8])]);
        assert!(c.has_dirty());
    }

    #[test]
    fn keeping_tables_evicts_only_clean_ones_outside_the_kept_set_and_may_overfill() {
        let none = HashSet::new();
        let keep = Some(&none);
        let mut c = TableCache::new(2048);
        c.insert(0, vec![0; 1024], None);
        c.insert(1024, vec![0; 1024], None);
        c.mark_dirty(0, 0, 8);
        assert!(c.insert(2048, vec![0; 1024], keep).is_empty());
        assert!(c.contains(0), "the dirty table stays");
        assert!(!c.contains(1024), "the clean one made room");
        assert!(c.insert(4096, vec![0; 1024], keep).is_empty());
        assert!(c.contains(0) && c.contains(4096) && !c.contains(2048));
        c.mark_dirty(4096, 0, 8);
        assert!(c.insert(8192, vec![0; 1024], keep).is_empty());
        assert!(
            c.contains(0) && c.contains(4096) && c.contains(8192),
            "over capacity"
        );
        let evicted = c.insert(16384, vec![0; 1024], None);
        let offsets: Vec<u64> = evicted.iter().map(|e| e.offset).collect();
        assert_eq!(offsets, vec![0, 4096], "written once the write-back ended");
        let pinned = HashSet::from([8192]);
        assert!(c.insert(32768, vec![0; 1024], Some(&pinned)).is_empty());
        assert!(c.contains(8192), "a clean table being written stays");
        assert!(!c.contains(16384), "another clean one made room");
    }

    #[test]
    fn a_table_larger_than_the_capacity_is_still_held() {
        let mut c = TableCache::new(100);
        c.insert(0, vec![0; 4096], None);
        assert!(c.get(0).is_some());
        c.insert(4096, vec![0; 4096], None);
        assert!(!c.contains(0));
        assert!(c.contains(4096));
    }

    #[test]
    fn take_dirty_returns_merged_ranges_once() {
        let mut c = TableCache::new(1 << 20);
        c.insert(512, (0..=255).collect(), None);
        c.mark_dirty(512, 10, 12);
        c.mark_dirty(512, 4, 6);
        assert!(c.has_dirty());
        assert_eq!(c.take_dirty(), vec![(516, (4..12).collect::<Vec<u8>>())]);
        assert!(!c.has_dirty());
        assert!(c.take_dirty().is_empty());
    }
}
