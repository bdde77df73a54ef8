//! Hostile and damaged images: clear errors, bounded memory, never a panic.

use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::Error;
use crate::image::{EngineKind, Format, OpenOptions};
use crate::open_image;
use crate::suite::read_at;

use super::{opts, qemu_img, qemu_io, s, temp};

fn patch(path: &Path, offset: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open");
    f.write_all_at(bytes, offset).expect("patch");
}

fn read_u64(path: &Path, offset: u64) -> u64 {
    let f = std::fs::File::open(path).expect("open");
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, offset).expect("read");
    u64::from_be_bytes(b)
}

/// A qemu-made v3 image with data in its first cluster.
fn image(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let path = dir.path().join("h.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&path), "4M"]);
    qemu_io(&path, "qcow2", &["write -P 0x5c 0 128k"]);
    path
}

fn open_err(path: &Path, read_only: bool) -> Error {
    match open_image(path, Format::Qcow2, &opts(read_only, EngineKind::Auto)) {
        Ok(_) => panic!("{} opened", path.display()),
        Err(e) => e,
    }
}

fn patched(offset: u64, bytes: &[u8]) -> Error {
    let (dir, _) = temp("x");
    let path = image(&dir);
    patch(&path, offset, bytes);
    open_err(&path, true)
}

#[test]
fn l1_table_of_two_billion_entries_is_refused_without_allocating_it() {
    let e = patched(36, &0x8000_0000u32.to_be_bytes());
    assert!(
        matches!(&e, Error::InvalidImage(m) if m.contains("L1")),
        "{e}"
    );
}

#[test]
fn tables_past_the_end_of_the_file_are_refused() {
    let e = patched(40, &(1u64 << 40).to_be_bytes());
    assert!(
        matches!(&e, Error::InvalidImage(m) if m.contains("past the end")),
        "{e}"
    );
    let e = patched(48, &(1u64 << 40).to_be_bytes());
    assert!(
        matches!(&e, Error::InvalidImage(m) if m.contains("refcount table")),
        "{e}"
    );
}

#[test]
fn misaligned_and_overlapping_tables_are_refused() {
    let (dir, _) = temp("x");
    let path = image(&dir);
    let reftable = read_u64(&path, 48);
    let e = patched(40, &(reftable + 512).to_be_bytes());
    assert!(
        matches!(&e, Error::InvalidImage(m) if m.contains("aligned")),
        "{e}"
    );
    patch(&path, 40, &reftable.to_be_bytes());
    let e = open_err(&path, true);
    assert!(
        matches!(&e, Error::InvalidImage(m) if m.contains("overlaps")),
        "{e}"
    );
}

#[test]
fn refcount_order_seven_is_refused() {
    let e = patched(96, &7u32.to_be_bytes());
    assert!(
        matches!(&e, Error::InvalidImage(m) if m.contains("refcount_order 7")),
        "{e}"
    );
}

#[test]
fn cluster_bits_thirty_is_refused() {
    let e = patched(20, &30u32.to_be_bytes());
    assert!(
        matches!(&e, Error::UnsupportedFeature(m) if m.contains("cluster_bits 30")),
        "{e}"
    );
}

#[test]
fn truncated_header_is_refused() {
    let (dir, _) = temp("x");
    let path = image(&dir);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    f.set_len(50).expect("truncate");
    let e = open_err(&path, true);
    assert!(
        matches!(&e, Error::InvalidImage(m) if m.contains("truncated")),
        "{e}"
    );
}

#[test]
fn unknown_incompatible_bits_encryption_and_unsupported_features_are_named() {
    let e = patched(72, &((1u64 << 10) | (1 << 40)).to_be_bytes());
    assert!(
        matches!(&e, Error::UnsupportedFeature(m) if m.contains("bit 10, bit 40")),
        "{e}"
    );
    let e = patched(32, &1u32.to_be_bytes());
    assert!(
        matches!(&e, Error::UnsupportedFeature(m) if m.contains("encryption")),
        "{e}"
    );
    let e = patched(72, &(1u64 << 2).to_be_bytes());
    assert!(
        matches!(&e, Error::UnsupportedFeature(m) if m.contains("external data file")),
        "{e}"
    );
    let e = patched(72, &(1u64 << 4).to_be_bytes());
    assert!(
        matches!(&e, Error::UnsupportedFeature(m) if m.contains("extended L2")),
        "{e}"
    );
}

#[test]
fn dirty_and_corrupt_images_open_read_only_only() {
    for (bit, word) in [(1u64, "dirty"), (2, "corrupt")] {
        let (dir, _) = temp("x");
        let path = image(&dir);
        patch(&path, 72, &bit.to_be_bytes());
        let e = open_err(&path, false);
        assert!(
            matches!(&e, Error::NeedsRepair(m) if m.contains(word) && m.contains("qemu-img check")),
            "{e}"
        );
        let image = open_image(&path, Format::Qcow2, &opts(true, EngineKind::Auto))
            .expect("read-only open");
        let mut q = image.open_queue(2).expect("queue");
        assert_eq!(read_at(&mut *q, 0, 4096).expect("read"), vec![0x5c; 4096]);
    }
}

#[test]
fn autoclear_bits_are_cleared_by_a_read_write_open() {
    let (dir, _) = temp("x");
    let path = image(&dir);
    patch(&path, 88, &(1u64 << 7).to_be_bytes());
    drop(open_image(&path, Format::Qcow2, &opts(true, EngineKind::Auto)).expect("open ro"));
    assert_eq!(
        read_u64(&path, 88),
        1 << 7,
        "read-only open leaves the header alone"
    );
    drop(open_image(&path, Format::Qcow2, &opts(false, EngineKind::Auto)).expect("open rw"));
    assert_eq!(read_u64(&path, 88), 0);
}

#[test]
fn l2_entry_past_the_end_of_the_file_fails_that_read_only() {
    let (dir, _) = temp("x");
    let path = image(&dir);
    let l1 = read_u64(&path, 40);
    let l2 = read_u64(&path, l1) & 0x00ff_ffff_ffff_fe00;
    patch(&path, l2, &((1u64 << 40) | (1 << 63)).to_be_bytes());
    let image = open_image(&path, Format::Qcow2, &opts(true, EngineKind::Auto)).expect("open");
    let mut q = image.open_queue(2).expect("queue");
    let e = read_at(&mut *q, 0, 4096).expect_err("read of the bad cluster");
    assert_eq!(e.errno(), libc::EIO);
    assert_eq!(
        read_at(&mut *q, 65536, 4096).expect("good cluster"),
        vec![0x5c; 4096]
    );
    assert_eq!(
        read_at(&mut *q, 1 << 20, 4096).expect("unallocated"),
        vec![0; 4096]
    );
}

#[test]
fn garbage_l1_and_l2_entries_give_error_completions() {
    let (dir, _) = temp("x");
    let path = image(&dir);
    let l1 = read_u64(&path, 40);
    let l2 = read_u64(&path, l1) & 0x00ff_ffff_ffff_fe00;
    // A compressed entry whose data is garbage, and a standard entry with reserved bits.
    patch(&path, l2, &((1u64 << 62) | 4096).to_be_bytes());
    patch(&path, l2 + 8, &(l2 | 0x2).to_be_bytes());
    let image = open_image(&path, Format::Qcow2, &opts(false, EngineKind::Auto)).expect("open");
    let mut q = image.open_queue(2).expect("queue");
    assert_eq!(
        read_at(&mut *q, 0, 512)
            .expect_err("compressed garbage")
            .errno(),
        libc::EIO
    );
    assert_eq!(
        read_at(&mut *q, 65536, 512)
            .expect_err("reserved bits")
            .errno(),
        libc::EIO
    );
    let w = crate::suite::write_at(&mut *q, 65536, &[1; 512]);
    assert_eq!(w.expect_err("write to a bad entry").errno(), libc::EIO);
    drop(q);
    drop(image);
    patch(&path, l1, &(1u64 << 50 | 0x1ff).to_be_bytes());
    let image = open_image(&path, Format::Qcow2, &opts(true, EngineKind::Auto)).expect("open");
    let mut q = image.open_queue(2).expect("queue");
    assert_eq!(
        read_at(&mut *q, 0, 512).expect_err("bad L1 entry").errno(),
        libc::EIO
    );
}

#[test]
fn backing_loop_is_refused() {
    let (dir, a) = temp("a.qcow2");
    let b = dir.path().join("b.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "b.qcow2",
        "-F",
        "qcow2",
        s(&a),
        "1M",
    ]);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "a.qcow2",
        "-F",
        "qcow2",
        s(&b),
        "1M",
    ]);
    let e = open_err(&a, true);
    assert!(
        matches!(&e, Error::BackingChain(m) if m.contains("loop")),
        "{e}"
    );
    let self_loop = dir.path().join("self.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "self.qcow2",
        "-F",
        "qcow2",
        s(&self_loop),
        "1M",
    ]);
    assert!(matches!(open_err(&self_loop, true), Error::BackingChain(_)));
}

