//! Discard and write-zeroes: the ranges of the file to punch or zero, and the bitmap bits to
//! set afterwards.
//!
//! * A fixed disk is its guest data followed by the footer: the range itself.
//! * A dynamic disk: only the parts in allocated blocks, since an unallocated block reads
//!   zeros already. Blocks stay allocated (giving a block back would mean moving every block
//!   after it), so a discard punches a hole in the block instead: the file system gets the
//!   space back, and the range reads zeros.
//! * A differencing disk: a discard punches the parts in allocated blocks and changes no
//!   bitmap bit, so sectors stored here read zeros and sectors from the parent still read the
//!   parent's data (a discarded range may read anything). Write-zeroes makes the range read
//!   zeros at this level: missing blocks are allocated (a new block reads zeros), sectors the
//!   range covers only in part and that are not here yet are first filled from the parent, as
//!   for writes, and the bits are set once the zeroing completed.
//!
//! No metadata changes for discards, and none for write-zeroes outside differencing disks,
//! so those are as crash safe as the data they touch. Write-zeroes on a differencing disk
//! allocates and sets bits exactly as a write does (`meta`'s crash order).

use crate::error::Error;
use crate::qcow2::backing::BackingReader;

use super::footer::DiskType;
use super::meta::Meta;
use super::plan::{SECTOR, bit, block_u32, fill_from_parent, partial_sectors, pieces};

/// Which op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Zeroing {
    /// Punch holes where data is stored.
    Discard,
    /// Make the range read zeros.
    WriteZeroes,
}

/// What a discard or write-zeroes turns into.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ZeroPlan {
    /// File ranges `(offset, length)` to punch or zero, in order, contiguous ones merged.
    pub ranges: Vec<(u64, u64)>,
    /// Bitmap bits to set once the ranges are zeroed: (block, first sector, sectors).
    pub marks: Vec<(u32, u64, u64)>,
}

impl ZeroPlan {
    fn push(&mut self, host: u64, len: u64) {
        match self.ranges.last_mut() {
            Some((at, n)) if *at + *n == host => *n += len,
            _ => self.ranges.push((host, len)),
        }
    }
}

/// Plans a `kind` of `len` bytes at guest offset `offset` (`meta` is `None` for fixed disks).
pub fn plan_zero(
    meta: Option<&mut Meta>,
    parent: Option<&mut BackingReader>,
    offset: u64,
    len: u64,
    kind: Zeroing,
) -> Result<ZeroPlan, Error> {
    let mut plan = ZeroPlan::default();
    let Some(meta) = meta else {
        plan.push(offset, len);
        return Ok(plan);
    };
    meta.check_usable()?;
    let l = meta.layout;
    let len = usize::try_from(len)
        .map_err(|_| Error::InvalidArgument(format!("range of {len} bytes too long")))?;
    let allocates = kind == Zeroing::WriteZeroes && l.disk_type == DiskType::Differencing;
    let mut parent = parent;
    for p in pieces(l.block_size, offset, len) {
        let block = block_u32(p.block)?;
        let at = match (meta.block_at(p.block), allocates) {
            (Some(at), _) => at,
            (None, true) => meta.allocate(block)?,
            (None, false) => continue,
        };
        let data = at + l.bitmap_len;
        if allocates {
            for s in partial_sectors(p.inner, p.len) {
                if !bit(meta.bitmap(block)?, s) {
                    let guest = p.block * l.block_size + s * SECTOR;
                    fill_from_parent(meta, parent.as_deref_mut(), guest, data + s * SECTOR)?;
                    meta.mark_written(block, s, 1)?;
                }
            }
            let first = p.inner / SECTOR;
            let last = (p.inner + p.len as u64 - 1) / SECTOR;
            plan.marks.push((block, first, last - first + 1));
        }
        plan.push(data + p.inner, p.len as u64);
    }
    Ok(plan)
}
