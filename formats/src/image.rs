//! The traits and types the backend uses to drive any image.

use std::os::fd::BorrowedFd;
use std::path::Path;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::buffer::IoBuffers;
use crate::error::Error;

/// One I/O operation on an image. Offsets and lengths are in bytes.
pub enum IoOp {
    /// Read `bufs.iovecs()` worth of bytes starting at `offset`.
    Read {
        /// First byte to read.
        offset: u64,
        /// Where the data goes.
        bufs: Box<dyn IoBuffers>,
    },
    /// Write the bytes of `bufs` starting at `offset`.
    Write {
        /// First byte to write.
        offset: u64,
        /// Where the data comes from.
        bufs: Box<dyn IoBuffers>,
    },
    /// fdatasync semantics: every write COMPLETED before this op was submitted is durable
    /// (except in [`CacheMode::Unsafe`](crate::CacheMode::Unsafe), where it completes at once).
    Flush,
    /// Deallocate the range (punch hole on files, BLKDISCARD on block devices).
    Discard {
        /// First byte.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
    /// The range reads as zeros afterwards.
    WriteZeroes {
        /// First byte.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
}

impl IoOp {
    /// True for ops that modify the image.
    pub fn is_modifying(&self) -> bool {
        matches!(
            self,
            IoOp::Write { .. } | IoOp::Discard { .. } | IoOp::WriteZeroes { .. }
        )
    }

    /// The byte range the op touches, `None` for Flush. `len` is `None` if the buffers' total
    /// length overflows.
    pub fn range(&self) -> Option<(u64, Option<u64>)> {
        match self {
            IoOp::Read { offset, bufs } | IoOp::Write { offset, bufs } => {
                let len =
                    crate::buffer::total_len(bufs.iovecs()).and_then(|l| u64::try_from(l).ok());
                Some((*offset, len))
            }
            IoOp::Discard { offset, len } | IoOp::WriteZeroes { offset, len } => {
                Some((*offset, Some(*len)))
            }
            IoOp::Flush => None,
        }
    }

    /// The error for this op on an image of `size` bytes if its range overflows or reaches
    /// beyond the end.
    pub fn range_error(&self, size: u64) -> Option<Error> {
        let (offset, len) = self.range()?;
        let Some(len) = len else {
            return Some(Error::InvalidArgument("buffer length overflows".to_owned()));
        };
        let inside = offset.checked_add(len).is_some_and(|end| end <= size);
        (!inside).then_some(Error::OutOfRange { offset, len, size })
    }
}

impl std::fmt::Debug for IoOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IoOp::Read { offset, bufs } => {
                write!(f, "Read({offset}, {} iovecs)", bufs.iovecs().len())
            }
            IoOp::Write { offset, bufs } => {
                write!(f, "Write({offset}, {} iovecs)", bufs.iovecs().len())
            }
            IoOp::Flush => write!(f, "Flush"),
            IoOp::Discard { offset, len } => write!(f, "Discard({offset}, {len})"),
            IoOp::WriteZeroes { offset, len } => write!(f, "WriteZeroes({offset}, {len})"),
        }
    }
}

/// The outcome of one op.
#[derive(Debug)]
pub struct Completion {
    /// The tag given to `submit`.
    pub tag: u64,
    /// Success, or why the op failed (see [`Error::errno`]).
    pub result: Result<(), Error>,
}

