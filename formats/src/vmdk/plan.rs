//! Turning one guest op into a plan: engine I/O on extent files (straight into or out of the
//! caller's buffers), work done synchronously (zeros, parent data, compressed grains), and the
//! grain allocations to commit once the I/O is done.

use std::sync::{Arc, Mutex};

use crate::buffer::{AlignedBuf, Composite, SharedBufs, scatter};
use crate::error::Error;
use crate::qcow2::backing::{BackingReader, piece, zero};

use super::open::{Extent, Store};
use super::tables::Grain;
use super::{Meta, lock, stream};

/// One engine I/O of a plan.
pub(crate) struct HostIo {
    /// Index of the extent file (and its engine).
    pub file: usize,
    /// Write (else read).
    pub write: bool,
    /// Byte offset in the file.
    pub host: u64,
    /// Memory.
    pub bufs: Composite,
}

/// A grain allocation, committed after its data is written.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Alloc {
    /// Extent file.
    pub file: usize,
    /// Sparse extent.
    pub sparse: usize,
    /// Grain number in the extent.
    pub grain: u64,
    /// Byte offset of the new grain.
    pub host: u64,
}

/// What one guest op turns into.
#[derive(Default)]
pub(crate) struct Plan {
    /// Engine I/O.
    pub io: Vec<HostIo>,
    /// Allocations to commit after the I/O.
    pub allocs: Vec<Alloc>,
    /// Files to fdatasync (a flush).
    pub flush: Vec<usize>,
}

impl Plan {
    /// Adds an engine I/O, merged into the previous one when it continues it.
    fn push(&mut self, file: usize, write: bool, host: u64, bufs: Composite) {
        if let Some(last) = self.io.last_mut() {
            if last.file == file
                && last.write == write
                && last.host + last.bufs.len() as u64 == host
            {
                last.bufs.append(bufs);
                return;
            }
        }
        self.io.push(HostIo {
            file,
            write,
            host,
            bufs,
        });
    }
}

/// Per-queue planning state.
pub(crate) struct Context {
    /// The image's extents.
    pub extents: Arc<Vec<Extent>>,
    /// Shared metadata.
    pub meta: Arc<Mutex<Meta>>,
    /// The parent image's reader.
    pub parent: Option<BackingReader>,
    /// The last decompressed grain: (sparse extent, byte offset) and its bytes.
    pub last: Option<((usize, u64), Vec<u8>)>,
}

/// One piece of an op inside one extent (inside one grain for sparse extents).
#[derive(Clone, Copy)]
pub(super) struct Piece {
    /// Guest byte offset.
    pub pos: u64,
    /// Byte offset in the caller's buffers.
    pub skip: usize,
    /// Length.
    pub len: usize,
}

/// The extents covering `[offset, offset + len)` and the piece of the op in each.
pub(super) fn walk(extents: &[Extent], offset: u64, len: usize) -> Vec<(Extent, Piece)> {
    let mut out = Vec::new();
    let mut i = extents.partition_point(|e| e.start + e.len <= offset);
    let mut done = 0usize;
    while done < len {
        let Some(e) = extents.get(i) else { break };
        let pos = offset + done as u64;
        let n = usize::try_from(e.start + e.len - pos)
            .unwrap_or(usize::MAX)
            .min(len - done);
        out.push((
            *e,
            Piece {
                pos,
                skip: done,
                len: n,
            },
        ));
        done += n;
        i += 1;
    }
    out
}

/// The grain-sized pieces of `p` in a sparse extent starting at `start` with `gb`-byte grains:
/// (grain, offset in grain, piece).
pub(super) fn grains(start: u64, gb: u64, p: Piece) -> Vec<(u64, u64, Piece)> {
    let mut out = Vec::new();
    let mut done = 0usize;
    while done < p.len {
        let pos = p.pos + done as u64;
        let rel = pos - start;
        let inner = rel % gb;
        let n = usize::try_from(gb - inner)
            .unwrap_or(usize::MAX)
            .min(p.len - done);
        out.push((
            rel / gb,
            inner,
            Piece {
                pos,
                skip: p.skip + done,
                len: n,
            },
        ));
        done += n;
    }
    out
}

