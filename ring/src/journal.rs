//! The request journal: a copy of every request entry the backend consumed, kept in memory that
//! outlives the backend process, so that a restarted backend can serve those requests again.
//!
//! # Why
//!
//! Requests and responses share the ring slots. A backend writes a response at `rsp_prod_pvt`,
//! into a slot whose request it consumed earlier, and publishes it later. A backend killed in
//! between leaves slots after the published `rsp_prod` that hold responses, while the requests
//! they held are still unanswered as far as the frontend knows. A new backend that attaches at
//! `rsp_prod` must serve those requests again, but the ring no longer holds them.
//!
//! # Layout
//!
//! One slot per ring slot, [`SLOT_BYTES`] each: an 8-byte tag, then the raw request entry (up to
//! [`MAX_REQUEST_SIZE`] bytes). The entry with free-running index `i` lives in slot
//! `i % slots`. The tag is one aligned `u64`: [`TAG_MAGIC`] in the high half, `i` in the low
//! half. Recording copies the entry bytes, then (after a release fence) stores the tag in one
//! store; looking up loads the tag, then (after an acquire fence) copies the bytes.
//!
//! [`BackRing`](crate::BackRing) records each entry it copies out of the ring before returning
//! it, so before any response can be written into that slot (the response for the `j`-th slot
//! is only written once `req_cons > j`). A ring attached with a journal replays: for each index
//! it consumes, it takes the entry from the journal while the tag there is exactly
//! `(TAG_MAGIC, i)`, and from the ring from the first index whose tag differs on.
//!
//! # Why each case is safe
//!
//! * **Consumed and tagged**: the dead backend copied entry `i` and its tag was stored after the
//!   bytes, so the journal holds the whole entry it saw; the ring slot may hold a response now.
//! * **Torn (bytes written, tag not)**: the backend died inside the recording of `i`, so its
//!   `req_cons` was `i` and every response it wrote went to a slot below `i`: ring slot `i`
//!   still holds the request, and the old tag (zero, or an earlier lap's index) sends the
//!   lookup to the ring.
//! * **Stale tag of an earlier lap**: slot `i % slots` holds index `i - k * slots` for some
//!   `k >= 1`. The low half is the full 32-bit index, so it differs from `i` unless
//!   `k * slots` is a multiple of 2^32; but every index is recorded in turn, so a slot is
//!   rewritten every lap and its tag is at most one lap behind. No stale tag equals `i`.
//! * **Not consumed by the dead backend**: its tag is an earlier lap's (above), so the entry
//!   comes from the ring, where the frontend wrote it and no response overwrote it (responses
//!   go only to consumed slots). Every later index is not consumed either, which is why the
//!   replay ends at the first index that is not in the journal.
//! * **Fresh connection**: the journal starts zeroed, and a zero tag never carries the magic.
//! * **Several restarts in a row**: a replayed entry is not written again; the slot keeps the
//!   tag and bytes of whoever consumed it first, which are the same request.
//!
//! Entries from the journal are decoded and validated exactly like entries from the ring. The
//! journal memory belongs to the backend's domain: the frontend cannot reach it.

use std::sync::atomic::{Ordering, fence};

use crate::abi::{Abi, MAX_REQUEST_SIZE, ring_entries};
use crate::error::Error;
use crate::shared::{SharedMemory, SharedMemoryExt};
use crate::sring::check_memory;

/// Bytes per journal slot: the tag, then room for the largest request entry.
pub const SLOT_BYTES: usize = TAG_BYTES + MAX_REQUEST_SIZE;
/// Bytes of the tag at the start of a slot.
const TAG_BYTES: usize = 8;
/// The high half of every valid tag ("RJNL"); a zeroed journal has no valid tag.
pub const TAG_MAGIC: u32 = 0x524a_4e4c;

const _: () = assert!(SLOT_BYTES % 8 == 0, "tags must stay 8-byte aligned");

/// The tag of the entry with free-running index `idx`.
fn tag(idx: u32) -> u64 {
    (u64::from(TAG_MAGIC) << 32) | u64::from(idx)
}

/// Bytes of memory the journal of a ring of `order` for `abi` needs: one slot per entry.
pub fn journal_bytes(abi: Abi, order: u32) -> usize {
    (ring_entries(abi, order) as usize).saturating_mul(SLOT_BYTES)
}

/// A journal of the request entries a backend consumed from one ring.
pub(crate) struct Journal {
    mem: Box<dyn SharedMemory>,
    slots: u32,
}

impl Journal {
    /// A journal of `slots` slots (the ring's entry count, a power of two) in `mem`, which
    /// holds the records of an earlier backend of the same ring, or zeroes.
    pub(crate) fn new(mem: Box<dyn SharedMemory>, slots: u32) -> Result<Journal, Error> {
        check_memory(&*mem, (slots as usize).saturating_mul(SLOT_BYTES))?;
        Ok(Journal { mem, slots })
    }

    /// Offset of the slot of free-running index `idx`.
    fn slot_offset(&self, idx: u32) -> usize {
        (idx & (self.slots - 1)) as usize * SLOT_BYTES
    }

    /// Records `entry` (at most [`MAX_REQUEST_SIZE`] bytes) as index `idx`: the bytes first,
    /// then the tag in one aligned store.
    pub(crate) fn record(&self, idx: u32, entry: &[u8]) {
        let off = self.slot_offset(idx);
        let n = entry.len().min(MAX_REQUEST_SIZE);
        let written = self
            .mem
            .write_bytes(off + TAG_BYTES, &entry[..n])
            .and_then(|()| {
                // The tag must never be seen before the bytes it vouches for.
                fence(Ordering::Release);
                self.mem.store_u64(off, tag(idx))
            });
        if let Err(e) = written {
            tracing::error!(error = %e, "request journal access failed after validation");
        }
    }

    /// Copies the recorded entry of index `idx` into `entry` and returns true, or returns false
    /// (leaving `entry` alone) if the slot does not hold index `idx`.
    pub(crate) fn recall(&self, idx: u32, entry: &mut [u8]) -> bool {
        let off = self.slot_offset(idx);
        if self.mem.load_u64(off) != Ok(tag(idx)) {
            return false;
        }
        // The bytes are read only after the tag that vouches for them.
        fence(Ordering::Acquire);
        let n = entry.len().min(MAX_REQUEST_SIZE);
        self.mem
            .read_bytes(off + TAG_BYTES, &mut entry[..n])
            .is_ok()
    }
}

#[cfg(test)]
#[path = "journal_tests.rs"]
mod tests;
