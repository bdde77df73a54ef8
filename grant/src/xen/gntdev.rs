//! Grant mapping through `/dev/xen/gntdev`.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use rustbk_ring::{PAGE_SIZE, SharedMemory};

use super::{MAX_MAP_PAGES, XenPlatform, evtchn::XenEventChannel};
use crate::sys::{self, Region};
use crate::{
    Access, CopySegment, DomId, Error, EventChannel, GrantMapping, GrantRef, GuestHandle, Port,
    RingPages,
};

/// One guest reached through the platform's gntdev descriptor.
pub(super) struct XenGuest {
    domid: DomId,
    gntdev: Arc<OwnedFd>,
    evtchn: Arc<PathBuf>,
}

impl XenGuest {
    pub(super) fn new(domid: DomId, gntdev: Arc<OwnedFd>, evtchn: Arc<PathBuf>) -> Self {
        XenGuest {
            domid,
            gntdev,
            evtchn,
        }
    }
}

impl GuestHandle for XenGuest {
    fn domid(&self) -> DomId {
        self.domid
    }

    fn map_grants(&self, refs: &[GrantRef], access: Access) -> Result<GrantMapping, Error> {
        if refs.is_empty() || refs.len() > MAX_MAP_PAGES {
            return Err(Error::BadMapSize(refs.len()));
        }
        let raw: Vec<u32> = refs.iter().map(|r| r.0).collect();
        let index = sys::gntdev_map(self.gntdev.as_fd(), self.domid.0, &raw)
            .map_err(Error::sys("gntdev map grant refs"))?;
        // Built before the mmap so that a failed mmap still releases the gntdev range.
        let range = GntdevRange {
            gntdev: Arc::clone(&self.gntdev),
            index,
            count: u32::try_from(refs.len()).map_err(|_| Error::BadMapSize(refs.len()))?,
        };
        let len = refs.len() * PAGE_SIZE;
        // gntdev maps the grants read-only exactly when the mapping lacks PROT_WRITE.
        let writable = access == Access::ReadWrite;
        let region = Region::map_shared(self.gntdev.as_fd(), index, len, writable)?;
        tracing::trace!(
            domid = self.domid.0,
            pages = refs.len(),
            ?access,
            "mapped grants"
        );
        Ok(GrantMapping::new(region, access, Some(Box::new(range))))
    }

    fn copy_grants(&self, segments: &mut [CopySegment<'_>]) -> Result<(), Error> {
        super::copy::grant_copy(self.gntdev.as_fd(), self.domid, segments)
    }

    fn bind_event_channel(&self, remote: Port) -> Result<Box<dyn EventChannel>, Error> {
        Ok(Box::new(XenEventChannel::bind(
            &self.evtchn,
            self.domid,
            remote,
        )?))
    }
}

/// A gntdev range that the mapping's pages came from; released after they are unmapped.
struct GntdevRange {
    gntdev: Arc<OwnedFd>,
    index: u64,
    count: u32,
}

impl Drop for GntdevRange {
    fn drop(&mut self) {
        if let Err(e) = sys::gntdev_unmap(self.gntdev.as_fd(), self.index, self.count) {
            tracing::error!(error = %e, index = self.index, count = self.count, "gntdev unmap failed");
        }
    }
}

/// What gntdev should do for the guest if this process unmaps the ring (or dies).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnmapNotify {
    /// Zero this byte offset of the ring mapping.
    pub clear_byte: Option<usize>,
    /// Signal this (locally bound) event channel port.
    pub event: Option<Port>,
}

impl XenPlatform {
    /// Asks gntdev to carry out `notify` when `ring` (mapped by this platform) is unmapped, even
    /// if the process is killed.
    pub fn set_unmap_notify(&self, ring: &RingPages, notify: UnmapNotify) -> Result<(), Error> {
        let vaddr = ring.as_ptr() as u64;
        let (offset, count) = sys::gntdev_offset_for_vaddr(self.gntdev.as_fd(), vaddr)
            .map_err(Error::sys("gntdev get offset for vaddr"))?;
        let size = usize::try_from(count).map_or(0, |c| c.saturating_mul(PAGE_SIZE));
        let byte = notify.clear_byte.unwrap_or(0);
        if byte >= size {
            return Err(Error::OutOfBounds {
                offset: byte,
                len: 1,
                size,
            });
        }
        let mut action = 0;
        if notify.clear_byte.is_some() {
            action |= sys::UNMAP_NOTIFY_CLEAR_BYTE;
        }
        if notify.event.is_some() {
            action |= sys::UNMAP_NOTIFY_SEND_EVENT;
        }
        let port = notify.event.map_or(0, |p| p.0);
        // `byte < size` bounds it by the mapping size, far below u64::MAX.
        let index = offset + byte as u64;
        sys::gntdev_set_unmap_notify(self.gntdev.as_fd(), index, action, port)
            .map_err(Error::sys("gntdev set unmap notify"))
    }
}
