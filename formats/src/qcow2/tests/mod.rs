//! qcow2 tests: interop with images made by `qemu-img`/`qemu-io`, images written by this
//! driver checked by `qemu-img check` and `convert`, hostile images, write ordering, several
//! queues on one image.
//! The QEMU tools are required: a missing tool fails these tests.

mod confined;
mod discard;
mod hostile;
mod in_place;
mod inflight;
mod interop;
mod miss;
mod model;
mod ordering;
mod queues;
mod written;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use crate::image::{BlockImage, EngineKind, Format, ImageQueue, OpenOptions};
use crate::open_image;
use crate::qcow2::layout::small;
use crate::suite::{read_at, run};

/// Runs `qemu-img` with `args`, asserting success; returns stdout.
pub(super) fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img is required (Debian package qemu-utils)");
    assert!(
        out.status.success(),
        "qemu-img {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `qemu-io` commands on an image, asserting success.
pub(super) fn qemu_io(image: &Path, format: &str, cmds: &[&str]) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", format]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    let out = c
        .arg(image)
        .output()
        .expect("qemu-io is required (Debian package qemu-utils)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !text.contains("failed"),
        "qemu-io {cmds:?} failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Asserts that `qemu-img check` finds no corruption and no leak (exit status 0).
pub(super) fn check_clean(image: &Path) {
    let out = Command::new("qemu-img")
        .args(["check", "--output=json"])
        .arg(image)
        .output()
        .expect("qemu-img is required");
    assert_eq!(
        out.status.code(),
        Some(0),
        "qemu-img check {}: {}{}",
        image.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The guest-visible bytes of `image` according to `qemu-img convert -O raw`.
pub(super) fn qemu_raw(image: &Path) -> Vec<u8> {
    let out = image.with_extension("converted.raw");
    let _ = std::fs::remove_file(&out);
    qemu_img(&[
        "convert",
        "-O",
        "raw",
        image.to_str().expect("utf-8 path"),
        out.to_str().expect("utf-8 path"),
    ]);
    let data = std::fs::read(&out).expect("read converted");
    std::fs::remove_file(&out).expect("remove converted");
    data
}

/// Options for opening test images.
pub(super) fn opts(read_only: bool, engine: EngineKind) -> OpenOptions {
    OpenOptions {
        read_only,
        engine,
        cache: crate::CacheMode::None,
        ..OpenOptions::default()
    }
}

/// Opens a qcow2 image and checks it is one.
pub(super) fn open(path: &Path, read_only: bool) -> Arc<dyn BlockImage> {
    let image = open_image(path, Format::Qcow2, &opts(read_only, EngineKind::Auto)).expect("open");
    assert_eq!(image.format(), Format::Qcow2);
    image
}

/// Reads the whole image through a queue, in pieces of `chunk` bytes.
pub(super) fn read_all(q: &mut dyn ImageQueue, size: u64, chunk: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(small(size));
    let mut at = 0u64;
    while at < size {
        let n = small((size - at).min(chunk as u64));
        out.extend(read_at(q, at, n).expect("read"));
        at += n as u64;
    }
    out
}

/// Asserts that our reading of `path` equals `qemu-img convert`'s, with two chunkings.
pub(super) fn assert_reads_like_qemu(path: &Path) {
    assert_opened_reads_like_qemu(&*open(path, true), path);
}

/// Like [`assert_reads_like_qemu`], on `image` opened from `path`.
pub(super) fn assert_opened_reads_like_qemu(image: &dyn BlockImage, path: &Path) {
    let expected = qemu_raw(path);
    assert_eq!(image.geometry().size, expected.len() as u64);
    let mut q = image.open_queue(8).expect("queue");
    for chunk in [1 << 20, 37_042] {
        let got = read_all(&mut *q, expected.len() as u64, chunk);
        crate::suite::assert_bytes(
            &got,
            &expected,
            &format!("{} chunk {chunk}", path.display()),
        );
    }
    run(&mut *q, crate::IoOp::Flush).expect("flush");
}

/// A fresh temporary folder and a path in it.
pub(super) fn temp(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(name);
    (dir, path)
}

/// The path as &str.
pub(super) fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}
