//! Simulated power failures: a recorded qcow2 workload replayed up to random cut points.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustbk_blkfront::workload::fill_pattern;
use rustbk_formats::{EngineKind, Format, ImageQueue, IoOp, OpenOptions, SharedBuf, open_image};

use crate::model::{BLOCK, Change, Model};
use crate::qemu::{self, Spec};
use crate::recorder::{self, Event, Recorder};
use crate::rng::{self, Rng};

const DISK: u64 = 8 << 20;
const OPS: usize = 300;
const CUTS_PER_CONFIG: usize = 40;
const MAX_OP_BLOCKS: usize = 16;

/// One workload's image and engine.
struct Config {
    cluster_size: u64,
    compat: &'static str,
    refcount_bits: u32,
    backing: bool,
    engine: EngineKind,
}

const CONFIGS: [Config; 5] = [
    Config {
        cluster_size: 65536,
        compat: "1.1",
        refcount_bits: 16,
        backing: false,
        engine: EngineKind::IoUring,
    },
    Config {
        cluster_size: 512,
        compat: "0.10",
        refcount_bits: 16,
        backing: true,
        engine: EngineKind::Sync,
    },
    Config {
        cluster_size: 2 << 20,
        compat: "1.1",
        refcount_bits: 16,
        backing: true,
        engine: EngineKind::IoUring,
    },
    Config {
        cluster_size: 4096,
        compat: "1.1",
        refcount_bits: 16,
        backing: false,
        engine: EngineKind::Sync,
    },
    // 64-bit refcounts in 512-byte clusters: a refcount block covers 32 KiB and the first
    // refcount table 2 MiB, so the workload adds refcount blocks and grows the table.
    Config {
        cluster_size: 512,
        compat: "1.1",
        refcount_bits: 64,
        backing: false,
        engine: EngineKind::IoUring,
    },
];

/// A guest flush that completed: the recorder's length when its completion was reaped, and
/// the acknowledged positions when it was submitted.
struct Flushed {
    seen_at: usize,
    snap: Vec<u32>,
}

/// What the recorded workload left behind.
struct Recording {
    initial: Vec<u8>,
    events: Vec<Event>,
    flushes: Vec<Flushed>,
    model: Model,
}

#[test]
fn qcow2_survives_power_failure_at_200_random_points_of_a_recorded_workload() {
    let seed = rng::seed("replay");
    let mut rng = Rng::new(seed);
    let start = Instant::now();
    let (mut cuts, mut torn_sectors, mut leaks) = (0, 0, 0);
    for (i, c) in CONFIGS.iter().enumerate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backing = c.backing.then(|| base(dir.path()));
        let spec = Spec {
            cluster_size: c.cluster_size,
            compat: c.compat,
            refcount_bits: c.refcount_bits,
            size: DISK,
            backing: backing.clone().map(|(p, _)| (p, "raw")),
        };
        let image = qemu::create(&dir.path().join("rec.qcow2"), &spec);
        let rec = record(&image, c.engine, c.backing, rng.next_u64());
        if c.refcount_bits == 64 {
            let after = std::fs::read(&image).expect("read image");
            assert_ne!(
                reftable_offset(&rec.initial),
                reftable_offset(&after),
                "the workload was meant to grow the refcount table"
            );
        }
        let initial = backing.as_ref().map(|(_, content)| content.as_slice());
        let context = format!("config {i} ({spec:?}, {:?})", c.engine);
        let r = replay_cuts(&rec, initial, dir.path(), &mut rng, &context);
        println!(
            "{context}: {} events, {} guest flushes, {CUTS_PER_CONFIG} cuts, {} torn sectors, \
             {} leaked clusters",
            rec.events.len(),
            rec.flushes.len(),
            r.torn,
            r.leaks
        );
        cuts += CUTS_PER_CONFIG;
        torn_sectors += r.torn;
        leaks += r.leaks;
    }
    println!(
        "replay: {cuts} cut points, 0 corruptions, {torn_sectors} torn sectors, {leaks} leaks, {:?}",
        start.elapsed()
    );
}

/// The header's refcount_table_offset.
fn reftable_offset(image: &[u8]) -> u64 {
    u64::from_be_bytes(image[48..56].try_into().expect("header"))
}

/// A raw backing file with a known pattern in its first 3/4 (zeros after).
fn base(dir: &Path) -> (PathBuf, Vec<u8>) {
    let mut content = vec![0u8; DISK as usize];
    fill_pattern(&mut content[..(DISK as usize) * 3 / 4], 0, 0x00ba_5e00);
    let path = dir.join("base.raw");
    std::fs::write(&path, &content).expect("write base");
    (path, content)
}

/// Runs the random workload on `image` (which has a backing file if `backing`) with a recorder
/// installed.
fn record(image: &Path, engine: EngineKind, backing: bool, seed: u64) -> Recording {
    let initial = std::fs::read(image).expect("read initial image");
    let recorder = Arc::new(Recorder::default());
    let opts = OpenOptions {
        engine,
        cache: match engine {
            EngineKind::IoUring => rustbk_formats::CacheMode::None,
            _ => rustbk_formats::CacheMode::Writeback,
        },
        recorder: Some(recorder.clone()),
        ..OpenOptions::default()
    };
    let img = open_image(image, Format::Qcow2, &opts).expect("open with recorder");
    let mut q = img.open_queue(8).expect("queue");
    let mut w = Workload {
        rng: Rng::new(seed),
        model: Model::new(DISK as usize / BLOCK, backing),
        busy: vec![false; DISK as usize / BLOCK],
        inflight: Vec::new(),
        flushes: Vec::new(),
        until_flush: 3,
        next_tag: 1,
    };
    w.run(&mut *q, &recorder);
    drop(q);
    drop(img);
    Recording {
        initial,
        events: recorder.events(),
        flushes: w.flushes,
        model: w.model,
    }
}

