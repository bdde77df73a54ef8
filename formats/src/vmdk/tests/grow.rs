//! Sparse extents whose grain tables are not allocated (directories of zeros, as some tools
//! leave them): writes at depth across many tables allocate the tables (and their redundant
//! copies) in crash-safe order, ops on one new table join one allocation, the file-end
//! bookkeeping packs new tables into the room left before a grain, and qemu-img agrees with
//! what rustbk wrote.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use crate::SharedBuf;
use crate::engine::record::tests::{Event, Log};
use crate::image::{Format, ImageQueue, IoOp, OpenOptions};
use crate::open_image;
use crate::suite::{assert_bytes, pattern, read_at, reap_n, run};
use crate::vmdk::create::{self, SparseLayout, Subformat};

use super::{open, tmp};

const MIB: u64 = 1 << 20;
const GRAIN: u64 = 65536;
/// Entries per table in the test images: one table covers 1 MiB.
const GTES: u32 = 16;

/// A monolithicSparse image of `size` bytes whose directories are all zeros.
fn bare(dir: &tempfile::TempDir, name: &str, size: u64, redundant: bool) -> PathBuf {
    let path = dir.path().join(name);
    let layout = SparseLayout {
        grain_sectors: GRAIN / 512,
        gtes_per_gt: GTES,
        redundant,
        preallocate_tables: false,
    };
    create::create_with(&path, size, Subformat::MonolithicSparse, None, &layout).expect("create");
    path
}

fn u64_at(raw: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(raw[at..at + 8].try_into().expect("8 bytes"))
}

/// The directory (and redundant directory, empty without one) of `path`, and `overhead` in
/// bytes.
fn directories(path: &Path) -> (Vec<u32>, Vec<u32>, u64) {
    let raw = std::fs::read(path).expect("image");
    let capacity = u64_at(&raw, 12);
    let entries = (capacity / (GRAIN / 512)).div_ceil(u64::from(GTES)) as usize;
    let dir = |sector: u64| -> Vec<u32> {
        if sector == 0 {
            return Vec::new();
        }
        let at = (sector * 512) as usize;
        crate::vmdk::tables::le_words(&raw[at..at + entries * 4])
    };
    (
        dir(u64_at(&raw, 56)),
        dir(u64_at(&raw, 48)),
        u64_at(&raw, 64) * 512,
    )
}

fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img is required (Debian package qemu-utils)");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn write_op(offset: u64, data: &[u8]) -> IoOp {
    let buf = SharedBuf::new(data.len());
    assert!(buf.copy_in(0, data));
    IoOp::Write {
        offset,
        bufs: Box::new(buf),
    }
}

/// Random writes keeping up to `depth` in flight (never two overlapping), mirrored in `model`.
fn random_writes_at_depth(q: &mut dyn ImageQueue, model: &mut [u8], depth: usize, seed: u64) {
    let mut x = seed;
    let mut inflight: Vec<(u64, u64, u64)> = Vec::new();
    for i in 0..300u64 {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let len = 512 * (1 + (x >> 33) % 256);
        let off = 512 * ((x >> 11) % ((model.len() as u64 - len) / 512));
        while inflight.len() >= depth
            || inflight
                .iter()
                .any(|&(_, o, l)| off < o + l && o < off + len)
        {
            q.commit().expect("commit");
            for c in reap_some(q) {
                assert!(c.result.is_ok(), "write {}: {:?}", c.tag, c.result);
                inflight.retain(|&(t, _, _)| t != c.tag);
            }
        }
        let data = pattern(seed * 1000 + i, len as usize);
        model[off as usize..(off + len) as usize].copy_from_slice(&data);
        q.submit(write_op(off, &data), i).expect("submit");
        inflight.push((i, off, len));
    }
    q.commit().expect("commit");
    for c in reap_n(q, inflight.len()) {
        assert!(c.result.is_ok(), "write {}: {:?}", c.tag, c.result);
    }
}

/// Waits for at least one completion; all that are ready.
fn reap_some(q: &mut dyn ImageQueue) -> Vec<crate::image::Completion> {
    let mut out = Vec::new();
    for _ in 0..600 {
        q.wait(Some(std::time::Duration::from_millis(100)))
            .expect("wait");
        q.reap(&mut out);
        if !out.is_empty() {
            return out;
        }
    }
    panic!("no completion within a minute");
}

