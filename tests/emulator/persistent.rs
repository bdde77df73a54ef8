//! Persistent grants: a bounded cache per ring, idle grants given back, and a guest that
//! revokes grants the backend keeps.

use std::time::{Duration, Instant};

use rustbk_blkfront::workload::{self, Pattern, Workload};
use rustbk_grant::emu::EmuDomain;
use rustbk_ring::{GrantRef, RwOp, status};

use crate::harness::{BACKEND, Guest, Host, Setup, pattern};

fn setup(args: &[&str]) -> Setup {
    Setup {
        backend_args: args.iter().map(|a| (*a).to_owned()).collect(),
        ..Setup::default()
    }
}

/// How many of the guest's grant entries the backend has mapped.
pub(crate) fn mapped_grants(dom: &EmuDomain) -> usize {
    (0..)
        .map(|g| dom.grant_in_use(GrantRef(g)))
        .take_while(Result::is_ok)
        .filter(|r| matches!(r, Ok(true)))
        .count()
}

pub(crate) fn wait_for(limit: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !ok() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// A verifying random workload of `block_size` blocks at depth `qd`.
pub(crate) fn verify(g: &mut Guest, block_size: usize, qd: u32, fresh: bool) -> workload::Report {
    let w = Workload {
        pattern: Pattern::Random,
        read_percent: 50,
        block_size,
        queue_depth: qd,
        duration: Duration::from_secs(20),
        max_ops: Some(2000),
        verify: true,
        fresh,
        region: Some(8 << 20),
        flush_every: Some(16),
        seed: block_size as u64 + u64::from(qd),
        rate: None,
    };
    let r = workload::run(&mut g.front, &w, &mut |_| {}).expect("workload");
    assert_eq!((r.errors, r.mismatches), (0, 0), "{r:?}");
    r
}

/// A counter of the stats the backend logs when it exits.
pub(crate) fn logged_counter(log: &str, name: &str) -> u64 {
    let line = log
        .lines()
        .rfind(|l| l.contains("backend exiting"))
        .unwrap_or_else(|| panic!("no exit stats in the log:\n{log}"));
    let at = line.find(&format!("{name}: ")).expect(name) + name.len() + 2;
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().unwrap()
}

#[test]
fn a_frontend_using_more_grants_than_the_cache_holds_keeps_verifying() {
    let mut host = Host::new(setup(&["--max-persistent-grants", "16"]));
    let mut g = host.guest_with(|c| c.ring_order = 1);
    let ring_pages = 2;
    // 32 buffers of one page, then 16 of 16 pages (indirect): 32 and 256 distinct grants.
    verify(&mut g, 4096, 32, true);
    verify(&mut g, 64 << 10, 16, false);
    verify(&mut g, 4096, 32, false);
    let mapped = mapped_grants(g.dom());
    assert!(
        mapped > ring_pages && mapped <= ring_pages + 16,
        "{mapped} grants mapped with a cache of 16"
    );
    let spec = host.spec.clone();
    g.front.close().unwrap();
    host.cluster.remove_disk(&spec).unwrap();
    let log = host.backend_log();
    assert!(logged_counter(&log, "persistent_purged") > 0, "{log}");
    assert!(logged_counter(&log, "persistent_hits") > 0, "{log}");
    assert!(logged_counter(&log, "persistent_misses") > 16, "{log}");
    assert_eq!(logged_counter(&log, "persistent_cached"), 0, "{log}");
}

/// Writes `data` through writable grants `refs` (kept as persistent grants) at `sector`.
pub(crate) fn write_through(
    g: &mut Guest,
    first: u32,
    refs: &[GrantRef],
    sector: u64,
    data: &[u8],
) -> i16 {
    g.dom().ram().write(Guest::frame_addr(first), data).unwrap();
    let req = g.rw(RwOp::Write, sector, refs);
    g.send(&req);
    g.wait(req.id()).status
}

/// Reads one page at `sector` into the page of `first` through `gref`.
pub(crate) fn read_through(
    g: &mut Guest,
    first: u32,
    gref: GrantRef,
    sector: u64,
) -> (i16, Vec<u8>) {
    let req = g.rw(RwOp::Read, sector, &[gref]);
    g.send(&req);
    let st = g.wait(req.id()).status;
    let mut data = vec![0u8; 4096];
    g.dom()
        .ram()
        .read(Guest::frame_addr(first), &mut data)
        .unwrap();
    (st, data)
}

#[test]
fn grants_left_unused_are_unmapped_after_the_configured_time() {
    let host = Host::new(setup(&["--persistent-grant-unused-secs", "1"]));
    let mut g = host.guest();
    let (first, refs) = g.pages(4, false);
    let data = pattern(4 * 4096, 9);
    assert_eq!(write_through(&mut g, first, &refs, 64, &data), status::OKAY);
    let used = Instant::now();
    assert!(refs.iter().all(|r| g.dom().grant_in_use(*r).unwrap()));
    assert!(
        wait_for(Duration::from_secs(10), || {
            refs.iter().all(|r| !g.dom().grant_in_use(*r).unwrap())
        }),
        "grants still mapped; log:\n{}",
        host.backend_log()
    );
    let idle = used.elapsed();
    assert!(
        idle >= Duration::from_millis(900),
        "unmapped after {idle:?}"
    );
    // The guest can take its pages back now; grants made again serve as before.
    for r in &refs {
        g.dom().end_grant(*r).unwrap();
    }
    let again: Vec<GrantRef> = (0..4)
        .map(|i| g.dom().grant(BACKEND, first + i, false).unwrap())
        .collect();
    let (st, back) = read_through(&mut g, first, again[1], 64 + 8);
    assert_eq!((st, &back[..]), (status::OKAY, &data[4096..8192]));
}

#[test]
fn a_guest_revoking_a_kept_grant_gets_errors_and_service_continues() {
    let host = Host::new(setup(&["--persistent-grant-unused-secs", "1"]));
    let mut g = host.guest();
    let (first, refs) = g.pages(2, false);
    let (a, b) = (refs[0], refs[1]);
    let data = pattern(2 * 4096, 21);
    assert_eq!(
        write_through(&mut g, first, &refs, 128, &data),
        status::OKAY
    );
    // As under Xen, a grant the backend has mapped cannot be ended ...
    assert!(g.dom().end_grant(a).is_err());
    // ... and scribbling over the entry leaves the backend's mapping in place: the page the
    // guest granted is still the one served.
    g.dom().revoke_forcibly(a).unwrap();
    let (st, got) = read_through(&mut g, first, a, 128);
    assert_eq!((st, &got[..]), (status::OKAY, &data[..4096]));
    // Once the idle sweep has unmapped it (1 s unused, swept within the next second), the
    // revoked grant gets an error response, and that request leaves its page alone.
    let marker = vec![0x5au8; 4096];
    let mut last = (status::OKAY, Vec::new());
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(2500));
        g.dom()
            .ram()
            .write(Guest::frame_addr(first), &marker)
            .unwrap();
        last = read_through(&mut g, first, a, 128);
        if last.0 == status::ERROR {
            break;
        }
    }
    assert_eq!(last.0, status::ERROR, "log:\n{}", host.backend_log());
    assert!(
        last.1 == marker,
        "an answered-with-error read changed the page"
    );
    // The other grant, and the revoked one granted again, still serve.
    let (st, got) = read_through(&mut g, first + 1, b, 136);
    assert_eq!((st, &got[..]), (status::OKAY, &data[4096..]));
    let a2 = g.dom().grant(BACKEND, first, false).unwrap();
    let (st, got) = read_through(&mut g, first, a2, 128);
    assert_eq!((st, &got[..]), (status::OKAY, &data[..4096]));
    assert!(!host.backend_log().contains("panicked"));
}
