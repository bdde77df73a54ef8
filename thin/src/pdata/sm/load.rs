//! Reading a space map back from its committed on-disk form, trusting nothing: every bitmap
//! is checksummed, every overflowed entry must have its count in the overflow tree and every
//! count there must belong to an overflowed entry.

use std::collections::{BTreeMap, HashSet};

use super::disk::{IndexEntry, SmRoot, decode_bitmap, decode_index};
use super::{COUNT_SIZE, DataSm, INDEX_SIZE, MetaSm, SmLayout};
use crate::error::{Error, Result};
use crate::pdata::block::{Kind, get_u32};
use crate::pdata::btree;
use crate::pdata::dev::MetaDev;
use crate::pdata::refs::{ENTRIES_PER_BITMAP, OVERFLOW_FROM, RefCounts};
use crate::pdata::tm::Tm;

/// Loads the metadata space map of `dev` from its root; returns its counts and layout.
pub fn load_metadata(dev: &MetaDev, root: SmRoot) -> Result<(RefCounts, MetaSm)> {
    if root.nr_blocks > dev.nr_blocks() {
        return Err(Error::corrupt(format!(
            "metadata space map covers {} blocks, the device holds {}",
            root.nr_blocks,
            dev.nr_blocks()
        )));
    }
    let mut tm = Tm::new(dev.clone(), RefCounts::new(root.nr_blocks)?);
    let n = usize::try_from(root.nr_blocks.div_ceil(ENTRIES_PER_BITMAP))
        .map_err(|_| Error::corrupt("metadata space map size"))?;
    let index = tm.read(root.bitmap_root, Kind::Index)?;
    let bitmaps = decode_index(index, n)?;
    check_locations(&bitmaps, dev.nr_blocks())?;
    let mut refs = RefCounts::new(root.nr_blocks)?;
    fill(&mut tm, &mut refs, &bitmaps, root)?;
    let layout = SmLayout {
        index: root.bitmap_root,
        overflow: root.ref_count_root,
        bitmaps,
    };
    Ok((refs, MetaSm { layout }))
}

/// Loads the data space map from its root; `max_blocks` is what the data device can hold.
pub fn load_data(tm: &mut Tm, root: SmRoot, max_blocks: u64) -> Result<DataSm> {
    if root.nr_blocks > max_blocks {
        return Err(Error::corrupt(format!(
            "data space map covers {} blocks, the data device holds {max_blocks}",
            root.nr_blocks
        )));
    }
    let n = root.nr_blocks.div_ceil(ENTRIES_PER_BITMAP);
    let mut bitmaps = Vec::new();
    btree::for_each(tm, root.bitmap_root, INDEX_SIZE, &mut |key, value| {
        if key != bitmaps.len() as u64 || key >= n {
            return Err(Error::corrupt(format!(
                "data space map index has entry {key}"
            )));
        }
        bitmaps.push(IndexEntry::decode(value));
        Ok(())
    })?;
    if bitmaps.len() as u64 != n {
        return Err(Error::corrupt(format!(
            "data space map index has {} of {n} bitmaps",
            bitmaps.len()
        )));
    }
    check_locations(&bitmaps, tm.dev().nr_blocks())?;
    let mut refs = RefCounts::new(root.nr_blocks)?;
    fill(tm, &mut refs, &bitmaps, root)?;
    let layout = SmLayout {
        index: root.bitmap_root,
        overflow: root.ref_count_root,
        bitmaps,
    };
    Ok(DataSm { refs, layout })
}

/// Checks that every bitmap has a block of its own on the metadata device of `nr_blocks`
/// blocks, before the counts they cover are allocated: a hostile index naming one block many
/// times would otherwise make a small metadata device claim counts for billions of blocks.
fn check_locations(bitmaps: &[IndexEntry], nr_blocks: u64) -> Result<()> {
    let mut seen = HashSet::new();
    for (i, entry) in bitmaps.iter().enumerate() {
        if entry.blocknr >= nr_blocks || !seen.insert(entry.blocknr) {
            return Err(Error::corrupt(format!(
                "space map bitmap {i} is at block {}, past the end or shared with another",
                entry.blocknr
            )));
        }
    }
    Ok(())
}

fn fill(tm: &mut Tm, refs: &mut RefCounts, bitmaps: &[IndexEntry], root: SmRoot) -> Result<()> {
    let mut overflowed = Vec::new();
    for (i, entry) in bitmaps.iter().enumerate() {
        let first = i as u64 * ENTRIES_PER_BITMAP;
        let len = usize::try_from((root.nr_blocks - first).min(ENTRIES_PER_BITMAP))
            .map_err(|_| Error::corrupt("bitmap length"))?;
        let b = tm.read(entry.blocknr, Kind::Bitmap)?;
        for (j, value) in decode_bitmap(b, len).into_iter().enumerate() {
            let block = first + j as u64;
            match value {
                3 => overflowed.push(block),
                small => refs.set(block, u32::from(small))?,
            }
        }
    }
    let counts = read_overflow(tm, root)?;
    if counts.len() != overflowed.len() || !overflowed.iter().all(|b| counts.contains_key(b)) {
        return Err(Error::corrupt(format!(
            "space map has {} overflowed entries and {} overflow counts that do not match",
            overflowed.len(),
            counts.len()
        )));
    }
    for (block, count) in counts {
        refs.set(block, count)?;
    }
    if refs.nr_allocated() != root.nr_allocated {
        tracing::warn!(
            recorded = root.nr_allocated,
            counted = refs.nr_allocated(),
            "space map records a different number of allocated blocks than its bitmaps"
        );
    }
    refs.loaded();
    Ok(())
}

fn read_overflow(tm: &mut Tm, root: SmRoot) -> Result<BTreeMap<u64, u32>> {
    let mut counts = BTreeMap::new();
    btree::for_each(tm, root.ref_count_root, COUNT_SIZE, &mut |block, value| {
        let count = get_u32(value, 0);
        if block >= root.nr_blocks || count < OVERFLOW_FROM {
            return Err(Error::corrupt(format!(
                "overflow count {count} for block {block} is out of place"
            )));
        }
        counts.insert(block, count);
        Ok(())
    })?;
    Ok(counts)
}
