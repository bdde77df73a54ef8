//! What a guest may read back after a crash, block by block.
//!
//! Every op that changes a 4 KiB block gives it a new generation (its data is the verify
//! pattern of that generation; generations with [`ZERO_BIT`] read as zeros; generation 0 is
//! the image's initial content). Ops on a block never overlap in time, so each block has a
//! history in submission order. After a crash a block may show the generation at its durable
//! position or any later one; a torn op may leave some 512-byte sectors old and some new.

use rustbk_blkfront::workload::fill_pattern;

/// Bytes per tracked block.
pub const BLOCK: usize = 4096;
const SECTOR: usize = 512;
/// Generations of discards and write-zeroes (read as zeros) carry this bit.
pub const ZERO_BIT: u32 = 1 << 31;

/// Per-block histories and the acknowledged and durable positions in them.
pub struct Model {
    history: Vec<Vec<u32>>,
    acked: Vec<u32>,
    durable: Vec<u32>,
    next_gen: u32,
}

impl Model {
    /// `blocks` blocks, all at generation 0.
    pub fn new(blocks: usize) -> Model {
        Model {
            history: vec![vec![0]; blocks],
            acked: vec![0; blocks],
            durable: vec![0; blocks],
            next_gen: 1,
        }
    }

    pub fn blocks(&self) -> usize {
        self.history.len()
    }

    /// A new generation for blocks `first..first + count` (zeros if `zero`).
    pub fn submit(&mut self, first: usize, count: usize, zero: bool) -> u32 {
        let generation = self.next_gen | if zero { ZERO_BIT } else { 0 };
        self.next_gen += 1;
        assert!(self.next_gen < ZERO_BIT, "generation counter overflow");
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
            for g in allowed {
                content(*g, at, initial, &mut expect);
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

/// The bytes of generation `generation` of the block at byte `at`.
fn content(generation: u32, at: usize, initial: Option<&[u8]>, out: &mut [u8]) {
    match (generation, initial) {
        (0, Some(init)) => out.copy_from_slice(&init[at..at + BLOCK]),
        (0, None) => out.fill(0),
        (g, _) if g & ZERO_BIT != 0 => out.fill(0),
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
         (0 = initial, bit 31 = zeros), found {seen}",
        block * BLOCK
    )
}
