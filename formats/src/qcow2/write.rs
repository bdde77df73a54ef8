//! The write path: in-place writes to clusters this image owns alone, allocating writes with
//! copy-on-write of the untouched parts, and the crash-safe commit of the metadata afterwards.
//!
//! Commit order (one batch of finished allocating ops):
//! 1. entries in new L2 tables (not yet reachable from the L1 table) are written;
//! 2. fdatasync: the guest data and every new metadata block are durable;
//! 3. dirty refcount blocks are written; 4. fdatasync;
//! 5. entries in reachable L2 tables, then L1 entries of new L2 tables, are written;
//! 6. if old clusters lose a reference: fdatasync, then their refcounts are decremented.
//!
//! A crash anywhere leaks clusters at worst; no reachable entry ever points at a cluster whose
//! refcount on disk is zero.

use crate::buffer::{AlignedBuf, Composite, SharedBufs};
use crate::error::Error;

use super::layout::small;

use super::backing;
use super::layout::{self, COPIED, Mapping};
use super::meta::{Meta, Table};
use super::metaio::MetaKind;
use super::read::{Alloc, Plan, Sources, check_host};

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
    let end = inner + piece.len() as u64;
    let head = srcs.old_data(gc, old, 0, small(inner))?;
    let tail = srcs.old_data(gc, old, end, small(cs - end))?;
    let host = meta.alloc_cluster()?;
    let mut bufs = Composite::new();
    bufs.push_owned(head);
    bufs.append(piece);
    bufs.push_owned(tail);
    plan.push(true, host, bufs);
    meta.busy.insert(gc);
    plan.allocs.push(Alloc {
        gc,
        entry: layout::data_entry(host),
        table,
        l1_index,
        old,
    });
    Ok(())
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
    let zeros = vec![0u8; meta.layout().cluster_usize()];
    meta.io.write(MetaKind::L2, table, &zeros)?;
    meta.cache_new_table(Table::L2, table, zeros)?;
    meta.pending_l2.insert(l1_index, table);
    Ok((table, l1_index))
}

/// Commits the metadata of finished ops in the crash-safe order (see the module docs).
/// `data_written`: some of these ops wrote guest data that must be durable first.
pub(crate) fn commit(meta: &mut Meta, allocs: &[Alloc], data_written: bool) -> Result<(), Error> {
    let mut linked = Vec::with_capacity(allocs.len());
    for a in allocs {
        linked.push(meta.l2_table(a.gc)? == a.table);
    }
    let layout = *meta.layout();
    for (a, _) in allocs.iter().zip(&linked).filter(|(_, l)| !**l) {
        meta.write_l2_entry(a.table, layout.l2_index(a.gc), a.entry)?;
    }
    let new_tables = linked.iter().any(|l| !l);
    if data_written || new_tables || meta.refcounts_dirty() {
        meta.io.sync()?;
        meta.flush_refcounts()?;
        meta.io.sync()?;
    }
    for (a, _) in allocs.iter().zip(&linked).filter(|(_, l)| **l) {
        meta.write_l2_entry(a.table, layout.l2_index(a.gc), a.entry)?;
    }
    for (a, _) in allocs.iter().zip(&linked).filter(|(_, l)| !**l) {
        if meta.l2_table(a.gc)? != a.table {
            meta.write_l1_entry(a.l1_index, a.table | COPIED)?;
            meta.pending_l2.remove(&a.l1_index);
        }
    }
    release_old(meta, allocs)
}

/// Drops the references the replaced mappings held, once the new entries are durable.
fn release_old(meta: &mut Meta, allocs: &[Alloc]) -> Result<(), Error> {
    let layout = *meta.layout();
    let released: Vec<(u64, u64)> = allocs
        .iter()
        .filter_map(|a| a.old.host_clusters(&layout))
        .collect();
    if released.is_empty() {
        return Ok(());
    }
    meta.io.sync()?;
    for (first, count) in released {
        meta.decrement(first, count)?;
    }
    Ok(())
}
