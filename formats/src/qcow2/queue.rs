//! The data-plane queue of a qcow2 image.
//!
//! Each guest op becomes a plan: engine I/O on the image file (children, tagged internally),
//! work already done synchronously (zeros, backing and compressed reads), and metadata to
//! commit once the children finished. The guest op completes when all of that is done. Ops
//! touching a guest cluster whose allocation is in flight (on any queue) wait in `deferred`
//! until that allocation commits; the committing queue wakes the others through their
//! bells. A write inside a guest cluster whose allocation this queue has in flight, into
//! a new cluster the file system zeroed, instead joins that allocation: its data goes straight
//! to the new cluster and it completes together with the allocating op (with its result).
//! Children beyond the engine's depth wait in `backlog`. An op needing an L2 table the cache
//! lacks is parked in `fetches` while the engine reads the table (see [`super::fetch`]).
//!
//! A guest flush with dirty metadata writes it back on this queue's engine, in the crash-safe
//! order, while the queue goes on planning and completing other ops (see [`super::flush`]);
//! a flush arriving while any queue of the image writes back waits in `deferred` too.
//!
//! In the O_DSYNC cache modes (`writethrough`, `directsync`) a completed write must be durable
//! without a flush, mapping included: the metadata the finished ops changed is written back
//! (crash-safe order, fdatasyncs included) before their completions are handed out.

use std::collections::VecDeque;
use std::mem::take;
use std::sync::{Arc, Mutex};

use foldhash::{HashMap, HashMapExt};

use crate::IoBuffers;
use crate::buffer::{SharedBufs, total_len};
use crate::engine::Engine;
use crate::error::Error;
use crate::image::{Completion, IoOp};
use crate::planned::{self, Child, PlanIo, Planner};

use super::discard::{self, Zeroing};
use super::fetch::Fetch;
use super::meta::Meta;
use super::metaio::MetaIo;
use super::read::{self, Alloc, Plan, Sources, lock};
use super::write::{self, WriteSrc};
use crate::size::SharedSize;

struct Parent {
    tag: u64,
    pending: usize,
    error: Option<Error>,
    allocs: Vec<Alloc>,
    /// Tags of writes that joined this op's allocations.
    joined: Vec<u64>,
    role: Role,
}

/// What a parent is.
enum Role {
    /// A guest op.
    Guest,
    /// A step of this queue's write-back (see [`super::flush`]).
    WriteBack,
    /// A read of an L2 table some guest ops wait for (see [`super::fetch`]).
    Fetch(Fetch),
}

impl planned::Tracked for Parent {
    fn progress(&mut self) -> (&mut usize, &mut Option<Error>) {
        (&mut self.pending, &mut self.error)
    }
}

/// A queue of a [`Qcow2Image`](super::Qcow2Image).
pub struct Qcow2Queue {
    pub(super) io: PlanIo,
    pub(super) meta: Arc<Mutex<Meta>>,
    srcs: Sources,
    /// The image's virtual size now (it grows with the image).
    size: SharedSize,
    read_only: bool,
    next_id: u64,
    parents: HashMap<u64, Parent>,
    children: HashMap<u64, u64>,
    deferred: VecDeque<(IoOp, u64)>,
    /// Joinable allocations in flight on this queue: guest cluster -> (parent id, host).
    open_allocs: HashMap<u64, (u64, u64)>,
    /// Discards unmap whole clusters (emptying the image, see [`super::empty`]).
    unmap: bool,
    /// The write-back this queue runs for a guest flush, if any.
    pub(super) flush: Option<super::flush::Run>,
    /// The image's metadata I/O seam, told of the write-back's engine I/O.
    pub(super) meta_io: Arc<dyn MetaIo>,
    /// L2 tables this queue reads on its engine -> the ops parked on them.
    pub(super) fetches: HashMap<u64, Vec<(IoOp, u64)>>,
    /// Ops parked on a table read were planned again in this pump: their I/O is to be
    /// handed to the kernel before the queue sleeps or returns.
    pub(super) replanned: bool,
    /// Room the pump reuses: child completions, finished parents (ids, then the parents).
    reaped: Vec<Completion>,
    finished: Vec<u64>,
    finishing: Vec<Parent>,
    guests: Vec<Parent>,
}

