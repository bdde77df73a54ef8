//! The io_uring driver: one ring per queue; SQEs carry raw buffer addresses.
//! One of the three modules allowed to use `unsafe`.
//!
//! The ring owns every op the kernel may still touch (its [`Prepared`] holds the iovec array
//! and the buffers), from push until its CQE is popped, and dropping the ring first waits for
//! all of them. So no buffer is freed while the kernel can still access it.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use io_uring::{IoUring, opcode, squeue, types};

use super::file::EngineFile;
use super::prep::{Prepared, Request, Which};
use super::sys::FilePage;
use crate::buffer::{IoBuffers, IoVec};

/// `e` with what was being done (its kind kept).
fn annotate(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("the kernel refused {what}: {e}"))
}

/// Probes whether this process may create an io_uring.
pub(crate) fn available() -> io::Result<()> {
    IoUring::new(2).map(drop)
}

/// user_data bit of a watch's poll (ops use their slot index, far below it).
const WATCH_BIT: u64 = 1 << 63;

/// A descriptor the ring polls for the caller (one-shot `POLL_ADD`, re-armed on each wait).
#[derive(Clone, Copy, Debug)]
struct Watch {
    fd: RawFd,
    armed: bool,
    fired: bool,
}

/// Most fixed buffers one ring's table holds (the kernel's `IORING_MAX_REG_BUFFERS`).
pub(crate) const MAX_FIXED_BUFFERS: u32 = 1 << 14;

/// Memory registered as one fixed buffer, kept alive while registered.
struct FixedBuf {
    /// Owns the memory (its one segment is `base..base + len`).
    _owner: Box<dyn IoBuffers>,
    base: usize,
    len: usize,
}

/// An io_uring with room for `depth` ops in flight.
pub(crate) struct Ring {
    /// Declared first so it is dropped (its descriptor closed, releasing the kernel's fixed
    /// buffer table) before `fixed_bufs` frees what that table names.
    ring: IoUring,
    file: Arc<EngineFile>,
    fixed: bool,
    /// The fixed buffer table: empty until [`Ring::enable_fixed`].
    fixed_bufs: Vec<Option<FixedBuf>>,
    slots: Vec<Option<Prepared>>,
    free: Vec<usize>,
    watches: Vec<Watch>,
    /// Bumped when the watched set changes, so stale polls' CQEs are ignored.
    watch_gen: u64,
}

impl Ring {
    /// A ring whose SQ holds `depth` entries and whose CQ holds twice that, so neither can
    /// overflow with at most `depth` ops in flight. Completions signal `eventfd`.
    pub(crate) fn new(
        depth: u32,
        file: Arc<EngineFile>,
        eventfd: BorrowedFd<'_>,
    ) -> io::Result<Ring> {
        let entries = depth.next_power_of_two();
        let ring = build(entries)?;
        ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        let fds = [
            file.fd(Which::Buffered).as_raw_fd(),
            file.fd(Which::Direct).as_raw_fd(),
        ];
        let fixed = ring.submitter().register_files(&fds).is_ok();
        let slots = (0..depth).map(|_| None).collect();
        let free = (0..depth as usize).rev().collect();
        Ok(Ring {
            ring,
            file,
            fixed,
            fixed_bufs: Vec::new(),
            slots,
            free,
            watches: Vec::new(),
            watch_gen: 0,
        })
    }

    /// Ops the kernel holds.
    pub(crate) fn in_kernel(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Puts `op` in the submission queue (the kernel sees it on the next [`Ring::submit`]).
    /// Gives the op back if the ring has no room, `None` once it is queued.
    pub(crate) fn push(&mut self, op: Prepared) -> Option<Prepared> {
        let Some(slot) = self.free.pop() else {
            return Some(op);
        };
        let entry = self.entry(&op.request()).user_data(slot as u64);
        let Some(place) = self.slots.get_mut(slot) else {
            return Some(op);
        };
        *place = Some(op);
        // Every address in `entry` points into the op just stored in `self.slots[slot]`, which
        // stays there, unmoved, until its CQE is popped (Drop waits for all); `self.file` keeps the fds.
        // SAFETY: so the kernel only touches live memory and open descriptors.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        if pushed.is_err() {
            self.free.push(slot);
            return self.slots.get_mut(slot).and_then(Option::take);
        }
        None
    }

