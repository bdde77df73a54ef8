//! rustbk's thin pools: dm-thin's on-disk metadata, read and written in userspace.
#![forbid(unsafe_code)]

pub mod check;
pub mod error;
pub mod meta;
pub mod pdata;
pub mod port;

pub use error::{Error, Result};
