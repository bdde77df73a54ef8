//! Turning validated requests into image I/O, and completions into responses.

use std::borrow::Cow;

use rustbk_formats::{Completion, InFixedSlot, IoBuffers, IoOp};
use rustbk_grant::{Access, Direction, GrantRef, GuestBuf, PageSpan};
use rustbk_ring::{
    BadReason, BadRequest, HeapMemory, PAGE_SIZE, Request, RwOp, SECTOR_SIZE, Segment,
    SharedMemory, SharedMemoryExt, op, status,
};

use super::DataPath;
use super::copy_path::Bounce;
use super::order::{Exclusive, Stage, WriteData};
use super::qos::Deferred;
use super::ring_loop::RingWorker;
use super::slots::{Slot, SlotKind};
use crate::Stats;

impl RingWorker<'_> {
    /// Handles one request fresh off the ring.
    pub(super) fn handle(&mut self, decoded: Result<Request, BadRequest>) {
        self.since = self.clock;
        match decoded {
            Err(bad) => self.refuse(&bad),
            Ok(req) if self.order.exclusive.is_some() || !self.order.held.is_empty() => {
                self.order.held.push_back((req, self.since));
            }
            Ok(req) => self.start(req),
        }
    }

    fn refuse(&mut self, bad: &BadRequest) {
        self.note_refused(bad);
        self.respond(bad.id, bad.op, bad.status);
    }

    /// Starts a request: validates it against the disk and submits its first operation.
    fn start(&mut self, req: Request) {
        self.faults.check(&req);
        // The size may have grown (an online resize) since the last request.
        self.cfg.limits.sectors = self.cfg.sectors.get();
        let segments = match self.segments_of(&req) {
            Ok(segs) => segs,
            Err(bad) => return self.refuse(&bad),
        };
        if let Err(bad) = rustbk_ring::validate(&req, &segments, &self.cfg.limits) {
            return self.refuse(&bad);
        }
        if !self.may_start(&req, &segments) {
            Stats::add(&self.stats.qos_held, 1);
            let segments = segments.into_owned();
            let since = self.since;
            self.deferred = Some(Deferred {
                req,
                segments,
                since,
            });
            return;
        }
        self.dispatch(req, &segments);
    }

    /// Whether the disk's limits let a validated request start now (always while stopping:
    /// a request taken off the ring is answered before the ring goes away).
    fn may_start(&mut self, req: &Request, segments: &[Segment]) -> bool {
        self.stopping || self.qos.admit(req, segments)
    }

    /// Starts the request the limits held back if they allow it now; true if it started.
    pub(super) fn resume(&mut self) -> bool {
        let Some(held) = self.deferred.take() else {
            return false;
        };
        if !self.may_start(&held.req, &held.segments) {
            self.deferred = Some(held);
            return false;
        }
        self.since = held.since;
        self.dispatch(held.req, &held.segments);
        true
    }

    /// Starts the requests held behind a finished exclusive request, in ring order, until
    /// another exclusive request or the limits hold the next one back.
    pub(super) fn start_held(&mut self) {
        while self.order.exclusive.is_none() && self.deferred.is_none() {
            let Some((req, since)) = self.order.held.pop_front() else {
                break;
            };
            self.since = since;
            self.start(req);
        }
    }

    /// Submits the first operation of a validated request the limits let through.
    fn dispatch(&mut self, req: Request, segments: &[Segment]) {
        match req {
            Request::Rw {
                id, op: rw, sector, ..
            }
            | Request::Indirect {
                id, op: rw, sector, ..
            } => self.start_rw(id, rw, sector.0, segments),
            Request::Discard {
                id,
                sector,
                nr_sectors,
                ..
            } => self.start_discard(id, sector.0, nr_sectors),
        }
    }

    /// The data segments of a request: inline, or copied once out of its indirect pages.
    fn segments_of<'r>(&self, req: &'r Request) -> Result<Cow<'r, [Segment]>, BadRequest> {
        match req {
            Request::Rw { segments, .. } => Ok(Cow::Borrowed(segments.as_slice())),
            Request::Discard { .. } => Ok(Cow::Borrowed(&[])),
            Request::Indirect {
                nr_segments,
                indirect_grefs,
                ..
            } => {
                let bad = |reason| BadRequest {
                    id: req.id(),
                    op: req.response_op(),
                    status: status::ERROR,
                    reason,
                };
                let max = self.cfg.limits.max_indirect_segments;
                if u32::from(*nr_segments) > max {
                    return Err(bad(BadReason::IndirectLimit {
                        nr: *nr_segments,
                        max,
                    }));
                }
                let copies = self
                    .copy_indirect_pages(indirect_grefs.as_slice())
                    .map_err(|e| {
                        tracing::trace!(error = %e, "cannot map indirect pages");
                        bad(BadReason::IndirectPages {
                            pages: 0,
                            needed: indirect_grefs.len(),
                        })
                    })?;
                let pages: Vec<&dyn SharedMemory> =
                    copies.iter().map(|p| p as &dyn SharedMemory).collect();
                rustbk_ring::decode_indirect_segments(&pages, *nr_segments)
                    .map(Cow::Owned)
                    .map_err(bad)
            }
        }
    }

    /// Copies the indirect pages into private memory, one copy per page as the decoder reads
    /// them (mapped read-only, unmapped at once; grant-copied on the copy data path).
    fn copy_indirect_pages(
        &self,
        refs: &[GrantRef],
    ) -> Result<Vec<HeapMemory>, rustbk_grant::Error> {
        if self.cfg.data_path == DataPath::Copy {
            return super::copy_path::copy_pages(&*self.guest, refs);
        }
        let mapping = self.guest.map_grants(refs, Access::ReadOnly)?;
        let mut bytes = [0u8; PAGE_SIZE];
        let mut copies = Vec::with_capacity(mapping.pages());
        for page in 0..mapping.pages() {
            mapping.read(page * PAGE_SIZE, &mut bytes)?;
            let copy = HeapMemory::new(1);
            copy.write_bytes(0, &bytes)
                .map_err(|_| rustbk_grant::Error::BadMapSize(mapping.pages()))?;
            copies.push(copy);
        }
        Ok(copies)
    }

    fn start_rw(&mut self, id: u64, rw: RwOp, sector: u64, segments: &[Segment]) {
        let code = rw.code();
        if segments.is_empty() && matches!(rw, RwOp::Flush | RwOp::WriteBarrier) {
            // No data: the guest's sector was never range-checked and is never used.
            return if rw == RwOp::Flush {
                self.order.queue_flush(id, code, self.since)
            } else {
                self.start_exclusive(id, code, 0, segments)
            };
        }
        let Some(offset) = byte_offset(sector) else {
            // Validated requests with data cannot get here; refuse rather than wrap.
            self.note_refused(&BadReason::OutOfRange {
                sector,
                len: 0,
                disk: self.cfg.limits.sectors,
            });
            return self.respond(id, code, status::ERROR);
        };
        if matches!(rw, RwOp::WriteBarrier | RwOp::Flush) {
            return self.start_exclusive(id, code, offset, segments);
        }
        let dir = if rw == RwOp::Read {
            Direction::ToGuest
        } else {
            Direction::FromGuest
        };
        let data = match self.request_data(segments, dir) {
            Ok(data) => data,
            Err(e) => return self.map_failed(id, code, &e),
        };
        let ReqData {
            bufs,
            bytes,
            bounce,
        } = data;
        let (io, kind) = match rw {
            RwOp::Read => (IoOp::Read { offset, bufs }, SlotKind::Read),
            _ => {
                let seq = self.order.write_started();
                (IoOp::Write { offset, bufs }, SlotKind::Write { seq })
            }
        };
        let slot = Slot {
            id,
            op: code,
            bytes,
            kind,
            since: self.since,
        };
        if let (Some(tag), Some(bounce)) = (self.submit(io, slot), bounce) {
            self.hold_bounce(tag, bounce);
        }
    }

    fn start_discard(&mut self, id: u64, sector: u64, nr_sectors: u64) {
        let (Some(offset), Some(len)) = (byte_offset(sector), byte_offset(nr_sectors)) else {
            self.note_refused(&BadReason::OutOfRange {
                sector,
                len: nr_sectors,
                disk: self.cfg.limits.sectors,
            });
            return self.respond(id, op::DISCARD, status::ERROR);
        };
        let seq = self.order.write_started();
        let slot = Slot {
            id,
            op: op::DISCARD,
            bytes: len,
            kind: SlotKind::Discard { seq },
            since: self.since,
        };
        self.submit(IoOp::Discard { offset, len }, slot);
    }

    fn start_exclusive(&mut self, id: u64, code: u8, offset: u64, segments: &[Segment]) {
        let data = if segments.is_empty() {
            None
        } else {
            match self.request_data(segments, Direction::FromGuest) {
                Ok(data) => Some(WriteData {
                    offset,
                    bufs: data.bufs,
                    bytes: data.bytes,
                }),
                Err(e) => return self.map_failed(id, code, &e),
            }
        };
        self.order.exclusive = Some(Exclusive {
            id,
            op: code,
            stage: Stage::Drain,
            data,
            since: self.since,
        });
    }

    /// The memory a request's I/O uses, by the ring's data path.
    fn request_data(
        &mut self,
        segments: &[Segment],
        dir: Direction,
    ) -> Result<ReqData, rustbk_grant::Error> {
        match self.cfg.data_path {
            DataPath::Copy => self.bounce_data(segments, dir == Direction::ToGuest),
            DataPath::Map => self.guest_buf(segments, dir),
        }
    }

    /// Maps the pages of `segments` (persistently when the ring negotiated it) and describes
    /// the bytes they cover; a one-segment request on a registered page names its fixed
    /// buffer.
    fn guest_buf(
        &mut self,
        segments: &[Segment],
        dir: Direction,
    ) -> Result<ReqData, rustbk_grant::Error> {
        if self.persistent_pages(segments) {
            let spans = self.page_scratch.iter().zip(segments).map(|(m, s)| {
                (
                    m,
                    PageSpan {
                        page: 0,
                        ..span_of(s)
                    },
                )
            });
            let buf = GuestBuf::from_parts(spans, dir);
            self.page_scratch.clear();
            let buf = buf?;
            let bytes = buf.len() as u64;
            let bufs: Box<dyn IoBuffers> = match (segments.len(), self.slot_scratch) {
                (1, Some(slot)) => {
                    Stats::add(&self.stats.fixed_buffer_requests, 1);
                    Box::new(InFixedSlot::new(buf, slot))
                }
                _ => Box::new(buf),
            };
            return Ok(ReqData {
                bufs,
                bytes,
                bounce: None,
            });
        }
        let refs: Vec<GrantRef> = segments.iter().map(|s| s.gref).collect();
        let access = if dir == Direction::ToGuest {
            Access::ReadWrite
        } else {
            Access::ReadOnly
        };
        let mapping = self.guest.map_grants(&refs, access)?;
        let spans: Vec<PageSpan> = segments
            .iter()
            .enumerate()
            .map(|(page, s)| PageSpan { page, ..span_of(s) })
            .collect();
        let buf = GuestBuf::new(mapping, &spans, dir)?;
        Ok(ReqData {
            bytes: buf.len() as u64,
            bufs: Box::new(buf),
            bounce: None,
        })
    }

    /// Puts every segment's page from the persistent cache in `page_scratch` (no allocation
    /// once it has grown), and the last one's fixed buffer slot in `slot_scratch`; false, with
    /// the scratch empty, if any page cannot be kept there.
    fn persistent_pages(&mut self, segments: &[Segment]) -> bool {
        self.page_scratch.clear();
        self.slot_scratch = None;
        let Some(mut cache) = self.persistent.take() else {
            return false;
        };
        let mut all = true;
        for s in segments {
            match cache.lookup(&*self.guest, s.gref, self.now) {
                Some(c) => {
                    self.slot_scratch = match (c.fresh, c.slot) {
                        (true, Some(slot)) => self
                            .register_page(&mut cache, s.gref, slot, &c.mapping)
                            .then_some(slot),
                        (_, slot) => slot,
                    };
                    self.page_scratch.push(c.mapping);
                }
                None => {
                    self.page_scratch.clear();
                    all = false;
                    break;
                }
            }
        }
        self.unregister_released(&mut cache);
        self.persistent = Some(cache);
        all
    }

    fn map_failed(&mut self, id: u64, code: u8, e: &rustbk_grant::Error) {
        self.note_refused(e);
        self.respond(id, code, status::ERROR);
    }

    /// Submits one operation; its tag, unless the queue refused it (then it is answered).
    fn submit(&mut self, io: IoOp, slot: Slot) -> Option<u64> {
        let tag = self.slots.insert(slot);
        if let Err(e) = self.queue.submit(io, tag) {
            tracing::warn!(error = %e, "image queue refused an operation");
            self.slots.remove(tag);
            self.finish_slot(slot, status::ERROR);
            return None;
        }
        Some(tag)
    }

    /// Handles one finished queue operation.
    pub(super) fn complete(&mut self, c: Completion) {
        let Some(slot) = self.slots.remove(c.tag) else {
            tracing::error!(tag = c.tag, "completion for an unknown tag");
            return;
        };
        let st = match &c.result {
            Ok(()) => status::OKAY,
            Err(e) if e.errno() == nix::libc::EOPNOTSUPP => status::EOPNOTSUPP,
            Err(e) => {
                tracing::debug!(error = %e, id = slot.id, "I/O failed");
                status::ERROR
            }
        };
        // A read through a bounce buffer is done once its data reached the guest.
        let copied = self.finish_bounce(c.tag, st == status::OKAY);
        let st = if copied || st != status::OKAY {
            st
        } else {
            status::ERROR
        };
        self.finish_slot(slot, st);
    }

    fn finish_slot(&mut self, slot: Slot, st: i16) {
        let ok = st == status::OKAY;
        let s = &self.stats;
        match slot.kind {
            SlotKind::Read if ok => count(&s.reads, &s.bytes_read, slot.bytes),
            SlotKind::Write { .. } if ok => count(&s.writes, &s.bytes_written, slot.bytes),
            SlotKind::Discard { .. } if ok => Stats::add(&s.discards, 1),
            SlotKind::Flush if ok => Stats::add(&s.flushes, 1),
            _ => {}
        }
        match slot.kind {
            SlotKind::Write { seq } | SlotKind::Discard { seq } => self.order.write_done(seq),
            SlotKind::Exclusive => return self.advance_exclusive(st),
            SlotKind::Read | SlotKind::Flush => {}
        }
        self.since = slot.since;
        self.respond(slot.id, slot.op, st);
    }

    /// Starts whatever was waiting: ready flushes, the exclusive request's next step, the
    /// request the limits held back if they allow it now, and held requests once the exclusive
    /// one is answered.
    pub(super) fn release_waiters(&mut self) {
        while let Some(f) = self.order.pop_ready_flush() {
            self.submit(
                IoOp::Flush,
                Slot {
                    id: f.id,
                    op: f.op,
                    bytes: 0,
                    kind: SlotKind::Flush,
                    since: f.since,
                },
            );
        }
        let drained = self.slots.is_empty() && self.order.no_waiting_flushes();
        if let Some(ex) = self.order.exclusive.as_mut() {
            if ex.stage == Stage::Drain && drained {
                ex.stage = Stage::PreFlush;
                let slot = Slot {
                    id: ex.id,
                    op: ex.op,
                    bytes: 0,
                    kind: SlotKind::Exclusive,
                    since: ex.since,
                };
                self.submit(IoOp::Flush, slot);
            }
        }
        self.resume();
        self.start_held();
    }

    fn advance_exclusive(&mut self, st: i16) {
        let Some(ex) = self.order.exclusive.as_mut() else {
            return;
        };
        let (id, code, since) = (ex.id, ex.op, ex.since);
        if st == status::OKAY && ex.stage == Stage::PreFlush {
            if let Some(data) = ex.data.take() {
                ex.stage = Stage::Write;
                let slot = Slot {
                    id,
                    op: code,
                    bytes: data.bytes,
                    kind: SlotKind::Exclusive,
                    since,
                };
                let write = IoOp::Write {
                    offset: data.offset,
                    bufs: data.bufs,
                };
                self.submit(write, slot);
                return;
            }
        }
        self.order.exclusive = None;
        if st == status::OKAY {
            Stats::add(&self.stats.flushes, 1);
        }
        self.since = since;
        self.respond(id, code, st);
    }
}

/// A guest's sector number (or count) in bytes; `None` if it does not fit in 64 bits.
fn byte_offset(sectors: u64) -> Option<u64> {
    sectors.checked_mul(SECTOR_SIZE)
}

/// The memory of one request's data as the image queue sees it.
pub(super) struct ReqData {
    /// What the I/O reads into or writes from.
    pub bufs: Box<dyn IoBuffers>,
    /// Its length.
    pub bytes: u64,
    /// The bounce buffer to keep until the I/O completes (grant-copy data path).
    pub bounce: Option<Bounce>,
}

/// The bytes of a (validated) segment inside its page.
pub(super) fn span_of(s: &Segment) -> PageSpan {
    const SECTOR: usize = 512;
    let sector = SECTOR;
    let len = usize::from(s.last_sect.saturating_sub(s.first_sect)) + 1;
    PageSpan {
        page: 0,
        offset: usize::from(s.first_sect) * sector,
        len: len * sector,
    }
}

fn count(ops: &std::sync::atomic::AtomicU64, bytes: &std::sync::atomic::AtomicU64, n: u64) {
    Stats::add(ops, 1);
    Stats::add(bytes, n);
}
