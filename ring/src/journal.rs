//! The request journal: a copy of every request the backend consumed and has not yet answered
//! where the frontend can see it, kept in memory that outlives the backend process, so that a
//! restarted backend serves exactly those requests again: none twice, none lost.
//!
//! # Why
//!
//! Requests and responses share the ring slots, and a backend answers in the order requests
//! complete, not the order it consumed them. After a SIGKILL, the published `rsp_prod` tells
//! how many responses the frontend can see, not which requests they answered: with requests
//! 10, 11 and 12 consumed and only 12 answered, `rsp_prod` is 11 while 10 and 11 are still
//! waiting. The ring slots of unanswered requests may hold responses by then. So the journal
//! records, for each consumed request, whether and where its response went.
//!
//! # Layout
//!
//! One entry per ring slot (at most that many requests can be unanswered), [`SLOT_BYTES`]
//! each, three parts:
//! * the tag, one aligned `u64`: [`TAG_MAGIC`] in the high half and the request's free-running
//!   ring index in the low half; zero for a free entry;
//! * the answer, one aligned `u64`: [`ANSWER_MAGIC`] in the high half and the ring index of the
//!   response in the low half; zero while the request is unanswered;
//! * the raw request entry (up to [`MAX_REQUEST_SIZE`] bytes).
//!
//! # Order of the stores
//!
//! * **Consume** index `i` into a free entry: the request bytes and a zero answer, then (after a
//!   release fence) the tag.
//! * **Answer** at response index `x`: the answer, then (after a release fence) the response in
//!   the ring, published later with `rsp_prod`.
//! * **Publish**: after `rsp_prod` is stored, every entry answered below it is freed (tag zero).
//!
//! # Recovery, at the published `rsp_prod` `P`
//!
//! An entry with a tag whose answer lies below `P` was answered where the frontend can see
//! it: it is freed. Every other tagged entry is unanswered as far as the frontend knows: its
//! answer is cleared (a stale answer at or past `P` must not look published once the new
//! backend publishes past it) and it is served again, in ring order. Each published response
//! answered one distinct consumed request, so the old backend had consumed `P + n` requests,
//! `n` the entries served again: the new backend reads the ring from there.
//!
//! Why each kill point is safe:
//! * **Inside a consume** (tag not stored): the entry looks free and the count above leaves
//!   index `i` out, so it is read from the ring again, where it is intact: responses only go
//!   to slots below the consumer index, which had not passed `i`.
//! * **Between answer and publication**: the answer is at or past `P`, so the request is
//!   served again; the frontend never saw the first response.
//! * **Between publication and freeing**: the answer is below `P`, so it is freed, not served
//!   twice.
//!
//! A fresh connection starts with a zeroed journal; a zero tag never carries the magic. Entries
//! are decoded and validated exactly like entries from the ring. The journal memory belongs to
//! the backend's domain: the frontend cannot reach it. A frontend that rewrites `rsp_prod`
//! before a restart can only get its own requests served twice or not at all.

use std::collections::VecDeque;
use std::sync::atomic::{Ordering, fence};

use foldhash::{HashMap, HashMapExt};

use crate::abi::{Abi, MAX_REQUEST_SIZE, ring_entries};
use crate::error::Error;
use crate::shared::{SharedMemory, SharedMemoryExt};
use crate::sring::check_memory;

/// Bytes of the tag, then of the answer, at the start of an entry.
const TAG_BYTES: usize = 8;
const ANSWER_BYTES: usize = 8;
const HEAD_BYTES: usize = TAG_BYTES + ANSWER_BYTES;
/// Bytes per journal entry: the tag, the answer, then room for the largest request entry.
pub const SLOT_BYTES: usize = HEAD_BYTES + MAX_REQUEST_SIZE;
/// The high half of every valid tag ("RJNL"); a zeroed journal has no valid tag.
pub const TAG_MAGIC: u32 = 0x524a_4e4c;
/// The high half of every recorded answer ("RANS").
pub const ANSWER_MAGIC: u32 = 0x5241_4e53;

const _: () = assert!(SLOT_BYTES % 8 == 0, "tags must stay 8-byte aligned");

/// The tag of the request with free-running ring index `idx`.
fn tag(idx: u32) -> u64 {
    (u64::from(TAG_MAGIC) << 32) | u64::from(idx)
}

/// The answer naming response index `x`.
fn answer(x: u32) -> u64 {
    (u64::from(ANSWER_MAGIC) << 32) | u64::from(x)
}

/// The index carried by `word` if its high half is `magic`.
fn index_of(word: u64, magic: u32) -> Option<u32> {
    let high = u32::try_from(word >> 32).ok()?;
    let low = u32::try_from(word & u64::from(u32::MAX)).ok()?;
    (high == magic).then_some(low)
}

/// Whether ring index `x` lies before `published` (indices wrap; the window is far below 2^31).
fn before(x: u32, published: u32) -> bool {
    (published.wrapping_sub(x) as i32) > 0
}

/// Bytes of memory the journal of a ring of `order` for `abi` needs: one entry per slot.
pub fn journal_bytes(abi: Abi, order: u32) -> usize {
    (ring_entries(abi, order) as usize).saturating_mul(SLOT_BYTES)
}

/// A request the previous backend consumed and the frontend still waits for.
pub(crate) struct Replay {
    /// Its journal entry.
    pub slot: u32,
    /// Its raw bytes.
    pub bytes: [u8; MAX_REQUEST_SIZE],
}

