//! Online resize: a served disk grows while the guest is connected, and the guest (playing
//! Linux blkfront: a watch on the backend's state, `sectors` re-read on Connected) sees the new
//! size without reconnecting.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustbk_blkfront::workload::{self, Pattern, Workload};
use rustbk_ring::{PAGE_SIZE, status};

use crate::harness::{GUEST, Guest, Host, Setup, XVDA, pattern};
use crate::qcow2::qemu_img;

const MIB: u64 = 1 << 20;
const WAIT: Duration = Duration::from_secs(15);

fn sectors(bytes: u64) -> u64 {
    bytes / 512
}

/// A verifying random workload over the first `region` bytes (the whole disk if `None`).
fn verify_run(g: &mut Guest, region: Option<u64>, fresh: bool, seed: u64) {
    let w = Workload {
        pattern: Pattern::Random,
        read_percent: 50,
        block_size: 16 << 10,
        queue_depth: 8,
        duration: Duration::from_secs(2),
        max_ops: Some(600),
        verify: true,
        fresh,
        region,
        flush_every: Some(16),
        seed,
        rate: None,
    };
    let r = workload::run(&mut g.front, &w, &mut |_| {}).expect("workload");
    assert_eq!((r.mismatches, r.errors), (0, 0), "{r:?}");
    assert!(r.reads > 0 && r.writes > 0, "{r:?}");
}

/// Writes a page at `sector` and reads it back.
fn round_trip(g: &mut Guest, sector: u64, seed: u8) {
    let data = pattern(PAGE_SIZE, seed);
    assert_eq!(g.write(sector, &data), status::OKAY, "write at {sector}");
    let (st, back) = g.read(sector, 1);
    assert_eq!(st, status::OKAY, "read at {sector}");
    assert!(back == data, "data at sector {sector} differs");
}

/// A host serving a disk of `size` bytes in `format` (raw if `None`).
fn setup_of(format: Option<&'static str>, size: u64) -> Setup {
    Setup {
        size,
        format,
        ..Setup::default()
    }
}

/// `rustbk ctl resize` of the guest's disk; `ok OLD NEW` or `error MESSAGE`.
fn ctl_resize(host: &Host, size: u64) -> String {
    let (dom, dev, size) = (GUEST.0.to_string(), XVDA.to_string(), size.to_string());
    let args = ["resize", "--domid", &dom, "--devid", &dev, &size];
    let out = crate::harness::ctl(host, &args);
    if !out.status.success() {
        return format!("error {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = text.split_whitespace().collect();
    match words.as_slice() {
        ["resized", "from", old, "to", new, ..] => format!("ok {old} {new}"),
        _ => panic!("unexpected output of rustbk ctl resize: {text}"),
    }
}

#[test]
fn resize_of_a_raw_file_grown_underneath_reaches_the_connected_guest() {
    let host = Host::new(Setup {
        size: 16 * MIB,
        ..Setup::default()
    });
    let mut g = host.guest();
    assert_eq!(g.front.disk().sectors, sectors(16 * MIB));
    verify_run(&mut g, Some(8 * MIB), true, 1);
    let old_last = sectors(16 * MIB) - 8;
    round_trip(&mut g, old_last, 3);
    assert_eq!(
        g.write(sectors(16 * MIB), &pattern(PAGE_SIZE, 4)),
        status::ERROR
    );

    // The owner grows the file while the guest is connected.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&host.image)
        .and_then(|f| f.set_len(32 * MIB))
        .unwrap();
    g.front
        .wait_for_capacity(sectors(32 * MIB), WAIT)
        .unwrap_or_else(|e| panic!("{e}; backend log:\n{}", host.backend_log()));
    assert_eq!(
        host.xenstore_read_cli("sectors"),
        sectors(32 * MIB).to_string()
    );
    assert_eq!(host.xenstore_read_cli("state"), "4");

    round_trip(&mut g, sectors(16 * MIB), 5);
    round_trip(&mut g, sectors(32 * MIB) - 8, 6);
    let (st, _) = g.read(sectors(32 * MIB), 1);
    assert_eq!(st, status::ERROR, "a read past the new end must fail");
    assert_eq!(
        g.write(sectors(32 * MIB) - 4, &pattern(PAGE_SIZE, 7)),
        status::ERROR,
        "a write across the new end must fail"
    );
    let (st, kept) = g.read(old_last, 1);
    assert_eq!((st, kept == pattern(PAGE_SIZE, 3)), (status::OKAY, true));
    verify_run(&mut g, None, false, 2);
    g.front.close().unwrap();

    let log = host.backend_log();
    assert!(log.contains("disk resized online"), "{log}");
    let on_disk = std::fs::read(&host.image).unwrap();
    let at = |sector: u64| usize::try_from(sector * 512).unwrap();
    let new_end = at(sectors(32 * MIB) - 8);
    assert!(on_disk[new_end..new_end + PAGE_SIZE] == pattern(PAGE_SIZE, 6));
}

#[test]
fn resize_announces_sectors_in_512_byte_units_with_4096_byte_sectors() {
    let host = Host::new(Setup {
        size: 8 * MIB,
        backend_args: vec!["--sector-size".into(), "4096".into()],
        ..Setup::default()
    });
    let mut g = host.guest();
    assert_eq!(g.front.disk().sector_size, 4096);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&host.image)
        .and_then(|f| f.set_len(12 * MIB + 1000))
        .unwrap();
    // The partial last sector is not served: 12 MiB, in 512-byte units.
    g.front.wait_for_capacity(sectors(12 * MIB), WAIT).unwrap();
    round_trip(&mut g, sectors(12 * MIB) - 8, 8);
    let (st, _) = g.read(sectors(12 * MIB), 1);
    assert_eq!(st, status::ERROR);
    g.front.close().unwrap();
}

fn qcow2_image(dir: &Path) -> PathBuf {
    let p = dir.join("disk.qcow2");
    let ps = p.display().to_string();
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4096",
        &ps,
        "64M",
    ]);
    p
}

