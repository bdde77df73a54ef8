//! The in-memory metadata of a dynamic or differencing disk: the BAT, cached sector bitmaps,
//! where the next block goes, and their crash-ordered write-back.
//!
//! Allocation (under the image's metadata lock): the new block goes at `next_free` (the end
//! of the last block or of the metadata), moved on (by less than 4 KiB) until its data area
//! starts on a 4 KiB boundary; when it reaches past the footer, the footer is
//! first written at the new end of the file, so the file always ends with a valid footer and
//! guest data is never the file's last sector. Stale bytes inside the new block (space leaked
//! by a crash) are zeroed. The BAT entry and the block's bitmap change in memory only.
//!
//! Write-back (at a guest flush, in the O_DSYNC cache modes after each write, and when the
//! bitmap cache is full): fdatasync (guest data durable) when a bitmap of a block already
//! on disk changed → bitmaps → fdatasync → BAT sectors → fdatasync. A BAT entry thus never
//! reaches the disk before its block's bitmap, and a bitmap bit never before its data.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::error::Error;

use super::dynamic::{DynHeader, UNUSED};
use super::footer::{DiskType, FOOTER_LEN};
use super::metaio::VhdIo;

/// Most sector bitmaps kept in memory before the clean ones are dropped.
const MAX_CACHED_BITMAPS: usize = 4096;

/// Geometry of a dynamic or differencing disk.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// Bytes per block.
    pub block_size: u64,
    /// Bytes of the bitmap in front of each block.
    pub bitmap_len: u64,
    /// File offset of the BAT.
    pub table_offset: u64,
    /// Dynamic or differencing.
    pub disk_type: DiskType,
}

/// The metadata of an open dynamic or differencing disk.
pub struct Meta {
    /// Geometry.
    pub layout: Layout,
    io: Arc<VhdIo>,
    bat: Vec<u32>,
    dirty_bat: BTreeSet<u32>,
    bitmaps: HashMap<u32, Vec<u8>>,
    dirty_bitmaps: BTreeSet<u32>,
    next_free: u64,
    file_end: u64,
    footer: [u8; FOOTER_LEN],
    failed: Option<String>,
    /// Test hook: leave out the fdatasync between bitmaps and BAT (a broken order the crash
    /// tests must catch).
    #[cfg(test)]
    pub broken_order: bool,
}

/// What [`Meta::load`] needs.
pub struct Loaded {
    /// The parsed header.
    pub header: DynHeader,
    /// The BAT entries covering the virtual size.
    pub bat: Vec<u32>,
    /// First byte after every metadata structure.
    pub meta_end: u64,
    /// The file size.
    pub file_end: u64,
    /// The footer's bytes.
    pub footer: [u8; FOOTER_LEN],
    /// Dynamic or differencing.
    pub disk_type: DiskType,
}

impl Meta {
    /// Checks the BAT of `l` (every block after the metadata, inside the file, no two
    /// overlapping) and builds the metadata.
    pub fn load(io: Arc<VhdIo>, l: Loaded) -> Result<Meta, Error> {
        let layout = Layout {
            block_size: u64::from(l.header.block_size),
            bitmap_len: l.header.bitmap_len(),
            table_offset: l.header.table_offset,
            disk_type: l.disk_type,
        };
        let next_free = check_blocks(&l.bat, &layout, l.meta_end, l.file_end)?;
        Ok(Meta {
            layout,
            io,
            bat: l.bat,
            dirty_bat: BTreeSet::new(),
            bitmaps: HashMap::new(),
            dirty_bitmaps: BTreeSet::new(),
            next_free,
            file_end: l.file_end,
            footer: l.footer,
            failed: None,
            #[cfg(test)]
            broken_order: false,
        })
    }

    /// File offset of block `block` (its bitmap), if allocated.
    pub fn block_at(&self, block: u64) -> Option<u64> {
        let entry = *self.bat.get(usize::try_from(block).ok()?)?;
        (entry != UNUSED).then(|| u64::from(entry) * 512)
    }

