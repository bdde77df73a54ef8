//! rustbk's thin pools: dm-thin's on-disk metadata, read and written in userspace.
#![forbid(unsafe_code)]

pub mod check;
pub mod dir;
pub mod error;
pub mod interchange;
pub mod meta;
pub mod pdata;
#[cfg(any(test, feature = "peers"))]
pub mod peers;
pub mod pool;
pub mod port;
pub mod service;
pub mod volume;
pub mod xml;

#[cfg(test)]
mod testing;

pub use error::{Error, Result};
