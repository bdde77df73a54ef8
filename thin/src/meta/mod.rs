//! A thin pool's metadata: the superblock, the device details, the two-level mapping tree
//! and the two space maps, changed in transactions and committed with the superblock last.

mod details;
mod devices;
mod mappings;
mod refs;
mod restore;
mod superblock;
#[cfg(test)]
mod tests;

pub use details::{DETAILS_SIZE, DeviceDetails, MAPPING_SIZE, MAX_DATA_BLOCKS, Mapping, TIME_MASK};
pub use superblock::{
    MAGIC, NEEDS_CHECK, Superblock, VERSION, check_data_block_size, metadata_block_size,
};

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rustbk_formats::EngineFile;

use crate::error::{Error, Result};
use crate::pdata::block::{BLOCK_SIZE, Block, Kind};
use crate::pdata::btree;
use crate::pdata::dev::MetaDev;
use crate::pdata::refs::{ENTRIES_PER_BITMAP, RefCounts};
use crate::pdata::sm::{self, DataSm, MetaSm};
use crate::pdata::tm::{Batch, Tm};

/// Most metadata blocks a pool can use: what 255 space map bitmaps cover (about 16 GiB).
pub const MAX_METADATA_BLOCKS: u64 = 255 * ENTRIES_PER_BITMAP;

/// An open pool's metadata.
pub struct Metadata {
    tm: Tm,
    data: DataSm,
    meta_sm: MetaSm,
    sb: Superblock,
    details: BTreeMap<u64, DeviceDetails>,
    changed: BTreeSet<u64>,
}

/// How to create a pool's metadata.
#[derive(Clone, Copy, Debug)]
pub struct Geometry {
    /// Data block size in 512-byte sectors.
    pub data_block_size: u32,
    /// Data blocks the data device holds.
    pub nr_data_blocks: u64,
}

impl Metadata {
    /// Formats the metadata device `file` (all of it, up to [`MAX_METADATA_BLOCKS`]) for an
    /// empty pool, and commits.
    pub fn create(file: Arc<EngineFile>, geometry: Geometry) -> Result<Metadata> {
        check_data_block_size(geometry.data_block_size)?;
        if geometry.nr_data_blocks > MAX_DATA_BLOCKS {
            return Err(Error::InvalidArgument(format!(
                "{} data blocks, at most {MAX_DATA_BLOCKS}",
                geometry.nr_data_blocks
            )));
        }
        let nr_blocks = (file.size()? / BLOCK_SIZE as u64).min(MAX_METADATA_BLOCKS);
        if nr_blocks < 64 {
            return Err(Error::InvalidArgument(format!(
                "metadata device of {nr_blocks} blocks is too small (at least 256 KiB)"
            )));
        }
        let mut refs = RefCounts::new(nr_blocks)?;
        refs.set(0, 1)?;
        let mut tm = Tm::new(MetaDev::new(file, nr_blocks)?, refs);
        let data = DataSm::create(&mut tm, geometry.nr_data_blocks)?;
        let meta_sm = MetaSm::create(&mut tm)?;
        let sb = Superblock {
            flags: 0,
            uuid: [0; 16],
            version: superblock::VERSION,
            time: 0,
            transaction_id: 0,
            held_root: 0,
            data_sm: sm::SmRoot::default(),
            metadata_sm: sm::SmRoot::default(),
            mapping_root: btree::empty(&mut tm, MAPPING_SIZE)?,
            details_root: btree::empty(&mut tm, DETAILS_SIZE)?,
            data_block_size: geometry.data_block_size,
            metadata_nr_blocks: nr_blocks,
            compat_flags: 0,
            compat_ro_flags: 0,
            incompat_flags: 0,
        };
        let mut md = Metadata {
            tm,
            data,
            meta_sm,
            sb,
            details: BTreeMap::new(),
            changed: BTreeSet::new(),
        };
        md.commit()?;
        Ok(md)
    }

    /// Opens the metadata on `file`; `data_capacity` is how many data blocks of the pool's
    /// block size the data device can hold (the data space map may not claim more).
    pub fn open(file: Arc<EngineFile>, data_capacity: impl Fn(u32) -> u64) -> Result<Metadata> {
        let whole = (file.size()? / BLOCK_SIZE as u64).min(MAX_METADATA_BLOCKS);
        let probe = MetaDev::new(file.clone(), whole.max(1))?;
        let sb = Superblock::decode(&*probe.read(0, Kind::Superblock)?)?;
        if sb.compat_ro_flags != 0 && !file.read_only() {
            return Err(Error::Unsupported(format!(
                "read-only feature flags {:#x}: open the pool read-only",
                sb.compat_ro_flags
            )));
        }
        if sb.flags & superblock::NEEDS_CHECK != 0 && !file.read_only() {
            return Err(Error::Unsupported(
                "the pool is flagged as needing a check: run `rustbk thin check` first".into(),
            ));
        }
        if sb.metadata_nr_blocks > whole || sb.metadata_sm.nr_blocks > sb.metadata_nr_blocks {
            return Err(Error::corrupt(format!(
                "superblock claims {} metadata blocks, the device holds {whole}",
                sb.metadata_nr_blocks
            )));
        }
        let dev = MetaDev::new(file, sb.metadata_nr_blocks)?;
        let (refs, meta_sm) = sm::load_metadata(&dev, sb.metadata_sm)?;
        let mut tm = Tm::new(dev, refs);
        let data = sm::load_data(&mut tm, sb.data_sm, data_capacity(sb.data_block_size))?;
        let details = load_details(&mut tm, sb.details_root)?;
        Ok(Metadata {
            tm,
            data,
            meta_sm,
            sb,
            details,
            changed: BTreeSet::new(),
        })
    }

