//! The refcounts stored in the image: the refcount table and its blocks, read on demand.

use crate::error::Error;

use super::super::header::Header;
use super::super::layout::small;
use super::super::metaio::{MetaIo, MetaKind};
use super::super::refcount::get_entry;

/// Bits of a refcount table entry that are not part of the block offset.
pub(super) const REFT_RESERVED: u64 = 0x1ff;

/// Refcount blocks kept in memory while reading refcounts.
const CACHED_BLOCKS: usize = 8;

/// Reads stored refcounts through the refcount table.
pub(super) struct Stored<'a> {
    io: &'a dyn MetaIo,
    cluster_bits: u32,
    order: u32,
    /// Refcount table entries; entries found unusable are zeroed by `forget`.
    reftable: Vec<u64>,
    cache: Vec<(u64, Vec<u8>)>,
}

impl<'a> Stored<'a> {
    /// Reads the refcount table of `header`.
    pub fn load(io: &'a dyn MetaIo, header: &Header) -> Result<Stored<'a>, Error> {
        let entries = (u64::from(header.refcount_table_clusters) << header.cluster_bits) / 8;
        let mut bytes = vec![0u8; small(entries * 8)];
        io.read_exact(MetaKind::Reftable, header.refcount_table_offset, &mut bytes)?;
        let reftable = bytes
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap_or_default()))
            .collect();
        Ok(Stored {
            io,
            cluster_bits: header.cluster_bits,
            order: header.refcount_order,
            reftable,
            cache: Vec::new(),
        })
    }

    /// The raw refcount table entries.
    pub fn reftable(&self) -> &[u64] {
        &self.reftable
    }

    /// Treats refcount table entry `index` as empty (its block is unusable).
    pub fn forget(&mut self, index: usize) {
        if let Some(e) = self.reftable.get_mut(index) {
            *e = 0;
        }
    }

    /// Refcount entries per block.
    pub fn per_block(&self) -> u64 {
        (8u64 << self.cluster_bits) >> self.order
    }

    /// The stored refcount of host cluster `cluster` (0 where no usable block describes it).
    pub fn get(&mut self, cluster: u64) -> Result<u64, Error> {
        let per = self.per_block();
        let Some(&entry) = usize::try_from(cluster / per)
            .ok()
            .and_then(|i| self.reftable.get(i))
        else {
            return Ok(0);
        };
        let block = entry & !REFT_RESERVED;
        if block == 0 {
            return Ok(0);
        }
        let order = self.order;
        Ok(get_entry(self.block(block)?, order, cluster % per))
    }

    fn block(&mut self, offset: u64) -> Result<&[u8], Error> {
        let at = match self.cache.iter().position(|(o, _)| *o == offset) {
            Some(at) => at,
            None => {
                let mut data = vec![0u8; 1 << self.cluster_bits];
                let got = self.io.read(MetaKind::Refblock, offset, &mut data)?;
                data[got..].fill(0);
                if self.cache.len() >= CACHED_BLOCKS {
                    self.cache.remove(0);
                }
                self.cache.push((offset, data));
                self.cache.len() - 1
            }
        };
        Ok(self.cache.get(at).map_or(&[][..], |(_, d)| d.as_slice()))
    }
}
