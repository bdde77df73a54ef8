//! Discard: holes in stored grains and flat extents, the parent still read where the child
//! holds nothing, and qemu reading the result as rustbk does.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::image::IoOp;
use crate::suite::{assert_bytes, pattern, read_at, run, write_at};

use super::create::Subformat;
use super::{MIB, child_of, made, mixed, open, qemu_raw, queue, tmp};

fn discard(q: &mut dyn crate::ImageQueue, offset: u64, len: u64) {
    run(q, IoOp::Discard { offset, len }).expect("discard");
}

fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).expect("stat").blocks() * 512
}

#[test]
fn discarded_grains_read_zeros_give_space_back_and_read_so_in_qemu() {
    let dir = tmp();
    let path = made(&dir, "d.vmdk", 8 * MIB, Subformat::MonolithicSparse);
    let mut model = pattern(1, (8 * MIB) as usize);
    {
        let image = open(&path).expect("open");
        let mut q = queue(&image);
        write_at(&mut *q, 0, &model).expect("fill");
        run(&mut *q, IoOp::Flush).expect("flush");
        let before = allocated(&path);
        // Starts and ends inside grains (64 KiB): their other bytes stay.
        discard(&mut *q, MIB + 1000, 4 * MIB);
        model[(MIB + 1000) as usize..(5 * MIB + 1000) as usize].fill(0);
        assert_bytes(
            &read_at(&mut *q, 0, (8 * MIB) as usize).expect("read"),
            &model,
            "after the discard",
        );
        let after = allocated(&path);
        assert!(
            after + 4 * MIB - 256 * 1024 <= before,
            "{before} bytes allocated before, {after} after"
        );
    }
    assert_bytes(&qemu_raw(&path), &model, "read by qemu");
}

#[test]
fn a_discard_across_sparse_zero_and_flat_extents_punches_sparse_and_flat_data() {
    let dir = tmp();
    let path = mixed(&dir);
    let image = open(&path).expect("open");
    let mut q = queue(&image);
    write_at(&mut *q, MIB, &pattern(2, MIB as usize)).expect("sparse data");
    discard(&mut *q, MIB + MIB / 2, 3 * MIB);
    let all = read_at(&mut *q, 0, (5 * MIB) as usize).expect("read");
    let mut model = vec![0u8; (5 * MIB) as usize];
    model[MIB as usize..(MIB + MIB / 2) as usize]
        .copy_from_slice(&pattern(2, MIB as usize)[..(MIB / 2) as usize]);
    model[(3 * MIB) as usize..].fill(0xab);
    model[(3 * MIB) as usize..(4 * MIB + MIB / 2) as usize].fill(0);
    assert_bytes(&all, &model, "mixed image");
    let flat = std::fs::read(dir.path().join("flat.bin")).expect("flat file");
    assert!(
        flat[(MIB) as usize..(2 * MIB + MIB / 2) as usize]
            .iter()
            .all(|&b| b == 0)
    );
    assert!(
        flat[(2 * MIB + MIB / 2) as usize..]
            .iter()
            .all(|&b| b == 0xab)
    );
}

#[test]
fn a_child_discards_its_own_grains_and_still_reads_the_parent_elsewhere() {
    let dir = tmp();
    let base = made(&dir, "base.vmdk", 4 * MIB, Subformat::MonolithicSparse);
    let mut model = pattern(5, (4 * MIB) as usize);
    {
        let image = open(&base).expect("base");
        let mut q = queue(&image);
        write_at(&mut *q, 0, &model).expect("base data");
        run(&mut *q, IoOp::Flush).expect("flush");
    }
    let child = child_of(&dir, "base.vmdk", "child.vmdk");
    let image = open(&child).expect("child");
    let mut q = queue(&image);
    let mine = pattern(6, (MIB / 2) as usize);
    write_at(&mut *q, MIB, &mine).expect("child data");
    model[MIB as usize..(MIB + MIB / 2) as usize].copy_from_slice(&mine);
    discard(&mut *q, MIB / 2, 2 * MIB);
    model[MIB as usize..(MIB + MIB / 2) as usize].fill(0);
    assert_bytes(
        &read_at(&mut *q, 0, (4 * MIB) as usize).expect("read"),
        &model,
        "child over its parent",
    );
}

#[test]
fn a_discard_that_punches_changes_the_cid_and_one_that_does_not_keeps_it() {
    let dir = tmp();
    let path = made(&dir, "c.vmdk", 4 * MIB, Subformat::MonolithicSparse);
    let cid = || super::create::describe(&path).expect("describe").cid;
    let first = cid();
    {
        let image = open(&path).expect("open");
        let mut q = queue(&image);
        discard(&mut *q, 0, 4 * MIB);
    }
    assert_eq!(cid(), first, "nothing stored, nothing punched");
    {
        let image = open(&path).expect("open");
        let mut q = queue(&image);
        write_at(&mut *q, 0, &pattern(3, 65536)).expect("write");
    }
    let written = cid();
    assert_ne!(written, first);
    {
        let image = open(&path).expect("open");
        let mut q = queue(&image);
        discard(&mut *q, 0, 65536);
    }
    assert_ne!(cid(), written, "a punching discard changes the CID");
}
