//! Crash safety of qcow2 images written by rustbk.
//!
//! * [`kill9`]: a real `rustbk serve` process serves a qcow2 image (made by `qemu-img`) to an
//!   in-process emulated guest running random writes and flushes, and is killed with SIGKILL
//!   at a random moment. `qemu-img check` must find no corruption, and every block must read
//!   back a generation the guest may see after a crash.
//! * [`replay`]: a workload runs through `open_image` with a write recorder; power failures
//!   are simulated by replaying, onto the initial image, everything up to the last durable
//!   flush before a cut point plus a random subset (some torn) of the later writes.
//!
//! * [`kill9_formats`]: the same SIGKILL cycles on a dynamic VHD and a sparse VMDK.
//! * [`vmdk`]: the same replay for a VMDK child over a parent, and a log with the allocation
//!   fdatasync taken out, which must be caught; then a child without grain tables, whose
//!   table allocations are replayed, and a log with early directory entries, also caught.
//!
//! Seeds: `CRASH_SEED=<n>` repeats a run; every test prints the seed it used.

// Test patterns deliberately truncate numbers into bytes.
#![allow(clippy::cast_possible_truncation)]

mod kill9;
mod kill9_formats;
mod model;
mod qemu;
mod recorder;
mod replay;
mod rng;
mod thin;
mod vmdk;
