//! Reference counts of one space map, held in memory.
//!
//! A count per block (one byte, with the rare large counts in a side table), the blocks freed
//! in the running transaction, and which on-disk bitmaps the transaction changed. A block freed
//! in a transaction is not handed out again before the commit: the last committed metadata may
//! still point at it, and reusing it would overwrite what a crash must fall back to.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use crate::error::{Error, Result};

/// Entries per on-disk bitmap block: 4080 bytes of 2-bit entries.
pub const ENTRIES_PER_BITMAP: u64 = (4096 - 16) * 4;

/// Counts stored in the one-byte table; larger ones live in the side table.
const SMALL_MAX: u8 = u8::MAX - 1;

/// Counts from which the on-disk form keeps a block's count in the overflow B-tree.
pub const OVERFLOW_FROM: u32 = 3;

/// The reference counts of a space map.
#[derive(Clone, Debug, Default)]
pub struct RefCounts {
    small: Vec<u8>,
    large: BTreeMap<u64, u32>,
    freed: HashSet<u64>,
    /// Blocks freed in the transaction being written (see [`RefCounts::writing`]): held
    /// back too, until that transaction is durable.
    freed_writing: HashSet<u64>,
    dirty: BTreeSet<u64>,
    overflow_changed: bool,
    nr_allocated: u64,
    cursor: u64,
}

impl RefCounts {
    /// `nr_blocks` blocks, all free.
    pub fn new(nr_blocks: u64) -> Result<RefCounts> {
        let mut counts = RefCounts::default();
        counts.grow(nr_blocks)?;
        Ok(counts)
    }

    /// Blocks tracked.
    pub fn nr_blocks(&self) -> u64 {
        self.small.len() as u64
    }

    /// Blocks with a count above zero.
    pub fn nr_allocated(&self) -> u64 {
        self.nr_allocated
    }

    /// Whether any block at or past `from` has a count above zero.
    pub fn any_allocated_from(&self, from: u64) -> bool {
        let from = usize::try_from(from).unwrap_or(usize::MAX);
        self.small
            .get(from..)
            .is_some_and(|s| s.iter().any(|&c| c != 0))
    }

    /// Blocks that are free and may be handed out now.
    pub fn nr_free(&self) -> u64 {
        let held = self.freed.len() + self.freed_writing.len();
        self.nr_blocks() - self.nr_allocated - held as u64
    }

    /// Tracks `nr_blocks` blocks (never fewer than now); the new ones are free.
    pub fn grow(&mut self, nr_blocks: u64) -> Result<()> {
        let len = usize::try_from(nr_blocks)
            .map_err(|_| Error::InvalidArgument(format!("{nr_blocks} blocks")))?;
        if len < self.small.len() {
            return Err(Error::InvalidArgument("a space map cannot shrink".into()));
        }
        let old = self.nr_blocks();
        self.small.resize(len, 0);
        self.dirty_range(old, nr_blocks);
        Ok(())
    }

    fn dirty_range(&mut self, from: u64, to: u64) {
        if from < to {
            let first = from / ENTRIES_PER_BITMAP;
            let last = (to - 1) / ENTRIES_PER_BITMAP;
            self.dirty.extend(first..=last);
        }
    }

    fn check(&self, block: u64) -> Result<usize> {
        usize::try_from(block)
            .ok()
            .filter(|&i| i < self.small.len())
            .ok_or_else(|| {
                Error::corrupt(format!(
                    "block {block} is past the end ({})",
                    self.nr_blocks()
                ))
            })
    }

    /// The count of `block`.
    pub fn get(&self, block: u64) -> Result<u32> {
        let at = self.check(block)?;
        Ok(self.get_at(at, block))
    }

    fn get_at(&self, at: usize, block: u64) -> u32 {
        match self.small[at] {
            c if c <= SMALL_MAX => u32::from(c),
            _ => self.large.get(&block).copied().unwrap_or(0),
        }
    }

    /// Sets the count of `block`, as loading from disk or a recount does.
    pub fn set(&mut self, block: u64, count: u32) -> Result<()> {
        let at = self.check(block)?;
        let old = self.get_at(at, block);
        if old == count {
            return Ok(());
        }
        match u8::try_from(count).ok().filter(|&c| c <= SMALL_MAX) {
            Some(c) => {
                self.small[at] = c;
                self.large.remove(&block);
            }
            None => {
                self.small[at] = u8::MAX;
                self.large.insert(block, count);
            }
        }
        self.account(block, old, count);
        Ok(())
    }

    fn account(&mut self, block: u64, old: u32, new: u32) {
        match (old, new) {
            (0, _) => {
                self.nr_allocated += 1;
                self.freed.remove(&block);
                self.freed_writing.remove(&block);
            }
            (_, 0) => {
                self.nr_allocated -= 1;
                self.freed.insert(block);
            }
            _ => {}
        }
        if old.max(new) >= OVERFLOW_FROM {
            self.overflow_changed = true;
        }
        self.dirty.insert(block / ENTRIES_PER_BITMAP);
    }

