//! Random writes, reads, discards, write-zeroes, flushes, snapshots and deletes on several
//! volumes of one pool against an in-memory model of every volume's bytes; then the pool is
//! reopened, every volume compared, and thin_check run on the metadata.

use std::collections::BTreeMap;
use std::time::Duration;

use rustbk_formats::suite::{self, assert_bytes, pattern};
use rustbk_formats::{BlockImage, ImageQueue, IoOp, SharedBuf};

use crate::pool::PoolOptions;
use crate::testing::{TestPool, new_pool, thin_check, us};
use crate::volume::ThinVolume;

const VOLUME_SIZE: u64 = 4 << 20;
const MAX_VOLUMES: usize = 7;

/// xorshift64*: the same workload for the same seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

struct Served {
    _vol: ThinVolume,
    q: Box<dyn ImageQueue>,
}

struct Workload {
    t: TestPool,
    bs: u64,
    model: BTreeMap<u64, Vec<u8>>,
    served: BTreeMap<u64, Served>,
    rng: Rng,
    next_id: u64,
    seed: u64,
}

impl Workload {
    fn new(bs: u64, seed: u64) -> Workload {
        let t = new_pool(bs, (48 << 20) / bs, PoolOptions::default());
        let mut w = Workload {
            t,
            bs,
            model: BTreeMap::new(),
            served: BTreeMap::new(),
            rng: Rng(seed | 1),
            next_id: 4,
            seed,
        };
        for id in 1..=3 {
            let vol = w.t.volume(id, VOLUME_SIZE);
            w.serve(id, vol);
        }
        w
    }

    fn serve(&mut self, id: u64, vol: ThinVolume) {
        let q = vol.open_queue(16).expect("queue");
        self.served.insert(id, Served { _vol: vol, q });
        self.model
            .entry(id)
            .or_insert_with(|| vec![0; us(VOLUME_SIZE)]);
    }

    fn pick(&mut self) -> u64 {
        let ids: Vec<u64> = self.model.keys().copied().collect();
        ids[us(self.rng.below(ids.len() as u64))]
    }

    /// A sector-aligned range of up to three blocks (sometimes byte-granular).
    fn range(&mut self) -> (u64, u64) {
        let unit = if self.rng.below(8) == 0 { 1 } else { 512 };
        let len = (1 + self.rng.below(3 * self.bs / unit)) * unit;
        let offset = self.rng.below((VOLUME_SIZE - len) / unit + 1) * unit;
        (offset, len)
    }

    fn step(&mut self, i: u64) {
        let id = self.pick();
        match self.rng.below(100) {
            0..=34 => self.write(id, i),
            35..=44 => self.batch(id, i),
            45..=64 => self.read(id),
            65..=72 => self.discard(id),
            73..=79 => self.write_zeroes(id),
            80..=87 => self.flush(id),
            88..=94 => self.snapshot(id),
            _ => self.delete(id),
        }
    }

    fn q(&mut self, id: u64) -> &mut dyn ImageQueue {
        &mut *self.served.get_mut(&id).expect("served").q
    }

    fn write(&mut self, id: u64, i: u64) {
        let (offset, len) = self.range();
        let data = pattern(self.seed ^ i, us(len));
        suite::write_at(self.q(id), offset, &data).expect("write");
        self.model.get_mut(&id).expect("model")[us(offset)..][..us(len)].copy_from_slice(&data);
    }

    /// Up to six writes in flight at once into disjoint slots of a three-block window.
    fn batch(&mut self, id: u64, i: u64) {
        let slot = 3 * self.bs / 6;
        let base = self.rng.below((VOLUME_SIZE - 3 * self.bs) / self.bs + 1) * self.bs;
        let mut bufs = Vec::new();
        for s in 0..6 {
            if self.rng.below(3) == 0 {
                continue;
            }
            let len = (1 + self.rng.below(slot / 512)) * 512;
            let offset = base + s * slot;
            let data = pattern(self.seed ^ i ^ (s << 32), us(len));
            let buf = SharedBuf::new(us(len));
            assert!(buf.copy_in(0, &data));
            let op = IoOp::Write {
                offset,
                bufs: Box::new(buf),
            };
            self.q(id).submit(op, s).expect("submit");
            bufs.push((offset, data));
        }
        self.q(id).commit().expect("commit");
        let done = suite::reap_n(self.q(id), bufs.len());
        assert!(done.iter().all(|c| c.result.is_ok()), "{done:?}");
        let model = self.model.get_mut(&id).expect("model");
        for (offset, data) in bufs {
            model[us(offset)..][..data.len()].copy_from_slice(&data);
        }
    }

