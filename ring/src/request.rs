//! Requests: the private, decoded copy of one ring entry.
//!
//! [`decode_request`] works on a byte copy taken once from the shared page, so
//! the guest cannot change a request after it was checked.

use crate::abi::{
    Abi, DISCARD_SECURE, Layout, MAX_INDIRECT_PAGES, MAX_INDIRECT_SEGMENTS,
    MAX_SEGMENTS_PER_REQUEST, SEG_FIRST_SECT, SEG_GREF, SEG_LAST_SECT, SEGMENT_SIZE,
    SEGS_PER_INDIRECT_FRAME, op, status,
};
use crate::bytes::{get_u8, get_u16, get_u32, get_u64, put_u8, put_u16, put_u32, put_u64};
use crate::inline::InlineVec;
use crate::response::Response;
use crate::types::{GrantRef, SECTORS_PER_PAGE, Sector};

/// One data segment: a run of 512-byte sectors inside one granted page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Segment {
    /// Grant of the page holding the data.
    pub gref: GrantRef,
    /// First sector in the page (inclusive).
    pub first_sect: u8,
    /// Last sector in the page (inclusive).
    pub last_sect: u8,
}

impl Segment {
    /// Whether `first_sect <= last_sect <= 7`.
    pub fn is_valid(&self) -> bool {
        self.first_sect <= self.last_sect && self.last_sect < SECTORS_PER_PAGE
    }

    /// Number of sectors covered (0 for an invalid segment).
    pub fn sectors(&self) -> u64 {
        if self.is_valid() {
            u64::from(self.last_sect - self.first_sect) + 1
        } else {
            0
        }
    }

    /// Parses a segment from its 8-byte wire form.
    pub(crate) fn from_bytes(b: &[u8]) -> Segment {
        Segment {
            gref: GrantRef(get_u32(b, SEG_GREF)),
            first_sect: get_u8(b, SEG_FIRST_SECT),
            last_sect: get_u8(b, SEG_LAST_SECT),
        }
    }

    /// Writes the 8-byte wire form (padding zeroed).
    pub(crate) fn to_bytes(self) -> [u8; SEGMENT_SIZE] {
        let mut b = [0u8; SEGMENT_SIZE];
        put_u32(&mut b, SEG_GREF, self.gref.0);
        put_u8(&mut b, SEG_FIRST_SECT, self.first_sect);
        put_u8(&mut b, SEG_LAST_SECT, self.last_sect);
        b
    }
}

/// The inline segments of a direct request.
pub type Segments = InlineVec<Segment, MAX_SEGMENTS_PER_REQUEST>;
/// The indirect page grants of an indirect request.
pub type IndirectRefs = InlineVec<GrantRef, MAX_INDIRECT_PAGES>;

/// The data operation of a read/write-like request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RwOp {
    /// `BLKIF_OP_READ`.
    Read,
    /// `BLKIF_OP_WRITE`.
    Write,
    /// `BLKIF_OP_WRITE_BARRIER`: flush, then write any data.
    WriteBarrier,
    /// `BLKIF_OP_FLUSH_DISKCACHE`: flush, then write any data.
    Flush,
}

impl RwOp {
    /// The wire operation code.
    pub fn code(self) -> u8 {
        match self {
            RwOp::Read => op::READ,
            RwOp::Write => op::WRITE,
            RwOp::WriteBarrier => op::WRITE_BARRIER,
            RwOp::Flush => op::FLUSH_DISKCACHE,
        }
    }

    /// The operation for a wire code, if it is one of the four.
    pub fn from_code(code: u8) -> Option<RwOp> {
        match code {
            op::READ => Some(RwOp::Read),
            op::WRITE => Some(RwOp::Write),
            op::WRITE_BARRIER => Some(RwOp::WriteBarrier),
            op::FLUSH_DISKCACHE => Some(RwOp::Flush),
            _ => None,
        }
    }

    /// Whether data segments of this operation are written to the disk.
    pub fn writes_data(self) -> bool {
        !matches!(self, RwOp::Read)
    }

