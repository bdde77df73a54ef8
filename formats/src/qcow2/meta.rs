//! The shared metadata state of an open image: L1 table, refcount table, the L2 and refcount
//! block caches, and the bookkeeping of allocations in flight. One per image, behind a mutex
//! shared by every queue.
//!
//! Metadata is write-back: allocating writes and discards change L2 and L1 entries and
//! refcounts in memory only, and [`Meta::write_back`] (a guest flush, closing, a dirty L2
//! table about to leave the cache, or changes older than the write-back age) writes them in
//! the crash-safe order. Refcount blocks may
//! also be written whenever they leave the cache: an increment reaching the disk early only
//! leaks a cluster on a crash, and decrements are only made after the entries that referenced
//! the cluster are durably gone.

use crate::planned::Bell;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use crate::error::Error;

use super::layout::small;

use super::cache::TableCache;
use super::header::Header;
use super::layout::{self, Layout, Mapping};
use super::metaio::{MetaIo, MetaKind};
use super::writeback::MetaWrite;

/// How far ahead of its fresh clusters the file grows at a time (QEMU's preallocate filter
/// uses 128 MiB).
const GROW_CHUNK: u64 = 64 << 20;
/// ... and at least this many clusters.
const GROW_CHUNK_CLUSTERS: u64 = 16;

/// Clusters the file grows ahead at a time, for clusters of `1 << cluster_bits` bytes.
pub(super) fn grow_chunk_clusters(cluster_bits: u32) -> u64 {
    (GROW_CHUNK >> cluster_bits).max(GROW_CHUNK_CLUSTERS)
}

/// Which table cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Table {
    /// L2 tables.
    L2,
    /// Refcount blocks.
    Refblock,
}

/// Sizes of the metadata caches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheSizes {
    /// Bytes of L2 tables kept in memory.
    pub l2_bytes: usize,
    /// Bytes of refcount blocks kept in memory.
    pub refcount_bytes: usize,
}

/// The metadata of one open image.
pub(crate) struct Meta {
    pub(super) layout: Layout,
    pub(super) io: Arc<dyn MetaIo>,
    pub(super) l1: Vec<u64>,
    pub(super) l1_offset: u64,
    pub(super) reftable: Vec<u64>,
    pub(super) reftable_offset: u64,
    pub(super) l2_cache: TableCache,
    rc_cache: TableCache,
    /// L1 entries changed in memory and not yet written.
    pub(super) dirty_l1: BTreeSet<u64>,
    /// L2 tables created this session and never written (no L1 entry on disk points at them).
    pub(super) new_l2: HashSet<u64>,
    /// Host cluster runs `(first, count)` losing a reference once the entries that referenced
    /// them are durably gone.
    pub(super) pending_free: Vec<(u64, u64)>,
    /// First host cluster that was never written, as far as this session knows (clusters from
    /// here on read as zeros).
    pub(super) fresh_from: u64,
    /// The file system refused zero-range fallocate once; zeros are written instead.
    pub(super) no_zero_range: bool,
    /// How far this session grew the file ahead of its fresh clusters (at least its length at
    /// open); the unused part is cut off when the image closes.
    pub(super) grown_to: u64,
    /// The file cannot be grown ahead (a block device, or no fallocate).
    pub(super) no_grow: bool,
    /// When metadata first changed after the last write-back.
    pub(super) dirty_since: Option<std::time::Instant>,
    /// Age after which changed metadata is written back without waiting for a flush.
    pub(super) writeback_age: std::time::Duration,
    /// Why an earlier write-back failed (the image then takes no more changes).
    pub(super) failed: Option<String>,
    /// A queue runs a write-back on its engine (a guest flush, see [`super::flush`]): no other
    /// write-back may start, and dirty tables stay in the caches until it ended.
    pub(super) flushing: bool,
    /// The tables whose captured bytes that write-back writes: kept in the caches until it
    /// ended (read again from the file, they could miss what it has not written yet).
    pub(super) writing: HashSet<u64>,
    /// New L2 tables not yet linked into the L1 table: L1 index -> table offset.
    pub(super) pending_l2: HashMap<u64, u64>,
    /// Guest clusters with an allocation (or discard) in flight.
    pub(super) busy: HashSet<u64>,
    /// Bells of queues waiting for busy clusters.
    pub(super) waiters: Vec<Arc<Bell>>,
    /// Where the search for a free cluster starts (cluster index).
    pub(super) free_hint: u64,
    /// Size of the image file, including clusters allocated this session.
    pub(super) file_size: u64,
    /// Byte ranges never to be allocated (header cluster, L1 table, refcount table).
    pub(super) reserved: Vec<std::ops::Range<u64>>,
    pub(super) has_backing: bool,
    /// L2 tables being read on a queue's engine (see [`super::fetch`]).
    pub(super) fetching: HashMap<u64, Fetching>,
    /// A missing L2 table is first read from the host's page cache, without waiting; only
    /// when that would wait is it read on the engine. Tests turn it off.
    pub(super) tables_from_page_cache: bool,
}

