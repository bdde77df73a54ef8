//! The data-plane queue of a thin volume.
//!
//! Each guest op is planned under the volume's lock into children (engine ops on the data
//! device, or work done at once); when they are all done the op maps its new blocks or
//! commits, releases its claims and completes. Ops that touch blocks other ops own, and
//! modifying ops while a pause is requested, wait in `deferred`; a finishing op rings the
//! other queues of the volume so that they retry theirs.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use rustbk_formats::engine::MAX_DEPTH;
use rustbk_formats::planned::{self, Child, PlanIo, Planner};
use rustbk_formats::{CacheMode, Completion, Engine, EngineFile, ImageQueue, IoOp};

use super::plan::{After, Claim, Outcome, Plan};
use super::{Bells, Core, lock, outage, to_formats};
use crate::error::Result;
use crate::meta::Mapping;
use crate::port::{MapStart, NewMapping};

/// How often a queue whose maps wait for the pool service's answer looks for it while
/// nothing else wakes it.
const MAP_CHECK_EVERY: Duration = Duration::from_secs(1);
/// Most finished ops with new blocks held back while a map is in flight (see
/// [`ThinQueue::finish_all`]); more go out in a map of their own.
const MAX_HELD: usize = 256;

type Error = rustbk_formats::Error;

/// An op held back, and since when if it waits for a lost pool service.
struct Deferred {
    op: IoOp,
    tag: u64,
    held_since: Option<Instant>,
}

struct Parent {
    tag: u64,
    pending: usize,
    error: Option<Error>,
    plan: Plan,
}

impl Parent {
    /// Finished without error, with new blocks to map.
    fn maps(&self) -> &[NewMapping] {
        match (&self.error, &self.plan.after) {
            (None, After::Map(maps)) => maps,
            _ => &[],
        }
    }
}

/// Ops whose new blocks were sent to the pool service, waiting for its answer.
struct InFlight {
    ticket: u64,
    parents: Vec<Parent>,
    maps: Vec<NewMapping>,
}

/// A queue of a [`ThinVolume`](super::ThinVolume).
pub struct ThinQueue {
    io: PlanIo,
    core: Arc<Mutex<Core>>,
    bells: Bells,
    /// The volume's size now (it grows with the volume).
    size: Arc<AtomicU64>,
    read_only: bool,
    cache: CacheMode,
    next_id: u64,
    parents: HashMap<u64, Parent>,
    deferred: VecDeque<Deferred>,
    kids: Vec<Child>,
    reaped: Vec<Completion>,
    done: Vec<Parent>,
    /// Maps sent and not answered yet, oldest first.
    mapping: VecDeque<InFlight>,
    /// Finished ops whose new blocks wait for the map in flight to be answered, to go out
    /// together in the next one. Empty whenever `mapping` is.
    held: Vec<Parent>,
}

impl ThinQueue {
    pub(super) fn new(
        core: Arc<Mutex<Core>>,
        bells: Bells,
        data: Arc<EngineFile>,
        opts: &super::VolumeOptions,
        (size, read_only): (Arc<AtomicU64>, bool),
        depth: u32,
    ) -> Result<ThinQueue> {
        if depth == 0 || depth > MAX_DEPTH {
            return Err(crate::Error::InvalidArgument(format!(
                "queue depth {depth}"
            )));
        }
        let engine_depth = depth.saturating_mul(4).min(MAX_DEPTH);
        let kind = rustbk_formats::engine::resolve(opts.engine)?;
        let engine = Engine::new(data, kind, engine_depth)?;
        let io = PlanIo::new(engine, depth)?;
        if let Ok(mut bells) = bells.lock() {
            bells.push(io.wake.clone());
        }
        Ok(ThinQueue {
            io,
            core,
            bells,
            size,
            read_only,
            cache: opts.cache,
            next_id: 0,
            parents: HashMap::new(),
            deferred: VecDeque::new(),
            kids: Vec::new(),
            reaped: Vec::new(),
            done: Vec::new(),
            mapping: VecDeque::new(),
            held: Vec::new(),
        })
    }

