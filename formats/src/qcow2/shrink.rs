//! Cutting an emptied qcow2 image down to its metadata (the end of `qemu-img commit`, whose
//! emptying truncates a completely emptied image to its header, refcount structures and L1
//! table). Runs on the file (locked as a writer by the caller) once every guest cluster is
//! unmapped and that is durable; images with snapshots, or flagged dirty or corrupt, are
//! left as they are.
//!
//! Steps, each ending with fdatasync, so a crash keeps the steps before it plus some entries
//! (each one old or new; 8-byte entries never straddle a sector) of the step it cut:
//!
//! 1. The L1 entries of the L2 tables that map nothing are zeroed. Cut here: the image reads
//!    its backing file everywhere either way; the tables are at worst leaked (refcount 1,
//!    referenced by nothing), which `check -r leaks` gives back.
//! 2. Those tables' refcounts drop to 0. Cut here: some tables leaked, none referenced with
//!    refcount 0 (the L1 entries were durable first).
//! 3. Refcount blocks at the end of the refcount table that count nothing but themselves (and
//!    lie in their own range) are dropped from the table. Cut here: a block whose entry is
//!    gone counted only itself, so nothing in use loses its count.
//! 4. The file is cut after its last cluster in use (the size change made durable), and the
//!    freed tables below that end are punched out. Cut here: the tail held only free clusters.

use std::collections::BTreeMap;

use crate::engine::EngineFile;
use crate::error::Error;

use super::header::{Header, incompat};
use super::refcount::{get_entry, set_entry};

/// Offset bits of an L1 entry.
const L1_OFFSET: u64 = 0x00ff_ffff_ffff_fe00;
/// Offset bits of a refcount table entry.
const REFTABLE_OFFSET: u64 = !0x1ff;

/// What is read of the image.
struct Image<'a> {
    file: &'a EngineFile,
    h: Header,
    cs: u64,
    /// Refcount entries per block.
    per: u64,
    l1: Vec<u64>,
    reftable: Vec<u64>,
}

/// Runs the first `steps` of the steps above on the emptied image in `file`; returns the
/// file's new length when it was cut.
pub(crate) fn shrink(file: &EngineFile, steps: usize) -> Result<Option<u64>, Error> {
    let Some(mut img) = Image::load(file)?.filter(|_| steps > 0) else {
        return Ok(None);
    };
    let freed = img.unlink_empty_tables()?;
    if steps < 2 {
        return Ok(None);
    }
    img.free_clusters(&freed)?;
    if steps < 3 {
        return Ok(None);
    }
    img.drop_idle_refblocks()?;
    if steps < 4 {
        return Ok(None);
    }
    img.cut(&freed)
}

