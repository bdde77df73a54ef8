//! The write-back of a guest flush, run as engine children on the flushing queue's io_uring;
//! also the write-back of metadata older than the image's write-back age, which a queue
//! starts in the background after an allocation (no guest op waits for it).
//!
//! [`Meta::capture`](super::meta::Meta) takes the bytes of both phases when the flush starts
//! (see [`super::writeback`]); the queue then runs four steps, each one parent of engine
//! children, each started when the one before finished without error:
//!
//! 1. the refcount blocks and new L2 tables (metadata writes through the page cache);
//! 2. an fdatasync;
//! 3. the other L2 ranges and the L1 span (skipped, with step 4, if the capture has none and
//!    nothing to free);
//! 4. an fdatasync; then the captured frees lower their refcounts (in memory), the image may
//!    start another write-back, and the flush completes.
//!
//! Meanwhile the queue keeps planning and completing reads and writes, allocating ones
//! included: their metadata changes are not in the capture and wait for the next write-back.
//! A failed step marks the image failed, as a failed synchronous write-back does, and fails the
//! flush. The writes go through the file's page-cached descriptor, the one every other
//! metadata read and write of the image uses (see [`Engine::submit_meta`]).
//!
//! [`Engine::submit_meta`]: crate::engine::Engine::submit_meta

use std::time::Duration;

use crate::buffer::AlignedBuf;
use crate::error::Error;
use crate::image::{Completion, ImageQueue, IoOp};
use crate::planned::{Child, Planner};

use super::queue::Qcow2Queue;
use super::read::lock;
use super::writeback::{Capture, MetaWrite};

/// How long a closing queue waits for its background write-back.
const BACKGROUND_LIMIT: Duration = Duration::from_secs(30);

/// Where a queue's write-back is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Step 1 runs.
    FirstWrites,
    /// Step 2 runs.
    FirstSync,
    /// Step 3 runs.
    SecondWrites,
    /// Step 4 runs.
    SecondSync,
}

/// A write-back a queue runs for a guest flush, or in the background.
#[derive(Debug)]
pub(crate) struct Run {
    /// The guest flush it completes; `None` for a write-back of metadata older than the
    /// image's write-back age.
    tag: Option<u64>,
    step: Step,
    /// Step 3's writes, until it starts.
    second: Option<Vec<MetaWrite>>,
    /// The frees of step 4.
    frees: Vec<(u64, u64)>,
}

impl Qcow2Queue {
    /// Starts writing `capture` back for the guest flush `tag`, or in the background (the
    /// image is `flushing`).
    pub(super) fn start_write_back(&mut self, tag: Option<u64>, capture: Capture) {
        self.flush = Some(Run {
            tag,
            step: Step::FirstWrites,
            second: capture.second,
            frees: capture.frees,
        });
        self.launch_writes(capture.first, Step::FirstSync);
    }

    /// A step's children all finished; `error` is the first error one gave.
    pub(super) fn write_back_step_done(&mut self, error: Option<Error>) {
        if let Some(e) = error {
            return self.end_write_back(Err(e));
        }
        let Some(run) = self.flush.as_mut() else {
            return;
        };
        match run.step {
            Step::FirstWrites => self.launch_sync(Step::FirstSync),
            Step::FirstSync => match run.second.take() {
                Some(writes) => self.launch_writes(writes, Step::SecondSync),
                None => self.end_write_back(Ok(())),
            },
            Step::SecondWrites => self.launch_sync(Step::SecondSync),
            Step::SecondSync => {
                let frees = std::mem::take(&mut run.frees);
                let freed = lock(&self.meta).and_then(|mut meta| meta.free_captured(&frees));
                self.end_write_back(freed);
            }
        }
    }

