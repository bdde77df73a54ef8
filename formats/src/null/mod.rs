//! Null images, in the manner of Linux's null_blk: every op completes at once without any
//! I/O. Reads return zeros; writes, flushes, discards and write-zeroes succeed and change
//! nothing. There is no file: the toolstack gives the size (`params` = `null:SIZE` in the
//! backend). Used to measure what the backend itself costs per request.
//!
//! Completions are ready for `reap` as soon as `submit` returns, so a ring worker that reaps
//! right after submitting answers them in the same loop iteration, and `wait`/`wait_any` never
//! sleep while completions wait. The notifier follows the [`ImageQueue`] contract (readable
//! while completions wait, cleared by `reap`) from the moment it is first asked for: until
//! then nobody can be watching it, so nothing is written to it. An eventfd write and read cost
//! about 0.9 µs together on the 2-core development VM, as much as the rest of a ring worker's
//! work on a request at queue depth 32; a ring worker that only sleeps through `wait_any`
//! never pays them.

#![forbid(unsafe_code)]

#[cfg(test)]
mod tests;

use std::cell::Cell;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::error::Error;
use crate::image::{
    BlockImage, Completion, Features, Format, Geometry, ImageQueue, IoOp, OpenOptions,
};

/// A null image of a fixed size.
#[derive(Debug)]
pub struct NullImage {
    geometry: Geometry,
    read_only: bool,
}

impl NullImage {
    /// A null image of `size` bytes with the sector size and read-only flag of `opts` (the
    /// other options concern files and do not apply). `size` must be a non-zero whole number
    /// of sectors and fit an `i64`, as a file's would.
    pub fn new(size: u64, opts: &OpenOptions) -> Result<NullImage, Error> {
        let sector = opts.sector_size;
        if !(sector.is_power_of_two() && (512..=4096).contains(&sector)) {
            return Err(Error::InvalidArgument(format!(
                "sector size {sector} is not 512..=4096 and a power of two"
            )));
        }
        if size == 0 || size % u64::from(sector) != 0 || i64::try_from(size).is_err() {
            return Err(Error::InvalidArgument(format!(
                "null image size {size} is not a non-zero whole number of {sector}-byte sectors \
                 (at most {} bytes)",
                i64::MAX
            )));
        }
        let geometry = Geometry {
            size,
            logical_sector_size: sector,
            physical_sector_size: sector,
        };
        tracing::debug!(size, read_only = opts.read_only, "null image open");
        Ok(NullImage {
            geometry,
            read_only: opts.read_only,
        })
    }
}

impl BlockImage for NullImage {
    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn features(&self) -> Features {
        Features::full(self.read_only)
    }

    fn open_queue(&self, depth: u32) -> Result<Box<dyn ImageQueue>, Error> {
        Ok(Box::new(NullQueue::new(
            depth,
            self.geometry.size,
            self.read_only,
        )?))
    }

    /// Nothing is stored: nothing to do.
    fn sync_metadata(&self) -> Result<(), Error> {
        Ok(())
    }

    fn format(&self) -> Format {
        Format::Null
    }
}

/// A data-plane queue of a [`NullImage`]: completions are made in `submit`.
pub struct NullQueue {
    depth: usize,
    size: u64,
    read_only: bool,
    ready: Vec<Completion>,
    events: EventFd,
    /// `notifier()` was called: someone may watch the eventfd, so it must tell the truth.
    armed: Cell<bool>,
    /// The eventfd holds a count that `reap` has not read yet.
    signalled: Cell<bool>,
}

impl NullQueue {
    fn new(depth: u32, size: u64, read_only: bool) -> Result<NullQueue, Error> {
        if depth == 0 || depth > crate::engine::MAX_DEPTH {
            return Err(Error::InvalidArgument(format!(
                "queue depth {depth} not in 1..={}",
                crate::engine::MAX_DEPTH
            )));
        }
        let events = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(std::io::Error::from)?;
        Ok(NullQueue {
            depth: depth as usize,
            size,
            read_only,
            ready: Vec::with_capacity(depth as usize),
            events,
            armed: Cell::new(false),
            signalled: Cell::new(false),
        })
    }

    /// What `op` would have done to a disk that stores nothing.
    fn execute(&self, op: IoOp) -> Result<(), Error> {
        if let Some(error) = op.range_error(self.size) {
            return Err(error);
        }
        if self.read_only && op.is_modifying() {
            return Err(Error::ReadOnly);
        }
        if let IoOp::Read { bufs, .. } = &op {
            crate::buffer::zero_from(&**bufs, 0);
        }
        Ok(())
    }

    /// Makes the eventfd readable if completions wait and it is watched (once per batch).
    fn signal(&self) {
        if !self.armed.get() || self.signalled.get() || self.ready.is_empty() {
            return;
        }
        match self.events.write(1) {
            Ok(_) => self.signalled.set(true),
            Err(e) => tracing::error!(error = %e, "cannot signal the completion eventfd"),
        }
    }
}

impl ImageQueue for NullQueue {
    fn submit(&mut self, op: IoOp, tag: u64) -> Result<(), Error> {
        if self.ready.len() >= self.depth {
            return Err(Error::QueueFull(
                u32::try_from(self.depth).unwrap_or(u32::MAX),
            ));
        }
        let result = self.execute(op);
        self.ready.push(Completion { tag, result });
        self.signal();
        Ok(())
    }

    /// Nothing to hand over: every op completed in `submit`.
    fn commit(&mut self) -> Result<(), Error> {
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> usize {
        if self.signalled.replace(false) {
            let _ = self.events.read();
        }
        let n = self.ready.len();
        out.append(&mut self.ready);
        n
    }

    /// Returns at once: completions are ready as soon as they are submitted.
    fn wait(&mut self, _timeout: Option<Duration>) -> Result<(), Error> {
        Ok(())
    }

    /// The eventfd, armed from now on: readable while completions wait, until `reap`.
    fn notifier(&self) -> BorrowedFd<'_> {
        self.armed.set(true);
        self.signal();
        self.events.as_fd()
    }

    fn in_flight(&self) -> usize {
        self.ready.len()
    }

    /// Completions only appear in `submit`, so waiting is only for `fds`: at once (a poll
    /// without timeout) when completions wait, else until one of `fds` is readable.
    fn wait_any(
        &mut self,
        fds: &[BorrowedFd<'_>],
        timeout: Option<Duration>,
    ) -> Result<Vec<bool>, Error> {
        let timeout = match self.ready.is_empty() {
            true => timeout,
            false => Some(Duration::ZERO),
        };
        crate::image::poll_any(self.events.as_fd(), fds, timeout)
    }
}
