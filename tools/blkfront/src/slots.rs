//! Pre-granted data buffers, one per request in flight.

use rustbk_grant::emu::{EmuDomain, RamView};
use rustbk_ring::{
    DomId, GrantRef, IndirectRefs, PAGE_SIZE, Request, RwOp, SEGS_PER_INDIRECT_FRAME, Sector,
    Segment, Segments, SharedMemory, encode_indirect_segments,
};

use crate::{Error, FrameAlloc};

/// One request's buffer: contiguous guest frames granted to the backend, plus indirect pages.
#[derive(Debug)]
pub struct Slot {
    /// First data frame.
    pub first_frame: u32,
    /// Data pages.
    pub pages: u32,
    /// Grants of the data pages, in order.
    pub grefs: Vec<GrantRef>,
    /// Grants of the indirect pages: each part of a split buffer has its own run of them.
    pub indirect_grefs: Vec<GrantRef>,
    indirect_frame: Option<u32>,
    indirect_views: Vec<RamView>,
    /// Data pages per request: a larger buffer goes as several requests (parts), as Linux
    /// blkfront splits what exceeds the segments the backend takes.
    part_pages: usize,
}

impl Slot {
    /// Guest physical address of the buffer.
    pub fn addr(&self) -> u64 {
        u64::from(self.first_frame) * PAGE_SIZE as u64
    }

    /// Segments covering `len` bytes (a multiple of 512) from page `first_page` of the buffer.
    pub fn segments(&self, first_page: usize, len: usize) -> Vec<Segment> {
        let mut out = Vec::new();
        let mut left = len / 512;
        for gref in self.grefs.iter().skip(first_page) {
            if left == 0 {
                break;
            }
            let n = left.min(8);
            // n is 1..=8, so the last sector index fits.
            let last_sect = u8::try_from(n - 1).unwrap_or(7);
            out.push(Segment {
                gref: *gref,
                first_sect: 0,
                last_sect,
            });
            left -= n;
        }
        out
    }

    /// How many requests a transfer of `len` bytes from the start of the buffer takes.
    pub fn parts(&self, len: usize) -> usize {
        len.div_ceil(PAGE_SIZE).div_ceil(self.part_pages).max(1)
    }

    /// A READ or WRITE request for `len` bytes at `sector`: direct when it fits in 11
    /// segments, indirect otherwise (the segments are written into this slot's indirect pages).
    pub fn rw_request(&self, id: u64, op: RwOp, sector: u64, len: usize) -> Result<Request, Error> {
        self.rw_part(0, id, op, sector, len)
    }

    /// Request `part` of [`Slot::parts`] for a transfer of `len` bytes at `sector`: its share
    /// of the pages, at its share of the sectors.
    pub fn rw_part(
        &self,
        part: usize,
        id: u64,
        op: RwOp,
        sector: u64,
        len: usize,
    ) -> Result<Request, Error> {
        let first_page = part * self.part_pages;
        let start = first_page * PAGE_SIZE;
        let part_len = len
            .checked_sub(start)
            .filter(|&l| l > 0)
            .ok_or_else(|| Error::Config(format!("no part {part} in {len} bytes")))?
            .min(self.part_pages * PAGE_SIZE);
        let sector = sector + (start / 512) as u64;
        let segs = self.segments(first_page, part_len);
        if let Some(segments) = Segments::from_slice(&segs) {
            return Ok(Request::Rw {
                id,
                op,
                handle: 0,
                sector: Sector(sector),
                segments,
            });
        }
        let per_part = self.indirect_views.len() / self.parts(self.pages as usize * PAGE_SIZE);
        let mine = part * per_part..(part + 1) * per_part;
        let pages: Vec<&dyn SharedMemory> = (self.indirect_views.get(mine.clone()))
            .unwrap_or(&[])
            .iter()
            .map(|v| v as &dyn SharedMemory)
            .collect();
        encode_indirect_segments(&pages, &segs)?;
        let needed = segs.len().div_ceil(SEGS_PER_INDIRECT_FRAME);
        let refs = (self.indirect_grefs.get(mine)).and_then(|r| r.get(..needed));
        let indirect_grefs = IndirectRefs::from_slice(refs.unwrap_or(&[])).ok_or_else(|| {
            Error::Config(format!(
                "{} segments need too many indirect pages",
                segs.len()
            ))
        })?;
        let nr_segments =
            u16::try_from(segs.len()).map_err(|_| Error::Config("too many segments".into()))?;
        Ok(Request::Indirect {
            id,
            op,
            handle: 0,
            sector: Sector(sector),
            nr_segments,
            indirect_grefs,
        })
    }
}

