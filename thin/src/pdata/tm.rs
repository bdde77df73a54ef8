//! The transaction manager: copy-on-write of metadata blocks between commits.
//!
//! A block the last commit references is never written in place. Changing it means *shadowing*
//! it: copying it to a block allocated in this transaction, which is then written freely until
//! the commit. A block shared by several parents (its count is above one) is shadowed even if
//! it was allocated in this transaction, and the copy's children gain a reference each.
//! New contents live in memory until [`Tm::begin_writing`] hands them over as a [`Batch`] to
//! write, which may run while the next transaction goes on; the superblock, written last by the
//! caller, switches from the old tree to the new one in one block write.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use super::block::{self, Block, Kind};
use super::dev::MetaDev;
use super::refs::RefCounts;
use crate::error::{Error, Result};

/// Clean blocks kept in memory before the cache is emptied.
const CACHE_BLOCKS: usize = 1 << 16;
/// Most blocks written in one system call by a commit (1 MiB).
const MAX_RUN: usize = 256;

/// The transaction manager of one pool's metadata device.
pub struct Tm {
    dev: MetaDev,
    /// The metadata space map's counts.
    pub refs: RefCounts,
    /// Blocks read or written back, with the type they were checked or written as.
    clean: HashMap<u64, (Kind, Block)>,
    dirty: HashMap<u64, (Kind, Block)>,
    /// The blocks of the transaction being written (sealed), read from here until
    /// [`Tm::written`].
    writing: Arc<BTreeMap<u64, (Kind, Block)>>,
    shadows: HashSet<u64>,
    /// Fault injection for the crash tests: commit without syncing the new blocks before the
    /// superblock is written, so a crash can leave a superblock pointing at unwritten blocks.
    #[cfg(test)]
    pub(crate) unordered_commit: bool,
}

impl Tm {
    /// A manager for `dev` whose blocks are counted by `refs`.
    pub fn new(dev: MetaDev, refs: RefCounts) -> Tm {
        Tm {
            dev,
            refs,
            clean: HashMap::new(),
            dirty: HashMap::new(),
            writing: Arc::default(),
            shadows: HashSet::new(),
            #[cfg(test)]
            unordered_commit: false,
        }
    }

    /// The metadata device.
    pub fn dev(&self) -> &MetaDev {
        &self.dev
    }

    /// The metadata device, to grow it.
    pub fn dev_mut(&mut self) -> &mut MetaDev {
        &mut self.dev
    }

    /// The contents of block `b`, checked as a `kind` block.
    pub fn read(&mut self, b: u64, kind: Kind) -> Result<&[u8; super::BLOCK_SIZE]> {
        let cached = |tm: &Tm| {
            tm.dirty.contains_key(&b) || tm.writing.contains_key(&b) || tm.clean.contains_key(&b)
        };
        if !cached(self) {
            let block = self.dev.read(b, kind)?;
            if self.clean.len() >= CACHE_BLOCKS {
                self.clean.clear();
            }
            self.clean.insert(b, (kind, block));
        }
        let (k, block) = match (self.dirty.get(&b), self.writing.get(&b)) {
            (Some(entry), _) | (None, Some(entry)) => entry,
            (None, None) => &self.clean[&b],
        };
        match *k == kind {
            true => Ok(&**block),
            false => Err(Error::BadBlock {
                block: b,
                why: format!("read as {kind:?}, but it is a {k:?}"),
            }),
        }
    }

    /// Allocates a block for this transaction; its contents must be given with [`Tm::write`].
    pub fn new_block(&mut self) -> Result<u64> {
        let b = self
            .refs
            .alloc()
            .ok_or(Error::MetadataFull(self.refs.nr_blocks()))?;
        self.shadows.insert(b);
        Ok(b)
    }

    /// Makes block `b` writable in this transaction. Returns where its writable copy is (`b`
    /// itself if it already is one), and whether the copy's children must each gain a
    /// reference because `b` was shared.
    pub fn shadow(&mut self, b: u64, kind: Kind) -> Result<(u64, bool)> {
        let count = self.refs.get(b)?;
        if count == 0 {
            return Err(Error::corrupt(format!(
                "metadata block {b} is used but free"
            )));
        }
        if count == 1 && self.shadows.contains(&b) {
            return Ok((b, false));
        }
        let copy = self.read(b, kind)?.to_owned();
        let new = self.new_block()?;
        self.dirty.insert(new, (kind, Box::new(copy)));
        self.dec(b)?;
        Ok((new, count > 1))
    }

    /// Sets the contents of `b`, a block allocated or shadowed in this transaction.
    pub fn write(&mut self, b: u64, kind: Kind, block: Block) -> Result<()> {
        if !self.shadows.contains(&b) {
            return Err(Error::corrupt(format!(
                "metadata block {b} written without being shadowed"
            )));
        }
        self.dirty.insert(b, (kind, block));
        Ok(())
    }

