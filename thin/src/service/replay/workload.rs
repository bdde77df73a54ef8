//! A worker: one volume served through a [`SocketPort`] as a guest's worker serves it, with
//! its own recorded handle on the data device, running random writes (partial-block and
//! whole-block), discards, write-zeroes and flushes, and keeping the volume's model.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustbk_formats::engine::Access;
use rustbk_formats::{EngineFile, EngineKind, ImageQueue, IoOp, SharedBuf};

use super::log::{Dev, DevRecorder, Log, Source};
use super::model::{Change, Gens, UNIT, VolModel, pattern};
use super::rng::Rng;
use crate::service::SocketPort;
use crate::volume::{ThinVolume, VolumeOptions};

/// Ops in flight at most.
const DEPTH: usize = 8;
/// Units per data block (64 KiB blocks).
const BLOCK_UNITS: usize = 16;

/// What the test and a worker share: its progress, the order to die, and where it holds
/// still until the test acts (a snapshot or a kill): after issuing `hold_at` ops (0: never)
/// it issues no more until `released`. Without the hold a fast build finishes its ops before
/// the test gets to act, and the snapshot or kill would meet an idle worker.
#[derive(Debug, Default)]
pub(super) struct Ctl {
    pub done: AtomicUsize,
    pub finished: AtomicBool,
    pub kill: AtomicBool,
    pub hold_at: AtomicUsize,
    pub released: AtomicBool,
}

impl Ctl {
    /// Whether a worker that issued `issued` ops must wait before the next one.
    fn holds(&self, issued: usize) -> bool {
        let at = self.hold_at.load(Ordering::SeqCst);
        at != 0 && issued >= at && !self.released.load(Ordering::SeqCst)
    }

    /// Lets the worker go on past its hold.
    pub(super) fn release(&self) {
        self.released.store(true, Ordering::SeqCst);
    }
}

/// Everything a worker thread needs.
pub(super) struct Setup {
    pub socket: PathBuf,
    pub data: PathBuf,
    pub volume: u64,
    pub ops: usize,
    pub engine: EngineKind,
    pub seed: u64,
    pub log: Arc<Log>,
    pub gens: Arc<Gens>,
    pub model: Arc<Mutex<VolModel>>,
    pub ctl: Arc<Ctl>,
}

/// What a killed worker leaves behind, untouched until the recording ended.
pub(super) type Remains = Option<(Box<dyn ImageQueue>, ThinVolume)>;

/// How a worker's ops went.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Outcome {
    pub acked: usize,
    pub failed: usize,
    pub flushes: usize,
    pub killed: Option<Killed>,
}

/// When a worker was killed (events completed by then), holding how many handed-out blocks,
/// with how many ops in flight.
#[derive(Clone, Copy, Debug)]
pub(super) struct Killed {
    pub at: usize,
    pub held: usize,
    pub in_flight: usize,
}

