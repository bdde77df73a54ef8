//! Repairs: leaked refcounts lowered in place, the refcount structure rebuilt, table entries
//! rewritten, the dirty and corrupt bits cleared.

use crate::error::Error;

use super::super::header::{self, Header, MAX_REFTABLE_BYTES, incompat};
use super::super::layout::small;
use super::super::metaio::{MetaIo, MetaKind};
use super::super::refcount::{get_entry, set_entry};
use super::Repair;
use super::pass::{EntryFix, Pass};
use super::refs::Refs;
use super::stored::{REFT_RESERVED, Stored};

/// Offset of the incompatible feature bits in a version 3 header.
const INCOMPATIBLE_OFFSET: u64 = 72;

/// Repairs the refcounts `pass` found wrong, as far as `repair` allows.
pub(super) fn apply(
    io: &dyn MetaIo,
    h: &Header,
    mut pass: Pass,
    repair: Repair,
) -> Result<(), Error> {
    if repair == Repair::All && (pass.rebuild || pass.too_low > 0) {
        tracing::info!("rebuilding the refcount structure");
        for &(offset, len) in &pass.refstruct {
            pass.refs.dec(offset, len);
        }
        return rebuild(io, h, &pass.refs);
    }
    if pass.report.leaks > 0 {
        fix_leaks(io, h, &pass.refs)?;
    }
    Ok(())
}

/// Lowers every stored refcount above its reference count, block by block.
fn fix_leaks(io: &dyn MetaIo, h: &Header, refs: &Refs) -> Result<(), Error> {
    let stored = Stored::load(io, h)?;
    let per = stored.per_block();
    let order = h.refcount_order;
    let blocks: Vec<u64> = stored.reftable().to_vec();
    for (index, &entry) in blocks.iter().enumerate() {
        let offset = entry & !REFT_RESERVED;
        if offset == 0 || entry & REFT_RESERVED != 0 || offset % h.cluster_size() != 0 {
            continue;
        }
        let first = index as u64 * per;
        if first >= refs.len() {
            break;
        }
        let mut block = vec![0u8; small(h.cluster_size())];
        let got = io.read(MetaKind::Refblock, offset, &mut block)?;
        block[got..].fill(0);
        let mut changed = false;
        for i in 0..per.min(refs.len() - first) {
            let want = refs.get(first + i);
            if get_entry(&block, order, i) > want {
                set_entry(&mut block, order, i, want);
                changed = true;
            }
        }
        if changed {
            io.write(MetaKind::Refblock, offset, &block)?;
        }
    }
    io.sync()
}

/// Largest refcount a `2^order`-bit entry holds.
fn refcount_max(order: u32) -> u64 {
    match 1u32 << order {
        64 => u64::MAX,
        bits => (1u64 << bits) - 1,
    }
}

/// Writes a new refcount table and blocks past the end of the file holding `refs` (which must
/// not count the old refcount structure), then points the header at them.
fn rebuild(io: &dyn MetaIo, h: &Header, refs: &Refs) -> Result<(), Error> {
    let cs = h.cluster_size();
    let order = h.refcount_order;
    let max = refcount_max(order);
    if let Some(c) = (0..refs.len()).find(|&c| refs.get(c) > max) {
        return Err(Error::InvalidImage(format!(
            "cluster {c} has {} references, more than a refcount can hold",
            refs.get(c)
        )));
    }
    let per = (cs * 8) >> order;
    let start = refs.len();
    let (mut blocks, mut table) = (1u64, 1u64);
    loop {
        let total = start + table + blocks;
        let (b, t) = (total.div_ceil(per), (total.div_ceil(per) * 8).div_ceil(cs));
        if (b, t) == (blocks, table) {
            break;
        }
        (blocks, table) = (b, t);
    }
    if table * cs > MAX_REFTABLE_BYTES {
        return Err(Error::UnsupportedFeature(format!(
            "a refcount table of {table} clusters"
        )));
    }
    let table_offset = start * cs;
    let blocks_offset = table_offset + table * cs;
    let end = start + table + blocks;
    let mut reftable = vec![0u8; small(table * cs)];
    for b in 0..blocks {
        let mut block = vec![0u8; small(cs)];
        for i in 0..per {
            let c = b * per + i;
            let value = if c >= start {
                u64::from(c < end)
            } else {
                refs.get(c)
            };
            set_entry(&mut block, order, i, value);
        }
        let offset = blocks_offset + b * cs;
        io.write(MetaKind::Refblock, offset, &block)?;
        header::put64(&mut reftable, small(b * 8), offset);
    }
    io.write(MetaKind::Reftable, table_offset, &reftable)?;
    io.sync()?;
    let mut fields = [0u8; 12];
    fields[..8].copy_from_slice(&table_offset.to_be_bytes());
    fields[8..].copy_from_slice(&u32::try_from(table).unwrap_or(u32::MAX).to_be_bytes());
    io.write(MetaKind::Header, header::REFTABLE_FIELDS_OFFSET, &fields)?;
    io.sync()
}

/// Rewrites table entries; returns how many.
pub(super) fn fix_entries(io: &dyn MetaIo, fixes: &[EntryFix]) -> Result<u64, Error> {
    for fix in fixes {
        let kind = MetaKind::L2;
        io.write(kind, fix.at, &fix.value.to_be_bytes())?;
    }
    io.sync()?;
    Ok(fixes.len() as u64)
}

/// Clears the dirty and corrupt bits; returns true if one was set.
pub(super) fn mark_clean(io: &dyn MetaIo, h: &Header) -> Result<bool, Error> {
    let bits = incompat::DIRTY | incompat::CORRUPT;
    if h.version < 3 || h.incompatible & bits == 0 {
        return Ok(false);
    }
    let value = h.incompatible & !bits;
    io.write(MetaKind::Header, INCOMPATIBLE_OFFSET, &value.to_be_bytes())?;
    io.sync()?;
    Ok(true)
}
