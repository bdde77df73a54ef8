//! What each volume may read back after a crash, 4 KiB unit by unit.
//!
//! Every op that changes a unit gives it a new generation, unique in the recording: the unit
//! then holds that generation's pattern, zeros (write zeroes) or, for a discard, zeros, the
//! volume's initial contents (its external origin) or what was there before (a discard is a
//! hint: a partial or shared block is left alone). Ops on a unit never overlap in time, so it
//! has a history in submission order. After a crash a unit shows one of the generations from
//! its position at the volume's last completed flush on.

use std::sync::atomic::{AtomicU32, Ordering};

/// Bytes per tracked unit.
pub(super) const UNIT: usize = 4096;
/// Generations of write-zeroes carry this bit.
const ZERO_BIT: u32 = 1 << 31;
/// Generations of discards carry this bit.
const DISCARD_BIT: u32 = 1 << 30;
/// The external origin's contents are this generation's pattern.
const ORIGIN_GEN: u32 = 1 << 29;

/// What an op does to its units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Change {
    Data,
    Zeros,
    Discard,
}

/// The generation counter of a recording.
#[derive(Debug)]
pub(super) struct Gens(AtomicU32);

impl Default for Gens {
    fn default() -> Gens {
        Gens(AtomicU32::new(1))
    }
}

impl Gens {
    fn next(&self, change: Change) -> u32 {
        let g = self.0.fetch_add(1, Ordering::SeqCst);
        assert!(g < ORIGIN_GEN, "generation counter overflow");
        g | match change {
            Change::Data => 0,
            Change::Zeros => ZERO_BIT,
            Change::Discard => DISCARD_BIT,
        }
    }
}

/// The pattern of generation `generation` in unit `unit` of a volume.
pub(super) fn pattern(generation: u32, unit: usize, out: &mut [u8]) {
    let base = u64::from(generation) << 32 | unit as u64;
    for (i, word) in out.chunks_exact_mut(8).enumerate() {
        let v = base ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        word.copy_from_slice(&v.to_le_bytes());
    }
}

/// The contents of an external origin of `units` units.
pub(super) fn origin_bytes(units: usize) -> Vec<u8> {
    let mut out = vec![0u8; units * UNIT];
    for (u, unit) in out.chunks_exact_mut(UNIT).enumerate() {
        pattern(ORIGIN_GEN, u, unit);
    }
    out
}

/// A completed flush: the log's length when its completion was seen, and the acknowledged
/// positions when it was submitted.
#[derive(Clone, Debug)]
struct Flushed {
    seen_at: usize,
    snap: Vec<u32>,
}

/// One volume's unit histories, acknowledged positions and completed flushes.
#[derive(Clone, Debug)]
pub(super) struct VolModel {
    history: Vec<Vec<u32>>,
    acked: Vec<u32>,
    flushes: Vec<Flushed>,
    /// Units of the external origin (0 without one): the initial contents of those units.
    origin_units: usize,
}

impl VolModel {
    pub fn new(units: usize, origin_units: usize) -> VolModel {
        VolModel {
            history: vec![vec![0]; units],
            acked: vec![0; units],
            flushes: Vec::new(),
            origin_units,
        }
    }

    pub fn units(&self) -> usize {
        self.history.len()
    }

    /// A new generation for units `first..first + count`.
    pub fn submit(&mut self, gens: &Gens, first: usize, count: usize, change: Change) -> u32 {
        let generation = gens.next(change);
        for h in &mut self.history[first..first + count] {
            h.push(generation);
        }
        generation
    }

    /// The op that gave `generation` to `first..first + count` was acknowledged.
    pub fn ack(&mut self, first: usize, count: usize, generation: u32) {
        for u in first..first + count {
            let pos = self.history[u].iter().rposition(|g| *g == generation);
            self.acked[u] = u32::try_from(pos.expect("submitted")).unwrap();
        }
    }

    /// The acknowledged positions (what a flush submitted now guarantees).
    pub fn acked(&self) -> Vec<u32> {
        self.acked.clone()
    }

    /// A flush whose submission-time positions were `snap` completed when the log held
    /// `seen_at` events.
    pub fn flushed(&mut self, seen_at: usize, snap: Vec<u32>) {
        self.flushes.push(Flushed { seen_at, snap });
    }