#[test]
fn backing_chain_deeper_than_the_limit_is_refused() {
    let (dir, _) = temp("x");
    let depth = crate::qcow2::MAX_CHAIN_DEPTH + 1;
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        s(&dir.path().join("0.qcow2")),
        "1M",
    ]);
    for i in 1..=depth {
        let path = dir.path().join(format!("{i}.qcow2"));
        let below = format!("{}.qcow2", i - 1);
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-u",
            "-b",
            &below,
            "-F",
            "qcow2",
            s(&path),
            "1M",
        ]);
    }
    let ok = dir.path().join(format!("{}.qcow2", depth - 1));
    assert!(
        open_image(
            &ok,
            Format::Qcow2,
            &OpenOptions {
                read_only: true,
                ..OpenOptions::default()
            }
        )
        .is_ok()
    );
    let e = open_err(&dir.path().join(format!("{depth}.qcow2")), true);
    assert!(
        matches!(&e, Error::BackingChain(m) if m.contains("more than")),
        "{e}"
    );
}

#[test]
fn missing_backing_file_and_unknown_backing_format_are_errors() {
    let (dir, a) = temp("a.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "nothere.raw",
        "-F",
        "raw",
        s(&a),
        "1M",
    ]);
    assert!(matches!(open_err(&a, true), Error::Open { .. }));
    let b = dir.path().join("b.qcow2");
    std::fs::write(dir.path().join("base.vdi"), [0u8; 4096]).expect("write");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "base.vdi",
        "-F",
        "vdi",
        s(&b),
        "1M",
    ]);
    let e = open_err(&b, true);
    assert!(
        matches!(&e, Error::UnsupportedFeature(m) if m.contains("vdi")),
        "{e}"
    );
}

