//! The one I/O engine every format builds on.
//!
//! An [`Engine`] is a queue of positioned ops on one [`EngineFile`]: vectored read/write,
//! fdatasync, punch hole / BLKDISCARD and zero range, many in flight, each completed with the
//! caller's tag. It drives either an io_uring (one ring per engine) or synchronous system calls
//! executed on `commit`, with identical semantics: completions are delivered by `reap`, and the
//! notifier eventfd is readable whenever completions are pending.
//!
//! Misaligned O_DIRECT I/O is made correct here: misaligned memory goes through an aligned
//! bounce buffer, a misaligned offset or length goes through the page-cached descriptor. Short
//! transfers are resubmitted; a read that hits end of file reads zeros past it; EAGAIN, EINTR
//! and ECANCELED are retried a few times. The engine does not bound offsets (formats do).

mod direct_meta;
mod file;
pub mod lock;
mod notifier;
mod prep;
pub(crate) mod record;
#[allow(unsafe_code)]
mod sys;
#[allow(unsafe_code)]
mod uring;

pub(crate) use file::create_new;
pub use file::{Access, DioAlign, EngineFile, FileKind, FileStats};
pub use record::WriteRecorder;

use std::collections::VecDeque;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::buffer::IoBuffers;
use crate::error::Error;
use crate::image::{Completion, EngineKind, ImageQueue, IoOp};

use notifier::Notifier;
use prep::{Prep, Prepared, Step};
use uring::Ring;

/// Largest queue depth an engine accepts.
pub const MAX_DEPTH: u32 = 4096;

/// Resolves [`EngineKind::Auto`] to io_uring if the kernel allows it, else Sync; checks that an
/// explicit io_uring request can be honoured.
pub fn resolve(kind: EngineKind) -> Result<EngineKind, Error> {
    match kind {
        EngineKind::Sync => Ok(EngineKind::Sync),
        EngineKind::IoUring => uring::available()
            .map(|()| EngineKind::IoUring)
            .map_err(Error::IoUringUnavailable),
        EngineKind::Auto => match uring::available() {
            Ok(()) => {
                tracing::info!("using the io_uring I/O engine");
                Ok(EngineKind::IoUring)
            }
            Err(e) => {
                tracing::info!(error = %e, "io_uring unavailable, using the synchronous I/O engine");
                Ok(EngineKind::Sync)
            }
        },
    }
}

/// A queue of I/O ops on one file. Implements [`ImageQueue`] without any bounds check.
pub struct Engine {
    file: Arc<EngineFile>,
    depth: usize,
    outstanding: usize,
    queued: Vec<Prepared>,
    ready: VecDeque<Completion>,
    ring: Option<Ring>,
    /// Shared with the engines of the same format queue (see [`Engine::new_sharing`]).
    events: Arc<Notifier>,
    /// Tests: flushes held back instead of started (see [`Engine::hold_flushes`]).
    #[cfg(test)]
    held: Option<Vec<Prepared>>,
    /// Tests: reads at these offsets are held too, or fail (see [`Engine::hold_reads_at`]).
    #[cfg(test)]
    reads: TestReads,
}

/// Tests: what the engine does with reads at chosen offsets.
#[cfg(test)]
#[derive(Debug, Default)]
struct TestReads {
    /// Held (outstanding, not issued) until released.
    hold: Option<u64>,
    /// Completed with EIO without being issued.
    fail: Option<u64>,
}

impl Engine {
    /// An engine of `kind` holding at most `depth` outstanding ops.
    /// [`EngineKind::Auto`] falls back to Sync if the ring cannot be created.
    pub fn new(file: Arc<EngineFile>, kind: EngineKind, depth: u32) -> Result<Engine, Error> {
        Engine::with_events(file, kind, depth, Arc::new(Notifier::new()?))
    }

    /// An engine on another file whose completions signal `other`'s notifier, so that a
    /// format queue spread over several files (VMDK extents) has one notifier.
    pub(crate) fn new_sharing(
        file: Arc<EngineFile>,
        kind: EngineKind,
        depth: u32,
        other: &Engine,
    ) -> Result<Engine, Error> {
        Engine::with_events(file, kind, depth, other.events.clone())
    }

    fn with_events(
        file: Arc<EngineFile>,
        kind: EngineKind,
        depth: u32,
        events: Arc<Notifier>,
    ) -> Result<Engine, Error> {
        if depth == 0 || depth > MAX_DEPTH {
            return Err(Error::InvalidArgument(format!(
                "queue depth {depth} not in 1..={MAX_DEPTH}"
            )));
        }
        let ring = match kind {
            EngineKind::Sync => None,
            EngineKind::IoUring => {
                Some(Ring::new(depth, file.clone(), events.fd()).map_err(Error::IoUringUnavailable)?)
            }
            EngineKind::Auto => Ring::new(depth, file.clone(), events.fd())
                .inspect_err(|e| tracing::debug!(error = %e, "no io_uring for this queue, running synchronously"))
                .ok(),
        };
        if ring.is_none() {
            // The synchronous engine sleeps on the notifier itself (`wait_any`).
            events.arm(|| false);
        }
        let depth = depth as usize;
        Ok(Engine {
            file,
            depth,
            outstanding: 0,
            queued: Vec::new(),
            ready: VecDeque::new(),
            ring,
            events,
            #[cfg(test)]
            held: None,
            #[cfg(test)]
            reads: TestReads::default(),
        })
    }

