//! Emptying a qcow2 image that has a backing file, as `qemu-img commit` does once the image's
//! data is in the backing file: every cluster becomes unallocated, so the image reads its
//! backing file again, and the host clusters are released.
//!
//! The work is a series of discards through the image's own queue, in the mode that always
//! unmaps whole clusters ([`super::discard`]): each new L2 entry is durable before the host
//! cluster it pointed to is released, so a crash leaves an image whose every cluster is either
//! still its own (equal to the backing file's data after a commit) or unallocated, with at
//! worst leaked clusters that `check -r leaks` gives back.
//!
//! Once the emptied metadata is durable, the host clusters whose refcount is zero are punched
//! out of the file (fallocate `PUNCH_HOLE`, size kept), so the space goes back to the host file
//! system; a free cluster reads as zeros and is referenced by nothing, so a crash there loses
//! nothing. Then, as qemu-img's commit does for an image without snapshots, the image is cut
//! down to its metadata (header, refcount structures, L1 table): the L2 tables that map
//! nothing are unlinked and freed, and the file truncated after its last cluster in use, in
//! the crash order the `shrink` module gives (at worst leaked tables after a crash).

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::BackingPolicy;
use nix::fcntl::{FallocateFlags, fallocate};

use crate::engine::{Access, EngineFile};
use crate::error::Error;
use crate::image::{BlockImage, Completion, ImageQueue, IoOp, OpenOptions};

use super::{Chain, Qcow2Image};

/// Guest bytes unmapped per discard op.
const STEP: u64 = 1 << 30;

/// Empties the qcow2 image at `path` (locked as a writer; its backing files are followed as
/// the image tool follows them). Refuses an image without a backing file: emptying it would
/// lose its data.
pub fn make_empty(path: &Path) -> Result<(), Error> {
    make_empty_steps(path, usize::MAX)
}

/// [`make_empty`] stopped after its first `steps` durable steps (0: none; 1: the discards;
/// 2 to 5: the steps of the `shrink` module): the image a crash right after them leaves, for
/// tests of the crash order.
#[doc(hidden)]
pub fn make_empty_steps(path: &Path, steps: usize) -> Result<(), Error> {
    let opts = OpenOptions {
        read_only: false,
        cache: crate::CacheMode::Writeback,
        backing: BackingPolicy::Follow,
        require_whole_sectors: false,
        ..OpenOptions::default()
    };
    let file = Arc::new(EngineFile::open(
        path,
        Access::ReadWrite,
        crate::CacheMode::Writeback,
    )?);
    let mut chain = Chain::default();
    chain.enter(path)?;
    let image = Qcow2Image::open(file.clone(), &opts, &mut chain)?;
    if image.backing().is_none() {
        return Err(Error::InvalidArgument(format!(
            "{} has no backing file: emptying it would lose its data",
            path.display()
        )));
    }
    if steps == 0 {
        return Ok(());
    }
    let mut q = image.queue(1)?;
    q.unmap_discards();
    let size = image.geometry().size;
    let mut offset = 0;
    while offset < size {
        let len = STEP.min(size - offset);
        run(&mut q, IoOp::Discard { offset, len })?;
        offset += len;
    }
    run(&mut q, IoOp::Flush)?;
    drop(q);
    image.sync_metadata()?;
    // The image is empty and durable now; giving the space back is a bonus.
    if let Err(e) = punch_free(&image) {
        tracing::warn!(error = %e, path = %path.display(), "cannot punch the freed clusters out");
    }
    drop(image);
    // The file stays open (and locked) while it is cut down to its metadata.
    match super::shrink::shrink(&file, steps - 1) {
        Ok(end) => tracing::debug!(path = %path.display(), ?end, "emptied image cut"),
        Err(e) => {
            tracing::warn!(error = %e, path = %path.display(), "cannot cut the emptied image")
        }
    }
    Ok(())
}

/// Punches the cluster of `cs` bytes at `start` (a multiple of `cs`) out of the file at `path`.
pub(super) fn punch_range(path: &Path, start: u64, cs: u64) -> Result<(), Error> {
    punch(&open_writable(path)?, (start / cs, 1), cs)
}

/// The file at `path`, opened for writing (for hole punches).
fn open_writable(path: &Path) -> Result<std::fs::File, Error> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|source| Error::Open {
            path: path.to_owned(),
            source,
        })
}

/// Punches the runs of host clusters with refcount zero out of the image's file.
fn punch_free(image: &Qcow2Image) -> Result<(), Error> {
    let end = image.file.size()?;
    let file = open_writable(image.file.path())?;
    let mut meta = super::read::lock(&image.meta)?;
    let cs = meta.layout().cluster_size();
    let mut run: Option<(u64, u64)> = None;
    for cluster in 0..end.div_ceil(cs) {
        if meta.refcount(cluster)? != 0 {
            if let Some(r) = run.take() {
                punch(&file, r, cs)?;
            }
            continue;
        }
        run = match run {
            Some((first, n)) => Some((first, n + 1)),
            None => Some((cluster, 1)),
        };
    }
    match run {
        Some(r) => punch(&file, r, cs),
        None => Ok(()),
    }
}

/// Punches clusters `first..first + count` (of `cs` bytes) out of `file`.
fn punch(file: &std::fs::File, (first, count): (u64, u64), cs: u64) -> Result<(), Error> {
    let bad = |v: u64| Error::InvalidArgument(format!("offset {v} out of range"));
    let start = first.checked_mul(cs).ok_or_else(|| bad(first))?;
    let len = count.checked_mul(cs).ok_or_else(|| bad(count))?;
    let mode = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    let start = i64::try_from(start).map_err(|_| bad(start))?;
    let len = i64::try_from(len).map_err(|_| bad(len))?;
    fallocate(file.as_raw_fd(), mode, start, len).map_err(|e| Error::Io(e.into()))
}

/// Runs one op to completion.
fn run(q: &mut dyn ImageQueue, op: IoOp) -> Result<(), Error> {
    q.submit(op, 0)?;
    let mut done: Vec<Completion> = Vec::new();
    while done.is_empty() {
        q.wait(Some(Duration::from_millis(100)))?;
        q.reap(&mut done);
    }
    done.into_iter().try_for_each(|c| c.result)
}
