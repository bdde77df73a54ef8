//! Integration tests over the ring emulator: the real `rustbk` backend process, the xenstore
//! emulator process, and an in-process emulated guest (frontend) talking to them.

mod data;
mod handshake;
mod harness;
mod hostile;
