use super::*;
use crate::abi::{MAX_REQUEST_SIZE, SEGS_PER_INDIRECT_FRAME};
use proptest::collection::vec;
use proptest::prelude::*;

const ABIS: [Abi; 2] = [Abi::X86_64, Abi::X86_32];

fn seg(gref: u32, first_sect: u8, last_sect: u8) -> Segment {
    Segment {
        gref: GrantRef(gref),
        first_sect,
        last_sect,
    }
}

fn rw(op: RwOp, segs: &[Segment]) -> Request {
    Request::Rw {
        id: 0xfeed_0000_0000_0001,
        op,
        handle: 51712,
        sector: Sector(4096),
        segments: Segments::from_slice(segs).unwrap(),
    }
}

fn encoded(abi: Abi, req: &Request) -> Vec<u8> {
    let mut e = vec![0u8; abi.request_size()];
    encode_request(abi, req, &mut e);
    e
}

/// A raw read/write entry with `nr` segments, each `first..=last`.
fn raw_rw(abi: Abi, code: u8, nr: u8, first: u8, last: u8) -> Vec<u8> {
    let l = abi.layout();
    let mut e = vec![0u8; abi.request_size()];
    e[l.req_operation] = code;
    e[l.rw_nr_segments] = nr;
    e[l.req_id..l.req_id + 8].copy_from_slice(&77u64.to_le_bytes());
    for i in 0..usize::from(nr).min(11) {
        let o = l.rw_seg + i * SEGMENT_SIZE;
        e[o + 4] = first;
        e[o + 5] = last;
    }
    e
}

fn raw_indirect(abi: Abi, ind_op: u8, nr: u16) -> Vec<u8> {
    let l = abi.layout();
    let mut e = vec![0u8; abi.request_size()];
    e[l.req_operation] = op::INDIRECT;
    e[l.ind_op] = ind_op;
    e[l.ind_nr_segments..l.ind_nr_segments + 2].copy_from_slice(&nr.to_le_bytes());
    e[l.req_id..l.req_id + 8].copy_from_slice(&99u64.to_le_bytes());
    e
}

fn reason(r: Result<Request, BadRequest>) -> (u64, u8, i16, BadReason) {
    let b = r.expect_err("request should be refused");
    (b.id, b.op, b.status, b.reason)
}

#[test]
fn x86_64_read_sits_at_blkif_h_offsets() {
    let e = encoded(Abi::X86_64, &rw(RwOp::Read, &[seg(0x1122_3344, 1, 6)]));
    assert_eq!(e.len(), 112);
    assert_eq!(e[0], op::READ);
    assert_eq!(e[1], 1);
    assert_eq!(u16::from_le_bytes([e[2], e[3]]), 51712);
    assert_eq!(&e[8..16], &0xfeed_0000_0000_0001u64.to_le_bytes());
    assert_eq!(&e[16..24], &4096u64.to_le_bytes());
    assert_eq!(&e[24..28], &0x1122_3344u32.to_le_bytes());
    assert_eq!((e[28], e[29]), (1, 6));
}

#[test]
fn x86_32_read_packs_id_at_4_and_segments_at_20() {
    let e = encoded(Abi::X86_32, &rw(RwOp::Write, &[seg(0x1122_3344, 0, 7)]));
    assert_eq!(e.len(), 108);
    assert_eq!(&e[4..12], &0xfeed_0000_0000_0001u64.to_le_bytes());
    assert_eq!(&e[12..20], &4096u64.to_le_bytes());
    assert_eq!(&e[20..24], &0x1122_3344u32.to_le_bytes());
}

#[test]
fn indirect_fields_sit_at_blkif_h_offsets() {
    let req = Request::Indirect {
        id: 5,
        op: RwOp::Write,
        handle: 0xabcd,
        sector: Sector(8),
        nr_segments: 600,
        indirect_grefs: IndirectRefs::from_slice(&[GrantRef(10), GrantRef(11)]).unwrap(),
    };
    for (abi, sector_at, handle_at, grefs_at) in
        [(Abi::X86_64, 16, 24, 28), (Abi::X86_32, 12, 20, 24)]
    {
        let e = encoded(abi, &req);
        assert_eq!((e[0], e[1]), (op::INDIRECT, op::WRITE));
        assert_eq!(u16::from_le_bytes([e[2], e[3]]), 600);
        assert_eq!(e[sector_at], 8);
        assert_eq!(u16::from_le_bytes([e[handle_at], e[handle_at + 1]]), 0xabcd);
        assert_eq!(e[grefs_at], 10);
        assert_eq!(e[grefs_at + 4], 11);
    }
}

