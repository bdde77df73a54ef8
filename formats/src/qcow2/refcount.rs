//! Refcounts of any width (1 to 64 bits), cluster allocation, and growth of refcount blocks and
//! of the refcount table.
//!
//! Growth is crash-safe on its own: a new refcount block (or a new refcount table) is written
//! and flushed before the entry (or header field) pointing at it is written. A crash in between
//! leaves unreferenced clusters only.

use crate::error::Error;

use super::layout::small;

use super::header;
use super::meta::{Meta, Table, get64, put64};
use super::metaio::MetaKind;

/// How far past the end of the file allocation may search for a free cluster before giving up
/// (in refcount blocks' worth of clusters); bounds the work a hostile refcount table can cause.
const SEARCH_BLOCKS_PAST_EOF: u64 = 2;

/// Reads entry `index` of a refcount block of `2^order`-bit entries.
pub(super) fn get_entry(block: &[u8], order: u32, index: u64) -> u64 {
    let bits = 1u64 << order;
    if bits < 8 {
        let bit = index * bits;
        let byte = block.get((bit / 8) as usize).copied().unwrap_or(0);
        (u64::from(byte) >> (bit % 8)) & ((1 << bits) - 1)
    } else {
        let width = (bits / 8) as usize;
        let at = small(index) * width;
        let mut v = 0u64;
        for b in block.get(at..at + width).unwrap_or_default() {
            v = (v << 8) | u64::from(*b);
        }
        v
    }
}

/// Writes entry `index`; returns the byte range changed.
pub(super) fn set_entry(block: &mut [u8], order: u32, index: u64, value: u64) -> (usize, usize) {
    let bits = 1u64 << order;
    if bits < 8 {
        let bit = index * bits;
        let at = (bit / 8) as usize;
        let mask = u8::try_from((((1u64 << bits) - 1) << (bit % 8)) & 0xff).unwrap_or(0);
        if let Some(byte) = block.get_mut(at) {
            let shifted = u8::try_from((value << (bit % 8)) & 0xff).unwrap_or(0);
            *byte = (*byte & !mask) | (shifted & mask);
        }
        (at, at + 1)
    } else {
        let width = (bits / 8) as usize;
        let at = small(index) * width;
        let bytes = value.to_be_bytes();
        if let Some(dst) = block.get_mut(at..at + width) {
            dst.copy_from_slice(&bytes[8 - width..]);
        }
        (at, at + width)
    }
}

impl Meta {
    /// The refcount block covering host cluster `cluster`: `(block offset or 0, index in it)`.
    fn locate(&self, cluster: u64) -> Result<(u64, u64), Error> {
        let per = self.layout.refblock_entries();
        let Some(&entry) = usize::try_from(cluster / per)
            .ok()
            .and_then(|i| self.reftable.get(i))
        else {
            return Ok((0, cluster % per));
        };
        Ok((
            super::layout::decode_reftable(entry, &self.layout)?,
            cluster % per,
        ))
    }

    /// The refcount of host cluster `cluster`.
    pub(super) fn refcount(&mut self, cluster: u64) -> Result<u64, Error> {
        let (block, index) = self.locate(cluster)?;
        if block == 0 {
            return Ok(0);
        }
        let order = self.layout.refcount_order;
        Ok(get_entry(self.table(Table::Refblock, block)?, order, index))
    }

    /// Sets the refcount of `cluster` in memory (written back later). The cluster's refcount
    /// block must exist.
    fn set_refcount(&mut self, cluster: u64, value: u64) -> Result<(), Error> {
        let (block, index) = self.locate(cluster)?;
        if block == 0 {
            return Err(Error::InvalidImage(format!(
                "no refcount block for cluster {cluster}"
            )));
        }
        let order = self.layout.refcount_order;
        let range = set_entry(self.table(Table::Refblock, block)?, order, index, value);
        self.mark_dirty(Table::Refblock, block, range.0, range.1);
        Ok(())
    }

