//! Data path: verified round trips, flush and barrier ordering, discard, read-only disks.

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use rustbk_blkfront::Frontend;
use rustbk_blkfront::workload::{self, DiskModel, Pattern, Workload};
use rustbk_ring::{
    GrantRef, IndirectRefs, Request, RwOp, SEGS_PER_INDIRECT_FRAME, Sector, Segment, Segments,
    SharedMemory, encode_indirect_segments, op, status,
};

use crate::harness::{Guest, Host, Setup, pattern};

/// Runs a verifying workload; `fresh`: the region was never written, so unwritten blocks must
/// read zeros (later runs only check what they wrote themselves).
fn verify_run(
    g: &mut Guest,
    block_size: usize,
    pattern: Pattern,
    qd: u32,
    fresh: bool,
) -> workload::Report {
    let w = Workload {
        pattern,
        read_percent: 50,
        block_size,
        queue_depth: qd,
        duration: Duration::from_secs(2),
        max_ops: Some(3000),
        verify: true,
        fresh,
        region: Some(16 << 20),
        flush_every: Some(8),
        seed: block_size as u64,
        rate: None,
    };
    let r = workload::run(&mut g.front, &w, &mut |_| {}).expect("workload");
    assert_eq!(r.mismatches, 0, "{r:?}");
    assert_eq!(r.errors, 0, "{r:?}");
    assert!(r.reads > 0 && r.writes > 0 && r.flushes > 0, "{r:?}");
    r
}

#[test]
fn disk_model_keeps_verifying_across_a_reconnect() {
    let host = Host::new(Setup::default());
    let mut g = host.guest();
    let writes = Workload {
        read_percent: 0,
        queue_depth: 4,
        duration: Duration::from_secs(20),
        max_ops: Some(1500),
        region: Some(1 << 20),
        flush_every: Some(8),
        seed: 11,
        ..Workload::default()
    };
    let mut model = DiskModel::for_workload(&g.front, &writes).unwrap();
    let r = workload::run_with_model(&mut g.front, &writes, &mut model, &mut |_| {}).unwrap();
    assert_eq!(
        (r.errors, r.mismatches, r.writes + r.flushes),
        (0, 0, 1500),
        "{r:?}"
    );
    let reads = Workload {
        read_percent: 100,
        max_ops: Some(300),
        ..writes.clone()
    };
    let reconnect = |g: Guest| {
        let closed = g.front.close().unwrap();
        let front = Frontend::connect(closed.dom, closed.xs, closed.frames, g.cfg.clone());
        Guest::from_parts(front.expect("reconnect"), g.cfg)
    };

    // After a reboot the guest still knows what it wrote, and the disk still holds it.
    let mut g = reconnect(g);
    let r = workload::run_with_model(&mut g.front, &reads, &mut model, &mut |_| {}).unwrap();
    assert_eq!((r.errors, r.mismatches, r.reads), (0, 0, 300), "{r:?}");

    // Data changed behind the guest's back: every read after the next reboot is caught.
    let mut image = std::fs::OpenOptions::new()
        .write(true)
        .open(&host.image)
        .unwrap();
    std::io::Write::write_all(&mut image, &vec![0xa5u8; 1 << 20]).unwrap();
    image.sync_all().unwrap();
    let mut g = reconnect(g);
    let r = workload::run_with_model(&mut g.front, &reads, &mut model, &mut |_| {}).unwrap();
    assert_eq!((r.errors, r.mismatches, r.reads), (0, 300, 300), "{r:?}");
}

#[test]
fn verified_round_trips_direct_and_indirect() {
    let host = Host::new(Setup::default());
    let mut g = host.guest_with(|c| c.ring_order = 2);
    verify_run(&mut g, 4096, Pattern::Random, 32, true);
    verify_run(&mut g, 512, Pattern::Random, 8, false);
    // 64 KiB needs 16 segments: indirect requests.
    verify_run(&mut g, 64 << 10, Pattern::Random, 16, false);
    // 1 MiB: 256 segments, the most the backend advertises.
    verify_run(&mut g, 1 << 20, Pattern::Sequential, 4, false);
}

/// What Linux blkfront does with an I/O larger than the backend takes in one request: it
/// sends it in parts (44 KiB each without indirect requests), and the I/O is done when every
/// part is answered.
#[test]
fn blocks_larger_than_a_request_takes_go_in_parts_and_verify() {
    // (segments offered, block size, requests per block)
    let cases = [
        (0u32, 1usize << 20, 24u64),
        (0, (1 << 20) + 4096, 24),
        (32, 1 << 20, 8),
        (32, (1 << 20) + 4096, 9),
    ];
    for (offered, block_size, parts) in cases {
        let host = Host::new(Setup {
            backend_args: vec!["--max-indirect-segments".into(), offered.to_string()],
            ..Setup::default()
        });
        let mut g = host.guest_with(|c| c.ring_order = 1);
        assert_eq!(g.front.disk().max_indirect_segments, offered);
        let r = verify_run(&mut g, block_size, Pattern::Random, 2, true);
        let out = crate::harness::ctl(&host, &["stats", "--output=json"]);
        let stats: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats");
        let requests = stats[0]["stats"]["requests"].as_u64();
        assert_eq!(
            requests,
            Some(parts * (r.reads + r.writes) + r.flushes),
            "{offered} segments, blocks of {block_size}: {r:?}"
        );
    }
}

