//! Hostile and damaged images: each gets a clear error, bounded memory and no panic.

use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::Error;
use crate::image::Format;
use crate::open_image;
use crate::vhd::footer::checksum;
use crate::vhd::{VhdCreateOptions, create};

use super::{opts, temp};

/// Changes bytes of the dynamic header (at 512) and fixes its checksum.
fn patch_header(path: &Path, at: usize, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open");
    let mut h = [0u8; 1024];
    f.read_exact_at(&mut h, 512).expect("read");
    h[at..at + bytes.len()].copy_from_slice(bytes);
    let sum = checksum(&h, 36);
    h[36..40].copy_from_slice(&sum.to_be_bytes());
    f.write_all_at(&h, 512).expect("write");
}

fn set_bat(path: &Path, index: u64, entry: u32) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open");
    f.write_all_at(&entry.to_be_bytes(), 1536 + index * 4)
        .expect("write");
}

fn open_err(path: &Path) -> String {
    match open_image(path, Format::Vpc, &opts(true)) {
        Ok(_) => panic!("{} opened", path.display()),
        Err(e) => {
            let text = e.to_string();
            match e {
                Error::InvalidImage(_)
                | Error::UnsupportedFeature(_)
                | Error::BackingRefused { .. } => text,
                other => panic!("unexpected error kind: {other:?}"),
            }
        }
    }
}

fn fresh(name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let (dir, path) = temp(name);
    create(&path, 8 << 20, &VhdCreateOptions::default()).expect("create");
    (dir, path)
}

#[test]
fn a_bad_footer_checksum_is_named_in_the_error() {
    let (_d, path) = fresh("bad.vhd");
    let len = std::fs::metadata(&path).expect("meta").len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    f.write_all_at(&[0x77], len - 512 + 50).expect("end footer");
    f.write_all_at(&[0x77], 50).expect("copy");
    let e = open_err(&path);
    assert!(e.contains("checksum field"), "{e}");
}

#[test]
fn a_damaged_end_footer_falls_back_to_the_copy() {
    let (_d, path) = fresh("copy.vhd");
    let len = std::fs::metadata(&path).expect("meta").len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    f.write_all_at(&[0x77], len - 512 + 50).expect("end footer");
    assert!(open_image(&path, Format::Vpc, &opts(true)).is_ok());
}

#[test]
fn a_bat_past_the_end_of_the_file_is_refused() {
    let (_d, path) = fresh("bat.vhd");
    patch_header(&path, 16, &(1u64 << 40).to_be_bytes());
    let e = open_err(&path);
    assert!(e.contains("BAT") && e.contains("past the end"), "{e}");
}

#[test]
fn a_huge_bat_entry_count_is_refused_without_allocating_it() {
    let (_d, path) = fresh("huge.vhd");
    patch_header(&path, 28, &u32::MAX.to_be_bytes());
    let e = open_err(&path);
    assert!(e.contains("BAT") && e.contains("4294967295 entries"), "{e}");
}

#[test]
fn block_sizes_that_are_not_a_power_of_two_or_huge_are_refused() {
    for bs in [3u32 << 20, 1 << 30, 256] {
        let (_d, path) = fresh("bs.vhd");
        patch_header(&path, 32, &bs.to_be_bytes());
        let e = open_err(&path);
        assert!(e.contains("block size"), "{e}");
    }
}

#[test]
fn overlapping_blocks_and_blocks_in_the_metadata_are_refused() {
    let (_d, path) = fresh("overlap.vhd");
    let len = std::fs::metadata(&path).expect("meta").len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    f.set_len(len + (8 << 20)).expect("grow");
    let at = u32::try_from(len / 512).expect("small");
    set_bat(&path, 0, at);
    set_bat(&path, 1, at + 8);
    let e = open_err(&path);
    assert!(e.contains("overlaps"), "{e}");
    set_bat(&path, 1, 0xffff_ffff);
    set_bat(&path, 0, 1);
    let e = open_err(&path);
    assert!(e.contains("overlaps the metadata"), "{e}");
    set_bat(&path, 0, u32::MAX - 1);
    let e = open_err(&path);
    assert!(e.contains("past the end of the file"), "{e}");
}

#[test]
fn a_truncated_file_and_garbage_are_refused() {
    let (_d, path) = temp("tiny.vhd");
    std::fs::write(&path, b"conectix").expect("write");
    assert!(open_err(&path).contains("footer"));
    std::fs::write(&path, vec![0xa5u8; 4096]).expect("write");
    assert!(open_err(&path).contains("cookie"));
}

#[test]
fn the_image_tool_probes_the_vhd_cookie() {
    let (_d, path) = fresh("probe.vhd");
    assert_eq!(crate::probe_format(&path).expect("probe"), Format::Vpc);
}

#[test]
fn parent_locator_data_past_the_end_of_the_file_is_refused() {
    let (_d, path) = fresh("loc.vhd");
    // Locator 0: W2ru, 512 bytes of space, 20 bytes, at the largest offset.
    let mut entry = Vec::new();
    entry.extend_from_slice(b"W2ru");
    entry.extend_from_slice(&512u32.to_be_bytes());
    entry.extend_from_slice(&20u32.to_be_bytes());
    entry.extend_from_slice(&0u32.to_be_bytes());
    entry.extend_from_slice(&(u64::MAX - 10).to_be_bytes());
    patch_header(&path, 576, &entry);
    let e = open_err(&path);
    assert!(
        e.contains("parent locator data") && e.contains("past the end"),
        "{e}"
    );
}
