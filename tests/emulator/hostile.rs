//! A hostile frontend: every malformed or forbidden request gets an error response with its id,
//! and the backend keeps serving; a ring overflow disconnects the device.

use std::time::{Duration, Instant};

use rustbk_ring::{
    Abi, DomId, GrantRef, Request, RwOp, Sector, Segment, Segments, encode_request, status,
};

use crate::harness::{Guest, Host, Setup, pattern};

/// One bad request and the status it must get.
pub(crate) struct Case {
    pub name: &'static str,
    pub entry: Vec<u8>,
    pub id: u64,
    pub want: i16,
}

fn entry(req: &Request) -> Vec<u8> {
    let mut e = vec![0u8; Abi::X86_64.request_size()];
    encode_request(Abi::X86_64, req, &mut e);
    e
}

fn one_seg(g: &mut Guest, op: RwOp, sector: u64, seg: Segment) -> Request {
    let id = g.id();
    Request::Rw {
        id,
        op,
        handle: 0,
        sector: Sector(sector),
        segments: Segments::from_slice(&[seg]).unwrap(),
    }
}

pub(crate) fn cases(g: &mut Guest, disk_sectors: u64) -> Vec<Case> {
    let l = Abi::X86_64.layout();
    let (_, good) = g.pages(11, false);
    let seg = |gref: GrantRef, first: u8, last: u8| Segment {
        gref,
        first_sect: first,
        last_sect: last,
    };
    let mut out = Vec::new();
    let mut push = |name, req: Request, patch: &dyn Fn(&mut Vec<u8>), want| {
        let mut e = entry(&req);
        patch(&mut e);
        out.push(Case {
            name,
            entry: e,
            id: req.id(),
            want,
        });
    };
    let zero = Request::Rw {
        id: g.id(),
        op: RwOp::Read,
        handle: 0,
        sector: Sector(0),
        segments: Segments::new(),
    };
    push("0 segments", zero, &|_| {}, status::ERROR);
    let full = g.rw(RwOp::Read, 0, &good);
    push(
        "12 segments",
        full,
        &|e| e[l.rw_nr_segments] = 12,
        status::ERROR,
    );
    let inverted = one_seg(g, RwOp::Read, 0, seg(good[0], 5, 2));
    push("first_sect > last_sect", inverted, &|_| {}, status::ERROR);
    let eight = one_seg(g, RwOp::Write, 0, seg(good[0], 0, 8));
    push("last_sect 8", eight, &|_| {}, status::ERROR);
    let past = one_seg(g, RwOp::Read, disk_sectors - 4, seg(good[0], 0, 7));
    push("range past the end", past, &|_| {}, status::ERROR);
    let wrap = one_seg(g, RwOp::Read, u64::MAX - 2, seg(good[0], 0, 7));
    push("sector overflow", wrap, &|_| {}, status::ERROR);
    let unknown = one_seg(g, RwOp::Read, 0, seg(good[0], 0, 7));
    push(
        "unknown op",
        unknown,
        &|e| e[l.req_operation] = 42,
        status::EOPNOTSUPP,
    );
    let invalid = one_seg(g, RwOp::Read, 0, seg(GrantRef(4000), 0, 7));
    push("invalid grant", invalid, &|_| {}, status::ERROR);
    let frame = g.front.frames_mut().alloc(1).unwrap();
    let foreign = g.dom().grant(DomId(9), frame, false).unwrap();
    let other = one_seg(g, RwOp::Read, 0, seg(foreign, 0, 7));
    push("grant for another domid", other, &|_| {}, status::ERROR);
    let ro = g.dom().grant(crate::harness::BACKEND, frame, true).unwrap();
    let ro_read = one_seg(g, RwOp::Read, 0, seg(ro, 0, 7));
    push(
        "read-only grant used for READ",
        ro_read,
        &|_| {},
        status::ERROR,
    );
    let past_grant_table = one_seg(g, RwOp::Write, 0, seg(GrantRef(u32::MAX), 0, 7));
    push(
        "grant beyond the table",
        past_grant_table,
        &|_| {},
        status::ERROR,
    );
    // Without data the sector is never range-checked, and must never be turned into bytes.
    for (name, op) in [
        ("flush without data at sector 2^55", RwOp::Flush),
        ("barrier without data at sector 2^55", RwOp::WriteBarrier),
    ] {
        let huge = Request::Rw {
            id: g.id(),
            op,
            handle: 0,
            sector: Sector(1 << 55),
            segments: Segments::new(),
        };
        push(name, huge, &|_| {}, status::OKAY);
    }
    out
}