#[test]
fn discard_fields_sit_at_blkif_h_offsets() {
    let req = Request::Discard {
        id: 3,
        secure: true,
        sector: Sector(16),
        nr_sectors: 2048,
    };
    for (abi, sector_at, nr_at) in [(Abi::X86_64, 16, 24), (Abi::X86_32, 12, 20)] {
        let e = encoded(abi, &req);
        assert_eq!((e[0], e[1]), (op::DISCARD, DISCARD_SECURE));
        assert_eq!(e[sector_at], 16);
        assert_eq!(&e[nr_at..nr_at + 8], &2048u64.to_le_bytes());
    }
}

#[test]
fn read_or_write_without_segments_is_refused() {
    for abi in ABIS {
        for code in [op::READ, op::WRITE] {
            let r = decode_request(abi, &raw_rw(abi, code, 0, 0, 7));
            assert_eq!(reason(r), (77, code, status::ERROR, BadReason::NoSegments));
        }
    }
}

#[test]
fn plain_flush_and_barrier_without_segments_are_accepted() {
    for abi in ABIS {
        for code in [op::FLUSH_DISKCACHE, op::WRITE_BARRIER] {
            let r = decode_request(abi, &raw_rw(abi, code, 0, 0, 0)).unwrap();
            assert!(matches!(r, Request::Rw { segments, .. } if segments.is_empty()));
        }
    }
}

#[test]
fn flush_with_data_segments_keeps_them() {
    let want = rw(RwOp::Flush, &[seg(1, 0, 7), seg(2, 0, 3)]);
    for abi in ABIS {
        assert_eq!(decode_request(abi, &encoded(abi, &want)), Ok(want));
    }
}

#[test]
fn twelve_segments_are_refused() {
    for abi in ABIS {
        let r = decode_request(abi, &raw_rw(abi, op::WRITE, 12, 0, 7));
        assert_eq!(reason(r).3, BadReason::TooManySegments { nr: 12 });
        let r = decode_request(abi, &raw_rw(abi, op::FLUSH_DISKCACHE, 255, 0, 7));
        assert_eq!(reason(r).3, BadReason::TooManySegments { nr: 255 });
    }
}

#[test]
fn eleven_segments_are_accepted() {
    for abi in ABIS {
        let r = decode_request(abi, &raw_rw(abi, op::READ, 11, 0, 7)).unwrap();
        assert!(matches!(r, Request::Rw { segments, .. } if segments.len() == 11));
    }
}

#[test]
fn first_sect_after_last_sect_is_refused() {
    for abi in ABIS {
        let r = decode_request(abi, &raw_rw(abi, op::READ, 2, 5, 4));
        assert_eq!(
            reason(r),
            (
                77,
                op::READ,
                status::ERROR,
                BadReason::SegmentSectors {
                    index: 0,
                    first: 5,
                    last: 4
                }
            )
        );
    }
}

#[test]
fn last_sect_8_is_refused() {
    for abi in ABIS {
        let r = decode_request(abi, &raw_rw(abi, op::WRITE, 1, 0, 8));
        assert_eq!(
            reason(r).3,
            BadReason::SegmentSectors {
                index: 0,
                first: 0,
                last: 8
            }
        );
    }
}

#[test]
fn unknown_op_gets_eopnotsupp_with_its_id_and_op() {
    for abi in ABIS {
        for code in [op::RESERVED_1, 7, 255] {
            let r = decode_request(abi, &raw_rw(abi, code, 1, 0, 7));
            assert_eq!(
                reason(r),
                (77, code, status::EOPNOTSUPP, BadReason::UnknownOp)
            );
        }
    }
}

#[test]
fn indirect_with_zero_segments_is_refused() {
    for abi in ABIS {
        let r = decode_request(abi, &raw_indirect(abi, op::READ, 0));
        assert_eq!(
            reason(r),
            (
                99,
                op::READ,
                status::ERROR,
                BadReason::IndirectSegmentCount { nr: 0 }
            )
        );
    }
}

#[test]
fn indirect_with_too_many_segments_is_refused() {
    for abi in ABIS {
        let r = decode_request(abi, &raw_indirect(abi, op::WRITE, 4097));
        assert_eq!(reason(r).3, BadReason::IndirectSegmentCount { nr: 4097 });
        let r = decode_request(abi, &raw_indirect(abi, op::WRITE, u16::MAX));
        assert_eq!(
            reason(r).3,
            BadReason::IndirectSegmentCount { nr: u16::MAX }
        );
    }
}

#[test]
fn indirect_with_bad_indirect_op_is_refused_echoing_it() {
    for abi in ABIS {
        for ind_op in [
            op::FLUSH_DISKCACHE,
            op::WRITE_BARRIER,
            op::DISCARD,
            op::INDIRECT,
            200,
        ] {
            let r = decode_request(abi, &raw_indirect(abi, ind_op, 8));
            assert_eq!(
                reason(r),
                (99, ind_op, status::ERROR, BadReason::BadIndirectOp)
            );
        }
    }
}

