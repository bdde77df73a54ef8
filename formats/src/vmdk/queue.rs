//! The data-plane queue of a VMDK image. A read or write that flat extents or stored grains
//! hold as one contiguous run of one file goes to that file's engine as it is, in the guest's
//! own buffers. Any other guest op becomes a plan (see `plan`) whose engine I/O runs on the
//! engines of the extent files (one notifier for all); the op completes when its I/O is done
//! and its grain allocations are committed. Writes touching a grain whose allocation is in
//! flight (on any queue) wait in `deferred` until it commits.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use foldhash::{HashMap, HashMapExt};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::buffer::SharedBufs;
use crate::engine::{Engine, EngineFile};
use crate::error::Error;
use crate::image::{Completion, ImageQueue, IoOp};
use crate::planned;

use super::discard;
use super::lock;
use super::plan::{self, Alloc, Context, Plan, Planned};

enum Child {
    Io(usize, IoOp),
    Now(Result<(), Error>),
}

struct Parent {
    tag: u64,
    pending: usize,
    error: Option<Error>,
    allocs: Vec<Alloc>,
}

impl planned::Tracked for Parent {
    fn progress(&mut self) -> (&mut usize, &mut Option<Error>) {
        (&mut self.pending, &mut self.error)
    }
}

/// A queue of a [`VmdkImage`](super::VmdkImage).
pub struct VmdkQueue {
    engines: Vec<Engine>,
    files: Vec<Arc<EngineFile>>,
    ctx: Context,
    size: u64,
    read_only: bool,
    depth: usize,
    outstanding: usize,
    next_id: u64,
    parents: HashMap<u64, Parent>,
    children: HashMap<u64, u64>,
    backlog: VecDeque<(u64, Child)>,
    deferred: VecDeque<(IoOp, u64)>,
    ready: Vec<Completion>,
    /// The pump's lists, kept so that a reap allocates nothing: engine completions, the ids
    /// of the parents they finished, and those parents.
    reaped: Vec<Completion>,
    finished: Vec<u64>,
    done: Vec<Parent>,
    wake: Arc<OwnedFd>,
}

impl VmdkQueue {
    pub(super) fn new(
        engines: Vec<Engine>,
        ctx: Context,
        size: u64,
        read_only: bool,
        depth: u32,
    ) -> Result<VmdkQueue, Error> {
        let first = engines
            .first()
            .ok_or_else(|| Error::InvalidImage("VMDK without an extent file".to_owned()))?;
        let wake = Arc::new(first.notifier().try_clone_to_owned()?);
        let files = engines.iter().map(|e| e.file().clone()).collect();
        Ok(VmdkQueue {
            engines,
            files,
            ctx,
            size,
            read_only,
            depth: depth as usize,
            outstanding: 0,
            next_id: 1,
            parents: HashMap::new(),
            children: HashMap::new(),
            backlog: VecDeque::new(),
            deferred: VecDeque::new(),
            ready: Vec::new(),
            reaped: Vec::new(),
            finished: Vec::new(),
            done: Vec::new(),
            wake,
        })
    }

    fn start(&mut self, op: IoOp, tag: u64) {
        if let Some(error) = op.range_error(self.size) {
            return self.spawn(tag, [Child::Now(Err(error))], Vec::new());
        }
        if op.is_modifying() && self.read_only {
            return self.spawn(tag, [Child::Now(Err(Error::ReadOnly))], Vec::new());
        }
        let op = match self.direct(tag, op) {
            Ok(None) => return,
            Ok(Some(op)) => op,
            Err(e) => return self.spawn(tag, [Child::Now(Err(e))], Vec::new()),
        };
        let planned = match op {
            IoOp::Read { offset, bufs } => {
                shared(bufs).and_then(|b| plan::plan_read(&mut self.ctx, offset, &b))
            }
            IoOp::Flush => Ok(Plan {
                flush: (0..self.engines.len()).collect(),
                ..Plan::default()
            }),
            IoOp::Write { offset, bufs } => {
                let b = match shared(bufs) {
                    Ok(b) => b,
                    Err(e) => return self.spawn(tag, [Child::Now(Err(e))], Vec::new()),
                };
                match plan::plan_write(&mut self.ctx, offset, &b) {
                    Ok(Planned::Ready(p)) => Ok(p),
                    Ok(Planned::Busy) => {
                        let whole = crate::qcow2::backing::piece(&b, 0, b.len());
                        match whole {
                            Ok(c) => {
                                return self.defer(
                                    IoOp::Write {
                                        offset,
                                        bufs: Box::new(c),
                                    },
                                    tag,
                                );
                            }
                            Err(e) => Err(e),
                        }
                    }
                    Err(e) => Err(e),
                }
            }
            IoOp::Discard { len: 0, .. } | IoOp::WriteZeroes { len: 0, .. } => Ok(Plan::default()),
            IoOp::Discard { offset, len } => {
                return match discard::plan_discard(&mut self.ctx, offset, len) {
                    Ok(ranges) => self.punch(tag, ranges),
                    Err(e) => self.spawn(tag, [Child::Now(Err(e))], Vec::new()),
                };
            }
            IoOp::WriteZeroes { .. } => Err(Error::UnsupportedFeature(
                "write-zeroes on VMDK images".to_owned(),
            )),
        };
        match planned {
            Ok(plan) => self.launch(tag, plan),
            Err(error) => self.spawn(tag, [Child::Now(Err(error))], Vec::new()),
        }
    }

