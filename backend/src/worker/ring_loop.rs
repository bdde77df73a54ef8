//! The worker thread's loop: pull requests, submit, reap, answer, sleep.

use std::os::fd::AsFd;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use rustbk_formats::{Completion, ImageQueue};
use rustbk_grant::{EventChannel, EventFd, GuestHandle, RingPages};
use rustbk_ring::{BackRing, Response, status};

use super::adaptive::{self, AdaptivePoll};
use super::copy_path::{Bounce, BouncePool};
use super::fault::Faults;
use super::order::Order;
use super::persistent::{CacheLimits, GrantCache};
use super::qos::{Deferred, QosGate};
use super::slots::Slots;
use super::{RingResources, WorkerConfig, WorkerExit};
use crate::Stats;

/// Requests taken off the ring go to the kernel this many at a time (one `io_uring_enter`).
/// Each enter of three or more is plugged in the block layer, so the disk is told once for
/// the group (on a virtual disk, one exit to the hypervisor instead of four). Groups stay
/// small so the disk keeps working while the rest of a guest's batch is taken: one enter
/// for the whole ring's worth reached the disk as one burst and left it idle while the
/// burst's completions made their round trip. Measured on the development VM, alternating
/// runs of `rustbk bench` at queue depth 32: reads 0.82 and writes 0.85 of fio (medians of
/// five) with one request per enter, 0.94 and 0.94 with four, 0.84-0.92 with eight.
const SUBMIT_GROUP: u64 = 4;

/// How many bad requests per ring are logged at warn level before going quiet.
const WARN_BUDGET: u32 = 16;

/// Why the loop ended early.
enum Fatal {
    Overflow(rustbk_ring::Error),
    Local(String),
}

/// The state of one ring worker.
pub(super) struct RingWorker<'a> {
    pub cfg: WorkerConfig,
    ring: BackRing<RingPages>,
    evtchn: Box<dyn EventChannel>,
    pub guest: Arc<dyn GuestHandle>,
    pub queue: Box<dyn ImageQueue>,
    pub stats: Arc<Stats>,
    pub slots: Slots,
    pub order: Order,
    pub persistent: Option<GrantCache>,
    /// The time at the top of this loop round (persistent grants' clock).
    pub now: Instant,
    /// When requests were last pulled or completions last reaped: the latency clock, read
    /// once per batch.
    pub clock: Instant,
    /// When the request being started or answered left the ring.
    pub since: Instant,
    /// The persistent mappings of the request being started (reused, so no allocation).
    pub page_scratch: Vec<Arc<rustbk_grant::GrantMapping>>,
    /// The fixed buffer slot of the last page put in `page_scratch`.
    pub slot_scratch: Option<u32>,
    /// Bounce buffers for reuse (grant-copy data path).
    pub bounces: BouncePool,
    /// The bounce buffers of in-flight operations, by tag.
    pub in_flight_bounces: Vec<Option<Bounce>>,
    /// The disk's I/O limits.
    pub qos: QosGate,
    /// The request the limits hold back; while there is one, nothing else leaves the ring.
    pub deferred: Option<Deferred>,
    completions: Vec<Completion>,
    /// The busy-polling window before sleeping.
    poll: AdaptivePoll,
    responses_pending: bool,
    pub stopping: bool,
    stop: &'a EventFd,
    warn_budget: u32,
    /// Test-only fault injection (inert in release builds).
    pub faults: Faults,
}

