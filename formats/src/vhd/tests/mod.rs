//! VHD tests: the shared queue checks, interop with images made by `qemu-img` and with
//! libyal's independent reader (`python3-libvhdi`), chains built byte by byte from the
//! specification, and hostile images. A missing tool fails these tests.

// Test sizes are small: offsets and lengths fit a usize.
#![allow(clippy::cast_possible_truncation)]

mod chain;
mod check;
mod crash;
mod hostile;
mod interop;
mod map;
mod repair_crash;
mod spec;
mod zero;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use crate::image::{BlockImage, EngineKind, Format, ImageQueue, OpenOptions};
use crate::open_image;
use crate::suite::read_at;

/// A temporary folder and a path in it.
pub(super) fn temp(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(name);
    (dir, path)
}

/// Runs a tool with `args`, asserting success; returns stdout.
pub(super) fn tool(name: &str, args: &[&str]) -> String {
    let out = Command::new(name)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{name} is required: {e}"));
    assert!(
        out.status.success(),
        "{name} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Options for opening test images.
pub(super) fn opts(read_only: bool) -> OpenOptions {
    OpenOptions {
        read_only,
        engine: EngineKind::Auto,
        cache: crate::CacheMode::None,
        ..OpenOptions::default()
    }
}

/// Opens a VHD image.
pub(super) fn open(path: &Path, read_only: bool) -> Arc<dyn BlockImage> {
    let image = open_image(path, Format::Vpc, &opts(read_only)).expect("open vhd");
    assert_eq!(image.format(), Format::Vpc);
    image
}

/// Reads the whole image through a queue, in pieces of `chunk` bytes.
pub(super) fn read_all(q: &mut dyn ImageQueue, size: u64, chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = 0u64;
    while at < size {
        let n = (size - at).min(chunk as u64) as usize;
        out.extend(read_at(q, at, n).expect("read"));
        at += n as u64;
    }
    out
}

/// The guest bytes of `image` according to `qemu-img convert -O raw`.
pub(super) fn qemu_raw(image: &Path) -> Vec<u8> {
    let out = image.with_extension("converted.raw");
    let _ = std::fs::remove_file(&out);
    tool(
        "qemu-img",
        &[
            "convert",
            "-f",
            "vpc",
            "-O",
            "raw",
            path_str(image),
            path_str(&out),
        ],
    );
    let data = std::fs::read(&out).expect("read converted");
    std::fs::remove_file(&out).expect("remove converted");
    data
}

pub(super) fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Deterministic random numbers (xorshift) for write patterns.
pub(super) struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
