//! Metadata blocks: 4 KiB, each starting with a crc32c checksum and its own location.
//!
//! Every block type persistent-data writes has the same head: a little-endian crc32c at byte 0
//! over bytes 4.. (inverted, as Linux's `dm_bm_checksum` computes it), XORed with a salt that
//! names the block's type, and the block's own location at byte 8. A block read back from
//! another place, or of another type, fails its check.

use crate::error::{Error, Result};

/// Size of every metadata block.
pub const BLOCK_SIZE: usize = 4096;
/// Metadata block size in 512-byte sectors, as the superblock records it.
pub const BLOCK_SECTORS: u32 = 8;

/// One metadata block's bytes.
pub type Block = Box<[u8; BLOCK_SIZE]>;

/// A zero-filled block.
pub fn zeroed() -> Block {
    Box::new([0; BLOCK_SIZE])
}

/// The types of metadata block, each with its checksum salt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The thin pool superblock (block 0).
    Superblock,
    /// A B-tree node.
    Node,
    /// A space map bitmap.
    Bitmap,
    /// The metadata space map's index.
    Index,
}

impl Kind {
    fn salt(self) -> u32 {
        match self {
            Kind::Superblock => 160_774,
            Kind::Node => 121_107,
            Kind::Bitmap => 240_779,
            Kind::Index => 160_478,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Superblock => "superblock",
            Kind::Node => "B-tree node",
            Kind::Bitmap => "space map bitmap",
            Kind::Index => "space map index",
        }
    }
}

fn checksum(block: &[u8; BLOCK_SIZE], kind: Kind) -> u32 {
    !crc32c::crc32c(&block[4..]) ^ kind.salt()
}

/// Stamps `block` with its location and checksum, ready to be written at `location`.
pub fn seal(block: &mut [u8; BLOCK_SIZE], kind: Kind, location: u64) {
    put_u64(block, 8, location);
    let sum = checksum(block, kind);
    put_u32(block, 0, sum);
}

/// Checks that `block`, read at `location`, is a `kind` block written there.
pub fn verify(block: &[u8; BLOCK_SIZE], kind: Kind, location: u64) -> Result<()> {
    let bad = |why: String| Error::BadBlock {
        block: location,
        why,
    };
    if get_u32(block, 0) != checksum(block, kind) {
        return Err(bad(format!("bad checksum for a {}", kind.name())));
    }
    let recorded = get_u64(block, 8);
    if recorded != location {
        return Err(bad(format!("{} records location {recorded}", kind.name())));
    }
    Ok(())
}

/// The little-endian u32 at `at`. `at + 4` must be within `bytes`.
pub fn get_u32(bytes: &[u8], at: usize) -> u32 {
    let mut raw = [0; 4];
    raw.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(raw)
}

/// The little-endian u64 at `at`. `at + 8` must be within `bytes`.
pub fn get_u64(bytes: &[u8], at: usize) -> u64 {
    let mut raw = [0; 8];
    raw.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(raw)
}

/// Stores `value` little-endian at `at`.
pub fn put_u32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

/// Stores `value` little-endian at `at`.
pub fn put_u64(bytes: &mut [u8], at: usize, value: u64) {
    bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_block_verifies_only_as_its_kind_and_location() {
        let mut b = zeroed();
        b[100] = 7;
        seal(&mut b, Kind::Node, 42);
        assert!(verify(&b, Kind::Node, 42).is_ok());
        assert!(verify(&b, Kind::Bitmap, 42).is_err());
        assert!(verify(&b, Kind::Node, 43).is_err());
        b[4000] ^= 1;
        assert!(verify(&b, Kind::Node, 42).is_err());
    }
}