/// The engine reads of one L2 table in flight.
#[derive(Debug, Default)]
pub(super) struct Fetching {
    /// How many (on any queue).
    pub reads: usize,
    /// The table came into the cache (or its cluster was reused) after they were issued:
    /// what they read may be older than the cache, and is dropped.
    pub stale: bool,
}

impl Meta {
    /// Loads the L1 and refcount tables of a validated header.
    pub(super) fn load(
        header: &Header,
        io: Arc<dyn MetaIo>,
        opts: &super::Qcow2Options,
        has_backing: bool,
    ) -> Result<Meta, Error> {
        let caches = opts.cache;
        let layout = Layout {
            cluster_bits: header.cluster_bits,
            size: header.size,
            version: header.version,
            refcount_order: header.refcount_order,
        };
        let l1 = read_table(
            &*io,
            MetaKind::L1,
            header.l1_table_offset,
            header.l1_size as usize,
        )?;
        let rt_entries = (header.refcount_table_clusters as usize) << (header.cluster_bits - 3);
        let reftable = read_table(
            &*io,
            MetaKind::Reftable,
            header.refcount_table_offset,
            rt_entries,
        )?;
        let file_size = io.size()?;
        let mut meta = Meta {
            layout,
            io,
            l1,
            l1_offset: header.l1_table_offset,
            reftable,
            reftable_offset: header.refcount_table_offset,
            l2_cache: TableCache::new(caches.l2_bytes),
            rc_cache: TableCache::new(caches.refcount_bytes),
            dirty_l1: BTreeSet::new(),
            new_l2: HashSet::new(),
            pending_free: Vec::new(),
            fresh_from: file_size.div_ceil(1 << header.cluster_bits),
            no_zero_range: false,
            grown_to: file_size,
            no_grow: false,
            dirty_since: None,
            writeback_age: opts.writeback_age,
            failed: None,
            flushing: false,
            writing: HashSet::new(),
            pending_l2: HashMap::new(),
            busy: HashSet::new(),
            waiters: Vec::new(),
            free_hint: 0,
            file_size,
            reserved: Vec::new(),
            has_backing,
            fetching: HashMap::new(),
            tables_from_page_cache: true,
        };
        meta.set_reserved(header.l1_size);
        Ok(meta)
    }

    pub(super) fn set_reserved(&mut self, l1_size: u32) {
        let cs = self.layout.cluster_size();
        let l1_end = self.l1_offset + (u64::from(l1_size) * 8).div_ceil(cs) * cs;
        let rt_end = self.reftable_offset + (self.reftable.len() as u64 * 8).div_ceil(cs) * cs;
        self.reserved = vec![0..cs, self.l1_offset..l1_end, self.reftable_offset..rt_end];
    }

    /// The layout.
    pub(super) fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Offset of the L2 table of guest cluster `gc` (0: none).
    pub(super) fn l2_table(&self, gc: u64) -> Result<u64, Error> {
        let index = self.layout.l1_index(gc);
        let entry = usize::try_from(index)
            .ok()
            .and_then(|i| self.l1.get(i))
            .ok_or_else(|| {
                Error::InvalidImage(format!("guest cluster {gc} beyond the L1 table"))
            })?;
        layout::decode_l1(*entry, &self.layout)
    }

    /// What guest cluster `gc` maps to.
    pub(super) fn mapping(&mut self, gc: u64) -> Result<Mapping, Error> {
        let table = self.l2_table(gc)?;
        if table == 0 {
            return Ok(Mapping::Unallocated);
        }
        let entry = self.l2_entry(table, self.layout.l2_index(gc))?;
        layout::decode_l2(entry, &self.layout)
    }

    /// Raw L2 entry `index` of the table at `table`.
    pub(super) fn l2_entry(&mut self, table: u64, index: u64) -> Result<u64, Error> {
        let data = self.table(Table::L2, table)?;
        Ok(get64(data, small(index) * 8))
    }

