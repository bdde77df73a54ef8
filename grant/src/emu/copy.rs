//! Grant copy on the emulated platform: the emulated hypervisor's `GNTTABOP_copy`.
//!
//! Each segment goes through the grant table as under Xen: the entry is checked (in use, made
//! out to the backend, writable when the guest's page is written, frame inside RAM), marked
//! `GTF_reading`/`GTF_writing` for the duration of the copy (so the guest cannot end the grant
//! meanwhile), checked again, and only then are the bytes moved, with `pread`/`pwrite` on the
//! RAM memfd at that frame: no mapping is made.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use nix::sys::uio::{pread, pwrite};
use rustbk_ring::PAGE_SIZE;

use super::in_use::InUse;
use super::table::TableReader;
use crate::{CopyBuf, CopySegment, Error};

/// What one copy needs of the attached guest.
pub(super) struct Copier<'a> {
    pub reader: TableReader<'a>,
    pub in_use: &'a Arc<InUse>,
    pub ram_fd: &'a OwnedFd,
}

impl Copier<'_> {
    /// Copies every segment in order; stops at the first one the grant table refuses.
    pub fn copy(&self, segments: &mut [CopySegment<'_>]) -> Result<(), Error> {
        segments.iter_mut().try_for_each(|s| self.copy_one(s))
    }

    fn copy_one(&self, seg: &mut CopySegment<'_>) -> Result<(), Error> {
        seg.check_bounds()?;
        let access = seg.buf.access();
        let grant = self.reader.check(seg.gref, access)?;
        let _guard = self.in_use.acquire(&[seg.gref], access);
        // As for a map: the entry is marked first, then checked again, so a grant ended or
        // moved in between is refused and one still granted cannot be ended until the guard
        // drops.
        if self.reader.check(seg.gref, access)? != grant {
            return Err(Error::GrantInvalid(seg.gref));
        }
        let at = u64::from(grant.frame) * PAGE_SIZE as u64 + u64::from(seg.offset);
        let at = libc::off_t::try_from(at).map_err(|_| Error::FrameOutOfRange {
            gref: seg.gref,
            frame: grant.frame,
        })?;
        let want = seg.buf.len();
        let done = match &mut seg.buf {
            CopyBuf::FromGuest(b) => pread(self.ram_fd, b, at),
            CopyBuf::ToGuest(b) => pwrite(self.ram_fd, b, at),
        }
        .map_err(Error::sys("emulated grant copy"))?;
        if done != want {
            return Err(Error::Protocol(format!(
                "grant copy moved {done} of {want} bytes"
            )));
        }
        Ok(())
    }
}