    /// The contents of `b`, a block allocated or shadowed in this transaction, to change in
    /// place (as [`Tm::write`] would replace them).
    pub fn block_mut(&mut self, b: u64, kind: Kind) -> Result<&mut [u8; super::BLOCK_SIZE]> {
        let not_ours = || {
            Error::corrupt(format!(
                "metadata block {b} changed in place but not shadowed"
            ))
        };
        if !self.shadows.contains(&b) {
            return Err(not_ours());
        }
        match self.dirty.get_mut(&b) {
            Some((k, block)) if *k == kind => Ok(&mut **block),
            _ => Err(not_ours()),
        }
    }

    /// Adds a reference to `b`.
    pub fn inc(&mut self, b: u64) -> Result<()> {
        self.refs.inc(b).map(drop)
    }

    /// Drops a reference to `b`; returns the count left.
    pub fn dec(&mut self, b: u64) -> Result<u32> {
        let left = self.refs.dec(b)?;
        if left == 0 {
            self.dirty.remove(&b);
            self.clean.remove(&b);
        }
        Ok(left)
    }

    /// The reference count of `b`.
    pub fn count(&self, b: u64) -> Result<u32> {
        self.refs.get(b)
    }

    /// Whether anything changed since the last commit.
    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Ends the transaction in memory, the first step of a commit: its changed blocks are
    /// sealed and handed over in a [`Batch`] to write, and are read from here until
    /// [`Tm::written`]. From now on a change shadows again (the batch's blocks are the next
    /// superblock's), and the blocks the transaction freed stay held back.
    pub fn begin_writing(&mut self) -> Batch {
        let mut blocks: BTreeMap<u64, (Kind, Block)> = self.dirty.drain().collect();
        for (&b, (kind, block)) in blocks.iter_mut() {
            block::seal(block, *kind, b);
        }
        self.shadows.clear();
        self.refs.writing();
        let blocks = Arc::new(blocks);
        self.writing = blocks.clone();
        Batch {
            dev: self.dev.clone(),
            blocks,
            #[cfg(test)]
            unsynced: self.unordered_commit,
        }
    }

    /// The batch of [`Tm::begin_writing`] is durable (and dropped): its blocks join the
    /// clean ones, and the blocks its transaction freed may be handed out.
    pub fn written(&mut self) {
        let blocks = std::mem::take(&mut self.writing);
        let blocks = Arc::try_unwrap(blocks).unwrap_or_else(|shared| (*shared).clone());
        for (b, block) in blocks {
            if self.clean.len() < CACHE_BLOCKS {
                self.clean.insert(b, block);
            }
        }
        self.refs.written();
    }

    /// Writes every changed block, durably, and ends the transaction, with nothing in
    /// between (no superblock).
    #[cfg(test)]
    pub(crate) fn write_all(&mut self) -> Result<()> {
        self.begin_writing().write()?;
        self.written();
        Ok(())
    }
}

/// The new blocks of a transaction, sealed, to be written while the transaction manager
/// goes on with the next one.
pub struct Batch {
    dev: MetaDev,
    blocks: Arc<BTreeMap<u64, (Kind, Block)>>,
    /// Fault injection: no sync after the blocks (see `Tm::unordered_commit`).
    #[cfg(test)]
    unsynced: bool,
}

impl Batch {
    /// Blocks in the batch.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Whether the batch holds no block.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Writes the blocks, a run of consecutive ones (up to [`MAX_RUN`]) per write, and syncs
    /// them.
    pub fn write(&self) -> Result<()> {
        let mut blocks = self.blocks.iter().peekable();
        let mut run = Vec::with_capacity(MAX_RUN * super::BLOCK_SIZE);
        while let Some((&first, (_, head))) = blocks.next() {
            run.clear();
            run.extend_from_slice(&head[..]);
            let mut next = first.saturating_add(1);
            while run.len() < MAX_RUN * super::BLOCK_SIZE {
                match blocks.next_if(|(b, _)| **b == next) {
                    Some((_, (_, block))) => run.extend_from_slice(&block[..]),
                    None => break,
                }
                next = next.saturating_add(1);
            }
            self.dev.write_sealed(first, &run)?;
        }
        #[cfg(test)]
        if self.unsynced {
            return Ok(());
        }
        self.dev.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pdata::block;
    use crate::pdata::btree::tests::test_tm;

    #[test]
    fn cached_block_read_as_another_kind_is_refused() {
        let (_dir, mut tm) = test_tm(16);
        let b = tm.new_block().unwrap();
        tm.write(b, Kind::Node, block::zeroed()).unwrap();
        tm.write_all().unwrap();
        // Read once as what it is (now cached clean), then as a bitmap.
        tm.read(b, Kind::Node).unwrap();
        let read = tm.read(b, Kind::Bitmap).map(drop);
        assert!(
            matches!(read, Err(Error::BadBlock { block, .. }) if block == b),
            "{read:?}"
        );
    }
}
