//! Disks under `backend/vbd3`, written exactly as the two toolstacks that use that kind write
//! them: libxl 4.20's `backendtype=tap` (with `script=rustbk`) and xenopsd plugging a SMAPIv3
//! XenDisk of `backend_type: vbd3` (an empty `params`, the disk in `qemu-params`). The daemon
//! watches both kinds by default; each disk is served with verified I/O and torn down when the
//! toolstack takes it away, and a disk rustbk cannot or must not serve gets its `error` node.

use std::path::Path;
use std::time::{Duration, Instant};

use rustbk_blkfront::toolstack::{Toolstack, VbdSpec, tap_params};
use rustbk_ring::{DomId, status};

use crate::harness::{GUEST, Guest, Host, Setup, XVDA, pattern};

/// xvdb.
const XVDB: u32 = 51728;

/// What xenopsd writes for rustbk's XenDisk: its `extra` map, `{"type": "rustbk"}`.
fn xenopsd() -> Toolstack {
    Toolstack::Xenopsd {
        extra: vec![("type".into(), "rustbk".into())],
    }
}

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

fn read(host: &Host, path: &str) -> Option<String> {
    host.cluster.toolstack().unwrap().try_read(path).unwrap()
}

/// Writes three distinct pages at two places and reads them back.
fn verified_io(g: &mut Guest, seed: u8) {
    for (sector, n) in [(0u64, 3usize), (2048, 1)] {
        let data = pattern(n * 4096, seed.wrapping_add(n as u8));
        assert_eq!(g.write(sector, &data), status::OKAY);
        assert_eq!(g.read(sector, n as u32), (status::OKAY, data));
    }
}

/// Closes the guest's frontend, removes the disk as the toolstack does (online 0, Closing,
/// wait for Closed, remove both directories), and checks the backend said Closed.
fn tear_down(host: &mut Host, g: Guest, spec: &VbdSpec) {
    g.front.close().unwrap();
    host.cluster.remove_disk(spec).unwrap();
    assert_eq!(read(host, &format!("{}/state", spec.backend_path())), None);
}

/// A 64 MiB qcow2 image made by qemu-img.
fn qcow2(dir: &Path, name: &str) -> std::path::PathBuf {
    crate::qcow2::qcow2(dir, name, "cluster_size=65536", None)
}

#[test]
fn libxl_tap_disks_with_script_rustbk_are_served_under_vbd3_and_torn_down() {
    // `backendtype=tap, script=rustbk, format=raw, target=/srv/a.img`: params `aio:/srv/a.img`.
    let setup = Setup {
        format: Some("aio"),
        toolstack: Toolstack::LibxlTap,
        ..Setup::default()
    };
    let mut host = Host::daemon_serving(setup, |dir| {
        let image = dir.join("tap.img");
        rustbk_formats::create_raw(&image, 32 << 20).unwrap();
        image
    });
    let be = host.spec.backend_path();
    assert!(be.contains("/backend/vbd3/1/51712"), "{be}");
    assert_eq!(
        read(&host, &format!("{be}/params")),
        Some(format!("aio:{}", host.image.display()))
    );
    let mut g = host.guest();
    assert_eq!(read(&host, &format!("{be}/state")).as_deref(), Some("4"));
    assert_eq!(g.front.disk().sectors, (32 << 20) / 512);
    verified_io(&mut g, 1);

    // `target=qcow2:/srv/b.qcow2` with format=raw reaches rustbk as `aio:qcow2:/srv/b.qcow2`.
    let image = qcow2(host.cluster.dir(), "tap.qcow2");
    let target = format!("qcow2:{}", image.display());
    let spec_b = VbdSpec {
        toolstack: Toolstack::LibxlTap,
        ..VbdSpec::rustbk(GUEST, XVDB, tap_params("raw", &target))
    };
    host.cluster.add_vbd(&spec_b).unwrap();
    let mut gb = host.guest_of(GUEST, XVDB, |_| {});
    assert_eq!(gb.front.disk().sectors, (64 << 20) / 512);
    verified_io(&mut gb, 2);

    assert!(
        host.cluster.worker_pid(GUEST.0).is_some(),
        "a worker serves guest 1"
    );
    let spec_a = host.spec.clone();
    tear_down(&mut host, g, &spec_a);
    tear_down(&mut host, gb, &spec_b);
    wait_for(
        "the worker to exit once the guest has no disk",
        &host,
        || host.cluster.worker_pid(GUEST.0).is_none(),
    );
    let check = crate::qcow2::qemu_img(&["check", &image.display().to_string()]);
    assert!(check.status.success(), "{check:?}");
}