    /// [`ThinQueue::start`] for an op that has waited for the pool service since
    /// `held_since`.
    fn start_held(&mut self, op: IoOp, tag: u64, held_since: Option<Instant>) {
        if let Some(error) = op.range_error(self.size.load(Ordering::Acquire)) {
            return self.finish_now(tag, Err(error));
        }
        if op.is_modifying() && self.read_only {
            return self.finish_now(tag, Err(Error::ReadOnly));
        }
        let core = self.core.clone();
        let mut core = match lock(&core) {
            Ok(c) => c,
            Err(e) => return self.finish_now(tag, Err(to_formats(e))),
        };
        if core.port.failed() && !core.try_reconnect(&self.bells) {
            // The cached mappings may be gone with the service (mapped after its last
            // commit), and their blocks handed to another volume by the next one: nothing is
            // read or written through them until the volume has a new port.
            let since = held_since.unwrap_or_else(Instant::now);
            if core.may_reconnect() && since.elapsed() < core.hold {
                outage::start_ticker(&mut core, Arc::downgrade(&self.core), self.bells.clone());
                self.deferred.push_back(Deferred {
                    op,
                    tag,
                    held_since: Some(since),
                });
                return;
            }
            if matches!(op, IoOp::Flush) {
                core.changes.flush_failed();
            }
            drop(core);
            let lost = crate::Error::Service("the port to the pool failed".into());
            return self.finish_now(tag, Err(to_formats(lost)));
        }
        if op.is_modifying() && core.port.pause_requested() {
            core.waiting = true;
            self.defer(op, tag);
            return;
        }
        let kids = &mut self.kids;
        let outcome = match op {
            IoOp::Read { offset, bufs } => core.plan_read(offset, bufs, kids),
            IoOp::Write { offset, bufs } => core.plan_write(offset, bufs, kids),
            IoOp::Discard { offset, len } => core.plan_zero(offset, len, true, kids),
            IoOp::WriteZeroes { offset, len } => core.plan_zero(offset, len, false, kids),
            // `unsafe`: nothing is synced or committed for the guest.
            IoOp::Flush if !self.cache.syncs() => {
                kids.push(Child::Now(Ok(())));
                Ok(Outcome::Go(Plan::simple()))
            }
            IoOp::Flush => {
                // The pool's commit syncs the data device, after this op started.
                kids.push(Child::Now(Ok(())));
                Ok(Outcome::Go(Plan {
                    after: After::Commit(core.changes.mark()),
                    ..Plan::simple()
                }))
            }
        };
        match outcome {
            Ok(Outcome::Go(plan)) => {
                core.writes += usize::from(plan.write);
                drop(core);
                self.launch(tag, plan);
            }
            Ok(Outcome::Defer(op)) => {
                core.waiting = true;
                self.defer(op, tag);
            }
            Err(e) => {
                self.kids.clear();
                drop(core);
                self.finish_now(tag, Err(to_formats(e)));
            }
        }
    }

    fn defer(&mut self, op: IoOp, tag: u64) {
        let held_since = None;
        self.deferred.push_back(Deferred {
            op,
            tag,
            held_since,
        });
    }

    fn finish_now(&mut self, tag: u64, result: Result<(), Error>) {
        self.kids.push(Child::Now(result));
        self.launch(tag, Plan::simple());
    }

    fn launch(&mut self, tag: u64, plan: Plan) {
        self.next_id = self.next_id.wrapping_add(1);
        let id = self.next_id;
        let parent = Parent {
            tag,
            pending: self.kids.len(),
            error: None,
            plan,
        };
        self.parents.insert(id, parent);
        for kid in self.kids.drain(..) {
            self.io.backlog.push_back((id, kid));
        }
        self.io.feed();
    }