    /// Refuses changes after a failed write-back.
    pub fn check_usable(&self) -> Result<(), Error> {
        match &self.failed {
            Some(why) => Err(Error::WriteBackFailed(why.clone())),
            None => Ok(()),
        }
    }

    /// The sector bitmap of allocated block `block` (read on first use).
    pub fn bitmap(&mut self, block: u32) -> Result<&[u8], Error> {
        if !self.bitmaps.contains_key(&block) {
            self.make_room()?;
            let at = self.block_at(u64::from(block)).ok_or_else(|| {
                Error::InvalidImage(format!("bitmap of unallocated block {block}"))
            })?;
            let mut bits = vec![0u8; super::us(self.layout.bitmap_len)];
            self.io.read_exact(at, &mut bits, "sector bitmap")?;
            self.bitmaps.insert(block, bits);
        }
        Ok(self.bitmaps.get(&block).map_or(&[][..], Vec::as_slice))
    }

    fn make_room(&mut self) -> Result<(), Error> {
        if self.bitmaps.len() < MAX_CACHED_BITMAPS {
            return Ok(());
        }
        self.write_back()?;
        self.bitmaps.clear();
        Ok(())
    }

    /// Allocates block `block` (see the module doc); returns its file offset.
    pub fn allocate(&mut self, block: u32) -> Result<u64, Error> {
        self.check_usable()?;
        let l = self.layout;
        let at = block_start(self.next_free, &l);
        let end = at + l.bitmap_len + l.block_size;
        let entry = u32::try_from(at / 512)
            .ok()
            .filter(|&e| e != UNUSED)
            .ok_or_else(|| Error::from_errno(libc::ENOSPC))?;
        let old_end = self.file_end;
        if end + FOOTER_LEN as u64 > old_end {
            self.io.write(end, &self.footer, "footer")?;
            self.file_end = end + FOOTER_LEN as u64;
        }
        let data = at + l.bitmap_len;
        if data < old_end {
            self.io.zero(data, end.min(old_end) - data)?;
        }
        // One extent for the whole block up front: the guest's writes into it then fill
        // reserved space instead of allocating file system blocks one write at a time.
        self.io.preallocate(at, end - at)?;
        self.make_room()?;
        let fill = match l.disk_type {
            DiskType::Differencing => 0,
            _ => 0xff,
        };
        self.bitmaps
            .insert(block, vec![fill; super::us(l.bitmap_len)]);
        self.dirty_bitmaps.insert(block);
        if let Some(e) = self.bat.get_mut(block as usize) {
            *e = entry;
        }
        self.dirty_bat.insert(block);
        self.next_free = end;
        Ok(at)
    }

    /// Sets the bitmap bits of `count` sectors from `first` in allocated block `block`.
    pub fn mark_written(&mut self, block: u32, first: u64, count: u64) -> Result<(), Error> {
        let mut changed = false;
        let bits = self.bitmap(block)?;
        let mut bits = bits.to_vec();
        for s in first..first + count {
            let (byte, bit) = (super::us(s / 8), 0x80u8 >> (s % 8));
            if let Some(b) = bits.get_mut(byte).filter(|b| **b & bit == 0) {
                *b |= bit;
                changed = true;
            }
        }
        if changed {
            self.bitmaps.insert(block, bits);
            self.dirty_bitmaps.insert(block);
        }
        Ok(())
    }

    /// True if something waits for write-back.
    pub fn is_dirty(&self) -> bool {
        !self.dirty_bitmaps.is_empty() || !self.dirty_bat.is_empty()
    }

    /// Writes back dirty bitmaps and BAT entries in crash-safe order (module doc). Returns
    /// false if nothing was dirty (no fdatasync done).
    pub fn write_back(&mut self) -> Result<bool, Error> {
        if !self.is_dirty() {
            return Ok(false);
        }
        self.check_usable()?;
        let result = self.write_back_inner();
        if let Err(e) = &result {
            self.failed = Some(e.to_string());
        }
        result.map(|()| true)
    }

