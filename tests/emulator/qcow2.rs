//! The backend serving qcow2 images made by qemu-img: verified I/O, and the result passes
//! `qemu-img check`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rustbk_blkfront::workload::{self, Pattern, Workload};
use rustbk_ring::status;

use crate::harness::{Host, Setup, pattern};

pub fn qemu_img(args: &[&str]) -> std::process::Output {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img (package qemu-utils) must be installed");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn qcow2(dir: &Path, name: &str, opts: &str, backing: Option<&Path>) -> PathBuf {
    let p = dir.join(name);
    let mut args = vec!["create", "-q", "-f", "qcow2", "-o", opts];
    let b;
    if let Some(base) = backing {
        b = base.display().to_string();
        args.extend(["-b", &b, "-F", "raw"]);
    }
    let ps = p.display().to_string();
    args.push(&ps);
    args.push("64M");
    qemu_img(&args);
    p
}

/// A disk served as `qcow2:PATH`.
fn qcow2_setup() -> Setup {
    Setup {
        format: Some("qcow2"),
        ..Setup::default()
    }
}

fn workload(fresh: bool) -> Workload {
    Workload {
        pattern: Pattern::Random,
        read_percent: 50,
        block_size: 16 << 10,
        queue_depth: 16,
        duration: Duration::from_secs(2),
        max_ops: Some(2000),
        verify: true,
        fresh,
        region: Some(32 << 20),
        flush_every: Some(32),
        seed: 77,
        rate: None,
    }
}

#[test]
fn qcow2_made_by_qemu_img_is_served_and_stays_clean() {
    for opts in [
        "cluster_size=65536,compat=1.1",
        "cluster_size=4096,compat=0.10,refcount_bits=16",
    ] {
        let host = Host::serving(qcow2_setup(), |dir| qcow2(dir, "disk.qcow2", opts, None));
        let mut g = host.guest();
        assert_eq!(g.front.disk().sectors, (64 << 20) / 512);
        let r = workload::run(&mut g.front, &workload(true), &mut |_| {}).expect("workload");
        assert_eq!((r.mismatches, r.errors), (0, 0), "{opts}: {r:?}");
        g.front.close().unwrap();
        let image = host.image.display().to_string();
        // The backend still has the image open (locked as a running QEMU would): -U.
        qemu_img(&["check", "-U", &image]);
    }
}

#[test]
fn qcow2_over_a_raw_backing_file_shows_the_base_until_written() {
    let host = Host::serving(qcow2_setup(), |dir| {
        let base = dir.join("base.raw");
        std::fs::write(&base, pattern(64 << 20, 42)).unwrap();
        qcow2(dir, "top.qcow2", "cluster_size=65536", Some(&base))
    });
    let mut g = host.guest();
    let (st, data) = g.read(2048, 4);
    assert_eq!(st, status::OKAY);
    assert_eq!(
        data,
        pattern(64 << 20, 42)[2048 * 512..2048 * 512 + 4 * 4096].to_vec(),
        "base data"
    );
    let new = pattern(4096, 9);
    assert_eq!(
        g.write(
            2048 + 1,
            &new[..4096 - 512]
                .iter()
                .chain(&new[..512])
                .copied()
                .collect::<Vec<u8>>()
        ),
        status::OKAY
    );
    let r = workload::run(&mut g.front, &workload(false), &mut |_| {}).expect("workload");
    assert_eq!((r.mismatches, r.errors), (0, 0), "{r:?}");
    g.front.close().unwrap();
    let image = host.image.display().to_string();
    // The backend still has the image open (locked as a running QEMU would): -U.
    qemu_img(&["check", "-U", &image]);
}

#[test]
fn sigterm_writes_back_qcow2_metadata_of_writes_never_flushed() {
    let host = Host::serving(qcow2_setup(), |dir| {
        qcow2(dir, "disk.qcow2", "cluster_size=65536", None)
    });
    let mut g = host.guest();
    // Allocating writes in three L2 ranges' worth of clusters; no flush from the guest.
    let sectors = [0u64, 8 + 128, 40_000, 131_000 - 8];
    for (i, &sector) in sectors.iter().enumerate() {
        assert_eq!(g.write(sector, &pattern(4096, i as u8 + 1)), status::OKAY);
    }
    let mut cluster = host.cluster;
    cluster
        .terminate_disk(&host.spec)
        .expect("backend stops on SIGTERM");
    let image = host.image.display().to_string();
    qemu_img(&["check", &image]);
    let raw = host.image.with_extension("raw");
    qemu_img(&["convert", "-O", "raw", &image, &raw.display().to_string()]);
    let data = std::fs::read(&raw).unwrap();
    for (i, &sector) in sectors.iter().enumerate() {
        let at = (sector * 512) as usize;
        assert_eq!(
            data[at..at + 4096],
            pattern(4096, i as u8 + 1)[..],
            "write {i} at sector {sector} lost"
        );
    }
}
