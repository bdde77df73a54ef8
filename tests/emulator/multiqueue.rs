//! Multi-queue devices: a frontend with several rings (`multi-queue-num-queues`, `queue-N/`
//! keys), each served by its own backend worker, on raw, qcow2 and thin disks; and frontends
//! that publish bad queue keys.

use std::time::Duration;

use rustbk_blkfront::Tamper;
use rustbk_blkfront::workload::{self, Pattern, Workload};
use rustbk_ring::{PAGE_SIZE, RwOp, status};

use crate::harness::{Guest, Host, Setup, pattern};
use crate::qcow2::{qcow2, qemu_img};

/// A backend offering up to four queues, serving `format` (raw when `None`).
fn setup(format: Option<&'static str>) -> Setup {
    Setup {
        format,
        backend_args: vec!["--max-queues".into(), "4".into()],
        ..Setup::default()
    }
}

fn verifying(seed: u64) -> Workload {
    Workload {
        pattern: Pattern::Random,
        read_percent: 50,
        block_size: 8 << 10,
        queue_depth: 32,
        duration: Duration::from_secs(3),
        max_ops: Some(4000),
        verify: true,
        fresh: true,
        region: Some(32 << 20),
        flush_every: Some(16),
        seed,
        rate: None,
    }
}

/// Runs the verifying workload over every queue of `g`; data checked, flushes answered.
fn verify_run(g: &mut Guest, seed: u64) {
    let r = workload::run(&mut g.front, &verifying(seed), &mut |_| {}).expect("workload");
    assert_eq!((r.mismatches, r.errors), (0, 0), "{r:?}");
    assert!(r.reads > 0 && r.writes > 0 && r.flushes > 0, "{r:?}");
}

/// A write then a read on each queue alone, beyond the workload region: a queue the backend
/// does not serve times out.
fn each_queue_serves(g: &mut Guest, seed: u8) {
    for q in 0..g.front.queue_count() {
        g.front.select_queue(q).unwrap();
        let sector = 100_000 + q as u64 * 8;
        let data = pattern(PAGE_SIZE, seed.wrapping_add(q as u8));
        assert_eq!(g.write(sector, &data), status::OKAY, "queue {q}");
        assert_eq!(g.read(sector, 1), (status::OKAY, data), "queue {q}");
    }
    g.front.select_queue(0).unwrap();
}

/// The frontend keys a guest with `queues` rings published.
fn assert_published(host: &Host, queues: u32) {
    let xs = host.cluster.toolstack().unwrap();
    let fe = "/local/domain/1/device/vbd/51712";
    let num = xs
        .try_read(&format!("{fe}/multi-queue-num-queues"))
        .unwrap();
    let flat = xs.try_read(&format!("{fe}/ring-ref")).unwrap();
    let q1 = xs.try_read(&format!("{fe}/queue-1/event-channel")).unwrap();
    if queues == 1 {
        assert_eq!((num, flat.is_some(), q1), (None, true, None));
    } else {
        assert_eq!(num, Some(queues.to_string()));
        assert!(flat.is_none() && q1.is_some());
    }
}

#[test]
fn raw_disk_with_two_and_four_queues_verifies_data_and_flushes() {
    for queues in [2, 4] {
        let host = Host::new(setup(None));
        let mut g = host.guest_with(|c| c.queues = queues);
        assert_eq!(host.xenstore_read_cli("multi-queue-max-queues"), "4");
        assert_eq!(g.front.disk().queues, queues);
        assert_published(&host, queues);
        each_queue_serves(&mut g, 3);
        verify_run(&mut g, u64::from(queues));
        g.front.close().unwrap();
    }
}

#[test]
fn queues_with_multi_page_rings_verify_data() {
    let host = Host::new(setup(None));
    let mut g = host.guest_with(|c| {
        c.queues = 2;
        c.ring_order = 2;
    });
    assert_eq!((g.front.disk().queues, g.front.disk().ring_order), (2, 2));
    each_queue_serves(&mut g, 5);
    verify_run(&mut g, 9);
}

#[test]
fn a_frontend_asking_for_one_queue_uses_the_flat_keys_and_works() {
    let host = Host::new(setup(None));
    let mut g = host.guest_with(|c| c.queues = 1);
    assert_eq!(g.front.disk().queues, 1);
    assert_published(&host, 1);
    verify_run(&mut g, 1);
}

