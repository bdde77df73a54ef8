//! Integration tests over the ring emulator: the real `rustbk` backend process, the xenstore
//! emulator process, and an in-process emulated guest (frontend) talking to them.

// Test patterns deliberately truncate numbers into bytes.
#![allow(clippy::cast_possible_truncation)]

mod cache;
mod cli;
mod confine;
mod ctl;
mod daemon;
mod data;
mod data_path;
mod failure;
mod handshake;
mod harness;
#[path = "../img/holder.rs"]
mod holder;
mod hostile;
mod locks;
mod multiqueue;
mod null;
mod persistent;
mod qcow2;
mod qos;
mod resize;
mod restart;
mod sectors;
mod smapi;
#[path = "../smapi/client.rs"]
mod smapi_client;
mod thin;
mod thin_cli;
mod vbd3;
mod vhd;