/// Runs a worker until it is stopped or the frontend breaks the ring.
pub(super) fn run(
    cfg: WorkerConfig,
    res: RingResources,
    stats: Arc<Stats>,
    stop: &EventFd,
) -> WorkerExit {
    let span = tracing::info_span!(
        "ring",
        domid = cfg.domid.0,
        devid = cfg.devid,
        queue = cfg.queue
    );
    let _entered = span.enter();
    tracing::info!(
        entries = res.ring.size(),
        persistent = cfg.persistent_grants > 0,
        data_path = %cfg.data_path,
        "ring worker started"
    );
    let now = Instant::now();
    let limits = CacheLimits {
        max: cfg.persistent_grants,
        unused_after: cfg.persistent_unused,
    };
    let persistent = (cfg.persistent_grants > 0).then(|| GrantCache::new(limits, now));
    let qos = QosGate::new(Arc::clone(&cfg.qos));
    let (poll_us, poll_shared_ok) = (u64::from(cfg.poll_us), cfg.poll_shared_cores);
    let mut w = RingWorker {
        cfg,
        ring: res.ring,
        evtchn: res.evtchn,
        guest: res.guest,
        queue: res.queue,
        stats,
        slots: Slots::default(),
        order: Order::default(),
        persistent,
        now,
        clock: now,
        since: now,
        page_scratch: Vec::new(),
        slot_scratch: None,
        bounces: BouncePool::default(),
        in_flight_bounces: Vec::new(),
        qos,
        deferred: None,
        completions: Vec::new(),
        poll: AdaptivePoll::new(std::time::Duration::from_micros(poll_us), poll_shared_ok),
        responses_pending: false,
        stopping: false,
        stop,
        warn_budget: WARN_BUDGET,
        faults: Faults::from_env(),
    };
    w.enable_fixed_buffers();
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| w.run_loop()));
    let exit = match outcome {
        Err(panic) => {
            let msg = super::panic_message(&*panic);
            tracing::error!(panic = %msg, "ring worker panicked; disconnecting");
            // The kernel may still write into guest pages: wait before they are unmapped.
            w.drain_after_fatal();
            WorkerExit::Failed(format!("panicked: {msg}"))
        }
        Ok(Ok(())) => WorkerExit::Stopped,
        Ok(Err(Fatal::Overflow(e))) => {
            tracing::error!(error = %e, "frontend overflowed the ring; disconnecting");
            w.drain_after_fatal();
            WorkerExit::RingOverflow
        }
        Ok(Err(Fatal::Local(msg))) => {
            tracing::error!(error = %msg, "ring worker failed");
            w.drain_after_fatal();
            WorkerExit::Failed(msg)
        }
    };
    let cached = w.persistent.as_ref().map_or(0, GrantCache::len);
    if let Some(mut cache) = w.persistent.take() {
        cache.clear(&w.stats);
        // Nothing is in flight any more: the kernel lets go of every page before the unmap.
        w.unregister_released(&mut cache);
    }
    tracing::info!(?exit, persistent_grants = cached, "ring worker ended");
    exit
}