/// A fixed set of slots.
#[derive(Debug)]
pub struct SlotPool {
    slots: Vec<Slot>,
    free: Vec<usize>,
}

impl SlotPool {
    /// Allocates and grants `count` slots of `bytes` each (whole pages), each sent in one
    /// request (indirect when it has more than 11 pages).
    pub fn new(
        dom: &EmuDomain,
        frames: &mut FrameAlloc,
        backend: DomId,
        count: u32,
        bytes: usize,
    ) -> Result<Self, Error> {
        Self::split(dom, frames, backend, (count, bytes), usize::MAX)
    }

    /// [`SlotPool::new`] for a backend that takes at most `max_segments` segments a request
    /// (11 when it offers no indirect requests): a larger buffer is sent in parts.
    pub fn split(
        dom: &EmuDomain,
        frames: &mut FrameAlloc,
        backend: DomId,
        (count, bytes): (u32, usize),
        max_segments: usize,
    ) -> Result<Self, Error> {
        let pages = u32::try_from(bytes.div_ceil(PAGE_SIZE))
            .map_err(|_| Error::Config("slot too large".into()))?;
        let part_pages = (pages as usize).min(max_segments).max(1);
        let parts = (pages as usize).div_ceil(part_pages);
        let indirect = u32::try_from(parts * part_pages.div_ceil(SEGS_PER_INDIRECT_FRAME))
            .map_err(|_| Error::Config("slot too large".into()))?;
        let mut slots = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let first_frame = frames.alloc(pages)?;
            let grefs = grant_run(dom, backend, first_frame, pages)?;
            let mut slot = Slot {
                first_frame,
                pages,
                grefs,
                indirect_grefs: Vec::new(),
                indirect_frame: None,
                indirect_views: Vec::new(),
                part_pages,
            };
            if part_pages > rustbk_ring::MAX_SEGMENTS_PER_REQUEST {
                let first = frames.alloc(indirect)?;
                slot.indirect_views = (0..indirect)
                    .map(|i| dom.ram().pages_view(first + i, 1))
                    .collect::<Result<Vec<_>, _>>()?;
                slot.indirect_grefs = grant_run(dom, backend, first, indirect)?;
                slot.indirect_frame = Some(first);
            }
            slots.push(slot);
        }
        let free = (0..slots.len()).rev().collect();
        Ok(SlotPool { slots, free })
    }

    /// How many slots are free (not taken).
    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    /// Takes a free slot's index.
    pub fn take(&mut self) -> Option<usize> {
        self.free.pop()
    }

    /// Returns a slot.
    pub fn give_back(&mut self, index: usize) {
        self.free.push(index);
    }

    /// A slot by index.
    pub fn get(&self, index: usize) -> Option<&Slot> {
        self.slots.get(index)
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when the pool has no slots.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Revokes every grant and frees the frames. While the backend still has any of the pages
    /// mapped (persistent grants), nothing is revoked and the pool comes back for a later try.
    pub fn release(self, dom: &EmuDomain, frames: &mut FrameAlloc) -> Result<(), SlotPool> {
        let grants = || {
            self.slots
                .iter()
                .flat_map(|s| s.grefs.iter().chain(&s.indirect_grefs))
        };
        if grants().any(|g| dom.grant_in_use(*g).unwrap_or(true)) {
            return Err(self);
        }
        for g in grants() {
            if let Err(e) = dom.end_grant(*g) {
                tracing::warn!(error = %e, "cannot revoke a buffer grant");
            }
        }
        for s in &self.slots {
            frames.free(s.first_frame, s.pages);
            if let Some(first) = s.indirect_frame {
                frames.free(first, u32::try_from(s.indirect_grefs.len()).unwrap_or(0));
            }
        }
        Ok(())
    }
}

fn grant_run(
    dom: &EmuDomain,
    backend: DomId,
    first: u32,
    count: u32,
) -> Result<Vec<GrantRef>, Error> {
    (first..first + count)
        .map(|f| dom.grant(backend, f, false).map_err(Error::from))
        .collect()
}
