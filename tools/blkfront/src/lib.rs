//! The emulated guest side of rustbk's ring emulator.
//!
//! * [`toolstack`]: writes a vbd's backend and frontend directories the way libxl does.
//! * [`Frontend`]: plays Linux blkfront: the xenbus handshake over xenstore, granted rings (one,
//!   or several queues with `multi-queue-num-queues`) and data pages in emulated guest RAM,
//!   requests and responses, close and reconnect; [`Tamper`] plays a frontend publishing bad
//!   ring keys.
//! * [`rng`]: the seeded generator of workloads and test schedules.
//! * [`workload`]: sequential/random, read/write/mixed workloads with a verify mode, latency
//!   percentiles and throughput.

#![forbid(unsafe_code)]

mod error;
mod frames;
mod front;
pub mod rng;
mod slots;
pub mod toolstack;
mod wait;
pub mod workload;

pub use error::Error;
pub use frames::FrameAlloc;
pub use front::{Closed, DiskInfo, Frontend, FrontendConfig, Sleeps, Tamper};
pub use slots::{Slot, SlotPool};