    /// Launches a read or write that one engine I/O serves in the guest's own buffers (see
    /// [`plan::direct_read`] and [`plan::direct_write`]); gives the op back if it needs a
    /// plan.
    fn direct(&mut self, tag: u64, op: IoOp) -> Result<Option<IoOp>, Error> {
        let (write, offset, bufs) = match op {
            IoOp::Read { offset, bufs } => (false, offset, bufs),
            IoOp::Write { offset, bufs } => (true, offset, bufs),
            other => return Ok(Some(other)),
        };
        let len = crate::buffer::total_len(bufs.iovecs())
            .ok_or_else(|| Error::InvalidArgument("buffer length overflows".to_owned()))?;
        let found = match write {
            true => plan::direct_write(&self.ctx, offset, len)?,
            false => plan::direct_read(&self.ctx, offset, len)?,
        };
        let Some((file, host)) = found else {
            return Ok(Some(match write {
                true => IoOp::Write { offset, bufs },
                false => IoOp::Read { offset, bufs },
            }));
        };
        let io = match write {
            true => IoOp::Write { offset: host, bufs },
            false => IoOp::Read { offset: host, bufs },
        };
        self.spawn(tag, [Child::Io(file, io)], Vec::new());
        Ok(None)
    }

    /// Starts a discard's hole punches.
    fn punch(&mut self, tag: u64, ranges: Vec<discard::HostRange>) {
        let mut kids: Vec<Child> = ranges
            .into_iter()
            .map(|(file, offset, len)| Child::Io(file, IoOp::Discard { offset, len }))
            .collect();
        if kids.is_empty() {
            kids.push(Child::Now(Ok(())));
        }
        self.spawn(tag, kids, Vec::new());
    }

    fn defer(&mut self, op: IoOp, tag: u64) {
        if let Ok(mut meta) = lock(&self.ctx.meta) {
            if !meta.waiters.iter().any(|w| Arc::ptr_eq(w, &self.wake)) {
                meta.waiters.push(self.wake.clone());
            }
        }
        self.deferred.push_back((op, tag));
    }

