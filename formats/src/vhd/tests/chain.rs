//! Differencing chains rustbk writes read back identically through libyal's libvhdi
//! (`python3-libvhdi`), with its parents set.
//!
//! libvhdi (Debian's 20210425) decodes a VHD sector bitmap byte with an unmasked shift: once
//! a higher bit of a byte is set, it takes every later sector of that byte from the child.
//! The chain it checks is therefore written in 4 KiB units (one bitmap byte each); the
//! sector-granular bitmaps are checked against the model by rustbk's own reads, and by the
//! chain built from the specification in `spec.rs`. Its reads that span blocks of a
//! differencing disk also go wrong (measured: one 16 MiB read returns the parent's bytes
//! for sectors the child holds, while 4 KiB reads of the same chain are right), so the
//! script reads 4 KiB at a time.

use std::path::Path;
use std::process::Command;

use crate::image::IoOp;
use crate::suite::{assert_bytes, run};
use crate::vhd::{VhdCreateOptions, create};

use super::{Rng, open, path_str, read_all, temp};

const SIZE: u64 = 16 << 20;

const PYVHDI: &str = "
import sys, pyvhdi
paths = sys.argv[1:-1]
files = []
for p in paths:
    f = pyvhdi.file()
    f.open(p)
    files.append(f)
for i in range(len(files) - 2, -1, -1):
    files[i].set_parent(files[i + 1])
top = files[0]
size = top.get_media_size()
data = b''.join(top.read_buffer_at_offset(4096, o) for o in range(0, size, 4096))
open(sys.argv[-1], 'wb').write(data)
";

/// The guest bytes of the chain `paths` (top first) as libvhdi reads them.
fn libvhdi_read(paths: &[&Path], out: &Path) -> Vec<u8> {
    let mut c = Command::new("/usr/bin/python3");
    c.args(["-c", PYVHDI]);
    for p in paths {
        c.arg(p);
    }
    let status = c
        .arg(out)
        .output()
        .expect("python3 with pyvhdi (python3-libvhdi) is required");
    assert!(
        status.status.success(),
        "pyvhdi: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    std::fs::read(out).expect("libvhdi output")
}

fn write_random(path: &Path, model: &mut [u8], seed: u64, unit: usize) {
    let image = open(path, false);
    let mut q = image.open_queue(8).expect("queue");
    let mut rng = Rng(seed);
    for i in 0..60 {
        let len = (rng.next() % 24 + 1) as usize * unit;
        let off = (rng.next() % ((SIZE - len as u64) / unit as u64)) * unit as u64;
        let data = crate::suite::pattern(seed * 977 + i, len);
        crate::suite::write_at(&mut *q, off, &data).expect("write");
        model[off as usize..off as usize + len].copy_from_slice(&data);
    }
    run(&mut *q, IoOp::Flush).expect("flush");
}

#[test]
fn a_depth_three_chain_rustbk_writes_reads_back_identically_through_libvhdi() {
    let (dir, base) = temp("base.vhd");
    let mid = dir.path().join("mid.vhd");
    let top = dir.path().join("top.vhd");
    let mut model = vec![0u8; SIZE as usize];
    create(&base, SIZE, &VhdCreateOptions::default()).expect("base");
    write_random(&base, &mut model, 1, 4096);
    let out = dir.path().join("libvhdi.raw");
    assert_bytes(
        &libvhdi_read(&[&base], &out),
        &model,
        "libvhdi reads the base",
    );
    let child = |parent: &str, bs: u32| VhdCreateOptions {
        parent: Some(parent.into()),
        block_size: bs,
        ..Default::default()
    };
    create(&mid, 0, &child("base.vhd", 512 << 10)).expect("mid");
    write_random(&mid, &mut model, 2, 4096);
    assert_bytes(
        &libvhdi_read(&[&mid, &base], &out),
        &model,
        "libvhdi reads mid",
    );
    create(&top, 0, &child("mid.vhd", 2 << 20)).expect("top");
    write_random(&top, &mut model, 3, 4096);
    let image = open(&top, true);
    let mut q = image.open_queue(8).expect("queue");
    assert_bytes(
        &read_all(&mut *q, SIZE, 1 << 20),
        &model,
        "rustbk reads the chain",
    );
    let got = libvhdi_read(&[&top, &mid, &base], &out);
    assert_bytes(&got, &model, "libvhdi reads the chain rustbk wrote");
    let _ = path_str(&out);
    drop(q);
    drop(image);
    write_random(&top, &mut model, 4, 512);
    let image = open(&top, true);
    let mut q = image.open_queue(8).expect("queue");
    assert_bytes(
        &read_all(&mut *q, SIZE, 999_936),
        &model,
        "sector-granular writes",
    );
}