pub(super) fn grain_bytes(meta: &Meta, sparse: usize) -> Result<u64, Error> {
    meta.sparse
        .get(sparse)
        .map(|s| s.header.grain_bytes())
        .ok_or_else(|| Error::InvalidImage("VMDK sparse extent index".to_owned()))
}

/// Plans a read of `bufs.len()` bytes at `offset`.
pub(crate) fn plan_read(ctx: &mut Context, offset: u64, bufs: &SharedBufs) -> Result<Plan, Error> {
    let mut plan = Plan::default();
    let extents = ctx.extents.clone();
    for (e, p) in walk(&extents, offset, bufs.len()) {
        match e.store {
            Store::Zero => zero(bufs, p.skip, p.len)?,
            Store::Flat { file, offset } => {
                plan.push(
                    file,
                    false,
                    offset + (p.pos - e.start),
                    piece(bufs, p.skip, p.len)?,
                );
            }
            Store::Sparse { file, sparse } => {
                read_sparse(ctx, &mut plan, (e, file, sparse), p, bufs)?
            }
        }
    }
    Ok(plan)
}

/// Where a read of `len` bytes at guest `offset` can go in one engine read straight into the
/// caller's buffers: the extent file and byte offset, if flat extents and allocated grains
/// hold the whole range as one contiguous run of one file. `None` (the caller plans the read)
/// if any part is elsewhere.
pub(crate) fn direct_read(
    ctx: &Context,
    offset: u64,
    len: usize,
) -> Result<Option<(usize, u64)>, Error> {
    one_run(ctx, offset, len)
}

/// Where a write of `len` bytes at guest `offset` can go in one engine write straight from
/// the caller's buffers, as for [`direct_read`]: flat extents and allocated grains are written
/// in place, so such a write allocates nothing and waits for no allocation (a grain being
/// allocated is not yet allocated). Before it says where, it marks the image changed (a new
/// CID in the descriptor, once), as every write does.
pub(crate) fn direct_write(
    ctx: &Context,
    offset: u64,
    len: usize,
) -> Result<Option<(usize, u64)>, Error> {
    let Some(run) = one_run(ctx, offset, len)? else {
        return Ok(None);
    };
    lock(&ctx.meta)?.update_cid()?;
    Ok(Some(run))
}

/// The file and byte offset of the one contiguous run that holds guest `[offset, offset +
/// len)` in flat extents and allocated grains, if one does.
fn one_run(ctx: &Context, offset: u64, len: usize) -> Result<Option<(usize, u64)>, Error> {
    let mut run = Run::default();
    let mut covered = 0usize;
    for (e, p) in walk(&ctx.extents, offset, len) {
        covered += p.len;
        let fits = match e.store {
            Store::Zero => false,
            Store::Flat { file, offset } => run.extend(file, offset + (p.pos - e.start), p.len),
            Store::Sparse { file, sparse } => {
                let mut meta = lock(&ctx.meta)?;
                let gb = grain_bytes(&meta, sparse)?;
                let s = &mut meta.sparse[sparse];
                let mut fits = true;
                for (g, inner, gp) in grains(e.start, gb, p) {
                    fits = match s.lookup(g)? {
                        Grain::Data(host) => run.extend(file, host + inner, gp.len),
                        _ => false,
                    };
                    if !fits {
                        break;
                    }
                }
                fits
            }
        };
        if !fits {
            return Ok(None);
        }
    }
    Ok(run.start.filter(|_| covered == len))
}

/// One contiguous run of one file, built piece by piece.
#[derive(Default)]
struct Run {
    /// File and byte offset of the first piece.
    start: Option<(usize, u64)>,
    /// The byte the next piece must start at.
    next: u64,
}

impl Run {
    /// Adds `len` bytes at `host` of `file`; false if they do not continue the run.
    fn extend(&mut self, file: usize, host: u64, len: usize) -> bool {
        match self.start {
            Some((f, _)) if f != file || host != self.next => return false,
            Some(_) => {}
            None => self.start = Some((file, host)),
        }
        self.next = host.saturating_add(len as u64);
        true
    }
}