    fn read(&mut self, id: u64) {
        let (offset, len) = self.range();
        let got = suite::read_at(self.q(id), offset, us(len)).expect("read");
        let expected = &self.model[&id][us(offset)..][..us(len)];
        assert_bytes(&got, expected, &format!("volume {id} at {offset}+{len}"));
    }

    /// Whole blocks only: what a partial discard leaves is not defined.
    fn discard(&mut self, id: u64) {
        let blocks = VOLUME_SIZE / self.bs;
        let first = self.rng.below(blocks);
        let count = 1 + self.rng.below(4.min(blocks - first));
        let (offset, len) = (first * self.bs, count * self.bs);
        suite::run(self.q(id), IoOp::Discard { offset, len }).expect("discard");
        self.model.get_mut(&id).expect("model")[us(offset)..][..us(len)].fill(0);
    }

    fn write_zeroes(&mut self, id: u64) {
        let (offset, len) = self.range();
        suite::run(self.q(id), IoOp::WriteZeroes { offset, len }).expect("write zeroes");
        self.model.get_mut(&id).expect("model")[us(offset)..][..us(len)].fill(0);
    }

    fn flush(&mut self, id: u64) {
        suite::run(self.q(id), IoOp::Flush).expect("flush");
    }

    /// Snapshots a served volume while its queue keeps being pumped (it must pause).
    fn snapshot(&mut self, id: u64) {
        if self.model.len() >= MAX_VOLUMES {
            return;
        }
        let new = self.next_id;
        self.next_id += 1;
        let pool = &self.t.pool;
        let q = &mut self.served.get_mut(&id).expect("served").q;
        std::thread::scope(|s| {
            let snap = s.spawn(move || pool.snapshot(id, new, "snap"));
            let mut out = Vec::new();
            while !snap.is_finished() {
                q.wait(Some(Duration::from_millis(5))).expect("wait");
                q.reap(&mut out);
            }
            snap.join().expect("thread").expect("snapshot");
        });
        let copy = self.model[&id].clone();
        self.model.insert(new, copy);
        let vol = self.t.open(new);
        self.serve(new, vol);
    }

    fn delete(&mut self, id: u64) {
        if id <= 3 {
            return;
        }
        self.served.remove(&id);
        self.model.remove(&id);
        self.t.pool.delete_volume(id).expect("delete");
    }

    /// Flushes and closes everything, reopens the pool, compares every volume.
    fn verify_after_reopen(mut self) {
        let ids: Vec<u64> = self.served.keys().copied().collect();
        for &id in &ids {
            self.flush(id);
        }
        self.served.clear();
        self.t.pool.commit().expect("commit");
        thin_check(&self.t.meta);
        let t = self.t.reopen(PoolOptions::default());
        for (id, expected) in &self.model {
            let vol = t.open(*id);
            let mut q = vol.open_queue(4).expect("queue");
            let got = suite::read_at(&mut *q, 0, us(VOLUME_SIZE)).expect("read");
            assert_bytes(&got, expected, &format!("volume {id} after reopen"));
        }
        let listed: Vec<u64> = t
            .pool
            .volumes()
            .expect("list")
            .iter()
            .map(|v| v.id)
            .collect();
        assert_eq!(listed, self.model.keys().copied().collect::<Vec<_>>());
        thin_check(&t.meta);
    }
}

fn random_workload(bs: u64, seed: u64, ops: u64) {
    let mut w = Workload::new(bs, seed);
    for i in 0..ops {
        w.step(i);
    }
    w.verify_after_reopen();
}

#[test]
fn random_workload_with_64k_blocks_matches_the_model_and_passes_thin_check() {
    for seed in [1, 2] {
        random_workload(64 << 10, seed, 400);
    }
}

#[test]
fn random_workload_with_256k_blocks_matches_the_model_and_passes_thin_check() {
    for seed in [3, 4] {
        random_workload(256 << 10, seed, 400);
    }
}