    /// Ends the ops whose children are done: one `map` for all their new blocks, then the
    /// commits, then their claims are released. Where the port can, the map is sent without
    /// waiting (not in the O_DSYNC modes, whose completions wait for a commit anyway): the
    /// ops with new blocks then finish when its answer comes ([`ThinQueue::collect_maps`]).
    /// While a map is in flight, the ops with new blocks wait for its answer and go out
    /// together in the next map (up to [`MAX_HELD`]): one frame, one wake-up of the pool
    /// service and one answer for many first writes, where each used to cost all three.
    fn finish_all(&mut self) {
        let mut done = std::mem::take(&mut self.done);
        if done.is_empty() {
            self.done = done;
            return;
        }
        let core = self.core.clone();
        let mut core = match lock(&core) {
            Ok(core) => core,
            Err(e) => {
                self.fail_all(done.drain(..), e);
                self.done = done;
                return;
            }
        };
        let hold = !self.cache.dsync() && !self.mapping.is_empty();
        let ring = match hold && self.held.len() < MAX_HELD {
            true => {
                let (maps, mut now): (Vec<Parent>, Vec<Parent>) =
                    done.drain(..).partition(|p| !p.maps().is_empty());
                self.held.extend(maps);
                self.settle_all(&mut core, &mut now, None)
            }
            false => {
                // Both lists keep their room: no allocation per reap on the read path.
                if !self.held.is_empty() {
                    self.held.append(&mut done);
                    std::mem::swap(&mut self.held, &mut done);
                }
                self.send_maps(&mut core, &mut done)
            }
        };
        drop(core);
        self.done = done;
        if ring {
            self.ring_others();
        }
    }

    /// Maps the new blocks of the finished ops `done` and completes them, or those without
    /// new blocks only when the map is sent without waiting; true if a queue waits for
    /// blocks they released.
    fn send_maps(&mut self, core: &mut Core, done: &mut Vec<Parent>) -> bool {
        let batch: Vec<NewMapping> = done.iter().flat_map(Parent::maps).copied().collect();
        let started = match batch.is_empty() {
            true => MapStart::Done(Ok(())),
            false => {
                core.changes.made();
                match self.cache.dsync() {
                    true => MapStart::Done(core.port.map(&batch)),
                    false => core.port.map_start(&batch),
                }
            }
        };
        match started {
            MapStart::Done(result) => {
                let failure = mapped(core, &batch, result);
                self.settle_all(core, done, failure.as_ref())
            }
            MapStart::Sent(ticket) => {
                let (waiting, mut now): (Vec<Parent>, Vec<Parent>) =
                    done.drain(..).partition(|p| !p.maps().is_empty());
                self.mapping.push_back(InFlight {
                    ticket,
                    parents: waiting,
                    maps: batch,
                });
                self.settle_all(core, &mut now, None)
            }
        }
    }

    /// Finishes the ops whose maps the pool answered, oldest first.
    fn collect_maps(&mut self) {
        if self.mapping.is_empty() {
            return;
        }
        let core = self.core.clone();
        let mut core = match lock(&core) {
            Ok(core) => core,
            Err(e) => {
                let mut waiting: Vec<Parent> =
                    self.mapping.drain(..).flat_map(|f| f.parents).collect();
                waiting.append(&mut self.held);
                return self.fail_all(waiting.into_iter(), e);
            }
        };
        let mut ring = false;
        while let Some(front) = self.mapping.front() {
            let Some(result) = core.port.map_answer(front.ticket) else {
                break;
            };
            let Some(mut flight) = self.mapping.pop_front() else {
                break;
            };
            let failure = mapped(&mut core, &flight.maps, result);
            ring |= self.settle_all(&mut core, &mut flight.parents, failure.as_ref());
        }
        if self.mapping.is_empty() && !self.held.is_empty() {
            let mut held = std::mem::take(&mut self.held);
            ring |= self.send_maps(&mut core, &mut held);
            self.held = held;
        }
        drop(core);
        if ring {
            self.ring_others();
        }
    }

