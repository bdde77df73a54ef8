//! Simulated power failures of the metadata device: a workload of device and mapping changes
//! and commits is recorded, then replayed onto the initial file up to random cut points: the
//! writes before the last completed sync all land, each later write lands or not. Metadata
//! blocks are 4 KiB writes at 4 KiB offsets, assumed atomic as dm-thin assumes them.
//! Whatever the cut, the pool opens, holds exactly the state of the commit whose superblock
//! landed last, and passes rustbk's check and thin_check 0.9 and 1.1. With the commit's sync
//! before the superblock left out, some cut must fail: the test notices a broken order.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rustbk_formats::engine::Access;
use rustbk_formats::{EngineFile, WriteRecorder};

use crate::interchange;
use crate::meta::{Geometry, Metadata};
use crate::pdata::block::BLOCK_SIZE;
use crate::peers::{Peer, thin_check};
use crate::xml::Dump;

const META_BYTES: u64 = 4 << 20;
const CUTS: usize = 200;

#[derive(Clone, Debug)]
enum Event {
    Write { offset: u64, data: Vec<u8> },
    Sync { mark: usize },
}

#[derive(Debug, Default)]
struct Recorder(Mutex<Vec<Event>>);

impl Recorder {
    fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }
}

impl WriteRecorder for Recorder {
    fn written(&self, offset: u64, data: &[u8]) {
        let data = data.to_vec();
        self.0.lock().unwrap().push(Event::Write { offset, data });
    }

    fn zeroed(&self, _: u64, _: u64) {
        unreachable!("metadata is never zeroed");
    }

    fn sync_begin(&self) -> u64 {
        self.0.lock().unwrap().len() as u64
    }

