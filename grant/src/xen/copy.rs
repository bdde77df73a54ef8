//! Grant copy: the hypervisor copies between a guest's granted page and private memory, with
//! no mapping at all (`IOCTL_GNTDEV_GRANT_COPY`).

use std::os::fd::AsFd;

use rustbk_ring::PAGE_SIZE;

use super::XenPlatform;
use crate::sys::{self, CopyOp, LocalBytes};
use crate::{DomId, Error, GrantRef};

/// Private memory at one end of a grant copy.
#[derive(Debug)]
pub enum CopyBuf<'a> {
    /// Filled with bytes read from the guest's page.
    FromGuest(&'a mut [u8]),
    /// Written into the guest's page.
    ToGuest(&'a [u8]),
}

impl CopyBuf<'_> {
    fn len(&self) -> usize {
        match self {
            CopyBuf::FromGuest(b) => b.len(),
            CopyBuf::ToGuest(b) => b.len(),
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

impl XenPlatform {
    /// Copies every segment between guest `domid`'s grants and the private buffers, in one
    /// ioctl; fails on the first segment Xen refused (earlier ones may have been copied).
    pub fn grant_copy(&self, domid: DomId, segments: &mut [CopySegment<'_>]) -> Result<(), Error> {
        let mut ops = segments
            .iter_mut()
            .map(|s| op(domid, s))
            .collect::<Result<Vec<_>, Error>>()?;
        let statuses = sys::gntdev_grant_copy(self.gntdev.as_fd(), &mut ops)
            .map_err(Error::sys("gntdev grant copy"))?;
        match statuses.iter().position(|s| *s != 0) {
            Some(index) => Err(Error::GrantCopy {
                index,
                status: statuses[index],
            }),
            None => Ok(()),
        }
    }
}

/// Checks one segment stays inside its page and turns it into a raw copy operation.
fn op<'a>(domid: DomId, seg: &'a mut CopySegment<'_>) -> Result<CopyOp<'a>, Error> {
    let len = seg.buf.len();
    let offset = usize::from(seg.offset);
    if len == 0 || offset.checked_add(len).is_none_or(|end| end > PAGE_SIZE) {
        return Err(Error::OutOfBounds {
            offset,
            len,
            size: PAGE_SIZE,
        });
    }
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