    /// The superblock as of the last commit, with the current time and transaction id.
    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    /// Data block size in 512-byte sectors.
    pub fn data_block_size(&self) -> u32 {
        self.sb.data_block_size
    }

    /// The data space map's counts.
    pub fn data_refs(&self) -> &RefCounts {
        &self.data.refs
    }

    /// The metadata space map's counts.
    pub fn metadata_refs(&self) -> &RefCounts {
        &self.tm.refs
    }

    /// The transaction manager, for walking the trees.
    pub fn tm(&mut self) -> &mut Tm {
        &mut self.tm
    }

    /// Whether anything changed since the last commit.
    pub fn is_dirty(&self) -> bool {
        self.tm.is_dirty() || !self.changed.is_empty()
    }

    /// Makes the transaction durable: details, then the data space map, then the metadata
    /// space map are written to new blocks and synced, then the superblock. The caller has
    /// made the data these mappings point at durable first.
    pub fn commit(&mut self) -> Result<()> {
        self.commit_after(|| Ok(()))
    }

    /// [`Metadata::commit`], calling `ready` after the new blocks are durable and before
    /// the superblock is written: the superblock waits for whatever `ready` waits for (the
    /// data device's sync, run meanwhile), and is not written if `ready` fails.
    pub fn commit_after(&mut self, ready: impl FnOnce() -> Result<()>) -> Result<()> {
        self.begin_commit()?.write(ready)?;
        self.end_commit();
        Ok(())
    }

    /// The first step of a commit, with the metadata in hand: details, then the data space
    /// map, then the metadata space map go into new blocks, which are handed over with the
    /// new superblock in a [`PendingCommit`] to write without the metadata. From now on a
    /// change belongs to the next transaction, and the blocks this one freed (which the last
    /// durable superblock may still point at) are not handed out before [`end_commit`].
    ///
    /// [`end_commit`]: Metadata::end_commit
    pub fn begin_commit(&mut self) -> Result<PendingCommit> {
        self.write_details()?;
        self.sb.data_sm = self.data.commit(&mut self.tm)?;
        self.sb.metadata_sm = self.meta_sm.commit(&mut self.tm)?;
        let batch = self.tm.begin_writing();
        self.data.writing();
        Ok(PendingCommit {
            batch,
            superblock: self.sb.encode(),
            dev: self.tm.dev().clone(),
        })
    }

    /// The last step of a commit, once its [`PendingCommit::write`] succeeded (and the
    /// pending commit is dropped): the blocks its transaction freed may be handed out.
    pub fn end_commit(&mut self) {
        self.tm.written();
        self.data.written();
    }

    fn write_details(&mut self) -> Result<()> {
        for id in std::mem::take(&mut self.changed) {
            let root = self.sb.details_root;
            self.sb.details_root = match self.details.get(&id) {
                Some(d) => {
                    btree::insert(&mut self.tm, root, id, &d.encode(), &mut btree::NoRefs)?.0
                }
                None => btree::remove(&mut self.tm, root, DETAILS_SIZE, id, &mut btree::NoRefs)?.0,
            };
        }
        Ok(())
    }

    /// Sets the transaction id the pool's user keeps (dm-thin's `set_transaction_id`).
    pub fn set_transaction_id(&mut self, old: u64, new: u64) -> Result<()> {
        if self.sb.transaction_id != old {
            return Err(Error::InvalidArgument(format!(
                "transaction id is {}, not {old}",
                self.sb.transaction_id
            )));
        }
        self.sb.transaction_id = new;
        Ok(())
    }

    /// Grows the data space map to `nr_blocks` data blocks.
    pub fn grow_data(&mut self, nr_blocks: u64) -> Result<()> {
        if nr_blocks > MAX_DATA_BLOCKS {
            return Err(Error::InvalidArgument(format!("{nr_blocks} data blocks")));
        }
        self.data.refs.grow(nr_blocks)
    }

    /// Grows the metadata space map to what the metadata device now holds.
    pub fn grow_metadata(&mut self) -> Result<u64> {
        let nr_blocks = self.tm.dev().capacity()?.min(MAX_METADATA_BLOCKS);
        if nr_blocks > self.sb.metadata_nr_blocks {
            self.tm.dev_mut().set_nr_blocks(nr_blocks);
            self.tm.refs.grow(nr_blocks)?;
            self.sb.metadata_nr_blocks = nr_blocks;
        }
        Ok(nr_blocks)
    }
}

/// The blocks and superblock of a commit, written without the metadata (see
/// [`Metadata::begin_commit`]).
pub struct PendingCommit {
    batch: Batch,
    superblock: Block,
    dev: MetaDev,
}

impl PendingCommit {
    /// Writes the new blocks and syncs them, calls `ready`, then writes the superblock and
    /// syncs it: the commit point. Nothing is written after an error.
    pub fn write(mut self, ready: impl FnOnce() -> Result<()>) -> Result<()> {
        let start = std::time::Instant::now();
        self.batch.write()?;
        let written = start.elapsed();
        ready()?;
        let ready_at = start.elapsed();
        self.dev.write(0, Kind::Superblock, &mut self.superblock)?;
        self.dev.sync()?;
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        tracing::debug!(
            blocks = self.batch.len(),
            written_ms = ms(written),
            ready_ms = ms(ready_at),
            total_ms = ms(start.elapsed()),
            "metadata committed"
        );
        Ok(())
    }
}

fn load_details(tm: &mut Tm, root: u64) -> Result<BTreeMap<u64, DeviceDetails>> {
    let mut details = BTreeMap::new();
    btree::for_each(tm, root, DETAILS_SIZE, &mut |id, raw| {
        details.insert(id, DeviceDetails::decode(raw));
        Ok(())
    })?;
    Ok(details)
}
