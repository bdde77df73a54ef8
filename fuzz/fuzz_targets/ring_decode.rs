//! Fuzzes everything a guest controls on the blkif ring: raw request entries
//! for both ABIs, a whole ring page (indices included) drained by a
//! `BackRing`, and indirect segment pages.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rustbk_ring::{
    Abi, BackRing, DiskLimits, HeapMemory, PAGE_SIZE, Request, SharedMemory, SharedMemoryExt,
    decode_indirect_segments, decode_request, encode_request, status, validate,
};

const LIMITS: DiskLimits = DiskLimits {
    sectors: 1 << 21,
    sector_size: 512,
    read_only: false,
    discard: true,
    max_indirect_segments: 256,
};

/// Decodes `data` as one entry; a decoded request must re-encode to itself.
fn decode_entry(abi: Abi, data: &[u8]) {
    match decode_request(abi, data) {
        Ok(req) => {
            let mut buf = [0u8; 112];
            let entry = &mut buf[..abi.request_size()];
            encode_request(abi, &req, entry);
            assert_eq!(decode_request(abi, entry), Ok(req));
            if let Request::Rw { segments, .. } = &req {
                let _ = validate(&req, segments.as_slice(), &LIMITS);
            }
        }
        Err(bad) => assert!(bad.status == status::ERROR || bad.status == status::EOPNOTSUPP),
    }
}

/// Serves a ring page whose every byte, indices included, comes from the fuzzer.
fn drain_ring(ctl: u8, page: &[u8]) {
    let abi = if ctl & 1 == 0 {
        Abi::X86_64
    } else {
        Abi::X86_32
    };
    let order = u32::from((ctl >> 1) & 1);
    let mem = HeapMemory::new(1 << order);
    let n = page.len().min(mem.len());
    mem.write_bytes(0, &page[..n]).expect("in bounds");
    let start = mem.load_u32(8).expect("in bounds");
    let Ok(mut back) = BackRing::attach(mem, abi, order, start) else {
        return;
    };
    for _ in 0..2 * back.size() {
        match back.next_request() {
            Err(_) | Ok(None) => break,
            Ok(Some(Ok(req))) => back.push_response(&req.response(status::OKAY)),
            Ok(Some(Err(bad))) => back.push_response(&bad.response()),
        }
    }
    back.push_responses_and_check_notify();
    let _ = back.final_check_for_requests();
}

/// Decodes segments from a fuzzer-filled indirect page.
fn indirect(nr: u16, page: &[u8]) {
    let mem = HeapMemory::new(1);
    let n = page.len().min(PAGE_SIZE);
    mem.write_bytes(0, &page[..n]).expect("in bounds");
    let pages: [&dyn SharedMemory; 1] = [&mem];
    if let Ok(segs) = decode_indirect_segments(&pages, nr) {
        assert_eq!(segs.len(), usize::from(nr));
        assert!(segs.iter().all(|s| s.is_valid()));
    }
}

fuzz_target!(|data: &[u8]| {
    decode_entry(Abi::X86_64, data);
    decode_entry(Abi::X86_32, data);
    if let [ctl, a, b, rest @ ..] = data {
        drain_ring(*ctl, rest);
        indirect(u16::from_le_bytes([*a, *b]), rest);
    }
});
