//! Both space maps: their structure (index, bitmaps, overflow trees) and their counts against
//! the recount made while walking the trees.

use super::counts::{count_distinct, recount};
use super::trees::Tree;
use super::{Area, Checker, describe};
use crate::meta::MAX_DATA_BLOCKS;
use crate::pdata::Kind;
use crate::pdata::block;
use crate::pdata::refs::{ENTRIES_PER_BITMAP, OVERFLOW_FROM};
use crate::pdata::sm::{IndexEntry, MAX_METADATA_BITMAPS, SmRoot, decode_bitmap, decode_index};

/// Which space map: its overflow slot and its problem areas.
#[derive(Clone, Copy)]
pub(super) struct Which {
    pub(super) slot: usize,
    pub(super) area: Area,
    pub(super) count: Area,
    pub(super) leak: Area,
    pub(super) name: &'static str,
}

pub(super) const DATA: Which = Which {
    slot: 0,
    area: Area::DataSpaceMap,
    count: Area::DataCount,
    leak: Area::DataLeak,
    name: "data",
};

pub(super) const METADATA: Which = Which {
    slot: 1,
    area: Area::MetadataSpaceMap,
    count: Area::MetadataCount,
    leak: Area::MetadataLeak,
    name: "metadata",
};

/// The bitmap at index `i` of a space map of `nr_blocks` blocks.
struct BitmapAt {
    which: Which,
    i: u64,
    first: u64,
    len: usize,
    entry: IndexEntry,
}

impl BitmapAt {
    fn new(which: Which, nr_blocks: u64, i: u64, entry: IndexEntry) -> BitmapAt {
        let first = i.saturating_mul(ENTRIES_PER_BITMAP);
        let len = nr_blocks.saturating_sub(first).min(ENTRIES_PER_BITMAP);
        BitmapAt {
            which,
            i,
            first,
            len: usize::try_from(len).unwrap_or(0),
            entry,
        }
    }
}

impl Checker {
    /// Checks the data space map, and its counts against the mappings.
    pub(super) fn check_data_sm(&mut self) {
        let root = self.sb.data_sm;
        if root.nr_blocks > MAX_DATA_BLOCKS {
            let message = format!(
                "covers {} blocks, a pool has at most {MAX_DATA_BLOCKS}",
                root.nr_blocks
            );
            self.problem(DATA.area, Some(0), None, message);
        }
        self.walk(Tree::DataIndex, root.bitmap_root);
        self.walk(Tree::Overflow(DATA.slot), root.ref_count_root);
        let entries = self.index_entries(root);
        self.data_refs.sort_unstable();
        for (i, entry) in entries {
            let at = BitmapAt::new(DATA, root.nr_blocks, i, entry);
            let Some(counts) = self.bitmap_counts(&at) else {
                continue;
            };
            let recount = recount(&self.data_refs, at.first, at.len);
            self.compare_counts(DATA, at.first, &counts, &recount);
        }
        self.report.totals.data_blocks_used = count_distinct(&self.data_refs);
        self.check_overflow_used(DATA, root);
    }

    /// The data space map's index entries, checked to be exactly the bitmaps `0..n`.
    fn index_entries(&mut self, root: SmRoot) -> Vec<(u64, IndexEntry)> {
        let n = root.nr_blocks.div_ceil(ENTRIES_PER_BITMAP);
        let entries = std::mem::take(&mut self.data_index);
        let mut expected = 0u64;
        let mut kept = Vec::new();
        for (key, entry) in entries {
            if key >= n || key < expected {
                let message = format!("index has an entry for bitmap {key}, of 0..{n}");
                self.problem(DATA.area, None, None, message);
                continue;
            }
            if key > expected {
                let message = format!("index has no entry for bitmaps {expected}..{key}");
                self.problem(DATA.area, None, None, message);
            }
            expected = key + 1;
            kept.push((key, entry));
        }
        if expected < n {
            let message = format!("index has no entry for bitmaps {expected}..{n}");
            self.problem(DATA.area, None, None, message);
        }
        kept
    }

