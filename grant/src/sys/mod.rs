//! The only place in this crate with `unsafe`: mmap wrappers, raw copies in and out of mapped
//! memory that another domain can change at any moment, and descriptors received over sockets.

#![allow(unsafe_code)]

mod fds;
mod region;
mod xen;

pub(crate) use fds::owned_fds;
pub(crate) use region::Region;
pub(crate) use xen::{
    CopyOp, LocalBytes, UNMAP_NOTIFY_CLEAR_BYTE, UNMAP_NOTIFY_SEND_EVENT, abi_facts,
    evtchn_bind_interdomain, evtchn_notify, evtchn_unbind, gntdev_grant_copy, gntdev_map,
    gntdev_offset_for_vaddr, gntdev_set_unmap_notify, gntdev_unmap,
};
