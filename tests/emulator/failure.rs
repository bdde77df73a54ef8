//! Failures reach the toolstack: a device that cannot be served, or whose ring worker dies,
//! gets an `error` node and goes to Closed instead of leaving the toolstack or the guest waiting.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rustbk::cluster::EmuCluster;
use rustbk_backend::worker::PANIC_AT_SECTOR_ENV;
use rustbk_blkfront::toolstack::VbdSpec;
use rustbk_ring::status;
use rustbk_xenstored::XsClient;

use crate::harness::{GUEST, Host, Setup, XVDA, pattern};

/// Polls `path` until `pred` holds for its value; the time it took, or `None` at `timeout`.
fn time_until(
    xs: &XsClient,
    path: &str,
    timeout: Duration,
    pred: impl Fn(Option<&str>) -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if pred(xs.try_read(path).unwrap().as_deref()) {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// A host whose one disk names an image that does not exist.
fn host_with_missing_image(script: bool) -> (tempfile::TempDir, EmuCluster, VbdSpec) {
    let tmp = tempfile::tempdir().unwrap();
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_rustbk"));
    let cluster = EmuCluster::start(&exe, tmp.path()).unwrap();
    let missing = tmp.path().join("missing.img");
    let mut spec = VbdSpec::rustbk(GUEST, XVDA, missing.display().to_string());
    if !script {
        spec.script = None;
    }
    (tmp, cluster, spec)
}

fn backend_log(cluster: &EmuCluster, spec: &VbdSpec) -> String {
    std::fs::read_to_string(cluster.backend_log(spec)).unwrap_or_default()
}

#[test]
fn missing_image_is_reported_in_the_error_node_and_the_device_closes_within_a_second() {
    let (_tmp, mut cluster, spec) = host_with_missing_image(false);
    let xs = cluster.toolstack().unwrap();
    let be = spec.backend_path();
    cluster.add_disk(&spec, &[]).unwrap();
    let closed = time_until(&xs, &format!("{be}/state"), Duration::from_secs(1), |v| {
        v == Some("6")
    });
    assert!(
        closed.is_some(),
        "backend not Closed within a second; log:\n{}",
        backend_log(&cluster, &spec)
    );
    let error = xs
        .try_read(&format!("{be}/error"))
        .unwrap()
        .unwrap_or_default();
    assert!(
        error.starts_with("2 ") && error.contains("missing.img"),
        "error node: {error:?}"
    );
    // Where Linux's xenbus_dev_fatal writes it; it outlives the device directory.
    let linux = "/local/domain/0/error/backend/vbd/1/51712/error";
    assert_eq!(xs.try_read(linux).unwrap().as_deref(), Some(error.as_str()));
}

#[test]
fn failed_device_waits_in_init_wait_for_the_hotplug_script_then_closes() {
    let (_tmp, mut cluster, spec) = host_with_missing_image(true);
    let xs = cluster.toolstack().unwrap();
    let be = spec.backend_path();
    cluster.add_disk(&spec, &[]).unwrap();
    // libxl waits for InitWait, then runs the hotplug script: the error must already be there.
    let init_wait = time_until(&xs, &format!("{be}/state"), Duration::from_secs(10), |v| {
        v == Some("2")
    });
    assert!(init_wait.is_some(), "{}", backend_log(&cluster, &spec));
    let error = xs.try_read(&format!("{be}/error")).unwrap();
    assert!(
        error.as_deref().is_some_and(|e| e.contains("missing.img")),
        "no error node when InitWait was published: {error:?}"
    );
    // What the script's `fatal` writes.
    xs.write(&format!("{be}/hotplug-error"), "rustbk: failed")
        .unwrap();
    xs.write(&format!("{be}/hotplug-status"), "error").unwrap();
    let closed = time_until(&xs, &format!("{be}/state"), Duration::from_secs(1), |v| {
        v == Some("6")
    });
    assert!(
        closed.is_some(),
        "backend not Closed within a second of the script's verdict; log:\n{}",
        backend_log(&cluster, &spec)
    );
}

#[test]
#[cfg_attr(
    not(debug_assertions),
    ignore = "the backend's fault injection is compiled into debug builds only"
)]
fn panicking_ring_worker_closes_the_device_with_an_error_node() {
    let host = Host::new(Setup {
        backend_env: vec![(PANIC_AT_SECTOR_ENV, "777".into())],
        ..Setup::default()
    });
    let mut g = host.guest();
    assert_eq!(g.write(8, &pattern(4096, 3)), status::OKAY);
    let xs = host.cluster.toolstack().unwrap();
    let be = host.spec.backend_path();
    let fatal = g_write_at(&mut g, 777);
    g.send(&fatal);
    let closing = time_until(&xs, &format!("{be}/state"), Duration::from_secs(5), |v| {
        matches!(v, Some("5" | "6"))
    });
    assert!(
        closing.is_some(),
        "device still connected after the worker panicked; log:\n{}",
        host.backend_log()
    );
    let error = xs
        .try_read(&format!("{be}/error"))
        .unwrap()
        .unwrap_or_default();
    assert!(error.contains("panicked"), "error node: {error:?}");
    assert!(
        host.backend_log().contains("ring worker panicked"),
        "the death must be logged"
    );
    g.front
        .close()
        .expect("backend goes to Closed when the frontend closes");
}

/// A one-page write request at `sector` (its data pages stay granted).
fn g_write_at(g: &mut crate::harness::Guest, sector: u64) -> rustbk_ring::Request {
    let (_, refs) = g.pages(1, true);
    g.rw(rustbk_ring::RwOp::Write, sector, &refs)
}