impl RingWorker<'_> {
    fn run_loop(&mut self) -> Result<(), Fatal> {
        loop {
            self.tend_grants();
            self.qos.refresh();
            let mut busy = false;
            if !self.stopping {
                busy |= self.pull_requests()?;
                // New requests reach the kernel before anything else is done.
                self.commit()?;
            }
            busy |= self.reap();
            // Whatever the completions released (flushes, barrier steps); free when empty.
            self.commit()?;
            self.publish()?;
            if self.stopping && self.is_idle() {
                return Ok(());
            }
            if busy {
                continue;
            }
            // Held back by the limits: the ring has requests, but the wait is the throttle's.
            let taking = !self.stopping && self.deferred.is_none();
            let idle_since = Instant::now();
            if taking && self.poll_briefly()? {
                self.poll.waited(idle_since.elapsed());
                continue;
            }
            if taking
                && self
                    .ring
                    .final_check_for_requests()
                    .map_err(Fatal::Overflow)?
            {
                continue;
            }
            self.sleep()?;
            if taking {
                self.poll.waited(idle_since.elapsed());
            }
        }
    }

    /// Once per loop round: the clock, the idle sweep when it is due, the cache's counters.
    fn tend_grants(&mut self) {
        let Some(mut cache) = self.persistent.take() else {
            return;
        };
        self.now = Instant::now();
        cache.sweep(self.now);
        cache.report(&self.stats);
        self.unregister_released(&mut cache);
        self.persistent = Some(cache);
    }

    /// How long the loop may sleep: until the persistent grants' next sweep or the time the
    /// held-back request may start, whichever comes first.
    fn sleep_limit(&self) -> Option<std::time::Duration> {
        let sweep = self
            .persistent
            .as_ref()
            .and_then(GrantCache::next_sweep)
            .map(|next| next.saturating_duration_since(Instant::now()));
        let qos = self.deferred.as_ref().and(self.qos.sleep_limit());
        match (sweep, qos) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Starts the held-back request if the limits allow it now and whatever waited behind it,
    /// then takes pending requests off the ring until there are none or the limits hold one
    /// back; true if any request started or was taken.
    fn pull_requests(&mut self) -> Result<bool, Fatal> {
        self.clock = Instant::now();
        let resumed = self.resume();
        self.start_held();
        let mut pulled = 0;
        while self.deferred.is_none() {
            let Some(decoded) = self.ring.next_request().map_err(Fatal::Overflow)? else {
                break;
            };
            pulled += 1;
            self.handle(decoded);
            // Requests go to the kernel in small groups as they are taken (the rest right
            // after the loop, when the ring is empty): see [`SUBMIT_GROUP`].
            if pulled % SUBMIT_GROUP == 0 {
                self.commit()?;
            }
        }
        if pulled > 0 {
            Stats::add(&self.stats.requests, pulled);
            if self.ring.in_flight() >= self.ring.size() {
                Stats::add(&self.stats.ring_full, 1);
            }
        }
        Ok(resumed || pulled > 0)
    }

    /// Handles finished queue operations; true if there was any.
    fn reap(&mut self) -> bool {
        let mut done = std::mem::take(&mut self.completions);
        self.queue.reap(&mut done);
        if !done.is_empty() {
            self.clock = Instant::now();
        }
        let any = !done.is_empty();
        for c in done.drain(..) {
            self.complete(c);
        }
        self.completions = done;
        // Also after new requests alone: a flush may be ready without any completion.
        self.release_waiters();
        any
    }

    fn commit(&mut self) -> Result<(), Fatal> {
        self.queue
            .commit()
            .map_err(|e| Fatal::Local(format!("submit: {e}")))
    }

    fn is_idle(&self) -> bool {
        self.slots.is_empty() && self.order.is_idle() && self.deferred.is_none()
    }

    /// Queues a response; published by [`Self::publish`].
    pub fn respond(&mut self, id: u64, op: u8, st: i16) {
        if st != status::OKAY {
            Stats::add(&self.stats.errors, 1);
        }
        Stats::add(&self.stats.responses, 1);
        self.stats
            .answered_after(self.clock.saturating_duration_since(self.since));
        self.ring.push_response(&Response { id, op, status: st });
        self.responses_pending = true;
    }

    fn publish(&mut self) -> Result<(), Fatal> {
        if !std::mem::take(&mut self.responses_pending) {
            return Ok(());
        }
        if self.ring.push_responses_and_check_notify() {
            Stats::add(&self.stats.kicks_out, 1);
            self.evtchn
                .notify()
                .map_err(|e| Fatal::Local(format!("notify: {e}")))?;
        }
        Ok(())
    }

    /// Busy-polls for new requests and completions for the adaptive window (`adaptive`)
    /// before sleeping, reading shared memory only; true if work showed up. Not while I/O is
    /// in flight on a queue that cannot show its completions without a system call.
    fn poll_briefly(&mut self) -> Result<bool, Fatal> {
        let window = self.poll.window(Instant::now());
        if window.is_zero() {
            return Ok(false);
        }
        if self.queue.in_flight() > 0 && self.queue.peek_completions().is_none() {
            return Ok(false);
        }
        let mut last = Instant::now();
        let deadline = last + window;
        loop {
            let requests = self
                .ring
                .has_unconsumed_requests()
                .map_err(Fatal::Overflow)?;
            if requests || self.queue.peek_completions() == Some(true) {
                Stats::add(&self.stats.polled, 1);
                return Ok(true);
            }
            let now = Instant::now();
            if now.saturating_duration_since(last) > adaptive::PREEMPTED {
                self.poll.preempted();
                return Ok(false);
            }
            if now >= deadline {
                return Ok(false);
            }
            last = now;
            std::hint::spin_loop();
        }
    }

    /// Sleeps until the frontend notifies, an I/O completes, or we are asked to stop: one
    /// `io_uring_enter` with the io_uring engine.
    fn sleep(&mut self) -> Result<(), Fatal> {
        let limit = self.sleep_limit();
        let fds = [self.evtchn.fd(), self.stop.as_fd()];
        let fired = self
            .queue
            .wait_any(&fds, limit)
            .map_err(|e| Fatal::Local(format!("wait: {e}")))?;
        if fired.first().copied().unwrap_or(false) {
            self.ack_kick()?;
        }
        if fired.get(1).copied().unwrap_or(false) {
            self.stopping = true;
        }
        Ok(())
    }

    /// Consumes the guest's notification, counting it if one was pending.
    fn ack_kick(&mut self) -> Result<(), Fatal> {
        let pending = self
            .evtchn
            .ack()
            .map_err(|e| Fatal::Local(format!("event channel: {e}")))?;
        if pending {
            Stats::add(&self.stats.kicks_in, 1);
        }
        Ok(())
    }

    /// After a fatal error: no new requests, but finish what the kernel still has in flight
    /// so guest pages are unmapped only after the I/O into them has ended.
    fn drain_after_fatal(&mut self) {
        while !self.slots.is_empty() {
            if self.queue.wait(None).is_err() {
                break;
            }
            let mut done = Vec::new();
            self.queue.reap(&mut done);
            for c in done {
                self.slots.remove(c.tag);
            }
        }
    }

    /// Logs a refused request at warn level for the first few, then at trace level.
    pub fn note_refused(&mut self, what: &dyn std::fmt::Debug) {
        Stats::add(&self.stats.bad_requests, 1);
        if self.warn_budget > 0 {
            self.warn_budget -= 1;
            tracing::warn!(request = ?what, "refused a request");
        } else {
            tracing::trace!(request = ?what, "refused a request");
        }
    }
}
