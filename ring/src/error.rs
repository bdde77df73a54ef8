//! The crate's error type.

/// Errors of the ring crate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The frontend's `protocol` key names an ABI this backend does not speak.
    #[error("Unknown frontend protocol {0:?}")]
    UnknownProtocol(String),
    /// The ring page order is above [`crate::MAX_RING_PAGE_ORDER`].
    #[error("Ring page order {order} is larger than the maximum {max}")]
    OrderTooLarge {
        /// Requested order.
        order: u32,
        /// Largest supported order.
        max: u32,
    },
    /// The shared memory is smaller than the ring needs.
    #[error("Shared memory of {len} bytes is smaller than the {need} bytes the ring needs")]
    MemoryTooSmall {
        /// Length of the memory given.
        len: usize,
        /// Length the ring needs.
        need: usize,
    },
    /// The shared memory does not start on an 8-byte boundary.
    #[error("Shared memory at {addr:#x} is not 8-byte aligned")]
    MemoryMisaligned {
        /// Start address of the memory.
        addr: usize,
    },
    /// An access to shared memory would leave its bounds.
    #[error("Shared memory access of {len} bytes at offset {offset} leaves the {size}-byte region")]
    OutOfBounds {
        /// Offset of the access.
        offset: usize,
        /// Length of the access.
        len: usize,
        /// Size of the region.
        size: usize,
    },
    /// An atomic index access is not 4-byte aligned.
    #[error("Atomic access at offset {offset} is not 4-byte aligned")]
    UnalignedAtomic {
        /// Offset of the access.
        offset: usize,
    },
    /// The frontend published a request producer index the ring cannot hold (hostile frontend).
    #[error(
        "Frontend request producer {req_prod} is impossible (consumed {req_cons}, answered {rsp_prod_pvt}, ring size {size})"
    )]
    Overflow {
        /// The request producer index read from the shared page.
        req_prod: u32,
        /// Our request consumer index.
        req_cons: u32,
        /// Our private response producer index.
        rsp_prod_pvt: u32,
        /// Number of ring entries.
        size: u32,
    },
    /// The backend published a response producer index the ring cannot hold (hostile backend).
    #[error(
        "Backend response producer {rsp_prod} is impossible (consumed {rsp_cons}, ring size {size})"
    )]
    ResponseOverflow {
        /// The response producer index read from the shared page.
        rsp_prod: u32,
        /// Our response consumer index.
        rsp_cons: u32,
        /// Number of ring entries.
        size: u32,
    },
    /// The front ring has no free slot for another request.
    #[error("Ring is full")]
    RingFull,
    /// A raw ring entry has the wrong length.
    #[error("Raw ring entry of {len} bytes is longer than the {max}-byte entry")]
    EntryLength {
        /// Length given.
        len: usize,
        /// Entry size for the ABI.
        max: usize,
    },
    /// Too few indirect pages (or too small ones) to hold the segments.
    #[error("{pages} indirect pages cannot hold {segments} segments")]
    IndirectPages {
        /// Number of pages given.
        pages: usize,
        /// Number of segments to store.
        segments: usize,
    },
}
