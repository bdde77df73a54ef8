//! The write path: in-place writes to clusters this image owns alone, and allocating writes
//! with copy-on-write of the untouched parts. A write covering a whole new cluster is written
//! as it is; a new cluster whose old contents are zeros gets only the guest data. A cluster
//! past the file's old end reads as zeros already (the file is grown ahead of such clusters a
//! chunk at a time, see [`Meta::grow_ahead`]); any other is zeroed by the file system
//! (zero-range fallocate, as QEMU does: reserved blocks, so the guest's writes into it are
//! plain overwrites).
//!
//! An allocation takes its host cluster (refcount 1 in memory) when the write is planned; once
//! the data is written, [`commit`] puts the new entry into the cached L2 table. Both reach the
//! disk at the next write-back, in the crash-safe order of the `writeback` module.

use crate::buffer::{AlignedBuf, Composite, SharedBufs};
use crate::error::Error;

use super::layout::small;

use super::backing;
use super::layout::{self, COPIED, Mapping};
use super::meta::Meta;
use super::read::{Alloc, Plan, Sources, check_host, one_host_run};

/// Where the bytes of a write come from.
#[derive(Clone, Copy)]
pub(crate) enum WriteSrc<'a> {
    /// The caller's buffers.
    Guest(&'a SharedBufs),
    /// Zeros (write-zeroes and partial discards).
    Zeros,
}

impl WriteSrc<'_> {
    fn piece(&self, skip: usize, len: usize) -> Result<Composite, Error> {
        match self {
            WriteSrc::Guest(bufs) => backing::piece(bufs, skip, len),
            WriteSrc::Zeros => {
                let mut c = Composite::new();
                c.push_owned(AlignedBuf::zeroed(len));
                Ok(c)
            }
        }
    }
}

/// Plans a write of `len` bytes at guest `offset`. Allocations are made now (refcounts in
/// memory, guest clusters marked busy); their entries are recorded in `plan.allocs`.
pub(crate) fn plan_write(
    meta: &mut Meta,
    srcs: &mut Sources,
    offset: u64,
    len: u64,
    src: WriteSrc<'_>,
    plan: &mut Plan,
) -> Result<(), Error> {
    let layout = *meta.layout();
    let mut skip = 0usize;
    for (gc, inner, n) in layout.split(offset, len) {
        let piece = src.piece(skip, small(n))?;
        let mapping = meta.mapping(gc)?;
        match in_place(meta, mapping)? {
            Some(host) => {
                check_host(meta, host)?;
                plan.push(true, host + inner, piece);
            }
            None => allocate(meta, srcs, (gc, inner), mapping, piece, plan)?,
        }
        skip += small(n);
    }
    Ok(())
}

/// Where a write of `len` bytes at guest `offset` can go in one engine write straight from
/// the caller's buffers: the host offset, if the whole range lies in clusters this image owns
/// alone that form one contiguous host run. `None` (the caller plans the write) otherwise.
pub(crate) fn direct_write(meta: &mut Meta, offset: u64, len: u64) -> Result<Option<u64>, Error> {
    one_host_run(meta, (offset, len), |meta, gc| {
        let mapping = meta.mapping(gc)?;
        in_place(meta, mapping)
    })
}

/// The host cluster a write may overwrite in place (refcount exactly one).
fn in_place(meta: &mut Meta, mapping: Mapping) -> Result<Option<u64>, Error> {
    match mapping {
        Mapping::Data { host, copied: true } => Ok(Some(host)),
        Mapping::Data { host, .. } => {
            let rc = meta.refcount(host >> meta.layout().cluster_bits)?;
            Ok((rc == 1).then_some(host))
        }
        _ => Ok(None),
    }
}

/// A new cluster for guest cluster `gc` holding `piece` at `inner` and the old contents around it.
fn allocate(
    meta: &mut Meta,
    srcs: &mut Sources,
    (gc, inner): (u64, u64),
    old: Mapping,
    piece: Composite,
    plan: &mut Plan,
) -> Result<(), Error> {
    let cs = meta.layout().cluster_size();
    let (table, l1_index) = l2_for_write(meta, gc)?;
    let (host, fresh) = meta.alloc_fresh_cluster()?;
    if fresh {
        meta.grow_ahead(host + cs)?;
    }
    let whole = inner == 0 && piece.len() as u64 == cs;
    let zeroed = !whole && reads_zeros(meta, old) && (fresh || meta.zero_cluster(host)?);
    if whole || zeroed {
        plan.push(true, host + inner, piece);
    } else {
        let end = inner + piece.len() as u64;
        let mut bufs = Composite::new();
        bufs.push_owned(srcs.old_data(gc, old, 0, small(inner))?);
        bufs.append(piece);
        bufs.push_owned(srcs.old_data(gc, old, end, small(cs - end))?);
        plan.push(true, host, bufs);
    }
    meta.busy.insert(gc);
    plan.allocs.push(Alloc {
        gc,
        entry: layout::data_entry(host),
        table,
        l1_index,
        old,
        joinable: zeroed.then_some(host),
    });
    Ok(())
}

/// True if the guest cluster with mapping `old` reads as zeros.
fn reads_zeros(meta: &Meta, old: Mapping) -> bool {
    match old {
        Mapping::Unallocated => !meta.has_backing,
        Mapping::Zero { .. } => true,
        _ => false,
    }
}

/// The L2 table that will hold guest cluster `gc`'s entry: the linked one, a pending new one,
/// or a freshly allocated (zeroed, written, unlinked) one. Returns `(table, L1 index)`.
pub(crate) fn l2_for_write(meta: &mut Meta, gc: u64) -> Result<(u64, u64), Error> {
    let l1_index = meta.layout().l1_index(gc);
    let table = meta.l2_table(gc)?;
    if table != 0 {
        return Ok((table, l1_index));
    }
    if let Some(&pending) = meta.pending_l2.get(&l1_index) {
        return Ok((pending, l1_index));
    }
    let table = meta.alloc_cluster()?;
    meta.new_l2_table(table)?;
    meta.pending_l2.insert(l1_index, table);
    Ok((table, l1_index))
}

/// Applies the metadata of finished ops in memory: each new entry goes into its L2 table (a
/// new table is linked into the L1 table first), and the host clusters of the replaced
/// mapping are queued to lose their reference once the change is durable.
pub(crate) fn commit(meta: &mut Meta, allocs: &[Alloc]) -> Result<(), Error> {
    let layout = *meta.layout();
    for a in allocs {
        if meta.l2_table(a.gc)? != a.table {
            meta.set_l1_entry(a.l1_index, a.table | COPIED)?;
            meta.pending_l2.remove(&a.l1_index);
        }
        meta.set_l2_entry(a.table, layout.l2_index(a.gc), a.entry)?;
        if let Some(run) = a.old.host_clusters(&layout) {
            meta.pending_free.push(run);
        }
    }
    Ok(())
}
