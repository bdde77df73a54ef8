//! Discard and write-zeroes.
//!
//! Write-zeroes makes the range read as zeros: whole clusters change their L2 entry (version 3
//! with a backing file: the zero flag; otherwise: unallocated) and release their host clusters
//! after the new entry is durable; partial clusters (and whole ones of version 2 images with a
//! backing file, which cannot express "zeros") are written with zeros.
//!
//! Discard is a hint, as in QEMU, and never allocates: whole clusters are released as above,
//! except that on version 2 images with a backing file they become unallocated (the backing
//! file shows through, as QEMU does); a partial cluster is zeroed in place when it holds data of
//! its own and left alone otherwise (unallocated, zero or compressed).
//!
//! Emptying an image (after `rustbk img commit` copied its data into its backing file) is a
//! discard whose whole clusters always become unallocated, with or without a backing file and
//! in every version, so the backing file shows through again, as QEMU's `bdrv_make_empty`.

use crate::error::Error;

use super::layout::{Mapping, ZERO};
use super::meta::Meta;
use super::read::{Alloc, Plan, Sources};
use super::write::{self, WriteSrc};

/// What a discard-like op promises about the range afterwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Zeroing {
    /// Write-zeroes: the range reads as zeros.
    Required,
    /// Discard: the guest no longer needs the range; nothing is allocated for it.
    Hint,
    /// Emptying: whole clusters become unallocated (the backing file shows through).
    Unmap,
}

/// Plans a discard or write-zeroes of guest bytes `[offset, offset + len)`.
pub(crate) fn plan_discard(
    meta: &mut Meta,
    srcs: &mut Sources,
    (offset, len): (u64, u64),
    zeroing: Zeroing,
    plan: &mut Plan,
) -> Result<(), Error> {
    let layout = *meta.layout();
    let cs = layout.cluster_size();
    for (gc, inner, n) in layout.split(offset, len) {
        let at = (gc << layout.cluster_bits) + inner;
        let whole = inner == 0 && (n == cs || at + n == layout.size);
        let Some(entry) = new_entry(whole, layout.version, meta.has_backing, zeroing) else {
            if zeroing == Zeroing::Required || holds_data(meta.mapping(gc)?) {
                write::plan_write(meta, srcs, at, n, WriteSrc::Zeros, plan)?;
            }
            continue;
        };
        let old = meta.mapping(gc)?;
        let unchanged = match old {
            Mapping::Unallocated => entry == 0 || !meta.has_backing,
            Mapping::Zero { prealloc: None } => entry == ZERO || !meta.has_backing,
            _ => false,
        };
        if unchanged {
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

/// The L2 entry a whole cluster gets, `None` where the cluster is handled in place (partial
/// clusters, and write-zeroes on version 2 images with a backing file).
fn new_entry(whole: bool, version: u32, backing: bool, zeroing: Zeroing) -> Option<u64> {
    match (whole, version, backing, zeroing) {
        (true, _, _, Zeroing::Unmap) => Some(0),
        (false, ..) | (true, 2, true, Zeroing::Required) => None,
        (true, 2, _, _) | (true, _, false, _) => Some(0),
        (true, _, true, _) => Some(ZERO),
    }
}

/// Whether a cluster stores plain data of its own, which a partial discard zeroes in place.
fn holds_data(mapping: Mapping) -> bool {
    matches!(mapping, Mapping::Data { .. })
}
