//! Pieces of metadata set directly, as a restore from thin_dump's XML does.

use super::Metadata;
use super::details::{DeviceDetails, MAPPING_SIZE, Mapping, TIME_MASK};
use super::refs::DataRefs;
use crate::error::{Error, Result};
use crate::pdata::btree;

impl Metadata {
    /// Maps `vblock` of device `id` to `mapping` as it is (block and time), adding a
    /// reference to the data block; for restoring. The block must be unmapped so far.
    pub fn restore_mapping(&mut self, id: u64, vblock: u64, mapping: Mapping) -> Result<()> {
        self.details(id)?;
        if mapping.time > self.sb.time || mapping.time > TIME_MASK {
            return Err(Error::InvalidArgument(format!(
                "mapping of block {vblock} of device {id} has time {}, after the pool's {}",
                mapping.time, self.sb.time
            )));
        }
        self.data.refs.inc(mapping.block).map_err(|_| {
            Error::InvalidArgument(format!(
                "data block {} of device {id} is past the data device's end",
                mapping.block
            ))
        })?;
        let root = self.device_root(id)?;
        let mut refs = DataRefs(&mut self.data.refs);
        let value = mapping.encode();
        let (new_root, old) = btree::insert(&mut self.tm, root, vblock, &value, &mut refs)?;
        self.replace_root_of(id, root, new_root)?;
        match old {
            None => Ok(()),
            Some(_) => Err(Error::InvalidArgument(format!(
                "block {vblock} of device {id} is mapped twice"
            ))),
        }
    }

    /// Sets the recorded details of device `id`.
    pub fn restore_details(&mut self, id: u64, details: DeviceDetails) -> Result<()> {
        self.details(id)?;
        self.set_details(id, details);
        Ok(())
    }

    /// Sets the pool's time, transaction id and flags.
    pub fn restore_superblock(&mut self, time: u32, transaction_id: u64, flags: u32) -> Result<()> {
        if time > TIME_MASK {
            return Err(Error::InvalidArgument(format!(
                "pool time {time} exceeds 24 bits"
            )));
        }
        self.sb.time = time;
        self.sb.transaction_id = transaction_id;
        self.sb.flags = flags;
        Ok(())
    }

    /// Every mapping of device `id`, in order.
    pub fn mappings(&mut self, id: u64) -> Result<Vec<(u64, Mapping)>> {
        self.details(id)?;
        let root = self.device_root(id)?;
        let mut out = Vec::new();
        btree::for_each(&mut self.tm, root, MAPPING_SIZE, &mut |vblock, raw| {
            out.push((vblock, Mapping::decode(raw)));
            Ok(())
        })?;
        Ok(out)
    }
}
