//! Discard: holes punched where the image stores guest data.
//!
//! Flat extents are punched over the range. In sparse extents only grains holding plain data
//! are punched (inside the grain, so a grain's neighbours and the metadata are never
//! touched); grain tables do not change, so a discard needs no commit and is as crash safe as
//! the data it touches. Punched sectors read zeros. Unallocated grains still read from the
//! parent (a discarded range may read anything), zero grains and ZERO extents read zeros
//! already, and compressed grains are left as they are (they are packed end to end).
//! As before a write, the image takes a new CID before its first discard that punches
//! anything. A grain whose allocation is in flight is not in its table yet and is left alone, as an
//! overlapping write in flight may land before or after the discard.

use crate::error::Error;

use super::lock;
use super::open::Store;
use super::plan::{Context, grain_bytes, grains, walk};
use super::tables::Grain;

/// A range of an extent file: (file index, byte offset, length).
pub(crate) type HostRange = (usize, u64, u64);

/// The file ranges to punch for a discard of `len` bytes at guest offset `offset`, contiguous
/// ones merged.
pub(crate) fn plan_discard(
    ctx: &mut Context,
    offset: u64,
    len: u64,
) -> Result<Vec<HostRange>, Error> {
    let len = usize::try_from(len)
        .map_err(|_| Error::InvalidArgument(format!("range of {len} bytes too long")))?;
    let extents = ctx.extents.clone();
    let mut meta = lock(&ctx.meta)?;
    let mut out: Vec<HostRange> = Vec::new();
    for (e, p) in walk(&extents, offset, len) {
        match e.store {
            Store::Zero => {}
            Store::Flat { file, offset } => {
                push(&mut out, (file, offset + (p.pos - e.start), p.len as u64));
            }
            Store::Sparse { file, sparse } => {
                let gb = grain_bytes(&meta, sparse)?;
                let s = &mut meta.sparse[sparse];
                for (g, inner, gp) in grains(e.start, gb, p) {
                    if let Grain::Data(host) = s.lookup(g)? {
                        push(&mut out, (file, host + inner, gp.len as u64));
                    }
                }
            }
        }
    }
    if !out.is_empty() {
        // The content changes: children made from the old content must be refused.
        meta.update_cid()?;
    }
    Ok(out)
}

fn push(out: &mut Vec<HostRange>, r: HostRange) {
    match out.last_mut() {
        Some(last) if last.0 == r.0 && last.1 + last.2 == r.1 => last.2 += r.2,
        _ => out.push(r),
    }
}