/// Each allocated table equals its redundant copy, and both directories agree on which
/// tables exist.
fn assert_copies_agree(path: &Path) {
    let (gd, rgd, _) = directories(path);
    let raw = std::fs::read(path).expect("image");
    let tb = GTES as usize * 4;
    for (i, (&p, &b)) in gd.iter().zip(&rgd).enumerate() {
        assert_eq!(p == 0, b == 0, "directory entry {i}: {p} and copy {b}");
        if p != 0 {
            let (p, b) = (p as usize * 512, b as usize * 512);
            assert_eq!(raw[p..p + tb], raw[b..b + tb], "table {i} and its copy");
        }
    }
}

#[test]
fn random_writes_at_depth_allocate_many_tables_and_qemu_agrees() {
    let dir = tmp();
    for redundant in [true, false] {
        let size = 24 * MIB;
        let path = bare(&dir, &format!("g{redundant}.vmdk"), size, redundant);
        let (gd, rgd, _) = directories(&path);
        assert_eq!(gd.len(), 24);
        assert!(gd.iter().chain(&rgd).all(|&e| e == 0), "no tables yet");
        assert_eq!(rgd.is_empty(), !redundant);
        let mut model = vec![0u8; size as usize];
        {
            let image = open(&path).expect("open");
            let mut q = image.open_queue(16).expect("queue");
            random_writes_at_depth(&mut *q, &mut model, 16, 7 + u64::from(redundant));
            run(&mut *q, IoOp::Flush).expect("flush");
            let all = read_at(&mut *q, 0, size as usize).expect("read");
            assert_bytes(&all, &model, "read back before reopen");
        }
        let (gd, rgd, _) = directories(&path);
        let tables = gd.iter().filter(|&&e| e != 0).count();
        assert!(tables >= 20, "{tables} of 24 tables allocated");
        if redundant {
            assert_copies_agree(&path);
        } else {
            assert!(rgd.is_empty());
        }
        let image = open(&path).expect("reopen");
        let all =
            read_at(&mut *image.open_queue(4).expect("queue"), 0, size as usize).expect("read");
        assert_bytes(&all, &model, "read back after reopen");
        drop(image);
        let out = qemu_img(&["check", "-f", "vmdk", path.to_str().expect("utf-8")]);
        assert!(out.contains("No errors"), "{out}");
        let reference = dir.path().join(format!("g{redundant}.raw"));
        std::fs::write(&reference, &model).expect("reference");
        let (r, p) = (
            reference.to_str().expect("utf-8"),
            path.to_str().expect("utf-8"),
        );
        qemu_img(&["compare", "-f", "raw", "-F", "vmdk", r, p]);
    }
}

#[test]
fn ops_on_one_new_table_join_one_allocation_and_later_tables_fill_the_gap() {
    let dir = tmp();
    let path = bare(&dir, "j.vmdk", 4 * MIB, true);
    let (_, _, overhead) = directories(&path);
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), overhead);
    let image = open(&path).expect("open");
    let mut q = image.open_queue(8).expect("queue");
    let data: Vec<Vec<u8>> = (0..8).map(|i| pattern(i + 1, 4096)).collect();
    for (i, d) in data.iter().enumerate() {
        q.submit(write_op(i as u64 * 2 * GRAIN + 512, d), i as u64)
            .expect("submit");
    }
    q.commit().expect("commit");
    let done = reap_n(&mut *q, 8);
    assert!(done.iter().all(|c| c.result.is_ok()), "{done:?}");
    let (gd, rgd, _) = directories(&path);
    assert!(gd[0] != 0 && rgd[0] != 0, "table 0 and its copy");
    assert!(gd[1..].iter().chain(&rgd[1..]).all(|&e| e == 0));
    // The table pair (1 KiB) takes the first grain slot; eight grains follow.
    let len = std::fs::metadata(&path).expect("stat").len();
    assert_eq!(len, overhead + 9 * GRAIN, "one table pair, eight grains");
    assert_eq!(u64::from(gd[0]) * 512, overhead);
    assert_eq!(u64::from(rgd[0]) * 512, overhead + 512);
    write_op_ok(&mut *q, 3 * MIB, &data[0]);
    let (gd, rgd, _) = directories(&path);
    assert_eq!(
        u64::from(gd[3]) * 512,
        overhead + 1024,
        "the next table fills the gap"
    );
    assert_eq!(u64::from(rgd[3]) * 512, overhead + 1536);
    let len = std::fs::metadata(&path).expect("stat").len();
    assert_eq!(len, overhead + 10 * GRAIN, "only the grain grew the file");
    for (i, d) in data.iter().enumerate() {
        let got = read_at(&mut *q, i as u64 * 2 * GRAIN + 512, 4096).expect("read");
        assert_bytes(&got, d, "joined write");
    }
    assert_bytes(
        &read_at(&mut *q, 3 * MIB, 4096).expect("read"),
        &data[0],
        "gap",
    );
    drop(q);
    drop(image);
    assert_copies_agree(&path);
    let out = qemu_img(&["check", "-f", "vmdk", path.to_str().expect("utf-8")]);
    assert!(out.contains("No errors"), "{out}");
}

