//! Sector sizes per disk, as the 2024 blkif specification (Xen 4.20) settles them: `params`
//! chooses a disk's logical sector size (`raw,sector-size=4096:/path`, else the daemon's
//! `--sector-size`); `sector-size` and `physical-sector-size` carry it, while `sectors` and every
//! sector field of a request stay in 512-byte units and the sector size only constrains
//! alignment.

use std::os::unix::fs::FileExt;

use rustbk_blkfront::toolstack::VbdSpec;
use rustbk_ring::{DomId, status};

use crate::harness::{GUEST, Host, Setup, XVDA, pattern};

/// The bytes at `offset` of `image`.
fn image_bytes(image: &std::path::Path, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let file = std::fs::File::open(image).unwrap();
    file.read_exact_at(&mut buf, offset).unwrap();
    buf
}

#[test]
fn params_give_one_disk_4096_byte_sectors_beside_a_512_byte_disk_of_the_same_daemon() {
    let mut host = Host::with_daemon(Setup::default());
    let mut g1 = host.guest();
    let d1 = g1.front.disk().clone();
    assert_eq!((d1.sector_size, d1.sectors), (512, (64 << 20) / 512));
    let size: u64 = 16 << 20;
    let image2 = host.new_image("four-k.img", size);
    let params = format!("raw,sector-size=4096:{}", image2.display());
    let spec2 = VbdSpec::rustbk(DomId(2), XVDA, params);
    host.cluster.add_vbd(&spec2).unwrap();
    let mut g2 = host.guest_of(DomId(2), XVDA, |_| {});
    let d2 = g2.front.disk().clone();
    assert_eq!((d2.sector_size, d2.physical_sector_size), (4096, 4096));
    // The deprecated large-sector feature is never offered: the size alone says it.
    let keys = host.xenstore_list_cli(&spec2.backend_path());
    assert!(keys.iter().any(|k| k == "sector-size"), "{keys:?}");
    assert!(
        !keys.iter().any(|k| k == "feature-large-sector-size"),
        "{keys:?}"
    );
    assert_eq!(d2.sectors, size / 512, "`sectors` counts 512-byte units");
    // Request sector numbers count 512-byte units too: sector 8 is byte 4096.
    let data = pattern(4096, 21);
    assert_eq!(g2.write(8, &data), status::OKAY);
    assert_eq!(image_bytes(&image2, 4096, 4096), data);
    let last = d2.sectors - 8;
    assert_eq!(g2.write(last, &data), status::OKAY, "the last 4 KiB");
    assert_eq!(image_bytes(&image2, size - 4096, 4096), data);
    assert_eq!(g2.write(d2.sectors, &data), status::ERROR, "past the end");
    assert_eq!(g2.write(4, &data), status::ERROR, "not 4 KiB aligned");
    // The 512-byte disk of the same daemon takes what the 4096-byte one refuses.
    assert_eq!(g1.write(4, &data), status::OKAY);
    assert_eq!(g1.read(4, 1), (status::OKAY, data));
}

#[test]
fn params_override_the_daemons_sector_size_for_null_and_image_disks() {
    let host = Host::new(Setup {
        backend_args: vec!["--sector-size".into(), "4096".into()],
        format: Some("raw,sector-size=512"),
        ..Setup::default()
    });
    let mut g = host.guest();
    assert_eq!(g.front.disk().sector_size, 512);
    assert_eq!(
        g.write(1, &pattern(4096, 3)),
        status::OKAY,
        "512-byte aligned"
    );
    let null = Host::new(Setup {
        params: Some("null,sector-size=4096:8M".into()),
        ..Setup::default()
    });
    let d = null.guest().front.disk().clone();
    assert_eq!((d.sector_size, d.sectors), (4096, (8 << 20) / 512));
}

/// Serves `params` (an image of `size` bytes is at `IMAGE`) without a hotplug script and
/// returns the backend's `error` node once the device has closed.
fn error_node(params: &str, size: u64) -> String {
    crate::harness::refused_error(size, |image| {
        let params = params.replace("IMAGE", &image.display().to_string());
        VbdSpec::rustbk(GUEST, XVDA, params)
    })
}

#[test]
fn a_4096_byte_sector_disk_whose_image_ends_in_a_partial_sector_is_refused() {
    let error = error_node("raw,sector-size=4096:IMAGE", (1 << 20) + 512);
    assert!(
        error.starts_with("22 ") && error.contains("4096-byte sectors"),
        "error node: {error:?}"
    );
}

#[test]
fn params_with_a_bad_option_fail_the_disk_naming_it() {
    let error = error_node("raw,sector-size=1024:IMAGE", 1 << 20);
    assert!(
        error.starts_with("22 ") && error.contains("512 or 4096") && error.contains("params"),
        "error node: {error:?}"
    );
    let error = error_node("raw,cache=none:IMAGE", 1 << 20);
    assert!(
        error.contains("unknown option \"cache\""),
        "error node: {error:?}"
    );
}
