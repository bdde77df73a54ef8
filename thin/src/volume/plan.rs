//! Planning one guest op: which engine ops on the data device it becomes, what runs now
//! (zeros, origin reads, unmaps), what the pool is told when its I/O is done, and which
//! virtual blocks it claims meanwhile.

use std::ops::Range;

use rustbk_formats::{Composite, IoBuffers, IoOp, SharedBufs};

use super::Core;
use super::fill::{self, Fill, Piece, Span};
use crate::error::{Error, Result};
use crate::meta::Mapping;
use crate::port::NewMapping;

pub(crate) use rustbk_formats::planned::Child;

/// What happens once an op's children are done.
pub(crate) enum After {
    Nothing,
    /// Map the new blocks (their data is written).
    Map(Vec<NewMapping>),
    /// Commit the pool (the data device is synced); the mark of the changes it covers.
    Commit(u64),
}

/// The virtual blocks an op holds while in flight.
pub(crate) enum Claim {
    None,
    Shared(Range<u64>),
    Owned(Vec<u64>),
}

/// A planned op (its children are in the queue's list).
pub(crate) struct Plan {
    pub after: After,
    pub claim: Claim,
    /// A modifying op: counted until done, so a pause waits for it.
    pub write: bool,
}

impl Plan {
    pub(crate) fn simple() -> Plan {
        Plan {
            after: After::Nothing,
            claim: Claim::None,
            write: false,
        }
    }
}

/// A plan, or the op given back to wait for blocks other ops hold.
pub(crate) enum Outcome {
    Go(Plan),
    Defer(IoOp),
}

/// One block's part of an op: virtual block, offset inside it, length, and offset of the
/// part inside the op.
struct Part {
    vblock: u64,
    at: u64,
    len: u64,
    skip: usize,
}

/// The parts of `[offset, offset + len)`, one per block (`len > 0`, inside the volume).
fn parts(offset: u64, len: u64, bs: u64) -> impl Iterator<Item = Part> {
    let end = offset + len;
    let mut pos = offset;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let vblock = pos / bs;
        let at = pos % bs;
        let count = (bs - at).min(end - pos);
        let skip = usize::try_from(pos - offset).unwrap_or(usize::MAX);
        pos += count;
        Some(Part {
            vblock,
            at,
            len: count,
            skip,
        })
    })
}

fn blocks_of(offset: u64, len: u64, bs: u64) -> Range<u64> {
    offset / bs..(offset + len).div_ceil(bs)
}

fn buffers_len(bufs: &dyn IoBuffers) -> Result<u64> {
    rustbk_formats::buffer::total_len(bufs.iovecs())
        .and_then(|l| u64::try_from(l).ok())
        .ok_or_else(|| Error::InvalidArgument("buffer length overflows".into()))
}

fn share(bufs: Box<dyn IoBuffers>) -> Result<SharedBufs> {
    SharedBufs::new(bufs).ok_or_else(|| Error::InvalidArgument("buffer length overflows".into()))
}

fn slice_of(shared: &SharedBufs, part: &Part) -> Result<Composite> {
    let mut piece = Composite::new();
    let len = usize::try_from(part.len).map_err(|_| Error::InvalidArgument("length".into()))?;
    if !piece.push_shared(shared, part.skip, len) {
        return Err(Error::InvalidArgument("piece outside the buffers".into()));
    }
    Ok(piece)
}

impl Core {
    fn mapping(&mut self, vblock: u64) -> Result<Option<Mapping>> {
        self.cache.get(&mut *self.port, vblock)
    }

    fn exclusive(&self, m: &Option<Mapping>) -> bool {
        m.is_some_and(|m| m.time >= self.info.snapshotted_time)
    }