    fn write_back_inner(&mut self) -> Result<(), Error> {
        let old_block_changed = self
            .dirty_bitmaps
            .iter()
            .any(|b| !self.dirty_bat.contains(b));
        if old_block_changed {
            self.io.sync()?;
        }
        for &block in &self.dirty_bitmaps {
            if let (Some(at), Some(bits)) =
                (self.block_at(u64::from(block)), self.bitmaps.get(&block))
            {
                self.io.write(at, bits, "sector bitmap")?;
            }
        }
        if !self.skip_sync() {
            self.io.sync()?;
        }
        self.dirty_bitmaps.clear();
        let sectors: BTreeSet<u32> = self.dirty_bat.iter().map(|b| b / 128).collect();
        for s in sectors {
            self.write_bat_sector(s)?;
        }
        self.io.sync()?;
        self.dirty_bat.clear();
        Ok(())
    }

    #[cfg(test)]
    fn skip_sync(&self) -> bool {
        self.broken_order
    }

    #[cfg(not(test))]
    fn skip_sync(&self) -> bool {
        false
    }

    fn write_bat_sector(&self, sector: u32) -> Result<(), Error> {
        let first = sector as usize * 128;
        let last = (first + 128).min(self.bat.len());
        let bytes: Vec<u8> = self.bat[first..last]
            .iter()
            .flat_map(|e| e.to_be_bytes())
            .collect();
        let at = self.layout.table_offset + first as u64 * 4;
        self.io.write(at, &bytes, "BAT")
    }
}

/// Where a block allocated at or after `free` starts: where its data area (after the
/// bitmap) begins on a 4 KiB boundary (or a block-size one, for blocks smaller than 4 KiB).
/// Guest writes of whole pages then cover whole file system blocks: a write that covers
/// part of one, into space not yet written, makes the file system zero the rest of it and
/// serialize the write against every other in flight, which costs allocating writes most of
/// their speed. The sectors skipped (under 4 KiB) are never read.
fn block_start(free: u64, l: &Layout) -> u64 {
    (free + l.bitmap_len).next_multiple_of(data_align(l.block_size)) - l.bitmap_len
}

/// Alignment of a new block's data area in the file, for blocks of `block_size` bytes.
pub fn data_align(block_size: u64) -> u64 {
    block_size.clamp(512, 4096)
}

/// Checks every allocated block lies after `meta_end`, inside the file and apart from the
/// others; returns the end of the last one (or `meta_end`).
fn check_blocks(bat: &[u32], l: &Layout, meta_end: u64, file_end: u64) -> Result<u64, Error> {
    let span = l.bitmap_len + l.block_size;
    let mut starts: Vec<(u64, usize)> = bat
        .iter()
        .enumerate()
        .filter(|(_, e)| **e != UNUSED)
        .map(|(i, e)| (u64::from(*e) * 512, i))
        .collect();
    starts.sort_unstable();
    let mut end = meta_end;
    for (at, i) in starts {
        if at < end {
            return Err(Error::InvalidImage(format!(
                "VHD block {i} at {at:#x} overlaps the metadata or another block (which ends \
                 at {end:#x})"
            )));
        }
        end = at + span;
        if end > file_end {
            return Err(Error::InvalidImage(format!(
                "VHD block {i} at {at:#x} ({span} bytes with its bitmap) runs past the end of \
                 the file ({file_end} bytes)"
            )));
        }
    }
    Ok(end)
}

impl Meta {
    /// Writes guest bytes synchronously (a sector filled from the parent).
    pub fn write_data(&self, host: u64, data: &[u8]) -> Result<(), Error> {
        self.io.write(host, data, "sector filled from the parent")
    }
}
