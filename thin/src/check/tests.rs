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
    let file = EngineFile::open(
        path,
        Access::ReadWrite,
        rustbk_formats::CacheMode::Writeback,
    )
    .unwrap();
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

#[derive(Clone, Debug)]
enum Op {
    Create(u64),
    Snapshot(u64, u64),
    Delete(u64),
    /// Maps `n` new data blocks from virtual block `v` on (replacing what was there).
    Map(u64, u64, u64),
    /// Unmaps `n` virtual blocks from `v` on.
    Unmap(u64, u64, u64),
    Commit,
}

fn op() -> impl Strategy<Value = Op> {
    let id = 0u64..6;
    prop_oneof![
        1 => id.clone().prop_map(Op::Create),
        1 => (id.clone(), id.clone()).prop_map(|(a, b)| Op::Snapshot(a, b)),
        1 => id.clone().prop_map(Op::Delete),
        6 => (id.clone(), 0u64..4000, 1u64..400).prop_map(|(i, v, n)| Op::Map(i, v, n)),
        3 => (id, 0u64..4000, 1u64..300).prop_map(|(i, v, n)| Op::Unmap(i, v, n)),
        2 => Just(Op::Commit),
    ]
}

/// Applies `op`; errors a caller may cause (no such device, device exists) are ignored.
fn apply(md: &mut Metadata, op: &Op) {
    let result = match *op {
        Op::Create(id) => md.create_thin(id),
        Op::Snapshot(id, origin) => md.create_snapshot(id, origin),
        Op::Delete(id) => md.delete_thin(id),
        Op::Map(id, v, n) => (v..v + n).try_for_each(|v| {
            md.details(id)?;
            let b = md.alloc_data()?;
            md.insert(id, v, b)
        }),
        Op::Unmap(id, v, n) => md.remove_range(id, v..v + n).map(drop),
        Op::Commit => md.commit(),
    };
    match result {
        Ok(()) | Err(Error::NoSuchDevice(_) | Error::DeviceExists(_)) => {}
        Err(e) => panic!("{op:?} failed: {e}"),
    }
}

/// Checks the committed pool on `file` and compares the totals with `md`'s counts.
fn assert_sound(file: &Arc<EngineFile>, md: &Metadata) {
    let report = check(file.clone(), &CheckOptions::default()).unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.totals.devices, md.devices().len() as u64);
    let data = md.data_refs().nr_allocated();
    assert_eq!(report.totals.data_blocks_used, data);
    let meta = md.metadata_refs().nr_allocated();
    assert_eq!(report.totals.metadata_blocks_used, meta);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn random_operations_leave_a_pool_that_checks_clean_and_recounts_to_its_space_maps(
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        let (_dir, path) = meta_file(8192);
        let file = Arc::new(EngineFile::open(&path, Access::ReadWrite, rustbk_formats::CacheMode::Writeback).unwrap());
        let geometry = Geometry { data_block_size: 128, nr_data_blocks: 200_000 };
        let mut md = Metadata::create(file.clone(), geometry).unwrap();
        for op in &ops {
            apply(&mut md, op);
            if matches!(op, Op::Commit) {
                assert_sound(&file, &md);
            }
        }
        md.commit().unwrap();
        assert_sound(&file, &md);
        assert!(thin_check_passes(&path));
    }
}

/// Whether Debian's `thin_check` (which must be installed) accepts the metadata at `path`.
fn thin_check_passes(path: &Path) -> bool {
    std::process::Command::new("/usr/sbin/thin_check")
        .arg(path)
        .output()
        .expect("thin_check (thin-provisioning-tools) must be installed")
        .status
        .success()
}

#[test]
fn million_mappings_and_their_snapshots_check_in_seconds() {
    const N: u64 = 1 << 20;
    let (_dir, path) = meta_file(32 * 1024);
    let mut md = create(&path, 2 * N);
    let built = std::time::Instant::now();
    md.create_thin(1).unwrap();
    map_new(&mut md, 1, 0..N);
    md.commit().unwrap();
    for snap in 2..10 {
        md.create_snapshot(snap, 1).unwrap();
    }
    map_new(&mut md, 1, 0..1000);
    md.commit().unwrap();
    drop(md);
    eprintln!("built in {:?}", built.elapsed());
    let started = std::time::Instant::now();
    let report = check_file(&path);
    let took = started.elapsed();
    eprintln!("checked in {took:?}");
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.totals.mappings, 9 * N);
    assert_eq!(report.totals.data_blocks_used, N + 1000);
    let thin_check = std::time::Instant::now();
    assert!(thin_check_passes(&path));
    eprintln!("thin_check in {:?}", thin_check.elapsed());
    // Generous for a loaded machine and a debug build: walking each shared subtree once
    // takes well under a second in release.
    assert!(took < std::time::Duration::from_secs(60), "{took:?}");
}

#[test]
fn short_file_and_foreign_data_are_reported_as_not_a_pool() {
    let (_dir, path) = meta_file(0);
    std::fs::write(&path, [0u8; 100]).unwrap();
    let report = check_file(&path);
    assert_eq!(report.problems.len(), 1, "{report}");
    assert!(report.problems[0].message.contains("no whole block"));
    std::fs::write(&path, vec![0x5au8; 8192]).unwrap();
    let report = check_file(&path);
    assert!(
        report
            .in_area(Area::Superblock)
            .any(|p| p.message.contains("bad magic"))
    );
    assert!(
        report
            .in_area(Area::Superblock)
            .any(|p| p.message.contains("checksum"))
    );
}
