//! Discards are hints that never allocate: checked against `qemu-img map` (what the image stores
//! where) and `qemu-img check` (no leak, no corruption).

use std::path::Path;

use serde_json::Value;

use crate::image::{EngineKind, IoOp};
use crate::open_image;
use crate::qcow2::{Compat, CreateOptions, create};
use crate::suite::{assert_bytes, pattern, read_at, run, write_at};

use super::{check_clean, opts, qemu_img, qemu_io, s, temp};

const CS: u64 = 64 << 10;
const CSZ: usize = 64 << 10;

/// Runs `ops` on the image at `path`, flushes, and returns the guest bytes `[0, len)`.
fn apply(path: &Path, ops: Vec<IoOp>, len: usize) -> Vec<u8> {
    let image = open_image(path, &opts(false, EngineKind::Auto)).expect("open");
    let mut q = image.open_queue(4).expect("queue");
    for op in ops {
        run(&mut *q, op).expect("op");
    }
    run(&mut *q, IoOp::Flush).expect("flush");
    read_at(&mut *q, 0, len).expect("read")
}

fn discard(offset: u64, len: u64) -> IoOp {
    IoOp::Discard { offset, len }
}

/// `qemu-img map --output=json` of the image and its backing chain.
fn qemu_map(path: &Path) -> Vec<Value> {
    let text = qemu_img(&["map", "--output=json", s(path)]);
    let map: Value = serde_json::from_str(&text).expect("qemu-img map JSON");
    map.as_array().expect("array").clone()
}

/// The guest ranges the image stores data for, as `qemu-img map` sees them.
fn stored(path: &Path) -> Vec<(u64, u64, Option<u64>)> {
    qemu_map(path)
        .iter()
        .filter(|e| e["depth"] == 0 && e["data"] == true)
        .map(|e| {
            let field = |k: &str| e[k].as_u64();
            (
                field("start").unwrap(),
                field("length").unwrap(),
                field("offset"),
            )
        })
        .collect()
}

fn created(path: &Path, compat: Compat, backing: Option<&str>) {
    let o = CreateOptions {
        compat,
        backing_file: backing.map(Into::into),
        backing_format: backing.map(|_| crate::Format::Raw),
        ..CreateOptions::default()
    };
    create(path, 4 * CS, &o).expect("create");
}

#[test]
fn partial_discards_of_unallocated_clusters_allocate_nothing() {
    let (_dir, path) = temp("d.qcow2");
    created(&path, Compat::V1_1, None);
    let before = std::fs::metadata(&path).expect("stat").len();
    let got = apply(
        &path,
        vec![discard(4096, 4096), discard(CS + (60 << 10), 8192)],
        4 * 1024,
    );
    assert!(got.iter().all(|&b| b == 0));
    assert_eq!(stored(&path), []);
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), before);
    check_clean(&path);
}

#[test]
fn partial_discard_over_a_backing_file_leaves_the_backing_data_visible() {
    let (dir, path) = temp("top.qcow2");
    let base = dir.path().join("base.raw");
    qemu_img(&["create", "-q", "-f", "raw", s(&base), "256k"]);
    qemu_io(&base, "raw", &["write -P 0x5a 0 256k"]);
    for compat in [Compat::V1_1, Compat::V0_10] {
        let _ = std::fs::remove_file(&path);
        created(&path, compat, Some("base.raw"));
        let got = apply(&path, vec![discard(4096, 4096)], 2 * CSZ);
        assert_bytes(&got, &[0x5a; 2 * CSZ], "backing data after discard");
        assert_eq!(stored(&path), [], "{compat:?}");
        check_clean(&path);
    }
}

#[test]
fn partial_discard_of_an_allocated_cluster_zeroes_it_in_place() {
    let (_dir, path) = temp("d.qcow2");
    created(&path, Compat::V1_1, None);
    apply(&path, vec![], 0);
    let data = pattern(7, CSZ);
    {
        let image = open_image(&path, &opts(false, EngineKind::Auto)).expect("open");
        let mut q = image.open_queue(4).expect("queue");
        write_at(&mut *q, CS, &data).expect("write");
        run(&mut *q, IoOp::Flush).expect("flush");
    }
    let mapped = stored(&path);
    assert_eq!(mapped.len(), 1);
    let got = apply(&path, vec![discard(CS + 8192, 4096)], 2 * CSZ);
    let mut expected = vec![0u8; CSZ];
    expected.extend_from_slice(&data);
    expected[small(CS + 8192)..small(CS + 12288)].fill(0);
    assert_bytes(&got, &expected, "after a partial discard");
    assert_eq!(stored(&path), mapped, "the cluster stays where it was");
    check_clean(&path);
}

#[test]
fn whole_cluster_discard_on_a_v2_image_with_backing_falls_back_to_the_backing_file() {
    let (dir, path) = temp("top.qcow2");
    let base = dir.path().join("base.raw");
    qemu_img(&["create", "-q", "-f", "raw", s(&base), "256k"]);
    qemu_io(&base, "raw", &["write -P 0x33 0 256k"]);
    created(&path, Compat::V0_10, Some("base.raw"));
    qemu_io(&path, "qcow2", &["write -P 0x44 0 128k"]);
    let got = apply(&path, vec![discard(0, CS)], 2 * CSZ);
    let mut expected = vec![0x33u8; CSZ];
    expected.extend_from_slice(&[0x44; CSZ]);
    assert_bytes(&got, &expected, "after a whole-cluster discard");
    assert_eq!(
        stored(&path).len(),
        1,
        "only the second cluster stays allocated"
    );
    check_clean(&path);
}

#[test]
fn partial_discard_of_a_compressed_cluster_leaves_it_alone() {
    let (_dir, path) = temp("c.qcow2");
    created(&path, Compat::V1_1, None);
    qemu_io(&path, "qcow2", &["write -c -P 0x21 0 64k"]);
    let map_before = qemu_map(&path);
    let got = apply(&path, vec![discard(4096, 4096)], CSZ);
    assert_bytes(&got, &[0x21; CSZ], "compressed cluster after discard");
    assert_eq!(qemu_map(&path), map_before);
    check_clean(&path);
}

fn small(v: u64) -> usize {
    crate::qcow2::layout::small(v)
}