    /// Whether the operation asks for a cache flush.
    pub fn is_flush(self) -> bool {
        matches!(self, RwOp::WriteBarrier | RwOp::Flush)
    }
}

/// A decoded, structurally valid request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// READ, WRITE, WRITE_BARRIER, FLUSH_DISKCACHE. Linux blkfront sends
    /// FUA/preflush writes as FLUSH_DISKCACHE or WRITE_BARRIER *with* data
    /// segments (0..=11); a plain flush has 0 segments. READ/WRITE have 1..=11.
    Rw {
        /// Guest cookie echoed in the response.
        id: u64,
        /// The operation.
        op: RwOp,
        /// Virtual device handle.
        handle: u16,
        /// First sector (512-byte units).
        sector: Sector,
        /// The data segments.
        segments: Segments,
    },
    /// Discard `nr_sectors` sectors from `sector`.
    Discard {
        /// Guest cookie echoed in the response.
        id: u64,
        /// `BLKIF_DISCARD_SECURE` was set.
        secure: bool,
        /// First sector (512-byte units).
        sector: Sector,
        /// Number of sectors (512-byte units).
        nr_sectors: u64,
    },
    /// `BLKIF_OP_INDIRECT`: a READ or WRITE whose segments live in the
    /// `indirect_grefs` pages (one page per 512 segments).
    Indirect {
        /// Guest cookie echoed in the response.
        id: u64,
        /// `Read` or `Write`.
        op: RwOp,
        /// Virtual device handle.
        handle: u16,
        /// First sector (512-byte units).
        sector: Sector,
        /// Number of segments in the indirect pages.
        nr_segments: u16,
        /// Grants of the indirect pages.
        indirect_grefs: IndirectRefs,
    },
}

impl Request {
    /// The guest's cookie.
    pub fn id(&self) -> u64 {
        match *self {
            Request::Rw { id, .. } | Request::Discard { id, .. } | Request::Indirect { id, .. } => {
                id
            }
        }
    }

    /// The operation code the response carries (an indirect request is
    /// answered with its `indirect_op`, as Linux blkback does and blkfront checks).
    pub fn response_op(&self) -> u8 {
        match self {
            Request::Rw { op, .. } | Request::Indirect { op, .. } => op.code(),
            Request::Discard { .. } => op::DISCARD,
        }
    }

    /// The response to this request with `status`.
    pub fn response(&self, status: i16) -> Response {
        Response {
            id: self.id(),
            op: self.response_op(),
            status,
        }
    }
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BadReason {
    /// The entry is shorter than a request of the ABI.
    ShortEntry {
        /// Length given.
        len: usize,
    },
    /// The operation code is unknown.
    UnknownOp,
    /// A READ or WRITE without segments.
    NoSegments,
    /// More than 11 inline segments.
    TooManySegments {
        /// Segment count in the request.
        nr: u8,
    },
    /// A segment with `first_sect > last_sect` or `last_sect > 7`.
    SegmentSectors {
        /// Index of the segment.
        index: usize,
        /// Its `first_sect`.
        first: u8,
        /// Its `last_sect`.
        last: u8,
    },
    /// An indirect request whose `indirect_op` is not READ or WRITE.
    BadIndirectOp,
    /// An indirect request with 0 or more than 4096 segments.
    IndirectSegmentCount {
        /// Segment count in the request.
        nr: u16,
    },
    /// An indirect request with more segments than the backend advertised.
    IndirectLimit {
        /// Segment count in the request.
        nr: u16,
        /// Advertised maximum.
        max: u32,
    },
    /// Fewer indirect pages (or smaller ones) than the segments need.
    IndirectPages {
        /// Pages given.
        pages: usize,
        /// Pages needed.
        needed: usize,
    },
    /// The segment list passed to validation does not match the request.
    SegmentCountMismatch {
        /// Count the request announces.
        expected: usize,
        /// Count passed.
        got: usize,
    },
    /// The sector range leaves the disk (or overflows).
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Length in sectors.
        len: u64,
        /// Disk size in sectors.
        disk: u64,
    },
    /// A write or discard to a read-only disk.
    ReadOnly,
    /// Discard on a disk without discard support.
    DiscardUnsupported,
    /// A range not aligned to the logical sector size.
    Misaligned,
}