impl Qcow2Queue {
    pub(super) fn new(
        engine: Engine,
        meta: Arc<Mutex<Meta>>,
        srcs: Sources,
        size: SharedSize,
        read_only: bool,
        depth: u32,
    ) -> Result<Qcow2Queue, Error> {
        let meta_io = lock(&meta)?.io.clone();
        Ok(Qcow2Queue {
            io: PlanIo::new(engine, depth)?,
            meta,
            srcs,
            size,
            read_only,
            next_id: 1,
            parents: HashMap::new(),
            children: HashMap::new(),
            deferred: VecDeque::new(),
            open_allocs: HashMap::new(),
            unmap: false,
            flush: None,
            meta_io,
            fetches: HashMap::new(),
            replanned: false,
            reaped: Vec::new(),
            finished: Vec::new(),
            finishing: Vec::new(),
            guests: Vec::new(),
        })
    }

    /// Makes this queue's discards unmap whole clusters (see [`super::empty`]).
    pub(super) fn unmap_discards(&mut self) {
        self.unmap = true;
    }

    fn plan_read(&mut self, offset: u64, bufs: Box<dyn crate::IoBuffers>) -> Result<Plan, Error> {
        let bufs = SharedBufs::new(bufs)
            .ok_or_else(|| Error::InvalidArgument("buffer length overflows".to_owned()))?;
        read::plan_read(&self.meta, &mut self.srcs, offset, &bufs)
    }

    /// A flush with nothing dirty is one engine fdatasync. Otherwise it writes back the
    /// metadata cache: on the engine (the flush completes when that ends, see
    /// [`super::flush`]), or synchronously in the O_DSYNC modes, where completions already
    /// wait for write-backs. While a queue of the image writes back, the flush waits for it
    /// (deferred): the writes that completed before the flush may be in what it writes.
    /// `None` if the flush was deferred or a write-back now runs for it.
    fn plan_flush(&mut self, tag: u64) -> Option<Result<Plan, Error>> {
        let meta = self.meta.clone();
        let mut meta = match lock(&meta) {
            Ok(m) => m,
            Err(e) => return Some(Err(e)),
        };
        if let Err(e) = meta.check_usable() {
            return Some(Err(e));
        }
        if meta.flushing {
            self.defer(&mut meta, IoOp::Flush, tag);
            return None;
        }
        if self.io.engine.file().cache().dsync() {
            let synced = meta.write_back();
            return Some(synced.map(|synced| Plan {
                flush: !synced,
                ..Plan::default()
            }));
        }
        match meta.capture() {
            Ok(None) => Some(Ok(Plan {
                flush: true,
                ..Plan::default()
            })),
            Ok(Some(capture)) => {
                meta.flushing = true;
                meta.writing = capture.tables(meta.layout().cluster_size());
                drop(meta);
                self.start_write_back(Some(tag), capture);
                None
            }
            Err(e) => {
                meta.fail_write_back(&e);
                Some(Err(e))
            }
        }
    }

    /// Puts `op` aside until the bell is rung (an allocation or a write-back ended).
    fn defer(&mut self, meta: &mut Meta, op: IoOp, tag: u64) {
        if !meta.waiters.iter().any(|w| Arc::ptr_eq(w, &self.io.wake)) {
            meta.waiters.push(self.io.wake.clone());
        }
        self.deferred.push_back((op, tag));
    }

    /// Plans a write, discard or write-zeroes under the metadata lock; `None` if deferred.
    fn plan_modify(&mut self, op: IoOp, tag: u64) -> Option<Result<Plan, Error>> {
        let meta = self.meta.clone();
        let mut meta = match lock(&meta) {
            Ok(m) => m,
            Err(e) => return Some(Err(e)),
        };
        let (offset, len) = match op.range() {
            Some((offset, Some(len))) => (offset, len),
            _ => return Some(Ok(Plan::default())),
        };
        if let Err(e) = meta.check_usable() {
            return Some(Err(e));
        }
        let bits = meta.layout().cluster_bits;
        let last = offset.saturating_add(len.max(1) - 1) >> bits;
        let op = match self.try_join(op, tag, offset, last, bits) {
            Ok(()) => return None,
            Err(op) => op,
        };
        if (offset >> bits..=last).any(|gc| meta.busy.contains(&gc)) {
            self.defer(&mut meta, op, tag);
            return None;
        }
        let op = match self.write_direct(&mut meta, op, tag, (offset, len)) {
            Ok(None) => return None,
            Ok(Some(op)) => op,
            Err(e) => return Some(Err(e)),
        };
        let mut plan = Plan::default();
        let result = match op {
            IoOp::Write { bufs, .. } => match SharedBufs::new(bufs) {
                Some(shared) => {
                    let src = WriteSrc::Guest(&shared);
                    write::plan_write(&mut meta, &mut self.srcs, offset, len, src, &mut plan)
                }
                None => Err(Error::InvalidArgument("buffer length overflows".to_owned())),
            },
            IoOp::Discard { .. } => {
                let hint = match self.unmap {
                    true => Zeroing::Unmap,
                    false => Zeroing::Hint,
                };
                discard::plan_discard(&mut meta, &mut self.srcs, (offset, len), hint, &mut plan)
            }
            _ => {
                let zeros = Zeroing::Required;
                discard::plan_discard(&mut meta, &mut self.srcs, (offset, len), zeros, &mut plan)
            }
        };
        if let Err(e) = result {
            meta.release(plan.allocs.iter().map(|a| a.gc));
            return Some(Err(e));
        }
        Some(Ok(plan))
    }