#[test]
fn xenopsd_vbd3_xendisk_is_served_from_qemu_params_and_torn_down() {
    let setup = Setup {
        format: Some("qcow2"),
        toolstack: xenopsd(),
        script: None,
        ..Setup::default()
    };
    let mut host = Host::daemon_serving(setup, |dir| qcow2(dir, "xapi.qcow2"));
    let be = host.spec.backend_path();
    assert!(be.contains("/backend/vbd3/"), "{be}");
    assert_eq!(read(&host, &format!("{be}/params")).as_deref(), Some(""));
    assert_eq!(read(&host, &format!("{be}/script")), None);
    let mut g = host.guest();
    assert_eq!(g.front.disk().sectors, (64 << 20) / 512);
    verified_io(&mut g, 3);
    let spec = host.spec.clone();
    tear_down(&mut host, g, &spec);
    wait_for("the worker to exit", &host, || {
        host.cluster.worker_pid(GUEST.0).is_none()
    });
    let check = crate::qcow2::qemu_img(&["check", &host.image.display().to_string()]);
    assert!(check.status.success(), "{check:?}");
}

#[test]
fn vbd3_disks_for_tapback_are_left_alone() {
    let mut host = Host::with_daemon(Setup::default());
    let mut g = host.guest();
    verified_io(&mut g, 4);
    let image = host.new_image("tapdisk.img", 16 << 20);
    let path = image.display().to_string();
    // libxl's own `backendtype=tap` (script block-tap) and another SMAPIv3 plugin's XenDisk.
    let tap = VbdSpec {
        script: Some("/etc/xen/scripts/block-tap".into()),
        toolstack: Toolstack::LibxlTap,
        ..VbdSpec::rustbk(DomId(2), XVDA, tap_params("raw", &path))
    };
    let other = VbdSpec {
        script: None,
        toolstack: Toolstack::Xenopsd {
            extra: vec![("type".into(), "tapdisk".into())],
        },
        ..VbdSpec::rustbk(DomId(3), XVDA, format!("vhd:{path}"))
    };
    for spec in [&tap, &other] {
        host.cluster.add_vbd(spec).unwrap();
    }
    std::thread::sleep(Duration::from_secs(2));
    for spec in [&tap, &other] {
        let state = read(&host, &format!("{}/state", spec.backend_path()));
        assert_eq!(state.as_deref(), Some("1"), "{spec:?}");
        assert!(host.cluster.worker_pid(spec.domid.0).is_none());
    }
    verified_io(&mut g, 5);
}

/// The backend's `error` node once rustbk has written it.
fn error_of(host: &Host, spec: &VbdSpec) -> String {
    let path = format!("{}/error", spec.backend_path());
    let mut error = None;
    wait_for("the error node", host, || {
        error = read(host, &path);
        error.is_some()
    });
    error.unwrap_or_default()
}

#[test]
fn vbd3_disks_naming_an_unknown_format_are_refused_with_an_error_node() {
    // libxl 4.20 writes `qcow:TARGET` for `backendtype=tap, format=qcow`; rustbk has no
    // qcow version 1.
    let setup = Setup {
        format: Some("qcow"),
        toolstack: Toolstack::LibxlTap,
        ..Setup::default()
    };
    let host = Host::with_daemon(setup);
    let error = error_of(&host, &host.spec);
    assert!(error.contains("unknown format prefix \"qcow\""), "{error}");
    // With a script, the device waits in InitWait for the hotplug script to relay it.
    let state = format!("{}/state", host.spec.backend_path());
    wait_for("InitWait", &host, || {
        read(&host, &state).as_deref() == Some("2")
    });

    let setup = Setup {
        format: Some("qed"),
        toolstack: xenopsd(),
        script: None,
        ..Setup::default()
    };
    let host = Host::with_daemon(setup);
    let be = host.spec.backend_path();
    let error = error_of(&host, &host.spec);
    assert!(error.contains("qemu-params"), "{error}");
    assert!(error.contains("unknown format prefix \"qed\""), "{error}");
    // No script: the device closes at once, and Linux's error node has the reason too.
    wait_for("Closed", &host, || {
        read(&host, &format!("{be}/state")).as_deref() == Some("6")
    });
    let linux = be.replace("/backend/vbd3/", "/error/backend/vbd3/");
    assert_eq!(read(&host, &format!("{linux}/error")), Some(error));
    assert!(
        host.try_guest_with(|c| c.timeout = Duration::from_secs(2))
            .is_err()
    );
}

#[test]
fn vbd3_disks_outside_the_allowed_image_folders_are_refused_with_an_error_node() {
    let allowed = tempfile::tempdir().unwrap();
    let args = vec![
        "--image-dir".to_owned(),
        allowed.path().display().to_string(),
    ];
    for toolstack in [Toolstack::LibxlTap, xenopsd()] {
        let script = match toolstack {
            Toolstack::LibxlTap => Setup::default().script,
            _ => None,
        };
        let setup = Setup {
            format: Some("aio"),
            toolstack,
            script,
            backend_args: args.clone(),
            ..Setup::default()
        };
        let host = Host::with_daemon(setup);
        let error = error_of(&host, &host.spec);
        assert!(
            error.contains("outside the allowed image folders"),
            "{error}"
        );
        let state = read(&host, &format!("{}/state", host.spec.backend_path()));
        assert_ne!(state.as_deref(), Some("4"));
    }
}
