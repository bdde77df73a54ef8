//! The `rustbk` command line: serve a guest's disk, run the emulator, demo and benchmarks.

#![forbid(unsafe_code)]

pub mod cli;
pub mod cluster;
pub mod cmd;
pub mod config;
pub mod ctl;
pub mod img;
pub mod logging;
pub mod smapi;
pub mod supervise;
pub mod thin;
