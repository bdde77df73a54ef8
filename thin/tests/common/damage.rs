//! A valid pool made with `Metadata`, to be damaged on disk in one place, and what the hostile
//! metadata tests assert about each damage: `check` names the problem, the peer `thin_check`s
//! give their verdicts, and `Metadata::open` or the first operation that reaches the damage
//! fails without panicking.

#![allow(dead_code)] // Each test binary uses its own part of this module.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use rustbk_formats::EngineFile;
use rustbk_formats::engine::Access;
use rustbk_thin::check::{self, Area, CheckOptions, Report};
use rustbk_thin::meta::{Geometry, Metadata, Superblock};
use rustbk_thin::pdata::block::{self, BLOCK_SIZE, Kind, get_u64};
use rustbk_thin::pdata::btree::Node;
use rustbk_thin::pdata::sm::IndexEntry;

use super::peers::{self, Peer};

pub const NR_DATA: u64 = 100_000;
/// Mappings of device 1: enough for a root with three leaves.
pub const MAPPED: u64 = 600;

/// A committed pool: device 1 with [`MAPPED`] blocks, device 2 a snapshot of it with ten
/// blocks of its own.
pub struct Pool {
    _dir: tempfile::TempDir,
    /// The metadata file.
    pub path: PathBuf,
}

impl Pool {
    pub fn new() -> Pool {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(2048 * 4096)
            .unwrap();
        let file = EngineFile::open(
            &path,
            Access::ReadWrite,
            rustbk_formats::CacheMode::Writeback,
        )
        .unwrap();
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

    pub fn open(&self) -> rustbk_thin::Result<Metadata> {
        let file = EngineFile::open(
            &self.path,
            Access::ReadWrite,
            rustbk_formats::CacheMode::Writeback,
        )?;
        Metadata::open(Arc::new(file), |_| NR_DATA)
    }

    pub fn check(&self) -> Report {
        check::check_path(&self.path, &CheckOptions::default()).unwrap()
    }

    pub fn read(&self, location: u64) -> Box<[u8; BLOCK_SIZE]> {
        let mut b = Box::new([0; BLOCK_SIZE]);
        let f = std::fs::File::open(&self.path).unwrap();
        f.read_exact_at(&mut b[..], location * BLOCK_SIZE as u64)
            .unwrap();
        b
    }

    /// Writes `b` at `location`, resealed as a `kind` block if `kind` is given.
    pub fn write(&self, location: u64, mut b: Box<[u8; BLOCK_SIZE]>, kind: Option<Kind>) {
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

    pub fn superblock(&self) -> Superblock {
        Superblock::parse(&self.read(0))
    }

    pub fn write_superblock(&self, sb: &Superblock) {
        self.write(0, sb.encode(), Some(Kind::Superblock));
    }

    pub fn node(&self, location: u64, value_size: usize) -> Node {
        Node::decode(&self.read(location), location, value_size).unwrap()
    }

    pub fn write_node(&self, location: u64, node: &Node) {
        self.write(location, node.encode(), Some(Kind::Node));
    }

    /// The root of device `id`'s block tree.
    pub fn device_root(&self, id: u64) -> u64 {
        let top = self.node(self.superblock().mapping_root, 8);
        let i = top.keys.iter().position(|&k| k == id).unwrap();
        get_u64(top.value(i), 0)
    }

    /// The location of the first leaf of device 1's block tree (internal root).
    pub fn first_leaf(&self) -> u64 {
        let root = self.node(self.device_root(1), 8);
        assert!(!root.leaf, "device 1's tree should have an internal root");
        root.child(0)
    }

    /// The data space map's index entry of bitmap 0, and the index leaf holding it.
    pub fn data_bitmap0(&self) -> (u64, IndexEntry) {
        let leaf = self.superblock().data_sm.bitmap_root;
        let node = self.node(leaf, 16);
        assert!(node.leaf && node.keys[0] == 0);
        (leaf, IndexEntry::decode(node.value(0)))
    }
}

pub fn map(md: &mut Metadata, id: u64, vblocks: std::ops::Range<u64>) {
    for v in vblocks {
        let b = md.alloc_data().unwrap();
        md.insert(id, v, b).unwrap();
    }
}

/// A peer `thin_check` on a damaged pool: it refuses it, or it does not look at what was
/// damaged (the reason says what it misses).
#[derive(Debug, PartialEq, Eq)]
pub enum ThinCheck {
    /// It refuses the pool.
    Refuses,
    /// It passes the pool: it does not look at what the reason names.
    Misses(&'static str),
}

/// Runs `thin_check` 0.9 and 1.1 on the pool and compares their verdicts with `old` and `new`.
pub fn assert_thin_check(pool: &Pool, old: ThinCheck, new: ThinCheck) {
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
pub fn assert_reports(report: &Report, area: Area, words: &str) {
    let found = report.in_area(area).any(|p| p.message.contains(words));
    assert!(found, "no {area:?} problem with {words:?} in:\n{report}");
}

/// One operation on an opened pool.
pub type Step = dyn Fn(&mut Metadata) -> rustbk_thin::Result<()>;

/// Opens the pool and reads every mapping of both devices, then changes and commits: some
/// step must fail (and none may panic). Returns the first error.
pub fn first_failure(pool: &Pool) -> String {
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
