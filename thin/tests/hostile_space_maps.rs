//! Hostile metadata in the space maps: a valid pool damaged on disk in one place (see
//! `common::damage`).

mod common;

use std::sync::Arc;

use common::damage::*;
use rustbk_formats::EngineFile;
use rustbk_formats::engine::Access;
use rustbk_thin::check::{self, Area, CheckOptions};
use rustbk_thin::meta::Metadata;
use rustbk_thin::pdata::block::Kind;
use rustbk_thin::pdata::btree::{self, NoRefs};
use rustbk_thin::pdata::dev::MetaDev;
use rustbk_thin::pdata::refs::ENTRIES_PER_BITMAP;
use rustbk_thin::pdata::sm::IndexEntry;
use rustbk_thin::pdata::tm::Tm;

#[test]
fn bitmap_location_past_the_end_is_reported_and_refused() {
    let pool = Pool::new();
    let (leaf, mut entry) = pool.data_bitmap0();
    entry.blocknr = 1 << 33;
    let mut node = pool.node(leaf, 16);
    node.set_value(0, &entry.encode());
    pool.write_node(leaf, &node);
    let report = pool.check();
    assert_reports(
        &report,
        Area::DataSpaceMap,
        "bitmap 0 of the data space map points at block",
    );
    assert_thin_check(&pool, ThinCheck::Refuses, ThinCheck::Refuses);
    let failure = first_failure(&pool);
    assert!(failure.starts_with("open"), "{failure}");
}

#[test]
fn overflowed_bitmap_entry_without_an_overflow_count_is_reported_and_refused() {
    let pool = Pool::new();
    let (_, entry) = pool.data_bitmap0();
    let mut b = pool.read(entry.blocknr);
    // Data block 0 (mapped, count 1): both bits of entry 0 set.
    b[16] |= 0b11;
    pool.write(entry.blocknr, b, Some(Kind::Bitmap));
    let report = pool.check();
    assert_reports(
        &report,
        Area::DataSpaceMap,
        "data block 0 is marked overflowed",
    );
    assert_thin_check(
        &pool,
        ThinCheck::Misses("the data space map's overflow tree"),
        ThinCheck::Refuses,
    );
    let failure = first_failure(&pool);
    assert!(failure.starts_with("open"), "{failure}");
}

#[test]
fn count_of_u32_max_is_reported_and_never_incremented_past() {
    let pool = Pool::new();
    let (_, entry) = pool.data_bitmap0();
    let mut b = pool.read(entry.blocknr);
    b[16] |= 0b11;
    pool.write(entry.blocknr, b, Some(Kind::Bitmap));
    let overflow = pool.superblock().data_sm.ref_count_root;
    let mut node = pool.node(overflow, 4);
    assert!(node.leaf && node.is_empty());
    node.insert_at(0, 0, &u32::MAX.to_le_bytes());
    pool.write_node(overflow, &node);
    let report = pool.check();
    assert_reports(
        &report,
        Area::DataCount,
        "data block 0 has a count of 4294967295 but is referenced 1 times",
    );
    assert_thin_check(
        &pool,
        ThinCheck::Misses("the data space map's counts"),
        ThinCheck::Refuses,
    );
    // Snapshot device 1 again, then write to the leaf holding data block 0: the shared leaf
    // is copied and every block in it gains a reference.
    let mut md = pool.open().unwrap();
    md.create_snapshot(3, 1).unwrap();
    let b = md.alloc_data().unwrap();
    let err = md.insert(1, 1, b).unwrap_err();
    assert!(err.to_string().contains("overflows"), "{err}");
}

/// Sets the space map size of the data (or metadata) space map in the superblock.
fn huge_space_map(data: bool) -> Pool {
    let pool = Pool::new();
    let mut sb = pool.superblock();
    match data {
        true => sb.data_sm.nr_blocks = 1 << 40,
        false => sb.metadata_sm.nr_blocks = u64::MAX / 2,
    }
    pool.write_superblock(&sb);
    pool
}

/// Opens `pool` with a data device that claims to hold anything: only the metadata itself
/// bounds the counts allocated.
fn open_with_any_data_size(pool: &Pool) -> rustbk_thin::Result<Metadata> {
    let file = EngineFile::open(
        &pool.path,
        Access::ReadWrite,
        rustbk_formats::CacheMode::Writeback,
    )
    .unwrap();
    Metadata::open(Arc::new(file), |_| u64::MAX)
}

#[test]
fn huge_data_space_map_size_is_refused_without_allocating() {
    let pool = huge_space_map(true);
    let report = pool.check();
    assert_reports(
        &report,
        Area::DataSpaceMap,
        "index has no entry for bitmaps 7..",
    );
    assert_thin_check(
        &pool,
        ThinCheck::Misses("the data space map's size against its index"),
        ThinCheck::Refuses,
    );
    assert!(open_with_any_data_size(&pool).is_err());
}

#[test]
fn huge_metadata_space_map_size_is_refused_without_allocating() {
    let pool = huge_space_map(false);
    let report = pool.check();
    assert_reports(
        &report,
        Area::MetadataSpaceMap,
        "covers 9223372036854775807 blocks",
    );
    assert_thin_check(
        &pool,
        ThinCheck::Refuses,
        ThinCheck::Misses("the metadata space map's size"),
    );
    assert!(open_with_any_data_size(&pool).is_err());
}

