//! thin_dump's XML interchange format: a neutral model of a pool's metadata, a parser and a
//! writer.
//!
//! The format is the one `thin_dump` prints and `thin_restore` reads, in thin-provisioning-tools
//! 0.9 (C++) and 1.x (Rust):
//!
//! ```xml
//! <superblock uuid="" time="1" transaction="2" flags="0" version="2" data_block_size="128" nr_data_blocks="1000">
//!   <device dev_id="1" mapped_blocks="5" transaction="0" creation_time="0" snap_time="1">
//!     <range_mapping origin_begin="0" data_begin="0" length="4" time="0"/>
//!     <single_mapping origin_block="10" data_block="20" time="1"/>
//!   </device>
//! </superblock>
//! ```
//!
//! 1.x also prints `<def name="N">` blocks of mappings at the top and `<ref name="N"/>` inside
//! devices for leaves that several devices share; the parser expands them.
//!
//! The model is canonical: each device's runs are sorted by thin block, never overlap, and
//! neighbours that continue each other (next thin block, next data block, same time) are merged,
//! which is how both versions of `thin_dump` print them. Two dumps of the same pool therefore
//! compare equal whichever version printed them.

#![forbid(unsafe_code)]

mod error;
mod limit;
mod read;
mod runs;
mod write;

#[cfg(test)]
mod tests;

pub use error::Error;
pub use read::{MAX_EVENT_BYTES, MAX_RUNS, parse};
pub use write::write;

/// The `<superblock>` element: the pool-wide fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuperblockInfo {
    /// Free text; both versions of thin_dump print it empty.
    pub uuid: String,
    /// The pool's current time stamp (bumped by each snapshot).
    pub time: u32,
    /// The pool's transaction id.
    pub transaction: u64,
    /// Superblock flags; bit 0 is "needs check". 1.x omits the attribute when it is 0.
    pub flags: u32,
    /// Metadata format version (2 for current pools).
    pub version: u32,
    /// Data block size in 512-byte sectors.
    pub data_block_size: u32,
    /// Number of data blocks in the pool.
    pub nr_data_blocks: u64,
    /// Location of the metadata snapshot, if the dump names one.
    pub metadata_snap: Option<u64>,
}

/// One `<device>` element: a thin volume or snapshot and its mappings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceDump {
    /// The thin device id.
    pub dev_id: u32,
    /// The mapped block count as stored in the device details (not recomputed).
    pub mapped_blocks: u64,
    /// The device's transaction id.
    pub transaction: u64,
    /// Pool time at which the device was created.
    pub creation_time: u32,
    /// Pool time at which the device was last snapshotted.
    pub snap_time: u32,
    /// The device's mappings, sorted by thin block, non-overlapping, maximal runs.
    pub mappings: Vec<MappingRun>,
}

/// `length` consecutive thin blocks mapped to consecutive data blocks with one time stamp: a
/// `single_mapping` when `length` is 1, a `range_mapping` otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MappingRun {
    /// First thin (virtual) block.
    pub origin_begin: u64,
    /// First data block in the pool.
    pub data_begin: u64,
    /// Number of blocks, at least 1.
    pub length: u64,
    /// Time stamp of the mappings.
    pub time: u32,
}

/// A whole dump: the superblock and the devices in document order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dump {
    /// The pool-wide fields.
    pub superblock: SuperblockInfo,
    /// The devices, in the order they appear (thin_dump sorts them by id).
    pub devices: Vec<DeviceDump>,
}

impl MappingRun {
    /// One past the last thin block, or `None` if that overflows.
    pub fn origin_end(&self) -> Option<u64> {
        self.origin_begin.checked_add(self.length)
    }

    /// One past the last data block, or `None` if that overflows.
    pub fn data_end(&self) -> Option<u64> {
        self.data_begin.checked_add(self.length)
    }
}

impl DeviceDump {
    /// The number of blocks the mappings cover (compare with `mapped_blocks`), or `None` if that
    /// overflows.
    pub fn counted_blocks(&self) -> Option<u64> {
        self.mappings
            .iter()
            .try_fold(0u64, |sum, run| sum.checked_add(run.length))
    }
}