    fn entry(&self, req: &Request<'_>) -> squeue::Entry {
        macro_rules! on_fd {
            ($which:expr, |$fd:ident| $build:expr) => {{
                let which = $which;
                if self.fixed {
                    let $fd = types::Fixed(u32::from(which == Which::Direct));
                    $build
                } else {
                    let $fd = types::Fd(self.raw_fd(which));
                    $build
                }
            }};
        }
        match *req {
            Request::Read {
                which,
                offset,
                iovs,
                fixed,
            } => {
                if let [one] = iovs.as_slice() {
                    // One segment (the common 4 KiB request): no iovec array for the kernel
                    // to copy in, and no page pinning either in a fixed buffer.
                    let len = single_len(one);
                    if let Some(index) = self.fixed_index(fixed, one, len) {
                        return on_fd!(which, |fd| opcode::ReadFixed::new(
                            fd, one.base, len, index
                        )
                        .offset(offset)
                        .build());
                    }
                    return on_fd!(which, |fd| opcode::Read::new(fd, one.base, len)
                        .offset(offset)
                        .build());
                }
                let (ptr, count) = (
                    iovs.as_slice().as_ptr().cast::<libc::iovec>(),
                    iov_count(iovs.as_slice()),
                );
                on_fd!(which, |fd| opcode::Readv::new(fd, ptr, count)
                    .offset(offset)
                    .build())
            }
            Request::Write {
                which,
                offset,
                iovs,
                fixed,
            } => {
                if let [one] = iovs.as_slice() {
                    let len = single_len(one);
                    let base = one.base.cast_const();
                    if let Some(index) = self.fixed_index(fixed, one, len) {
                        return on_fd!(which, |fd| opcode::WriteFixed::new(fd, base, len, index)
                            .offset(offset)
                            .build());
                    }
                    return on_fd!(which, |fd| opcode::Write::new(fd, base, len)
                        .offset(offset)
                        .build());
                }
                let (ptr, count) = (
                    iovs.as_slice().as_ptr().cast::<libc::iovec>(),
                    iov_count(iovs.as_slice()),
                );
                on_fd!(which, |fd| opcode::Writev::new(fd, ptr, count)
                    .offset(offset)
                    .build())
            }
            Request::Sync => on_fd!(Which::Buffered, |fd| opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build()),
            Request::Fallocate { mode, offset, len } => {
                on_fd!(Which::Buffered, |fd| opcode::Fallocate::new(fd, len)
                    .offset(offset)
                    .mode(mode)
                    .build())
            }
            // Never pushed (executed synchronously by the engine); a no-op keeps this total.
            Request::BlkDiscard { .. } => opcode::Nop::new().build(),
        }
    }

    /// The slot `hint` as an SQE's buffer index, if `len` bytes at `iov.base` lie inside what
    /// is registered there.
    fn fixed_index(&self, hint: Option<u32>, iov: &IoVec, len: u32) -> Option<u16> {
        let slot = hint?;
        let buf = self.fixed_bufs.get(usize::try_from(slot).ok()?)?.as_ref()?;
        let start = (iov.base as usize).checked_sub(buf.base)?;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        let index = u16::try_from(slot).ok().filter(|_| end <= buf.len)?;
        self.file.note_fixed();
        Some(index)
    }

    fn raw_fd(&self, which: Which) -> RawFd {
        self.file.fd(which).as_raw_fd()
    }

    /// Hands the submission queue to the kernel without waiting. No system call when there
    /// is nothing to submit and no completion work is pending in the kernel.
    pub(crate) fn submit(&mut self) -> io::Result<()> {
        let idle = {
            let sq = self.ring.submission();
            sq.is_empty() && !sq.taskrun() && !sq.cq_overflow()
        };
        if idle {
            return Ok(());
        }
        retry(|| self.ring.submit())
    }