/// The metadata space map's index entry of bitmap 0.
fn metadata_bitmap0(pool: &Pool) -> IndexEntry {
    let index = pool.read(pool.superblock().metadata_sm.bitmap_root);
    IndexEntry::decode(&index[16..32])
}

#[test]
fn unreferenced_metadata_block_counted_as_used_is_reported_as_a_leak() {
    let pool = Pool::new();
    let entry = metadata_bitmap0(&pool);
    let mut b = pool.read(entry.blocknr);
    // Block 2001 (free): count 1, the high bit of its entry.
    let free = 2001;
    b[16 + free / 4] |= 0b10 << ((free % 4) * 2);
    pool.write(entry.blocknr, b, Some(Kind::Bitmap));
    let report = pool.check();
    assert_reports(&report, Area::MetadataLeak, "block 2001 has a count of 1");
    assert_eq!(report.totals.metadata_blocks_leaked, 1);
    assert!(
        report.in_area(Area::MetadataCount).next().is_none(),
        "{report}"
    );
    assert_thin_check(&pool, ThinCheck::Refuses, ThinCheck::Refuses);
}

#[test]
fn metadata_count_above_the_references_is_reported_as_a_wrong_count() {
    let pool = Pool::new();
    let entry = metadata_bitmap0(&pool);
    let leaf = pool.first_leaf();
    let mut b = pool.read(entry.blocknr);
    let at = usize::try_from(leaf).unwrap();
    let (byte, shift) = (16 + at / 4, (at % 4) * 2);
    // Count 2: only the low bit of the entry.
    b[byte] = (b[byte] & !(0b11 << shift)) | (0b01 << shift);
    pool.write(entry.blocknr, b, Some(Kind::Bitmap));
    let report = pool.check();
    let words = format!("block {leaf} has a count of 2 but is referenced 1 times");
    assert_reports(&report, Area::MetadataCount, &words);
    assert!(
        report.in_area(Area::MetadataLeak).next().is_none(),
        "{report}"
    );
    assert_thin_check(&pool, ThinCheck::Refuses, ThinCheck::Refuses);
}

#[test]
fn lost_block_tree_leaks_its_data_blocks_and_the_report_stops_at_its_limit() {
    let pool = Pool::new();
    // Device 2's tree replaced by device 1's: device 2's own leaf and data blocks are lost.
    let top_at = pool.superblock().mapping_root;
    let mut top = pool.node(top_at, 8);
    let root1 = pool.device_root(1);
    top.set_value(1, &root1.to_le_bytes());
    pool.write_node(top_at, &top);
    let report = pool.check();
    assert_eq!(report.totals.data_blocks_leaked, 10, "{report}");
    assert_reports(&report, Area::DataLeak, "nothing references it");
    assert_reports(&report, Area::MetadataLeak, "nothing references it");
    assert!(
        !report.only_leaks(),
        "the shared root's count is wrong too:\n{report}"
    );
    let limited = check::check_path(&pool.path, &CheckOptions { max_problems: 3 }).unwrap();
    assert_eq!(limited.problems.len(), 3);
    assert!(limited.truncated);
    assert_thin_check(&pool, ThinCheck::Refuses, ThinCheck::Refuses);
}

#[test]
fn bitmap_block_used_by_two_index_entries_is_reported_and_refused() {
    let pool = Pool::new();
    let (leaf, entry) = pool.data_bitmap0();
    let mut node = pool.node(leaf, 16);
    node.set_value(1, &entry.encode());
    pool.write_node(leaf, &node);
    let report = pool.check();
    let words = format!("block {} is referenced again", entry.blocknr);
    assert_reports(&report, Area::DataSpaceMap, &words);
    assert_thin_check(&pool, ThinCheck::Refuses, ThinCheck::Refuses);
    let failure = first_failure(&pool);
    assert!(failure.starts_with("open"), "{failure}");
}

/// The most memory the process has held, in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn data_index_naming_one_bitmap_many_times_is_refused_before_allocating_its_counts() {
    const BITMAPS: u64 = 70_000;
    let pool = Pool::new();
    let (_, entry) = pool.data_bitmap0();
    let md = pool.open().unwrap();
    let refs = md.metadata_refs().clone();
    drop(md);
    // A new index tree, in free metadata blocks: 70000 entries, every one naming bitmap 0,
    // for a data space map of 70000 bitmaps (1.1 billion blocks, a byte each in memory).
    let file = EngineFile::open(
        &pool.path,
        Access::ReadWrite,
        rustbk_formats::CacheMode::Writeback,
    )
    .unwrap();
    let mut tm = Tm::new(MetaDev::new(Arc::new(file), 2048).unwrap(), refs);
    let mut root = btree::empty(&mut tm, 16).unwrap();
    for i in 0..BITMAPS {
        root = btree::insert(&mut tm, root, i, &entry.encode(), &mut NoRefs)
            .unwrap()
            .0;
    }
    tm.begin_writing().write().unwrap();
    drop(tm);
    let mut sb = pool.superblock();
    sb.data_sm.bitmap_root = root;
    sb.data_sm.nr_blocks = BITMAPS * ENTRIES_PER_BITMAP;
    pool.write_superblock(&sb);
    let report = pool.check();
    assert_reports(&report, Area::DataSpaceMap, "is referenced again");
    assert_thin_check(&pool, ThinCheck::Refuses, ThinCheck::Refuses);
    let before = peak_rss_kib();
    assert!(open_with_any_data_size(&pool).is_err());
    let grown = peak_rss_kib() - before;
    assert!(grown < 256 << 10, "opening took {grown} KiB more");
}