enum Op {
    Change {
        first: usize,
        count: usize,
        generation: u32,
    },
    Flush {
        snap: Vec<u32>,
    },
}

struct Workload {
    rng: Rng,
    model: Model,
    busy: Vec<bool>,
    inflight: Vec<(u64, Op)>,
    flushes: Vec<Flushed>,
    until_flush: u64,
    next_tag: u64,
}

impl Workload {
    fn run(&mut self, q: &mut dyn ImageQueue, recorder: &Recorder) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut issued = 0;
        while issued < OPS || !self.inflight.is_empty() {
            while issued < OPS && self.inflight.len() < 8 {
                let Some((op, io)) = self.next_op() else {
                    break;
                };
                let tag = self.next_tag;
                self.next_tag += 1;
                q.submit(io, tag).expect("submit");
                self.inflight.push((tag, op));
                issued += 1;
                if self.rng.chance(1, 3) {
                    break;
                }
            }
            q.commit().expect("commit");
            q.wait(Some(Duration::from_secs(1))).expect("wait");
            let mut done = Vec::new();
            q.reap(&mut done);
            for c in done {
                assert!(c.result.is_ok(), "op {} failed: {:?}", c.tag, c.result);
                self.complete(c.tag, recorder.len());
            }
            assert!(Instant::now() < deadline, "workload stuck");
        }
    }

    /// The next op: a write, discard or write-zeroes of a free range, or a flush.
    fn next_op(&mut self) -> Option<(Op, IoOp)> {
        if self.until_flush == 0 {
            self.until_flush = self.rng.range(1, 6);
            return Some((
                Op::Flush {
                    snap: self.model.acked(),
                },
                IoOp::Flush,
            ));
        }
        let count = self.rng.range(1, MAX_OP_BLOCKS as u64) as usize;
        let first = (0..8).find_map(|_| {
            let first = self.rng.index(self.busy.len() - count + 1);
            (!self.busy[first..first + count].iter().any(|b| *b)).then_some(first)
        })?;
        self.until_flush -= 1;
        self.busy[first..first + count].fill(true);
        let (offset, len) = ((first * BLOCK) as u64, (count * BLOCK) as u64);
        let kind = self.rng.range(0, 9);
        let change = match kind {
            0..=7 => Change::Data,
            8 => Change::Discard,
            _ => Change::Zeros,
        };
        let generation = self.model.submit(first, count, change);
        let io = match kind {
            0..=7 => {
                let mut data = vec![0u8; count * BLOCK];
                fill_pattern(&mut data, offset, generation);
                let buf = SharedBuf::new(data.len());
                assert!(buf.copy_in(0, &data));
                IoOp::Write {
                    offset,
                    bufs: Box::new(buf),
                }
            }
            8 => IoOp::Discard { offset, len },
            _ => IoOp::WriteZeroes { offset, len },
        };
        let op = Op::Change {
            first,
            count,
            generation,
        };
        Some((op, io))
    }

    fn complete(&mut self, tag: u64, recorded: usize) {
        let i = self
            .inflight
            .iter()
            .position(|(t, _)| *t == tag)
            .expect("tag");
        match self.inflight.swap_remove(i).1 {
            Op::Change {
                first,
                count,
                generation,
            } => {
                self.model.ack(first, count, generation);
                self.busy[first..first + count].fill(false);
            }
            Op::Flush { snap } => {
                self.model.flushed(&snap);
                self.flushes.push(Flushed {
                    seen_at: recorded,
                    snap,
                });
            }
        }
    }
}

#[derive(Default)]
struct Replayed {
    torn: usize,
    leaks: u64,
}

/// Replays `CUTS_PER_CONFIG` random crashes of `rec` and checks each image.
fn replay_cuts(
    rec: &Recording,
    initial: Option<&[u8]>,
    dir: &Path,
    rng: &mut Rng,
    context: &str,
) -> Replayed {
    let n = rec.events.len();
    let mut cuts: Vec<usize> = (0..CUTS_PER_CONFIG)
        .map(|_| rng.range(0, n as u64) as usize)
        .collect();
    cuts.sort_unstable();
    let mut base = rec.initial.clone();
    let mut applied = 0;
    let mut out = Replayed::default();
    let never = vec![0u32; rec.model.blocks()];
    let path = dir.join("crashed.qcow2");
    for cut in cuts {
        let durable = recorder::durable_prefix(&rec.events, cut);
        for e in &rec.events[applied..durable] {
            recorder::apply(&mut base, e);
        }
        applied = durable;
        let mut file = base.clone();
        let mut picked = Vec::new();
        for (i, e) in rec.events.iter().enumerate().take(cut).skip(durable) {
            match rng.range(0, 5) {
                0 | 1 => {}
                2 => {
                    out.torn += recorder::apply_torn(&mut file, e, rng);
                    picked.push(format!("{i} torn"));
                }
                _ => {
                    recorder::apply(&mut file, e);
                    picked.push(i.to_string());
                }
            }
        }
        let what = format!(
            "{context}: cut at event {cut} of {n}, durable prefix {durable}, later events applied: {picked:?}"
        );
        std::fs::write(&path, &file).expect("write crashed image");
        out.leaks += qemu::check_crash_safe(&path, &what);
        let floor = rec
            .flushes
            .iter()
            .rev()
            .find(|f| f.seen_at <= cut)
            .map_or(never.as_slice(), |f| f.snap.as_slice());
        let disk = qemu::read_raw(&path, &dir.join("crashed.raw"));
        if let Err(e) = rec.model.verify(floor, &disk, initial) {
            panic!("{what}: {e}");
        }
    }
    out
}
