//! Image locking between `rustbk serve` and QEMU's tools, and between backends: a served
//! image is locked as a running QEMU guest locks it.

use std::path::Path;
use std::process::Command;

use rustbk_blkfront::toolstack::VbdSpec;
use rustbk_ring::{DomId, status};

use crate::harness::{Host, Setup, XVDA, pattern};
use crate::holder::QemuWriter;

/// Runs a QEMU tool; returns whether it succeeded and its stderr.
fn qemu(tool: &str, args: &[&str], image: &Path) -> (bool, String) {
    let out = Command::new(tool)
        .args(args)
        .arg(image)
        .output()
        .unwrap_or_else(|e| panic!("{tool} is required (Debian package qemu-utils): {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether `qemu-img info` without and with `-U` opens the image.
fn qemu_img_info(image: &Path) -> (bool, bool) {
    (
        qemu("qemu-img", &["info"], image).0,
        qemu("qemu-img", &["info", "-U"], image).0,
    )
}

/// A backend for guest `domid` on `image`, expected to refuse it: returns its log.
fn refused_backend(host: &mut Host, spec: &VbdSpec) -> String {
    host.cluster.add_disk(spec, &[]).unwrap();
    let status = host.cluster.wait_backend_exit(spec).unwrap();
    let log = std::fs::read_to_string(host.cluster.backend_log(spec)).unwrap();
    assert!(!status.success(), "the backend served the image: {log}");
    log
}

/// A 16 MiB qcow2 image made by qemu-img.
fn make_qcow2(path: &Path) {
    let (ok, err) = qemu(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "-o", "size=16M"],
        path,
    );
    assert!(ok, "qemu-img create: {err}");
}

/// `params` for an image of `format`: a qcow2 image is named with its prefix.
fn params(format: &str, image: &Path) -> String {
    match format {
        "qcow2" => format!("qcow2:{}", image.display()),
        _ => image.display().to_string(),
    }
}

fn qcow2_host(read_only: bool) -> Host {
    let setup = Setup {
        read_only,
        format: Some("qcow2"),
        ..Setup::default()
    };
    Host::serving(setup, |dir| {
        let p = dir.join("disk.qcow2");
        make_qcow2(&p);
        p
    })
}

#[test]
fn qemu_io_cannot_write_a_served_image_and_qemu_img_info_behaves_as_with_qemu() {
    for format in ["raw", "qcow2"] {
        let mut host = match format {
            "raw" => Host::new(Setup::default()),
            _ => qcow2_host(false),
        };
        let mut g = host.guest();
        let data = pattern(4096, 3);
        assert_eq!(g.write(0, &data), status::OKAY);
        let (wrote, err) = qemu(
            "qemu-io",
            &["-f", format, "-c", "write -P 9 0 4k"],
            &host.image,
        );
        assert!(!wrote, "{format}: qemu-io wrote a served image");
        assert!(
            err.contains("Failed to get \"write\" lock"),
            "{format}: {err}"
        );
        assert_eq!(g.read(0, 1), (status::OKAY, data), "{format}");
        let served = qemu_img_info(&host.image);
        g.front.close().unwrap();
        let spec = host.spec.clone();
        host.cluster.remove_disk(&spec).unwrap();
        let _qemu = QemuWriter::hold(&host.image, format);
        assert_eq!(
            served,
            qemu_img_info(&host.image),
            "{format}: not as with QEMU"
        );
        // What QEMU does: a raw reader shares writing, a qcow2 reader does not (its metadata
        // must not change under it) and needs -U.
        assert_eq!(served, (format == "raw", true), "{format}");
    }
}

#[test]
fn serve_refuses_an_image_qemu_io_holds_for_writing() {
    let mut host = Host::new(Setup::default());
    for (domid, format) in [(2, "raw"), (3, "qcow2")] {
        let image = host.cluster.dir().join(format!("held.{format}"));
        match format {
            "raw" => rustbk_formats::create_raw(&image, 16 << 20).unwrap(),
            _ => make_qcow2(&image),
        }
        let qemu = QemuWriter::hold(&image, format);
        let spec = VbdSpec::rustbk(DomId(domid), XVDA, params(format, &image));
        let log = refused_backend(&mut host, &spec);
        // qemu-io shares writing a raw image, not a qcow2 one: either way serving is refused.
        assert!(log.contains("\"write\" lock on"), "{format}: {log}");
        assert!(
            log.contains(&image.display().to_string()),
            "{format}: {log}"
        );
        drop(qemu);
        let guest = VbdSpec::rustbk(DomId(domid + 2), XVDA, params(format, &image));
        host.cluster.add_disk(&guest, &[]).unwrap();
        let mut g = host.guest_of(guest.domid, XVDA, |_| {});
        assert_eq!(
            g.read(0, 1).0,
            status::OKAY,
            "{format} once qemu-io is gone"
        );
    }
}

#[test]
fn a_second_read_write_backend_of_one_image_is_refused_and_the_first_keeps_serving() {
    let mut host = Host::new(Setup::default());
    let mut g = host.guest();
    let image = host.image.display().to_string();
    for spec in [
        VbdSpec::rustbk(DomId(2), XVDA, image.clone()),
        VbdSpec {
            read_only: true,
            ..VbdSpec::rustbk(DomId(3), XVDA, image.clone())
        },
    ] {
        let log = refused_backend(&mut host, &spec);
        assert!(log.contains("lock on"), "{log}");
        assert!(log.contains(&image), "{log}");
    }
    let data = pattern(8192, 5);
    assert_eq!(g.write(8, &data), status::OKAY);
    assert_eq!(g.read(8, 2), (status::OKAY, data));
}

#[test]
fn read_only_backends_share_one_image_but_exclude_a_writer() {
    for qcow2 in [false, true] {
        let mut host = match qcow2 {
            false => Host::new(Setup {
                read_only: true,
                ..Setup::default()
            }),
            true => qcow2_host(true),
        };
        let served = params(if qcow2 { "qcow2" } else { "raw" }, &host.image);
        let mut g1 = host.guest();
        let second = VbdSpec {
            read_only: true,
            ..VbdSpec::rustbk(DomId(2), XVDA, served.clone())
        };
        host.cluster.add_disk(&second, &[]).unwrap();
        let mut g2 = host.guest_of(DomId(2), XVDA, |_| {});
        assert_eq!(g1.read(0, 1).0, status::OKAY);
        assert_eq!(g2.read(0, 1).0, status::OKAY);
        let writer = VbdSpec::rustbk(DomId(3), XVDA, served.clone());
        let log = refused_backend(&mut host, &writer);
        assert!(log.contains("Failed to get \"write\" lock"), "{log}");
    }
}
