//! The shared ring page(s) as both ends see them: header indices and entries.

use crate::abi::{Abi, SRING_RING, ring_bytes, ring_entries};
use crate::error::Error;
use crate::shared::{SharedMemory, SharedMemoryExt};
use crate::types::MAX_RING_PAGE_ORDER;

/// A checked view of the shared ring memory.
///
/// The constructor verifies size and alignment, so header and entry accesses
/// cannot fail afterwards (the `SharedMemory` contract fixes pointer and length).
pub(crate) struct Sring<M: SharedMemory> {
    mem: M,
    abi: Abi,
    size: u32,
}

/// Logs an access failure that the constructor's checks rule out.
fn impossible(e: &Error) {
    tracing::error!(error = %e, "shared ring access failed after validation");
}

impl<M: SharedMemory> Sring<M> {
    /// Checks that `mem` can hold a ring of `order` for `abi`.
    pub(crate) fn new(mem: M, abi: Abi, order: u32) -> Result<Self, Error> {
        if order > MAX_RING_PAGE_ORDER {
            return Err(Error::OrderTooLarge {
                order,
                max: MAX_RING_PAGE_ORDER,
            });
        }
        let need = ring_bytes(order).ok_or(Error::OrderTooLarge {
            order,
            max: MAX_RING_PAGE_ORDER,
        })?;
        check_memory(&mem, need)?;
        let size = ring_entries(abi, order);
        Ok(Sring { mem, abi, size })
    }

    pub(crate) fn mem(&self) -> &M {
        &self.mem
    }

    pub(crate) fn into_mem(self) -> M {
        self.mem
    }

    pub(crate) fn abi(&self) -> Abi {
        self.abi
    }

    /// Number of entries (a power of two).
    pub(crate) fn size(&self) -> u32 {
        self.size
    }

    /// Relaxed load of a header index.
    pub(crate) fn load(&self, offset: usize) -> u32 {
        self.mem.load_u32(offset).unwrap_or_else(|e| {
            impossible(&e);
            0
        })
    }

    /// Relaxed store of a header index.
    pub(crate) fn store(&self, offset: usize, value: u32) {
        if let Err(e) = self.mem.store_u32(offset, value) {
            impossible(&e);
        }
    }

    /// Byte offset of the entry for free-running index `idx`.
    fn entry_offset(&self, idx: u32) -> usize {
        let slot = (idx & (self.size - 1)) as usize;
        SRING_RING + slot * self.abi.entry_size()
    }

    /// Copies the start of entry `idx` into `buf` (at most one entry).
    pub(crate) fn read_entry(&self, idx: u32, buf: &mut [u8]) {
        let n = buf.len().min(self.abi.entry_size());
        if let Err(e) = self.mem.read_bytes(self.entry_offset(idx), &mut buf[..n]) {
            impossible(&e);
        }
    }

    /// Writes `bytes` at the start of entry `idx` (at most one entry).
    pub(crate) fn write_entry(&self, idx: u32, bytes: &[u8]) {
        let n = bytes.len().min(self.abi.entry_size());
        if let Err(e) = self.mem.write_bytes(self.entry_offset(idx), &bytes[..n]) {
            impossible(&e);
        }
    }

    /// Zeroes header bytes `from..to`.
    pub(crate) fn zero(&self, from: usize, to: usize) {
        if let Err(e) = self.mem.fill_bytes(from, to.saturating_sub(from), 0) {
            impossible(&e);
        }
    }
}

/// Checks that `mem` holds at least `need` bytes and is 8-byte aligned (for its 64-bit
/// atomics), as a ring or a journal needs.
pub(crate) fn check_memory(mem: &dyn SharedMemory, need: usize) -> Result<(), Error> {
    if mem.len() < need {
        return Err(Error::MemoryTooSmall {
            len: mem.len(),
            need,
        });
    }
    let addr = mem.as_ptr().addr();
    if addr % 8 != 0 {
        return Err(Error::MemoryMisaligned { addr });
    }
    Ok(())
}

/// Whether a producer moving from `old` to `new` passed the other side's
/// `event` index, i.e. `old < event <= new` in wrapping arithmetic (ring.h's
/// notify test).
pub(crate) fn event_crossed(old: u32, new: u32, event: u32) -> bool {
    new.wrapping_sub(event) < new.wrapping_sub(old)
}
