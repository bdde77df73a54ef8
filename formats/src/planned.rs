//! The queue loop shared by formats that plan each guest op into engine children and metadata
//! work (qcow2 images, thin volumes).
//!
//! A [`Planner`] turns ops into plans and finishes them; this module gives it the rest of
//! [`ImageQueue`]: accepting ops up to the queue's depth, handing out finished ones, waiting on
//! the engine or, when only ops held back by another queue are left, on the queue's bell,
//! and draining the queue before it is dropped.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::engine::Engine;
use crate::error::Error;
use crate::image::{Completion, ImageQueue, IoOp, poll_any};

/// The guest ops a planning queue has accepted, and those finished and not yet reaped.
#[derive(Debug)]
pub struct Tally {
    depth: usize,
    outstanding: usize,
    /// Finished guest ops, in the order they finished.
    pub ready: Vec<Completion>,
}

impl Tally {
    /// A tally for a queue that accepts at most `depth` ops at a time.
    pub fn new(depth: u32) -> Tally {
        Tally {
            depth: depth as usize,
            outstanding: 0,
            ready: Vec::new(),
        }
    }
}

/// What every planning queue keeps besides its plans: the engine, the children waiting for
/// room in it, the guest ops accepted and finished, and the bell.
pub struct PlanIo {
    /// The engine the children run on.
    pub engine: Engine,
    /// Children (with their engine tags) waiting for room in the engine.
    pub backlog: VecDeque<(u64, Child)>,
    /// Guest ops accepted and finished.
    pub tally: Tally,
    /// The queue's bell, rung by other queues when ops held back here may go on.
    pub wake: Arc<Bell>,
}

impl PlanIo {
    /// The I/O state of a queue of `depth` guest ops on `engine`.
    pub fn new(engine: Engine, depth: u32) -> Result<PlanIo, Error> {
        Ok(PlanIo {
            engine,
            backlog: VecDeque::new(),
            tally: Tally::new(depth),
            wake: Arc::new(Bell::new()?),
        })
    }

    /// Moves backlog children into the engine while it has room; true if any moved.
    pub fn feed(&mut self) -> bool {
        let mut moved = false;
        while self.engine.in_flight() < self.engine.depth() {
            let Some((tag, child)) = self.backlog.pop_front() else {
                break;
            };
            let result = match child {
                Child::Io(op) => self.engine.submit(op, tag),
                Child::Meta(op) => self.engine.submit_meta(op, tag),
                Child::Now(result) => self.engine.complete_now(tag, result),
            };
            if let Err(e) = result {
                tracing::error!(error = %e, "engine refused a child op");
            }
            moved = true;
        }
        moved
    }

    /// Hands what `feed` moved (and anything queued) to the kernel, after a pump.
    pub fn feed_and_commit(&mut self, also: bool) {
        if self.feed() || also {
            if let Err(e) = self.engine.commit() {
                tracing::warn!(error = %e, "engine commit failed in pump");
            }
        }
    }
}

/// A queue that plans guest ops; it is an [`ImageQueue`] through this module.
pub trait Planner: Send {
    /// Plans and launches `op`, defers it, or completes it at once (into [`Tally::ready`]).
    fn start(&mut self, op: IoOp, tag: u64);
    /// Reaps the engine, finishes the ops whose work is all done, retries deferred ops.
    fn pump(&mut self);
    /// Runs after the bell woke a queue whose only ops wait for another queue.
    fn woken(&mut self);
    /// Whether ops wait for another queue.
    fn has_deferred(&self) -> bool;
    /// Whether a sleeping queue must wake when others ring its bell: while ops wait for
    /// another queue (the default), or always for a queue that takes requests that way.
    fn listens(&self) -> bool {
        self.has_deferred()
    }
    /// The longest a sleeping queue may sleep: ops wait for an answer that no bell may
    /// ever bring (a pool service that stopped answering), and [`Planner::pump`] gives up on
    /// it once it is overdue. None (the default): as long as the caller asks.
    fn wake_within(&self) -> Option<Duration> {
        None
    }
    /// The queue's I/O state.
    fn io(&mut self) -> &mut PlanIo;
    /// The same, to read.
    fn io_ref(&self) -> &PlanIo;
}

impl<P: Planner> ImageQueue for P {
    fn submit(&mut self, op: IoOp, tag: u64) -> Result<(), Error> {
        let tally = &mut self.io().tally;
        if tally.outstanding >= tally.depth {
            return Err(Error::QueueFull(
                u32::try_from(tally.depth).unwrap_or(u32::MAX),
            ));
        }
        tally.outstanding += 1;
        self.start(op, tag);
        Ok(())
    }

