//! The on-disk pieces of a space map: bitmap blocks of 2-bit counts, index entries, the
//! metadata space map's index block, and the 32-byte root the superblock holds.
//!
//! A bitmap entry holds a count of 0, 1 or 2, or 3 for "look in the overflow B-tree". The two
//! bits of entry `i` sit at bits 2i (worth 2) and 2i+1 (worth 1) of the little-endian 64-bit
//! words that follow the 16-byte header.

use crate::error::{Error, Result};
use crate::pdata::block::{self, BLOCK_SIZE, Block, get_u32, get_u64, put_u32, put_u64};

const BITMAP_HEADER: usize = 16;
const ENTRIES_U32: u32 = (4096 - 16) * 4;
/// Index entries in the metadata space map's index block.
pub const MAX_METADATA_BITMAPS: usize = 255;
/// Bytes of an index entry.
pub const INDEX_ENTRY_SIZE: usize = 16;
/// Bytes the superblock reserves for a space map root.
pub const ROOT_SIZE: usize = 128;

/// Where a bitmap is and how full it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IndexEntry {
    /// The bitmap block's location.
    pub blocknr: u64,
    /// Entries of the bitmap that are free (the tail past the device's end counts as free).
    pub nr_free: u32,
    /// Entries before the first free one.
    pub none_free_before: u32,
}

impl IndexEntry {
    /// Decodes 16 bytes.
    pub fn decode(raw: &[u8]) -> IndexEntry {
        IndexEntry {
            blocknr: get_u64(raw, 0),
            nr_free: get_u32(raw, 8),
            none_free_before: get_u32(raw, 12),
        }
    }

    /// The 16 bytes of this entry.
    pub fn encode(&self) -> [u8; INDEX_ENTRY_SIZE] {
        let mut raw = [0; INDEX_ENTRY_SIZE];
        put_u64(&mut raw, 0, self.blocknr);
        put_u32(&mut raw, 8, self.nr_free);
        put_u32(&mut raw, 12, self.none_free_before);
        raw
    }
}

/// A space map root as the superblock holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SmRoot {
    /// Blocks the space map covers.
    pub nr_blocks: u64,
    /// Blocks with a count above zero.
    pub nr_allocated: u64,
    /// The index: a B-tree of [`IndexEntry`] for data, an index block for metadata.
    pub bitmap_root: u64,
    /// The B-tree of counts of 3 and more.
    pub ref_count_root: u64,
}

impl SmRoot {
    /// Decodes the first 32 bytes of `raw`.
    pub fn decode(raw: &[u8]) -> SmRoot {
        SmRoot {
            nr_blocks: get_u64(raw, 0),
            nr_allocated: get_u64(raw, 8),
            bitmap_root: get_u64(raw, 16),
            ref_count_root: get_u64(raw, 24),
        }
    }

    /// The 128 bytes the superblock stores.
    pub fn encode(&self) -> [u8; ROOT_SIZE] {
        let mut raw = [0; ROOT_SIZE];
        put_u64(&mut raw, 0, self.nr_blocks);
        put_u64(&mut raw, 8, self.nr_allocated);
        put_u64(&mut raw, 16, self.bitmap_root);
        put_u64(&mut raw, 24, self.ref_count_root);
        raw
    }
}

/// A bitmap block holding `counts` (at most one bitmap's worth), with its index
/// entry's fill figures.
pub fn encode_bitmap(counts: impl Iterator<Item = u32>) -> (Block, IndexEntry) {
    let mut b = block::zeroed();
    let mut used = 0u32;
    let mut first_free = None;
    let mut len = 0u32;
    for (i, count) in counts.take(ENTRIES_U32 as usize).enumerate() {
        let bits: u8 = match count {
            0 => 0,
            1 => 0b10,
            2 => 0b01,
            _ => 0b11,
        };
        if count == 0 {
            first_free.get_or_insert(len);
        } else {
            used += 1;
        }
        let (byte, shift) = (BITMAP_HEADER + i / 4, (i % 4) * 2);
        b[byte] |= bits << shift;
        len += 1;
    }
    let entry = IndexEntry {
        blocknr: 0,
        nr_free: ENTRIES_U32 - used,
        none_free_before: first_free.unwrap_or(len),
    };
    (b, entry)
}

/// The first `len` entries of a bitmap block: 0, 1, 2, or 3 for an overflowed count.
pub fn decode_bitmap(b: &[u8; BLOCK_SIZE], len: usize) -> Vec<u8> {
    (0..len.min(ENTRIES_U32 as usize))
        .map(|i| {
            let bits = (b[BITMAP_HEADER + i / 4] >> ((i % 4) * 2)) & 0b11;
            match bits {
                0b10 => 1,
                0b01 => 2,
                other => other,
            }
        })
        .collect()
}

/// The metadata space map's index block listing `entries`.
pub fn encode_index(entries: &[IndexEntry]) -> Result<Block> {
    if entries.len() > MAX_METADATA_BITMAPS {
        return Err(Error::InvalidArgument(format!(
            "{} metadata bitmaps, at most {MAX_METADATA_BITMAPS}",
            entries.len()
        )));
    }
    let mut b = block::zeroed();
    for (i, e) in entries.iter().enumerate() {
        let at = 16 + i * INDEX_ENTRY_SIZE;
        b[at..at + INDEX_ENTRY_SIZE].copy_from_slice(&e.encode());
    }
    Ok(b)
}

/// The first `n` entries of the metadata space map's index block.
pub fn decode_index(b: &[u8; BLOCK_SIZE], n: usize) -> Result<Vec<IndexEntry>> {
    if n > MAX_METADATA_BITMAPS {
        return Err(Error::corrupt(format!(
            "metadata space map needs {n} bitmaps, at most {MAX_METADATA_BITMAPS} fit"
        )));
    }
    Ok((0..n)
        .map(|i| IndexEntry::decode(&b[16 + i * INDEX_ENTRY_SIZE..]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_round_trips_and_reports_its_fill() {
        let counts = [0u32, 1, 2, 3, 7, 0, 1];
        let (b, e) = encode_bitmap(counts.iter().copied());
        assert_eq!(decode_bitmap(&b, 7), [0, 1, 2, 3, 3, 0, 1]);
        assert_eq!(e.none_free_before, 0);
        assert_eq!(e.nr_free, ENTRIES_U32 - 5);
        let (_, full) = encode_bitmap([1u32, 1].into_iter());
        assert_eq!(full.none_free_before, 2);
    }

    #[test]
    fn bitmap_bits_are_laid_out_high_bit_first() {
        // Entry 0 with a count of 1 sets bit 1 of the first word, a count of 2 sets bit 0.
        let (one, _) = encode_bitmap([1u32].into_iter());
        assert_eq!(one[16], 0b10);
        let (two, _) = encode_bitmap([0u32, 2].into_iter());
        assert_eq!(two[16], 0b0100);
    }
}
