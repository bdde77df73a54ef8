//! The blkif backend of rustbk.
//!
//! * [`xenbus`]: the per-device xenbus state machine (control plane, tokio, xenstore-rs).
//! * [`worker`]: the data path, one thread per ring (a multi-queue device has several, sharing
//!   no lock on the request path but the I/O limits of a limited disk): requests copied out of
//!   the ring once,
//!   validated, turned into image I/O straight into mapped guest pages, answered in order of
//!   completion.
//! * [`qos`]: I/O limits per disk (QEMU's throttle options and leaky buckets), shared by the
//!   disk's rings and changed while it is served.

#![forbid(unsafe_code)]

pub mod control;
pub mod daemon;
mod error;
pub mod lock;
pub mod qos;
pub mod stats;
pub mod worker;
pub mod xenbus;

pub use error::Error;
pub use stats::Stats;