    fn commit(&mut self) -> Result<(), Error> {
        let io = self.io();
        io.feed();
        io.engine.commit()
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> usize {
        self.pump();
        let tally = &mut self.io().tally;
        let n = tally.ready.len();
        out.append(&mut tally.ready);
        tally.outstanding = tally.outstanding.saturating_sub(n);
        n
    }

    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), Error> {
        self.commit()?;
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            self.pump();
            if !self.io_ref().tally.ready.is_empty() {
                // The engine's notifier was cleared by the pump: finished ops still wait.
                self.io_ref().wake.ring_notifier();
                return Ok(());
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                return Ok(());
            }
            let left = capped(left, self.wake_within());
            let io = self.io_ref();
            if io.engine.in_flight() == 0 && io.backlog.is_empty() {
                if !self.has_deferred() {
                    return Ok(());
                }
                wait_for_wake(self, left)?;
                continue;
            }
            self.io().engine.wait(left)?;
        }
    }

    /// The engine's notifier, which the bell rings too from now on: readable while
    /// completions or finished ops wait, or ops held back may go on.
    fn notifier(&self) -> BorrowedFd<'_> {
        let io = self.io_ref();
        let notifier = io.engine.notifier();
        io.wake.hand_out(notifier, self.has_deferred());
        if !io.tally.ready.is_empty() {
            io.wake.ring_notifier();
        }
        notifier
    }

    /// Sleeps in the engine, as a raw queue does (one `io_uring_enter` waits for the children
    /// and `fds`); while ops wait for another queue, the bell other queues ring is watched
    /// too (see [`Planner::listens`]). Returns at once when finished ops wait to be reaped.
    fn wait_any(
        &mut self,
        fds: &[BorrowedFd<'_>],
        timeout: Option<Duration>,
    ) -> Result<Vec<bool>, Error> {
        self.commit()?;
        self.pump();
        if !self.io_ref().tally.ready.is_empty() {
            return poll_any(self.io_ref().wake.fd(), fds, Some(Duration::ZERO));
        }
        let timeout = capped(timeout, self.wake_within());
        if !self.listens() {
            return self.io().engine.wait_any(fds, timeout);
        }
        let wake = self.io_ref().wake.clone();
        let mut watched = Vec::with_capacity(fds.len() + 1);
        watched.extend_from_slice(fds);
        watched.push(wake.fd());
        let mut fired = self.io().engine.wait_any(&watched, timeout)?;
        if fired.pop() == Some(true) {
            wake.clear();
        }
        Ok(fired)
    }

    fn in_flight(&self) -> usize {
        self.io_ref().tally.outstanding
    }

    /// Children finished in the engine (its completion ring is shared memory) or guest ops
    /// finished and not reaped. A child's completion may not finish its op, and a ring of
    /// the bell is not seen here: a worker polling on this stops early or sleeps a little
    /// late (its window), never misses a wake-up.
    fn peek_completions(&mut self) -> Option<bool> {
        let io = self.io();
        let children = io.engine.peek_completions()?;
        Some(children || !io.tally.ready.is_empty())
    }
}

/// One piece of the work of a planned op.
#[derive(Debug)]
pub enum Child {
    /// I/O on the engine's file.
    Io(IoOp),
    /// Metadata I/O on the engine's file, through its page-cached descriptor (see
    /// [`Engine::submit_meta`]).
    Meta(IoOp),
    /// Work already done, with its result.
    Now(Result<(), Error>),
}

/// A planned guest op whose children run on the engine.
pub trait Tracked {
    /// Its children still running, and the first error one of them gave.
    fn progress(&mut self) -> (&mut usize, &mut Option<Error>);
}

/// Counts the finished children in `done` (engine tags, mapped to their parent's id by
/// `children`; emptied) against their parents; adds to `finished` the ids of the parents
/// whose last child finished, in the order they finished.
pub fn settle<P: Tracked, S: BuildHasher>(
    done: &mut Vec<Completion>,
    children: &mut HashMap<u64, u64, S>,
    parents: &mut HashMap<u64, P, S>,
    finished: &mut Vec<u64>,
) {
    for c in done.drain(..) {
        let Some(id) = children.remove(&c.tag) else {
            continue;
        };
        let Some(parent) = parents.get_mut(&id) else {
            continue;
        };
        let (pending, error) = parent.progress();
        *pending = pending.saturating_sub(1);
        if let Err(e) = c.result {
            error.get_or_insert(e);
        }
        if *pending == 0 {
            finished.push(id);
        }
    }
}

/// Reaps `engine`'s finished children into `reaped` and settles them (see [`settle`]):
/// `finished` gets the ids of the parents whose last child finished; `reaped` is left empty.
pub fn reap_and_settle<P: Tracked, S: BuildHasher>(
    engine: &mut Engine,
    reaped: &mut Vec<Completion>,
    (children, parents): (&mut HashMap<u64, u64, S>, &mut HashMap<u64, P, S>),
    finished: &mut Vec<u64>,
) {
    engine.reap(reaped);
    settle(reaped, children, parents, finished);
}