    /// Launches `writes` as the step before `sync`, or, with none, `sync` itself.
    fn launch_writes(&mut self, writes: Vec<MetaWrite>, sync: Step) {
        if writes.is_empty() {
            return self.launch_sync(sync);
        }
        let mut kids = Vec::with_capacity(writes.len());
        for w in writes {
            if let Err(e) = self.meta_io.engine_write(w.kind, w.offset, &w.bytes) {
                return self.end_write_back(Err(e));
            }
            let bufs = Box::new(AlignedBuf::from_slice(&w.bytes));
            kids.push(Child::Meta(IoOp::Write {
                offset: w.offset,
                bufs,
            }));
        }
        self.set_step(match sync {
            Step::FirstSync => Step::FirstWrites,
            _ => Step::SecondWrites,
        });
        self.spawn_write_back(kids);
    }

    /// Launches the fdatasync of step `sync`.
    fn launch_sync(&mut self, sync: Step) {
        if let Err(e) = self.meta_io.engine_sync() {
            return self.end_write_back(Err(e));
        }
        self.set_step(sync);
        self.spawn_write_back([Child::Io(IoOp::Flush)]);
    }

    fn set_step(&mut self, step: Step) {
        if let Some(run) = self.flush.as_mut() {
            run.step = step;
        }
    }

    /// Ends this queue's write-back with `result`: a failure marks the image failed; either
    /// way another write-back may start (the queues waiting for one are woken) and the flush
    /// completes.
    fn end_write_back(&mut self, result: Result<(), Error>) {
        let Some(run) = self.flush.take() else {
            return;
        };
        match lock(&self.meta) {
            Ok(mut meta) => {
                if let Err(e) = &result {
                    meta.fail_write_back(e);
                }
                meta.flushing = false;
                meta.writing.clear();
                meta.release(std::iter::empty());
            }
            Err(e) => tracing::error!(error = %e, "qcow2 write-back cannot end"),
        }
        match run.tag {
            Some(tag) => self.io.tally.ready.push(Completion { tag, result }),
            None => {
                if let Err(e) = result {
                    tracing::error!(error = %e, "qcow2 background write-back failed");
                }
            }
        }
    }

    /// Writes back metadata older than the image's write-back age without holding up the
    /// queue: the same steps as a flush's write-back, on the engine, with no guest op waiting
    /// for them. In the O_DSYNC modes (completions already wait for write-backs),
    /// synchronously, as before.
    pub(super) fn write_back_in_background(&mut self) {
        if self.flush.is_some() {
            return;
        }
        let meta = self.meta.clone();
        let Ok(mut meta) = lock(&meta) else { return };
        if meta.flushing || !meta.write_back_due() {
            return;
        }
        if self.io.engine.file().cache().dsync() {
            // A failure is recorded in `failed` and logged by `write_back`.
            let _ = meta.write_back();
            return;
        }
        match meta.capture() {
            Ok(None) => {}
            Ok(Some(capture)) => {
                meta.flushing = true;
                meta.writing = capture.tables(meta.layout().cluster_size());
                drop(meta);
                self.start_write_back(None, capture);
            }
            Err(e) => meta.fail_write_back(&e),
        }
    }

    /// On close, after the guest's ops drained: lets a background write-back end (at most
    /// [`BACKGROUND_LIMIT`]), so what it captured is written.
    pub(super) fn finish_background_write_back(&mut self) {
        let start = std::time::Instant::now();
        while self.flush.is_some() && start.elapsed() < BACKGROUND_LIMIT {
            if let Err(e) = self.io.engine.wait(Some(Duration::from_millis(100))) {
                tracing::warn!(error = %e, "waiting for a qcow2 background write-back");
                return;
            }
            self.pump();
        }
    }

    /// On close: a write-back still running after the queue drained (its flush timed out) is
    /// given up, and the image marked failed (what it held is not known to be written).
    pub(super) fn abandon_write_back(&mut self) {
        if self.flush.is_some() {
            let gone = Error::from_errno(libc::ETIMEDOUT);
            self.end_write_back(Err(gone));
        }
    }
}
