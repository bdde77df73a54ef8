//! Hostile metadata: a valid pool made with `Metadata`, damaged on disk in one place. For each
//! damage, `check` names the problem, Debian's `thin_check` refuses the pool too, and
//! `Metadata::open` or the first operation that reaches the damage fails without panicking.

mod common;

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use common::peers::{self, Peer};
use rustbk_formats::EngineFile;
use rustbk_formats::engine::Access;
use rustbk_thin::check::{self, Area, CheckOptions, Report};
use rustbk_thin::meta::{Geometry, Mapping, Metadata, Superblock, TIME_MASK};
use rustbk_thin::pdata::block::{self, BLOCK_SIZE, Kind, get_u64, put_u32};
use rustbk_thin::pdata::btree::{self, NoRefs, Node};
use rustbk_thin::pdata::dev::MetaDev;
use rustbk_thin::pdata::refs::ENTRIES_PER_BITMAP;
use rustbk_thin::pdata::sm::IndexEntry;
use rustbk_thin::pdata::tm::Tm;

const NR_DATA: u64 = 100_000;
/// Mappings of device 1: enough for a root with three leaves.
const MAPPED: u64 = 600;

/// A committed pool: device 1 with [`MAPPED`] blocks, device 2 a snapshot of it with ten
/// blocks of its own.
struct Pool {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Pool {
    fn new() -> Pool {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(2048 * 4096)
            .unwrap();
        let file = EngineFile::open(&path, Access::ReadWrite, false).unwrap();
        let geometry = Geometry {
            data_block_size: 128,
            nr_data_blocks: NR_DATA,
        };
        let mut md = Metadata::create(Arc::new(file), geometry).unwrap();
        md.create_thin(1).unwrap();
        map(&mut md, 1, 0..MAPPED);
        md.commit().unwrap();
        md.create_snapshot(2, 1).unwrap();
        map(&mut md, 2, 0..10);
        md.commit().unwrap();
        Pool { _dir: dir, path }
    }

    fn open(&self) -> rustbk_thin::Result<Metadata> {
        let file = EngineFile::open(&self.path, Access::ReadWrite, false)?;
        Metadata::open(Arc::new(file), |_| NR_DATA)
    }

    fn check(&self) -> Report {
        check::check_path(&self.path, &CheckOptions::default()).unwrap()
    }

    fn read(&self, location: u64) -> Box<[u8; BLOCK_SIZE]> {
        let mut b = Box::new([0; BLOCK_SIZE]);
        let f = std::fs::File::open(&self.path).unwrap();
        f.read_exact_at(&mut b[..], location * BLOCK_SIZE as u64)
            .unwrap();
        b
    }

    /// Writes `b` at `location`, resealed as a `kind` block if `kind` is given.
    fn write(&self, location: u64, mut b: Box<[u8; BLOCK_SIZE]>, kind: Option<Kind>) {
        if let Some(kind) = kind {
            block::seal(&mut b, kind, location);
        }
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .unwrap();
        f.write_all_at(&b[..], location * BLOCK_SIZE as u64)
            .unwrap();
    }

    fn superblock(&self) -> Superblock {
        Superblock::parse(&self.read(0))
    }

    fn write_superblock(&self, sb: &Superblock) {
        self.write(0, sb.encode(), Some(Kind::Superblock));
    }

    fn node(&self, location: u64, value_size: usize) -> Node {
        Node::decode(&self.read(location), location, value_size).unwrap()
    }

    fn write_node(&self, location: u64, node: &Node) {
        self.write(location, node.encode(), Some(Kind::Node));
    }

    /// The root of device `id`'s block tree.
    fn device_root(&self, id: u64) -> u64 {
        let top = self.node(self.superblock().mapping_root, 8);
        let i = top.keys.iter().position(|&k| k == id).unwrap();
        get_u64(top.value(i), 0)
    }

