use super::*;
use crate::abi::op;
use crate::request::{IndirectRefs, Segments};
use crate::types::{GrantRef, Sector};
use proptest::prelude::*;

const DISK: DiskLimits = DiskLimits {
    sectors: 1 << 20,
    sector_size: 512,
    read_only: false,
    discard: true,
    max_indirect_segments: 256,
};

fn seg(first_sect: u8, last_sect: u8) -> Segment {
    Segment {
        gref: GrantRef(7),
        first_sect,
        last_sect,
    }
}

fn rw(op: RwOp, sector: u64, segs: &[Segment]) -> Request {
    Request::Rw {
        id: 42,
        op,
        handle: 0,
        sector: Sector(sector),
        segments: Segments::from_slice(segs).unwrap(),
    }
}

fn check(req: &Request, limits: &DiskLimits) -> Result<(), (i16, BadReason)> {
    let segs: Vec<Segment> = match req {
        Request::Rw { segments, .. } => segments.as_slice().to_vec(),
        Request::Indirect { nr_segments, .. } => vec![seg(0, 7); usize::from(*nr_segments)],
        Request::Discard { .. } => Vec::new(),
    };
    validate(req, &segs, limits).map_err(|b| {
        assert_eq!(b.id, 42, "the refusal carries the request id");
        (b.status, b.reason)
    })
}

fn discard(sector: u64, nr_sectors: u64) -> Request {
    Request::Discard {
        id: 42,
        secure: false,
        sector: Sector(sector),
        nr_sectors,
    }
}

fn indirect(op: RwOp, sector: u64, nr_segments: u16) -> Request {
    Request::Indirect {
        id: 42,
        op,
        handle: 0,
        sector: Sector(sector),
        nr_segments,
        indirect_grefs: IndirectRefs::from_slice(&[GrantRef(1)]).unwrap(),
    }
}

#[test]
fn request_ending_at_disk_end_is_accepted() {
    let last = DISK.sectors - 16;
    assert_eq!(
        check(&rw(RwOp::Read, last, &[seg(0, 7), seg(0, 7)]), &DISK),
        Ok(())
    );
}

#[test]
fn range_past_the_end_is_refused() {
    let r = check(
        &rw(RwOp::Read, DISK.sectors - 15, &[seg(0, 7), seg(0, 7)]),
        &DISK,
    );
    assert_eq!(
        r,
        Err((
            status::ERROR,
            BadReason::OutOfRange {
                sector: DISK.sectors - 15,
                len: 16,
                disk: DISK.sectors
            }
        ))
    );
    let r = check(&discard(DISK.sectors, 1), &DISK);
    assert!(matches!(
        r,
        Err((status::ERROR, BadReason::OutOfRange { .. }))
    ));
}

#[test]
fn range_with_u64_overflow_is_refused() {
    let r = check(&rw(RwOp::Write, u64::MAX - 2, &[seg(0, 7)]), &DISK);
    assert!(matches!(
        r,
        Err((status::ERROR, BadReason::OutOfRange { .. }))
    ));
    let huge = DiskLimits {
        sectors: u64::MAX,
        ..DISK
    };
    let r = check(&discard(u64::MAX - 7, 16), &huge);
    assert!(matches!(
        r,
        Err((status::ERROR, BadReason::OutOfRange { .. }))
    ));
}

#[test]
fn write_on_read_only_is_refused_and_read_is_not() {
    let ro = DiskLimits {
        read_only: true,
        ..DISK
    };
    for op in [RwOp::Write, RwOp::WriteBarrier, RwOp::Flush] {
        assert_eq!(
            check(&rw(op, 0, &[seg(0, 7)]), &ro),
            Err((status::ERROR, BadReason::ReadOnly))
        );
    }
    assert_eq!(
        check(&indirect(RwOp::Write, 0, 4), &ro),
        Err((status::ERROR, BadReason::ReadOnly))
    );
    assert_eq!(check(&rw(RwOp::Read, 0, &[seg(0, 7)]), &ro), Ok(()));
    assert_eq!(
        check(&rw(RwOp::Flush, 0, &[]), &ro),
        Ok(()),
        "a plain flush writes nothing"
    );
}