    /// Drops one reference to each of `count` clusters from `first` (in memory).
    pub(super) fn decrement(&mut self, first: u64, count: u64) -> Result<(), Error> {
        for cluster in first..first.saturating_add(count) {
            let rc = self.refcount(cluster)?;
            if rc == 0 {
                return Err(Error::InvalidImage(format!(
                    "refcount of cluster {cluster} would drop below zero"
                )));
            }
            self.set_refcount(cluster, rc - 1)?;
            if rc == 1 {
                self.free_hint = self.free_hint.min(cluster);
            }
        }
        Ok(())
    }

    pub(super) fn is_reserved(&self, cluster: u64) -> bool {
        let offset = cluster << self.layout.cluster_bits;
        self.reserved.iter().any(|r| r.contains(&offset))
    }

    /// Allocates one free host cluster (refcount 1, in memory); returns its offset.
    pub(super) fn alloc_cluster(&mut self) -> Result<u64, Error> {
        self.alloc_fresh_cluster().map(|(offset, _)| offset)
    }

    /// Allocates one free host cluster; returns its offset and whether it was never written
    /// (reads as zeros, so a write into it needs no zero fill around the data).
    pub(super) fn alloc_fresh_cluster(&mut self) -> Result<(u64, bool), Error> {
        let per = self.layout.refblock_entries();
        let bits = self.layout.cluster_bits;
        let eof_cluster = self.file_size.div_ceil(1 << bits);
        let limit = eof_cluster.saturating_add(SEARCH_BLOCKS_PAST_EOF * per);
        let mut cluster = self.free_hint.max(1);
        while cluster < limit {
            if self.is_reserved(cluster) {
                cluster += 1;
                continue;
            }
            if self.locate(cluster)?.0 == 0 {
                let placed = self.new_refblock(cluster / per)?;
                if placed == cluster {
                    cluster += 1;
                    continue;
                }
            }
            if self.refcount(cluster)? == 0 {
                self.set_refcount(cluster, 1)?;
                self.free_hint = cluster + 1;
                let end = (cluster + 1) << bits;
                self.file_size = self.file_size.max(end);
                let fresh = cluster >= self.fresh_from;
                self.fresh_from = self.fresh_from.max(cluster + 1);
                return Ok((cluster << bits, fresh));
            }
            cluster += 1;
        }
        Err(Error::InvalidImage(
            "no free cluster found: refcounts claim clusters far past the end of the file"
                .to_owned(),
        ))
    }

    /// Creates the refcount block `index` at the first cluster of the range it covers (free,
    /// since no block describes it yet) and links it; returns the cluster it occupies.
    fn new_refblock(&mut self, index: u64) -> Result<u64, Error> {
        if index >= self.reftable.len() as u64 {
            self.grow_reftable(index)?;
            if self.locate(index * self.layout.refblock_entries())?.0 != 0 {
                // Growth placed this very block next to the new table.
                return Ok(u64::MAX);
            }
        }
        let cluster = index * self.layout.refblock_entries();
        if self.is_reserved(cluster) {
            return Err(Error::InvalidImage(format!(
                "refcount block {index} missing for clusters holding metadata"
            )));
        }
        let offset = cluster << self.layout.cluster_bits;
        let mut block = vec![0u8; self.layout.cluster_usize()];
        set_entry(&mut block, self.layout.refcount_order, 0, 1);
        self.io.write(MetaKind::Refblock, offset, &block)?;
        self.io.sync()?;
        self.set_reftable_entry(index, offset)?;
        self.file_size = self.file_size.max(offset + self.layout.cluster_size());
        self.forget_table(Table::L2, offset);
        self.cache_table(Table::Refblock, offset, block)?;
        Ok(cluster)
    }

    fn set_reftable_entry(&mut self, index: u64, offset: u64) -> Result<(), Error> {
        let slot = usize::try_from(index)
            .ok()
            .and_then(|i| self.reftable.get_mut(i))
            .ok_or_else(|| Error::InvalidImage("refcount table index out of range".to_owned()))?;
        *slot = offset;
        self.io.write(
            MetaKind::Reftable,
            self.reftable_offset + index * 8,
            &offset.to_be_bytes(),
        )
    }

