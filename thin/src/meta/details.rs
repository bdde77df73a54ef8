//! The device details tree's values and the mapping trees' block-and-time values.

use crate::pdata::block::{get_u32, get_u64, put_u32, put_u64};

/// Bytes of a device details value.
pub const DETAILS_SIZE: usize = 24;
/// Bytes of a mapping value.
pub const MAPPING_SIZE: usize = 8;
/// Time stamps are 24 bits wide.
pub const TIME_MASK: u32 = (1 << 24) - 1;
/// Data block numbers are 40 bits wide.
pub const MAX_DATA_BLOCKS: u64 = 1 << 40;

/// What the pool records about one thin device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceDetails {
    /// Blocks mapped.
    pub mapped_blocks: u64,
    /// The transaction id when the device was last changed.
    pub transaction_id: u64,
    /// The pool time when the device was created.
    pub creation_time: u32,
    /// The pool time when the device was last snapshotted (or created).
    pub snapshotted_time: u32,
}

impl DeviceDetails {
    /// Decodes 24 bytes.
    pub fn decode(raw: &[u8]) -> DeviceDetails {
        DeviceDetails {
            mapped_blocks: get_u64(raw, 0),
            transaction_id: get_u64(raw, 8),
            creation_time: get_u32(raw, 16),
            snapshotted_time: get_u32(raw, 20),
        }
    }

    /// The 24 bytes stored.
    pub fn encode(&self) -> [u8; DETAILS_SIZE] {
        let mut raw = [0; DETAILS_SIZE];
        put_u64(&mut raw, 0, self.mapped_blocks);
        put_u64(&mut raw, 8, self.transaction_id);
        put_u32(&mut raw, 16, self.creation_time);
        put_u32(&mut raw, 20, self.snapshotted_time);
        raw
    }
}

/// Where a virtual block lives, and when the mapping was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// The data block.
    pub block: u64,
    /// The pool time of the mapping (24 bits).
    pub time: u32,
}

impl Mapping {
    /// Decodes a mapping value: the block in the upper 40 bits, the time in the lower 24.
    pub fn decode(raw: &[u8]) -> Mapping {
        let v = get_u64(raw, 0);
        Mapping {
            block: v >> 24,
            time: u32::try_from(v & u64::from(TIME_MASK)).unwrap_or(0),
        }
    }

    /// The 8 bytes stored.
    pub fn encode(&self) -> [u8; MAPPING_SIZE] {
        let mut raw = [0; MAPPING_SIZE];
        put_u64(
            &mut raw,
            0,
            (self.block << 24) | u64::from(self.time & TIME_MASK),
        );
        raw
    }
}
