//! The block trees: which data block backs each virtual block of a device.

use std::ops::Range;

use super::Metadata;
use super::details::{MAPPING_SIZE, Mapping};
use super::refs::DataRefs;
use crate::error::{Error, Result};
use crate::pdata::btree;

impl Metadata {
    /// The mapping of virtual block `vblock` of device `id`.
    pub fn lookup(&mut self, id: u64, vblock: u64) -> Result<Option<Mapping>> {
        self.details(id)?;
        let root = self.device_root(id)?;
        let found = btree::lookup(&mut self.tm, root, MAPPING_SIZE, vblock)?;
        found
            .map(|v| self.valid(id, vblock, Mapping::decode(&v)))
            .transpose()
    }

    /// The mappings of the virtual blocks in `vblocks`, in order.
    pub fn lookup_range(&mut self, id: u64, vblocks: Range<u64>) -> Result<Vec<(u64, Mapping)>> {
        self.details(id)?;
        let root = self.device_root(id)?;
        let found = btree::range(&mut self.tm, root, MAPPING_SIZE, vblocks)?;
        found
            .into_iter()
            .map(|(k, v)| Ok((k, self.valid(id, k, Mapping::decode(&v))?)))
            .collect()
    }

    /// `m`, the mapping of `vblock` of device `id`, if it is one the pool can have made: a
    /// data block inside the data space map, a time not after the pool's.
    fn valid(&self, id: u64, vblock: u64, m: Mapping) -> Result<Mapping> {
        let nr_data = self.data.refs.nr_blocks();
        if m.block >= nr_data {
            return Err(Error::corrupt(format!(
                "device {id} maps block {vblock} to data block {}, past the end ({nr_data} blocks)",
                m.block
            )));
        }
        if m.time > self.sb.time {
            return Err(Error::corrupt(format!(
                "device {id} maps block {vblock} at time {}, after the pool's time {}",
                m.time, self.sb.time
            )));
        }
        Ok(m)
    }

    /// Whether `mapping` of device `id` may be shared with a snapshot (it predates the
    /// device's last snapshot), so a write must copy it first.
    pub fn is_shared(&self, id: u64, mapping: Mapping) -> Result<bool> {
        Ok(mapping.time < self.details(id)?.snapshotted_time)
    }

    /// Allocates a data block; it is free again unless mapped before the next commit.
    pub fn alloc_data(&mut self) -> Result<u64> {
        self.data
            .refs
            .alloc()
            .ok_or(Error::DataFull(self.data.refs.nr_blocks()))
    }

    /// Returns a block from [`Metadata::alloc_data`] that was never mapped; it is free again
    /// at once. The caller makes sure no commit recorded the block as mapped (a commit while
    /// the block was handed out only recorded its count, which this clears).
    pub fn release_data(&mut self, block: u64) -> Result<()> {
        self.data.refs.unalloc(block)
    }

    /// Takes back a block given back with [`Metadata::release_data`] (the pool gives its
    /// handed-out blocks back around a commit so that the commit records them free).
    pub fn claim_data(&mut self, block: u64) -> Result<()> {
        self.data.refs.claim(block)
    }

    /// Maps `vblock` of device `id` to data block `block` (from [`Metadata::alloc_data`]),
    /// stamped with the current time; the block it replaces loses a reference.
    pub fn insert(&mut self, id: u64, vblock: u64, block: u64) -> Result<()> {
        let mut details = self.details(id)?;
        if block >= self.data.refs.nr_blocks() {
            return Err(Error::InvalidArgument(format!(
                "data block {block} is past the end"
            )));
        }
        let root = self.device_root(id)?;
        let value = Mapping {
            block,
            time: self.sb.time,
        }
        .encode();
        let mut refs = DataRefs(&mut self.data.refs);
        let (new_root, old) = btree::insert(&mut self.tm, root, vblock, &value, &mut refs)?;
        match old {
            Some(old) => self.data.refs.dec(Mapping::decode(&old).block).map(drop)?,
            // The count comes from the device's details on disk: hostile at worst.
            None => details.mapped_blocks = details.mapped_blocks.saturating_add(1),
        }
        self.set_details(id, details);
        self.replace_root_of(id, root, new_root)
    }

    /// Unmaps `vblock` of device `id`; returns the mapping removed.
    pub fn remove(&mut self, id: u64, vblock: u64) -> Result<Option<Mapping>> {
        let mut details = self.details(id)?;
        let root = self.device_root(id)?;
        let mut refs = DataRefs(&mut self.data.refs);
        let (new_root, old) = btree::remove(&mut self.tm, root, MAPPING_SIZE, vblock, &mut refs)?;
        let Some(old) = old.map(|v| Mapping::decode(&v)) else {
            return Ok(None);
        };
        self.data.refs.dec(old.block)?;
        details.mapped_blocks = details.mapped_blocks.saturating_sub(1);
        self.set_details(id, details);
        self.replace_root_of(id, root, new_root)?;
        Ok(Some(old))
    }

    /// Unmaps every block of device `id` in `vblocks`; returns how many were mapped.
    pub fn remove_range(&mut self, id: u64, vblocks: Range<u64>) -> Result<u64> {
        let mapped = self.lookup_range(id, vblocks)?;
        for (vblock, _) in &mapped {
            self.remove(id, *vblock)?;
        }
        Ok(mapped.len() as u64)
    }

    /// The data block count of `block`: above one if several devices share it through
    /// different tree nodes.
    pub fn data_count(&self, block: u64) -> Result<u32> {
        self.data.refs.get(block)
    }

    pub(super) fn replace_root_of(&mut self, id: u64, old: u64, new: u64) -> Result<()> {
        match old == new {
            true => Ok(()),
            false => self.set_device_root(id, new),
        }
    }
}