fn read_sparse(
    ctx: &mut Context,
    plan: &mut Plan,
    (e, file, sparse): (Extent, usize, usize),
    p: Piece,
    bufs: &SharedBufs,
) -> Result<(), Error> {
    let mapped: Vec<(Grain, u64, Piece)> = {
        let mut meta = lock(&ctx.meta)?;
        let gb = grain_bytes(&meta, sparse)?;
        let s = &mut meta.sparse[sparse];
        let mut v = Vec::new();
        for (g, inner, gp) in grains(e.start, gb, p) {
            v.push((s.lookup(g)?, inner, gp));
        }
        v
    };
    for (grain, inner, gp) in mapped {
        match grain {
            Grain::Data(host) => {
                plan.push(file, false, host + inner, piece(bufs, gp.skip, gp.len)?)
            }
            Grain::Zero => zero(bufs, gp.skip, gp.len)?,
            Grain::Unallocated => from_parent(ctx, gp.pos, bufs, gp.skip, gp.len)?,
            Grain::Compressed(host) => {
                let data = compressed(ctx, sparse, host)?;
                let start = usize::try_from(inner).unwrap_or(usize::MAX);
                let src = data
                    .get(start..start + gp.len)
                    .ok_or_else(|| Error::InvalidImage("VMDK grain range".to_owned()))?;
                scatter(&piece(bufs, gp.skip, gp.len)?, 0, src);
            }
        }
    }
    Ok(())
}

/// Reads parent bytes (zeros without a parent or past its end).
fn from_parent(
    ctx: &mut Context,
    pos: u64,
    bufs: &SharedBufs,
    skip: usize,
    len: usize,
) -> Result<(), Error> {
    match &mut ctx.parent {
        Some(parent) => parent.read(pos, bufs, skip, len),
        None => zero(bufs, skip, len),
    }
}

/// The decompressed grain at `host` of sparse extent `sparse` (the last one is kept).
fn compressed(ctx: &mut Context, sparse: usize, host: u64) -> Result<&[u8], Error> {
    let key = (sparse, host);
    if ctx.last.as_ref().is_none_or(|(k, _)| *k != key) {
        let (io, gb) = {
            let meta = lock(&ctx.meta)?;
            (meta.sparse[sparse].io.clone(), grain_bytes(&meta, sparse)?)
        };
        let mut out = vec![0u8; usize::try_from(gb).unwrap_or(0)];
        stream::read_grain(&*io, host, &mut out)?;
        ctx.last = Some((key, out));
    }
    Ok(ctx.last.as_ref().map_or(&[][..], |(_, d)| d.as_slice()))
}

/// What planning a write gave.
pub(crate) enum Planned {
    /// Ready to launch.
    Ready(Plan),
    /// A grain it touches is being allocated: retry later.
    Busy,
}

/// Plans a write of `bufs` at `offset`, allocating grains as needed.
pub(crate) fn plan_write(
    ctx: &mut Context,
    offset: u64,
    bufs: &SharedBufs,
) -> Result<Planned, Error> {
    let extents = ctx.extents.clone();
    let pieces = walk(&extents, offset, bufs.len());
    let meta_arc = ctx.meta.clone();
    let mut meta = lock(&meta_arc)?;
    if touches_busy(&meta, &pieces)? {
        return Ok(Planned::Busy);
    }
    meta.update_cid()?;
    let mut plan = Plan::default();
    let result = pieces.iter().try_for_each(|(e, p)| match e.store {
        Store::Zero => Err(Error::UnsupportedFeature(
            "writing to a VMDK ZERO extent".to_owned(),
        )),
        Store::Flat { file, offset } => {
            plan.push(
                file,
                true,
                offset + (p.pos - e.start),
                piece(bufs, p.skip, p.len)?,
            );
            Ok(())
        }
        Store::Sparse { file, sparse } => {
            write_sparse(ctx, &mut meta, &mut plan, (*e, file, sparse), *p, bufs)
        }
    });
    if let Err(err) = result {
        meta.release(plan.allocs.iter().map(|a| (a.sparse, a.grain)));
        return Err(err);
    }
    Ok(Planned::Ready(plan))
}