    /// Sets L2 entry `index` of the table at `table` (in memory; written back later).
    pub(super) fn set_l2_entry(&mut self, table: u64, index: u64, entry: u64) -> Result<(), Error> {
        let at = small(index) * 8;
        let data = self.table(Table::L2, table)?;
        put64(data, at, entry);
        self.mark_dirty(Table::L2, table, at, at + 8);
        Ok(())
    }

    /// Makes the host cluster at `offset` read as zeros with its blocks reserved; false if
    /// the file system cannot (then the caller writes what the cluster must hold).
    pub(super) fn zero_cluster(&mut self, offset: u64) -> Result<bool, Error> {
        if self.no_zero_range {
            return Ok(false);
        }
        let done = self
            .io
            .allocate_zeroed(offset, self.layout.cluster_size())?;
        self.no_zero_range = !done;
        Ok(done)
    }

    /// Makes sure the file reaches past `end`, the end of a fresh cluster just allocated, by
    /// growing it a chunk ahead with blocks reserved, as QEMU's preallocate filter does.
    /// Writes into fresh clusters are then neither extending nor allocating: the file system
    /// runs them in parallel, and the one fallocate per chunk (which waits for the direct I/O
    /// in flight) replaces one per cluster.
    pub(super) fn grow_ahead(&mut self, end: u64) -> Result<(), Error> {
        if self.no_grow || end <= self.grown_to {
            return Ok(());
        }
        let chunk = grow_chunk_clusters(self.layout.cluster_bits) << self.layout.cluster_bits;
        let to = end.saturating_add(chunk);
        let from = self.grown_to;
        if self.io.allocate_to(from, to - from)? {
            self.grown_to = to;
        } else {
            self.no_grow = true;
        }
        Ok(())
    }

    /// Sets L1 entry `index` (in memory; written back later).
    pub(super) fn set_l1_entry(&mut self, index: u64, entry: u64) -> Result<(), Error> {
        let slot = usize::try_from(index)
            .ok()
            .and_then(|i| self.l1.get_mut(i))
            .ok_or_else(|| Error::InvalidImage(format!("L1 index {index} out of range")))?;
        *slot = entry;
        self.dirty_l1.insert(index);
        Ok(())
    }

    /// The table at `offset`, read into the cache if needed. Evicted dirty tables are written.
    pub(super) fn table(&mut self, which: Table, offset: u64) -> Result<&mut Vec<u8>, Error> {
        let present = self.cache(which).contains(offset);
        if !present {
            let data = self.read_cluster(which, offset)?;
            self.cache_table(which, offset, data)?;
        }
        self.cache(which)
            .get(offset)
            .ok_or_else(|| Error::InvalidImage("table cache lost a table".to_owned()))
    }

