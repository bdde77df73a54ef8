//! One sparse extent's grain directory and grain tables (and their redundant copies).
//!
//! The directories are read at open and checked: every grain table lies inside the file and
//! overlaps neither the header, the embedded descriptor, a directory nor another table (two
//! directory entries sharing a table, the VMDK form of a table cycle, are refused). Grain
//! tables are read on first use and kept in a cache of bounded size. A grain table entry is
//! checked when it is used: it must not point into metadata or past the end of the file.
//!
//! A write into a grain whose directory entry is 0 allocates the grain table (and its
//! redundant copy): zeroed tables are written past the end of the file at once and stay
//! *pending* (known here, not yet in the directory) until the first grain allocated in them
//! commits; then the table entries and, after them, the directory entries are written. Later
//! grains of the same table join the pending table. See `DESIGN.md` for the crash order.

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::Error;

use super::header::{SECTOR, SparseHeader, flags};
use super::metaio::{MetaIo, MetaKind};

/// Most grain directory entries accepted (16 MiB of directory).
pub const MAX_GD_ENTRIES: u64 = 4 << 20;
/// Most grain tables kept in memory per extent.
const CACHE_TABLES: usize = 4096;
/// The grain table entry of a zeroed grain (with [`flags::ZERO_GRAIN`]).
const GTE_ZERO: u32 = 1;

/// Where one grain's data is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Grain {
    /// Not in this extent: the parent's data, or zeros.
    Unallocated,
    /// Reads as zeros.
    Zero,
    /// Plain data at this byte offset of the extent file.
    Data(u64),
    /// A compressed grain whose marker starts at this byte offset.
    Compressed(u64),
}

/// The metadata of one sparse extent.
pub(crate) struct Sparse {
    /// The header (the footer's copy for streamOptimized).
    pub header: SparseHeader,
    /// Synchronous I/O on the extent file.
    pub io: Arc<dyn MetaIo>,
    gd: Vec<u32>,
    rgd: Option<Vec<u32>>,
    tables: HashMap<usize, Vec<u32>>,
    /// Sorted, non-overlapping byte ranges holding metadata.
    meta: Vec<(u64, u64)>,
    /// The file's end: new grains and tables go here.
    pub end: u64,
    /// Tables allocated but not yet in the directory, by directory index.
    pending: HashMap<usize, NewTable>,
    /// Unused sectors left before a grain boundary when a grain followed a new table: the
    /// next new tables go there first.
    gap: (u64, u64),
}

/// A grain table allocated at the end of the file whose directory entry is not written yet.
struct NewTable {
    /// Byte offset of the table.
    primary: u64,
    /// Byte offset of its redundant copy (with a redundant directory).
    backup: Option<u64>,
    /// Its entries as written so far.
    entries: Vec<u32>,
}

fn bad(why: String) -> Error {
    Error::InvalidImage(format!("VMDK sparse extent: {why}"))
}

impl Sparse {
    /// Reads and checks the directories of the extent with `header`.
    pub fn open(io: Arc<dyn MetaIo>, header: SparseHeader, head: u64) -> Result<Sparse, Error> {
        let file_size = io.size()?;
        let n = header.gd_entries();
        if n > MAX_GD_ENTRIES {
            return Err(bad(format!(
                "a grain directory of {n} entries (at most {MAX_GD_ENTRIES})"
            )));
        }
        let mut s = Sparse {
            header,
            io,
            gd: Vec::new(),
            rgd: None,
            tables: HashMap::new(),
            meta: Vec::new(),
            end: file_size,
            pending: HashMap::new(),
            gap: (0, 0),
        };
        s.add_meta(0, head)?;
        if header.descriptor_offset != 0 {
            s.add_meta(
                header.descriptor_offset.saturating_mul(SECTOR),
                header.descriptor_sectors * SECTOR,
            )?;
        }
        s.gd = s.load_dir(header.gd_offset, n, file_size, "grain directory")?;
        if header.flags & flags::REDUNDANT_GT != 0 && header.rgd_offset != 0 {
            let rgd = s.load_dir(header.rgd_offset, n, file_size, "redundant grain directory")?;
            s.rgd = Some(rgd);
        }
        s.check_tables(file_size)?;
        Ok(s)
    }