#[test]
fn verified_round_trips_without_persistent_grants() {
    let host = Host::new(Setup::default());
    let mut g = host.guest_with(|c| c.persistent = false);
    assert!(!g.front.disk().persistent);
    verify_run(&mut g, 4096, Pattern::Random, 32, true);
    verify_run(&mut g, 64 << 10, Pattern::Random, 8, false);
}

#[test]
fn flush_is_answered_after_earlier_writes_and_barrier_orders_both_ways() {
    let host = Host::new(Setup::default());
    let mut g = host.guest();
    let (first, refs) = g.pages(8, true);
    g.dom()
        .ram()
        .write(Guest::frame_addr(first), &pattern(8 * 4096, 9))
        .unwrap();
    let mut before = Vec::new();
    for (i, r) in refs.iter().enumerate() {
        let req = g.rw(RwOp::Write, i as u64 * 8, std::slice::from_ref(r));
        before.push(req.id());
        g.front.push(&req).unwrap();
    }
    let flush = g.no_data(RwOp::Flush);
    g.front.push(&flush).unwrap();
    let barrier = g.rw(RwOp::WriteBarrier, 1024, &refs[..2]);
    g.front.push(&barrier).unwrap();
    let mut after = Vec::new();
    for r in &refs[2..6] {
        let req = g.rw(RwOp::Write, 2048, std::slice::from_ref(r));
        after.push(req.id());
        g.front.push(&req).unwrap();
    }
    g.front.kick().unwrap();
    let order: Vec<(u64, i16, u8)> = g
        .collect(8 + 2 + 4)
        .iter()
        .map(|r| (r.id, r.status, r.op))
        .collect();
    assert!(
        order.iter().all(|(_, st, _)| *st == status::OKAY),
        "{order:?}"
    );
    let pos = |id: u64| order.iter().position(|(i, _, _)| *i == id).unwrap();
    let last_before = before.iter().map(|id| pos(*id)).max().unwrap();
    assert!(
        pos(flush.id()) > last_before,
        "flush answered before an earlier write: {order:?}"
    );
    assert!(
        pos(barrier.id()) > last_before,
        "barrier answered before an earlier write: {order:?}"
    );
    assert!(
        after.iter().all(|id| pos(*id) > pos(barrier.id())),
        "a later write passed the barrier: {order:?}"
    );
    assert_eq!(order[pos(flush.id())].2, op::FLUSH_DISKCACHE);
    assert_eq!(order[pos(barrier.id())].2, op::WRITE_BARRIER);
    let (st, data) = g.read(1024, 2);
    assert_eq!(
        (st, data),
        (status::OKAY, pattern(8 * 4096, 9)[..8192].to_vec()),
        "barrier data"
    );
}

#[test]
fn discard_reads_back_zeros_and_frees_space() {
    let host = Host::new(Setup::default());
    let mut g = host.guest();
    let data = pattern(11 * 4096, 5);
    for i in 0..24u64 {
        assert_eq!(g.write(i * 88, &data), status::OKAY);
    }
    let blocks_before = std::fs::metadata(&host.image).unwrap().blocks();
    let id = g.id();
    let discard = Request::Discard {
        id,
        secure: false,
        sector: Sector(0),
        nr_sectors: 24 * 88,
    };
    g.send(&discard);
    let rsp = g.wait(id);
    assert_eq!((rsp.status, rsp.op), (status::OKAY, op::DISCARD));
    let (st, back) = g.read(88, 11);
    assert_eq!(st, status::OKAY);
    assert!(
        back.iter().all(|b| *b == 0),
        "discarded range must read zeros"
    );
    let blocks_after = std::fs::metadata(&host.image).unwrap().blocks();
    assert!(
        blocks_after + 1024 < blocks_before,
        "space not freed: {blocks_before} -> {blocks_after}"
    );
}

#[test]
fn read_only_disk_refuses_writes_and_discards_but_serves_reads() {
    let host = Host::new(Setup {
        read_only: true,
        ..Setup::default()
    });
    let mut g = host.guest();
    assert_eq!(g.front.disk().info & 4, 4, "info must carry VDISK_READONLY");
    assert!(!g.front.disk().discard);
    assert_eq!(g.write(0, &pattern(4096, 1)), status::ERROR);
    let id = g.id();
    g.send(&Request::Discard {
        id,
        secure: false,
        sector: Sector(0),
        nr_sectors: 8,
    });
    assert_ne!(g.wait(id).status, status::OKAY);
    let barrier = g.rw(RwOp::WriteBarrier, 0, &[]);
    let (first, refs) = g.pages(1, true);
    let with_data = g.rw(RwOp::Flush, 0, &refs);
    g.send(&with_data);
    assert_eq!(
        g.wait(with_data.id()).status,
        status::ERROR,
        "flush with data writes"
    );
    g.release(first, &refs);
    g.send(&barrier);
    assert_eq!(
        g.wait(barrier.id()).status,
        status::OKAY,
        "a barrier without data is harmless"
    );
    let (st, data) = g.read(0, 1);
    assert_eq!(st, status::OKAY);
    assert!(data.iter().all(|b| *b == 0));
}

