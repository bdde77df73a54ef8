//! Validation of a decoded request against the disk it targets: range,
//! permissions and logical-sector alignment.

use crate::abi::status;
use crate::request::{BadReason, BadRequest, Request, RwOp, Segment, check_segment};
use crate::types::SECTOR_SIZE;

/// What the backend serves: the facts a request is checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskLimits {
    /// Disk size in 512-byte sectors.
    pub sectors: u64,
    /// Logical sector size in bytes (512 or 4096).
    pub sector_size: u32,
    /// Writes and discards are refused.
    pub read_only: bool,
    /// Discard is advertised (`feature-discard`).
    pub discard: bool,
    /// Advertised `feature-max-indirect-segments`.
    pub max_indirect_segments: u32,
}

type Refusal = (i16, BadReason);

/// Checks `req` against the disk. `segments` are the request's data segments:
/// the inline ones for [`Request::Rw`], the ones decoded from the indirect pages
/// for [`Request::Indirect`], empty for [`Request::Discard`].
///
/// Refuses (all with `ERROR` unless noted): a range leaving the disk or
/// overflowing; data writes or discards on a read-only disk; with a logical
/// sector size above 512, a start sector or segment not aligned to it; an
/// indirect request above the advertised segment limit; discard on a disk
/// without discard support (`EOPNOTSUPP`).
pub fn validate(
    req: &Request,
    segments: &[Segment],
    limits: &DiskLimits,
) -> Result<(), BadRequest> {
    let result = match req {
        Request::Discard {
            sector, nr_sectors, ..
        } => check_discard(sector.0, *nr_sectors, limits),
        Request::Rw {
            op,
            sector,
            segments: own,
            ..
        } => check_count(own.len(), segments.len())
            .and_then(|()| check_data(*op, sector.0, segments, limits)),
        Request::Indirect {
            op,
            sector,
            nr_segments,
            ..
        } => check_indirect_limit(*nr_segments, limits)
            .and_then(|()| check_count(usize::from(*nr_segments), segments.len()))
            .and_then(|()| check_data(*op, sector.0, segments, limits)),
    };
    result.map_err(|(status, reason)| BadRequest {
        id: req.id(),
        op: req.response_op(),
        status,
        reason,
    })
}

/// Total bytes the segments transfer.
pub fn request_bytes(segments: &[Segment]) -> u64 {
    segments.iter().map(|s| s.sectors() * SECTOR_SIZE).sum()
}

/// Logical sector size in 512-byte units (at least 1).
fn sectors_per_block(limits: &DiskLimits) -> u64 {
    (u64::from(limits.sector_size) / SECTOR_SIZE).max(1)
}

fn err(reason: BadReason) -> Refusal {
    (status::ERROR, reason)
}

fn check_count(expected: usize, got: usize) -> Result<(), Refusal> {
    if expected == got {
        Ok(())
    } else {
        Err(err(BadReason::SegmentCountMismatch { expected, got }))
    }
}

fn check_indirect_limit(nr: u16, limits: &DiskLimits) -> Result<(), Refusal> {
    if u32::from(nr) > limits.max_indirect_segments {
        Err(err(BadReason::IndirectLimit {
            nr,
            max: limits.max_indirect_segments,
        }))
    } else {
        Ok(())
    }
}

fn check_range(sector: u64, len: u64, limits: &DiskLimits) -> Result<(), Refusal> {
    match sector.checked_add(len) {
        Some(end) if end <= limits.sectors => Ok(()),
        _ => Err(err(BadReason::OutOfRange {
            sector,
            len,
            disk: limits.sectors,
        })),
    }
}

fn check_data(
    op: RwOp,
    sector: u64,
    segments: &[Segment],
    limits: &DiskLimits,
) -> Result<(), Refusal> {
    if segments.is_empty() {
        // A plain flush: no data, no range.
        return Ok(());
    }
    let mut total: u64 = 0;
    for (index, seg) in segments.iter().enumerate() {
        check_segment(index, seg).map_err(err)?;
        total = total.saturating_add(seg.sectors());
    }
    if op.writes_data() && limits.read_only {
        return Err(err(BadReason::ReadOnly));
    }
    check_range(sector, total, limits)?;
    let spb = sectors_per_block(limits);
    let aligned = |s: &Segment| u64::from(s.first_sect) % spb == 0 && seg_end(s) % spb == 0;
    if sector % spb != 0 || !segments.iter().all(aligned) {
        return Err(err(BadReason::Misaligned));
    }
    Ok(())
}

/// One past the segment's last sector in its page.
fn seg_end(s: &Segment) -> u64 {
    u64::from(s.last_sect) + 1
}

fn check_discard(sector: u64, nr_sectors: u64, limits: &DiskLimits) -> Result<(), Refusal> {
    if !limits.discard {
        return Err((status::EOPNOTSUPP, BadReason::DiscardUnsupported));
    }
    if limits.read_only {
        return Err(err(BadReason::ReadOnly));
    }
    check_range(sector, nr_sectors, limits)?;
    let spb = sectors_per_block(limits);
    if sector % spb != 0 || nr_sectors % spb != 0 {
        return Err(err(BadReason::Misaligned));
    }
    Ok(())
}

#[cfg(test)]
#[path = "check_tests.rs"]
mod tests;