fn touches_busy(meta: &Meta, pieces: &[(Extent, Piece)]) -> Result<bool, Error> {
    if meta.busy.is_empty() {
        return Ok(false);
    }
    for (e, p) in pieces {
        if let Store::Sparse { sparse, .. } = e.store {
            let gb = grain_bytes(meta, sparse)?;
            if grains(e.start, gb, *p)
                .iter()
                .any(|(g, _, _)| meta.busy.contains(&(sparse, *g)))
            {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

fn write_sparse(
    ctx: &mut Context,
    meta: &mut Meta,
    plan: &mut Plan,
    (e, file, sparse): (Extent, usize, usize),
    p: Piece,
    bufs: &SharedBufs,
) -> Result<(), Error> {
    let gb = grain_bytes(meta, sparse)?;
    for (g, inner, gp) in grains(e.start, gb, p) {
        let s = &mut meta.sparse[sparse];
        match s.lookup(g)? {
            Grain::Data(host) => plan.push(file, true, host + inner, piece(bufs, gp.skip, gp.len)?),
            Grain::Compressed(_) => {
                return Err(Error::UnsupportedFeature(
                    "writing to a compressed VMDK grain".to_owned(),
                ));
            }
            old => {
                s.ensure_table(g)?;
                let host = s.reserve()?;
                let grain_start = e.start + g * gb;
                let fill_parent = old == Grain::Unallocated;
                let data = new_grain(ctx, fill_parent, (grain_start, gb), (inner, gp), bufs)?;
                plan.push(file, true, host, data);
                meta.busy.insert((sparse, g));
                plan.allocs.push(Alloc {
                    file,
                    sparse,
                    grain: g,
                    host,
                });
            }
        }
    }
    Ok(())
}

/// The bytes of a new grain: the guest's piece, and around it the parent's bytes (or zeros).
fn new_grain(
    ctx: &mut Context,
    fill_parent: bool,
    (grain_start, gb): (u64, u64),
    (inner, gp): (u64, Piece),
    bufs: &SharedBufs,
) -> Result<Composite, Error> {
    let head = usize::try_from(inner).unwrap_or(0);
    let tail = usize::try_from(gb - inner).unwrap_or(0) - gp.len;
    let mut c = Composite::new();
    c.append(fill(ctx, fill_parent, grain_start, head)?);
    c.append(piece(bufs, gp.skip, gp.len)?);
    c.append(fill(ctx, fill_parent, gp.pos + gp.len as u64, tail)?);
    Ok(c)
}

fn fill(
    ctx: &mut Context,
    from_parent_data: bool,
    pos: u64,
    len: usize,
) -> Result<Composite, Error> {
    let mut c = Composite::new();
    if len == 0 {
        return Ok(c);
    }
    let buf = AlignedBuf::zeroed(len);
    match (&mut ctx.parent, from_parent_data) {
        (Some(parent), true) => {
            let shared = SharedBufs::new(Box::new(buf))
                .ok_or_else(|| Error::InvalidArgument("fill".to_owned()))?;
            parent.read(pos, &shared, 0, len)?;
            c.push_shared(&shared, 0, len);
        }
        _ => c.push_owned(buf),
    }
    Ok(c)
}

/// Commits finished allocations: fdatasync the files holding the new grains (and new zeroed
/// grain tables), then point the grain tables (primary, then redundant) at them, then write
/// the directory entries of the new tables that now hold a grain.
pub(crate) fn commit(
    meta: &mut Meta,
    files: &[Arc<crate::engine::EngineFile>],
    allocs: &[Alloc],
) -> Result<(), Error> {
    let mut synced: Vec<usize> = Vec::new();
    for a in allocs {
        if !synced.contains(&a.file) {
            if let Some(f) = files.get(a.file) {
                f.datasync()?;
            }
            synced.push(a.file);
        }
    }
    for a in allocs {
        meta.sparse[a.sparse].set(a.grain, a.host)?;
    }
    let mut touched: Vec<usize> = allocs.iter().map(|a| a.sparse).collect();
    touched.sort_unstable();
    touched.dedup();
    touched
        .into_iter()
        .try_for_each(|s| meta.sparse[s].install())
}