/// A good write and read back, proving the backend still serves.
pub(crate) fn still_serves(g: &mut Guest, round: u64) {
    let data = pattern(4096, round as u8);
    assert_eq!(
        g.write(4096 + round * 8, &data),
        status::OKAY,
        "write after bad request {round}"
    );
    assert_eq!(
        g.read(4096 + round * 8, 1),
        (status::OKAY, data),
        "read after bad request {round}"
    );
}

#[test]
fn every_bad_request_gets_an_error_response_and_service_continues() {
    every_bad_request_is_answered_on(&Host::new(Setup::default()));
}

/// Sends every hostile case to `host`'s disk: each gets its error response, and the disk goes
/// on serving (shared by the data paths' tests).
pub(crate) fn every_bad_request_is_answered_on(host: &Host) {
    let mut g = host.guest();
    let sectors = g.front.disk().sectors;
    for (round, case) in cases(&mut g, sectors).into_iter().enumerate() {
        g.front.ring_mut().push_raw(&case.entry).unwrap();
        g.front.kick().unwrap();
        let rsp = g.wait(case.id);
        assert_eq!(rsp.status, case.want, "{}: {rsp:?}", case.name);
        still_serves(&mut g, round as u64);
    }
    assert_eq!(g.front.backend_state().unwrap(), 4, "still connected");
}

#[test]
fn bad_requests_mixed_into_a_batch_do_not_disturb_good_ones() {
    let host = Host::new(Setup::default());
    let mut g = host.guest();
    let sectors = g.front.disk().sectors;
    let bad: Vec<Case> = cases(&mut g, sectors).into_iter().take(6).collect();
    let (first, refs) = g.pages(6, true);
    g.dom()
        .ram()
        .write(Guest::frame_addr(first), &pattern(6 * 4096, 77))
        .unwrap();
    let mut good_ids = Vec::new();
    for (case, gref) in bad.iter().zip(&refs) {
        let req = g.rw(
            RwOp::Write,
            8192 + good_ids.len() as u64 * 8,
            std::slice::from_ref(gref),
        );
        good_ids.push(req.id());
        g.front.push(&req).unwrap();
        g.front.ring_mut().push_raw(&case.entry).unwrap();
    }
    g.front.kick().unwrap();
    for id in good_ids {
        assert_eq!(g.wait(id).status, status::OKAY);
    }
    for case in &bad {
        assert_eq!(g.wait(case.id).status, case.want, "{}", case.name);
    }
    let (st, data) = g.read(8192, 6);
    assert_eq!((st, data), (status::OKAY, pattern(6 * 4096, 77)));
}

#[test]
fn ring_overflow_disconnects_the_device() {
    let host = Host::new(Setup::default());
    let mut g = host.guest();
    still_serves(&mut g, 0);
    // req_prod far ahead of rsp_prod: more unanswered requests than the ring holds.
    g.front.ring_mut().force_req_prod(10_000);
    g.front.notify().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while g.front.backend_state().unwrap() != 5 {
        assert!(
            Instant::now() < deadline,
            "backend did not disconnect; log:\n{}",
            host.backend_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        host.backend_log().contains("overflowed the ring"),
        "the overflow must be logged"
    );
}