    fn table_bytes(&self) -> u64 {
        u64::from(self.header.gtes_per_gt) * 4
    }

    /// Records a metadata range (kept sorted; overlaps are kept and found by `check_tables`).
    fn add_meta(&mut self, start: u64, len: u64) -> Result<(), Error> {
        let end = start
            .checked_add(len)
            .ok_or_else(|| bad(format!("metadata at {start:#x} overflows")))?;
        self.meta.push((start, end));
        Ok(())
    }

    fn load_dir(&mut self, sector: u64, n: u64, size: u64, what: &str) -> Result<Vec<u32>, Error> {
        let at = sector
            .checked_mul(SECTOR)
            .filter(|&at| at >= SECTOR)
            .ok_or_else(|| bad(format!("{what} at sector {sector}")))?;
        let len = n * 4;
        if at.checked_add(len).is_none_or(|end| end > size) {
            return Err(bad(format!(
                "{what} at {at:#x} ({n} entries) runs past the end of the file ({size} bytes)"
            )));
        }
        let mut raw = vec![0u8; usize::try_from(len).map_err(|_| bad(format!("{what} size")))?];
        self.io.read_exact(MetaKind::Directory, at, &mut raw)?;
        self.add_meta(at, len)?;
        Ok(le_words(&raw))
    }

    fn check_tables(&mut self, size: u64) -> Result<(), Error> {
        let tb = self.table_bytes();
        let entries: Vec<u32> = self
            .gd
            .iter()
            .chain(self.rgd.iter().flatten())
            .copied()
            .filter(|&e| e != 0)
            .collect();
        for e in entries {
            let at = u64::from(e) * SECTOR;
            if at.checked_add(tb).is_none_or(|end| end > size) {
                return Err(bad(format!(
                    "grain table at {at:#x} runs past the end of the file ({size} bytes)"
                )));
            }
            self.add_meta(at, tb)?;
        }
        self.meta.sort_unstable();
        for pair in self.meta.windows(2) {
            if pair[1].0 < pair[0].1 {
                return Err(bad(format!(
                    "metadata at {:#x} overlaps metadata at {:#x} (a shared grain table, or a \
                     table inside a directory or the header)",
                    pair[1].0, pair[0].0
                )));
            }
        }
        Ok(())
    }

    /// Inserts a metadata range in order (ranges reserved at the end never overlap).
    fn insert_meta(&mut self, start: u64, len: u64) {
        let i = self.meta.partition_point(|&(s, _)| s < start);
        self.meta.insert(i, (start, start + len));
    }

    fn overlaps_meta(&self, start: u64, end: u64) -> bool {
        let i = self.meta.partition_point(|&(_, e)| e <= start);
        self.meta.get(i).is_some_and(|&(s, _)| s < end)
    }

    /// The grain table of directory entry `gdi` (`None`: not allocated).
    fn table(&mut self, gdi: usize) -> Result<Option<&Vec<u32>>, Error> {
        let Some(&sector) = self.gd.get(gdi) else {
            return Err(bad(format!("grain directory index {gdi} out of range")));
        };
        if sector == 0 {
            return Ok(None);
        }
        if !self.tables.contains_key(&gdi) {
            if self.tables.len() >= CACHE_TABLES {
                self.tables.clear();
            }
            let mut raw = vec![0u8; usize::try_from(self.table_bytes()).unwrap_or(0)];
            let at = u64::from(sector) * SECTOR;
            self.io.read_exact(MetaKind::Table, at, &mut raw)?;
            self.tables.insert(gdi, le_words(&raw));
        }
        Ok(self.tables.get(&gdi))
    }