    /// Submits and blocks until a completion arrives or `timeout` passes.
    pub(crate) fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let result = match timeout {
            None => self.ring.submit_and_wait(1),
            Some(t) => {
                let ts = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        match result {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Takes the next finished op and its result (bytes or negative errno), if any.
    pub(crate) fn pop(&mut self) -> Option<(Prepared, i64)> {
        if self.ring.completion().is_empty() && self.ring.submission().taskrun() {
            // Completions wait as deferred kernel work (COOP_TASKRUN): let the kernel post them.
            if let Err(e) = self.ring.submitter().submit_and_wait(0) {
                tracing::debug!(error = %e, "cannot flush io_uring completion work");
            }
        }
        loop {
            let cqe = self.ring.completion().next()?;
            if cqe.user_data() & WATCH_BIT != 0 {
                self.watch_fired(cqe.user_data());
                continue;
            }
            let Ok(slot) = usize::try_from(cqe.user_data()) else {
                continue;
            };
            let Some(op) = self.slots.get_mut(slot).and_then(Option::take) else {
                tracing::error!(slot, "completion for an empty io_uring slot");
                continue;
            };
            self.free.push(slot);
            return Some((op, i64::from(cqe.result())));
        }
    }
}

/// The fixed buffer table.
impl Ring {
    /// Registers an empty (sparse) table of `slots` fixed buffers, at most
    /// [`MAX_FIXED_BUFFERS`], once the kernel showed that it takes file-backed memory
    /// ([`Ring::probe_file_memory`]). The error says why there is no table: the kernel refused
    /// it (before Linux 5.13, or the locked-memory limit) or refuses file-backed memory.
    pub(crate) fn enable_fixed(&mut self, slots: u32) -> io::Result<()> {
        if !self.fixed_bufs.is_empty() {
            return Ok(());
        }
        let slots = slots.clamp(1, MAX_FIXED_BUFFERS);
        self.ring.submitter().register_buffers_sparse(slots)?;
        if let Err(e) = self.probe_file_memory() {
            if let Err(e) = self.ring.submitter().unregister_buffers() {
                tracing::warn!(error = %e, "cannot drop an unused fixed buffer table");
            }
            return Err(e);
        }
        self.fixed_bufs = (0..slots).map(|_| None).collect();
        Ok(())
    }

    /// Registers a private page of the served file at slot 0 (a private mapping: nothing
    /// reaches the file) and empties the slot again. Guest pages mapped through gntdev are
    /// file-backed memory, and kernels before Linux 6.5 refuse such memory as fixed buffers
    /// (`EOPNOTSUPP`) only after pinning it for the long term and letting it go: this asks them
    /// without touching a guest page. The served file is on real storage (a page of shmem, such
    /// as a program file on tmpfs, would pass where a gntdev page does not).
    fn probe_file_memory(&mut self) -> io::Result<()> {
        let page = FilePage::map(self.file.fd(Which::Buffered))
            .map_err(|e| annotate(e, "to map a page of the image (to ask about fixed buffers)"))?;
        let iov = [page.iovec()];
        // SAFETY: the iovec names `page`, which stays mapped until the slot is emptied below;
        // if that fails, the page is leaked instead of unmapped.
        unsafe { self.ring.submitter().register_buffers_update(0, &iov, None) }
            .map_err(|e| annotate(e, "file-backed memory as an io_uring fixed buffer"))?;
        if let Err(e) = self.clear_slot(0) {
            std::mem::forget(page);
            return Err(e);
        }
        Ok(())
    }

    /// Empties `slot` in the kernel's table.
    fn clear_slot(&mut self, slot: u32) -> io::Result<()> {
        let empty = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }];
        // SAFETY: a null, empty iovec names no memory: it clears the slot.
        unsafe {
            self.ring
                .submitter()
                .register_buffers_update(slot, &empty, None)
        }?;
        Ok(())
    }

    /// Registers the single segment of `bufs` at `slot` (replacing what was there). False,
    /// dropping `bufs`, if `slot` is past the table or `bufs` is not one segment; the kernel's
    /// refusal (memory it will not pin) is the error.
    pub(crate) fn register_fixed(
        &mut self,
        slot: u32,
        bufs: Box<dyn IoBuffers>,
    ) -> io::Result<bool> {
        let Some(place) = usize::try_from(slot)
            .ok()
            .filter(|s| *s < self.fixed_bufs.len())
        else {
            return Ok(false);
        };
        let [one] = *bufs.iovecs() else {
            return Ok(false);
        };
        let iov = [libc::iovec {
            iov_base: one.base.cast(),
            iov_len: one.len,
        }];
        // The iovec names the one segment of `bufs`, which the IoBuffers contract keeps mapped,
        // writable and in place while `bufs` lives; `bufs` is stored in `fixed_bufs[slot]` and
        // dropped only after the slot was emptied in the kernel (`unregister_fixed`), replaced
        // by a later registration, or the ring's descriptor closed (field order).
        // SAFETY: so the memory stays valid for as long as the kernel has it registered.
        let done = unsafe {
            self.ring
                .submitter()
                .register_buffers_update(slot, &iov, None)
        };
        done?;
        self.fixed_bufs[place] = Some(FixedBuf {
            _owner: bufs,
            base: one.base as usize,
            len: one.len,
        });
        Ok(true)
    }

    /// Empties `slot` in the kernel's table, then drops what was registered there. A failed
    /// update keeps it (the kernel may still use it) and is the error.
    pub(crate) fn unregister_fixed(&mut self, slot: u32) -> io::Result<()> {
        let Some(place) = usize::try_from(slot)
            .ok()
            .filter(|s| *s < self.fixed_bufs.len())
        else {
            return Ok(());
        };
        if self.fixed_bufs[place].is_none() {
            return Ok(());
        }
        self.clear_slot(slot)?;
        self.fixed_bufs[place] = None;
        Ok(())
    }
}

impl Ring {
    /// Makes the ring poll `fds` (for readability) until the next [`Ring::take_fired`]; polls
    /// already armed for the same descriptors are kept.
    pub(crate) fn watch(&mut self, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let same = self.watches.len() == fds.len()
            && self
                .watches
                .iter()
                .zip(fds)
                .all(|(w, fd)| w.fd == fd.as_raw_fd());
        if !same {
            self.watch_gen = (self.watch_gen + 1) & 0x7fff_ffff;
            self.watches = fds
                .iter()
                .map(|fd| Watch {
                    fd: fd.as_raw_fd(),
                    armed: false,
                    fired: false,
                })
                .collect();
        }
        for i in 0..self.watches.len() {
            if !self.watches[i].armed && !self.watches[i].fired {
                self.arm(i)?;
            }
        }
        Ok(())
    }