#[test]
fn discard_on_read_only_is_refused() {
    let ro = DiskLimits {
        read_only: true,
        ..DISK
    };
    assert_eq!(
        check(&discard(0, 8), &ro),
        Err((status::ERROR, BadReason::ReadOnly))
    );
}

#[test]
fn discard_without_discard_support_gets_eopnotsupp() {
    let nodiscard = DiskLimits {
        discard: false,
        ..DISK
    };
    let r = validate(&discard(0, 8), &[], &nodiscard).unwrap_err();
    assert_eq!(
        (r.op, r.status, r.reason),
        (
            op::DISCARD,
            status::EOPNOTSUPP,
            BadReason::DiscardUnsupported
        )
    );
    assert_eq!(check(&discard(0, 8), &DISK), Ok(()));
}

#[test]
fn misaligned_requests_on_4096_sector_disk_are_refused() {
    let d4k = DiskLimits {
        sector_size: 4096,
        ..DISK
    };
    assert_eq!(
        check(&rw(RwOp::Read, 8, &[seg(0, 7), seg(0, 7)]), &d4k),
        Ok(())
    );
    let bad = [
        rw(RwOp::Read, 4, &[seg(0, 7)]),
        rw(RwOp::Read, 8, &[seg(1, 7)]),
        rw(RwOp::Write, 8, &[seg(0, 7), seg(0, 6)]),
        rw(RwOp::Flush, 0, &[seg(0, 3), seg(4, 7)]),
        discard(4, 8),
        discard(8, 12),
    ];
    for req in bad {
        assert_eq!(
            check(&req, &d4k),
            Err((status::ERROR, BadReason::Misaligned)),
            "{req:?}"
        );
        assert_eq!(
            check(&req, &DISK),
            Ok(()),
            "fine on a 512-byte disk: {req:?}"
        );
    }
    assert_eq!(
        check(&indirect(RwOp::Read, 3, 2), &d4k),
        Err((status::ERROR, BadReason::Misaligned))
    );
    assert_eq!(check(&discard(16, 64), &d4k), Ok(()));
}

#[test]
fn indirect_above_advertised_limit_is_refused() {
    assert_eq!(check(&indirect(RwOp::Read, 0, 256), &DISK), Ok(()));
    assert_eq!(
        check(&indirect(RwOp::Read, 0, 257), &DISK),
        Err((
            status::ERROR,
            BadReason::IndirectLimit { nr: 257, max: 256 }
        ))
    );
}

#[test]
fn segment_list_not_matching_the_request_is_refused() {
    let req = indirect(RwOp::Read, 0, 4);
    let r = validate(&req, &[seg(0, 7)], &DISK).unwrap_err();
    assert_eq!(
        r.reason,
        BadReason::SegmentCountMismatch {
            expected: 4,
            got: 1
        }
    );
}

#[test]
fn invalid_segment_passed_to_validate_is_refused() {
    let req = indirect(RwOp::Read, 0, 2);
    let r = validate(&req, &[seg(0, 7), seg(3, 9)], &DISK).unwrap_err();
    assert_eq!(
        r.reason,
        BadReason::SegmentSectors {
            index: 1,
            first: 3,
            last: 9
        }
    );
}

#[test]
fn request_bytes_counts_inclusive_sectors() {
    assert_eq!(
        request_bytes(&[seg(0, 7), seg(2, 2), seg(1, 4)]),
        4096 + 512 + 2048
    );
    assert_eq!(request_bytes(&[]), 0);
}

proptest! {
    #[test]
    fn accepted_ranges_always_fit_the_disk(
        sector in any::<u64>(),
        disk in any::<u64>(),
        lens in proptest::collection::vec(0u8..8, 1..=11),
    ) {
        let segs: Vec<Segment> = lens.iter().map(|&l| seg(0, l)).collect();
        let limits = DiskLimits { sectors: disk, ..DISK };
        let ok = validate(&rw(RwOp::Read, sector, &segs), &segs, &limits).is_ok();
        let total = u128::from(request_bytes(&segs) / 512);
        prop_assert_eq!(ok, u128::from(sector) + total <= u128::from(disk));
    }
}
