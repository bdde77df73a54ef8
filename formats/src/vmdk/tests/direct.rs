//! Reads and writes that one engine I/O serves in the guest's own buffers, and ones that only
//! look like one: grains stored out of guest order, and flat extents of two files whose
//! offsets happen to continue each other.

use crate::suite::{assert_bytes, pattern, read_at, write_at};

use super::create::{self, Subformat};
use super::{MIB, made, open, qemu_raw, queue, tmp};

/// Reads of 12 KiB across every boundary of `size` bytes in 64 KiB steps, against `model`.
fn reads_across_boundaries(q: &mut dyn crate::ImageQueue, model: &[u8], what: &str) {
    let step = 64 << 10;
    for boundary in (step..model.len()).step_by(step) {
        let at = boundary - 6144;
        let got = read_at(q, at as u64, 12288).expect("read");
        assert_bytes(&got, &model[at..at + 12288], &format!("{what} at {at}"));
    }
}

/// Writes of 12 KiB across every boundary of `model` in 64 KiB steps, each of new bytes, which
/// `model` takes too.
fn writes_across_boundaries(q: &mut dyn crate::ImageQueue, model: &mut [u8], seed: u64) {
    let step = 64 << 10;
    for (i, boundary) in (step..model.len()).step_by(step).enumerate() {
        let at = boundary - 6144;
        let data = pattern(seed + i as u64, 12288);
        write_at(q, at as u64, &data).expect("write");
        model[at..at + 12288].copy_from_slice(&data);
    }
}

/// Writes grains 1, 0, 2, 3 and 5 whole, in that order, so they lie in the file in that
/// order: across 0|1 and 1|2 the grains do not continue each other, across 2|3 they do, and
/// 3|4 and 5|6 meet unallocated grains.
fn shuffled(q: &mut dyn crate::ImageQueue, model: &mut [u8]) {
    for (seed, grain) in [(1u64, 1usize), (2, 0), (3, 2), (4, 3), (5, 5)] {
        let data = pattern(seed, 64 << 10);
        write_at(q, (grain << 16) as u64, &data).expect("write");
        model[grain << 16..(grain + 1) << 16].copy_from_slice(&data);
    }
}

/// Reads across grains stored out of guest order (see [`shuffled`]).
#[test]
fn grains_stored_out_of_guest_order_read_back_as_written() {
    let dir = tmp();
    let path = made(&dir, "shuffled.vmdk", MIB, Subformat::MonolithicSparse);
    let image = open(&path).expect("open");
    let mut q = queue(&image);
    let mut model = vec![0u8; MIB as usize];
    shuffled(&mut *q, &mut model);
    reads_across_boundaries(&mut *q, &model, "sparse");
}

/// Writes across grains stored out of guest order land where rustbk and qemu read them:
/// in place across 2|3 (one run), in two places across 0|1 and 1|2, and with a new grain
/// across 3|4 and 5|6.
#[test]
fn writes_across_grains_stored_out_of_guest_order_land_where_qemu_reads_them() {
    let dir = tmp();
    let path = made(&dir, "shuffled.vmdk", MIB, Subformat::MonolithicSparse);
    let mut model = vec![0u8; MIB as usize];
    {
        let image = open(&path).expect("open");
        let mut q = queue(&image);
        shuffled(&mut *q, &mut model);
        writes_across_boundaries(&mut *q, &mut model, 100);
        reads_across_boundaries(&mut *q, &model, "rewritten");
    }
    assert_bytes(&qemu_raw(&path), &model, "read by qemu");
}

/// A write in place (a flat extent, or a grain already stored) changes the CID as the first
/// write of every image does: a child made of the old content must see that it changed.
#[test]
fn a_write_in_place_changes_the_cid() {
    let dir = tmp();
    let cid = |name: &str| {
        create::describe(&dir.path().join(name))
            .expect("describe")
            .cid
    };
    made(&dir, "flat.vmdk", MIB, Subformat::MonolithicFlat);
    let sparse = made(&dir, "sparse.vmdk", MIB, Subformat::MonolithicSparse);
    {
        let image = open(&sparse).expect("open");
        write_at(&mut *queue(&image), 0, &[7u8; 65536]).expect("allocating write");
    }
    for name in ["flat.vmdk", "sparse.vmdk"] {
        let before = cid(name);
        let image = open(&dir.path().join(name)).expect("open");
        write_at(&mut *queue(&image), 4096, &[9u8; 4096]).expect("write in place");
        drop(image);
        assert_ne!(cid(name), before, "{name}");
    }
}

/// Two flat extents in two files, the second starting 1 MiB into its file: where the first
/// ends (byte 1 MiB of its file) the second goes on at byte 1 MiB of another file.
#[test]
fn flat_extents_of_two_files_are_read_from_each_file() {
    let dir = tmp();
    std::fs::write(dir.path().join("a.bin"), vec![0x0au8; MIB as usize]).expect("a");
    let mut b = vec![0u8; 2 * MIB as usize];
    b[MIB as usize..].fill(0x0b);
    std::fs::write(dir.path().join("b.bin"), &b).expect("b");
    let text = "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n\
        createType=\"monolithicFlat\"\n\
        RW 2048 FLAT \"a.bin\" 0\nRW 2048 FLAT \"b.bin\" 2048\n";
    let path = dir.path().join("two.vmdk");
    std::fs::write(&path, text).expect("descriptor");
    let image = open(&path).expect("open");
    let mut q = queue(&image);
    let mut model = vec![0x0au8; 2 * MIB as usize];
    model[MIB as usize..].fill(0x0b);
    reads_across_boundaries(&mut *q, &model, "flat");
}

/// Writes across the end of the first of two flat files go on at the right byte of the second.
#[test]
fn writes_across_flat_extents_of_two_files_land_in_each_file() {
    let dir = tmp();
    std::fs::write(dir.path().join("a.bin"), vec![0u8; MIB as usize]).expect("a");
    std::fs::write(dir.path().join("b.bin"), vec![0u8; 2 * MIB as usize]).expect("b");
    let text = "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n\
        createType=\"monolithicFlat\"\n\
        RW 2048 FLAT \"a.bin\" 0\nRW 2048 FLAT \"b.bin\" 2048\n";
    let path = dir.path().join("two.vmdk");
    std::fs::write(&path, text).expect("descriptor");
    let mut model = vec![0u8; 2 * MIB as usize];
    {
        let image = open(&path).expect("open");
        let mut q = queue(&image);
        writes_across_boundaries(&mut *q, &mut model, 200);
        reads_across_boundaries(&mut *q, &model, "flat");
    }
    let half = MIB as usize;
    let a = std::fs::read(dir.path().join("a.bin")).expect("a");
    let b = std::fs::read(dir.path().join("b.bin")).expect("b");
    assert_bytes(&a, &model[..half], "a.bin");
    assert_bytes(&b[half..], &model[half..], "b.bin from 1 MiB");
    assert!(b[..half].iter().all(|&x| x == 0), "b.bin before 1 MiB");
}
