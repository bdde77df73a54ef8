//! The read path: guest range → runs of mappings → engine reads straight into the caller's
//! buffers (standard clusters, contiguous host runs coalesced), zeros, backing reads and
//! decompressed clusters.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::buffer::{AlignedBuf, Composite, SharedBuf, SharedBufs, scatter};
use crate::error::Error;

use super::layout::small;

use super::backing::{self, BackingReader};
use super::compress;
use super::header::Compression;
use super::layout::{Layout, Mapping};
use super::meta::Meta;
use super::metaio::{MetaIo, MetaKind};

/// One engine I/O of a plan.
pub(crate) struct HostIo {
    /// Write (else read).
    pub write: bool,
    /// Host file offset.
    pub host: u64,
    /// Memory.
    pub bufs: Composite,
}

/// A metadata change made once the data of its op is written: the new L2 entry of a guest
/// cluster, and the mapping whose clusters it releases.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Alloc {
    /// Guest cluster.
    pub gc: u64,
    /// New L2 entry.
    pub entry: u64,
    /// L2 table receiving it.
    pub table: u64,
    /// L1 index of that table.
    pub l1_index: u64,
    /// Previous mapping, whose host clusters lose a reference afterwards.
    pub old: Mapping,
    /// The new host cluster, if the file system zeroed it and only the guest data is being
    /// written: later writes into the same guest cluster may then go straight to it and
    /// complete with this allocation.
    pub joinable: Option<u64>,
}

/// What one guest op turns into.
#[derive(Default)]
pub(crate) struct Plan {
    /// Engine I/O.
    pub io: Vec<HostIo>,
    /// Metadata changes to commit after the I/O.
    pub allocs: Vec<Alloc>,
    /// An fdatasync after the I/O.
    pub flush: bool,
}

impl Plan {
    /// Adds an engine I/O, merging it into the previous one when the host range continues it.
    pub fn push(&mut self, write: bool, host: u64, bufs: Composite) {
        if let Some(last) = self.io.last_mut() {
            if last.write == write && last.host + last.bufs.len() as u64 == host {
                last.bufs.append(bufs);
                return;
            }
        }
        self.io.push(HostIo { write, host, bufs });
    }
}

/// Where data that is not a plain host cluster comes from (per queue).
pub(crate) struct Sources {
    /// The backing image, if any.
    pub backing: Option<BackingReader>,
    /// Synchronous access to the image file.
    pub io: Arc<dyn MetaIo>,
    /// How compressed clusters are compressed.
    pub compression: Compression,
    /// Geometry.
    pub layout: Layout,
    last: Option<(u64, Vec<u8>)>,
}

impl Sources {
    /// Sources for one queue.
    pub fn new(
        backing: Option<BackingReader>,
        io: Arc<dyn MetaIo>,
        compression: Compression,
        layout: Layout,
    ) -> Sources {
        Sources {
            backing,
            io,
            compression,
            layout,
            last: None,
        }
    }

    /// The decompressed guest cluster stored at `host` (the last one is kept).
    pub fn compressed(&mut self, host: u64, len: u64) -> Result<&[u8], Error> {
        let hit = matches!(&self.last, Some((at, _)) if *at == host);
        if !hit {
            let mut input = vec![0u8; usize::try_from(len).unwrap_or(0)];
            let got = self.io.read(MetaKind::Data, host, &mut input)?;
            input.truncate(got);
            let mut out = vec![0u8; self.layout.cluster_usize()];
            compress::decompress(self.compression, &input, &mut out)?;
            self.last = Some((host, out));
        }
        Ok(self.last.as_ref().map_or(&[][..], |(_, d)| d.as_slice()))
    }

    /// Reads guest bytes `[offset, offset + len)` that are unallocated here (backing or zeros)
    /// into bytes `[skip, skip + len)` of `dst`.
    pub fn unallocated(
        &mut self,
        offset: u64,
        dst: &SharedBufs,
        skip: usize,
        len: usize,
    ) -> Result<(), Error> {
        match &mut self.backing {
            Some(b) => b.read(offset, dst, skip, len),
            None => backing::zero(dst, skip, len),
        }
    }

    /// `len` bytes of guest data at `start` within guest cluster `gc` as currently mapped by
    /// `old` (copy-on-write source).
    pub fn old_data(
        &mut self,
        gc: u64,
        old: Mapping,
        start: u64,
        len: usize,
    ) -> Result<AlignedBuf, Error> {
        let mut buf = AlignedBuf::zeroed(len);
        if len == 0 {
            return Ok(buf);
        }
        let at = small(start);
        match old {
            Mapping::Zero { .. } => {}
            Mapping::Unallocated if self.backing.is_none() => {}
            Mapping::Unallocated => {
                let tmp = SharedBuf::new(len);
                let shared = SharedBufs::new(Box::new(tmp.clone()))
                    .ok_or_else(|| Error::InvalidArgument("buffer too large".to_owned()))?;
                let offset = (gc << self.layout.cluster_bits) + start;
                self.unallocated(offset, &shared, 0, len)?;
                buf.as_mut_slice().copy_from_slice(&tmp.copy_out());
            }
            Mapping::Data { host, .. } => {
                self.io
                    .read(MetaKind::Data, host + start, buf.as_mut_slice())?;
            }
            Mapping::Compressed { host, len: clen } => {
                let data = self.compressed(host, clen)?;
                let src = data.get(at..at + len).unwrap_or_default();
                buf.as_mut_slice().copy_from_slice(src);
            }
        }
        Ok(buf)
    }
}

