//! The pool superblock at metadata block 0, laid out as dm-thin's `thin_disk_superblock`.

use super::details::TIME_MASK;
use crate::error::{Error, Result};
use crate::pdata::block::{self, BLOCK_SECTORS, Block, get_u32, get_u64, put_u32, put_u64};
use crate::pdata::sm::{ROOT_SIZE, SmRoot};

/// dm-thin's superblock magic.
pub const MAGIC: u64 = 27_022_010;
/// The metadata version written; 1 and 2 are read.
pub const VERSION: u32 = 2;
/// Superblock flag: the metadata must be checked before use.
pub const NEEDS_CHECK: u32 = 1;

const DATA_SM_ROOT: usize = 64;
const METADATA_SM_ROOT: usize = DATA_SM_ROOT + ROOT_SIZE;

/// The superblock's fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// Flags ([`NEEDS_CHECK`]).
    pub flags: u32,
    /// The pool's UUID (dm-thin leaves it zero).
    pub uuid: [u8; 16],
    /// Metadata version.
    pub version: u32,
    /// The current time stamp: bumped by every snapshot.
    pub time: u32,
    /// The transaction id the pool's user last set.
    pub transaction_id: u64,
    /// Location of a metadata snapshot (held root), 0 for none.
    pub held_root: u64,
    /// The data space map's root.
    pub data_sm: SmRoot,
    /// The metadata space map's root.
    pub metadata_sm: SmRoot,
    /// The top-level mapping tree: device id to the root of its block tree.
    pub mapping_root: u64,
    /// The device details tree.
    pub details_root: u64,
    /// Data block size in 512-byte sectors.
    pub data_block_size: u32,
    /// Metadata blocks in use.
    pub metadata_nr_blocks: u64,
    /// Compatible feature flags.
    pub compat_flags: u32,
    /// Feature flags that allow reading only.
    pub compat_ro_flags: u32,
    /// Feature flags that must be understood.
    pub incompat_flags: u32,
}

impl Superblock {
    /// Decodes and validates the superblock `b` (checksum already verified).
    pub fn decode(b: &[u8; block::BLOCK_SIZE]) -> Result<Superblock> {
        if get_u64(b, 32) != MAGIC {
            return Err(Error::corrupt("not a thin pool: bad superblock magic"));
        }
        let sb = Superblock::parse(b);
        sb.validate(metadata_block_size(b))?;
        Ok(sb)
    }

    /// The fields of superblock `b`, checked for nothing (not even the magic).
    pub fn parse(b: &[u8; block::BLOCK_SIZE]) -> Superblock {
        let mut uuid = [0; 16];
        uuid.copy_from_slice(&b[16..32]);
        Superblock {
            flags: get_u32(b, 4),
            uuid,
            version: get_u32(b, 40),
            time: get_u32(b, 44),
            transaction_id: get_u64(b, 48),
            held_root: get_u64(b, 56),
            data_sm: SmRoot::decode(&b[DATA_SM_ROOT..]),
            metadata_sm: SmRoot::decode(&b[METADATA_SM_ROOT..]),
            mapping_root: get_u64(b, 320),
            details_root: get_u64(b, 328),
            data_block_size: get_u32(b, 336),
            metadata_nr_blocks: get_u64(b, 344),
            compat_flags: get_u32(b, 352),
            compat_ro_flags: get_u32(b, 356),
            incompat_flags: get_u32(b, 360),
        }
    }

    fn validate(&self, metadata_block_size: u32) -> Result<()> {
        if !(1..=VERSION).contains(&self.version) {
            return Err(Error::Unsupported(format!(
                "metadata version {} (this rustbk reads 1 to {VERSION})",
                self.version
            )));
        }
        if self.incompat_flags != 0 {
            return Err(Error::Unsupported(format!(
                "incompatible feature flags {:#x}",
                self.incompat_flags
            )));
        }
        if self.time > TIME_MASK {
            return Err(Error::corrupt(format!(
                "pool time {} does not fit the 24 bits of a mapping",
                self.time
            )));
        }
        if metadata_block_size != BLOCK_SECTORS {
            return Err(Error::Unsupported(format!(
                "metadata block size of {metadata_block_size} sectors"
            )));
        }
        check_data_block_size(self.data_block_size)
    }

    /// The superblock as a block, ready to be sealed at block 0.
    pub fn encode(&self) -> Block {
        let mut b = block::zeroed();
        put_u32(&mut b[..], 4, self.flags);
        b[16..32].copy_from_slice(&self.uuid);
        put_u64(&mut b[..], 32, MAGIC);
        put_u32(&mut b[..], 40, self.version);
        put_u32(&mut b[..], 44, self.time);
        put_u64(&mut b[..], 48, self.transaction_id);
        put_u64(&mut b[..], 56, self.held_root);
        b[DATA_SM_ROOT..DATA_SM_ROOT + ROOT_SIZE].copy_from_slice(&self.data_sm.encode());
        b[METADATA_SM_ROOT..METADATA_SM_ROOT + ROOT_SIZE]
            .copy_from_slice(&self.metadata_sm.encode());
        put_u64(&mut b[..], 320, self.mapping_root);
        put_u64(&mut b[..], 328, self.details_root);
        put_u32(&mut b[..], 336, self.data_block_size);
        put_u32(&mut b[..], 340, BLOCK_SECTORS);
        put_u64(&mut b[..], 344, self.metadata_nr_blocks);
        put_u32(&mut b[..], 352, self.compat_flags);
        put_u32(&mut b[..], 356, self.compat_ro_flags);
        put_u32(&mut b[..], 360, self.incompat_flags);
        b
    }
}

/// The metadata block size superblock `b` records, in sectors (always [`BLOCK_SECTORS`]).
pub fn metadata_block_size(b: &[u8; block::BLOCK_SIZE]) -> u32 {
    get_u32(b, 340)
}

/// Smallest data block: 64 KiB in sectors.
pub const MIN_DATA_BLOCK_SECTORS: u32 = 128;
/// Largest data block: 1 GiB in sectors.
pub const MAX_DATA_BLOCK_SECTORS: u32 = 2 * 1024 * 1024;

/// Checks a data block size as dm-thin does: a multiple of 64 KiB from 64 KiB to 1 GiB.
pub fn check_data_block_size(sectors: u32) -> Result<()> {
    let ok = (MIN_DATA_BLOCK_SECTORS..=MAX_DATA_BLOCK_SECTORS).contains(&sectors)
        && sectors % MIN_DATA_BLOCK_SECTORS == 0;
    match ok {
        true => Ok(()),
        false => Err(Error::InvalidArgument(format!(
            "data block size of {sectors} sectors: must be a multiple of 64 KiB from 64 KiB to 1 GiB"
        ))),
    }
}
