//! `rustbk daemon`: claims only rustbk's disks, one worker process per guest, restarts a
//! crashed worker without the guest noticing, picks up hot-attached disks, and lets a worker go
//! when its guest has no disk left.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustbk_blkfront::toolstack::VbdSpec;
use rustbk_blkfront::{FrameAlloc, Frontend, FrontendConfig};
use rustbk_ring::{DomId, status};
use rustbk_xenstored::XsClient;

use crate::harness::{GUEST, Guest, Host, Setup, XVDA, pattern};

fn wait_for(what: &str, host: &Host, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; daemon log:\n{}",
            host.cluster.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn round_trip(g: &mut Guest, sector: u64, seed: u8) {
    let data = pattern(8192, seed);
    assert_eq!(g.write(sector, &data), status::OKAY);
    assert_eq!(g.read(sector, 2), (status::OKAY, data));
}

/// The request journal of guest `domid`'s first disk, in the daemon's lock folder.
fn journal_file(host: &Host, domid: u16) -> std::path::PathBuf {
    host.cluster.dir().join(format!("journal-{domid}-{XVDA}-0"))
}

/// The inode of guest `domid`'s first journal: the same one means the journal was kept.
fn journal_inode(host: &Host, domid: u16) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(journal_file(host, domid)).unwrap().ino()
}

fn kill(pid: u32) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
}

#[test]
fn daemon_claims_only_rustbk_disks_with_one_worker_per_guest() {
    let mut host = Host::with_daemon(Setup::default());
    let mut g1 = host.guest();
    round_trip(&mut g1, 0, 1);
    let image2 = host.new_image("two.img", 16 << 20);
    let spec2 = VbdSpec::rustbk(DomId(2), XVDA, image2.display().to_string());
    host.cluster.add_vbd(&spec2).unwrap();
    let mut g2 = host.guest_of(DomId(2), XVDA, |_| {});
    round_trip(&mut g2, 64, 2);
    let journal2 = journal_file(&host, 2);
    assert!(journal2.is_file(), "each ring has a request journal");
    let (p1, p2) = (
        host.cluster.worker_pid(1).unwrap(),
        host.cluster.worker_pid(2).unwrap(),
    );
    assert_ne!(p1, p2, "each guest has its own worker process");

    // A disk for another backend (no script=rustbk) is left alone.
    let image3 = host.new_image("three.img", 16 << 20);
    let spec3 = VbdSpec {
        script: None,
        ..VbdSpec::rustbk(DomId(3), XVDA, image3.display().to_string())
    };
    host.cluster.add_vbd(&spec3).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let xs = host.cluster.toolstack().unwrap();
    assert_eq!(
        xs.read(&format!("{}/state", spec3.backend_path())).unwrap(),
        "1"
    );
    assert!(host.cluster.worker_pid(3).is_none());

    // Guest 2 goes away: its worker ends, guest 1's keeps serving.
    g2.front.close().unwrap();
    host.cluster.remove_disk(&spec2).unwrap();
    wait_for("guest 2's worker to exit", &host, || {
        host.cluster.worker_pid(2).is_none()
    });
    assert!(!journal2.exists(), "a removed disk leaves no journal");
    round_trip(&mut g1, 128, 3);
    assert_eq!(host.cluster.worker_pid(1), Some(p1));
}

#[test]
fn crashed_worker_is_restarted_and_the_guest_keeps_its_disk() {
    let mut host = Host::with_daemon(Setup::default());
    let mut g1 = host.guest();
    round_trip(&mut g1, 0, 4);
    let image2 = host.new_image("two.img", 16 << 20);
    let spec2 = VbdSpec::rustbk(DomId(2), XVDA, image2.display().to_string());
    host.cluster.add_vbd(&spec2).unwrap();
    let mut g2 = host.guest_of(DomId(2), XVDA, |_| {});
    let journal = journal_inode(&host, 1);
    let old = host.cluster.worker_pid(1).unwrap();
    kill(old);
    // The other guest never notices.
    round_trip(&mut g2, 8, 5);
    wait_for("a new worker for guest 1", &host, || {
        host.cluster.worker_pid(1).is_some_and(|p| p != old)
    });
    // Same frontend, same ring: the restarted worker reattached to it, and to its journal.
    round_trip(&mut g1, 256, 6);
    assert_eq!(journal_inode(&host, 1), journal, "the journal was kept");
    let (st, data) = g1.read(0, 2);
    assert_eq!(
        (st, data),
        (status::OKAY, pattern(8192, 4)),
        "data written before the crash"
    );
    let xs = host.cluster.toolstack().unwrap();
    assert_eq!(
        xs.read(&format!("{}/state", host.spec.backend_path()))
            .unwrap(),
        "4"
    );
}

#[test]
fn hot_attached_disk_is_served_by_the_guests_worker() {
    let mut host = Host::with_daemon(Setup::default());
    let mut g1 = host.guest();
    let pid = host.cluster.worker_pid(1).unwrap();
    let image2 = host.new_image("xvdb.img", 16 << 20);
    let xvdb = VbdSpec::rustbk(GUEST, XVDA + 16, image2.display().to_string());
    host.cluster.add_vbd(&xvdb).unwrap();
    // A second frontend of the same guest, on frames the first does not use.
    let mut frames = FrameAlloc::new(4096);
    frames.alloc(2048).unwrap();
    let xs = XsClient::connect(&host.cluster.guest_socket(GUEST.0)).unwrap();
    let cfg = FrontendConfig::new(GUEST, XVDA + 16);
    let front =
        Frontend::connect(Arc::clone(g1.dom()), xs, frames, cfg.clone()).expect("xvdb connects");
    let mut gb = Guest::from_parts(front, cfg);
    round_trip(&mut gb, 0, 7);
    round_trip(&mut g1, 0, 8);
    assert_eq!(
        host.cluster.worker_pid(1),
        Some(pid),
        "the same worker serves both disks"
    );
    gb.front.close().unwrap();
    host.cluster.remove_disk(&xvdb).unwrap();
    round_trip(&mut g1, 16, 9);
}
