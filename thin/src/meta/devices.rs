//! Thin devices: create, snapshot, delete, list.

use super::Metadata;
use super::details::{DeviceDetails, MAPPING_SIZE, TIME_MASK};
use super::refs::TreeRefs;
use crate::error::{Error, Result};
use crate::pdata::block::get_u64;
use crate::pdata::btree::{self, ValueRefs};

impl Metadata {
    /// The ids of every thin device, in order.
    pub fn devices(&self) -> Vec<u64> {
        self.details.keys().copied().collect()
    }

    /// What the pool records about device `id`.
    pub fn details(&self, id: u64) -> Result<DeviceDetails> {
        self.details
            .get(&id)
            .copied()
            .ok_or(Error::NoSuchDevice(id))
    }

    /// Creates an empty thin device.
    pub fn create_thin(&mut self, id: u64) -> Result<()> {
        if self.details.contains_key(&id) {
            return Err(Error::DeviceExists(id));
        }
        let root = btree::empty(&mut self.tm, MAPPING_SIZE)?;
        self.set_device_root(id, root)?;
        let time = self.sb.time;
        self.set_details(
            id,
            DeviceDetails {
                mapped_blocks: 0,
                transaction_id: self.sb.transaction_id,
                creation_time: time,
                snapshotted_time: time,
            },
        );
        Ok(())
    }

    /// Creates device `id` as a snapshot of `origin`, sharing all of its blocks: one new entry
    /// in the top-level tree, whatever the size of the origin.
    pub fn create_snapshot(&mut self, id: u64, origin: u64) -> Result<()> {
        if self.details.contains_key(&id) {
            return Err(Error::DeviceExists(id));
        }
        let origin_details = self.details(origin)?;
        if self.sb.time >= TIME_MASK {
            // Wrapping to 0 would make every shared mapping look newer than the snapshot.
            return Err(Error::InvalidArgument(format!(
                "pool time {} is at its 24-bit limit: no more snapshots",
                self.sb.time
            )));
        }
        let root = self.device_root(origin)?;
        self.tm.inc(root)?;
        self.set_device_root(id, root)?;
        self.sb.time += 1;
        let time = self.sb.time;
        self.set_details(
            origin,
            DeviceDetails {
                snapshotted_time: time,
                ..origin_details
            },
        );
        self.set_details(
            id,
            DeviceDetails {
                mapped_blocks: origin_details.mapped_blocks,
                transaction_id: self.sb.transaction_id,
                creation_time: time,
                snapshotted_time: time,
            },
        );
        Ok(())
    }

    /// Deletes device `id`; blocks and tree nodes no other device shares are freed.
    pub fn delete_thin(&mut self, id: u64) -> Result<()> {
        self.details(id)?;
        let top = self.sb.mapping_root;
        let mut refs = TreeRefs(&mut self.data.refs);
        let (top, old) = btree::remove(&mut self.tm, top, MAPPING_SIZE, id, &mut refs)?;
        self.sb.mapping_root = top;
        let old = old.ok_or_else(|| Error::corrupt(format!("device {id} has no mapping tree")))?;
        refs.dec(&mut self.tm, &old)?;
        self.details.remove(&id);
        self.changed.insert(id);
        Ok(())
    }

    /// The root of device `id`'s block tree.
    pub(super) fn device_root(&mut self, id: u64) -> Result<u64> {
        let root = self.sb.mapping_root;
        btree::lookup(&mut self.tm, root, MAPPING_SIZE, id)?
            .map(|v| get_u64(&v, 0))
            .ok_or_else(|| Error::corrupt(format!("device {id} has details but no mapping tree")))
    }

    /// Points device `id` at block tree `root`. The tree's reference is the caller's.
    pub(super) fn set_device_root(&mut self, id: u64, root: u64) -> Result<()> {
        let top = self.sb.mapping_root;
        let value = root.to_le_bytes();
        let mut refs = TreeRefs(&mut self.data.refs);
        self.sb.mapping_root = btree::insert(&mut self.tm, top, id, &value, &mut refs)?.0;
        Ok(())
    }

    pub(super) fn set_details(&mut self, id: u64, details: DeviceDetails) {
        self.details.insert(id, details);
        self.changed.insert(id);
    }
}