/// The data plane: one queue per backend ring, owned by one thread at a time.
pub trait ImageQueue: Send {
    /// Queue one op (not yet submitted to the kernel). Fails with [`Error::QueueFull`] when as
    /// many ops as the depth given to `open_queue` are outstanding (submitted and not reaped).
    /// Every other failure arrives as an error completion.
    fn submit(&mut self, op: IoOp, tag: u64) -> Result<(), Error>;
    /// Hand everything queued to the kernel (one io_uring_enter for a batch).
    fn commit(&mut self) -> Result<(), Error>;
    /// Move finished ops into `out` without blocking; returns how many.
    fn reap(&mut self, out: &mut Vec<Completion>) -> usize;
    /// Block until at least one completion is available or `timeout` passes (returns `Ok` in
    /// both cases, and at once if nothing is outstanding). Commits queued ops first.
    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), Error>;
    /// An eventfd that becomes readable when completions are ready; `reap` clears it.
    fn notifier(&self) -> BorrowedFd<'_>;
    /// Ops submitted and not yet reaped.
    fn in_flight(&self) -> usize;
    /// Blocks until a completion is ready to reap, one of `fds` is readable, or `timeout`
    /// passes; tells which of `fds` are readable. Queued ops are committed first. This is how a
    /// ring worker sleeps: the io_uring engine waits for its completions and the event channel
    /// in one `io_uring_enter`. The default polls `fds` and [`ImageQueue::notifier`].
    fn wait_any(
        &mut self,
        fds: &[BorrowedFd<'_>],
        timeout: Option<Duration>,
    ) -> Result<Vec<bool>, Error> {
        self.commit()?;
        poll_any(self.notifier(), fds, timeout)
    }

    /// Moves finished I/O into the queue without a system call where the engine can (the
    /// io_uring completion ring is shared memory); `Some(true)` if completions wait for
    /// [`ImageQueue::reap`]. `None` when this queue cannot tell without one: the default, and
    /// then a ring worker does not busy-poll while its I/O is in flight.
    fn peek_completions(&mut self) -> Option<bool> {
        None
    }

    /// Sets up a table of `slots` fixed buffers (io_uring registered buffers: the kernel pins
    /// their pages once instead of for every I/O). False when this queue has none (the
    /// synchronous engine, formats that do not pass buffers straight to the engine); the
    /// default. The error says why the kernel gave none (it refused the table, or it refuses
    /// file-backed memory such as gntdev-mapped guest pages).
    fn enable_fixed_buffers(&mut self, slots: u32) -> Result<bool, Error> {
        let _ = slots;
        Ok(false)
    }

    /// Registers the one segment of `bufs` as fixed buffer `slot`; the queue keeps `bufs`
    /// alive until [`ImageQueue::unregister_fixed`] (or until it is dropped). I/O whose buffers
    /// name that slot ([`IoBuffers::fixed_slot`]) and lie inside it then uses it. False (and
    /// `bufs` dropped) when there is no table or `slot` is outside it; the kernel's refusal to
    /// pin the memory is the error.
    fn register_fixed(&mut self, slot: u32, bufs: Box<dyn IoBuffers>) -> Result<bool, Error> {
        let _ = (slot, bufs);
        Ok(false)
    }

    /// Takes fixed buffer `slot` out of the kernel's table, then drops what was registered
    /// there. Nothing happens for a slot with nothing registered.
    fn unregister_fixed(&mut self, slot: u32) -> Result<(), Error> {
        let _ = slot;
        Ok(())
    }
}

/// Size and sector sizes of an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Size in bytes.
    pub size: u64,
    /// Logical sector size in bytes (what the guest addresses).
    pub logical_sector_size: u32,
    /// Physical sector size in bytes (a hint for alignment).
    pub physical_sector_size: u32,
}

/// What an image supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// Discard deallocates space.
    pub discard: bool,
    /// WriteZeroes is supported.
    pub write_zeroes: bool,
    /// Flush is accepted: it makes completed writes durable (in every cache mode but
    /// `unsafe`, where it completes at once).
    pub flush: bool,
    /// Modifying ops fail with EROFS.
    pub read_only: bool,
}

impl Features {
    /// Everything an image that stores what it is told supports: discard and write-zeroes
    /// unless it is `read_only`, and flush.
    pub fn full(read_only: bool) -> Features {
        Features {
            discard: !read_only,
            write_zeroes: !read_only,
            flush: true,
            read_only,
        }
    }

    /// An image that stores what it is told and flushes, but offers neither discard nor
    /// write-zeroes (yet).
    pub fn without_discard(read_only: bool) -> Features {
        Features {
            discard: false,
            write_zeroes: false,
            flush: true,
            read_only,
        }
    }
}

/// Image formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// A regular file or block device holding the disk bytes as they are.
    Raw,
    /// QEMU's qcow2 (versions 2 and 3).
    Qcow2,
    /// VHD (Microsoft's Virtual Hard Disk; qemu's `vpc`, tapdisk's `vhd`).
    Vpc,
    /// VMware's VMDK ("vmdk").
    Vmdk,
    /// No file: every op completes at once, reads return zeros (see
    /// [`NullImage`](crate::NullImage)). Never opened from a path.
    Null,
}

/// Which I/O engine a queue uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum EngineKind {
    /// io_uring if the kernel allows it, else the synchronous engine.
    #[default]
    Auto,
    /// io_uring, or fail.
    IoUring,
    /// Synchronous system calls, executed on `commit`.
    Sync,
}

/// How to open an image.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// Open read-only; modifying ops complete with EROFS.
    pub read_only: bool,
    /// With `read_only`: share the image with writers instead of refusing them (qemu-img's
    /// `-U`, `--force-share`). Ignored for read-write opens.
    pub force_share: bool,
    /// How writes reach stable storage: O_DIRECT, O_DSYNC, what a flush does (QEMU's
    /// `cache=` modes, see [`CacheMode`](crate::CacheMode)). Backing files are only read, so
    /// only their O_DIRECT choice matters.
    pub cache: crate::CacheMode,
    /// Which backing files the image may name (default: confined to the top image's folder).
    pub backing: crate::BackingPolicy,
    /// The I/O engine.
    pub engine: EngineKind,
    /// Logical sector size presented to the guest: 512 or 4096.
    pub sector_size: u32,
    /// qcow2 options (metadata cache sizes).
    pub qcow2: crate::qcow2::Qcow2Options,
    /// Refuse an image that could not be a guest's whole disk: empty, or not a whole number of
    /// `sector_size` sectors (a guest would never see its tail). On by default, as the backend
    /// needs it; image tools that must read any file, and backing files, turn it off.
    pub require_whole_sectors: bool,
    /// Test hook: told every write, zeroing and flush that reaches the image's file (writable
    /// opens only; backing files are not recorded). See [`WriteRecorder`](crate::WriteRecorder).
    pub recorder: Option<std::sync::Arc<dyn crate::WriteRecorder>>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            read_only: false,
            force_share: false,
            cache: crate::CacheMode::None,
            backing: crate::BackingPolicy::default(),
            engine: EngineKind::Auto,
            sector_size: 512,
            qcow2: crate::qcow2::Qcow2Options::default(),
            require_whole_sectors: true,
            recorder: None,
        }
    }
}