impl Image<'_> {
    fn load(file: &EngineFile) -> Result<Option<Image<'_>>, Error> {
        let (_, h) = super::rebase::read_header(file)?;
        if h.nb_snapshots > 0 || h.incompatible & (incompat::DIRTY | incompat::CORRUPT) != 0 {
            return Ok(None);
        }
        let cs = h.cluster_size();
        let l1 = read_u64s(file, h.l1_table_offset, u64::from(h.l1_size))?;
        let entries = u64::from(h.refcount_table_clusters) * cs / 8;
        let reftable = read_u64s(file, h.refcount_table_offset, entries)?;
        let per = (cs * 8) >> h.refcount_order;
        Ok(Some(Image {
            file,
            h,
            cs,
            per,
            l1,
            reftable,
        }))
    }

    /// Step 1: zeroes the L1 entries of tables that map nothing; returns those tables.
    fn unlink_empty_tables(&mut self) -> Result<Vec<u64>, Error> {
        let mut freed = Vec::new();
        for entry in self.l1.iter_mut() {
            let table = *entry & L1_OFFSET;
            if table == 0 || table % self.cs != 0 {
                continue;
            }
            let mut data = vec![0u8; super::layout::small(self.cs)];
            read_exact(self.file, table, &mut data)?;
            if data.iter().all(|&b| b == 0) {
                freed.push(table);
                *entry = 0;
            }
        }
        if !freed.is_empty() {
            let bytes: Vec<u8> = self.l1.iter().flat_map(|e| e.to_be_bytes()).collect();
            self.file.write_all_at(&bytes, self.h.l1_table_offset)?;
            self.file.datasync()?;
        }
        Ok(freed)
    }

    /// Step 2: the refcounts of `clusters` (each 1) drop to 0.
    fn free_clusters(&self, clusters: &[u64]) -> Result<(), Error> {
        let mut blocks: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        for &offset in clusters {
            let c = offset / self.cs;
            let Some(block) = self.refblock_of(c) else {
                continue;
            };
            let data = match blocks.entry(block) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(self.read_cluster(block)?)
                }
            };
            if get_entry(data, self.h.refcount_order, c % self.per) == 1 {
                set_entry(data, self.h.refcount_order, c % self.per, 0);
            }
        }
        for (block, data) in &blocks {
            self.file.write_all_at(data, *block)?;
        }
        if !blocks.is_empty() {
            self.file.datasync()?;
        }
        Ok(())
    }

    /// Step 3: drops the trailing refcount blocks that count only themselves.
    fn drop_idle_refblocks(&mut self) -> Result<(), Error> {
        let mut dropped = Vec::new();
        for k in (1..self.reftable.len()).rev() {
            let block = self.reftable[k] & REFTABLE_OFFSET;
            if block == 0 {
                continue;
            }
            let own = block / self.cs;
            if own / self.per != k as u64 || !self.counts_only(block, own % self.per)? {
                break;
            }
            dropped.push(k);
        }
        for &k in &dropped {
            self.reftable[k] = 0;
            let at = self.h.refcount_table_offset + k as u64 * 8;
            self.file.write_all_at(&0u64.to_be_bytes(), at)?;
        }
        if !dropped.is_empty() {
            self.file.datasync()?;
        }
        Ok(())
    }

    /// Whether the refcount block at `block` counts nothing but entry `index` (as 1).
    fn counts_only(&self, block: u64, index: u64) -> Result<bool, Error> {
        let data = self.read_cluster(block)?;
        let order = self.h.refcount_order;
        Ok((0..self.per).all(|i| get_entry(&data, order, i) == u64::from(i == index)))
    }

    /// Step 4: cuts the file after its last cluster in use; punches the freed tables below.
    fn cut(&self, freed: &[u64]) -> Result<Option<u64>, Error> {
        let Some(last) = self.last_in_use()? else {
            return Ok(None);
        };
        let end = (last + 1) * self.cs;
        let cut = end < self.file.size()?;
        if cut {
            self.file.set_len(end)?;
        }
        for &table in freed.iter().filter(|&&t| t < end) {
            if let Err(e) = super::empty::punch_range(self.file.path(), table, self.cs) {
                tracing::warn!(error = %e, table, "cannot punch a freed L2 table out");
            }
        }
        Ok(cut.then_some(end))
    }

    /// The highest cluster whose refcount is not 0.
    fn last_in_use(&self) -> Result<Option<u64>, Error> {
        for k in (0..self.reftable.len()).rev() {
            let block = self.reftable[k] & REFTABLE_OFFSET;
            if block == 0 {
                continue;
            }
            let data = self.read_cluster(block)?;
            let order = self.h.refcount_order;
            if let Some(i) = (0..self.per)
                .rev()
                .find(|&i| get_entry(&data, order, i) != 0)
            {
                return Ok(Some(k as u64 * self.per + i));
            }
        }
        Ok(None)
    }

    /// The refcount block counting cluster `c`, if it has one.
    fn refblock_of(&self, c: u64) -> Option<u64> {
        let entry = *self.reftable.get(usize::try_from(c / self.per).ok()?)?;
        let block = entry & REFTABLE_OFFSET;
        (block != 0 && block % self.cs == 0).then_some(block)
    }

    fn read_cluster(&self, offset: u64) -> Result<Vec<u8>, Error> {
        let mut data = vec![0u8; super::layout::small(self.cs)];
        read_exact(self.file, offset, &mut data)?;
        Ok(data)
    }
}

/// Reads `count` big-endian u64s at `offset`.
fn read_u64s(file: &EngineFile, offset: u64, count: u64) -> Result<Vec<u64>, Error> {
    let mut bytes = vec![0u8; super::layout::small(count * 8)];
    read_exact(file, offset, &mut bytes)?;
    Ok(bytes
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect())
}

fn read_exact(file: &EngineFile, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
    if file.read_at(buf, offset)? != buf.len() {
        return Err(Error::InvalidImage(format!(
            "qcow2 metadata at {offset:#x} runs past the end of the file"
        )));
    }
    Ok(())
}