    /// Replaces the refcount table by a larger one holding at least `need + 1` entries. The new
    /// table and a refcount block describing it go at the start of a fresh block range past
    /// the end of the file: `[block][table...]`.
    fn grow_reftable(&mut self, need: u64) -> Result<(), Error> {
        let cs = self.layout.cluster_size();
        let per = self.layout.refblock_entries();
        let per_cluster = cs / 8;
        let old_len = self.reftable.len() as u64;
        let eof_range = self.file_size.div_ceil(cs).div_ceil(per);
        let range = old_len.max(eof_range);
        let len = need
            .max(range)
            .saturating_add(1)
            .max(old_len.saturating_mul(2))
            .div_ceil(per_cluster)
            * per_cluster;
        let clusters = len / per_cluster;
        if len * 8 > header::MAX_REFTABLE_BYTES || clusters + 1 > per {
            return Err(Error::UnsupportedFeature(format!(
                "growing the refcount table to {len} entries"
            )));
        }
        let block_offset = range * per * cs;
        let table_offset = block_offset + cs;
        let mut block = vec![0u8; small(cs)];
        for i in 0..=clusters {
            set_entry(&mut block, self.layout.refcount_order, i, 1);
        }
        let mut table = vec![0u8; small(len * 8)];
        for (i, &e) in self.reftable.iter().enumerate() {
            put64(&mut table, i * 8, e);
        }
        put64(&mut table, small(range) * 8, block_offset);
        self.io.write(MetaKind::Refblock, block_offset, &block)?;
        self.io.write(MetaKind::Reftable, table_offset, &table)?;
        self.io.sync()?;
        self.switch_reftable(table_offset, &table, clusters)?;
        self.file_size = self.file_size.max(table_offset + clusters * cs);
        self.cache_table(Table::Refblock, block_offset, block)?;
        Ok(())
    }

    /// Points the header at the new refcount table, then frees the old one.
    fn switch_reftable(&mut self, offset: u64, table: &[u8], clusters: u64) -> Result<(), Error> {
        let mut fields = [0u8; 12];
        fields[..8].copy_from_slice(&offset.to_be_bytes());
        fields[8..].copy_from_slice(&u32::try_from(clusters).unwrap_or(u32::MAX).to_be_bytes());
        self.io
            .write(MetaKind::Header, header::REFTABLE_FIELDS_OFFSET, &fields)?;
        self.io.sync()?;
        let cs = self.layout.cluster_size();
        let old_offset = self.reftable_offset;
        let old_clusters = (self.reftable.len() as u64 * 8).div_ceil(cs);
        self.reftable = table.chunks_exact(8).map(|c| get64(c, 0)).collect();
        self.reftable_offset = offset;
        let l1_size = u32::try_from(self.l1.len()).unwrap_or(u32::MAX);
        self.set_reserved(l1_size);
        self.decrement(old_offset / cs, old_clusters)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refcount_width_round_trips_without_touching_neighbours() {
        for order in 0..=6u32 {
            let bits = 1u32 << order;
            let max = if bits == 64 {
                u64::MAX
            } else {
                (1u64 << bits) - 1
            };
            let mut block = vec![0u8; 512];
            let entries = 512 * 8 / u64::from(bits);
            for i in 0..entries {
                set_entry(&mut block, order, i, (i % 3).min(max));
            }
            set_entry(&mut block, order, 5, max);
            for i in 0..entries {
                let want = if i == 5 { max } else { (i % 3).min(max) };
                assert_eq!(get_entry(&block, order, i), want, "order {order} entry {i}");
            }
        }
    }

    #[test]
    fn sub_byte_refcounts_use_the_least_significant_bits_first() {
        let mut block = vec![0u8; 4];
        set_entry(&mut block, 0, 0, 1);
        set_entry(&mut block, 0, 9, 1);
        assert_eq!(block[..2], [0b0000_0001, 0b0000_0010]);
        let mut block = vec![0u8; 4];
        set_entry(&mut block, 2, 1, 0xa);
        assert_eq!(block[0], 0xa0);
        let mut block = vec![0u8; 4];
        set_entry(&mut block, 4, 1, 0x1234);
        assert_eq!(block[..4], [0, 0, 0x12, 0x34]);
    }
}