    /// Launches a write that one engine write serves straight from the guest's buffers (see
    /// [`write::direct_write`]); gives the op back if it needs a plan.
    fn write_direct(
        &mut self,
        meta: &mut Meta,
        op: IoOp,
        tag: u64,
        (offset, len): (u64, u64),
    ) -> Result<Option<IoOp>, Error> {
        let IoOp::Write { bufs, .. } = op else {
            return Ok(Some(op));
        };
        let Some(host) = write::direct_write(meta, offset, len)? else {
            return Ok(Some(IoOp::Write { offset, bufs }));
        };
        let write = IoOp::Write { offset: host, bufs };
        self.spawn(tag, [Child::Io(write)], Vec::new());
        Ok(None)
    }

    /// Attaches a write inside one guest cluster to this queue's joinable allocation of that
    /// cluster; gives the op back if there is none.
    fn try_join(
        &mut self,
        op: IoOp,
        tag: u64,
        offset: u64,
        last: u64,
        bits: u32,
    ) -> Result<(), IoOp> {
        let gc = offset >> bits;
        let Some(&(id, host)) = self.open_allocs.get(&gc).filter(|_| last == gc) else {
            return Err(op);
        };
        let IoOp::Write { bufs, .. } = op else {
            return Err(op);
        };
        let child = self.id();
        let Some(parent) = self.parents.get_mut(&id) else {
            return Err(IoOp::Write { offset, bufs });
        };
        parent.pending += 1;
        parent.joined.push(tag);
        let inner = offset & ((1 << bits) - 1);
        self.children.insert(child, id);
        let write = IoOp::Write {
            offset: host + inner,
            bufs,
        };
        self.io.backlog.push_back((child, Child::Io(write)));
        self.io.feed();
        Ok(())
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Launches a read that one engine read serves straight into the guest's buffers (see
    /// [`read::direct_read`]); gives the buffers back if the read needs a plan.
    fn read_direct(
        &mut self,
        tag: u64,
        offset: u64,
        bufs: Box<dyn IoBuffers>,
    ) -> Result<Option<Box<dyn IoBuffers>>, Error> {
        let len = total_len(bufs.iovecs()).and_then(|l| u64::try_from(l).ok());
        let len =
            len.ok_or_else(|| Error::InvalidArgument("buffer length overflows".to_owned()))?;
        let Some(host) = read::direct_read(&self.meta, offset, len)? else {
            return Ok(Some(bufs));
        };
        let read = IoOp::Read { offset: host, bufs };
        self.spawn(tag, [Child::Io(read)], Vec::new());
        Ok(None)
    }

    fn launch(&mut self, tag: u64, plan: Plan) {
        let mut kids: Vec<Child> = plan
            .io
            .into_iter()
            .map(|io| {
                let bufs = Box::new(io.bufs);
                Child::Io(match io.write {
                    true => IoOp::Write {
                        offset: io.host,
                        bufs,
                    },
                    false => IoOp::Read {
                        offset: io.host,
                        bufs,
                    },
                })
            })
            .collect();
        if plan.flush {
            kids.push(Child::Io(IoOp::Flush));
        }
        if kids.is_empty() {
            kids.push(Child::Now(Ok(())));
        }
        self.spawn(tag, kids, plan.allocs);
    }

    pub(super) fn finish_now(&mut self, tag: u64, result: Result<(), Error>) {
        self.spawn(tag, [Child::Now(result)], Vec::new());
    }

    fn spawn(&mut self, tag: u64, kids: impl IntoIterator<Item = Child>, allocs: Vec<Alloc>) {
        let parent = Parent {
            tag,
            pending: 0,
            error: None,
            allocs,
            joined: Vec::new(),
            role: Role::Guest,
        };
        self.spawn_parent(parent, kids);
    }

    /// Runs `kids` on the engine as one step of this queue's write-back.
    pub(super) fn spawn_write_back(&mut self, kids: impl IntoIterator<Item = Child>) {
        let parent = Parent {
            tag: 0,
            pending: 0,
            error: None,
            allocs: Vec::new(),
            joined: Vec::new(),
            role: Role::WriteBack,
        };
        self.spawn_parent(parent, kids);
    }

    /// Runs `read` on the engine for `fetch`, a parent of its own.
    pub(super) fn spawn_fetch(&mut self, fetch: Fetch, read: Child) {
        let parent = Parent {
            tag: 0,
            pending: 0,
            error: None,
            allocs: Vec::new(),
            joined: Vec::new(),
            role: Role::Fetch(fetch),
        };
        self.spawn_parent(parent, [read]);
    }

    /// Starts `parent` with `kids` (at least one) as its children.
    fn spawn_parent(&mut self, mut parent: Parent, kids: impl IntoIterator<Item = Child>) {
        let id = self.id();
        for a in &parent.allocs {
            if let Some(host) = a.joinable {
                self.open_allocs.insert(a.gc, (id, host));
            }
        }
        for kid in kids {
            let child = self.id();
            self.children.insert(child, id);
            self.io.backlog.push_back((child, kid));
            parent.pending += 1;
        }
        self.parents.insert(id, parent);
        self.io.feed();
    }

    /// Finishes the parents `ids` (emptied).
    fn finish_parents(&mut self, ids: &mut Vec<u64>) {
        let first = self.io.tally.ready.len();
        self.finish_parents_in(ids);
        if self.io.engine.file().cache().dsync() {
            self.write_through(first);
        }
    }

    /// Writes back the metadata changed by the ops whose completions are `ready[first..]`
    /// before they are handed out; if that fails, those that succeeded fail (their mapping
    /// may not be durable).
    fn write_through(&mut self, first: usize) {
        let result = lock(&self.meta).and_then(|mut meta| match meta.is_dirty() {
            true => meta.write_back().map(drop),
            false => Ok(()),
        });
        let Err(e) = result else { return };
        let errno = e.errno();
        for c in self.io.tally.ready.iter_mut().skip(first) {
            if c.result.is_ok() {
                c.result = Err(Error::from_errno(errno));
            }
        }
    }

    fn finish_parents_in(&mut self, ids: &mut Vec<u64>) {
        let (mut removed, mut guests) = (take(&mut self.finishing), take(&mut self.guests));
        removed.extend(ids.drain(..).filter_map(|id| self.parents.remove(&id)));
        for p in removed.drain(..) {
            match p.role {
                Role::Guest => guests.push(p),
                Role::WriteBack => self.write_back_step_done(p.error),
                Role::Fetch(fetch) => self.fetch_done(fetch, p.error),
            }
        }
        self.finishing = removed;
        for a in guests.iter().flat_map(|p| &p.allocs) {
            self.open_allocs.remove(&a.gc);
        }
        // Successful allocating writes complete once their allocations are committed.
        let commits = |p: &Parent| p.error.is_none() && !p.allocs.is_empty();
        if guests.iter().any(commits) {
            let allocs: Vec<Alloc> = (guests.iter().filter(|p| commits(p)))
                .flat_map(|p| p.allocs.clone())
                .collect();
            let result = self.commit_allocs(&allocs);
            let errno = result.as_ref().err().map(Error::errno);
            for p in guests.iter().filter(|p| commits(p)) {
                self.complete(p, || errno.map_or(Ok(()), |e| Err(Error::from_errno(e))));
            }
            if let Err(e) = result {
                tracing::error!(error = %e, "qcow2 metadata commit failed");
            }
        }
        for p in guests.drain(..).filter(|p| !commits(p)) {
            if !p.allocs.is_empty() {
                // The op failed: its allocations leak (repairable with `qemu-img check -r leaks`).
                if let Ok(mut meta) = lock(&self.meta) {
                    meta.release(p.allocs.iter().map(|a| a.gc));
                }
            }
            let errno = p.error.as_ref().map(Error::errno);
            if !p.joined.is_empty() {
                self.complete(&p, || errno.map_or(Ok(()), |e| Err(Error::from_errno(e))));
                continue;
            }
            let result = p.error.map_or(Ok(()), Err);
            self.io.tally.ready.push(Completion { tag: p.tag, result });
        }
        self.guests = guests;
    }

    /// Completes a parent's op and the writes that joined it, each with `result()`.
    fn complete(&mut self, p: &Parent, result: impl Fn() -> Result<(), Error>) {
        for &tag in std::iter::once(&p.tag).chain(&p.joined) {
            self.io.tally.ready.push(Completion {
                tag,
                result: result(),
            });
        }
    }

    fn commit_allocs(&mut self, allocs: &[Alloc]) -> Result<(), Error> {
        let mut meta = lock(&self.meta)?;
        let result = write::commit(&mut meta, allocs);
        let due = result.is_ok() && meta.write_back_due();
        meta.release(allocs.iter().map(|a| a.gc));
        drop(meta);
        if due {
            self.write_back_in_background();
        }
        result
    }

    fn retry_deferred(&mut self) {
        for _ in 0..self.deferred.len() {
            let Some((op, tag)) = self.deferred.pop_front() else {
                break;
            };
            self.start(op, tag);
        }
    }
}

impl Qcow2Queue {
    /// Plans and launches `op` (or defers it, or completes it with an error); with `may_park`,
    /// an op needing an L2 table the cache lacks is parked while the engine reads it.
    pub(super) fn start_op(&mut self, op: IoOp, tag: u64, may_park: bool) {
        if let Some(error) = op.range_error(self.size.get()) {
            return self.finish_now(tag, Err(error));
        }
        if op.is_modifying() && self.read_only {
            return self.finish_now(tag, Err(Error::ReadOnly));
        }
        let op = match may_park && !matches!(op, IoOp::Flush) {
            true => match self.park_on_miss(op, tag) {
                Some(op) => op,
                None => return,
            },
            false => op,
        };
        let planned = match op {
            IoOp::Read { offset, bufs } => match self.read_direct(tag, offset, bufs) {
                Ok(Some(bufs)) => self.plan_read(offset, bufs),
                Ok(None) => return,
                Err(e) => Err(e),
            },
            IoOp::Flush => match self.plan_flush(tag) {
                Some(planned) => planned,
                None => return,
            },
            op => match self.plan_modify(op, tag) {
                Some(planned) => planned,
                None => return,
            },
        };
        match planned {
            Ok(plan) => self.launch(tag, plan),
            Err(error) => self.finish_now(tag, Err(error)),
        }
    }
}

impl Planner for Qcow2Queue {
    /// Plans and launches `op` (or parks it, defers it, or completes it with an error).
    fn start(&mut self, op: IoOp, tag: u64) {
        self.start_op(op, tag, true);
    }

