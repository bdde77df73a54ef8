//! Null disks (`params` = `null:SIZE`): served without any file, every request completes at
//! once, reads return zeros, and `rustbk bench --null` measures the backend on one.

use std::process::Command;
use std::time::{Duration, Instant};

use rustbk_ring::{Request, RwOp, Sector, op, status};

use crate::harness::{Guest, Host, Setup, pattern};

const SIZE: u64 = 64 << 20;

fn null_host() -> Host {
    Host::new(Setup {
        params: Some("null:64M".into()),
        ..Setup::default()
    })
}

/// Reads `pages` pages at `sector` into guest pages first filled with 0xEE; status and data.
fn read_over_garbage(g: &mut Guest, sector: u64, pages: u32) -> (i16, Vec<u8>) {
    let (first, refs) = g.pages(pages, false);
    let len = pages as usize * 4096;
    let addr = Guest::frame_addr(first);
    g.dom().ram().write(addr, &vec![0xEE; len]).unwrap();
    let req = g.rw(RwOp::Read, sector, &refs);
    g.send(&req);
    let st = g.wait(req.id()).status;
    let mut data = vec![0u8; len];
    g.dom().ram().read(addr, &mut data).unwrap();
    g.release(first, &refs);
    (st, data)
}

#[test]
fn null_disk_reads_zeros_and_accepts_writes_flushes_and_discards() {
    let host = null_host();
    let mut g = host.guest();
    let d = g.front.disk().clone();
    assert_eq!(d.sectors, SIZE / 512, "size from params");
    assert!(d.flush && d.discard, "{d:?}");
    let data = pattern(8 * 4096, 3);
    assert_eq!(g.write(128, &data), status::OKAY);
    let flush = g.no_data(RwOp::Flush);
    g.send(&flush);
    assert_eq!(g.wait(flush.id()).status, status::OKAY);
    let id = g.id();
    g.send(&Request::Discard {
        id,
        secure: false,
        sector: Sector(0),
        nr_sectors: 2048,
    });
    let rsp = g.wait(id);
    assert_eq!((rsp.status, rsp.op), (status::OKAY, op::DISCARD));
    for (sector, pages) in [(128, 8), (0, 1), (SIZE / 512 - 8, 1)] {
        let (st, back) = read_over_garbage(&mut g, sector, pages);
        assert_eq!(st, status::OKAY, "read at {sector}");
        assert!(
            back.iter().all(|b| *b == 0),
            "read at {sector} is not zeros"
        );
    }
    let (st, _) = read_over_garbage(&mut g, SIZE / 512, 1);
    assert_eq!(st, status::ERROR, "read past the end");
    assert!(
        host.backend_log().contains("null disk opened"),
        "{}",
        host.backend_log()
    );
}

#[test]
fn null_disk_of_a_partial_sector_is_refused() {
    let host = Host::new(Setup {
        params: Some("null:1000".into()),
        ..Setup::default()
    });
    let why = "null image size 1000 is not a non-zero whole number of 512-byte sectors";
    let deadline = Instant::now() + Duration::from_secs(20);
    while !host.backend_log().contains(why) {
        assert!(Instant::now() < deadline, "{}", host.backend_log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!host.backend_log().contains("null disk opened"));
}

#[test]
fn bench_null_reports_positive_iops_and_worker_cpu_per_request_at_one_and_two_queues() {
    let start = Instant::now();
    let out = bench_null("2");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    assert!(start.elapsed() < Duration::from_secs(60), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let rows = v["rows"].as_array().expect("rows");
    let cases: Vec<(u64, String, u64)> = rows
        .iter()
        .map(|r| {
            let workload = r["workload"].as_str().unwrap().to_owned();
            (
                r["queues"].as_u64().unwrap(),
                workload,
                r["qd"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut want = Vec::new();
    for queues in [1, 2] {
        for (w, qd) in [
            ("randread", 1),
            ("randread", 32),
            ("randwrite", 1),
            ("randwrite", 32),
        ] {
            want.push((queues, format!("{w} 4k"), qd));
        }
    }
    assert_eq!(cases, want);
    for r in rows {
        assert_eq!(
            r["worker_threads"], r["queues"],
            "one worker thread per queue: {r}"
        );
        for key in [
            "iops",
            "worker_cpu_us_per_request",
            "worker_cores",
            "iops_per_core",
        ] {
            let x = r[key].as_f64().unwrap_or(0.0);
            assert!(x > 0.0 && x.is_finite(), "{key} of {r}");
        }
        let cores = r["worker_cores"].as_f64().unwrap();
        let threads = r["worker_threads"].as_f64().unwrap();
        assert!(
            cores <= threads + 0.05,
            "{threads} worker threads used {cores} cores: {r}"
        );
    }
    assert_eq!(v["not_measured"], serde_json::json!([]), "{v}");
}

#[test]
fn bench_null_names_the_queue_counts_the_backend_does_not_offer() {
    let out = bench_null("1");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let rows = v["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 4, "{v}");
    assert!(rows.iter().all(|r| r["queues"] == 1), "{v}");
    let skipped = v["not_measured"].as_array().expect("not_measured");
    assert_eq!(skipped.len(), 1, "{v}");
    assert_eq!(skipped[0]["queues"], 2);
    let why = skipped[0]["why"].as_str().unwrap();
    assert!(why.contains("offers 1 queue"), "{why}");
}

#[test]
fn bench_null_takes_no_image() {
    let out = Command::new(env!("CARGO_BIN_EXE_rustbk"))
        .args(["bench", "--null", "--image", "/nonexistent/disk.img"])
        .output()
        .expect("run rustbk bench");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--image") && stderr.contains("--null"),
        "{stderr}"
    );
}

/// `rustbk bench --null` for one short round with the backend offering `max_queues`.
fn bench_null(max_queues: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rustbk"))
        .args([
            "bench",
            "--null",
            "--runtime",
            "1",
            "--rounds",
            "1",
            "--json",
        ])
        .args(["--size", "64m", "--max-queues", max_queues])
        .output()
        .expect("run rustbk bench")
}