    /// The engine actually driving this queue.
    pub fn kind(&self) -> EngineKind {
        if self.ring.is_some() {
            EngineKind::IoUring
        } else {
            EngineKind::Sync
        }
    }

    /// The file this engine does I/O on.
    pub fn file(&self) -> &Arc<EngineFile> {
        &self.file
    }

    /// Completes `tag` with `error` without doing I/O. Counts against the depth like `submit`.
    pub fn fail(&mut self, tag: u64, error: Error) -> Result<(), Error> {
        self.reserve()?;
        self.complete(tag, Err(error));
        Ok(())
    }

    /// Completes `tag` with `result` without doing I/O (formats answering from metadata, e.g.
    /// a read of unallocated space). Counts against the depth like `submit`.
    pub fn complete_now(&mut self, tag: u64, result: Result<(), Error>) -> Result<(), Error> {
        self.reserve()?;
        self.complete(tag, result);
        Ok(())
    }

    /// The most ops this engine holds outstanding.
    pub fn depth(&self) -> usize {
        self.depth
    }

    fn reserve(&mut self) -> Result<(), Error> {
        if self.outstanding >= self.depth {
            return Err(Error::QueueFull(
                u32::try_from(self.depth).unwrap_or(u32::MAX),
            ));
        }
        self.outstanding += 1;
        Ok(())
    }

    fn complete(&mut self, tag: u64, result: Result<(), Error>) {
        self.ready.push_back(Completion { tag, result });
        self.signal();
    }

    fn signal(&self) {
        self.events.ring();
    }

    /// Submits a read or write of format metadata: like [`ImageQueue::submit`], but always
    /// through the page-cached descriptor, where the format reads and writes its metadata
    /// synchronously too (no O_DIRECT alignment, no bounce buffer).
    pub fn submit_meta(&mut self, op: IoOp, tag: u64) -> Result<(), Error> {
        self.reserve()?;
        match prep::prepare_buffered(op, tag, &self.file) {
            Prep::Run(prepared) => self.queued.push(prepared),
            Prep::Finished(result) => self.complete(tag, result),
        }
        Ok(())
    }

    /// Tests: from now on, flushes are held in the engine (outstanding, not issued) until
    /// [`release_flushes`](Self::release_flushes).
    #[cfg(test)]
    pub(crate) fn hold_flushes(&mut self) {
        self.held.get_or_insert_with(Vec::new);
    }

    /// Tests: issues the flushes (and reads) held so far and stops holding them.
    #[cfg(test)]
    pub(crate) fn release_flushes(&mut self) -> Result<(), Error> {
        self.reads.hold = None;
        for op in self.held.take().unwrap_or_default() {
            self.start(op);
        }
        self.commit()
    }

    /// Tests: from now on, reads at `offset` are held in the engine like flushes (see
    /// [`hold_flushes`](Self::hold_flushes)) until [`release_flushes`](Self::release_flushes).
    #[cfg(test)]
    pub(crate) fn hold_reads_at(&mut self, offset: u64) {
        self.reads.hold = Some(offset);
        self.held.get_or_insert_with(Vec::new);
    }

    /// Tests: reads at `offset` (if any) fail with EIO from now on, without being issued.
    #[cfg(test)]
    pub(crate) fn fail_reads_at(&mut self, offset: Option<u64>) {
        self.reads.fail = offset;
    }

    /// Tests: how many flushes (and reads) are held.
    #[cfg(test)]
    pub(crate) fn held_flushes(&self) -> usize {
        self.held.as_ref().map_or(0, Vec::len)
    }

    /// Starts a committed op: on the ring, or synchronously (Sync engine, BLKDISCARD).
    fn start(&mut self, mut op: Prepared) {
        #[cfg(test)]
        if self.reads.fail.is_some_and(|at| op.is_read_at(at)) {
            return self.complete(op.tag(), Err(Error::from_errno(libc::EIO)));
        }
        #[cfg(test)]
        let hold = op.is_flush() || self.reads.hold.is_some_and(|at| op.is_read_at(at));
        #[cfg(test)]
        if let Some(held) = self.held.as_mut().filter(|_| hold) {
            return held.push(op);
        }
        record::mark_sync(&self.file, &mut op);
        let op = match &mut self.ring {
            Some(ring) if !op.is_blocking_ioctl() => match ring.push(op) {
                None => return,
                Some(op) => {
                    let tag = op.tag();
                    tracing::error!(tag, "io_uring submission queue full");
                    return self.complete(tag, Err(Error::from_errno(libc::EBUSY)));
                }
            },
            _ => op,
        };
        self.run_sync(op);
    }

