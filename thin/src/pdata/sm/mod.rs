//! Space maps: the reference count of every data block and every metadata block, stored as
//! persistent-data stores them. Counts are held in memory ([`RefCounts`]); a commit writes
//! the bitmaps the transaction changed to new blocks, then the index and overflow trees.
//!
//! The data space map's index is a B-tree of bitmap index entries; the metadata space map's
//! is a single index block (so the metadata device holds at most 255 bitmaps, about 16 GiB).
//! The metadata space map is written last and counts its own new blocks: allocating a block
//! for a bitmap can change another bitmap, so bitmaps are placed until none is left over.

mod disk;
mod load;

pub use disk::{IndexEntry, MAX_METADATA_BITMAPS, ROOT_SIZE, SmRoot, decode_bitmap, decode_index};
pub use load::{load_data, load_metadata};

use std::collections::BTreeSet;

use super::block::Kind;
use super::btree::{self, NoRefs};
use super::refs::RefCounts;
use super::tm::Tm;
use crate::error::Result;
use disk::{encode_bitmap, encode_index};

/// Value size of the overflow count trees.
const COUNT_SIZE: usize = 4;
/// Value size of the data space map's index tree.
const INDEX_SIZE: usize = disk::INDEX_ENTRY_SIZE;

/// Where a space map's on-disk pieces are.
#[derive(Clone, Debug, Default)]
pub struct SmLayout {
    /// The index: a B-tree root (data) or the index block (metadata); 0 before the first
    /// commit of a metadata space map.
    pub index: u64,
    /// The overflow count tree's root.
    pub overflow: u64,
    /// The entry of each bitmap; `blocknr` 0 for one never written.
    pub bitmaps: Vec<IndexEntry>,
}

impl SmLayout {
    /// The layout of a new space map with nothing on disk yet: empty trees.
    pub fn create(tm: &mut Tm, data: bool) -> Result<SmLayout> {
        let index = match data {
            true => btree::empty(tm, INDEX_SIZE)?,
            false => 0,
        };
        Ok(SmLayout {
            index,
            overflow: btree::empty(tm, COUNT_SIZE)?,
            bitmaps: Vec::new(),
        })
    }

    fn root(&self, refs: &RefCounts) -> SmRoot {
        SmRoot {
            nr_blocks: refs.nr_blocks(),
            nr_allocated: refs.nr_allocated(),
            bitmap_root: self.index,
            ref_count_root: self.overflow,
        }
    }

    /// Moves the bitmaps `refs` changed to new blocks; returns which.
    fn relocate(&mut self, tm: &mut Tm, dirty: &BTreeSet<u64>) -> Result<Vec<u64>> {
        let mut moved = Vec::new();
        for &i in dirty {
            let slot = usize::try_from(i).map_err(|_| crate::Error::corrupt("bitmap index"))?;
            if self.bitmaps.len() <= slot {
                self.bitmaps.resize(slot + 1, IndexEntry::default());
            }
            let old = self.bitmaps[slot].blocknr;
            self.bitmaps[slot].blocknr = tm.new_block()?;
            if old != 0 {
                tm.dec(old)?;
            }
            moved.push(i);
        }
        Ok(moved)
    }

    /// Writes bitmap `i`, encoded from the counts of `refs`.
    fn write_bitmap(
        &mut self,
        tm: &mut Tm,
        refs: Option<&RefCounts>,
        i: u64,
    ) -> Result<IndexEntry> {
        let slot = usize::try_from(i).map_err(|_| crate::Error::corrupt("bitmap index"))?;
        let (block, mut entry) = encode_bitmap(refs.unwrap_or(&tm.refs).bitmap_counts(i));
        entry.blocknr = self.bitmaps[slot].blocknr;
        tm.write(entry.blocknr, Kind::Bitmap, block)?;
        self.bitmaps[slot] = entry;
        Ok(entry)
    }

    /// Replaces the overflow tree with one holding `entries`, the counts of 3 and more.
    fn rebuild_overflow(&mut self, tm: &mut Tm, entries: Vec<(u64, u32)>) -> Result<()> {
        btree::delete(tm, self.overflow, COUNT_SIZE, &mut NoRefs)?;
        let mut root = btree::empty(tm, COUNT_SIZE)?;
        for (block, count) in entries {
            root = btree::insert(tm, root, block, &count.to_le_bytes(), &mut NoRefs)?.0;
        }
        self.overflow = root;
        Ok(())
    }
}

/// The data space map: counts of data blocks, and where they live on the metadata device.
pub struct DataSm {
    /// The counts.
    pub refs: RefCounts,
    layout: SmLayout,
}

impl DataSm {
    /// A space map over `nr_blocks` free data blocks.
    pub fn create(tm: &mut Tm, nr_blocks: u64) -> Result<DataSm> {
        Ok(DataSm {
            refs: RefCounts::new(nr_blocks)?,
            layout: SmLayout::create(tm, true)?,
        })
    }

    /// Writes what changed into this transaction's metadata; returns the root to record.
    pub fn commit(&mut self, tm: &mut Tm) -> Result<SmRoot> {
        if self.refs.overflow_changed() {
            self.layout
                .rebuild_overflow(tm, self.refs.overflow_entries())?;
        }
        let dirty = self.refs.dirty_bitmaps().clone();
        for i in self.layout.relocate(tm, &dirty)? {
            let entry = self.layout.write_bitmap(tm, Some(&self.refs), i)?;
            let root = self.layout.index;
            self.layout.index = btree::insert(tm, root, i, &entry.encode(), &mut NoRefs)?.0;
        }
        Ok(self.layout.root(&self.refs))
    }

    /// Called once the transaction's new blocks are handed over to be written (see
    /// [`RefCounts::writing`]).
    pub fn writing(&mut self) {
        self.refs.writing();
    }

    /// Called once the transaction is durable.
    pub fn written(&mut self) {
        self.refs.written();
    }
}

/// The metadata space map's on-disk layout; its counts are the transaction manager's.
pub struct MetaSm {
    layout: SmLayout,
}

impl MetaSm {
    /// A space map whose bitmaps are written by the first commit.
    pub fn create(tm: &mut Tm) -> Result<MetaSm> {
        Ok(MetaSm {
            layout: SmLayout::create(tm, false)?,
        })
    }

    /// Writes the metadata counts, after every other change of the transaction; returns the
    /// root to record.
    pub fn commit(&mut self, tm: &mut Tm) -> Result<SmRoot> {
        if tm.refs.overflow_changed() {
            let entries = tm.refs.overflow_entries();
            self.layout.rebuild_overflow(tm, entries)?;
        }
        let old_index = self.layout.index;
        self.layout.index = tm.new_block()?;
        if old_index != 0 {
            tm.dec(old_index)?;
        }
        let mut placed = BTreeSet::new();
        loop {
            let todo: BTreeSet<u64> = tm
                .refs
                .dirty_bitmaps()
                .difference(&placed)
                .copied()
                .collect();
            if todo.is_empty() {
                break;
            }
            placed.extend(self.layout.relocate(tm, &todo)?);
        }
        for &i in &placed {
            self.layout.write_bitmap(tm, None, i)?;
        }
        let index = encode_index(&self.layout.bitmaps)?;
        tm.write(self.layout.index, Kind::Index, index)?;
        Ok(self.layout.root(&tm.refs))
    }
}