    /// Adds one reference to `block`.
    pub fn inc(&mut self, block: u64) -> Result<u32> {
        let count = self
            .get(block)?
            .checked_add(1)
            .ok_or_else(|| Error::corrupt(format!("reference count of block {block} overflows")))?;
        self.set(block, count)?;
        Ok(count)
    }

    /// Drops one reference to `block`; returns the new count.
    pub fn dec(&mut self, block: u64) -> Result<u32> {
        let count = self
            .get(block)?
            .checked_sub(1)
            .ok_or_else(|| Error::corrupt(format!("block {block} is freed twice")))?;
        self.set(block, count)?;
        Ok(count)
    }

    /// Finds a block that is free and was not freed in this transaction, gives it a count of
    /// one and returns it, or `None` if there is none.
    pub fn alloc(&mut self) -> Option<u64> {
        let start = usize::try_from(self.cursor)
            .unwrap_or(0)
            .min(self.small.len());
        let found = self.find_free(start, self.small.len())?;
        let block = found as u64;
        self.cursor = block + 1;
        self.set(block, 1).ok()?;
        Some(block)
    }

    /// Drops the single reference of a block that was handed out and never referenced by any
    /// metadata, committed or not: it may be handed out again at once instead of after the
    /// commit.
    pub fn unalloc(&mut self, block: u64) -> Result<()> {
        if self.get(block)? != 1 {
            return Err(Error::corrupt(format!(
                "block {block} given back while not held exactly once"
            )));
        }
        self.set(block, 0)?;
        self.freed.remove(&block);
        Ok(())
    }

    /// Gives a free block that is not held back until the commit a count of one (takes back a
    /// block given back with [`RefCounts::unalloc`]).
    pub fn claim(&mut self, block: u64) -> Result<()> {
        if self.get(block)? != 0 || self.held_back(block) {
            return Err(Error::InvalidArgument(format!("block {block} is not free")));
        }
        self.set(block, 1)
    }

    fn find_free(&self, start: usize, end: usize) -> Option<usize> {
        let usable = |i: &usize| self.small[*i] == 0 && !self.held_back(*i as u64);
        (start..end)
            .find(usable)
            .or_else(|| (0..start).find(usable))
    }

    /// Every block with a count of [`OVERFLOW_FROM`] or more, in order, with its count.
    pub fn overflow_entries(&self) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        for (i, &c) in self.small.iter().enumerate() {
            if u32::from(c) >= OVERFLOW_FROM {
                let block = i as u64;
                out.push((block, self.get_at(i, block)));
            }
        }
        out
    }

    /// Whether a count at or above [`OVERFLOW_FROM`] appeared, changed or went away since the
    /// last [`RefCounts::committed`].
    pub fn overflow_changed(&self) -> bool {
        self.overflow_changed
    }

    /// Bitmaps changed since the last commit.
    pub fn dirty_bitmaps(&self) -> &BTreeSet<u64> {
        &self.dirty
    }

    /// The counts of the blocks covered by bitmap `index`, past the end cut off.
    pub fn bitmap_counts(&self, index: u64) -> impl Iterator<Item = u32> + '_ {
        let start = index.saturating_mul(ENTRIES_PER_BITMAP);
        let end = start
            .saturating_add(ENTRIES_PER_BITMAP)
            .min(self.nr_blocks());
        (start..end).map(move |b| self.get(b).unwrap_or(0))
    }

    /// Number of bitmaps the on-disk form needs.
    pub fn nr_bitmaps(&self) -> u64 {
        self.nr_blocks().div_ceil(ENTRIES_PER_BITMAP)
    }

    /// Whether `block` was freed by a transaction not yet durable.
    fn held_back(&self, block: u64) -> bool {
        self.freed.contains(&block) || self.freed_writing.contains(&block)
    }

    /// Called once the transaction's changes were written into new blocks (the commit's
    /// first step): what changes from now on belongs to the next transaction, and the
    /// blocks this one freed stay held back until [`RefCounts::written`].
    pub fn writing(&mut self) {
        let freed = std::mem::take(&mut self.freed);
        self.freed_writing.extend(freed);
        self.dirty.clear();
        self.overflow_changed = false;
    }

    /// Called once the transaction being written is durable: the blocks it freed become
    /// usable.
    pub fn written(&mut self) {
        self.freed_writing.clear();
    }

    /// Called once the transaction is committed: freed blocks become usable, nothing is dirty.
    pub fn committed(&mut self) {
        self.writing();
        self.written();
    }

    /// Forgets what changed, as after loading the committed state.
    pub fn loaded(&mut self) {
        self.committed();
    }
}

#[cfg(test)]
mod tests;