    /// Checks the metadata space map's structure; returns the stored count of every block.
    pub(super) fn check_metadata_sm(&mut self) -> Vec<u32> {
        let root = self.sb.metadata_sm;
        let nr_dev = self.dev.nr_blocks();
        if root.nr_blocks != self.sb.metadata_nr_blocks {
            let message = format!(
                "covers {} blocks, the superblock records {} metadata blocks",
                root.nr_blocks, self.sb.metadata_nr_blocks
            );
            self.problem(METADATA.area, Some(0), None, message);
        }
        let nr_blocks = root.nr_blocks.min(nr_dev);
        let n = nr_blocks.div_ceil(ENTRIES_PER_BITMAP);
        self.walk(Tree::Overflow(METADATA.slot), root.ref_count_root);
        let mut stored = Vec::new();
        for (i, entry) in self.metadata_index(root.bitmap_root, n) {
            let at = BitmapAt::new(METADATA, nr_blocks, i, entry);
            if let Some(counts) = self.bitmap_counts(&at) {
                let first = usize::try_from(at.first).unwrap_or(usize::MAX);
                let end = first.saturating_add(counts.len());
                if stored.len() < end {
                    stored.resize(end, 0);
                }
                stored[first..end].copy_from_slice(&counts);
            }
        }
        self.check_overflow_used(METADATA, root);
        stored
    }

    /// The metadata space map's index block and its first `n` entries.
    fn metadata_index(&mut self, location: u64, n: u64) -> Vec<(u64, IndexEntry)> {
        if !self.reference(location, "the metadata space map", METADATA.area) {
            return Vec::new();
        }
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        if n > MAX_METADATA_BITMAPS {
            let message = format!("needs {n} bitmaps, its index holds {MAX_METADATA_BITMAPS}");
            self.problem(METADATA.area, Some(location), None, message);
        }
        let read = self.dev.read_raw(location).and_then(|b| {
            block::verify(&b, Kind::Index, location)?;
            decode_index(&b, n.min(MAX_METADATA_BITMAPS))
        });
        match read {
            Ok(entries) => (0u64..).zip(entries).collect(),
            Err(e) => {
                let message = format!("index block: {}", describe(e));
                self.problem(METADATA.area, Some(location), None, message);
                Vec::new()
            }
        }
    }

    /// The counts bitmap `at` stores (overflow counts looked up), after checking the block.
    /// The index entry's `nr_free` and the root's `nr_allocated` are hints that the loaders
    /// recompute and neither thin_check looks at (thin_restore 0.9 writes them one ahead for
    /// the metadata and without the tail past the end for the data): not checked.
    fn bitmap_counts(&mut self, at: &BitmapAt) -> Option<Vec<u32>> {
        let (which, location) = (at.which, at.entry.blocknr);
        let what = format!("bitmap {} of the {} space map", at.i, which.name);
        if !self.reference(location, &what, which.area) {
            return None;
        }
        if self.refs_of(location) > 1 {
            // A bitmap has one holder; reading it again for another entry would also let a
            // small metadata device make the check decode the same block millions of times.
            let message = format!("{what}: block {location} is referenced again");
            self.problem(which.area, Some(location), None, message);
            return None;
        }
        let raw = self.dev.read_raw(location).and_then(|b| {
            block::verify(&b, Kind::Bitmap, location)?;
            Ok(b)
        });
        let raw = match raw {
            Ok(raw) => raw,
            Err(e) => {
                let message = format!("{what}: {}", describe(e));
                self.problem(which.area, Some(location), None, message);
                return None;
            }
        };
        let small = decode_bitmap(&raw, at.len);
        let mut counts = Vec::with_capacity(small.len());
        for (block, value) in (at.first..).zip(small) {
            counts.push(match value {
                3 => self.overflow_count(which, location, block),
                v => u32::from(v),
            });
        }
        Some(counts)
    }

    /// The overflow count of `block`, whose entry in bitmap `location` is overflowed.
    fn overflow_count(&mut self, which: Which, location: u64, block: u64) -> u32 {
        match self.overflow[which.slot].remove(&block) {
            Some(count) if count >= OVERFLOW_FROM => count,
            Some(count) => {
                let message = format!(
                    "overflow tree holds a count of {count} for {} block {block}, below \
                     {OVERFLOW_FROM}",
                    which.name
                );
                self.problem(which.area, None, None, message);
                count
            }
            None => {
                let message = format!(
                    "{} block {block} is marked overflowed but has no overflow count",
                    which.name
                );
                self.problem(which.area, Some(location), None, message);
                OVERFLOW_FROM
            }
        }
    }

    /// Reports the overflow counts that no overflowed bitmap entry used.
    fn check_overflow_used(&mut self, which: Which, root: SmRoot) {
        let left = std::mem::take(&mut self.overflow[which.slot]);
        for (block, count) in left {
            let message = format!(
                "overflow tree holds a count of {count} for {} block {block}, whose bitmap \
                 entry is not overflowed (or past the end of {} blocks)",
                which.name, root.nr_blocks
            );
            self.problem(which.area, None, None, message);
        }
    }
}