    /// The location of the first leaf of device 1's block tree (internal root).
    fn first_leaf(&self) -> u64 {
        let root = self.node(self.device_root(1), 8);
        assert!(!root.leaf, "device 1's tree should have an internal root");
        root.child(0)
    }

    /// The data space map's index entry of bitmap 0, and the index leaf holding it.
    fn data_bitmap0(&self) -> (u64, IndexEntry) {
        let leaf = self.superblock().data_sm.bitmap_root;
        let node = self.node(leaf, 16);
        assert!(node.leaf && node.keys[0] == 0);
        (leaf, IndexEntry::decode(node.value(0)))
    }
}

fn map(md: &mut Metadata, id: u64, vblocks: std::ops::Range<u64>) {
    for v in vblocks {
        let b = md.alloc_data().unwrap();
        md.insert(id, v, b).unwrap();
    }
}

/// A peer `thin_check` on a damaged pool: it refuses it, or it does not look at what was
/// damaged (the reason says what it misses).
#[derive(Debug, PartialEq, Eq)]
enum ThinCheck {
    Refuses,
    Misses(&'static str),
}

/// Runs `thin_check` 0.9 and 1.1 on the pool and compares their verdicts with `old` and `new`.
fn assert_thin_check(pool: &Pool, old: ThinCheck, new: ThinCheck) {
    for (peer, expected) in [(Peer::V0_9, old), (Peer::V1_1, new)] {
        let verdict = peers::thin_check(peer, &pool.path);
        let expected_pass = matches!(expected, ThinCheck::Misses(_));
        assert_eq!(
            verdict.is_ok(),
            expected_pass,
            "thin_check {peer:?}, expected {expected:?}: {verdict:?}"
        );
    }
}

/// Asserts that `check` found a problem of `area` whose message contains `words`.
fn assert_reports(report: &Report, area: Area, words: &str) {
    let found = report.in_area(area).any(|p| p.message.contains(words));
    assert!(found, "no {area:?} problem with {words:?} in:\n{report}");
}

/// One operation on an opened pool.
type Step = dyn Fn(&mut Metadata) -> rustbk_thin::Result<()>;

/// Opens the pool and reads every mapping of both devices, then changes and commits: some
/// step must fail (and none may panic). Returns the first error.
fn first_failure(pool: &Pool) -> String {
    let mut md = match pool.open() {
        Ok(md) => md,
        Err(e) => return format!("open: {e}"),
    };
    let steps: [&Step; 4] = [
        &|md| md.lookup_range(1, 0..u64::MAX).map(drop),
        &|md| md.lookup_range(2, 0..u64::MAX).map(drop),
        &|md| {
            for v in 0..MAPPED {
                let b = md.alloc_data()?;
                md.insert(1, v, b)?;
            }
            Ok(())
        },
        &|md| md.commit(),
    ];
    for (i, step) in steps.iter().enumerate() {
        if let Err(e) = step(&mut md) {
            return format!("step {i}: {e}");
        }
    }
    panic!("the damaged pool was opened, read, changed and committed without an error");
}

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
        Area::Btree,
        "bitmap 0 of the data space map points at block",
    );
    assert_thin_check(&pool, ThinCheck::Refuses, ThinCheck::Refuses);
    let failure = first_failure(&pool);
    assert!(failure.starts_with("open"), "{failure}");
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
    let file = EngineFile::open(&pool.path, Access::ReadWrite, false).unwrap();
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
    let file = EngineFile::open(&pool.path, Access::ReadWrite, false).unwrap();
    let mut tm = Tm::new(MetaDev::new(Arc::new(file), 2048).unwrap(), refs);
    let mut root = btree::empty(&mut tm, 16).unwrap();
    for i in 0..BITMAPS {
        root = btree::insert(&mut tm, root, i, &entry.encode(), &mut NoRefs)
            .unwrap()
            .0;
    }
    tm.write_dirty().unwrap();
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