/// A request that cannot be served, with enough to answer it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadRequest {
    /// The guest's cookie.
    pub id: u64,
    /// The operation code to echo (an indirect request's `indirect_op`).
    pub op: u8,
    /// `EOPNOTSUPP` for an unknown operation or unsupported discard, `ERROR` otherwise.
    pub status: i16,
    /// What was wrong.
    pub reason: BadReason,
}

impl BadRequest {
    /// The error response for this request.
    pub fn response(&self) -> Response {
        Response {
            id: self.id,
            op: self.op,
            status: self.status,
        }
    }
}

/// Decodes and structurally validates one request entry (a private copy).
///
/// Checks: the operation is known, the segment count fits the operation,
/// every inline segment has `first_sect <= last_sect <= 7`, and an indirect
/// request has 1..=4096 segments and a READ or WRITE `indirect_op`.
pub fn decode_request(abi: Abi, entry: &[u8]) -> Result<Request, BadRequest> {
    let l = abi.layout();
    let code = get_u8(entry, l.req_operation);
    let id = get_u64(entry, l.req_id);
    let bad = |op, status, reason| BadRequest {
        id,
        op,
        status,
        reason,
    };
    if entry.len() < l.request_size {
        return Err(bad(
            code,
            status::ERROR,
            BadReason::ShortEntry { len: entry.len() },
        ));
    }
    if let Some(rw) = RwOp::from_code(code) {
        return decode_rw(l, entry, id, rw).map_err(|r| bad(code, status::ERROR, r));
    }
    match code {
        op::DISCARD => Ok(Request::Discard {
            id,
            secure: get_u8(entry, l.discard_flag) & DISCARD_SECURE != 0,
            sector: Sector(get_u64(entry, l.discard_sector)),
            nr_sectors: get_u64(entry, l.discard_nr_sectors),
        }),
        op::INDIRECT => {
            let ind_op = get_u8(entry, l.ind_op);
            decode_indirect(l, entry, id).map_err(|r| bad(ind_op, status::ERROR, r))
        }
        _ => Err(bad(code, status::EOPNOTSUPP, BadReason::UnknownOp)),
    }
}

fn decode_rw(l: &Layout, entry: &[u8], id: u64, op: RwOp) -> Result<Request, BadReason> {
    let nr = get_u8(entry, l.rw_nr_segments);
    if usize::from(nr) > MAX_SEGMENTS_PER_REQUEST {
        return Err(BadReason::TooManySegments { nr });
    }
    if nr == 0 && !op.is_flush() {
        return Err(BadReason::NoSegments);
    }
    let mut segments = Segments::new();
    for index in 0..usize::from(nr) {
        let seg = Segment::from_bytes(entry.get(l.rw_seg + index * SEGMENT_SIZE..).unwrap_or(&[]));
        check_segment(index, &seg)?;
        // Cannot fail: `nr <= MAX_SEGMENTS_PER_REQUEST` was checked above.
        segments
            .push(seg)
            .map_err(|_| BadReason::TooManySegments { nr })?;
    }
    Ok(Request::Rw {
        id,
        op,
        handle: get_u16(entry, l.rw_handle),
        sector: Sector(get_u64(entry, l.rw_sector)),
        segments,
    })
}

fn decode_indirect(l: &Layout, entry: &[u8], id: u64) -> Result<Request, BadReason> {
    let op = match RwOp::from_code(get_u8(entry, l.ind_op)) {
        Some(op @ (RwOp::Read | RwOp::Write)) => op,
        _ => return Err(BadReason::BadIndirectOp),
    };
    let nr_segments = get_u16(entry, l.ind_nr_segments);
    let pages =
        indirect_pages(nr_segments).ok_or(BadReason::IndirectSegmentCount { nr: nr_segments })?;
    let mut indirect_grefs = IndirectRefs::new();
    for i in 0..pages {
        let gref = GrantRef(get_u32(entry, l.ind_grefs + i * 4));
        indirect_grefs
            .push(gref)
            .map_err(|_| BadReason::IndirectSegmentCount { nr: nr_segments })?;
    }
    Ok(Request::Indirect {
        id,
        op,
        handle: get_u16(entry, l.ind_handle),
        sector: Sector(get_u64(entry, l.ind_sector)),
        nr_segments,
        indirect_grefs,
    })
}