fn write_op_ok(q: &mut dyn ImageQueue, offset: u64, data: &[u8]) {
    run(q, write_op(offset, data)).expect("write");
}

fn position(log: &[Event], what: impl Fn(&Event) -> bool) -> usize {
    log.iter().position(what).expect("event in the log")
}

#[test]
fn a_table_allocation_writes_tables_and_data_syncs_then_entries_then_directories() {
    let dir = tmp();
    let path = bare(&dir, "o.vmdk", 4 * MIB, true);
    let raw = std::fs::read(&path).expect("image");
    let (gd_at, rgd_at) = (u64_at(&raw, 56) * 512, u64_at(&raw, 48) * 512);
    let (_, _, overhead) = directories(&path);
    let log = Arc::new(Log::default());
    let opts = OpenOptions {
        recorder: Some(log.clone()),
        ..OpenOptions::default()
    };
    let image = open_image(&path, Format::Vmdk, &opts).expect("open");
    let mut q = image.open_queue(4).expect("queue");
    // Grain 18 of the extent: directory entry 1, table entry 2.
    run(&mut *q, write_op(18 * GRAIN + 512, &[9u8; 512])).expect("write");
    let events = log.take();
    let write_at = |at: u64, len: usize| {
        position(
            &events,
            |e| matches!(e, Event::Write(a, d) if *a == at && d.len() == len),
        )
    };
    let table = write_at(overhead, 512);
    let copy = write_at(overhead + 512, 512);
    let data = write_at(overhead + GRAIN, GRAIN as usize);
    let sync = data + position(&events[data..], |e| matches!(e, Event::Synced(_)));
    let entry = write_at(overhead + 8, 4);
    let entry_copy = write_at(overhead + 512 + 8, 4);
    let gd = write_at(gd_at + 4, 4);
    let rgd = write_at(rgd_at + 4, 4);
    assert!(
        table < sync && copy < sync && data < sync,
        "zeroed tables and the grain before the sync: {events:?}"
    );
    assert!(
        sync < entry && entry < entry_copy,
        "table entries after the sync"
    );
    assert!(
        entry_copy < gd && gd < rgd,
        "directory entries last, primary first"
    );
    let (gdir, rgdir, _) = directories(&path);
    assert_eq!(
        (gdir[1], rgdir[1]),
        ((overhead / 512) as u32, (overhead / 512 + 1) as u32)
    );
}

#[test]
fn layouts_qemu_cannot_open_are_refused_at_create() {
    let dir = tmp();
    let layout = SparseLayout {
        gtes_per_gt: 1024,
        ..SparseLayout::default()
    };
    let path = dir.path().join("x.vmdk");
    let err = create::create_with(&path, MIB, Subformat::MonolithicSparse, None, &layout)
        .expect_err("1024 entries per table");
    assert!(err.to_string().contains("512"), "{err}");
    let layout = SparseLayout {
        grain_sectors: 3,
        ..SparseLayout::default()
    };
    create::create_with(&path, MIB, Subformat::MonolithicSparse, None, &layout)
        .expect_err("a grain of 3 sectors");
    assert!(!path.exists());
}
