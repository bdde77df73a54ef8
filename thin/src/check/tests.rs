use std::path::{Path, PathBuf};
use std::sync::Arc;

use proptest::prelude::*;
use rustbk_formats::EngineFile;
use rustbk_formats::engine::Access;

use super::*;
use crate::meta::{Geometry, Metadata};

/// A metadata file of `nr_blocks` blocks in a temporary folder.
fn meta_file(nr_blocks: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(nr_blocks * 4096)
        .unwrap();
    (dir, path)
}

fn create(path: &Path, nr_data_blocks: u64) -> Metadata {
    let file = EngineFile::open(path, Access::ReadWrite, false).unwrap();
    let geometry = Geometry {
        data_block_size: 128,
        nr_data_blocks,
    };
    Metadata::create(Arc::new(file), geometry).unwrap()
}

fn check_file(path: &Path) -> Report {
    check_path(path, &CheckOptions::default()).unwrap()
}

fn map_new(md: &mut Metadata, id: u64, vblocks: std::ops::Range<u64>) {
    for v in vblocks {
        let b = md.alloc_data().unwrap();
        md.insert(id, v, b).unwrap();
    }
}

#[test]
fn fresh_pool_has_no_problem() {
    let (_dir, path) = meta_file(1024);
    drop(create(&path, 1000));
    let report = check_file(&path);
    assert!(report.is_clean(), "{report}");
}

#[test]
fn pool_with_devices_and_snapshots_has_no_problem_and_counts_its_blocks() {
    let (_dir, path) = meta_file(4096);
    let mut md = create(&path, 100_000);
    md.create_thin(1).unwrap();
    map_new(&mut md, 1, 0..5000);
    md.commit().unwrap();
    md.create_snapshot(2, 1).unwrap();
    map_new(&mut md, 2, 100..200);
    md.create_snapshot(3, 2).unwrap();
    md.commit().unwrap();
    drop(md);
    let report = check_file(&path);
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.totals.devices, 3);
    assert_eq!(report.totals.mappings, 15_000);
    assert_eq!(report.totals.data_blocks_used, 5100);
}
