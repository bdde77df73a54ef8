//! The volume's reserve: data blocks handed out by the pool and not written into yet.
//!
//! A first write takes its block from the reserve. Through a pool service, a refill is a
//! round trip (a socket, two thread hops each way and the pool's lock) of a few
//! milliseconds on a loaded host, which the ring thread spent waiting while guest writes
//! queued behind it. So once the reserve is down to half of the last refill, the next one
//! is asked ahead without waiting, and its answer is taken in when a later write takes a
//! block; a write waits only if the reserve ran out before the answer came. A refill asked
//! ahead never waits for space in the pool: when the pool runs short it answers with fewer
//! blocks or none, and the refill asked when the reserve is empty does the waiting (and the
//! asking of other volumes) as before.

use std::time::Instant;

use super::Core;
use crate::error::{Error, Result};
use crate::port::Handout;

/// A refill asked ahead of need, whose answer has not been taken in.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ahead {
    ticket: u64,
    asked: usize,
}

impl Core {
    /// A data block for a new mapping, from the reserve or the pool, and whether it is known
    /// to be a hole of the data file.
    pub(crate) fn take_block(&mut self) -> Result<(u64, bool)> {
        self.take_ahead(false);
        if self.reserve.is_empty() {
            self.take_ahead(true);
        }
        if self.reserve.is_empty() {
            let asked = self.refill.ask(Instant::now());
            let got = self.port.provision_zeroed(asked)?;
            self.refill.answered(asked, got.blocks.len());
            self.add_to_reserve(got);
        }
        let block = self.reserve.pop().ok_or(Error::DataFull(0))?;
        self.ask_ahead();
        Ok((block, self.holes.remove(&block)))
    }

    /// Asks for the next refill if the reserve is down to half of the last one and no
    /// refill is on its way.
    fn ask_ahead(&mut self) {
        if self.ahead.is_some() || self.reserve.len() > self.refill.low_water() {
            return;
        }
        let now = Instant::now();
        let asked = self.refill.next(now);
        if let Some(ticket) = self.port.provision_ahead(asked) {
            self.refill.ask(now);
            self.ahead = Some(Ahead { ticket, asked });
        }
    }

    /// Takes in the refill asked ahead if its answer arrived (or, if `wait`, once it does).
    /// A failed one is only logged: the refill asked when the reserve is empty reports the
    /// error to the write that needs a block.
    fn take_ahead(&mut self, wait: bool) {
        let Some(ahead) = self.ahead else {
            return;
        };
        let Some(answer) = self.port.provision_answer(ahead.ticket, wait) else {
            return;
        };
        self.ahead = None;
        match answer {
            Ok(got) => {
                self.refill.answered(ahead.asked, got.blocks.len());
                self.add_to_reserve(got);
            }
            Err(e) => {
                tracing::debug!(volume = self.info.id, error = %e, "refill asked ahead failed")
            }
        }
    }

    /// Adds handed-out blocks to the reserve, to be taken after those already in it and in
    /// the order the pool handed them out (runs of ascending blocks), so that sequential
    /// first writes land in ascending blocks as well.
    fn add_to_reserve(&mut self, got: Handout) {
        self.holes.extend(got.zeroed);
        let unknown: Vec<u64> = (got.blocks.iter().copied())
            .filter(|b| !self.holes.contains(b))
            .collect();
        self.note_holes(&unknown);
        let mut reserve = got.blocks;
        reserve.reverse();
        reserve.append(&mut self.reserve);
        self.reserve = reserve;
    }

    /// Gives the reserve back to the pool down to what [`super::refill::Refill::keep`]
    /// keeps, so a volume that stopped allocating does not hold back blocks the others could
    /// use.
    pub(crate) fn trim_reserve(&mut self, now: Instant) {
        let keep = self.refill.keep(now);
        let Some(extra) = self.reserve.len().checked_sub(keep).filter(|&n| n > 0) else {
            return;
        };
        // Blocks are taken from the end: give back those that would be taken last.
        let rest = self.reserve.split_off(extra);
        let surplus = std::mem::replace(&mut self.reserve, rest);
        self.release_reserved(&surplus, "idle thin volume gave reserved blocks back");
    }

    /// Gives the whole reserve back, with the refill on its way: the pool ran out of free
    /// blocks and asks for it. The (possibly empty) release is the answer a write waiting
    /// on another volume waits for.
    pub(crate) fn give_back_reserve(&mut self) {
        self.take_ahead(true);
        let all = std::mem::take(&mut self.reserve);
        self.refill.restart();
        self.release_reserved(&all, "full thin pool: gave reserved blocks back");
    }

    fn release_reserved(&mut self, blocks: &[u64], what: &'static str) {
        for b in blocks {
            self.holes.remove(b);
        }
        match self.port.release(blocks) {
            Ok(()) => tracing::debug!(volume = self.info.id, blocks = blocks.len(), "{what}"),
            // They come back to the pool when the port closes or the pool restarts.
            Err(e) => tracing::warn!(error = %e, "cannot give back reserved blocks"),
        }
    }

    /// Records which of the blocks just handed out are holes of the data file, with one
    /// `lseek` per run of consecutive blocks (they are handed out in runs).
    fn note_holes(&mut self, got: &[u64]) {
        let mut sorted = got.to_vec();
        sorted.sort_unstable();
        let mut next_data = None;
        for &block in &sorted {
            let Some(start) = block.checked_mul(self.info.block_size) else {
                continue;
            };
            let Some(end) = start.checked_add(self.info.block_size) else {
                continue;
            };
            if next_data.is_none_or(|next| next < end) {
                next_data = self.data.next_data(start);
            }
            if next_data.is_some_and(|next| next >= end) {
                self.holes.insert(block);
            }
        }
    }
}
