//! What a guest may read back after a crash, block by block.
//!
//! Every op that changes a 4 KiB block gives it a new generation (its data is the verify
//! pattern of that generation; generations with [`ZERO_BIT`] read as zeros; generation 0 is
//! the image's initial content). A discard is a hint: its generation ([`DISCARD_BIT`]) reads
//! as zeros, or, on an image with a backing file, may also show what was there before it or
//! the backing file's (initial) content. Ops on a block never overlap in time, so each block has a
//! history in submission order. After a crash a block may show the generation at its durable
//! position or any later one; a torn op may leave some 512-byte sectors old and some new.

use rustbk_blkfront::workload::fill_pattern;

/// Bytes per tracked block.
pub const BLOCK: usize = 4096;
const SECTOR: usize = 512;
/// Generations of write-zeroes (read as zeros) carry this bit.
pub const ZERO_BIT: u32 = 1 << 31;
/// Generations of discards carry this bit.
pub const DISCARD_BIT: u32 = 1 << 30;

/// What an op does to its blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// New data: the pattern of the op's generation.
    Data,
    /// Write-zeroes.
    Zeros,
    /// Discard.
    Discard,
}

/// Per-block histories and the acknowledged and durable positions in them.
pub struct Model {
    history: Vec<Vec<u32>>,
    acked: Vec<u32>,
    durable: Vec<u32>,
    next_gen: u32,
    /// A discarded block may show what was below it (the image has a backing file).
    discard_shows_below: bool,
}

impl Model {
    /// `blocks` blocks, all at generation 0; `discard_shows_below` when the image has a
    /// backing file.
    pub fn new(blocks: usize, discard_shows_below: bool) -> Model {
        Model {
            history: vec![vec![0]; blocks],
            acked: vec![0; blocks],
            durable: vec![0; blocks],
            next_gen: 1,
            discard_shows_below,
        }
    }

    pub fn blocks(&self) -> usize {
        self.history.len()
    }

    /// A new generation for blocks `first..first + count`.
    pub fn submit(&mut self, first: usize, count: usize, change: Change) -> u32 {
        let generation = self.next_gen
            | match change {
                Change::Data => 0,
                Change::Zeros => ZERO_BIT,
                Change::Discard => DISCARD_BIT,
            };
        self.next_gen += 1;
        assert!(self.next_gen < DISCARD_BIT, "generation counter overflow");
        for h in &mut self.history[first..first + count] {
            h.push(generation);
        }
        generation
    }

    /// The op that gave `generation` to `first..first + count` was acknowledged.
    pub fn ack(&mut self, first: usize, count: usize, generation: u32) {
        for b in first..first + count {
            let h = &self.history[b];
            let pos = h.iter().rposition(|g| *g == generation).expect("submitted");
            self.acked[b] = pos as u32;
        }
    }

    /// What a flush submitted now guarantees once it completes.
    pub fn acked(&self) -> Vec<u32> {
        self.acked.clone()
    }

    /// A flush whose submission-time snapshot was `snap` completed.
    pub fn flushed(&mut self, snap: &[u32]) {
        for (d, s) in self.durable.iter_mut().zip(snap) {
            *d = (*d).max(*s);
        }
    }

    /// The durable positions.
    pub fn durable(&self) -> &[u32] {
        &self.durable
    }

    /// Checks the guest-visible bytes `disk` given the positions `floor`: blocks of the model
    /// show a generation at or after their floor position; bytes past the model equal
    /// `initial` (zeros if `None`).
    pub fn verify(&self, floor: &[u32], disk: &[u8], initial: Option<&[u8]>) -> Result<(), String> {
        let mut expect = vec![0u8; BLOCK];
        for (b, (h, f)) in self.history.iter().zip(floor).enumerate() {
            let at = b * BLOCK;
            let got = disk
                .get(at..at + BLOCK)
                .ok_or_else(|| format!("disk ends before block {b}"))?;
            let allowed = &h[*f as usize..];
            let mut sector_ok = [false; BLOCK / SECTOR];
            for g in self.shown_by(h, *f as usize) {
                content(g, at, initial, &mut expect);
                for (s, ok) in sector_ok.iter_mut().enumerate() {
                    let r = s * SECTOR..(s + 1) * SECTOR;
                    *ok |= got[r.clone()] == expect[r];
                }
            }
            if let Some(s) = sector_ok.iter().position(|ok| !ok) {
                return Err(mismatch(b, s, allowed, got));
            }
        }
        let tail = self.blocks() * BLOCK;
        let rest = disk.get(tail..).unwrap_or_default();
        let same = match initial {
            Some(init) => rest == init.get(tail..).unwrap_or_default(),
            None => rest.iter().all(|b| *b == 0),
        };
        if !same {
            return Err(format!("bytes past byte {tail} (never written) changed"));
        }
        Ok(())
    }
}

impl Model {
    /// The generations whose content a block with history `h` may show from position `floor`
    /// on: each generation's own, and for a discard on an image with a backing file also the
    /// generation before it and the initial content.
    fn shown_by(&self, h: &[u32], floor: usize) -> Vec<u32> {
        let mut out = Vec::new();
        for (i, g) in h.iter().enumerate().skip(floor) {
            out.push(*g);
            if g & DISCARD_BIT != 0 && self.discard_shows_below {
                out.extend([0, h[i.saturating_sub(1)]]);
            }
        }
        out
    }
}

/// The bytes of generation `generation` of the block at byte `at`.
fn content(generation: u32, at: usize, initial: Option<&[u8]>, out: &mut [u8]) {
    match (generation, initial) {
        (0, Some(init)) => out.copy_from_slice(&init[at..at + BLOCK]),
        (0, None) => out.fill(0),
        (g, _) if g & (ZERO_BIT | DISCARD_BIT) != 0 => out.fill(0),
        (g, _) => fill_pattern(out, at as u64, g),
    }
}

fn mismatch(block: usize, sector: usize, allowed: &[u32], got: &[u8]) -> String {
    let s = &got[sector * SECTOR..(sector + 1) * SECTOR];
    let word = |i: usize| u64::from_le_bytes(s[i * 8..i * 8 + 8].try_into().unwrap_or_default());
    let seen = if word(1) >> 32 == 0x5255_5354 {
        format!(
            "the pattern of offset {:#x} generation {}",
            word(0),
            word(1) as u32
        )
    } else if s.iter().all(|b| *b == 0) {
        "zeros".to_owned()
    } else {
        format!("unknown bytes starting {:02x?}", &s[..16])
    };
    format!(
        "block {block} (byte {:#x}) sector {sector}: allowed generations {allowed:?} \
         (0 = initial, bit 31 = zeros, bit 30 = discarded), found {seen}",
        block * BLOCK
    )
}