    /// Plans a read of `bufs` at `offset` (inside the volume).
    pub(crate) fn plan_read(
        &mut self,
        offset: u64,
        bufs: Box<dyn IoBuffers>,
        kids: &mut Vec<Child>,
    ) -> Result<Outcome> {
        let bs = self.info.block_size;
        let len = buffers_len(&*bufs)?;
        if len == 0 {
            kids.push(Child::Now(Ok(())));
            return Ok(Outcome::Go(Plan::simple()));
        }
        let range = blocks_of(offset, len, bs);
        if !self.claims.can_share(&range) {
            return Ok(Outcome::Defer(IoOp::Read { offset, bufs }));
        }
        if range.end - range.start == 1 {
            if let Some(m) = self.mapping(range.start)? {
                let at = self.phys(m.block)? + offset % bs;
                kids.push(Child::Io(IoOp::Read { offset: at, bufs }));
                return Ok(self.go_shared(range));
            }
            kids.push(Child::Now(self.read_unmapped(offset, bufs, len)));
            return Ok(Outcome::Go(Plan::simple()));
        }
        let shared = share(bufs)?;
        for part in parts(offset, len, bs) {
            let piece = slice_of(&shared, &part)?;
            match self.mapping(part.vblock)? {
                Some(m) => {
                    let at = self.phys(m.block)? + part.at;
                    let op = IoOp::Read {
                        offset: at,
                        bufs: Box::new(piece),
                    };
                    kids.push(Child::Io(op));
                }
                None => {
                    let from = part.vblock * bs + part.at;
                    kids.push(Child::Now(self.read_unmapped(
                        from,
                        Box::new(piece),
                        part.len,
                    )));
                }
            }
        }
        Ok(self.go_shared(range))
    }

    fn go_shared(&mut self, range: Range<u64>) -> Outcome {
        self.claims.share(range.clone());
        Outcome::Go(Plan {
            after: After::Nothing,
            claim: Claim::Shared(range),
            write: false,
        })
    }

    /// An unprovisioned part reads zeros or the origin's data.
    fn read_unmapped(
        &mut self,
        offset: u64,
        bufs: Box<dyn IoBuffers>,
        len: u64,
    ) -> Result<(), rustbk_formats::Error> {
        match self.origin.as_mut() {
            Some(origin) => origin.read(offset, bufs, len).map_err(super::to_formats),
            None => {
                fill::zero(&*bufs, 0, usize::try_from(len).unwrap_or(usize::MAX));
                Ok(())
            }
        }
    }

    /// Plans a write of `bufs` at `offset` (inside the volume).
    pub(crate) fn plan_write(
        &mut self,
        offset: u64,
        bufs: Box<dyn IoBuffers>,
        kids: &mut Vec<Child>,
    ) -> Result<Outcome> {
        let bs = self.info.block_size;
        let len = buffers_len(&*bufs)?;
        if len == 0 {
            kids.push(Child::Now(Ok(())));
            return Ok(Outcome::Go(Plan::simple()));
        }
        let range = blocks_of(offset, len, bs);
        let mut in_place = true;
        for v in range.clone() {
            let m = self.mapping(v)?;
            in_place &= self.exclusive(&m);
        }
        if in_place {
            if !self.claims.can_share(&range) {
                return Ok(Outcome::Defer(IoOp::Write { offset, bufs }));
            }
            return self.overwrite(offset, len, bufs, range, kids);
        }
        if !self.claims.can_own(&range) {
            return Ok(Outcome::Defer(IoOp::Write { offset, bufs }));
        }
        let shared = share(bufs)?;
        let mut maps = Vec::new();
        let result = parts(offset, len, bs).try_for_each(|part| {
            let piece = Piece::Guest(&shared, part.skip);
            self.write_part(&part, piece, kids, &mut maps)
        });
        self.go_owned(range.collect(), maps, result)
    }

    /// Overwrites mapped exclusive blocks in place with the guest's buffers.
    fn overwrite(
        &mut self,
        offset: u64,
        len: u64,
        bufs: Box<dyn IoBuffers>,
        range: Range<u64>,
        kids: &mut Vec<Child>,
    ) -> Result<Outcome> {
        let bs = self.info.block_size;
        if range.end - range.start == 1 {
            let m = self
                .mapping(range.start)?
                .ok_or_else(|| Error::corrupt("lost mapping"))?;
            let at = self.phys(m.block)? + offset % bs;
            kids.push(Child::Io(IoOp::Write { offset: at, bufs }));
        } else {
            let shared = share(bufs)?;
            for part in parts(offset, len, bs) {
                let m = self.mapping(part.vblock)?;
                let m = m.ok_or_else(|| Error::corrupt("lost mapping"))?;
                let at = self.phys(m.block)? + part.at;
                let piece = slice_of(&shared, &part)?;
                let op = IoOp::Write {
                    offset: at,
                    bufs: Box::new(piece),
                };
                kids.push(Child::Io(op));
            }
        }
        let Outcome::Go(mut plan) = self.go_shared(range) else {
            return Err(Error::corrupt("shared claim"));
        };
        plan.write = true;
        Ok(Outcome::Go(plan))
    }