    fn synced(&self, mark: u64) {
        let mark = usize::try_from(mark).unwrap();
        self.0.lock().unwrap().push(Event::Sync { mark });
    }
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The recorded workload: its events, and the pool's state after each commit, in order.
struct Recording {
    events: Vec<Event>,
    states: Vec<Dump>,
}

fn record(path: &Path, seed: u64, unordered: bool) -> Recording {
    std::fs::File::create(path)
        .unwrap()
        .set_len(META_BYTES)
        .unwrap();
    let recorder = Arc::new(Recorder::default());
    let mut file = EngineFile::open(
        path,
        Access::ReadWrite,
        rustbk_formats::CacheMode::Writeback,
    )
    .unwrap();
    file.set_recorder(recorder.clone());
    let geometry = Geometry {
        data_block_size: 128,
        nr_data_blocks: 50_000,
    };
    let mut md = Metadata::create(Arc::new(file), geometry).unwrap();
    md.tm.unordered_commit = unordered;
    let mut states = vec![interchange::dump(&mut md).unwrap()];
    let mut rng = Rng(seed);
    md.create_thin(0).unwrap();
    for step in 0..40u64 {
        let devices = md.devices();
        for _ in 0..60 {
            let id = devices[usize::try_from(rng.below(devices.len() as u64)).unwrap()];
            let vblock = rng.below(3000);
            if rng.below(5) == 0 {
                md.remove(id, vblock).unwrap();
            } else {
                let block = md.alloc_data().unwrap();
                md.insert(id, vblock, block).unwrap();
            }
        }
        if step % 7 == 3 {
            md.create_snapshot(step, devices[0]).unwrap();
        }
        if step % 11 == 10 && devices.len() > 2 {
            md.delete_thin(devices[1]).unwrap();
        }
        md.commit().unwrap();
        states.push(interchange::dump(&mut md).unwrap());
    }
    Recording {
        events: recorder.events(),
        states,
    }
}

fn durable_prefix(events: &[Event]) -> usize {
    let marks = events.iter().filter_map(|e| match e {
        Event::Sync { mark } => Some(*mark),
        Event::Write { .. } => None,
    });
    marks.max().unwrap_or(0)
}

/// The file after a crash once `cut` events completed; also which commit's superblock it
/// holds (counting the creation as commit 0).
fn replay(events: &[Event], cut: usize, rng: &mut Rng) -> (Vec<u8>, usize) {
    let mut image = vec![0u8; usize::try_from(META_BYTES).unwrap()];
    let durable = durable_prefix(&events[..cut]);
    let (mut superblocks, mut landed_commit) = (0, None);
    for (i, event) in events[..cut].iter().enumerate() {
        let Event::Write { offset, data } = event else {
            continue;
        };
        let at = usize::try_from(*offset).unwrap();
        if *offset == 0 {
            superblocks += 1;
        }
        // A write of several blocks (a commit writes runs of them) may land in part.
        for (k, piece) in data.chunks(BLOCK_SIZE).enumerate() {
            if i < durable || rng.below(2) == 0 {
                let from = at + k * BLOCK_SIZE;
                image[from..from + piece.len()].copy_from_slice(piece);
                if from == 0 {
                    landed_commit = Some(superblocks - 1);
                }
            }
        }
    }
    (image, landed_commit.expect("cut after the pool's creation"))
}

/// thin_check 0.9 on every crashed pool; 1.1 (half a second a run) on every tenth.
fn thin_checks(path: &Path, both: bool) -> Result<(), String> {
    let peers = if both {
        &Peer::ALL[..]
    } else {
        &Peer::ALL[..1]
    };
    peers
        .iter()
        .try_for_each(|&peer| thin_check(peer, path).map(drop))
}

/// rustbk's own check, then thin_check.
fn ours_and_thin_checks(path: &Path, both: bool) -> Result<(), String> {
    let report = crate::check::check_path(path, &crate::check::CheckOptions::default())
        .map_err(|e| e.to_string())?;
    if !report.is_clean() {
        return Err(format!("rustbk thin check: {report}"));
    }
    thin_checks(path, both)
}

/// Replays `CUTS` crashes; returns the first cut whose pool is wrong, and why.
fn crash_at_random_cuts(seed: u64, unordered: bool) -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    let recording = record(&dir.path().join("recorded"), seed, unordered);
    let events = &recording.events;
    // The creation is its blocks, a sync, the superblock and a sync: a cut keeps that last
    // sync at least.
    let created = events
        .iter()
        .position(|e| matches!(e, Event::Sync { .. }))
        .unwrap()
        + 3;
    let mut rng = Rng(seed ^ 0x9e37_79b9_7f4a_7c15);
    let crashed = dir.path().join("crashed");
    for round in 0..CUTS {
        let span = (events.len() - created) as u64;
        let cut = created + usize::try_from(rng.below(span + 1)).unwrap();
        let (image, commit) = replay(events, cut, &mut rng);
        std::fs::write(&crashed, &image).unwrap();
        let file = Arc::new(
            EngineFile::open(
                &crashed,
                Access::ReadWrite,
                rustbk_formats::CacheMode::Writeback,
            )
            .unwrap(),
        );
        let opened = Metadata::open(file, |_| 50_000).and_then(|mut md| interchange::dump(&mut md));
        let why = match opened {
            Err(e) => format!("cut {cut}: the pool does not open: {e}"),
            Ok(dump) if dump != recording.states[commit] => {
                format!("cut {cut}: the pool is not the state of commit {commit}")
            }
            Ok(_) => match ours_and_thin_checks(&crashed, round % 10 == 0) {
                Ok(()) => continue,
                Err(e) => format!("cut {cut}: {e}"),
            },
        };
        return Some(why);
    }
    None
}

#[test]
fn metadata_survives_a_crash_at_any_point_as_the_last_landed_commit() {
    for seed in [0x5eed] {
        if let Some(why) = crash_at_random_cuts(seed, false) {
            panic!("seed {seed}: {why}");
        }
    }
}

#[test]
fn crash_test_notices_a_superblock_written_before_its_blocks_are_durable() {
    let found = crash_at_random_cuts(3, true);
    println!("unordered commit: {found:?}");
    assert!(found.is_some(), "an unordered commit went unnoticed");
}