/// Sleeps until the bell is rung (another queue finished what our deferred ops wait for),
/// for at most 100 ms or what is `left` of the caller's timeout.
fn wait_for_wake<P: Planner>(queue: &mut P, left: Option<Duration>) -> Result<(), Error> {
    let slice = left.map_or(WAKE_SLICE, |l| l.min(WAKE_SLICE));
    let ms = u16::try_from(slice.as_millis()).unwrap_or(100);
    let wake = queue.io_ref().wake.clone();
    let mut fds = [PollFd::new(wake.fd(), PollFlags::POLLIN)];
    if poll(&mut fds, PollTimeout::from(ms)).map_err(std::io::Error::from)? > 0 {
        wake.clear();
    }
    queue.woken();
    Ok(())
}

/// The longest a queue with only deferred ops sleeps before it looks again.
const WAKE_SLICE: Duration = Duration::from_millis(100);

/// How long dropping a queue waits for its ops (their allocations block other queues).
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// Waits (at most [`DRAIN_LIMIT`]) for every op `queue` accepted to finish, dropping their
/// completions; for a queue's `Drop`. `what` names the queue in the log.
pub fn drain<P: Planner>(queue: &mut P, what: &str) {
    let start = Instant::now();
    let mut done = Vec::new();
    while queue.in_flight() > 0 && start.elapsed() < DRAIN_LIMIT {
        if let Err(e) = queue.wait(Some(Duration::from_millis(100))) {
            tracing::warn!(error = %e, "draining a {what} queue");
            break;
        }
        queue.reap(&mut done);
    }
}

/// A planned queue's bell: other queues ring it when ops held back there may go on (blocks
/// released, a pause asked or ended).
///
/// It is an eventfd of its own, not the engine's notifier: the kernel signals that one for
/// every completion, so a worker watching it while it sleeps in the engine would be woken
/// twice for each, and would read it on every reap. Once the queue's notifier is handed out
/// ([`ImageQueue::notifier`]), a ring makes the notifier readable too, so whoever polls it
/// sees held-back ops that may go on.
#[derive(Debug)]
pub struct Bell {
    fd: EventFd,
    notifier: OnceLock<OwnedFd>,
}

impl Bell {
    /// A bell nobody rang yet.
    pub fn new() -> Result<Bell, Error> {
        let fd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(std::io::Error::from)?;
        Ok(Bell {
            fd,
            notifier: OnceLock::new(),
        })
    }

    /// Rings the bell (and the queue's notifier, once handed out).
    pub fn ring(&self) {
        if let Err(e) = self.fd.write(1) {
            tracing::warn!(error = %e, "cannot wake a queue");
        }
        self.ring_notifier();
    }

    /// The eventfd to watch for the bell.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Takes the rings so far: the eventfd is readable again at the next.
    fn clear(&self) {
        let _ = self.fd.read();
    }

    /// From now on a ring makes `notifier` readable too. `held` says whether ops are held
    /// back: a ring for them may have come already, so the notifier is rung once.
    fn hand_out(&self, notifier: BorrowedFd<'_>, held: bool) {
        if self.notifier.get().is_some() {
            return;
        }
        match notifier.try_clone_to_owned() {
            Ok(fd) => {
                let _ = self.notifier.set(fd);
                if held {
                    self.ring_notifier();
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot share a queue's notifier with its bell"),
        }
    }

    /// Makes the handed-out notifier readable.
    fn ring_notifier(&self) {
        let Some(fd) = self.notifier.get() else {
            return;
        };
        if let Err(e) = nix::unistd::write(fd, &1u64.to_ne_bytes()) {
            tracing::warn!(error = %e, "cannot wake a queue's poller");
        }
    }
}

/// The shorter of a wait's `timeout` (None: forever) and a queue's `cap`.
fn capped(timeout: Option<Duration>, cap: Option<Duration>) -> Option<Duration> {
    match (timeout, cap) {
        (Some(t), Some(c)) => Some(t.min(c)),
        (t, c) => t.or(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(fd: BorrowedFd<'_>) -> bool {
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::ZERO).expect("poll") == 1
    }

    fn notifier() -> EventFd {
        EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK).expect("eventfd")
    }

    #[test]
    fn a_bell_reaches_the_notifier_only_once_handed_out() {
        let bell = Bell::new().expect("bell");
        let n = notifier();
        bell.ring();
        assert!(readable(bell.fd()));
        assert!(!readable(n.as_fd()), "rang a notifier not handed out");
        bell.clear();
        assert!(!readable(bell.fd()), "clear left the bell readable");
        bell.hand_out(n.as_fd(), false);
        assert!(
            !readable(n.as_fd()),
            "handed out with nothing held back, yet rung"
        );
        bell.ring();
        assert!(readable(bell.fd()) && readable(n.as_fd()));
    }

    #[test]
    fn handing_out_with_ops_held_back_rings_the_notifier_once() {
        let bell = Bell::new().expect("bell");
        let n = notifier();
        bell.hand_out(n.as_fd(), true);
        assert!(
            readable(n.as_fd()),
            "a ring before the hand-out may be lost"
        );
        let _ = n.read();
        bell.hand_out(n.as_fd(), true);
        assert!(!readable(n.as_fd()), "a second hand-out rang again");
    }
}