/// Number of indirect pages holding `nr_segments` segments, or `None` when
/// the count is 0 or above [`MAX_INDIRECT_SEGMENTS`].
pub fn indirect_pages(nr_segments: u16) -> Option<usize> {
    let nr = usize::from(nr_segments);
    (1..=MAX_INDIRECT_SEGMENTS)
        .contains(&nr)
        .then(|| nr.div_ceil(SEGS_PER_INDIRECT_FRAME))
}

/// Checks one segment's sector bounds.
pub(crate) fn check_segment(index: usize, seg: &Segment) -> Result<(), BadReason> {
    if seg.is_valid() {
        Ok(())
    } else {
        Err(BadReason::SegmentSectors {
            index,
            first: seg.first_sect,
            last: seg.last_sect,
        })
    }
}

/// Encodes `req` into `entry` (for the emulated frontend). The whole request
/// area is rewritten, unused bytes zeroed. `entry` should be at least
/// [`Abi::request_size`] bytes; bytes that do not fit are dropped.
pub fn encode_request(abi: Abi, req: &Request, entry: &mut [u8]) {
    let l = abi.layout();
    let n = entry.len().min(l.request_size);
    entry[..n].fill(0);
    put_u64(entry, l.req_id, req.id());
    match req {
        Request::Rw {
            op,
            handle,
            sector,
            segments,
            ..
        } => {
            put_u8(entry, l.req_operation, op.code());
            // A `Segments` holds at most 11 entries, so this always fits.
            put_u8(
                entry,
                l.rw_nr_segments,
                u8::try_from(segments.len()).unwrap_or(u8::MAX),
            );
            put_u16(entry, l.rw_handle, *handle);
            put_u64(entry, l.rw_sector, sector.0);
            for (i, seg) in segments.as_slice().iter().enumerate() {
                let off = l.rw_seg + i * SEGMENT_SIZE;
                if let Some(dst) = entry.get_mut(off..off + SEGMENT_SIZE) {
                    dst.copy_from_slice(&seg.to_bytes());
                }
            }
        }
        Request::Discard {
            secure,
            sector,
            nr_sectors,
            ..
        } => {
            put_u8(entry, l.req_operation, op::DISCARD);
            put_u8(
                entry,
                l.discard_flag,
                if *secure { DISCARD_SECURE } else { 0 },
            );
            put_u64(entry, l.discard_sector, sector.0);
            put_u64(entry, l.discard_nr_sectors, *nr_sectors);
        }
        Request::Indirect {
            op,
            handle,
            sector,
            nr_segments,
            indirect_grefs,
            ..
        } => {
            put_u8(entry, l.req_operation, op::INDIRECT);
            put_u8(entry, l.ind_op, op.code());
            put_u16(entry, l.ind_nr_segments, *nr_segments);
            put_u64(entry, l.ind_sector, sector.0);
            put_u16(entry, l.ind_handle, *handle);
            for (i, gref) in indirect_grefs.as_slice().iter().enumerate() {
                put_u32(entry, l.ind_grefs + i * 4, gref.0);
            }
        }
    }
}

/// A one-page request of the ring tests: `id` selects the grant (`id % 1000`) and the sector
/// (`id * 8`).
#[cfg(test)]
pub(crate) fn one_page_request(id: u64, op: RwOp, handle: u16) -> Request {
    let seg = Segment {
        gref: crate::types::GrantRef(u32::try_from(id % 1000).unwrap_or(0)),
        first_sect: 0,
        last_sect: 7,
    };
    Request::Rw {
        id,
        op,
        handle,
        sector: Sector(id * 8),
        segments: Segments::from_slice(&[seg]).unwrap_or_default(),
    }
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
