//! Hostile metadata in the superblock and the trees: a valid pool damaged on disk in one place
//! (see `common::damage`).

mod common;

use common::damage::*;
use rustbk_thin::check::Area;
use rustbk_thin::meta::{DeviceDetails, Mapping, TIME_MASK};
use rustbk_thin::pdata::block::{Kind, put_u32};

#[test]
fn undamaged_pool_checks_clean_and_passes_thin_check() {
    let pool = Pool::new();
    let report = pool.check();
    assert!(report.is_clean(), "{report}");
    assert_thin_check(
        &pool,
        ThinCheck::Misses("nothing: the pool is sound"),
        ThinCheck::Misses("nothing: the pool is sound"),
    );
    let mut md = pool.open().unwrap();
    assert_eq!(
        md.lookup_range(1, 0..u64::MAX).unwrap().len() as u64,
        MAPPED
    );
}

#[test]
fn node_with_a_bad_checksum_is_reported_and_refused() {
    let pool = Pool::new();
    let leaf = pool.first_leaf();
    let mut b = pool.read(leaf);
    b[2000] ^= 0x40;
    pool.write(leaf, b, None);
    let report = pool.check();
    assert_reports(&report, Area::Btree, "bad checksum");
    assert!(report.in_area(Area::Btree).any(|p| p.block == Some(leaf)));
    assert_thin_check(&pool, ThinCheck::Refuses, ThinCheck::Refuses);
    let failure = first_failure(&pool);
    assert!(failure.contains("checksum"), "{failure}");
}

#[test]
fn cycle_in_a_block_tree_is_reported_and_refused() {
    let pool = Pool::new();
    let root = pool.device_root(1);
    let mut node = pool.node(root, 8);
    let last = node.len() - 1;
    node.set_child(last, root);
    pool.write_node(root, &node);
    let report = pool.check();
    assert_reports(&report, Area::Btree, "cycle");
    assert_thin_check(&pool, ThinCheck::Refuses, ThinCheck::Refuses);
    first_failure(&pool);
}

#[test]
fn child_pointer_past_the_end_is_reported_and_refused() {
    let pool = Pool::new();
    let root = pool.device_root(1);
    let mut node = pool.node(root, 8);
    node.set_child(1, 1 << 40);
    pool.write_node(root, &node);
    let report = pool.check();
    assert_reports(&report, Area::Btree, "past the end of the metadata");
    assert_thin_check(&pool, ThinCheck::Refuses, ThinCheck::Refuses);
    let failure = first_failure(&pool);
    assert!(failure.contains("past the end"), "{failure}");
}

#[test]
fn data_block_past_the_end_is_reported_and_never_handed_out() {
    let pool = Pool::new();
    let leaf = pool.first_leaf();
    let mut node = pool.node(leaf, 8);
    let far = Mapping {
        block: NR_DATA + 5,
        time: 0,
    };
    node.set_value(3, &far.encode());
    pool.write_node(leaf, &node);
    let report = pool.check();
    assert_reports(&report, Area::Mappings, "past the end");
    assert_thin_check(
        &pool,
        ThinCheck::Misses("mappings against the data space map size"),
        ThinCheck::Refuses,
    );
    let mut md = pool.open().unwrap();
    let vblock = node.keys[3];
    assert!(md.lookup(1, vblock).is_err());
    assert!(md.lookup_range(1, 0..MAPPED).is_err());
}

#[test]
fn mapping_from_the_future_is_reported_and_never_handed_out() {
    let pool = Pool::new();
    let leaf = pool.first_leaf();
    let mut node = pool.node(leaf, 8);
    let mut m = Mapping::decode(node.value(5));
    m.time = 1000;
    node.set_value(5, &m.encode());
    pool.write_node(leaf, &node);
    let report = pool.check();
    assert_reports(&report, Area::Mappings, "after the pool's time");
    assert_thin_check(
        &pool,
        ThinCheck::Misses("mapping times"),
        ThinCheck::Misses("mapping times"),
    );
    let mut md = pool.open().unwrap();
    assert!(md.lookup(1, node.keys[5]).is_err());
}

#[test]
fn superblock_from_a_future_version_is_reported_and_refused() {
    let pool = Pool::new();
    let mut sb = pool.superblock();
    sb.version = 3;
    pool.write_superblock(&sb);
    let report = pool.check();
    assert_reports(&report, Area::Superblock, "unknown metadata version 3");
    assert_thin_check(
        &pool,
        ThinCheck::Misses("the superblock version"),
        ThinCheck::Misses("the superblock version"),
    );
    let failure = first_failure(&pool);
    assert!(failure.contains("version 3"), "{failure}");
}

#[test]
fn superblock_with_unknown_incompatible_features_is_reported_and_refused() {
    let pool = Pool::new();
    let mut sb = pool.superblock();
    sb.incompat_flags = 0x10;
    pool.write_superblock(&sb);
    let report = pool.check();
    assert_reports(&report, Area::Superblock, "incompatible feature flags 0x10");
    assert_thin_check(
        &pool,
        ThinCheck::Misses("the feature flags"),
        ThinCheck::Misses("the feature flags"),
    );
    let failure = first_failure(&pool);
    assert!(failure.contains("0x10"), "{failure}");
}

