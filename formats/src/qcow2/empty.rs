//! Emptying a qcow2 image that has a backing file, as `qemu-img commit` does once the image's
//! data is in the backing file: every cluster becomes unallocated, so the image reads its
//! backing file again, and the host clusters are released.
//!
//! The work is a series of discards through the image's own queue, in the mode that always
//! unmaps whole clusters ([`super::discard`]): each new L2 entry is durable before the host
//! cluster it pointed to is released, so a crash leaves an image whose every cluster is either
//! still its own (equal to the backing file's data after a commit) or unallocated, with at
//! worst leaked clusters that `check -r leaks` gives back.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::BackingPolicy;
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
    let image = Qcow2Image::open(file, &opts, &mut chain)?;
    if image.backing().is_none() {
        return Err(Error::InvalidArgument(format!(
            "{} has no backing file: emptying it would lose its data",
            path.display()
        )));
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
    image.sync_metadata()
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