    /// Completes the finished ops `done` (emptied) after their maps (`failure` tells which
    /// failed), with the O_DSYNC modes' commit; true if a queue waits for blocks they
    /// released.
    fn settle_all(
        &mut self,
        core: &mut Core,
        done: &mut Vec<Parent>,
        failure: Option<&MapFailure>,
    ) -> bool {
        let committed = self.write_through(core, done);
        let mut ring = false;
        for parent in done.drain(..) {
            let modified = parent.plan.write && parent.error.is_none();
            ring |= self.settle(core, parent, failure);
            if let (true, Err(errno)) = (modified, committed) {
                if let Some(c) = self.io.tally.ready.last_mut().filter(|c| c.result.is_ok()) {
                    c.result = Err(Error::from_errno(errno));
                }
            }
        }
        ring
    }

    /// Completes ops with the error of a volume lock that cannot be taken.
    fn fail_all(&mut self, parents: impl Iterator<Item = Parent>, e: crate::Error) {
        let errno = to_formats(e).errno();
        for p in parents {
            let result = Err(Error::from_errno(errno));
            self.io.tally.ready.push(Completion { tag: p.tag, result });
        }
    }

    /// `writethrough`/`directsync`: commits the pool when any of the finished ops modified
    /// the volume, so its mappings (new blocks, unmapped ones) are durable when it completes;
    /// the errno if that failed.
    fn write_through(&self, core: &mut Core, done: &[Parent]) -> Result<(), i32> {
        let modified = done.iter().any(|p| p.plan.write && p.error.is_none());
        // O_DSYNC made the data durable; only new mappings need a commit.
        if !self.cache.dsync() || !modified || !core.changes.unsettled() {
            return Ok(());
        }
        let mark = core.changes.mark();
        let committed = core.port.commit();
        core.changes
            .committed(mark, committed)
            .map_err(|e| to_formats(e).errno())
    }

    /// Completes one finished op; true if a queue waits for blocks it released.
    fn settle(&mut self, core: &mut Core, parent: Parent, failure: Option<&MapFailure>) -> bool {
        let Parent {
            tag, error, plan, ..
        } = parent;
        let mut result = error.map_or(Ok(()), Err);
        result = match (plan.after, result) {
            (After::Map(maps), Ok(())) => match failure {
                Some(f) if maps.iter().any(|m| f.vblocks.contains(&m.vblock)) => {
                    Err(Error::from_errno(f.errno))
                }
                _ => Ok(()),
            },
            (After::Map(maps), Err(e)) => {
                core.reserve.extend(maps.iter().map(|m| m.block));
                Err(e)
            }
            (After::Commit(mark), Ok(())) => {
                let committed = core.port.commit();
                core.trim_reserve(Instant::now());
                core.changes.committed(mark, committed).map_err(to_formats)
            }
            (_, result) => result,
        };
        self.io.tally.ready.push(Completion { tag, result });
        core.writes -= usize::from(plan.write);
        match plan.claim {
            Claim::None => return false,
            Claim::Shared(range) => core.claims.unshare(range),
            Claim::Owned(vblocks) => core.claims.disown(&vblocks),
        }
        std::mem::take(&mut core.waiting)
    }

    /// Wakes the volume's other queues (blocks an op waits for are free, or a pause ended).
    fn ring_others(&self) {
        let Ok(bells) = self.bells.lock() else { return };
        for bell in bells.iter().filter(|b| !Arc::ptr_eq(b, &self.io.wake)) {
            bell.ring();
        }
    }

    /// Answers the pool's requests: gives the reserve back if the pool ran out of blocks,
    /// and pauses the volume here if the pool asks and no write is in flight on any queue.
    fn check_pool_requests(&mut self) {
        let Ok(mut core) = lock(&self.core) else {
            return;
        };
        if core.port.give_back_requested() {
            core.give_back_reserve();
        }
        if core.writes > 0 || !core.port.pause_requested() {
            return;
        }
        match core.port.paused() {
            Ok(info) => {
                // Mappings made from now on carry the new time: they are exclusive.
                core.info.snapshotted_time = info.snapshotted_time;
                core.info.time = info.time;
            }
            Err(e) => tracing::error!(error = %e, "pause handshake failed"),
        }
        drop(core);
        self.ring_others();
    }