#[test]
fn node_whose_entries_would_overflow_the_block_is_reported_and_refused() {
    let pool = Pool::new();
    let leaf = pool.first_leaf();
    let mut b = pool.read(leaf);
    put_u32(&mut b[..], 20, 1000);
    put_u32(&mut b[..], 16, 600);
    pool.write(leaf, b, Some(Kind::Node));
    let report = pool.check();
    assert_reports(&report, Area::Btree, "of 1000 entries");
    assert_thin_check(&pool, ThinCheck::Refuses, ThinCheck::Refuses);
    first_failure(&pool);
}

#[test]
fn superblock_claiming_more_blocks_than_the_device_is_reported_and_refused() {
    let pool = Pool::new();
    let mut sb = pool.superblock();
    sb.metadata_nr_blocks = 4096;
    pool.write_superblock(&sb);
    let report = pool.check();
    assert_reports(&report, Area::Superblock, "the device holds 2048");
    assert_thin_check(
        &pool,
        ThinCheck::Misses("the metadata size against the device"),
        ThinCheck::Misses("the metadata size against the device"),
    );
    let failure = first_failure(&pool);
    assert!(failure.starts_with("open"), "{failure}");
}

#[test]
fn pool_time_past_24_bits_is_reported_and_refused() {
    let pool = Pool::new();
    let mut sb = pool.superblock();
    sb.time = u32::MAX;
    pool.write_superblock(&sb);
    let report = pool.check();
    assert_reports(&report, Area::Superblock, "time 4294967295");
    assert_thin_check(
        &pool,
        ThinCheck::Misses("the pool time"),
        ThinCheck::Misses("the pool time"),
    );
    let failure = first_failure(&pool);
    assert!(failure.starts_with("open"), "{failure}");
}

#[test]
fn snapshot_at_the_last_pool_time_is_refused_rather_than_wrapping() {
    let pool = Pool::new();
    let mut sb = pool.superblock();
    sb.time = TIME_MASK;
    pool.write_superblock(&sb);
    let mut md = pool.open().unwrap();
    assert!(md.create_snapshot(3, 1).is_err());
    assert_eq!(md.superblock().time, TIME_MASK);
}

#[test]
fn report_serialises_for_json_output() {
    let pool = Pool::new();
    let leaf = pool.first_leaf();
    let mut b = pool.read(leaf);
    b[100] ^= 1;
    pool.write(leaf, b, None);
    let json = serde_json::to_value(pool.check()).unwrap();
    let first = &json["problems"][0];
    assert_eq!(first["area"], "btree");
    assert_eq!(first["block"], leaf);
    assert!(first["message"].as_str().unwrap().contains("checksum"));
    assert_eq!(json["totals"]["devices"], 2);
    assert_eq!(json["truncated"], false);
}

#[test]
fn shared_node_outside_its_second_parents_range_is_reported() {
    let pool = Pool::new();
    // Device 2's root shares its last leaf with device 1's root, which is walked first.
    let root2 = pool.device_root(2);
    let mut node = pool.node(root2, 8);
    let last = node.len() - 1;
    assert_eq!(
        node.child(last),
        pool.node(pool.device_root(1), 8).child(last)
    );
    node.keys[last] += 1 << 52;
    pool.write_node(root2, &node);
    let report = pool.check();
    assert_reports(&report, Area::Btree, "outside the parent's range");
    assert!(
        report.problems.iter().any(|p| p.device == Some(2)),
        "{report}"
    );
    assert_thin_check(&pool, ThinCheck::Refuses, ThinCheck::Refuses);
    let mut md = pool.open().unwrap();
    assert!(md.lookup_range(2, 0..u64::MAX).is_err());
}

#[test]
fn device_missing_from_the_mapping_tree_is_reported_and_refused() {
    let pool = Pool::new();
    let top_at = pool.superblock().mapping_root;
    let mut top = pool.node(top_at, 8);
    top.remove_at(1);
    pool.write_node(top_at, &top);
    let report = pool.check();
    assert_reports(&report, Area::Devices, "has details but no mapping tree");
    assert!(report.in_area(Area::Devices).all(|p| p.device == Some(2)));
    assert_thin_check(&pool, ThinCheck::Refuses, ThinCheck::Refuses);
    let mut md = pool.open().unwrap();
    assert!(md.lookup(2, 0).is_err());
}

#[test]
fn wrong_mapped_block_count_is_reported() {
    let pool = Pool::new();
    rewrite_first_details(&pool, |d| d.mapped_blocks += 1);
    let report = pool.check();
    let words = format!(
        "details record {} mapped blocks, its tree holds {MAPPED}",
        MAPPED + 1
    );
    assert_reports(&report, Area::Devices, &words);
    let why = ThinCheck::Misses("mapped_blocks");
    assert_thin_check(&pool, why, ThinCheck::Refuses);
}

#[test]
fn mapped_block_count_at_its_limit_takes_a_new_mapping_without_overflowing() {
    let pool = Pool::new();
    rewrite_first_details(&pool, |d| d.mapped_blocks = u64::MAX);
    let mut md = pool.open().unwrap();
    let block = md.alloc_data().unwrap();
    md.insert(1, MAPPED + 7, block).unwrap();
    assert_eq!(
        md.lookup(1, MAPPED + 7).unwrap().map(|m| m.block),
        Some(block)
    );
}

/// Changes the first device's details record on disk with `change`.
fn rewrite_first_details(pool: &Pool, change: impl FnOnce(&mut DeviceDetails)) {
    let details_at = pool.superblock().details_root;
    let mut details = pool.node(details_at, 24);
    let mut d = DeviceDetails::decode(details.value(0));
    change(&mut d);
    details.set_value(0, &d.encode());
    pool.write_node(details_at, &details);
}
