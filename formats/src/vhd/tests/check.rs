//! The VHD checker and its repairs on images built here and damaged byte by byte.

use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::image::IoOp;
use crate::qcow2::check::Repair;
use crate::suite::{assert_bytes, pattern, run, write_at};
use crate::vhd::check::{FindingKind, VhdCheckOptions, VhdCheckReport, check};
use crate::vhd::{VhdCreateOptions, VhdSubformat, create};

use super::{open, read_all, temp};

pub(super) const SIZE: u64 = 8 << 20;
const BLOCK: u64 = 2 << 20;
/// Bitmap sector plus data of a 2 MiB block.
const SPAN: u64 = BLOCK + 512;
/// Where the BAT of a new image is.
const BAT: u64 = 1536;

fn check_with(path: &Path, repair: Repair) -> VhdCheckReport {
    let opts = VhdCheckOptions {
        repair,
        ..VhdCheckOptions::default()
    };
    check(path, &opts).expect("check completes")
}

fn messages(r: &VhdCheckReport, kind: FindingKind) -> Vec<&str> {
    r.findings
        .iter()
        .filter(|f| f.kind == kind)
        .map(|f| f.message.as_str())
        .collect()
}

/// A dynamic VHD with data in blocks 0, 3 and 1 (allocated in that order); returns its
/// guest bytes.
pub(super) fn written(path: &Path) -> Vec<u8> {
    create(path, SIZE, &VhdCreateOptions::default()).expect("create");
    let mut model = vec![0u8; SIZE as usize];
    let image = open(path, false);
    let mut q = image.open_queue(4).expect("queue");
    for (i, off) in [4096u64, 3 * BLOCK + 512, BLOCK + 65536]
        .into_iter()
        .enumerate()
    {
        let data = pattern(i as u64 + 1, 8192);
        write_at(&mut *q, off, &data).expect("write");
        model[off as usize..off as usize + data.len()].copy_from_slice(&data);
    }
    run(&mut *q, IoOp::Flush).expect("flush");
    model
}

fn file(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open")
}

pub(super) fn read(path: &Path, at: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    file(path).read_exact_at(&mut buf, at).expect("read");
    buf
}

pub(super) fn write(path: &Path, at: u64, data: &[u8]) {
    file(path).write_all_at(data, at).expect("write");
}

pub(super) fn size(path: &Path) -> u64 {
    std::fs::metadata(path).expect("stat").len()
}

/// Appends `len` bytes of garbage where the footer is and moves the footer after them, as
/// a crash between a block's allocation and its BAT update leaves a file.
pub(super) fn leak_tail(path: &Path, len: u64) {
    let end = size(path);
    let footer = read(path, end - 512, 512);
    write(path, end - 512, &pattern(99, len as usize));
    write(path, end - 512 + len, &footer);
}

fn set_bat(path: &Path, index: u64, entry: u32) {
    write(path, BAT + index * 4, &entry.to_be_bytes());
}