impl OpenOptions {
    /// How the image tools open an image to look at it (map, info): read-only, through the
    /// page cache, backing files followed wherever they are, any file size.
    pub fn inspect(force_share: bool) -> OpenOptions {
        OpenOptions {
            read_only: true,
            force_share,
            cache: crate::CacheMode::Writeback,
            backing: crate::BackingPolicy::Follow,
            require_whole_sectors: false,
            ..OpenOptions::default()
        }
    }

    /// With [`require_whole_sectors`](Self::require_whole_sectors), refuses a disk of `size`
    /// bytes at `path` that is empty or ends in a partial sector.
    pub(crate) fn check_disk_size(&self, path: &Path, size: u64) -> Result<(), Error> {
        if !self.require_whole_sectors {
            return Ok(());
        }
        let sector = u64::from(self.sector_size.max(1));
        if size == 0 {
            return Err(Error::InvalidArgument(format!(
                "{} is empty (0 bytes): a disk needs at least one sector",
                path.display()
            )));
        }
        if size % sector != 0 {
            return Err(Error::InvalidArgument(format!(
                "{} is {size} bytes, not a whole number of {sector}-byte sectors: the guest \
                 could not reach its last {} bytes (resize it to a multiple of {sector})",
                path.display(),
                size % sector
            )));
        }
        Ok(())
    }
}

/// The control plane of an open image, shared as `Arc<dyn BlockImage>`.
pub trait BlockImage: Send + Sync {
    /// Size and sector sizes.
    fn geometry(&self) -> Geometry;
    /// Supported operations.
    fn features(&self) -> Features;
    /// A new data-plane queue holding at most `depth` outstanding ops.
    fn open_queue(&self, depth: u32) -> Result<Box<dyn ImageQueue>, Error>;
    /// Make format metadata durable.
    fn sync_metadata(&self) -> Result<(), Error>;
    /// The image's format.
    fn format(&self) -> Format;
    /// Grows the image to `new_size` bytes while its queues may be serving it (an online
    /// resize): the storage grows first (a raw file's length, a qcow2 image's L1 table and
    /// header), then the size every queue checks ops against, so no queue takes an op past the
    /// end the storage has. `new_size` must be a whole number of logical sectors and not below
    /// the current size: shrinking is refused with [`Error::Shrink`]. A raw file that already
    /// holds `new_size` bytes (extended by its owner) is not touched. The default refuses, for
    /// formats that cannot grow while served.
    fn grow(&self, new_size: u64) -> Result<(), Error> {
        Err(Error::UnsupportedFeature(format!(
            "growing a {:?} image while it is served (from {} to {new_size} bytes)",
            self.format(),
            self.geometry().size
        )))
    }
    /// The size of the image's storage now, if it can change without [`grow`](Self::grow): a
    /// raw file or block device its owner extended (`truncate -s`, `losetup -c`). `None` for
    /// formats whose size only changes through `grow`. The backend polls it, as Linux blkback
    /// checks its device's size, and grows the served disk to match.
    fn storage_size(&self) -> Result<Option<u64>, Error> {
        Ok(None)
    }
    /// The unit of space a discard gives back, in bytes (the frontend's
    /// `discard-granularity`): the physical sector size unless the format allocates in larger
    /// units and ignores discards of less than one, as a thin volume does.
    fn discard_granularity(&self) -> u32 {
        self.geometry().physical_sector_size
    }
}

/// `poll(2)` on `fds` plus `notifier`; which of `fds` are readable.
pub(crate) fn poll_any(
    notifier: BorrowedFd<'_>,
    fds: &[BorrowedFd<'_>],
    timeout: Option<Duration>,
) -> Result<Vec<bool>, Error> {
    let mut pfds: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
        .collect();
    pfds.push(PollFd::new(notifier, PollFlags::POLLIN));
    let timeout = match timeout {
        None => PollTimeout::NONE,
        Some(t) => PollTimeout::try_from(t).unwrap_or(PollTimeout::MAX),
    };
    match poll(&mut pfds, timeout) {
        Ok(_) | Err(nix::errno::Errno::EINTR) => {}
        Err(e) => return Err(Error::from_errno(e as i32)),
    }
    let ready = |p: &PollFd<'_>| p.revents().is_some_and(|r| !r.is_empty());
    Ok(pfds[..fds.len()].iter().map(ready).collect())
}