    /// Puts a table into the cache. A dirty L2 table about to be evicted first makes the whole
    /// cache write back (L2 entries must wait for their data and refcounts); evicted refcount
    /// blocks are written at once. While a queue runs a write-back, whose captured bytes may
    /// still be on their way to the file, neither a dirty table (nothing newer may be written
    /// under them) nor one that write-back writes is evicted: the cache grows past its size
    /// until it ended.
    pub(super) fn cache_table(
        &mut self,
        which: Table,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<(), Error> {
        if which == Table::L2 {
            self.fetch_overtaken(offset);
        }
        if which == Table::L2 && !self.flushing && self.l2_cache.would_evict_dirty(data.len()) {
            self.write_back()?;
        }
        let keep = self.flushing.then_some(&self.writing);
        let cache = match which {
            Table::L2 => &mut self.l2_cache,
            Table::Refblock => &mut self.rc_cache,
        };
        let evicted = cache.insert(offset, data, keep);
        for e in evicted {
            let slice = e.data.get(e.range.0..e.range.1).unwrap_or_default();
            self.io
                .write(kind_of(which), e.offset + e.range.0 as u64, slice)?;
        }
        Ok(())
    }

    /// A new, empty L2 table at `offset` (in memory; written back, whole, later).
    pub(super) fn new_l2_table(&mut self, offset: u64) -> Result<(), Error> {
        let cs = self.layout.cluster_usize();
        self.cache_table(Table::L2, offset, vec![0u8; cs])?;
        self.mark_dirty(Table::L2, offset, 0, cs);
        self.new_l2.insert(offset);
        Ok(())
    }

    pub(super) fn mark_dirty(&mut self, which: Table, offset: u64, start: usize, end: usize) {
        self.cache(which).mark_dirty(offset, start, end);
    }

    fn cache(&mut self, which: Table) -> &mut TableCache {
        match which {
            Table::L2 => &mut self.l2_cache,
            Table::Refblock => &mut self.rc_cache,
        }
    }

    fn read_cluster(&self, which: Table, offset: u64) -> Result<Vec<u8>, Error> {
        self.check_table_inside(which, offset)?;
        let mut data = vec![0u8; self.layout.cluster_usize()];
        let got = self.io.read(kind_of(which), offset, &mut data)?;
        // A table in the file's last, partly written cluster reads zeros past the end.
        data[got..].fill(0);
        Ok(data)
    }

    /// Fails unless the table at `offset` lies inside the file (the last cluster of which may
    /// be partly written: it reads zeros past the end) and not in the header cluster.
    pub(super) fn check_table_inside(&self, which: Table, offset: u64) -> Result<(), Error> {
        let cs = self.layout.cluster_size();
        let inside = offset
            .checked_add(cs)
            .is_some_and(|end| end <= self.file_size.div_ceil(cs) * cs);
        if offset < cs || !inside {
            return Err(Error::InvalidImage(format!(
                "{which:?} table at {offset:#x} lies outside the file"
            )));
        }
        Ok(())
    }

    /// Writes every dirty refcount block.
    pub(super) fn flush_refcounts(&mut self) -> Result<(), Error> {
        for w in self.dirty_refblocks() {
            self.io.write(w.kind, w.offset, &w.bytes)?;
        }
        Ok(())
    }

    /// Takes the dirty ranges of every refcount block (marked clean), to be written.
    pub(super) fn dirty_refblocks(&mut self) -> Vec<MetaWrite> {
        let dirty = self.rc_cache.take_dirty().into_iter();
        dirty
            .map(|(offset, bytes)| MetaWrite {
                kind: MetaKind::Refblock,
                offset,
                bytes,
            })
            .collect()
    }

    /// True if refcount blocks have unwritten changes.
    pub(super) fn refcounts_dirty(&self) -> bool {
        self.rc_cache.has_dirty()
    }

    /// Marks guest clusters no longer busy and wakes the queues waiting for them.
    pub(super) fn release(&mut self, clusters: impl IntoIterator<Item = u64>) {
        for gc in clusters {
            self.busy.remove(&gc);
        }
        for bell in self.waiters.drain(..) {
            bell.ring();
        }
    }

    /// Forgets a cached table (its cluster is being reused for something else).
    pub(super) fn forget_table(&mut self, which: Table, offset: u64) {
        if which == Table::L2 {
            self.fetch_overtaken(offset);
        }
        self.cache(which).forget(offset);
    }
}

pub(super) fn kind_of(which: Table) -> MetaKind {
    match which {
        Table::L2 => MetaKind::L2,
        Table::Refblock => MetaKind::Refblock,
    }
}

fn read_table(
    io: &dyn MetaIo,
    kind: MetaKind,
    offset: u64,
    entries: usize,
) -> Result<Vec<u64>, Error> {
    let mut bytes = vec![0u8; entries * 8];
    io.read_exact(kind, offset, &mut bytes)?;
    Ok(bytes.chunks_exact(8).map(|c| get64(c, 0)).collect())
}

/// Big-endian u64 at byte `at` (0 if out of range).
pub(super) fn get64(data: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    if let Some(src) = data.get(at..at + 8) {
        b.copy_from_slice(src);
    }
    u64::from_be_bytes(b)
}

/// Stores a big-endian u64 at byte `at` (nothing if out of range).
pub(super) fn put64(data: &mut [u8], at: usize, value: u64) {
    if let Some(dst) = data.get_mut(at..at + 8) {
        dst.copy_from_slice(&value.to_be_bytes());
    }
}

impl Drop for Meta {
    /// The image's last user is gone: the part of the file grown ahead and never allocated is
    /// cut off, so the file ends with its last cluster as before. (After a crash it stays,
    /// unused, until the next read-write open cuts it: see [`super::tail`].)
    fn drop(&mut self) {
        if self.grown_to <= self.file_size {
            return;
        }
        if let Err(e) = self.io.cut_to(self.file_size) {
            tracing::warn!(error = %e, "cannot cut the qcow2 file's unused tail");
        }
    }
}
