//! The blkif ABI: operation and status codes, limits, and the byte layout of
//! ring entries for each guest ABI (Xen `public/io/blkif.h`, `ring.h`).
//!
//! x86_64 and ARM (`arm-abi`) align `u64` to 8 bytes, so they share one layout;
//! x86_32 aligns `u64` to 4 bytes, which moves every field after `handle`.

use crate::error::Error;
use crate::types::PAGE_SIZE;

/// Operation codes (`BLKIF_OP_*`).
pub mod op {
    /// Read from the disk into the segments.
    pub const READ: u8 = 0;
    /// Write the segments to the disk.
    pub const WRITE: u8 = 1;
    /// Write with a barrier (Linux sends it as a flush, possibly with data).
    pub const WRITE_BARRIER: u8 = 2;
    /// Flush the disk cache (possibly with data: a FUA/preflush write).
    pub const FLUSH_DISKCACHE: u8 = 3;
    /// Reserved, never valid.
    pub const RESERVED_1: u8 = 4;
    /// Discard a sector range.
    pub const DISCARD: u8 = 5;
    /// Read or write whose segments live in indirect pages.
    pub const INDIRECT: u8 = 6;
}

/// Response status codes (`BLKIF_RSP_*`).
pub mod status {
    /// The operation completed successfully.
    pub const OKAY: i16 = 0;
    /// The operation failed.
    pub const ERROR: i16 = -1;
    /// The operation is not supported.
    pub const EOPNOTSUPP: i16 = -2;
}

/// Segments that fit in one direct request.
pub const MAX_SEGMENTS_PER_REQUEST: usize = 11;
/// Segment descriptors in one indirect page.
pub const SEGS_PER_INDIRECT_FRAME: usize = 512;
/// Indirect pages one request may name.
pub const MAX_INDIRECT_PAGES: usize = 8;
/// Largest segment count of an indirect request this crate decodes.
pub const MAX_INDIRECT_SEGMENTS: usize = MAX_INDIRECT_PAGES * SEGS_PER_INDIRECT_FRAME;
/// Segment count the backend advertises by default (`feature-max-indirect-segments`).
pub const DEFAULT_MAX_INDIRECT_SEGMENTS: u32 = 256;
/// Flag bit of a discard request asking for a secure erase.
pub const DISCARD_SECURE: u8 = 1;

/// Size of one `blkif_request_segment` in every ABI.
pub const SEGMENT_SIZE: usize = 8;
/// Offset of `gref` in a segment.
pub const SEG_GREF: usize = 0;
/// Offset of `first_sect` in a segment.
pub const SEG_FIRST_SECT: usize = 4;
/// Offset of `last_sect` in a segment.
pub const SEG_LAST_SECT: usize = 5;

/// Offset of `req_prod` in the shared ring header.
pub const SRING_REQ_PROD: usize = 0;
/// Offset of `req_event` in the shared ring header.
pub const SRING_REQ_EVENT: usize = 4;
/// Offset of `rsp_prod` in the shared ring header.
pub const SRING_RSP_PROD: usize = 8;
/// Offset of `rsp_event` in the shared ring header.
pub const SRING_RSP_EVENT: usize = 12;
/// Offset of the first ring entry (the header is 64 bytes).
pub const SRING_RING: usize = 64;

/// A guest ABI, chosen by the frontend's `protocol` key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Abi {
    /// 64-bit aligned `u64` (x86_64, and ARM's `arm-abi`).
    X86_64,
    /// 32-bit aligned `u64` (i386 guests).
    X86_32,
}

/// Byte offsets of every field of the ring entries of one ABI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// `sizeof(blkif_request)`, also the ring entry stride.
    pub request_size: usize,
    /// `sizeof(blkif_response)`.
    pub response_size: usize,
    /// Offset of `operation` in every request variant.
    pub req_operation: usize,
    /// Offset of `nr_segments` in a read/write request.
    pub rw_nr_segments: usize,
    /// Offset of `handle` in a read/write request.
    pub rw_handle: usize,
    /// Offset of `id` in every request variant.
    pub req_id: usize,
    /// Offset of `sector_number` in a read/write request.
    pub rw_sector: usize,
    /// Offset of `seg[0]` in a read/write request.
    pub rw_seg: usize,
    /// `sizeof(blkif_request_discard)`.
    pub discard_size: usize,
    /// Offset of `flag` in a discard request.
    pub discard_flag: usize,
    /// Offset of `handle` in a discard request.
    pub discard_handle: usize,
    /// Offset of `sector_number` in a discard request.
    pub discard_sector: usize,
    /// Offset of `nr_sectors` in a discard request.
    pub discard_nr_sectors: usize,
    /// `sizeof(blkif_request_indirect)`.
    pub indirect_size: usize,
    /// Offset of `indirect_op` in an indirect request.
    pub ind_op: usize,
    /// Offset of `nr_segments` (u16) in an indirect request.
    pub ind_nr_segments: usize,
    /// Offset of `sector_number` in an indirect request.
    pub ind_sector: usize,
    /// Offset of `handle` in an indirect request.
    pub ind_handle: usize,
    /// Offset of `indirect_grefs[0]` in an indirect request.
    pub ind_grefs: usize,
    /// Offset of `id` in a response.
    pub rsp_id: usize,
    /// Offset of `operation` in a response.
    pub rsp_operation: usize,
    /// Offset of `status` in a response.
    pub rsp_status: usize,
}

const LAYOUT_X86_64: Layout = Layout {
    request_size: 112,
    response_size: 16,
    req_operation: 0,
    rw_nr_segments: 1,
    rw_handle: 2,
    req_id: 8,
    rw_sector: 16,
    rw_seg: 24,
    discard_size: 32,
    discard_flag: 1,
    discard_handle: 2,
    discard_sector: 16,
    discard_nr_sectors: 24,
    indirect_size: 64,
    ind_op: 1,
    ind_nr_segments: 2,
    ind_sector: 16,
    ind_handle: 24,
    ind_grefs: 28,
    rsp_id: 0,
    rsp_operation: 8,
    rsp_status: 10,
};