    fn arm(&mut self, index: usize) -> io::Result<()> {
        let fd = self.watches[index].fd;
        let ud = WATCH_BIT | (self.watch_gen << 32) | index as u64;
        let entry = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
            .build()
            .user_data(ud);
        // SAFETY: a poll SQE references no memory of ours; the caller keeps the descriptor open
        // while it waits on it, and a poll of a closed descriptor only fails.
        if unsafe { self.ring.submission().push(&entry) }.is_err() {
            self.submit()?;
            // SAFETY: as above; the queue was just emptied by the submit.
            unsafe { self.ring.submission().push(&entry) }
                .map_err(|_| io::Error::from_raw_os_error(libc::EBUSY))?;
        }
        self.watches[index].armed = true;
        Ok(())
    }

    fn watch_fired(&mut self, ud: u64) {
        let generation = (ud >> 32) & 0x7fff_ffff;
        let index = usize::try_from(ud & 0xffff_ffff).unwrap_or(usize::MAX);
        if generation != self.watch_gen {
            return;
        }
        if let Some(w) = self.watches.get_mut(index) {
            w.armed = false;
            w.fired = true;
        }
    }

    /// Which watched descriptors fired since the last call (and clears that).
    pub(crate) fn take_fired(&mut self) -> Vec<bool> {
        self.watches
            .iter_mut()
            .map(|w| std::mem::take(&mut w.fired))
            .collect()
    }

    /// Whether a watched descriptor fired and was not taken yet.
    pub(crate) fn any_fired(&self) -> bool {
        self.watches.iter().any(|w| w.fired)
    }
}

/// A ring for `entries` SQEs and twice as many CQEs. Asks for cooperative task running (no
/// interrupt of the thread for every completion: it is handled at the thread's next system
/// call, and the SQ flag tells when some is pending) and falls back to a plain ring on kernels
/// older than 5.19.
fn build(entries: u32) -> io::Result<IoUring> {
    let cq = entries.saturating_mul(2);
    let coop = IoUring::builder()
        .setup_cqsize(cq)
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .build(entries);
    match coop {
        Ok(ring) => Ok(ring),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            tracing::debug!("io_uring without COOP_TASKRUN");
            IoUring::builder().setup_cqsize(cq).build(entries)
        }
        Err(e) => Err(e),
    }
}

/// The length of a one-segment transfer; a segment above 4 GiB is capped, which the op's state
/// machine handles like any short transfer (the rest is resubmitted).
fn single_len(iov: &IoVec) -> u32 {
    u32::try_from(iov.len).unwrap_or(u32::MAX)
}

fn iov_count(iovs: &[IoVec]) -> u32 {
    // prepare() bounces lists longer than IOV_MAX, so this always fits.
    u32::try_from(iovs.len()).unwrap_or(u32::MAX)
}

fn retry(mut f: impl FnMut() -> io::Result<usize>) -> io::Result<()> {
    let mut tries = 0;
    loop {
        match f() {
            Ok(_) => return Ok(()),
            Err(e)
                if tries < 16
                    && matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                    ) =>
            {
                tries += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        while self.in_kernel() > 0 {
            if let Err(e) = self.wait(None) {
                // The kernel may still write into these buffers: leak them rather than free them.
                tracing::error!(error = %e, "cannot drain io_uring on drop, leaking its buffers");
                std::mem::forget(std::mem::take(&mut self.slots));
                return;
            }
            while self.pop().is_some() {}
        }
    }
}
