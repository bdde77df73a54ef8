//! The platform seam of rustbk: mapping a guest's grants (or copying through them, without a
//! mapping: grant copy) and talking over event channels.
//!
//! The backend only sees the traits here. Two platforms implement them: the emulated one in
//! [`emu`] (guest RAM in a memfd, an emulated grant table, eventfd event channels, handed over a
//! unix socket) and, for real Xen, one over `/dev/xen/gntdev` and `/dev/xen/evtchn`.
//!
//! `unsafe` lives only in `sys/` (mmap and raw memory copies), each block with a SAFETY comment.

#![deny(unsafe_code)]

mod copy;
pub mod emu;
mod error;
mod event;
pub mod file;
mod mapping;
mod sys;
pub mod xen;

use std::os::fd::BorrowedFd;
use std::sync::Arc;

pub use copy::{CopyBuf, CopySegment};
pub use error::Error;
pub use event::EventFd;
pub use file::FileMemory;
pub use mapping::{Direction, GrantMapping, GuestBuf, PageSpan, RingPages};
pub use rustbk_ring::{DomId, GrantRef, Port};

/// How the backend wants to access granted pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// The backend only reads the pages (guest WRITE requests, indirect pages).
    ReadOnly,
    /// The backend writes the pages (guest READ requests, the shared ring).
    ReadWrite,
}

/// A way to reach guests: emulated or real Xen.
pub trait Platform: Send + Sync {
    /// The domain id the backend runs in (grants must be made out to it).
    fn local_domid(&self) -> DomId;
    /// Opens access to guest `domid`'s grants and event channels.
    fn attach(&self, domid: DomId) -> Result<Arc<dyn GuestHandle>, Error>;
}

/// Access to one guest's grants and event channels.
pub trait GuestHandle: Send + Sync {
    /// The guest's domain id.
    fn domid(&self) -> DomId;
    /// Maps `refs` into one contiguous region, page `i` at offset `i * PAGE_SIZE`.
    fn map_grants(&self, refs: &[GrantRef], access: Access) -> Result<GrantMapping, Error>;
    /// Copies between the guest's grants and private memory without mapping them (grant
    /// copy), each segment checked against the grant table as Xen does: a read-only grant may
    /// only be copied from. Fails on the first segment refused (earlier ones may have been
    /// copied); a bad segment is an error, never a panic.
    fn copy_grants(&self, segments: &mut [CopySegment<'_>]) -> Result<(), Error>;
    /// Binds the guest's unbound port `remote` (published by the frontend in xenstore).
    fn bind_event_channel(&self, remote: Port) -> Result<Box<dyn EventChannel>, Error>;
}

/// One bound interdomain event channel.
pub trait EventChannel: Send {
    /// Our end's port number.
    fn local_port(&self) -> Port;
    /// Signals the remote end.
    fn notify(&self) -> Result<(), Error>;
    /// A descriptor that becomes readable when the remote end signalled us.
    fn fd(&self) -> BorrowedFd<'_>;
    /// Consumes pending events and re-arms the channel; true if an event was pending.
    fn ack(&self) -> Result<bool, Error>;
}