    fn run_sync(&mut self, mut op: Prepared) {
        loop {
            let res = sys::execute(&self.file, &op.request());
            if let Step::Done(result) = op.on_result(res) {
                if result.is_ok() {
                    record::report_op(&self.file, &op);
                }
                return self.complete(op.tag(), result);
            }
        }
    }

    /// Moves finished CQEs to `ready`, restarting ops that need another system call.
    fn poll_ring(&mut self) {
        let Some(ring) = &mut self.ring else { return };
        let mut restarted = Vec::new();
        while let Some((mut op, res)) = ring.pop() {
            match op.on_result(res) {
                Step::Again => restarted.push(op),
                Step::Done(result) => {
                    if result.is_ok() {
                        record::report_op(&self.file, &op);
                    }
                    self.ready.push_back(Completion {
                        tag: op.tag(),
                        result,
                    });
                }
            }
        }
        if restarted.is_empty() {
            return;
        }
        for op in restarted {
            self.start(op);
        }
        if let Some(Err(e)) = self.ring.as_mut().map(Ring::submit) {
            tracing::warn!(error = %e, "io_uring resubmission deferred to the next commit");
        }
    }
}

impl ImageQueue for Engine {
    fn submit(&mut self, op: IoOp, tag: u64) -> Result<(), Error> {
        self.reserve()?;
        match prep::prepare(op, tag, &self.file) {
            Prep::Run(prepared) => self.queued.push(prepared),
            Prep::Finished(result) => self.complete(tag, result),
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<(), Error> {
        let mut queued = std::mem::take(&mut self.queued);
        for op in queued.drain(..) {
            self.start(op);
        }
        self.queued = queued;
        match &mut self.ring {
            Some(ring) => Ok(ring.submit()?),
            None => Ok(()),
        }
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> usize {
        // Clear the eventfd before looking, so a completion arriving meanwhile re-arms it.
        self.events.clear();
        self.poll_ring();
        let n = self.ready.len();
        out.extend(self.ready.drain(..));
        self.outstanding = self.outstanding.saturating_sub(n);
        n
    }

    fn peek_completions(&mut self) -> Option<bool> {
        self.ring.as_ref()?;
        self.poll_ring();
        Some(!self.ready.is_empty())
    }

    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), Error> {
        if !self.queued.is_empty() {
            self.commit()?;
        }
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            self.poll_ring();
            if !self.ready.is_empty() {
                return Ok(());
            }
            let Some(ring) = &mut self.ring else {
                return Ok(());
            };
            if ring.in_kernel() == 0 {
                return Ok(());
            }
            let left = match deadline {
                Some(d) if Instant::now() >= d => return Ok(()),
                Some(d) => Some(d.saturating_duration_since(Instant::now())),
                None if timeout.is_some() => Some(Duration::MAX),
                None => None,
            };
            ring.wait(left)?;
        }
    }

    /// Arms the notifier (see [`notifier`]): a queue that only sleeps through `wait_any`
    /// never asks for it and never pays for its system calls. Ops still in the kernel may
    /// have posted their completions already, so they count as waiting (at worst one
    /// spurious wake-up).
    fn notifier(&self) -> BorrowedFd<'_> {
        self.events
            .arm(|| !self.ready.is_empty() || self.ring.as_ref().is_some_and(|r| r.in_kernel() > 0))
    }

    fn in_flight(&self) -> usize {
        self.outstanding
    }

    fn wait_any(
        &mut self,
        fds: &[BorrowedFd<'_>],
        timeout: Option<Duration>,
    ) -> Result<Vec<bool>, Error> {
        if self.ring.is_none() {
            self.commit()?;
            return crate::image::poll_any(self.events.fd(), fds, timeout);
        }
        self.commit()?;
        if let Some(ring) = &mut self.ring {
            ring.watch(fds)?;
        }
        self.poll_ring();
        let Some(ring) = &mut self.ring else {
            return Ok(vec![false; fds.len()]);
        };
        if self.ready.is_empty() && !ring.any_fired() {
            // One io_uring_enter submits the polls and sleeps until a CQE of either kind.
            ring.wait(timeout)?;
            self.poll_ring();
        }
        Ok(self.ring.as_mut().map(Ring::take_fired).unwrap_or_default())
    }

    fn enable_fixed_buffers(&mut self, slots: u32) -> Result<bool, Error> {
        match &mut self.ring {
            Some(ring) => ring.enable_fixed(slots).map(|()| true).map_err(Error::Io),
            None => Ok(false),
        }
    }

    fn register_fixed(&mut self, slot: u32, bufs: Box<dyn IoBuffers>) -> Result<bool, Error> {
        match &mut self.ring {
            Some(ring) => Ok(ring.register_fixed(slot, bufs)?),
            None => Ok(false),
        }
    }

    fn unregister_fixed(&mut self, slot: u32) -> Result<(), Error> {
        match &mut self.ring {
            Some(ring) => Ok(ring.unregister_fixed(slot)?),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    /// An engine file over a FIFO opened for reading.
    pub(crate) fn fifo_engine_file(
        file: std::fs::File,
        path: &std::path::Path,
    ) -> super::EngineFile {
        super::EngineFile::wrap_for_test(file, path)
    }
}
