//! The Xen blkif protocol: the ABI of ring entries for each guest layout,
//! request decoding and validation, indirect segment pages, and both ends of
//! the shared ring with ring.h's index arithmetic, barriers and notify rules,
//! and the request journal that lets a restarted backend serve again what it
//! had consumed ([`journal`]).
//!
//! No syscalls. The only `unsafe` code lives in [`shared`], which does the
//! volatile and atomic accesses to memory shared with the other end; every
//! request is copied out of that memory once and decoded from the private copy.

#![deny(unsafe_code)]

pub mod abi;
pub mod back;
mod bytes;
pub mod check;
mod error;
pub mod front;
pub mod indirect;
mod inline;
pub mod journal;
pub mod request;
pub mod response;
#[allow(unsafe_code)]
pub mod shared;
mod sring;
pub mod types;

pub use abi::{
    Abi, DEFAULT_MAX_INDIRECT_SEGMENTS, Layout, MAX_INDIRECT_PAGES, MAX_INDIRECT_SEGMENTS,
    MAX_SEGMENTS_PER_REQUEST, SEGS_PER_INDIRECT_FRAME, op, ring_bytes, ring_entries, status,
};
pub use back::BackRing;
pub use check::{DiskLimits, request_bytes, validate};
pub use error::Error;
pub use front::FrontRing;
pub use indirect::{
    decode_indirect_segments, decode_indirect_segments_into, encode_indirect_segments,
};
pub use inline::InlineVec;
pub use journal::journal_bytes;
pub use request::{
    BadReason, BadRequest, IndirectRefs, Request, RwOp, Segment, Segments, decode_request,
    encode_request, indirect_pages,
};
pub use response::{Response, decode_response, encode_response};
pub use shared::{HeapMemory, SharedMemory, SharedMemoryExt};
pub use types::{DomId, GrantRef, MAX_RING_PAGE_ORDER, PAGE_SIZE, Port, SECTOR_SIZE, Sector};
