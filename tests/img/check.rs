//! `rustbk img check` and `qemu-img check` agree on damaged images, and our repairs satisfy
//! qemu-img.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::common::{at, json, qemu_img, qemu_io, qemu_qcow2, rustbk, tmp};
use crate::damage::{COPIED, Layout};

/// A 16 MiB qcow2 image with data in guest clusters 0..=2 and 16, damaged by `damage`.
fn damaged(damage: impl FnOnce(&Layout)) -> (tempfile::TempDir, PathBuf) {
    let dir = tmp();
    let path = at(&dir, "d.qcow2");
    qemu_qcow2(&path, "16M", &["write -P 1 0 192k", "write -P 2 1M 64k"]);
    damage(&Layout::open(&path));
    (dir, path)
}

/// Exit codes of `rustbk img check` and `qemu-img check` on the same image.
fn codes(path: &Path) -> (i32, i32) {
    let ours = rustbk(&[&"check", &path]);
    let theirs = qemu_img(&[&"check", &path]);
    assert!(!ours.stderr.contains("panicked"), "{ours:?}");
    (ours.code, theirs.code)
}

fn assert_agree(path: &Path, expected: i32) {
    assert_eq!(
        codes(path),
        (expected, expected),
        "rustbk vs qemu-img check"
    );
}

fn repair(path: &Path, how: &str) {
    let r = rustbk(&[&"check", &"-r", &how, &path]);
    assert!(matches!(r.code, 0 | 2 | 3), "check -r {how}: {r:?}");
}

#[test]
fn clean_image_is_clean_for_both() {
    let (_dir, path) = damaged(|_| {});
    assert_agree(&path, 0);
}

#[test]
fn leaked_cluster_is_a_leak_for_both_and_repair_leaks_fixes_it() {
    let (_dir, path) = damaged(Layout::leak_a_cluster);
    assert_agree(&path, 3);
    repair(&path, "leaks");
    assert_agree(&path, 0);
}

#[test]
fn refcount_one_too_high_is_found_and_repaired_with_leaks() {
    let (_dir, path) = damaged(|l| {
        let c = l.host_of(1) / l.cluster_size;
        l.set_refcount(c, l.refcount(c) + 1);
    });
    // qemu-img also flags the COPIED flag of the entry: a corruption.
    assert_agree(&path, 2);
    repair(&path, "leaks");
    assert_agree(&path, 0);
    qemu_io(&path, "qcow2", &["read -P 1 0 192k", "read -P 2 1M 64k"]);
}

#[test]
fn refcount_one_too_low_is_a_corruption_and_repair_all_rebuilds_it() {
    let (_dir, path) = damaged(|l| {
        let c = l.host_of(2) / l.cluster_size;
        l.set_refcount(c, l.refcount(c) - 1);
    });
    assert_agree(&path, 2);
    repair(&path, "leaks");
    assert_agree(&path, 2);
    repair(&path, "all");
    assert_agree(&path, 0);
    qemu_io(&path, "qcow2", &["read -P 1 0 192k", "read -P 2 1M 64k"]);
}

#[test]
fn l2_entry_past_the_end_of_the_file_stays_a_corruption_for_both() {
    let (_dir, path) = damaged(|l| l.put64(l.l2_entry_at(1), COPIED | (1 << 32)));
    assert_agree(&path, 2);
    repair(&path, "all");
    assert_agree(&path, 2);
}

#[test]
fn data_cluster_overlapping_the_l1_table_is_repaired_like_qemu_repairs_it() {
    let overlap = |l: &Layout| l.put64(l.l2_entry_at(1), COPIED | l.l1_offset);
    let (_dir, path) = damaged(overlap);
    let (_dir2, theirs) = damaged(overlap);
    assert_agree(&path, 2);
    repair(&path, "all");
    let fixed_by_qemu = qemu_img(&[&"check", &"-r", &"all", &theirs]);
    assert_eq!(
        qemu_img(&[&"check", &path]).code,
        qemu_img(&[&"check", &theirs]).code,
        "qemu repaired: {fixed_by_qemu:?}"
    );
    assert_eq!(codes(&path).0, qemu_img(&[&"check", &path]).code);
}

#[test]
fn json_reports_match_qemu_on_leaked_and_clean_images() {
    for leak in [false, true] {
        let (_dir, path) = damaged(|l| {
            if leak {
                l.leak_a_cluster();
            }
        });
        let ours = json(&rustbk(&[&"check", &"--output=json", &path]).stdout);
        let theirs = json(&qemu_img(&[&"check", &"--output=json", &path]).stdout);
        for key in [
            "check-errors",
            "corruptions",
            "leaks",
            "image-end-offset",
            "total-clusters",
            "allocated-clusters",
            "fragmented-clusters",
            "compressed-clusters",
            "format",
        ] {
            assert_eq!(ours.get(key), theirs.get(key), "{key}: {ours} vs {theirs}");
        }
    }
}

#[test]
fn repair_all_clears_the_dirty_bit_of_a_lazy_refcount_image() {
    let dir = tmp();
    let path = at(&dir, "lazy.qcow2");
    crate::common::qemu_ok(&[
        &"create",
        &"-q",
        &"-f",
        &"qcow2",
        &"-o",
        &"lazy_refcounts=on",
        &path,
        &"16M",
    ]);
    qemu_io(&path, "qcow2", &["write -P 3 0 128k"]);
    let l = Layout::open(&path);
    let flags = l.be64(72);
    l.put64(72, flags | 1);
    l.leak_a_cluster();
    drop(l);
    let info = json(&qemu_img(&[&"info", &"--output=json", &path]).stdout);
    assert_eq!(info["dirty-flag"], true);
    repair(&path, "all");
    let info = json(&qemu_img(&[&"info", &"--output=json", &path]).stdout);
    assert_eq!(info["dirty-flag"], false);
    assert_agree(&path, 0);
    qemu_io(&path, "qcow2", &["read -P 3 0 128k"]);
}

#[test]
fn raw_images_do_not_support_checks() {
    let dir = tmp();
    let path = at(&dir, "r.raw");
    std::fs::write(&path, vec![0u8; 1 << 20]).expect("write");
    assert_eq!(codes(&path), (63, 63));
}

#[test]
fn hostile_images_never_make_check_panic() {
    let (_dir, good) = damaged(|_| {});
    let bytes = std::fs::read(&good).expect("read");
    let dir = tmp();
    let path = at(&dir, "hostile.qcow2");
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..200 {
        std::fs::write(&path, &bytes).expect("write");
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        for _ in 0..1 + round % 8 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            // Header, refcount table, L1 table, refcount block and first L2 table (63: the
            // magic is gone, so the file is no qcow2 image any more).
            let at = seed % (5 << 16);
            let at = if round % 3 == 0 { at % 128 } else { at };
            file.write_all_at(&[(seed >> 32) as u8], at).expect("poke");
        }
        drop(file);
        for how in ["none", "all"] {
            let r = if how == "none" {
                rustbk(&[&"check", &path])
            } else {
                rustbk(&[&"check", &"-r", &"all", &path])
            };
            assert!(
                matches!(r.code, 0..=3 | 63) && !r.stderr.contains("panicked"),
                "round {round} {how}: {r:?}"
            );
        }
    }
}