fn bat(path: &Path, index: u64) -> u32 {
    let b = read(path, BAT + index * 4, 4);
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

pub(super) fn contents(path: &Path) -> Vec<u8> {
    let image = open(path, true);
    let mut q = image.open_queue(4).expect("queue");
    read_all(&mut *q, SIZE, 1 << 20)
}

#[test]
fn a_written_dynamic_vhd_checks_clean_with_its_block_counts() {
    let (_dir, path) = temp("clean.vhd");
    written(&path);
    let r = check_with(&path, Repair::None);
    assert!(r.is_clean(), "{r:?}");
    assert_eq!((r.total_blocks, r.allocated_blocks), (4, 3));
    // Guest order 0, 1, 3 sits in the file as 0, 3, 1: blocks 1 and 3 do not follow.
    assert_eq!(r.fragmented_blocks, 2);
    assert_eq!(r.image_end_offset, size(&path));
}

#[test]
fn a_fresh_fixed_vhd_checks_clean_and_a_short_one_is_corrupt() {
    let (_dir, path) = temp("fixed.vhd");
    let opts = VhdCreateOptions {
        subformat: VhdSubformat::Fixed,
        ..Default::default()
    };
    create(&path, SIZE, &opts).expect("create");
    assert!(check_with(&path, Repair::None).is_clean());
    let footer = read(&path, SIZE, 512);
    file(&path).set_len(SIZE - 4096).expect("truncate");
    write(&path, SIZE - 4096 - 512, &footer);
    let r = check_with(&path, Repair::All);
    assert_eq!(r.corruptions, 1, "{r:?}");
    assert!(messages(&r, FindingKind::Corruption)[0].contains("fixed VHD"));
    assert!(
        r.repairs.iter().any(|l| l.starts_with("Not repaired")),
        "{r:?}"
    );
}

#[test]
fn a_leaked_tail_is_found_and_given_back_by_repair_leaks_keeping_the_data() {
    let (_dir, path) = temp("leak.vhd");
    let model = written(&path);
    let clean = size(&path);
    leak_tail(&path, 2 * SPAN);
    let r = check_with(&path, Repair::None);
    assert_eq!(
        (r.corruptions, r.leaks, r.leaked_bytes),
        (0, 1, 2 * SPAN),
        "{r:?}"
    );
    assert_eq!(r.image_end_offset, clean);
    assert_eq!(
        size(&path),
        clean + 2 * SPAN,
        "a check alone changes nothing"
    );
    let r = check_with(&path, Repair::Leaks);
    assert!(r.is_clean(), "{r:?}");
    assert_eq!(r.leaks_fixed, 1);
    assert_eq!(size(&path), clean);
    assert_eq!(read(&path, clean - 512, 512), read(&path, 0, 512));
    assert_bytes(&contents(&path), &model, "the data after the repair");
}

#[test]
fn overlapping_blocks_are_corruptions_that_no_repair_touches() {
    let (_dir, path) = temp("overlap.vhd");
    written(&path);
    // Block 2 (unallocated) points half way into block 3's data.
    set_bat(&path, 2, bat(&path, 3) + 2048);
    let before = std::fs::read(&path).expect("read");
    let r = check_with(&path, Repair::All);
    let errors = messages(&r, FindingKind::Corruption);
    assert!(errors.iter().any(|m| m.contains("overlap")), "{errors:?}");
    assert!(r.corruptions >= 1);
    assert!(
        r.repairs.iter().any(|l| l.starts_with("Not repaired")),
        "{r:?}"
    );
    assert_eq!(
        std::fs::read(&path).expect("read"),
        before,
        "nothing written"
    );
}

#[test]
fn a_bat_entry_past_the_end_of_the_file_is_a_corruption() {
    let (_dir, path) = temp("past.vhd");
    written(&path);
    let sectors = u32::try_from(size(&path) / 512).expect("small");
    set_bat(&path, 2, sectors + 100);
    let r = check_with(&path, Repair::None);
    assert_eq!(r.corruptions, 1, "{r:?}");
    assert!(messages(&r, FindingKind::Corruption)[0].contains("file is too short"));
}

#[test]
fn a_block_over_the_bat_is_a_corruption() {
    let (_dir, path) = temp("meta.vhd");
    written(&path);
    set_bat(&path, 2, 3);
    let r = check_with(&path, Repair::None);
    let errors = messages(&r, FindingKind::Corruption);
    assert!(
        errors.iter().any(|m| m.contains("overlaps the BAT")),
        "{errors:?}"
    );
}

#[test]
fn a_damaged_footer_copy_is_rewritten_by_repair_all_only() {
    let (_dir, path) = temp("copy.vhd");
    let model = written(&path);
    write(&path, 100, b"garbage");
    let r = check_with(&path, Repair::None);
    assert_eq!(r.corruptions, 1, "{r:?}");
    assert!(messages(&r, FindingKind::Corruption)[0].contains("copy at offset 0"));
    let r = check_with(&path, Repair::Leaks);
    assert_eq!(
        (r.corruptions, r.corruptions_fixed),
        (1, 0),
        "-r leaks leaves it"
    );
    let r = check_with(&path, Repair::All);
    assert!(r.is_clean(), "{r:?}");
    assert_eq!(r.corruptions_fixed, 1);
    let end = size(&path);
    assert_eq!(read(&path, 0, 512), read(&path, end - 512, 512));
    assert_bytes(&contents(&path), &model, "the data after the repair");
}

#[test]
fn a_damaged_end_footer_is_restored_from_the_copy() {
    let (_dir, path) = temp("end.vhd");
    let model = written(&path);
    let end = size(&path);
    write(&path, end - 512 + 64, &[0xde, 0xad]);
    let r = check_with(&path, Repair::None);
    assert_eq!(r.corruptions, 1, "{r:?}");
    let r = check_with(&path, Repair::All);
    assert!(r.is_clean(), "{r:?}");
    assert_eq!(read(&path, end - 512, 512), read(&path, 0, 512));
    assert_bytes(&contents(&path), &model, "the data after the repair");
}

#[test]
fn a_wrong_header_checksum_is_rewritten_only_when_nothing_else_is_wrong() {
    let (_dir, path) = temp("sum.vhd");
    written(&path);
    let sum = read(&path, 512 + 36, 4);
    write(&path, 512 + 36, &[sum[0], sum[1], sum[2], sum[3] ^ 1]);
    let broken = std::fs::read(&path).expect("read");
    set_bat(&path, 2, 3);
    let r = check_with(&path, Repair::All);
    assert_eq!(r.corruptions_fixed, 0, "{r:?}");
    assert!(r.repairs.iter().any(|l| l.contains("checksum")), "{r:?}");
    std::fs::write(&path, &broken).expect("restore");
    let r = check_with(&path, Repair::Leaks);
    assert_eq!(r.corruptions, 1, "-r leaks leaves it: {r:?}");
    let r = check_with(&path, Repair::All);
    assert!(r.is_clean(), "{r:?}");
    assert_eq!(read(&path, 512 + 36, 4), sum);
}

#[test]
fn a_leak_behind_a_wrong_header_checksum_is_not_given_back_by_repair_leaks() {
    let (_dir, path) = temp("untrusted.vhd");
    written(&path);
    leak_tail(&path, SPAN);
    let sum = read(&path, 512 + 36, 4);
    write(&path, 512 + 36, &[sum[0] ^ 1, sum[1], sum[2], sum[3]]);
    let before = size(&path);
    let r = check_with(&path, Repair::Leaks);
    assert_eq!((r.leaks, r.leaks_fixed), (1, 0), "{r:?}");
    assert_eq!(size(&path), before);
    assert!(
        r.repairs.iter().any(|l| l.contains("cannot be trusted")),
        "{r:?}"
    );
}

#[test]
fn a_differencing_disk_names_its_parent_and_warns_when_it_is_gone() {
    let (dir, base) = temp("base.vhd");
    create(&base, SIZE, &VhdCreateOptions::default()).expect("base");
    let child = dir.path().join("child.vhd");
    let opts = VhdCreateOptions {
        parent: Some("base.vhd".into()),
        ..Default::default()
    };
    create(&child, 0, &opts).expect("child");
    let r = check_with(&child, Repair::None);
    assert!(r.is_clean(), "{r:?}");
    assert!(r.findings.is_empty(), "{r:?}");
    assert_eq!(r.backing_filename.as_deref(), Some("./base.vhd"));
    std::fs::remove_file(&base).expect("remove");
    let r = check_with(&child, Repair::None);
    assert_eq!(r.corruptions, 0);
    let warnings = messages(&r, FindingKind::Warning);
    assert!(warnings[0].contains("parent not found"), "{warnings:?}");
}

#[test]
fn a_fixed_vhd_with_space_before_its_footer_leaks_and_repair_leaks_trims_it() {
    let (_dir, path) = temp("fixed-leak.vhd");
    let opts = VhdCreateOptions {
        subformat: VhdSubformat::Fixed,
        ..Default::default()
    };
    create(&path, SIZE, &opts).expect("create");
    write(&path, 4096, &pattern(5, 4096));
    leak_tail(&path, 8192);
    let r = check_with(&path, Repair::None);
    assert_eq!(
        (r.leaks, r.leaked_bytes, r.corruptions),
        (1, 8192, 0),
        "{r:?}"
    );
    let r = check_with(&path, Repair::Leaks);
    assert!(r.is_clean(), "{r:?}");
    assert_eq!(size(&path), SIZE + 512);
    assert_eq!(read(&path, 4096, 4096), pattern(5, 4096));
}

#[test]
fn randomly_damaged_metadata_never_panics_the_checker_or_its_repairs() {
    let (_dir, path) = temp("random.vhd");
    written(&path);
    let clean = std::fs::read(&path).expect("read");
    let mut rng = super::Rng(0x5eed);
    let mut outcomes = [0u32; 2];
    let mut repaired_clean = 0;
    for round in 0..120 {
        let mut bytes = clean.clone();
        for _ in 0..rng.next() % 6 + 1 {
            // The footer copy, the header and the BAT.
            let at = (rng.next() % 2048) as usize;
            bytes[at] = rng.next() as u8;
        }
        if round % 4 == 0 {
            let at = bytes.len() - 512 + (rng.next() % 512) as usize;
            bytes[at] ^= 0x5a;
        }
        std::fs::write(&path, &bytes).expect("write");
        let first = check(&path, &VhdCheckOptions::default());
        outcomes[usize::from(first.is_ok())] += 1;
        opens_if_clean(&path, first.ok(), round);
        let repaired = check_with_result(&path, Repair::All);
        repaired_clean += u32::from(opens_if_clean(&path, repaired.ok(), round));
    }
    assert!(
        outcomes[1] > 0,
        "some damaged images are still checked: {outcomes:?}"
    );
    assert!(repaired_clean > 0, "some damaged images are repaired");
    eprintln!("checks (failed, completed): {outcomes:?}; clean after -r all: {repaired_clean}");
}

fn check_with_result(path: &Path, repair: Repair) -> Result<VhdCheckReport, crate::Error> {
    let opts = VhdCheckOptions {
        repair,
        ..VhdCheckOptions::default()
    };
    check(path, &opts)
}

/// An image the checker finds clean must open; true if it was clean.
fn opens_if_clean(path: &Path, report: Option<VhdCheckReport>, round: u32) -> bool {
    let Some(r) = report.filter(VhdCheckReport::is_clean) else {
        return false;
    };
    let opened = crate::open_image(path, crate::Format::Vpc, &super::opts(true));
    assert!(
        opened.is_ok(),
        "round {round}: clean {r:?} but {:?}",
        opened.err()
    );
    true
}

/// The BAT entries (file offsets of blocks) of a new image made by rustbk.
fn block_offsets(path: &Path, entries: u64) -> Vec<u64> {
    let mut bat = vec![0u8; entries as usize * 4];
    file(path).read_exact_at(&mut bat, BAT).expect("BAT");
    bat.chunks_exact(4)
        .map(|e| u32::from_be_bytes([e[0], e[1], e[2], e[3]]))
        .filter(|&e| e != u32::MAX)
        .map(|e| u64::from(e) * 512)
        .collect()
}

#[test]
fn new_blocks_have_aligned_data_and_are_neither_leaks_nor_fragments() {
    let (dir, _) = temp("x");
    for block_size in [2u32 << 20, 512 << 10, 16 << 20, 1024] {
        let path = dir.path().join(format!("b{block_size}.vhd"));
        let o = VhdCreateOptions {
            block_size,
            ..VhdCreateOptions::default()
        };
        let block = u64::from(block_size);
        let size = SIZE.max(4 * block);
        create(&path, size, &o).expect("create");
        let bitmap = crate::vhd::dynamic::bitmap_len(block_size);
        let mut model = vec![0u8; size as usize];
        {
            let image = open(&path, false);
            let mut q = image.open_queue(4).expect("queue");
            for (i, b) in [0u64, 1, 3].into_iter().enumerate() {
                let data = pattern(i as u64 + 1, 512);
                let off = b * block + 512.min(block - 512);
                write_at(&mut *q, off, &data).expect("write");
                model[off as usize..off as usize + 512].copy_from_slice(&data);
            }
            run(&mut *q, IoOp::Flush).expect("flush");
        }
        let offsets = block_offsets(&path, size / block);
        assert_eq!(offsets.len(), 3, "{block_size}");
        let align = block.min(4096);
        for at in &offsets {
            assert_eq!((at + bitmap) % align, 0, "block {block_size}: data at {at}");
        }
        let r = check_with(&path, Repair::None);
        assert!(r.is_clean(), "{block_size}: {:?}", r.findings);
        assert_eq!((r.leaks, r.fragmented_blocks), (0, 0), "{block_size}");
        let image = open(&path, true);
        let mut q = image.open_queue(4).expect("queue");
        assert_bytes(&read_all(&mut *q, size, 1 << 20), &model, "aligned blocks");
    }
}