    fn split(&self, grain: u64) -> (usize, usize) {
        let per = u64::from(self.header.gtes_per_gt);
        let gdi = usize::try_from(grain / per).unwrap_or(usize::MAX);
        (gdi, usize::try_from(grain % per).unwrap_or(usize::MAX))
    }

    /// Where grain number `grain` of this extent is.
    pub fn lookup(&mut self, grain: u64) -> Result<Grain, Error> {
        let (gdi, gti) = self.split(grain);
        let zero_flag = self.header.flags & flags::ZERO_GRAIN != 0;
        let Some(table) = self.table(gdi)? else {
            return Ok(Grain::Unallocated);
        };
        let entry = table.get(gti).copied().unwrap_or(0);
        match entry {
            0 => Ok(Grain::Unallocated),
            GTE_ZERO if zero_flag => Ok(Grain::Zero),
            e => self.check_grain(grain, u64::from(e) * SECTOR),
        }
    }

    fn check_grain(&self, grain: u64, at: u64) -> Result<Grain, Error> {
        let len = match self.header.compressed() {
            true => 12,
            false => self.header.grain_bytes(),
        };
        let end = at.saturating_add(len);
        if self.overlaps_meta(at, end) {
            return Err(bad(format!(
                "grain {grain} at {at:#x} points into metadata"
            )));
        }
        if end > self.end {
            return Err(bad(format!(
                "grain {grain} at {at:#x} lies past the end of the file ({} bytes)",
                self.end
            )));
        }
        Ok(match self.header.compressed() {
            true => Grain::Compressed(at),
            false => Grain::Data(at),
        })
    }

    /// Makes sure grain `grain` has a grain table to record an allocation in: an existing one,
    /// a pending one, or a new zeroed table (and redundant copy) written past the end of the
    /// file, pending until [`install`](Self::install) puts it in the directory.
    pub fn ensure_table(&mut self, grain: u64) -> Result<(), Error> {
        let (gdi, _) = self.split(grain);
        if self.table(gdi)?.is_some() || self.pending.contains_key(&gdi) {
            return Ok(());
        }
        let primary = self.new_table()?;
        let backup = match self.rgd {
            Some(_) => Some(self.new_table()?),
            None => None,
        };
        let n = usize::try_from(self.header.gtes_per_gt).unwrap_or(0);
        tracing::trace!(gdi, primary, ?backup, "vmdk grain table allocated");
        self.pending.insert(
            gdi,
            NewTable {
                primary,
                backup,
                entries: vec![0; n],
            },
        );
        Ok(())
    }

    /// Reserves room for one table and writes it zeroed; its byte offset.
    fn new_table(&mut self) -> Result<u64, Error> {
        let len = self.table_bytes().div_ceil(SECTOR) * SECTOR;
        let at = if self.gap.1 - self.gap.0 >= len {
            self.gap.0 += len;
            self.gap.0 - len
        } else {
            let at = self.end.div_ceil(SECTOR) * SECTOR;
            self.end = at
                .checked_add(len)
                .ok_or_else(|| Error::from_errno(libc::EFBIG))?;
            at
        };
        sector_of(at)?;
        let zeros = vec![0u8; usize::try_from(len).unwrap_or(0)];
        self.io.write(MetaKind::Table, at, &zeros)?;
        self.insert_meta(at, len);
        Ok(at)
    }

    /// Reserves a new grain at the end of the file (aligned to the grain size); its byte offset.
    pub fn reserve(&mut self) -> Result<u64, Error> {
        let gb = self.header.grain_bytes();
        let at = self.end.div_ceil(gb) * gb;
        if at / SECTOR > u64::from(u32::MAX - 1) {
            return Err(Error::from_errno(libc::EFBIG));
        }
        if at > self.end {
            self.gap = (self.end.div_ceil(SECTOR) * SECTOR, at);
        }
        self.end = at + gb;
        Ok(at)
    }