    fn retry_deferred(&mut self) {
        for _ in 0..self.deferred.len() {
            let Some(d) = self.deferred.pop_front() else {
                break;
            };
            self.start_held(d.op, d.tag, d.held_since);
        }
    }
}

/// The virtual blocks a `map` batch left unmapped, and why.
struct MapFailure {
    errno: i32,
    vblocks: HashSet<u64>,
}

/// Records the new blocks of finished ops in the cache once the pool mapped them. If the pool refused
/// part of the batch, asks it what got mapped: the other blocks go back to the reserve. If
/// it cannot tell (the connection to the pool service is lost), the pool may have made the
/// mapping, and even committed it: the block is not written again, the cache forgets the
/// virtual block, and the op fails.
fn mapped(core: &mut Core, maps: &[NewMapping], result: Result<()>) -> Option<MapFailure> {
    if maps.is_empty() {
        return None;
    }
    let time = core.info.time;
    let Err(error) = result else {
        for m in maps {
            let block = m.block;
            core.cache.set(m.vblock, Some(Mapping { block, time }));
        }
        return None;
    };
    let mut failed = HashSet::new();
    for m in maps {
        match core.port.lookup(m.vblock..m.vblock + 1) {
            Ok(found) => {
                let mapped = found.first().map(|(_, mapping)| *mapping);
                if mapped.is_none_or(|x| x.block != m.block) {
                    core.reserve.push(m.block);
                    failed.insert(m.vblock);
                }
                core.cache.set(m.vblock, mapped);
            }
            Err(_) => {
                core.cache.forget(m.vblock);
                failed.insert(m.vblock);
            }
        }
    }
    Some(MapFailure {
        errno: error.errno(),
        vblocks: failed,
    })
}

impl Planner for ThinQueue {
    /// Plans and launches `op`, defers it, or completes it with an error.
    fn start(&mut self, op: IoOp, tag: u64) {
        self.start_held(op, tag, None);
    }

    /// Collects child completions, finishes ops, handles a pause, retries deferred ops.
    fn pump(&mut self) {
        let mut reaped = std::mem::take(&mut self.reaped);
        self.io.engine.reap(&mut reaped);
        for c in reaped.drain(..) {
            let Some(parent) = self.parents.get_mut(&c.tag) else {
                continue;
            };
            parent.pending = parent.pending.saturating_sub(1);
            if let Err(e) = c.result {
                parent.error.get_or_insert(e);
            }
            if parent.pending == 0 {
                if let Some(parent) = self.parents.remove(&c.tag) {
                    self.done.push(parent);
                }
            }
        }
        self.reaped = reaped;
        self.collect_maps();
        self.finish_all();
        self.check_pool_requests();
        // Ops held back are tried again on every pump: the wake that got this queue reaped
        // may be another queue's release of the blocks they wait for.
        if !self.deferred.is_empty() {
            self.retry_deferred();
        }
        self.io.feed_and_commit(false);
    }

    fn woken(&mut self) {
        self.pump();
    }

    /// Ops held back, or waiting for the answer to their map (the reader thread rings the
    /// bell when it comes).
    fn has_deferred(&self) -> bool {
        !self.deferred.is_empty() || !self.mapping.is_empty()
    }

    /// A pause request rings every queue of the volume.
    fn listens(&self) -> bool {
        true
    }

    /// While maps wait for the pool service's answer, the queue wakes every
    /// [`MAP_CHECK_EVERY`]: a service that stopped answering rings no bell, and the
    /// port's call timeout is only checked when the queue looks for the answer.
    fn wake_within(&self) -> Option<Duration> {
        (!self.mapping.is_empty()).then_some(MAP_CHECK_EVERY)
    }

    fn io(&mut self) -> &mut PlanIo {
        &mut self.io
    }

    fn io_ref(&self) -> &PlanIo {
        &self.io
    }
}

impl Drop for ThinQueue {
    fn drop(&mut self) {
        planned::drain(self, "thin volume");
        if let Ok(mut bells) = self.bells.lock() {
            bells.retain(|b| !Arc::ptr_eq(b, &self.io.wake));
        }
    }
}
