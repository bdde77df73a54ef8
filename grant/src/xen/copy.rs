//! Grant copy through `IOCTL_GNTDEV_GRANT_COPY`.

use std::os::fd::{AsFd, BorrowedFd};

use super::XenPlatform;
use crate::sys::{self, CopyOp, LocalBytes};
use crate::{CopyBuf, CopySegment, DomId, Error};

impl XenPlatform {
    /// Copies every segment between guest `domid`'s grants and the private buffers, in one
    /// ioctl; fails on the first segment Xen refused (earlier ones may have been copied).
    pub fn grant_copy(&self, domid: DomId, segments: &mut [CopySegment<'_>]) -> Result<(), Error> {
        grant_copy(self.gntdev.as_fd(), domid, segments)
    }
}

/// One `IOCTL_GNTDEV_GRANT_COPY` for every segment; the first refused segment's status.
pub(super) fn grant_copy(
    gntdev: BorrowedFd<'_>,
    domid: DomId,
    segments: &mut [CopySegment<'_>],
) -> Result<(), Error> {
    let mut ops = segments
        .iter_mut()
        .map(|s| op(domid, s))
        .collect::<Result<Vec<_>, Error>>()?;
    let statuses =
        sys::gntdev_grant_copy(gntdev, &mut ops).map_err(Error::sys("gntdev grant copy"))?;
    match statuses.iter().position(|s| *s != 0) {
        Some(index) => Err(Error::GrantCopy {
            index,
            status: statuses[index],
        }),
        None => Ok(()),
    }
}

/// Checks one segment stays inside its page and turns it into a raw copy operation.
fn op<'a>(domid: DomId, seg: &'a mut CopySegment<'_>) -> Result<CopyOp<'a>, Error> {
    seg.check_bounds()?;
    let local = match &mut seg.buf {
        CopyBuf::FromGuest(b) => LocalBytes::Into(b),
        CopyBuf::ToGuest(b) => LocalBytes::From(b),
    };
    Ok(CopyOp {
        domid: domid.0,
        gref: seg.gref.0,
        offset: seg.offset,
        local,
    })
}