#[test]
fn a_frontend_asking_for_more_queues_than_offered_gets_what_is_offered() {
    let host = Host::new(Setup {
        backend_args: vec!["--max-queues".into(), "2".into()],
        ..Setup::default()
    });
    let mut g = host.guest_with(|c| c.queues = 4);
    assert_eq!(host.xenstore_read_cli("multi-queue-max-queues"), "2");
    assert_eq!(g.front.disk().queues, 2);
    each_queue_serves(&mut g, 11);
}

#[test]
fn qcow2_disk_with_two_and_four_queues_verifies_data_and_stays_clean() {
    for queues in [2, 4] {
        let host = Host::serving(setup(Some("qcow2")), |dir| {
            qcow2(dir, "disk.qcow2", "cluster_size=65536", None)
        });
        let mut g = host.guest_with(|c| c.queues = queues);
        assert_eq!(g.front.disk().queues, queues);
        each_queue_serves(&mut g, 7);
        verify_run(&mut g, 100 + u64::from(queues));
        g.front.close().unwrap();
        // The backend still has the image open (locked as a running QEMU would): -U.
        qemu_img(&["check", "-U", &host.image.display().to_string()]);
    }
}

/// Sectors of a 64 KiB cluster.
const CLUSTER_SECTORS: u64 = 128;

/// Where the allocation races start: 40 MiB, beyond the workload's region.
const RACE_SECTOR: u64 = (40 << 20) / 512;

/// Writes one page into each of `clusters` unallocated clusters from [`RACE_SECTOR`] on, from
/// every queue at once (queue q writes page q of the cluster), then reads every cluster back.
fn race_allocations(g: &mut Guest, clusters: u64) {
    let queues = g.front.queue_count();
    for c in 0..clusters {
        let mut sent = Vec::new();
        for q in 0..queues {
            let (first, refs) = g.pages(1, true);
            let data = pattern(PAGE_SIZE, (c as usize * queues + q) as u8);
            g.dom()
                .ram()
                .write(Guest::frame_addr(first), &data)
                .unwrap();
            let at = RACE_SECTOR + c * CLUSTER_SECTORS + q as u64 * 8;
            let req = g.rw(RwOp::Write, at, &refs);
            g.front.push_to(q, &req).unwrap();
            sent.push((req.id(), first, refs));
        }
        // One kick notifies every queue: their workers allocate the cluster together.
        g.front.kick().unwrap();
        for (id, first, refs) in sent {
            assert_eq!(g.wait(id).status, status::OKAY, "cluster {c}");
            g.release(first, &refs);
        }
    }
    for c in 0..clusters {
        // Two reads of eight pages: a direct request holds at most 11 segments.
        let at = RACE_SECTOR + c * CLUSTER_SECTORS;
        let (st0, mut data) = g.read(at, 8);
        let (st1, high) = g.read(at + 64, 8);
        assert_eq!((st0, st1), (status::OKAY, status::OKAY));
        data.extend(high);
        for (page, got) in data.chunks(PAGE_SIZE).enumerate() {
            let want = match page < queues {
                true => pattern(PAGE_SIZE, (c as usize * queues + page) as u8),
                false => vec![0; PAGE_SIZE],
            };
            assert!(got == want, "cluster {c} page {page} is wrong");
        }
    }
}

#[test]
fn qcow2_queues_allocating_the_same_cluster_at_once_keep_every_write() {
    let host = Host::serving(setup(Some("qcow2")), |dir| {
        qcow2(dir, "disk.qcow2", "cluster_size=65536", None)
    });
    let mut g = host.guest_with(|c| c.queues = 4);
    assert_eq!(g.front.disk().queues, 4);
    race_allocations(&mut g, 64);
    g.front.close().unwrap();
    let image = host.image.display().to_string();
    qemu_img(&["check", "-U", &image]);
    // An independent reader sees the same data.
    let raw = host.image.with_extension("raw");
    qemu_img(&[
        "convert",
        "-U",
        "-O",
        "raw",
        &image,
        &raw.display().to_string(),
    ]);
    let data = std::fs::read(&raw).unwrap();
    for c in 0..64usize {
        for q in 0..4 {
            let at = (40 << 20) + c * 65536 + q * PAGE_SIZE;
            assert!(
                data[at..at + PAGE_SIZE] == pattern(PAGE_SIZE, (c * 4 + q) as u8)[..],
                "qemu-img reads cluster {c} page {q} wrong"
            );
        }
    }
}