    /// Points grain `grain` at byte `host` in its grain table, then in the redundant copy.
    pub fn set(&mut self, grain: u64, host: u64) -> Result<(), Error> {
        let (gdi, gti) = self.split(grain);
        let sector = sector_of(host)?;
        let (primary, backup) = self.table_sites(gdi);
        if primary == 0 {
            return Err(bad(format!("grain {grain} has no grain table")));
        }
        let off = gti as u64 * 4;
        let bytes = sector.to_le_bytes();
        self.io.write(MetaKind::Table, primary + off, &bytes)?;
        if backup != 0 {
            self.io.write(MetaKind::Table, backup + off, &bytes)?;
        }
        let cached = match self.pending.get_mut(&gdi) {
            Some(t) => t.entries.get_mut(gti),
            None => self.tables.get_mut(&gdi).and_then(|t| t.get_mut(gti)),
        };
        if let Some(t) = cached {
            *t = sector;
        }
        Ok(())
    }

    /// Byte offsets of the table of directory entry `gdi` and of its copy (0: none).
    fn table_sites(&self, gdi: usize) -> (u64, u64) {
        if let Some(t) = self.pending.get(&gdi) {
            return (t.primary, t.backup.unwrap_or(0));
        }
        let primary = self.gd.get(gdi).copied().unwrap_or(0);
        let backup = self.rgd.as_ref().and_then(|r| r.get(gdi)).copied();
        (
            u64::from(primary) * SECTOR,
            u64::from(backup.unwrap_or(0)) * SECTOR,
        )
    }

    /// Writes the directory entries (primary, then redundant) of every pending table that
    /// holds a committed grain, and moves those tables into the directory. Call it after the
    /// table entries are written.
    pub fn install(&mut self) -> Result<(), Error> {
        let ready: Vec<usize> = self
            .pending
            .iter()
            .filter(|(_, t)| t.entries.iter().any(|&e| e != 0))
            .map(|(&gdi, _)| gdi)
            .collect();
        for gdi in ready {
            let Some(t) = self.pending.get(&gdi) else {
                continue;
            };
            let (primary, backup) = (sector_of(t.primary)?, t.backup.map(sector_of).transpose()?);
            let at = self.header.gd_offset * SECTOR + gdi as u64 * 4;
            self.io
                .write(MetaKind::Directory, at, &primary.to_le_bytes())?;
            if let Some(b) = backup {
                let at = self.header.rgd_offset * SECTOR + gdi as u64 * 4;
                self.io.write(MetaKind::Directory, at, &b.to_le_bytes())?;
            }
            self.settle(gdi, primary, backup);
        }
        Ok(())
    }

    /// Records in memory that pending table `gdi` is in the directory.
    fn settle(&mut self, gdi: usize, primary: u32, backup: Option<u32>) {
        let Some(t) = self.pending.remove(&gdi) else {
            return;
        };
        if let Some(e) = self.gd.get_mut(gdi) {
            *e = primary;
        }
        if let (Some(rgd), Some(b)) = (self.rgd.as_mut(), backup) {
            if let Some(e) = rgd.get_mut(gdi) {
                *e = b;
            }
        }
        if self.tables.len() >= CACHE_TABLES {
            self.tables.clear();
        }
        self.tables.insert(gdi, t.entries);
    }
}

/// The sector number of byte offset `at`, as a 32-bit table or directory entry.
fn sector_of(at: u64) -> Result<u32, Error> {
    u32::try_from(at / SECTOR)
        .ok()
        .filter(|&s| s < u32::MAX)
        .ok_or_else(|| Error::from_errno(libc::EFBIG))
}

/// Little-endian u32 words of `raw`.
pub(crate) fn le_words(raw: &[u8]) -> Vec<u32> {
    raw.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}