#[test]
fn sector_size_4096_disk_refuses_misaligned_requests() {
    let host = Host::new(Setup {
        backend_args: vec!["--sector-size".into(), "4096".into()],
        ..Setup::default()
    });
    let mut g = host.guest();
    assert_eq!(g.front.disk().sector_size, 4096);
    let data = pattern(8192, 11);
    assert_eq!(g.write(16, &data), status::OKAY, "4 KiB aligned");
    assert_eq!(g.read(16, 2), (status::OKAY, data));
    assert_eq!(
        g.write(12, &pattern(4096, 1)),
        status::ERROR,
        "start not 4 KiB aligned"
    );
    let (first, refs) = g.pages(1, true);
    let half = Segment {
        gref: refs[0],
        first_sect: 0,
        last_sect: 3,
    };
    let id = g.id();
    let req = Request::Rw {
        id,
        op: RwOp::Write,
        handle: 0,
        sector: Sector(8),
        segments: Segments::from_slice(&[half]).unwrap(),
    };
    g.send(&req);
    assert_eq!(
        g.wait(id).status,
        status::ERROR,
        "a 2 KiB segment on a 4 KiB disk"
    );
    g.release(first, &refs);
}

/// Sends an indirect request of `nr` one-sector segments (segment `i` is sector `i % 8` of data
/// page `i / 8`, so the data is contiguous in the guest's pages) and returns its status.
fn many_segments(g: &mut Guest, rw: RwOp, sector: u64, nr: usize, data: &[GrantRef]) -> i16 {
    let segs: Vec<Segment> = (0..nr)
        .map(|i| Segment {
            gref: data[i / 8],
            first_sect: (i % 8) as u8,
            last_sect: (i % 8) as u8,
        })
        .collect();
    let needed = nr.div_ceil(SEGS_PER_INDIRECT_FRAME) as u32;
    let (first, indirect) = g.pages(needed, true);
    let views: Vec<_> = (0..needed)
        .map(|i| g.dom().ram().pages_view(first + i, 1).unwrap())
        .collect();
    let pages: Vec<&dyn SharedMemory> = views.iter().map(|v| v as &dyn SharedMemory).collect();
    encode_indirect_segments(&pages, &segs).unwrap();
    let req = Request::Indirect {
        id: g.id(),
        op: rw,
        handle: 0,
        sector: Sector(sector),
        nr_segments: nr as u16,
        indirect_grefs: IndirectRefs::from_slice(&indirect).unwrap(),
    };
    g.send(&req);
    let st = g.wait(req.id()).status;
    g.release(first, &indirect);
    st
}

#[test]
fn indirect_requests_of_257_to_4096_segments_over_1_to_8_pages_round_trip() {
    let host = Host::new(Setup {
        backend_args: vec!["--max-indirect-segments".into(), "4096".into()],
        ..Setup::default()
    });
    // Without persistent grants every page goes back to the guest after each request.
    let mut g = host.guest_with(|c| c.persistent = false);
    assert_eq!(g.front.disk().max_indirect_segments, 4096);
    for (round, nr) in [257usize, 512, 513, 1024, 1537, 2048, 3584, 4095, 4096]
        .into_iter()
        .enumerate()
    {
        let sector = round as u64 * 8192;
        let bytes = nr * 512;
        let want = pattern(bytes, round as u8 + 1);
        let pages = nr.div_ceil(8) as u32;
        let (src, src_refs) = g.pages(pages, true);
        g.dom().ram().write(Guest::frame_addr(src), &want).unwrap();
        let st = many_segments(&mut g, RwOp::Write, sector, nr, &src_refs);
        assert_eq!(st, status::OKAY, "write of {nr} segments");
        g.release(src, &src_refs);
        let (dst, dst_refs) = g.pages(pages, false);
        let st = many_segments(&mut g, RwOp::Read, sector, nr, &dst_refs);
        assert_eq!(st, status::OKAY, "read of {nr} segments");
        let mut got = vec![0u8; bytes];
        g.dom()
            .ram()
            .read(Guest::frame_addr(dst), &mut got)
            .unwrap();
        g.release(dst, &dst_refs);
        assert!(got == want, "{nr} segments: data read back differs");
        let file = std::fs::read(&host.image).unwrap();
        let at = sector as usize * 512;
        assert!(file[at..at + bytes] == want, "{nr} segments: image differs");
    }
}