#[test]
fn thin_volume_with_two_queues_verifies_data_and_passes_thin_check() {
    let mut host = Host::serving(
        Setup {
            backend_args: vec!["--max-queues".into(), "2".into()],
            ..crate::thin::thin_setup()
        },
        crate::thin::pool_with_volume,
    );
    let mut g = host.guest_with(|c| c.queues = 2);
    assert_eq!(g.front.disk().queues, 2);
    each_queue_serves(&mut g, 13);
    race_allocations(&mut g, 16);
    verify_run(&mut g, 21);
    g.front.close().unwrap();
    host.cluster.remove_disk(&host.spec).unwrap();
    crate::thin::thin_checks(&crate::thin::metadata_of(&host.image));
}

/// A frontend publishing two rings with `tamper` applied is refused: the backend goes to
/// Closing with an `error` node naming `key` and saying `why`, and does not panic.
fn refused(tamper: Vec<Tamper>, key: &str, why: &str) {
    let host = Host::new(Setup {
        backend_args: vec!["--max-queues".into(), "2".into()],
        ..Setup::default()
    });
    let res = host.try_guest_with(|c| {
        c.queues = 2;
        c.tamper = tamper.clone();
        c.timeout = Duration::from_secs(10);
    });
    assert!(res.is_err(), "{tamper:?} was accepted");
    let xs = host.cluster.toolstack().unwrap();
    let be = host.spec.backend_path();
    assert_eq!(
        xs.try_read(&format!("{be}/state")).unwrap().as_deref(),
        Some("5")
    );
    let error = xs
        .try_read(&format!("{be}/error"))
        .unwrap()
        .unwrap_or_default();
    assert!(
        error.starts_with("22 ") && error.contains(key) && error.contains(why),
        "{tamper:?}: error node {error:?}"
    );
    let log = host.backend_log();
    assert!(!log.contains("panicked"), "{tamper:?}: {log}");
}

fn write(key: &str, value: &str) -> Tamper {
    Tamper::Write(key.into(), value.into())
}

#[test]
fn zero_queues_are_refused() {
    let tamper = vec![write("multi-queue-num-queues", "0")];
    refused(tamper, "multi-queue-num-queues", "at least one queue");
}

#[test]
fn more_queues_than_offered_are_refused() {
    let tamper = vec![
        write("multi-queue-num-queues", "3"),
        write("queue-2/ring-ref", "9"),
        write("queue-2/event-channel", "9"),
    ];
    refused(
        tamper,
        "multi-queue-num-queues",
        "above multi-queue-max-queues 2",
    );
}

#[test]
fn a_missing_queue_key_is_refused() {
    let tamper = vec![Tamper::Remove("queue-1/event-channel".into())];
    refused(tamper, "queue-1/event-channel", "missing");
    let tamper = vec![Tamper::Remove("queue-1".into())];
    refused(tamper, "queue-1/ring-ref", "missing");
}

#[test]
fn a_ring_ref_shared_by_two_queues_is_refused() {
    let tamper = vec![Tamper::Copy(
        "queue-0/ring-ref".into(),
        "queue-1/ring-ref".into(),
    )];
    refused(tamper, "queue-1/ring-ref", "more than one ring page");
}

#[test]
fn overlapping_multi_page_rings_are_refused() {
    let host_order = |tamper: Vec<Tamper>| {
        let mut t = vec![
            write("ring-page-order", "1"),
            Tamper::Remove("queue-0/ring-ref".into()),
            Tamper::Remove("queue-1/ring-ref".into()),
        ];
        t.extend(tamper);
        t
    };
    // Ring orders are normally set by the frontend; here the keys are written by hand: the
    // ring references must be real grants only when the keys pass the checks.
    let tamper = host_order(vec![
        write("queue-0/ring-ref0", "100"),
        write("queue-0/ring-ref1", "101"),
        write("queue-1/ring-ref0", "101"),
        write("queue-1/ring-ref1", "102"),
    ]);
    refused(tamper, "queue-1/ring-ref0", "more than one ring page");
}

#[test]
fn an_event_channel_shared_by_two_queues_is_refused() {
    let tamper = vec![Tamper::Copy(
        "queue-0/event-channel".into(),
        "queue-1/event-channel".into(),
    )];
    refused(tamper, "queue-1/event-channel", "more than one queue");
}

#[test]
fn non_numeric_queue_keys_are_refused() {
    refused(
        vec![write("multi-queue-num-queues", "two")],
        "multi-queue-num-queues",
        "not a number",
    );
    refused(
        vec![write("queue-1/ring-ref", "0x10")],
        "queue-1/ring-ref",
        "not a number",
    );
}