    fn launch(&mut self, tag: u64, plan: Plan) {
        let mut kids: Vec<Child> = plan
            .io
            .into_iter()
            .map(|io| {
                let (offset, bufs) = (io.host, Box::new(io.bufs));
                Child::Io(
                    io.file,
                    match io.write {
                        true => IoOp::Write { offset, bufs },
                        false => IoOp::Read { offset, bufs },
                    },
                )
            })
            .collect();
        kids.extend(plan.flush.into_iter().map(|f| Child::Io(f, IoOp::Flush)));
        if kids.is_empty() {
            kids.push(Child::Now(Ok(())));
        }
        self.spawn(tag, kids, plan.allocs);
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn spawn(&mut self, tag: u64, kids: impl IntoIterator<Item = Child>, allocs: Vec<Alloc>) {
        let id = self.id();
        let mut pending = 0;
        for kid in kids {
            let child = self.id();
            self.children.insert(child, id);
            self.backlog.push_back((child, kid));
            pending += 1;
        }
        let parent = Parent {
            tag,
            pending,
            error: None,
            allocs,
        };
        self.parents.insert(id, parent);
        self.feed();
    }

    /// Moves backlog children into their engines while they have room; true if any moved.
    fn feed(&mut self) -> bool {
        let mut moved = false;
        while let Some((tag, child)) = self.backlog.pop_front() {
            let file = match &child {
                Child::Io(f, _) => *f,
                Child::Now(_) => 0,
            };
            let Some(engine) = self.engines.get_mut(file) else {
                continue;
            };
            if engine.in_flight() >= engine.depth() {
                self.backlog.push_front((tag, child));
                break;
            }
            let result = match child {
                Child::Io(_, op) => engine.submit(op, tag),
                Child::Now(result) => engine.complete_now(tag, result),
            };
            if let Err(e) = result {
                tracing::error!(error = %e, "engine refused a child op");
            }
            moved = true;
        }
        moved
    }

    fn pump(&mut self) {
        for e in &mut self.engines {
            e.reap(&mut self.reaped);
        }
        let (children, parents) = (&mut self.children, &mut self.parents);
        planned::settle(&mut self.reaped, children, parents, &mut self.finished);
        let mut done = std::mem::take(&mut self.done);
        done.extend(
            self.finished
                .drain(..)
                .filter_map(|id| self.parents.remove(&id)),
        );
        if !done.is_empty() {
            self.finish_all(&mut done);
        }
        self.done = done;
        let retried = !self.deferred.is_empty();
        if retried {
            for _ in 0..self.deferred.len() {
                if let Some((op, tag)) = self.deferred.pop_front() {
                    self.start(op, tag);
                }
            }
        }
        if self.feed() || retried {
            self.commit_engines();
        }
    }

    fn commit_engines(&mut self) {
        for e in &mut self.engines {
            if let Err(e) = e.commit() {
                tracing::warn!(error = %e, "engine commit failed");
            }
        }
    }

    /// Completes finished parents. The allocations of those whose I/O succeeded are committed
    /// together (one fdatasync per file, then every table entry); those of failed ones are
    /// released (their grains stay unused at the end of the file).
    fn finish_all(&mut self, parents: &mut Vec<Parent>) {
        let allocs: Vec<Alloc> = parents
            .iter()
            .filter(|p| p.error.is_none())
            .flat_map(|p| p.allocs.iter().copied())
            .collect();
        let mut committed = Ok(());
        if parents.iter().any(|p| !p.allocs.is_empty()) {
            committed = lock(&self.ctx.meta).and_then(|mut meta| {
                let r = plan::commit(&mut meta, &self.files, &allocs);
                meta.release(
                    parents
                        .iter()
                        .flat_map(|p| p.allocs.iter().map(|a| (a.sparse, a.grain))),
                );
                r
            });
            if committed.is_ok()
                && !allocs.is_empty()
                && self.files.first().is_some_and(|f| f.cache().dsync())
            {
                committed = self.files.iter().try_for_each(|f| f.datasync());
            }
            if let Err(e) = &committed {
                tracing::error!(error = %e, "vmdk grain table update failed");
            }
        }
        let errno = committed.as_ref().err().map(Error::errno);
        for p in parents.drain(..) {
            let result = match (p.error, errno) {
                (Some(e), _) => Err(e),
                (None, Some(errno)) if !p.allocs.is_empty() => Err(Error::from_errno(errno)),
                (None, _) => Ok(()),
            };
            self.ready.push(Completion { tag: p.tag, result });
        }
    }

    fn wait_for_wake(&mut self, left: Option<Duration>) -> Result<(), Error> {
        let slice = left.map_or(Duration::from_millis(100), |l| {
            l.min(Duration::from_millis(100))
        });
        let ms = u16::try_from(slice.as_millis()).unwrap_or(100);
        let mut fds = [PollFd::new(self.wake.as_fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::from(ms)).map_err(std::io::Error::from)?;
        Ok(())
    }

    fn engines_busy(&self) -> bool {
        !self.backlog.is_empty() || self.engines.iter().any(|e| e.in_flight() > 0)
    }
}

fn shared(bufs: Box<dyn crate::IoBuffers>) -> Result<SharedBufs, Error> {
    SharedBufs::new(bufs)
        .ok_or_else(|| Error::InvalidArgument("buffer length overflows".to_owned()))
}

impl ImageQueue for VmdkQueue {
    fn submit(&mut self, op: IoOp, tag: u64) -> Result<(), Error> {
        if self.outstanding >= self.depth {
            return Err(Error::QueueFull(
                u32::try_from(self.depth).unwrap_or(u32::MAX),
            ));
        }
        self.outstanding += 1;
        self.start(op, tag);
        Ok(())
    }

    fn commit(&mut self) -> Result<(), Error> {
        self.feed();
        for e in &mut self.engines {
            e.commit()?;
        }
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> usize {
        self.pump();
        let n = self.ready.len();
        out.append(&mut self.ready);
        self.outstanding = self.outstanding.saturating_sub(n);
        n
    }

    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), Error> {
        self.commit()?;
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            self.pump();
            if !self.ready.is_empty() {
                let _ = nix::unistd::write(&*self.wake, &1u64.to_ne_bytes());
                return Ok(());
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                return Ok(());
            }
            if !self.engines_busy() && self.deferred.is_empty() {
                return Ok(());
            }
            self.wait_for_wake(left)?;
        }
    }

    fn notifier(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    fn in_flight(&self) -> usize {
        self.outstanding
    }
}

/// How long dropping a queue waits for its ops.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

impl Drop for VmdkQueue {
    fn drop(&mut self) {
        let start = Instant::now();
        let mut done = Vec::new();
        while self.outstanding > 0 && start.elapsed() < DRAIN_LIMIT {
            if self.wait(Some(Duration::from_millis(100))).is_err() {
                break;
            }
            self.reap(&mut done);
        }
        if let Ok(mut meta) = lock(&self.ctx.meta) {
            let stuck: Vec<(usize, u64)> = self
                .parents
                .values()
                .flat_map(|p| p.allocs.iter().map(|a| (a.sparse, a.grain)))
                .collect();
            meta.release(stuck);
            meta.waiters.retain(|w| !Arc::ptr_eq(w, &self.wake));
        }
    }
}