const LAYOUT_X86_32: Layout = Layout {
    request_size: 108,
    response_size: 12,
    req_operation: 0,
    rw_nr_segments: 1,
    rw_handle: 2,
    req_id: 4,
    rw_sector: 12,
    rw_seg: 20,
    discard_size: 28,
    discard_flag: 1,
    discard_handle: 2,
    discard_sector: 12,
    discard_nr_sectors: 20,
    indirect_size: 64,
    ind_op: 1,
    ind_nr_segments: 2,
    ind_sector: 12,
    ind_handle: 20,
    ind_grefs: 24,
    rsp_id: 0,
    rsp_operation: 8,
    rsp_status: 10,
};

/// Largest request size over all ABIs; a buffer this big holds any ring entry.
pub const MAX_REQUEST_SIZE: usize = 112;
/// Largest response size over all ABIs.
pub const MAX_RESPONSE_SIZE: usize = 16;

impl Abi {
    /// The ABI named by the frontend's `protocol` key.
    ///
    /// No key means the backend's default, as Linux blkback does: x86_32 on
    /// x86 hosts, the native (x86_64-shaped) layout elsewhere. `arm-abi` has the
    /// x86_64 layout (naturally aligned `u64`). Anything else is an error.
    pub fn from_protocol(p: Option<&str>) -> Result<Abi, Error> {
        match p {
            None => Ok(Self::default_for_host()),
            Some("x86_64-abi") | Some("arm-abi") => Ok(Abi::X86_64),
            Some("x86_32-abi") => Ok(Abi::X86_32),
            Some(other) => Err(Error::UnknownProtocol(other.to_owned())),
        }
    }

    fn default_for_host() -> Abi {
        if cfg!(any(target_arch = "x86", target_arch = "x86_64")) {
            Abi::X86_32
        } else {
            Abi::X86_64
        }
    }

    /// The `protocol` string naming this layout.
    pub fn protocol_name(self) -> &'static str {
        match self {
            Abi::X86_64 => "x86_64-abi",
            Abi::X86_32 => "x86_32-abi",
        }
    }

    /// Field offsets of this ABI.
    pub fn layout(self) -> &'static Layout {
        match self {
            Abi::X86_64 => &LAYOUT_X86_64,
            Abi::X86_32 => &LAYOUT_X86_32,
        }
    }

    /// `sizeof(blkif_request)`.
    pub fn request_size(self) -> usize {
        self.layout().request_size
    }

    /// `sizeof(blkif_response)`.
    pub fn response_size(self) -> usize {
        self.layout().response_size
    }

    /// Size of one ring entry (the request/response union).
    pub fn entry_size(self) -> usize {
        self.request_size().max(self.response_size())
    }
}

/// Number of entries of a ring of `PAGE_SIZE << order` bytes (`__CONST_RING_SIZE`):
/// the largest power of two that fits after the 64-byte header. Returns 0 for
/// an order so large the ring size does not fit in memory.
pub fn ring_entries(abi: Abi, order: u32) -> u32 {
    let Some(bytes) = PAGE_SIZE
        .checked_shl(order)
        .filter(|b| b >> order == PAGE_SIZE)
    else {
        return 0;
    };
    let fit = (bytes - SRING_RING) / abi.entry_size();
    let fit = u32::try_from(fit).unwrap_or(u32::MAX);
    if fit == 0 { 0 } else { 1 << fit.ilog2() }
}

/// Bytes of shared memory a ring of this order needs.
pub fn ring_bytes(order: u32) -> Option<usize> {
    PAGE_SIZE
        .checked_shl(order)
        .filter(|b| b >> order == PAGE_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_has_32_entries_per_page_doubling_per_order() {
        for abi in [Abi::X86_64, Abi::X86_32] {
            for order in 0..=crate::types::MAX_RING_PAGE_ORDER {
                assert_eq!(
                    ring_entries(abi, order),
                    32 << order,
                    "{abi:?} order {order}"
                );
            }
        }
    }

    #[test]
    fn absurd_order_gives_zero_entries() {
        assert_eq!(ring_entries(Abi::X86_64, 200), 0);
        assert_eq!(ring_bytes(200), None);
    }

    #[test]
    fn protocol_names_map_to_layouts() {
        assert_eq!(Abi::from_protocol(Some("x86_64-abi")), Ok(Abi::X86_64));
        assert_eq!(Abi::from_protocol(Some("x86_32-abi")), Ok(Abi::X86_32));
        assert_eq!(Abi::from_protocol(Some("arm-abi")), Ok(Abi::X86_64));
        assert_eq!(
            Abi::from_protocol(Some("sparc-abi")),
            Err(Error::UnknownProtocol("sparc-abi".into()))
        );
        for abi in [Abi::X86_64, Abi::X86_32] {
            assert_eq!(Abi::from_protocol(Some(abi.protocol_name())), Ok(abi));
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn missing_protocol_means_x86_32_on_x86_hosts() {
        assert_eq!(Abi::from_protocol(None), Ok(Abi::X86_32));
    }

    #[test]
    fn sizes_match_blkif_h() {
        assert_eq!(Abi::X86_64.request_size(), 112);
        assert_eq!(Abi::X86_64.response_size(), 16);
        assert_eq!(Abi::X86_32.request_size(), 108);
        assert_eq!(Abi::X86_32.response_size(), 12);
        assert_eq!(MAX_INDIRECT_SEGMENTS, 4096);
    }
}