    /// Collects child completions, finishes parents, retries deferred ops, feeds the backlog.
    fn pump(&mut self) {
        let mut finished = take(&mut self.finished);
        let maps = (&mut self.children, &mut self.parents);
        planned::reap_and_settle(&mut self.io.engine, &mut self.reaped, maps, &mut finished);
        if !finished.is_empty() {
            self.finish_parents(&mut finished);
        }
        self.finished = finished;
        // Deferred ops wait for allocations on any queue: another queue's commit only wakes
        // this one through the bell (a ring worker then reaps), so retry them on every
        // pump, not only after this queue's own ops finished. An op still blocked defers again.
        let retried = !self.deferred.is_empty();
        if retried {
            self.retry_deferred();
        }
        let replanned = std::mem::take(&mut self.replanned);
        self.io.feed_and_commit(retried || replanned);
    }

    fn woken(&mut self) {
        if !self.deferred.is_empty() {
            self.retry_deferred();
        }
    }

    fn has_deferred(&self) -> bool {
        !self.deferred.is_empty()
    }

    fn io(&mut self) -> &mut PlanIo {
        &mut self.io
    }

    fn io_ref(&self) -> &PlanIo {
        &self.io
    }
}

impl Drop for Qcow2Queue {
    fn drop(&mut self) {
        planned::drain(self, "qcow2");
        self.finish_background_write_back();
        self.abandon_write_back();
        if let Ok(mut meta) = lock(&self.meta) {
            let stuck = self
                .parents
                .values()
                .flat_map(|p| p.allocs.iter().map(|a| a.gc));
            let stuck: Vec<u64> = stuck.collect();
            meta.release(stuck);
            match meta.write_back() {
                // Another queue writes back: the image's or that queue's close does the rest.
                Err(Error::WriteBackBusy) => {
                    tracing::debug!("qcow2 write-back left to the queue running one")
                }
                Err(e) => tracing::error!(error = %e, "cannot write back qcow2 metadata"),
                Ok(_) => {}
            }
            meta.waiters.retain(|w| !Arc::ptr_eq(w, &self.io.wake));
        }
    }
}
