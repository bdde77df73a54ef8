//! The backend serving VHD images (`vhd:` params, as XenServer's tools write them): a dynamic
//! disk qemu-img made and a differencing disk over it, with verified I/O; qemu-img reads back
//! the dynamic disk as the guest left it; a discard gives space back.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustbk_blkfront::workload::{self, Pattern, Workload};
use std::os::unix::fs::MetadataExt;

use rustbk_ring::{Request, Sector, op, status};

use crate::harness::{Host, Setup, pattern};
use crate::qcow2::qemu_img;

fn vhd_setup() -> Setup {
    Setup {
        format: Some("vhd"),
        ..Setup::default()
    }
}

fn qemu_vhd(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    let ps = p.display().to_string();
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vpc",
        "-o",
        "subformat=dynamic,force_size=on",
        &ps,
        "64M",
    ]);
    p
}

/// `fresh`: the disk starts as zeros (else what it holds is first read and kept).
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
        seed: 78,
        rate: None,
    }
}

#[test]
fn a_dynamic_vhd_made_by_qemu_img_is_served_with_verified_io() {
    let host = Host::serving(vhd_setup(), |dir| qemu_vhd(dir, "disk.vhd"));
    let mut g = host.guest();
    assert_eq!(g.front.disk().sectors, (64 << 20) / 512);
    let data = pattern(8192, 5);
    assert_eq!(g.write(4096, &data), status::OKAY);
    let r = workload::run(&mut g.front, &workload(true), &mut |_| {}).expect("workload");
    assert_eq!((r.mismatches, r.errors), (0, 0), "{r:?}");
    g.front.close().unwrap();
    let image = host.image.display().to_string();
    let raw = host.image.with_extension("raw");
    qemu_img(&[
        "convert",
        "-U",
        "-f",
        "vpc",
        "-O",
        "raw",
        &image,
        &raw.display().to_string(),
    ]);
    let bytes = std::fs::read(&raw).unwrap();
    assert_eq!(bytes.len(), 64 << 20);
}

#[test]
fn a_differencing_vhd_shows_its_parent_until_written() {
    let host = Host::serving(vhd_setup(), |dir| {
        let base = dir.join("base.raw");
        std::fs::write(&base, pattern(64 << 20, 42)).unwrap();
        let vhd = dir.join("base.vhd");
        let (b, v) = (base.display().to_string(), vhd.display().to_string());
        qemu_img(&[
            "convert",
            "-q",
            "-f",
            "raw",
            "-O",
            "vpc",
            "-o",
            "force_size=on",
            &b,
            &v,
        ]);
        let top = dir.join("top.vhd");
        let o = rustbk_formats::vhd::VhdCreateOptions {
            parent: Some("base.vhd".into()),
            ..Default::default()
        };
        rustbk_formats::vhd::create(&top, 0, &o).expect("differencing disk");
        top
    });
    let mut g = host.guest();
    let (st, data) = g.read(2048, 4);
    assert_eq!(st, status::OKAY);
    assert_eq!(
        data,
        pattern(64 << 20, 42)[2048 * 512..2048 * 512 + 4 * 4096].to_vec()
    );
    let new = pattern(4096, 9);
    assert_eq!(g.write(2049, &new[..3584]), status::OKAY);
    let (st, data) = g.read(2048, 1);
    assert_eq!(st, status::OKAY);
    let mut expected = pattern(64 << 20, 42)[2048 * 512..2048 * 512 + 4096].to_vec();
    expected[512..].copy_from_slice(&new[..3584]);
    assert_eq!(
        data, expected,
        "first sector from the parent, the rest written"
    );
    let r = workload::run(&mut g.front, &workload(false), &mut |_| {}).expect("workload");
    assert_eq!((r.mismatches, r.errors), (0, 0), "{r:?}");
    g.front.close().unwrap();
}

#[test]
fn a_dynamic_vhd_offers_discard_and_a_discard_gives_its_space_back() {
    let host = Host::serving(vhd_setup(), |dir| qemu_vhd(dir, "disk.vhd"));
    let mut g = host.guest();
    assert!(g.front.disk().discard, "feature-discard offered");
    let data = pattern(32 << 10, 5);
    for i in 0..64u64 {
        assert_eq!(g.write(i * 64, &data), status::OKAY);
    }
    let blocks_before = std::fs::metadata(&host.image).unwrap().blocks();
    let id = g.id();
    g.send(&Request::Discard {
        id,
        secure: false,
        sector: Sector(0),
        nr_sectors: 64 * 64,
    });
    let rsp = g.wait(id);
    assert_eq!((rsp.status, rsp.op), (status::OKAY, op::DISCARD));
    let (st, back) = g.read(128, 8);
    assert_eq!(st, status::OKAY);
    assert!(back.iter().all(|b| *b == 0), "discarded range reads zeros");
    let blocks_after = std::fs::metadata(&host.image).unwrap().blocks();
    assert!(
        blocks_after + 3000 < blocks_before,
        "space not given back: {blocks_before} -> {blocks_after} sectors"
    );
    g.front.close().unwrap();
}
