//! Reads that one engine read serves straight into the guest's buffers, and reads that only
//! look like one: grains stored out of guest order, and flat extents of two files whose
//! offsets happen to continue each other.

use crate::suite::{assert_bytes, pattern, read_at, write_at};

use super::create::Subformat;
use super::{MIB, made, open, queue, tmp};

/// Reads of 12 KiB across every boundary of `size` bytes in 64 KiB steps, against `model`.
fn reads_across_boundaries(q: &mut dyn crate::ImageQueue, model: &[u8], what: &str) {
    let step = 64 << 10;
    for boundary in (step..model.len()).step_by(step) {
        let at = boundary - 6144;
        let got = read_at(q, at as u64, 12288).expect("read");
        assert_bytes(&got, &model[at..at + 12288], &format!("{what} at {at}"));
    }
}

/// Grains written in the order 1, 0, 2, 3, 5 lie in the file in that order: reads across
/// 0|1 and 1|2 meet grains that do not continue each other, 2|3 ones that do, 3|4 and 5|6
/// unallocated ones.
#[test]
fn grains_stored_out_of_guest_order_read_back_as_written() {
    let dir = tmp();
    let path = made(&dir, "shuffled.vmdk", MIB, Subformat::MonolithicSparse);
    let image = open(&path).expect("open");
    let mut q = queue(&image);
    let mut model = vec![0u8; MIB as usize];
    for (seed, grain) in [(1u64, 1usize), (2, 0), (3, 2), (4, 3), (5, 5)] {
        let data = pattern(seed, 64 << 10);
        write_at(&mut *q, (grain << 16) as u64, &data).expect("write");
        model[grain << 16..(grain + 1) << 16].copy_from_slice(&data);
    }
    reads_across_boundaries(&mut *q, &model, "sparse");
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
