//! The only place in this crate with `unsafe`: mmap wrappers, raw copies in and out of mapped
//! memory that another domain can change at any moment, and descriptors received over sockets.

#![allow(unsafe_code)]

mod fds;
mod region;

pub(crate) use fds::owned_fds;
pub(crate) use region::Region;
