//! Discard and write-zeroes. Whole clusters change their L2 entry (version 3 with a backing
//! file: the zero flag; otherwise: unallocated) and release their host clusters after the new
//! entry is durable; partial clusters (and whole ones of version 2 images with a backing file,
//! which cannot express "zeros") are written with zeros.

use crate::error::Error;

use super::layout::{Mapping, ZERO};
use super::meta::Meta;
use super::read::{Alloc, Plan, Sources};
use super::write::{self, WriteSrc};

/// Plans making guest bytes `[offset, offset + len)` read as zeros.
pub(crate) fn plan_discard(
    meta: &mut Meta,
    srcs: &mut Sources,
    offset: u64,
    len: u64,
    plan: &mut Plan,
) -> Result<(), Error> {
    let layout = *meta.layout();
    let cs = layout.cluster_size();
    for (gc, inner, n) in layout.split(offset, len) {
        let whole = inner == 0 && (n == cs || (gc << layout.cluster_bits) + n == layout.size);
        let target = match (whole, layout.version, meta.has_backing) {
            (false, _, _) | (true, 2, true) => None,
            (true, 2, false) => Some(0),
            (true, _, backing) => Some(if backing { ZERO } else { 0 }),
        };
        let Some(entry) = target else {
            let at = (gc << layout.cluster_bits) + inner;
            write::plan_write(meta, srcs, at, n, WriteSrc::Zeros, plan)?;
            continue;
        };
        let old = meta.mapping(gc)?;
        let already = match old {
            Mapping::Unallocated => !meta.has_backing,
            Mapping::Zero { prealloc: None } => true,
            _ => false,
        };
        if already {
            continue;
        }
        let (table, l1_index) = write::l2_for_write(meta, gc)?;
        meta.busy.insert(gc);
        plan.allocs.push(Alloc {
            gc,
            entry,
            table,
            l1_index,
            old,
            joinable: None,
        });
    }
    Ok(())
}
