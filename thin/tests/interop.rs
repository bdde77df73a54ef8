//! rustbk's pool metadata against the real thin-provisioning-tools 0.9 and 1.1, both ways:
//! pools rustbk writes pass thin_check and thin_dump lists exactly rustbk's mappings; pools
//! thin_restore builds are read by rustbk; dump, restore and dump again change nothing.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::peers::{self, Peer, thin_check, thin_dump};
use rustbk_formats::EngineFile;
use rustbk_formats::engine::Access;
use rustbk_thin::interchange;
use rustbk_thin::meta::{Geometry, Metadata};
use rustbk_thin::xml;

const DATA_BLOCKS: u64 = 200_000;

/// A small deterministic generator (xorshift64*), so a failure replays.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }

    fn pick(&mut self, items: &[u64]) -> u64 {
        let i = self.below(items.len() as u64);
        items[usize::try_from(i).unwrap()]
    }
}

fn open_file(path: &Path, bytes: u64) -> Arc<EngineFile> {
    let f = std::fs::File::options()
        .create(true)
        .write(true)
        .truncate(false)
        .open(path)
        .unwrap();
    f.set_len(bytes).unwrap();
    Arc::new(
        EngineFile::open(
            path,
            Access::ReadWrite,
            rustbk_formats::CacheMode::Writeback,
        )
        .unwrap(),
    )
}

fn reopen(path: &Path) -> Metadata {
    let file = Arc::new(
        EngineFile::open(
            path,
            Access::ReadWrite,
            rustbk_formats::CacheMode::Writeback,
        )
        .unwrap(),
    );
    Metadata::open(file, |_| DATA_BLOCKS).unwrap()
}

/// Devices created, snapshotted (of snapshots too) and deleted; blocks mapped, overwritten
/// and unmapped through shared trees; several commits.
fn random_workload(md: &mut Metadata, seed: u64) {
    let mut rng = Rng(seed);
    let mut next_id = 1;
    md.create_thin(0).unwrap();
    for round in 0..12 {
        let devices = md.devices();
        for _ in 0..600 {
            let id = rng.pick(&devices);
            let vblock = rng.below(5000);
            if rng.below(4) == 0 {
                md.remove(id, vblock).unwrap();
            } else {
                let block = md.alloc_data().unwrap();
                md.insert(id, vblock, block).unwrap();
            }
        }
        match if round < 3 { 0 } else { rng.below(3) } {
            0 => {
                let origin = rng.pick(&devices);
                md.create_snapshot(next_id, origin).unwrap();
                next_id += 1;
            }
            1 if devices.len() > 2 && round > 3 => {
                md.delete_thin(rng.pick(&devices)).unwrap();
            }
            _ => {}
        }
        md.commit().unwrap();
    }
}

fn parse(text: &str) -> xml::Dump {
    xml::parse(text.as_bytes()).unwrap()
}

#[test]
fn rustbk_pool_after_a_random_workload_passes_thin_check_and_dumps_as_rustbk_reports() {
    let dir = tempfile::tempdir().unwrap();
    for seed in [1, 7, 42] {
        let path = dir.path().join(format!("meta-{seed}"));
        let mut md = Metadata::create(
            open_file(&path, 32 << 20),
            Geometry {
                data_block_size: 128,
                nr_data_blocks: DATA_BLOCKS,
            },
        )
        .unwrap();
        random_workload(&mut md, seed);
        let ours = interchange::dump(&mut md).unwrap();
        assert!(ours.devices.len() > 2, "the workload made snapshots");
        drop(md);
        for peer in Peer::ALL {
            thin_check(peer, &path)
                .unwrap_or_else(|e| panic!("{peer:?} thin_check, seed {seed}: {e}"));
            let theirs = parse(&thin_dump(peer, &path).unwrap());
            assert_eq!(theirs, ours, "{peer:?} thin_dump, seed {seed}");
        }
        assert_eq!(
            interchange::dump(&mut reopen(&path)).unwrap(),
            ours,
            "reopened, seed {seed}"
        );
    }
}

/// A dump with an origin, a snapshot and a snapshot of the snapshot sharing runs, and
/// single and range mappings, as thin_restore would get it.
fn shared_dump() -> xml::Dump {
    let md_dir = tempfile::tempdir().unwrap();
    let path = md_dir.path().join("meta");
    let mut md = Metadata::create(
        open_file(&path, 16 << 20),
        Geometry {
            data_block_size: 256,
            nr_data_blocks: DATA_BLOCKS,
        },
    )
    .unwrap();
    random_workload(&mut md, 99);
    interchange::dump(&mut md).unwrap()
}

#[test]
fn pool_built_by_thin_restore_reads_back_the_same_in_rustbk() {
    let dir = tempfile::tempdir().unwrap();
    let want = shared_dump();
    let mut text = Vec::new();
    xml::write(&want, &mut text).unwrap();
    let xml_path = dir.path().join("pool.xml");
    std::fs::write(&xml_path, &text).unwrap();
    for peer in Peer::ALL {
        let meta = dir.path().join(format!("restored-{}", peer.version()));
        peers::new_metadata_file(&meta, 16 << 20);
        peers::thin_restore(peer, &xml_path, &meta).unwrap();
        let mut md = reopen(&meta);
        assert_eq!(interchange::dump(&mut md).unwrap(), want, "{peer:?}");
        let first = want
            .devices
            .iter()
            .find(|d| !d.mappings.is_empty())
            .unwrap();
        let run = first.mappings[0];
        let got = md
            .lookup(u64::from(first.dev_id), run.origin_begin)
            .unwrap()
            .unwrap();
        assert_eq!((got.block, got.time), (run.data_begin, run.time));
    }
}

#[test]
fn restore_by_rustbk_then_dump_is_identical_and_passes_thin_check() {
    let dir = tempfile::tempdir().unwrap();
    let want = shared_dump();
    let path = dir.path().join("meta");
    let mut md = interchange::restore(&want, open_file(&path, 16 << 20)).unwrap();
    assert_eq!(interchange::dump(&mut md).unwrap(), want);
    drop(md);
    for peer in Peer::ALL {
        thin_check(peer, &path).unwrap_or_else(|e| panic!("{peer:?}: {e}"));
        assert_eq!(parse(&thin_dump(peer, &path).unwrap()), want, "{peer:?}");
    }
}
