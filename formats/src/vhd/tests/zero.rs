//! Discard and write-zeroes on fixed, dynamic and differencing disks.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::image::IoOp;
use crate::qcow2::check::Repair;
use crate::suite::{assert_bytes, pattern, run, write_at};
use crate::vhd::check::{VhdCheckOptions, check};
use crate::vhd::{VhdCreateOptions, VhdSubformat, create};

use super::{open, qemu_raw, read_all, temp};

const SIZE: u64 = 8 << 20;
const BLOCK: u64 = 2 << 20;

fn zero_op(q: &mut dyn crate::ImageQueue, discard: bool, offset: u64, len: u64) {
    let op = match discard {
        true => IoOp::Discard { offset, len },
        false => IoOp::WriteZeroes { offset, len },
    };
    run(q, op).expect("discard or write-zeroes");
}

fn allocated_bytes(path: &Path) -> u64 {
    std::fs::metadata(path).expect("stat").blocks() * 512
}

fn assert_clean(path: &Path) {
    let opts = VhdCheckOptions {
        repair: Repair::None,
        ..VhdCheckOptions::default()
    };
    let r = check(path, &opts).expect("check");
    assert!(r.is_clean() && r.leaks == 0, "{:?}", r.findings);
}

#[test]
fn dynamic_and_fixed_disks_punch_what_they_store_and_read_zeros_there() {
    let (dir, _) = temp("x");
    for (name, subformat) in [
        ("d.vhd", VhdSubformat::Dynamic),
        ("f.vhd", VhdSubformat::Fixed),
    ] {
        let path = dir.path().join(name);
        let o = VhdCreateOptions {
            subformat,
            ..VhdCreateOptions::default()
        };
        create(&path, SIZE, &o).expect("create");
        let mut model = pattern(1, SIZE as usize);
        let image = open(&path, false);
        let mut q = image.open_queue(8).expect("queue");
        write_at(&mut *q, 0, &model).expect("fill");
        run(&mut *q, IoOp::Flush).expect("flush");
        let before = allocated_bytes(&path);
        // Block 1 whole, and parts of blocks 2 and 3 that start and end inside sectors.
        zero_op(&mut *q, true, BLOCK, BLOCK);
        zero_op(&mut *q, false, 2 * BLOCK + 1000, BLOCK + 3000);
        run(&mut *q, IoOp::Flush).expect("flush");
        model[BLOCK as usize..2 * BLOCK as usize].fill(0);
        model[2 * BLOCK as usize + 1000..3 * BLOCK as usize + 4000].fill(0);
        assert_bytes(&read_all(&mut *q, SIZE, 1 << 20), &model, name);
        drop(q);
        drop(image);
        let after = allocated_bytes(&path);
        // The file system may spend a block or two on its extent tree.
        assert!(
            after + BLOCK - 65536 <= before,
            "{name}: {before} bytes allocated before the discard, {after} after"
        );
        assert_bytes(&qemu_raw(&path), &model, "read by qemu");
        if subformat == VhdSubformat::Dynamic {
            assert_clean(&path);
        }
    }
}

#[test]
fn unallocated_blocks_of_a_dynamic_disk_stay_unallocated() {
    let (_dir, path) = temp("d.vhd");
    create(&path, SIZE, &VhdCreateOptions::default()).expect("create");
    let image = open(&path, false);
    let mut q = image.open_queue(8).expect("queue");
    let size = std::fs::metadata(&path).expect("stat").len();
    zero_op(&mut *q, false, 0, SIZE);
    zero_op(&mut *q, true, 0, SIZE);
    run(&mut *q, IoOp::Flush).expect("flush");
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), size);
    assert_bytes(
        &read_all(&mut *q, SIZE, 1 << 20),
        &vec![0; SIZE as usize],
        "zeros",
    );
}

/// A parent full of one pattern and a differencing child with another pattern in its first
/// 64 KiB; returns the child's path and its guest bytes.
fn chain(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let base = dir.join("base.vhd");
    create(&base, SIZE, &VhdCreateOptions::default()).expect("base");
    let mut model = pattern(7, SIZE as usize);
    {
        let image = open(&base, false);
        let mut q = image.open_queue(4).expect("queue");
        write_at(&mut *q, 0, &model).expect("base data");
        run(&mut *q, IoOp::Flush).expect("flush");
    }
    let child = dir.join("child.vhd");
    let o = VhdCreateOptions {
        parent: Some("base.vhd".into()),
        ..VhdCreateOptions::default()
    };
    create(&child, 0, &o).expect("child");
    let image = open(&child, false);
    let mut q = image.open_queue(4).expect("queue");
    let mine = pattern(8, 65536);
    write_at(&mut *q, 0, &mine).expect("child data");
    run(&mut *q, IoOp::Flush).expect("flush");
    model[..65536].copy_from_slice(&mine);
    (child, model)
}

#[test]
fn write_zeroes_on_a_differencing_disk_hides_the_parent_in_the_range_only() {
    let (dir, _) = temp("x");
    let (child, mut model) = chain(dir.path());
    {
        let image = open(&child, false);
        let mut q = image.open_queue(4).expect("queue");
        // Inside the child's data and past it, in block 0; then an unallocated block, both
        // ends inside sectors whose other bytes must still come from the parent.
        zero_op(&mut *q, false, 60_000, 20_000);
        zero_op(&mut *q, false, 2 * BLOCK + 700, 5000);
        run(&mut *q, IoOp::Flush).expect("flush");
    }
    model[60_000..80_000].fill(0);
    model[2 * BLOCK as usize + 700..2 * BLOCK as usize + 5700].fill(0);
    let image = open(&child, true);
    let mut q = image.open_queue(4).expect("queue");
    assert_bytes(&read_all(&mut *q, SIZE, 1 << 20), &model, "reopened");
    assert_clean(&child);
}

#[test]
fn discard_on_a_differencing_disk_zeroes_its_own_sectors_and_keeps_the_parents() {
    let (dir, _) = temp("x");
    let (child, mut model) = chain(dir.path());
    {
        let image = open(&child, false);
        let mut q = image.open_queue(4).expect("queue");
        zero_op(&mut *q, true, 4096, 3 * BLOCK);
        run(&mut *q, IoOp::Flush).expect("flush");
    }
    model[4096..65536].fill(0);
    let image = open(&child, true);
    let mut q = image.open_queue(4).expect("queue");
    assert_bytes(&read_all(&mut *q, SIZE, 1 << 20), &model, "reopened");
    assert_clean(&child);
}
