//! The workload loop: keep `queue_depth` requests in flight, spread over the frontend's
//! queues in turn, verify, measure.

use std::time::{Duration, Instant};

use rustbk_ring::{Request, Response, RwOp, op, status};

use super::model::{DiskModel, UNKNOWN, region_blocks};
use super::pace::Pacer;
use super::pattern::{fill, matches};
use super::report::{Latencies, Report};
use super::{Pattern, Progress, Workload};
use crate::{Error, Frontend, SlotPool};

/// How long requests may stay unanswered before the run fails (a restarted backend must answer
/// within this).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug)]
enum Kind {
    Read,
    Write { generation: u32 },
    Flush,
}

#[derive(Clone, Copy, Debug)]
struct InFlight {
    /// The block, or `None` for a flush.
    block: Option<usize>,
    kind: Kind,
    start: Instant,
    /// Requests of this I/O not answered yet (a split block takes several).
    parts_left: usize,
    /// Which parts were answered (bit `i`: part `i`), to catch a duplicate response.
    answered: u128,
    /// Whether any of its answered parts failed.
    failed: bool,
}

/// A request's id: its slot above these bits, its part of the slot's I/O below.
const PART_BITS: u32 = 16;
/// The most requests one block is split into.
const MAX_PARTS: usize = 128;

fn request_id(slot: usize, part: usize) -> u64 {
    ((slot as u64) << PART_BITS) | part as u64
}

struct Runner<'a> {
    w: &'a Workload,
    blocks: usize,
    gens: &'a mut Vec<u32>,
    busy: Vec<bool>,
    inflight: Vec<Option<InFlight>>,
    pool: SlotPool,
    rng: u64,
    next_seq: usize,
    writes_since_flush: u64,
    issued: u64,
    pacer: Pacer,
    /// The queue (ring) the next request goes to: requests take the queues in turn.
    next_queue: usize,
    /// The last response, or the first request after an idle spell.
    last_activity: Instant,
    report: Report,
    lat: Latencies,
    buf: Vec<u8>,
    scratch: Vec<u8>,
}