    /// What the volume may read back after a crash once `cut` events completed.
    pub fn expect_at(&self, cut: usize) -> Expect {
        let last = self.flushes.iter().rev().find(|f| f.seen_at <= cut);
        let lo = last.map_or_else(|| vec![0; self.units()], |f| f.snap.clone());
        let hi = self.history.iter().map(|h| len32(h)).collect();
        self.expect(lo, hi)
    }

    /// What a snapshot taken between `lo` (acknowledged positions when it was asked for) and
    /// `hi` (history lengths when it returned) holds.
    pub fn expect(&self, lo: Vec<u32>, hi: Vec<u32>) -> Expect {
        Expect {
            history: self.history.clone(),
            lo,
            hi,
            origin_units: self.origin_units,
        }
    }

    /// The history lengths now.
    pub fn lens(&self) -> Vec<u32> {
        self.history.iter().map(|h| len32(h)).collect()
    }
}

fn len32(h: &[u32]) -> u32 {
    u32::try_from(h.len()).unwrap()
}

/// What one unit may show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Content {
    Zeros,
    Initial,
    Gen(u32),
}

/// Per unit, the positions `lo..hi` of its history one of which it shows.
#[derive(Clone, Debug)]
pub(super) struct Expect {
    history: Vec<Vec<u32>>,
    lo: Vec<u32>,
    hi: Vec<u32>,
    origin_units: usize,
}

impl Expect {
    /// Checks a volume's contents read after a crash.
    pub fn verify(&self, disk: &[u8]) -> Result<(), String> {
        let mut expect = vec![0u8; UNIT];
        for (u, got) in disk.chunks_exact(UNIT).enumerate() {
            let h = &self.history[u];
            let (lo, hi) = (self.lo[u] as usize, self.hi[u] as usize);
            let mut allowed = Vec::new();
            for p in lo..hi {
                contents(h, p, &mut allowed);
            }
            let ok = allowed.iter().any(|c| {
                self.fill(*c, u, &mut expect);
                got == expect.as_slice()
            });
            if !ok {
                return Err(format!(
                    "unit {u} (byte {:#x}): generations {:?} allowed (bit 31 zeros, bit 30 \
                     discard), found {}",
                    u * UNIT,
                    &h[lo..hi],
                    describe(got, u)
                ));
            }
        }
        Ok(())
    }

    /// Units that must show something written (their floor is past the initial contents).
    pub fn required_units(&self) -> usize {
        self.lo.iter().filter(|lo| **lo > 0).count()
    }

    fn fill(&self, content: Content, unit: usize, out: &mut [u8]) {
        match content {
            Content::Initial if unit < self.origin_units => pattern(ORIGIN_GEN, unit, out),
            Content::Zeros | Content::Initial => out.fill(0),
            Content::Gen(g) => pattern(g, unit, out),
        }
    }
}

/// What position `p` of history `h` may show: a discard also what was before it.
fn contents(h: &[u32], p: usize, out: &mut Vec<Content>) {
    let g = h[p];
    if g == 0 {
        out.push(Content::Initial);
    } else if g & ZERO_BIT != 0 {
        out.push(Content::Zeros);
    } else if g & DISCARD_BIT != 0 {
        out.extend([Content::Zeros, Content::Initial]);
        contents(h, p - 1, out);
    } else {
        out.push(Content::Gen(g));
    }
}

/// Names what a unit holds: a pattern (whose generation and unit), zeros or other bytes.
fn describe(got: &[u8], unit: usize) -> String {
    if got.iter().all(|b| *b == 0) {
        return "zeros".into();
    }
    let first = u64::from_le_bytes(got[..8].try_into().unwrap()) ^ 0x9e37_79b9_7f4a_7c15;
    let generation = u32::try_from(first >> 32).unwrap();
    let of = first & 0xffff_ffff;
    let mut expect = vec![0u8; UNIT];
    pattern(generation, unit, &mut expect);
    if of == unit as u64 && got == expect.as_slice() {
        return format!("generation {generation:#x}");
    }
    format!("other bytes starting {:02x?}", &got[..16])
}
