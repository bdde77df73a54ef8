//! Images made by qemu-img read as qemu reads them; images rustbk writes equal a reference
//! under `qemu-img compare`; the shared queue checks on every kind of disk.

use std::path::Path;

use crate::image::IoOp;
use crate::suite::{self, assert_bytes, pattern, run, write_at};
use crate::vhd::{VhdCreateOptions, VhdSubformat, create};

use super::{Rng, open, path_str, qemu_raw, read_all, temp, tool};

const SIZE: u64 = 32 << 20;

#[test]
fn dynamic_fixed_and_differencing_images_pass_the_shared_queue_checks() {
    let (dir, base) = temp("base.vhd");
    for (name, subformat, block_size) in [
        ("dyn.vhd", VhdSubformat::Dynamic, 2 << 20),
        ("small.vhd", VhdSubformat::Dynamic, 4096),
        ("fixed.vhd", VhdSubformat::Fixed, 2 << 20),
    ] {
        let path = dir.path().join(name);
        let o = VhdCreateOptions {
            subformat,
            block_size,
            parent: None,
        };
        create(&path, SIZE, &o).expect("create");
        let image = open(&path, false);
        let mut q = image.open_queue(suite::DEPTH).expect("queue");
        suite::run_writable(&mut *q, SIZE);
        drop(q);
        drop(image);
        // qemu-img cannot check vpc images: qemu reads back what rustbk wrote instead.
        let image = open(&path, true);
        let mut q = image.open_queue(8).expect("queue");
        assert_bytes(&qemu_raw(&path), &read_all(&mut *q, SIZE, 1 << 20), name);
    }
    create(&base, SIZE, &VhdCreateOptions::default()).expect("base");
    {
        let image = open(&base, false);
        let mut q = image.open_queue(4).expect("queue");
        write_at(&mut *q, 0, &pattern(99, 4 << 20)).expect("base data");
    }
    let child = dir.path().join("child.vhd");
    let o = VhdCreateOptions {
        parent: Some("base.vhd".into()),
        block_size: 65536,
        ..Default::default()
    };
    create(&child, 0, &o).expect("child");
    let image = open(&child, false);
    let mut q = image.open_queue(suite::DEPTH).expect("queue");
    suite::run_writable(&mut *q, SIZE);
}

/// Writes random patterns to a rustbk image and a raw reference alike.
fn random_writes(q: &mut dyn crate::ImageQueue, reference: &mut [u8], seed: u64, count: usize) {
    let mut rng = Rng(seed);
    for i in 0..count {
        let len = ((rng.next() % 64 + 1) * 512) as usize;
        let off = (rng.next() % ((reference.len() - len) as u64 / 512)) * 512;
        let data = pattern(seed * 1000 + i as u64, len);
        write_at(q, off, &data).expect("write");
        reference[off as usize..off as usize + len].copy_from_slice(&data);
    }
}

#[test]
fn images_rustbk_writes_equal_a_reference_under_qemu_img_compare() {
    let (dir, _) = temp("x");
    for (name, subformat, block_size) in [
        ("d.vhd", VhdSubformat::Dynamic, 2 << 20),
        ("s.vhd", VhdSubformat::Dynamic, 512 << 10),
        ("f.vhd", VhdSubformat::Fixed, 2 << 20),
    ] {
        let path = dir.path().join(name);
        let o = VhdCreateOptions {
            subformat,
            block_size,
            parent: None,
        };
        create(&path, SIZE, &o).expect("create");
        let mut reference = vec![0u8; SIZE as usize];
        {
            let image = open(&path, false);
            let mut q = image.open_queue(8).expect("queue");
            random_writes(&mut *q, &mut reference, 7, 200);
            run(&mut *q, IoOp::Flush).expect("flush");
        }
        let raw = dir.path().join(format!("{name}.ref"));
        std::fs::write(&raw, &reference).expect("reference");
        tool(
            "qemu-img",
            &[
                "compare",
                "-f",
                "vpc",
                "-F",
                "raw",
                path_str(&path),
                path_str(&raw),
            ],
        );
        assert_bytes(&qemu_raw(&path), &reference, name);
        let image = open(&path, true);
        let mut q = image.open_queue(8).expect("queue");
        assert_bytes(&read_all(&mut *q, SIZE, 1 << 20), &reference, "reopened");
    }
}

fn assert_reads_like_qemu(path: &Path) {
    let expected = qemu_raw(path);
    let image = open(path, true);
    assert_eq!(
        image.geometry().size,
        expected.len() as u64,
        "{}",
        path.display()
    );
    let mut q = image.open_queue(8).expect("queue");
    for chunk in [1 << 20, 37_376] {
        let got = read_all(&mut *q, expected.len() as u64, chunk);
        assert_bytes(
            &got,
            &expected,
            &format!("{} chunk {chunk}", path.display()),
        );
    }
}

#[test]
fn images_qemu_makes_read_as_qemu_reads_them() {
    let (dir, raw) = temp("src.raw");
    let mut data = vec![0u8; SIZE as usize];
    let mut rng = Rng(3);
    for _ in 0..40 {
        let off = (rng.next() % (SIZE / 65536 - 4)) * 65536;
        let len = 65536 * (1 + rng.next() % 4) as usize;
        let seed = rng.next();
        data[off as usize..off as usize + len].copy_from_slice(&pattern(seed, len));
    }
    std::fs::write(&raw, &data).expect("raw");
    for sub in ["dynamic", "fixed"] {
        let made = dir.path().join(format!("made-{sub}.vhd"));
        let o = format!("subformat={sub}");
        tool(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "vpc",
                "-o",
                &o,
                path_str(&made),
                "24M",
            ],
        );
        let io = tool(
            "qemu-io",
            &[
                "-f",
                "vpc",
                "-c",
                "write -P 0x5a 1M 3M",
                "-c",
                "write -P 0x33 20M 512k",
                path_str(&made),
            ],
        );
        assert!(!io.contains("failed"), "{io}");
        assert_reads_like_qemu(&made);
        let conv = dir.path().join(format!("conv-{sub}.vhd"));
        tool(
            "qemu-img",
            &[
                "convert",
                "-f",
                "raw",
                "-O",
                "vpc",
                "-o",
                &o,
                path_str(&raw),
                path_str(&conv),
            ],
        );
        assert_reads_like_qemu(&conv);
        let expected = qemu_raw(&conv);
        assert_bytes(
            &expected[..SIZE as usize],
            &data,
            "qemu's conversion keeps the data",
        );
    }
}