/// The journal of the request entries a backend consumed from one ring.
pub(crate) struct Journal {
    mem: Box<dyn SharedMemory>,
    /// Entries not holding a request.
    free: Vec<u32>,
    /// The entry of each unanswered request, by request id.
    by_id: HashMap<u64, u32>,
    /// Unanswered requests whose id another unanswered request already has (hostile or buggy
    /// frontends only).
    same_id: Vec<(u64, u32)>,
    /// Entries answered since the last publication.
    answered: Vec<u32>,
}

impl Journal {
    /// The journal of a ring of `slots` entries in `mem` (zeroed for a fresh ring), and the
    /// requests a previous backend left unanswered with `published` responses visible, in ring
    /// order.
    pub(crate) fn recover(
        mem: Box<dyn SharedMemory>,
        slots: u32,
        published: u32,
    ) -> Result<(Journal, VecDeque<Replay>), Error> {
        check_memory(&*mem, (slots as usize).saturating_mul(SLOT_BYTES))?;
        let mut j = Journal {
            mem,
            free: Vec::with_capacity(slots as usize),
            by_id: HashMap::with_capacity(slots as usize),
            same_id: Vec::new(),
            answered: Vec::with_capacity(slots as usize),
        };
        let mut pending: Vec<(u32, Replay)> = Vec::new();
        for slot in (0..slots).rev() {
            match j.recover_entry(slot, published) {
                Some((idx, replay)) => pending.push((idx, replay)),
                None => j.free.push(slot),
            }
        }
        // Unanswered requests lie within a ring's length of `published`, on either side.
        let oldest = published.wrapping_sub(slots);
        pending.sort_by_key(|(idx, _)| idx.wrapping_sub(oldest));
        Ok((j, pending.into_iter().map(|(_, r)| r).collect()))
    }

    /// Frees entry `slot` if it is free or was answered before `published`; otherwise clears
    /// its answer and returns its request to be served again.
    fn recover_entry(&self, slot: u32, published: u32) -> Option<(u32, Replay)> {
        let off = offset(slot);
        let idx = index_of(self.mem.load_u64(off).ok()?, TAG_MAGIC)?;
        fence(Ordering::Acquire);
        let answered = self.mem.load_u64(off + TAG_BYTES).ok();
        if answered
            .and_then(|a| index_of(a, ANSWER_MAGIC))
            .is_some_and(|x| before(x, published))
        {
            self.store(off, 0);
            return None;
        }
        self.store(off + TAG_BYTES, 0);
        let mut bytes = [0u8; MAX_REQUEST_SIZE];
        self.mem.read_bytes(off + HEAD_BYTES, &mut bytes).ok()?;
        Some((idx, Replay { slot, bytes }))
    }

    /// Whether an entry is free for another request.
    pub(crate) fn has_room(&self) -> bool {
        !self.free.is_empty()
    }

    /// Free entries.
    pub(crate) fn room(&self) -> u32 {
        u32::try_from(self.free.len()).unwrap_or(u32::MAX)
    }

    /// Records `entry` (at most [`MAX_REQUEST_SIZE`] bytes), consumed at ring index `idx`, in a
    /// free entry and returns it; `None` if none is free (the caller checked [`Self::has_room`]).
    pub(crate) fn record(&mut self, idx: u32, entry: &[u8]) -> Option<u32> {
        let slot = self.free.pop()?;
        let off = offset(slot);
        let n = entry.len().min(MAX_REQUEST_SIZE);
        let written = self
            .mem
            .write_bytes(off + HEAD_BYTES, &entry[..n])
            .and_then(|()| self.mem.store_u64(off + TAG_BYTES, 0))
            .and_then(|()| {
                // The tag must never be seen before the bytes it vouches for.
                fence(Ordering::Release);
                self.mem.store_u64(off, tag(idx))
            });
        if let Err(e) = written {
            tracing::error!(error = %e, "request journal access failed after validation");
        }
        Some(slot)
    }

    /// Notes that the request in entry `slot` has id `id` and waits for its answer.
    pub(crate) fn track(&mut self, id: u64, slot: u32) {
        if let Some(other) = self.by_id.insert(id, slot) {
            self.same_id.push((id, other));
        }
    }

    /// Records that the request with id `id` is answered at response index `x`, before the
    /// response is written to the ring.
    pub(crate) fn answer(&mut self, id: u64, x: u32) {
        let Some(slot) = self.take_id(id) else {
            tracing::warn!(id, "response for no unanswered request in the journal");
            return;
        };
        self.store(offset(slot) + TAG_BYTES, answer(x));
        // The answer is stored before the response it vouches for can be published.
        fence(Ordering::Release);
        self.answered.push(slot);
    }

    fn take_id(&mut self, id: u64) -> Option<u32> {
        let slot = self.by_id.remove(&id)?;
        if let Some(i) = self.same_id.iter().position(|(other, _)| *other == id) {
            let (_, next) = self.same_id.swap_remove(i);
            self.by_id.insert(id, next);
        }
        Some(slot)
    }

    /// Frees the entries answered so far, once their responses are published.
    pub(crate) fn published(&mut self) {
        // Freed only after `rsp_prod` is stored: a freed entry must mean a published answer.
        fence(Ordering::Release);
        while let Some(slot) = self.answered.pop() {
            self.store(offset(slot), 0);
            self.free.push(slot);
        }
    }

    fn store(&self, off: usize, value: u64) {
        if let Err(e) = self.mem.store_u64(off, value) {
            tracing::error!(error = %e, "request journal access failed after validation");
        }
    }
}

/// Offset of entry `slot`.
fn offset(slot: u32) -> usize {
    slot as usize * SLOT_BYTES
}

#[cfg(test)]
#[path = "journal_tests.rs"]
mod tests;