    /// One block's part of a write: in place if mapped and exclusive, else into a new block
    /// filled around the part.
    fn write_part(
        &mut self,
        part: &Part,
        piece: Piece<'_>,
        kids: &mut Vec<Child>,
        maps: &mut Vec<NewMapping>,
    ) -> Result<()> {
        let bs = self.info.block_size;
        let old = self.mapping(part.vblock)?;
        if let (true, Some(m)) = (self.exclusive(&old), old) {
            let at = self.phys(m.block)? + part.at;
            let op = match piece {
                Piece::Zeros => IoOp::WriteZeroes {
                    offset: at,
                    len: part.len,
                },
                Piece::Guest(shared, skip) => {
                    let mut bufs = Composite::new();
                    let len = usize::try_from(part.len).unwrap_or(usize::MAX);
                    if !bufs.push_shared(shared, skip, len) {
                        return Err(Error::InvalidArgument("piece outside the buffers".into()));
                    }
                    IoOp::Write {
                        offset: at,
                        bufs: Box::new(bufs),
                    }
                }
            };
            kids.push(Child::Io(op));
            return Ok(());
        }
        let fill = match (old, self.origin.is_some()) {
            (Some(m), _) => Fill::Old(self.phys(m.block)?),
            (None, true) => Fill::Origin(part.vblock * bs),
            (None, false) => Fill::Zeros,
        };
        let (block, hole) = self.take_block()?;
        maps.push(NewMapping {
            vblock: part.vblock,
            block,
        });
        let span = Span {
            phys: self.phys(block)?,
            at: part.at,
            len: part.len,
            hole,
        };
        fill::build(self, span, piece, fill, kids)
    }

    /// Claims `owned` for an op that allocates; on failure gives its new blocks back.
    fn go_owned(
        &mut self,
        owned: Vec<u64>,
        maps: Vec<NewMapping>,
        result: Result<()>,
    ) -> Result<Outcome> {
        if let Err(e) = result {
            self.reserve.extend(maps.iter().map(|m| m.block));
            return Err(e);
        }
        self.claims.own(&owned);
        let after = match maps.is_empty() {
            true => After::Nothing,
            false => After::Map(maps),
        };
        Ok(Outcome::Go(Plan {
            after,
            claim: Claim::Owned(owned),
            write: true,
        }))
    }

    /// Plans a discard (`discard`) or write-zeroes of `[offset, offset + len)`. Whole blocks
    /// are unmapped (write-zeroes over an origin writes zeros instead, since an unmapped
    /// block would read the origin). A discard leaves a partial block alone, as dm-thin
    /// does: it completes without touching the block, whose data stays. A write-zeroes
    /// zeroes a partial block in place if mapped and exclusive, else writes zeros into a new
    /// block unless it reads zeros already.
    pub(crate) fn plan_zero(
        &mut self,
        offset: u64,
        len: u64,
        discard: bool,
        kids: &mut Vec<Child>,
    ) -> Result<Outcome> {
        let bs = self.info.block_size;
        if len == 0 {
            kids.push(Child::Now(Ok(())));
            return Ok(Outcome::Go(Plan::simple()));
        }
        let range = blocks_of(offset, len, bs);
        if !self.claims.can_own(&range) {
            let op = match discard {
                true => IoOp::Discard { offset, len },
                false => IoOp::WriteZeroes { offset, len },
            };
            return Ok(Outcome::Defer(op));
        }
        let whole = offset.div_ceil(bs)..(offset + len) / bs;
        let unmap_whole = discard || self.origin.is_none();
        if unmap_whole && whole.start < whole.end {
            self.changes.made();
            self.port.unmap(whole.clone())?;
            self.cache.unmap(whole.start, whole.end);
        }
        let mut owned = Vec::new();
        let mut maps = Vec::new();
        let mut result = Ok(());
        for part in parts(offset, len, bs) {
            if discard || (unmap_whole && whole.contains(&part.vblock)) {
                continue;
            }
            let m = self.mapping(part.vblock)?;
            let skip = !self.exclusive(&m) && m.is_none() && self.origin.is_none();
            if skip {
                continue;
            }
            owned.push(part.vblock);
            result = self.write_part(&part, Piece::Zeros, kids, &mut maps);
            if result.is_err() {
                break;
            }
        }
        if kids.is_empty() && result.is_ok() {
            kids.push(Child::Now(Ok(())));
        }
        self.go_owned(owned, maps, result)
    }
}