/// Runs `w` on a connected frontend. `progress` is called about once a second.
pub fn run(
    front: &mut Frontend,
    w: &Workload,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Report, Error> {
    let mut model = DiskModel::for_workload(front, w)?;
    run_with_model(front, w, &mut model, progress)
}

/// Runs `w` on a connected frontend, verifying reads against `model` and recording writes in
/// it, so a later run (after a reconnect) goes on verifying the same data.
pub fn run_with_model(
    front: &mut Frontend,
    w: &Workload,
    model: &mut DiskModel,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Report, Error> {
    let mut r = Runner::new(front, w, model)?;
    let start = Instant::now();
    let deadline = start + w.duration;
    let mut last_progress = start;
    let mut responses = Vec::new();
    loop {
        let issuing = Instant::now() < deadline && w.max_ops.is_none_or(|m| r.issued < m);
        if issuing {
            r.fill_queue(front)?;
        }
        if r.in_flight() == 0 && !issuing {
            break;
        }
        responses.clear();
        front.poll_responses(&mut responses, r.poll_timeout(issuing))?;
        r.check_stall()?;
        for rsp in &responses {
            r.complete(front, rsp)?;
        }
        if last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            progress(&r.progress(start));
        }
    }
    let mut report = std::mem::take(&mut r.report);
    report.finish(start.elapsed(), &mut r.lat);
    front.retire(r.pool);
    Ok(report)
}

impl<'a> Runner<'a> {
    fn new(front: &mut Frontend, w: &'a Workload, model: &'a mut DiskModel) -> Result<Self, Error> {
        let sector = front.disk().sector_size.max(512) as usize;
        if w.block_size == 0 || w.block_size % sector != 0 || w.queue_depth == 0 {
            return Err(Error::Config(format!(
                "block size {} / depth {} invalid for sector size {sector}",
                w.block_size, w.queue_depth
            )));
        }
        let blocks = region_blocks(front, w)?;
        if blocks < w.queue_depth as usize {
            return Err(Error::Config(format!(
                "region of {blocks} blocks is too small for depth {}",
                w.queue_depth
            )));
        }
        if w.verify && model.blocks() != blocks {
            return Err(Error::Config(format!(
                "the disk model has {} blocks, the region {blocks}",
                model.blocks()
            )));
        }
        let (dom, backend) = (std::sync::Arc::clone(front.domain()), front.backend_domid());
        let free: u32 = (0..front.queue_count())
            .map(|q| front.free_slots_of(q))
            .sum();
        let depth = w.queue_depth.min(free);
        let max_segments = match front.disk().max_indirect_segments {
            0 => rustbk_ring::MAX_SEGMENTS_PER_REQUEST,
            n => n as usize,
        };
        let sizes = (depth, w.block_size);
        let pool = SlotPool::split(&dom, front.frames_mut(), backend, sizes, max_segments)?;
        let parts = pool.get(0).map_or(1, |s| s.parts(w.block_size));
        let ring = (0..front.queue_count())
            .map(|q| front.free_slots_of(q))
            .max();
        if parts > ring.unwrap_or(0) as usize || parts > MAX_PARTS {
            return Err(Error::Config(format!(
                "a block of {} bytes takes {parts} requests, more than a ring holds",
                w.block_size
            )));
        }
        let now = Instant::now();
        Ok(Runner {
            w,
            blocks,
            gens: &mut model.gens,
            busy: vec![false; blocks],
            inflight: vec![None; pool.len()],
            pool,
            rng: w.seed | 1,
            next_seq: 0,
            writes_since_flush: 0,
            issued: 0,
            pacer: Pacer::new(w.rate, now),
            next_queue: 0,
            last_activity: now,
            report: Report::default(),
            lat: Latencies::default(),
            buf: vec![0u8; w.block_size],
            scratch: Vec::new(),
        })
    }

    /// How long to wait for responses: until the next paced request is due, if there is one.
    /// How long to wait for responses: until the next paced turn (at least a millisecond, so
    /// a turn that fell due since the queue was filled is taken soon without spinning when
    /// every slot is busy), or for a response.
    fn poll_timeout(&self, issuing: bool) -> Duration {
        if issuing && self.pacer.is_limited() {
            let pace = self.pacer.wait(Instant::now());
            pace.max(Duration::from_millis(1)).min(RESPONSE_TIMEOUT)
        } else {
            RESPONSE_TIMEOUT
        }
    }

    /// Fails when requests have waited [`RESPONSE_TIMEOUT`] without any response.
    fn check_stall(&self) -> Result<(), Error> {
        if self.in_flight() > 0 && self.last_activity.elapsed() >= RESPONSE_TIMEOUT {
            return Err(Error::Timeout(format!(
                "responses ({} requests in flight)",
                self.in_flight()
            )));
        }
        Ok(())
    }

    fn in_flight(&self) -> usize {
        // A slot is taken from the pool only to be sent at once, and given back when its
        // response is handled: the taken ones are those in flight.
        self.pool.len().saturating_sub(self.pool.free_count())
    }

    fn random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn pick_block(&mut self) -> Option<usize> {
        for _ in 0..16 {
            let b = match self.w.pattern {
                Pattern::Random => usize::try_from(self.random() % self.blocks as u64).unwrap_or(0),
                Pattern::Sequential => {
                    let b = self.next_seq % self.blocks;
                    self.next_seq += 1;
                    b
                }
            };
            if !self.busy[b] {
                return Some(b);
            }
        }
        None
    }

    fn fill_queue(&mut self, front: &mut Frontend) -> Result<(), Error> {
        if self.in_flight() == 0 {
            self.last_activity = Instant::now();
        }
        while self.w.max_ops.is_none_or(|m| self.issued < m) {
            let Some(slot) = self.pool.take() else { break };
            let parts = self.parts_of_next(slot);
            let Some(queue) = self.pick_queue(front, parts) else {
                self.pool.give_back(slot);
                break;
            };
            if !self.pacer.try_take(Instant::now()) {
                self.pool.give_back(slot);
                break;
            }
            let wants_flush = self
                .w
                .flush_every
                .is_some_and(|n| self.writes_since_flush >= n);
            let reqs = if wants_flush {
                vec![self.flush(slot)]
            } else {
                self.data_request(front, slot)?
            };
            if reqs.is_empty() {
                self.pool.give_back(slot);
                break;
            }
            for req in &reqs {
                front.push_to(queue, req)?;
                // Published one by one, as Linux blkfront does: the backend may start on the
                // first request while the rest are still being written.
                front.kick_queue(queue)?;
            }
            self.next_queue = (queue + 1) % front.queue_count();
            self.issued += 1;
        }
        Ok(())
    }

    /// How many requests the next I/O on `slot` takes, if it is not a flush.
    fn parts_of_next(&self, slot: usize) -> usize {
        (self.pool.get(slot)).map_or(1, |s| s.parts(self.w.block_size))
    }

    /// The next queue in turn with `parts` free ring slots, if any (a split I/O goes to one
    /// queue).
    fn pick_queue(&self, front: &Frontend, parts: usize) -> Option<usize> {
        let n = front.queue_count();
        (0..n)
            .map(|i| (self.next_queue + i) % n)
            .find(|q| front.free_slots_of(*q) as usize >= parts)
    }

    fn flush(&mut self, slot: usize) -> Request {
        self.writes_since_flush = 0;
        self.inflight[slot] = Some(InFlight {
            block: None,
            kind: Kind::Flush,
            start: Instant::now(),
            parts_left: 1,
            answered: 0,
            failed: false,
        });
        let segments = rustbk_ring::Segments::new();
        Request::Rw {
            id: request_id(slot, 0),
            op: RwOp::Flush,
            handle: 0,
            sector: rustbk_ring::Sector(0),
            segments,
        }
    }

    /// The requests of the next read or write on `slot` (none when every block is busy).
    fn data_request(&mut self, front: &Frontend, slot: usize) -> Result<Vec<Request>, Error> {
        let Some(block) = self.pick_block() else {
            return Ok(Vec::new());
        };
        let read = (self.random() % 100) < u64::from(self.w.read_percent);
        let offset = block as u64 * self.w.block_size as u64;
        let kind = if read {
            Kind::Read
        } else {
            Kind::Write {
                generation: self.next_generation(block),
            }
        };
        let s = self
            .pool
            .get(slot)
            .ok_or_else(|| Error::Config("bad slot".into()))?;
        if let Kind::Write { generation } = kind {
            // Without verify the buffer keeps whatever it holds: no work on the guest's side.
            if self.w.verify {
                fill(&mut self.buf, offset, generation);
                front.domain().ram().write(s.addr(), &self.buf)?;
            }
            self.writes_since_flush += 1;
        }
        let rw = if read { RwOp::Read } else { RwOp::Write };
        let len = self.w.block_size;
        let reqs = (0..s.parts(len))
            .map(|part| s.rw_part(part, request_id(slot, part), rw, offset / 512, len))
            .collect::<Result<Vec<_>, _>>()?;
        self.busy[block] = true;
        self.inflight[slot] = Some(InFlight {
            block: Some(block),
            kind,
            start: Instant::now(),
            parts_left: reqs.len(),
            answered: 0,
            failed: false,
        });
        Ok(reqs)
    }

    fn next_generation(&self, block: usize) -> u32 {
        match self.gens.get(block) {
            Some(&g) if g != UNKNOWN => g.wrapping_add(1).max(1),
            _ => 1,
        }
    }

    fn complete(&mut self, front: &Frontend, rsp: &Response) -> Result<(), Error> {
        let slot = usize::try_from(rsp.id >> PART_BITS)
            .ok()
            .filter(|s| *s < self.inflight.len());
        let Some(mut f) = slot.and_then(|s| self.inflight[s].take()) else {
            return Err(Error::Protocol(format!(
                "response for unknown id {}",
                rsp.id
            )));
        };
        let slot = slot.unwrap_or_default();
        let part = rsp.id & ((1 << PART_BITS) - 1);
        let bit = 1u128.checked_shl(u32::try_from(part).unwrap_or(u32::MAX));
        if bit.is_none_or(|b| f.answered & b != 0)
            || part >= (f.parts_left as u64 + f.answered.count_ones() as u64)
        {
            return Err(Error::Protocol(format!(
                "response for id {} (part {part}) answered already or never sent",
                rsp.id
            )));
        }
        f.answered |= bit.unwrap_or(0);
        self.last_activity = Instant::now();
        let expected_op = match f.kind {
            Kind::Read => op::READ,
            Kind::Write { .. } => op::WRITE,
            Kind::Flush => op::FLUSH_DISKCACHE,
        };
        if rsp.op != expected_op {
            return Err(Error::Protocol(format!(
                "response op {} for a request of op {expected_op}",
                rsp.op
            )));
        }
        f.failed |= rsp.status != status::OKAY;
        f.parts_left = f.parts_left.saturating_sub(1);
        if f.parts_left > 0 {
            self.inflight[slot] = Some(f);
            return Ok(());
        }
        self.lat.record(f.start.elapsed());
        let ok = !f.failed;
        if !ok {
            self.report.errors += 1;
        }
        match f.kind {
            Kind::Read => self.read_done(front, slot, f.block.unwrap_or_default(), ok)?,
            Kind::Write { generation } => {
                self.write_done(f.block.unwrap_or_default(), generation, ok)
            }
            Kind::Flush => self.report.flushes += u64::from(ok),
        }
        if let Some(b) = f.block {
            self.busy[b] = false;
        }
        self.pool.give_back(slot);
        Ok(())
    }

    fn read_done(
        &mut self,
        front: &Frontend,
        slot: usize,
        block: usize,
        ok: bool,
    ) -> Result<(), Error> {
        if !ok {
            return Ok(());
        }
        self.report.reads += 1;
        self.report.bytes_read += self.w.block_size as u64;
        let Some(&generation) = self.gens.get(block) else {
            return Ok(());
        };
        if generation == UNKNOWN {
            return Ok(());
        }
        let s = self
            .pool
            .get(slot)
            .ok_or_else(|| Error::Config("bad slot".into()))?;
        front.domain().ram().read(s.addr(), &mut self.buf)?;
        let offset = block as u64 * self.w.block_size as u64;
        if !matches(&self.buf, offset, generation, &mut self.scratch) {
            self.report.mismatches += 1;
            tracing::error!(block, offset, generation, "verify mismatch");
        }
        Ok(())
    }

    fn write_done(&mut self, block: usize, generation: u32, ok: bool) {
        if ok {
            self.report.writes += 1;
            self.report.bytes_written += self.w.block_size as u64;
        }
        if let Some(g) = self.gens.get_mut(block) {
            *g = if ok { generation } else { UNKNOWN };
        }
    }

    fn progress(&self, start: Instant) -> Progress {
        Progress {
            elapsed: start.elapsed(),
            ops: self.report.reads + self.report.writes + self.report.flushes,
            mismatches: self.report.mismatches,
            errors: self.report.errors,
        }
    }
}
