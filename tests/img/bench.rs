//! `rustbk img bench` writes what qemu-img then finds clean and correct, prints qemu-img
//! bench's lines, and reports IOPS as JSON.

use std::path::Path;

use crate::common::{at, json, qemu_io, qemu_ok, qemu_qcow2, rustbk_ok, tmp};

/// qemu-img's verdict on an image: must be clean.
fn assert_clean(path: &Path) {
    let out = qemu_ok(&[&"check", &path]);
    assert!(
        out.contains("No errors were found"),
        "qemu-img check: {out}"
    );
}

#[test]
fn bench_writes_leave_a_clean_qcow2_that_reads_back_the_pattern() {
    let dir = tmp();
    let path = at(&dir, "b.qcow2");
    qemu_qcow2(&path, "64M", &[]);
    let out = rustbk_ok(&[
        &"bench",
        &"-f",
        &"qcow2",
        &"-t",
        &"none",
        &"-i",
        &"io_uring",
        &"-d",
        &"32",
        &"-c",
        &"1000",
        &"-w",
        &"--pattern=0xa5",
        &path,
    ]);
    assert!(
        out.starts_with(
            "Sending 1000 write requests, 4096 bytes each, 32 in parallel \
             (starting at offset 0, step size 4096)\nRun completed in "
        ),
        "{out}"
    );
    assert_clean(&path);
    // 1000 requests of 4 KiB from offset 0: exactly 4000 KiB carry the pattern.
    qemu_io(
        &path,
        "qcow2",
        &["read -P 0xa5 0 4000k", "read -P 0 4000k 1M"],
    );
}

#[test]
fn bench_overwrites_and_wrapping_writes_stay_consistent() {
    let dir = tmp();
    let path = at(&dir, "w.qcow2");
    qemu_qcow2(&path, "1M", &["write -P 1 0 1M"]);
    // 300 requests of 4 KiB on 1 MiB wrap around once (modulo 1 MiB - 4 KiB) and rewrite
    // the first blocks a second time.
    rustbk_ok(&[&"bench", &"-w", &"-q", &"-c", &"300", &"--pattern=9", &path]);
    assert_clean(&path);
    // 1020 KiB / 4 KiB = 255 distinct offsets all written; the last block was never reached.
    qemu_io(&path, "qcow2", &["read -P 9 0 1020k", "read -P 1 1020k 4k"]);
}

#[test]
fn bench_allocating_writes_with_a_step_across_clusters_are_clean() {
    let dir = tmp();
    let path = at(&dir, "s.qcow2");
    qemu_qcow2(&path, "16M", &[]);
    rustbk_ok(&[
        &"bench",
        &"-w",
        &"-q",
        &"-t",
        &"none",
        &"-c",
        &"100",
        &"-S",
        &"128k",
        &"-s",
        &"8k",
        &"--pattern=3",
        &path,
    ]);
    assert_clean(&path);
    qemu_io(
        &path,
        "qcow2",
        &[
            "read -P 3 0 8k",
            "read -P 0 8k 120k",
            "read -P 3 12672k 8k",
            "read -P 0 12800k 1M",
        ],
    );
}

#[test]
fn bench_banner_equals_qemu_img_bench_and_json_reports_iops() {
    let dir = tmp();
    let path = at(&dir, "r.qcow2");
    qemu_qcow2(&path, "8M", &["write -P 2 0 8M"]);
    let flags = [
        "-c", "200", "-d", "8", "-o", "512", "-S", "64k", "-s", "16k",
    ];
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"bench"];
    args.extend(flags.iter().map(|f| f as &dyn AsRef<std::ffi::OsStr>));
    args.push(&path);
    let ours = rustbk_ok(&args);
    let theirs = qemu_ok(&args);
    assert_eq!(ours.lines().next(), theirs.lines().next());
    args.insert(1, &"--output=json");
    let v = json(&rustbk_ok(&args));
    assert_eq!(v["count"], 200);
    assert_eq!(v["write"], false);
    assert_eq!(v["format"], "qcow2");
    assert!(v["iops"].as_f64().is_some_and(|iops| iops > 0.0), "{v}");
}