#[test]
fn indirect_takes_one_gref_per_512_segments() {
    for abi in ABIS {
        for (nr, pages) in [(1u16, 1usize), (512, 1), (513, 2), (4096, 8)] {
            let r = decode_request(abi, &raw_indirect(abi, op::READ, nr)).unwrap();
            assert!(
                matches!(r, Request::Indirect { indirect_grefs, .. } if indirect_grefs.len() == pages)
            );
        }
    }
    assert_eq!(indirect_pages(4096), Some(4096 / SEGS_PER_INDIRECT_FRAME));
}

#[test]
fn short_entry_is_refused_with_id_when_present() {
    let full = raw_rw(Abi::X86_64, op::READ, 1, 0, 7);
    let r = decode_request(Abi::X86_64, &full[..111]);
    assert_eq!(
        reason(r),
        (
            77,
            op::READ,
            status::ERROR,
            BadReason::ShortEntry { len: 111 }
        )
    );
    let r = decode_request(Abi::X86_32, &[]);
    assert_eq!(reason(r).3, BadReason::ShortEntry { len: 0 });
}

#[test]
fn responses_echo_indirect_op() {
    let req = Request::Indirect {
        id: 1,
        op: RwOp::Write,
        handle: 0,
        sector: Sector(0),
        nr_segments: 1,
        indirect_grefs: IndirectRefs::from_slice(&[GrantRef(1)]).unwrap(),
    };
    assert_eq!(
        req.response(status::OKAY),
        Response {
            id: 1,
            op: op::WRITE,
            status: 0
        }
    );
}

fn arb_segment() -> impl Strategy<Value = Segment> {
    (any::<u32>(), 0u8..8)
        .prop_flat_map(|(g, f)| (Just(g), Just(f), f..8))
        .prop_map(|(g, f, l)| seg(g, f, l))
}

fn arb_rw_op() -> impl Strategy<Value = RwOp> {
    prop_oneof![
        Just(RwOp::Read),
        Just(RwOp::Write),
        Just(RwOp::WriteBarrier),
        Just(RwOp::Flush)
    ]
}

fn arb_request() -> impl Strategy<Value = Request> {
    let rw = (
        any::<u64>(),
        arb_rw_op(),
        any::<u16>(),
        any::<u64>(),
        vec(arb_segment(), 0..=11),
    )
        .prop_map(|(id, op, handle, sector, segs)| {
            let op = if segs.is_empty() && !op.is_flush() {
                RwOp::Flush
            } else {
                op
            };
            let segments = Segments::from_slice(&segs).unwrap();
            Request::Rw {
                id,
                op,
                handle,
                sector: Sector(sector),
                segments,
            }
        });
    let discard =
        (any::<u64>(), any::<bool>(), any::<u64>(), any::<u64>()).prop_map(|(id, secure, s, n)| {
            Request::Discard {
                id,
                secure,
                sector: Sector(s),
                nr_sectors: n,
            }
        });
    let indirect = (1u16..=4096)
        .prop_flat_map(|nr| (Just(nr), vec(any::<u32>(), indirect_pages(nr).unwrap())))
        .prop_flat_map(|(nr, grefs)| {
            (
                any::<u64>(),
                any::<bool>(),
                any::<u16>(),
                any::<u64>(),
                Just(nr),
                Just(grefs),
            )
        })
        .prop_map(|(id, write, handle, sector, nr_segments, grefs)| {
            let grefs: Vec<GrantRef> = grefs.into_iter().map(GrantRef).collect();
            Request::Indirect {
                id,
                op: if write { RwOp::Write } else { RwOp::Read },
                handle,
                sector: Sector(sector),
                nr_segments,
                indirect_grefs: IndirectRefs::from_slice(&grefs).unwrap(),
            }
        });
    prop_oneof![rw, discard, indirect]
}

proptest! {
    #[test]
    fn valid_requests_round_trip_in_both_abis(req in arb_request(), x32: bool) {
        let abi = if x32 { Abi::X86_32 } else { Abi::X86_64 };
        prop_assert_eq!(decode_request(abi, &encoded(abi, &req)), Ok(req));
    }

    #[test]
    fn arbitrary_bytes_decode_without_panic_and_reencode_stably(
        bytes in vec(any::<u8>(), MAX_REQUEST_SIZE),
        x32: bool,
    ) {
        let abi = if x32 { Abi::X86_32 } else { Abi::X86_64 };
        match decode_request(abi, &bytes) {
            Ok(req) => prop_assert_eq!(decode_request(abi, &encoded(abi, &req)), Ok(req)),
            Err(bad) => {
                let l = abi.layout();
                prop_assert_eq!(bad.id, u64::from_le_bytes(bytes[l.req_id..l.req_id + 8].try_into().unwrap()));
                prop_assert!(bad.status == status::ERROR || bad.status == status::EOPNOTSUPP);
            }
        }
    }
}