#[test]
fn resize_grows_a_served_qcow2_through_rustbk_ctl() {
    let setup = setup_of(Some("qcow2"), 64 * MIB);
    let host = Host::serving(setup, qcow2_image);
    let mut g = host.guest();
    verify_run(&mut g, Some(32 * MIB), true, 3);
    round_trip(&mut g, sectors(64 * MIB) - 8, 9);
    // 4 KiB clusters: an L1 entry maps 2 MiB, so 2 GiB needs a larger L1 table than 64 MiB.
    let new = 2048 * MIB;
    let outcome = ctl_resize(&host, new);
    assert_eq!(
        outcome,
        format!("ok {} {new}", 64 * MIB),
        "{}",
        host.backend_log()
    );
    g.front.wait_for_capacity(sectors(new), WAIT).unwrap();
    round_trip(&mut g, sectors(64 * MIB), 10);
    round_trip(&mut g, sectors(new) - 8, 11);
    let (st, _) = g.read(sectors(new), 1);
    assert_eq!(st, status::ERROR, "a read past the new end must fail");
    let (st, kept) = g.read(sectors(64 * MIB) - 8, 1);
    assert_eq!((st, kept == pattern(PAGE_SIZE, 9)), (status::OKAY, true));
    g.front.close().unwrap();

    let image = host.image.display().to_string();
    qemu_img(&["check", "-U", &image]);
    let info = qemu_img(&["info", "-U", "--output=json", &image]);
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains(&format!("\"virtual-size\": {new}")), "{info}");
}

#[test]
fn resize_refuses_to_shrink_a_served_disk_which_keeps_serving() {
    let setup = setup_of(None, 16 * MIB);
    let host = Host::new(setup);
    let mut g = host.guest();
    round_trip(&mut g, sectors(16 * MIB) - 8, 12);
    let outcome = ctl_resize(&host, 8 * MIB);
    assert!(
        outcome.starts_with("error") && outcome.contains("Shrinking a served disk is refused"),
        "{outcome}"
    );
    assert_eq!(
        g.front.check_backend(Duration::from_millis(1500)).unwrap(),
        None
    );
    assert_eq!(g.front.disk().sectors, sectors(16 * MIB));
    assert_eq!(
        host.xenstore_read_cli("sectors"),
        sectors(16 * MIB).to_string()
    );
    assert_eq!(std::fs::metadata(&host.image).unwrap().len(), 16 * MIB);
    let (st, kept) = g.read(sectors(16 * MIB) - 8, 1);
    assert_eq!((st, kept == pattern(PAGE_SIZE, 12)), (status::OKAY, true));
    verify_run(&mut g, None, false, 4);
    // Growing still works after the refusal.
    let outcome = ctl_resize(&host, 20 * MIB);
    assert_eq!(outcome, format!("ok {} {}", 16 * MIB, 20 * MIB));
    g.front.wait_for_capacity(sectors(20 * MIB), WAIT).unwrap();
    // A file truncated underneath is not taken up either.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&host.image)
        .and_then(|f| f.set_len(12 * MIB))
        .unwrap();
    assert_eq!(
        g.front.check_backend(Duration::from_millis(2500)).unwrap(),
        None
    );
    assert_eq!(
        host.xenstore_read_cli("sectors"),
        sectors(20 * MIB).to_string()
    );
    let log = host.backend_log();
    assert!(log.contains("shrank underneath"), "{log}");
    g.front.close().unwrap();
}

#[test]
fn resize_grows_a_served_thin_volume_through_its_pool_and_takes_up_thin_resize() {
    let setup = setup_of(Some("thin"), 64 * MIB);
    let host = Host::serving(setup, crate::thin::pool_with_volume);
    let mut g = host.guest();
    assert_eq!(g.front.disk().sectors, sectors(64 * MIB));
    round_trip(&mut g, sectors(64 * MIB) - 8, 13);
    // Through the entry point: the pool's volume grows, then the served disk.
    let outcome = ctl_resize(&host, 96 * MIB);
    assert_eq!(
        outcome,
        format!("ok {} {}", 64 * MIB, 96 * MIB),
        "{}",
        host.backend_log()
    );
    g.front.wait_for_capacity(sectors(96 * MIB), WAIT).unwrap();
    round_trip(&mut g, sectors(64 * MIB), 14);
    round_trip(&mut g, sectors(96 * MIB) - 8, 15);
    let (st, _) = g.read(sectors(96 * MIB), 1);
    assert_eq!(st, status::ERROR, "a read past the new end must fail");
    // The administrator grows the volume in its pool: the served disk follows.
    let target = host.image.display().to_string();
    let (pool, volume) = target.rsplit_once(':').unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rustbk"))
        .args(["thin", "resize", pool, volume, "128M"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    g.front.wait_for_capacity(sectors(128 * MIB), WAIT).unwrap();
    round_trip(&mut g, sectors(128 * MIB) - 8, 16);
    let (st, kept) = g.read(sectors(64 * MIB), 1);
    assert_eq!((st, kept == pattern(PAGE_SIZE, 14)), (status::OKAY, true));
    let outcome = ctl_resize(&host, 32 * MIB);
    assert!(
        outcome.contains("Shrinking a served disk is refused"),
        "{outcome}"
    );
    g.front.close().unwrap();
}