/// Runs the worker; returns what a kill left behind and how its ops went.
pub(super) fn run(setup: Setup) -> (Remains, Outcome) {
    let port = SocketPort::connect(&setup.socket, setup.volume).expect("connect");
    let cut = port.connection().expect("second handle");
    let mut data = EngineFile::open(
        &setup.data,
        Access::SharedWrite,
        rustbk_formats::CacheMode::None,
    )
    .expect("data");
    let source = Source::Worker(setup.volume);
    data.set_recorder(DevRecorder::new(&setup.log, Dev::Data, source));
    let opts = VolumeOptions {
        engine: setup.engine,
        ..VolumeOptions::default()
    };
    let vol = ThinVolume::new(Box::new(port), Arc::new(data), opts).expect("volume");
    let mut q = rustbk_formats::BlockImage::open_queue(&vol, 8).expect("queue");
    let units = setup.model.lock().unwrap().units();
    let mut w = Worker {
        rng: Rng::new(setup.seed),
        busy: vec![false; units],
        inflight: Vec::new(),
        until_flush: 3,
        next_tag: 1,
        outcome: Outcome::default(),
        setup,
    };
    let killed = w.run(&mut *q, &vol, &cut);
    w.setup.ctl.finished.store(true, Ordering::SeqCst);
    match killed {
        true => (Some((q, vol)), w.outcome),
        false => (None, w.outcome),
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

struct Worker {
    setup: Setup,
    rng: Rng,
    busy: Vec<bool>,
    inflight: Vec<(u64, Op)>,
    until_flush: u64,
    next_tag: u64,
    outcome: Outcome,
}

impl Worker {
    /// The op loop; true if the worker was killed (its connection cut, its ops abandoned).
    /// Once told to, it dies with ops started (their data may be written, not yet mapped)
    /// and blocks the pool handed it in reserve.
    fn run(&mut self, q: &mut dyn ImageQueue, vol: &ThinVolume, cut: &UnixStream) -> bool {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut issued = 0;
        while issued < self.setup.ops || !self.inflight.is_empty() {
            let held = self.setup.ctl.holds(issued);
            if held && self.inflight.is_empty() {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            while !held && issued < self.setup.ops && self.inflight.len() < DEPTH {
                let Some((op, io)) = self.next_op() else {
                    break;
                };
                let tag = self.next_tag;
                self.next_tag += 1;
                q.submit(io, tag).expect("submit");
                self.inflight.push((tag, op));
                issued += 1;
                if self.rng.below(3) == 0 {
                    break;
                }
            }
            q.commit().expect("commit");
            if self.die_now(vol, cut) {
                return true;
            }
            q.wait(Some(Duration::from_millis(100))).expect("wait");
            let mut done = Vec::new();
            q.reap(&mut done);
            for c in done {
                self.complete(c.tag, c.result.is_ok());
            }
            assert!(Instant::now() < deadline, "worker stuck");
        }
        false
    }

    /// Cuts the connection if told to die and the time is right.
    fn die_now(&mut self, vol: &ThinVolume, cut: &UnixStream) -> bool {
        let held = vol.reserved();
        let ready = held > 0 && !self.inflight.is_empty();
        if !ready || !self.setup.ctl.kill.load(Ordering::SeqCst) {
            return false;
        }
        self.outcome.killed = Some(Killed {
            at: self.setup.log.len(),
            held,
            in_flight: self.inflight.len(),
        });
        let _ = cut.shutdown(std::net::Shutdown::Both);
        true
    }

    /// The next op on free units, or a flush.
    fn next_op(&mut self) -> Option<(Op, IoOp)> {
        if self.until_flush == 0 {
            self.until_flush = 1 + self.rng.below(10);
            let snap = self.setup.model.lock().unwrap().acked();
            return Some((Op::Flush { snap }, IoOp::Flush));
        }
        let (first, count, change) = self.pick()?;
        self.until_flush -= 1;
        self.busy[first..first + count].fill(true);
        let generation =
            self.setup
                .model
                .lock()
                .unwrap()
                .submit(&self.setup.gens, first, count, change);
        let (offset, len) = ((first * UNIT) as u64, (count * UNIT) as u64);
        let io = match change {
            Change::Data => IoOp::Write {
                offset,
                bufs: Box::new(data_of(first, count, generation)),
            },
            Change::Discard => IoOp::Discard { offset, len },
            Change::Zeros => IoOp::WriteZeroes { offset, len },
        };
        let op = Op::Change {
            first,
            count,
            generation,
        };
        Some((op, io))
    }

    /// A range of free units and what to do to it.
    fn pick(&mut self) -> Option<(usize, usize, Change)> {
        let units = self.busy.len();
        let blocks = units / BLOCK_UNITS;
        let (aligned, count, change) = match self.rng.below(20) {
            0..=9 => (false, 1 + self.rng.index(4), Change::Data),
            10..=12 => (true, BLOCK_UNITS * (1 + self.rng.index(2)), Change::Data),
            13..=15 => (false, 8 + self.rng.index(17), Change::Data),
            16 | 17 => (true, BLOCK_UNITS, Change::Discard),
            18 => (false, 1 + self.rng.index(20), Change::Discard),
            _ => (false, 1 + self.rng.index(20), Change::Zeros),
        };
        (0..8).find_map(|_| {
            let first = match aligned {
                true => self.rng.index(blocks - count / BLOCK_UNITS + 1) * BLOCK_UNITS,
                false => self.rng.index(units - count + 1),
            };
            let free = !self.busy[first..first + count].iter().any(|b| *b);
            free.then_some((first, count, change))
        })
    }

    fn complete(&mut self, tag: u64, ok: bool) {
        let i = self.inflight.iter().position(|(t, _)| *t == tag);
        let (_, op) = self.inflight.swap_remove(i.expect("tag"));
        match ok {
            true => self.outcome.acked += 1,
            false => self.outcome.failed += 1,
        }
        self.setup.ctl.done.fetch_add(1, Ordering::SeqCst);
        let mut model = self.setup.model.lock().unwrap();
        match op {
            Op::Change {
                first,
                count,
                generation,
            } => {
                if ok {
                    model.ack(first, count, generation);
                }
                self.busy[first..first + count].fill(false);
            }
            Op::Flush { snap } if ok => {
                self.outcome.flushes += 1;
                model.flushed(self.setup.log.len(), snap);
            }
            Op::Flush { .. } => {}
        }
    }
}

/// The data of a write of `count` units from `first`, generation `generation`.
fn data_of(first: usize, count: usize, generation: u32) -> SharedBuf {
    let mut data = vec![0u8; count * UNIT];
    for (i, unit) in data.chunks_exact_mut(UNIT).enumerate() {
        pattern(generation, first + i, unit);
    }
    let buf = SharedBuf::new(data.len());
    assert!(buf.copy_in(0, &data));
    buf
}