#[test]
fn cluster_cut_short_by_the_end_of_the_file_reads_zeros_past_the_end() {
    let (dir, _) = temp("x");
    let path = image(&dir);
    let len = std::fs::metadata(&path).expect("stat").len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    // The last data cluster keeps only its first 4 KiB.
    f.set_len(len - 65536 + 4096).expect("truncate");
    let image = open_image(&path, Format::Qcow2, &opts(true, EngineKind::Auto)).expect("open");
    let mut q = image.open_queue(2).expect("queue");
    let got = read_at(&mut *q, 65536, 8192).expect("read");
    assert_eq!(got[..4096], [0x5c; 4096]);
    assert_eq!(got[4096..], [0; 4096]);
}

#[test]
fn a_read_write_open_cuts_an_unclaimed_end_and_leaves_it_when_refcounts_are_unreadable() {
    let (dir, _) = temp("x");
    let path = image(&dir);
    let len = |p: &Path| std::fs::metadata(p).expect("stat").len();
    let made = len(&path);
    let grown = made + (1 << 20);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_len(grown))
        .expect("grow");
    drop(open_image(&path, Format::Qcow2, &opts(false, EngineKind::Auto)).expect("open"));
    assert_eq!(len(&path), made, "the clusters no refcount claims are cut");

    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_len(grown))
        .expect("grow");
    let reftable = read_u64(&path, 48);
    patch(&path, reftable, &(1u64 << 40).to_be_bytes());
    let image = open_image(&path, Format::Qcow2, &opts(false, EngineKind::Auto));
    drop(image.expect("a damaged refcount table still opens, as before"));
    assert_eq!(len(&path), grown, "nothing is cut that cannot be checked");
}