/// Locks the metadata (a poisoned lock is an I/O error, not a panic).
pub(crate) fn lock(meta: &Mutex<Meta>) -> Result<MutexGuard<'_, Meta>, Error> {
    meta.lock()
        .map_err(|_| Error::InvalidImage("metadata lock poisoned by an earlier panic".to_owned()))
}

/// Checks that a standard cluster starts inside the file (a cluster in the file's last, partly
/// written stretch reads zeros past the end, like QEMU; one wholly past the end is an error).
pub(crate) fn check_host(meta: &Meta, host: u64) -> Result<(), Error> {
    if host >= meta.file_size {
        return Err(Error::InvalidImage(format!(
            "L2 entry points past the end of the file ({host:#x})"
        )));
    }
    Ok(())
}

struct Run {
    skip: usize,
    len: usize,
    inner: u64,
    mapping: Mapping,
}

/// Plans a read of `bufs.len()` bytes at guest `offset`; zero, backing and compressed parts
/// are filled before returning, standard clusters become engine reads.
pub(crate) fn plan_read(
    meta: &Mutex<Meta>,
    srcs: &mut Sources,
    offset: u64,
    bufs: &SharedBufs,
) -> Result<Plan, Error> {
    let runs = map_runs(meta, offset, bufs.len() as u64)?;
    let mut plan = Plan::default();
    for run in runs {
        let guest = offset + run.skip as u64;
        match run.mapping {
            Mapping::Data { host, .. } => {
                plan.push(
                    false,
                    host + run.inner,
                    backing::piece(bufs, run.skip, run.len)?,
                );
            }
            Mapping::Zero { .. } => backing::zero(bufs, run.skip, run.len)?,
            Mapping::Unallocated => srcs.unallocated(guest, bufs, run.skip, run.len)?,
            Mapping::Compressed { host, len } => {
                let data = srcs.compressed(host, len)?;
                let at = small(run.inner);
                let src = data.get(at..at + run.len).unwrap_or_default();
                scatter(&backing::piece(bufs, run.skip, run.len)?, 0, src);
            }
        }
    }
    Ok(plan)
}

/// Where a read of `len` bytes at guest `offset` can go in one engine read straight into the
/// caller's buffers: the host offset, if standard clusters map the whole range to one
/// contiguous host run. `None` (the caller plans the read) if any part is elsewhere.
pub(crate) fn direct_read(meta: &Mutex<Meta>, offset: u64, len: u64) -> Result<Option<u64>, Error> {
    let mut meta = lock(meta)?;
    one_host_run(&mut meta, (offset, len), |meta, gc| {
        Ok(match meta.mapping(gc)? {
            Mapping::Data { host, .. } => Some(host),
            _ => None,
        })
    })
}

/// The host offset of guest bytes `[offset, offset + len)` if `host_of` gives every guest
/// cluster they touch a host cluster (checked to start inside the file) and those clusters
/// form one contiguous run; `None` as soon as one does not.
pub(crate) fn one_host_run(
    meta: &mut Meta,
    (offset, len): (u64, u64),
    mut host_of: impl FnMut(&mut Meta, u64) -> Result<Option<u64>, Error>,
) -> Result<Option<u64>, Error> {
    let layout = *meta.layout();
    let (mut start, mut next) = (None, 0u64);
    for (gc, inner, n) in layout.split(offset, len) {
        let Some(host) = host_of(meta, gc)? else {
            return Ok(None);
        };
        check_host(meta, host)?;
        let Some(at) = host.checked_add(inner) else {
            return Ok(None);
        };
        if start.is_some() && at != next {
            return Ok(None);
        }
        start.get_or_insert(at);
        next = at.saturating_add(n);
    }
    Ok(start)
}

/// The mappings of a guest range, adjacent unallocated and zero pieces merged.
fn map_runs(meta: &Mutex<Meta>, offset: u64, len: u64) -> Result<Vec<Run>, Error> {
    let mut meta = lock(meta)?;
    let layout = *meta.layout();
    let mut runs: Vec<Run> = Vec::new();
    let mut skip = 0usize;
    for (gc, inner, n) in layout.split(offset, len) {
        let mapping = meta.mapping(gc)?;
        if let Mapping::Data { host, .. } = mapping {
            check_host(&meta, host)?;
        }
        let n = small(n);
        let merge = matches!(
            (runs.last().map(|r| r.mapping), mapping),
            (Some(Mapping::Unallocated), Mapping::Unallocated)
                | (Some(Mapping::Zero { .. }), Mapping::Zero { .. })
        );
        match runs.last_mut() {
            Some(last) if merge => last.len += n,
            _ => runs.push(Run {
                skip,
                len: n,
                inner,
                mapping,
            }),
        }
        skip += n;
    }
    Ok(runs)
}
