//! Grant copy: the hypervisor copies between a guest's granted page and the backend's private
//! memory, with no mapping at all (Xen's `GNTTABOP_copy`, what tapdisk and QEMU's qdisk use).
//!
//! Both platforms check every segment against the guest's grant table as Xen does: the grant
//! must be in use and made out to the backend, and a read-only grant may only be copied from.

use rustbk_ring::PAGE_SIZE;

use crate::{Access, Error, GrantRef};

/// Private memory at one end of a grant copy.
#[derive(Debug)]
pub enum CopyBuf<'a> {
    /// Filled with bytes read from the guest's page.
    FromGuest(&'a mut [u8]),
    /// Written into the guest's page.
    ToGuest(&'a [u8]),
}

impl CopyBuf<'_> {
    /// Number of bytes to copy.
    pub fn len(&self) -> usize {
        match self {
            CopyBuf::FromGuest(b) => b.len(),
            CopyBuf::ToGuest(b) => b.len(),
        }
    }

    /// True when there is nothing to copy (refused by the platforms).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The grant access the copy needs: writing the guest's page needs a writable grant.
    pub fn access(&self) -> Access {
        match self {
            CopyBuf::FromGuest(_) => Access::ReadOnly,
            CopyBuf::ToGuest(_) => Access::ReadWrite,
        }
    }
}

/// One copy between the granted page `gref` (from byte `offset`) and a private buffer.
#[derive(Debug)]
pub struct CopySegment<'a> {
    /// The guest's grant.
    pub gref: GrantRef,
    /// Byte offset inside the granted page; `offset + buf.len() <= PAGE_SIZE`.
    pub offset: u16,
    /// The private side, which also gives the length and the direction.
    pub buf: CopyBuf<'a>,
}

impl CopySegment<'_> {
    /// Checks that the segment is not empty and stays inside its page.
    pub(crate) fn check_bounds(&self) -> Result<(), Error> {
        let (offset, len) = (usize::from(self.offset), self.buf.len());
        if len == 0 || offset.checked_add(len).is_none_or(|end| end > PAGE_SIZE) {
            return Err(Error::OutOfBounds {
                offset,
                len,
                size: PAGE_SIZE,
            });
        }
        Ok(())
    }
}
