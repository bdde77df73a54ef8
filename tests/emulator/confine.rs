//! The backend never probes and confines backing files: a guest that writes a qcow2 header
//! naming a host file into its raw disk reads back its own bytes after the next attach, and a
//! qcow2 image's backing file is served only from the folders the backend allows; with
//! `--image-dir` (or the daemon's configuration file), images too.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustbk_blkfront::Frontend;
use rustbk_ring::{PAGE_SIZE, status};

use crate::harness::{Guest, Host, Setup, pattern};
use crate::qcow2::{qcow2, qemu_img};

/// A host file the guest must never see, in a folder of its own.
fn host_file(seed: u8) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret.raw");
    std::fs::write(&path, pattern(64 << 20, seed)).unwrap();
    (dir, path)
}

/// The bytes of a qcow2 image (4 KiB clusters) whose backing file is `backing`, padded to
/// whole pages: what a hostile guest writes at the start of its disk.
fn qcow2_header_naming(backing: &Path) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hostile.qcow2");
    let (p, b) = (path.display().to_string(), backing.display().to_string());
    let args = ["create", "-q", "-f", "qcow2", "-o", "cluster_size=4096"];
    qemu_img(&[&args[..], &["-b", &b, "-F", "raw", &p, "64M"]].concat());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.resize(bytes.len().div_ceil(PAGE_SIZE) * PAGE_SIZE, 0);
    bytes
}

#[test]
fn guest_written_qcow2_header_naming_a_host_file_reads_back_as_written_after_reattach() {
    let (_secret_dir, secret) = host_file(0x5e);
    let mut host = Host::new(Setup::default());
    let mut g = host.guest();
    let hostile = qcow2_header_naming(&secret);
    assert_eq!(g.write(0, &hostile), status::OKAY);
    let cfg = g.cfg.clone();
    let closed = g.front.close().unwrap();
    // The disk is detached and attached again: a new backend process opens the image.
    let spec = host.spec.clone();
    host.cluster.remove_disk(&spec).unwrap();
    host.cluster.add_disk(&spec, &[]).unwrap();
    let front = Frontend::connect(closed.dom, closed.xs, closed.frames, cfg.clone())
        .unwrap_or_else(|e| panic!("reattach: {e:?}; log:\n{}", host.backend_log()));
    let mut g = Guest::from_parts(front, cfg);
    assert_eq!(g.front.disk().sectors, (64 << 20) / 512, "served as raw");
    let pages = u32::try_from(hostile.len() / PAGE_SIZE).unwrap();
    let (st, back) = g.read(0, pages);
    assert_eq!(st, status::OKAY);
    assert!(
        back == hostile,
        "the guest reads what it wrote, not the host file"
    );
}

/// A qcow2 disk served as `qcow2:PATH` by a backend with `backend_args`.
fn qcow2_served_with(backend_args: Vec<String>) -> Setup {
    Setup {
        format: Some("qcow2"),
        backend_args,
        ..Setup::default()
    }
}

fn reads_the_base(host: &Host, seed: u8) {
    let mut g = host.guest();
    let (st, data) = g.read(8, 2);
    assert_eq!(st, status::OKAY);
    assert_eq!(
        data,
        pattern(64 << 20, seed)[8 * 512..8 * 512 + 8192].to_vec()
    );
}

#[test]
fn backing_file_in_a_configured_backing_dir_is_served() {
    let (base_dir, base) = host_file(0x42);
    let args = vec![
        "--backing-dir".into(),
        base_dir.path().display().to_string(),
    ];
    let host = Host::serving(qcow2_served_with(args), |dir| {
        qcow2(dir, "top.qcow2", "cluster_size=65536", Some(&base))
    });
    reads_the_base(&host, 0x42);
}

#[test]
fn daemon_passes_backing_dirs_to_its_workers() {
    let (base_dir, base) = host_file(0x43);
    let args = vec![
        "--backing-dir".into(),
        base_dir.path().display().to_string(),
    ];
    let host = Host::daemon_serving(qcow2_served_with(args), |dir| {
        qcow2(dir, "top.qcow2", "cluster_size=65536", Some(&base))
    });
    reads_the_base(&host, 0x43);
}

#[test]
fn backing_file_outside_the_allowed_folders_is_not_served() {
    let (_base_dir, base) = host_file(0x44);
    let host = Host::serving(qcow2_served_with(Vec::new()), |dir| {
        qcow2(dir, "top.qcow2", "cluster_size=65536", Some(&base))
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let log = loop {
        let log = host.backend_log();
        if log.contains("refused") || Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        log.contains("outside the allowed backing directories") && log.contains("top.qcow2"),
        "{log}"
    );
    let state = host
        .cluster
        .toolstack()
        .unwrap()
        .read(&format!("{}/state", host.spec.backend_path()))
        .unwrap();
    assert_ne!(state, "4", "the disk must not connect");
}

/// A daemon configuration file in its own folder: images must lie in `image_dir`, disks are
/// served with the page cache.
fn daemon_config(image_dir: &Path) -> (tempfile::TempDir, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rustbk.toml");
    let text = format!(
        "[paths]\nimage_dirs = [\"{}\"]\n[disks]\ncache = \"writeback\"\n",
        image_dir.display()
    );
    std::fs::write(&path, text).unwrap();
    (dir, vec!["--config".into(), path.display().to_string()])
}

fn backend_error(host: &Host) -> Option<String> {
    let xs = host.cluster.toolstack().unwrap();
    xs.read(&format!("{}/error", host.spec.backend_path())).ok()
}

#[test]
fn daemon_configuration_file_confines_images_and_sets_the_cache_mode() {
    let allowed = tempfile::tempdir().unwrap();
    let (_cfg_dir, args) = daemon_config(allowed.path());
    let setup = Setup {
        backend_args: args.clone(),
        ..Setup::default()
    };
    // An image in the allowed folder is served, with the file's cache mode.
    let host = Host::daemon_serving(setup, |_| {
        let image = allowed.path().join("ok.img");
        rustbk_formats::create_raw(&image, 64 << 20).unwrap();
        image
    });
    let mut g = host.guest();
    assert_eq!(g.write(0, &pattern(8192, 7)), status::OKAY);
    let log = host.cluster.daemon_log();
    assert!(
        log.contains("cache=writeback") || log.contains("writeback"),
        "{log}"
    );
    drop(g);
    drop(host);

    // The host's own folder is not in the list: its image is refused with a clear reason.
    let setup = Setup {
        backend_args: args,
        ..Setup::default()
    };
    let host = Host::daemon_serving(setup, |dir| {
        let image = dir.join("outside.img");
        rustbk_formats::create_raw(&image, 64 << 20).unwrap();
        image
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let error = loop {
        if let Some(e) = backend_error(&host) {
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "no error node; {}",
            host.cluster.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        error.contains("outside the allowed image folders"),
        "{error}"
    );
}

#[test]
fn a_bad_configuration_file_stops_the_daemon_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rustbk.toml");
    std::fs::write(&path, "[disks]\ncache = \"fast\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rustbk"))
        .args(["daemon", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("rustbk.toml") && err.contains("fast"), "{err}");
    std::fs::write(&path, "[disk]\ncache = \"none\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rustbk"))
        .args(["daemon", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown field") && err.contains("disk"),
        "{err}"
    );
}
