//! One sparse extent's grain directory and grain tables (and their redundant copies).
//!
//! The directories are read at open and checked: every grain table lies inside the file and
//! overlaps neither the header, the embedded descriptor, a directory nor another table (two
//! directory entries sharing a table, the VMDK form of a table cycle, are refused). Grain
//! tables are read on first use and kept in a cache of bounded size. A grain table entry is
//! checked when it is used: it must not point into metadata or past the end of the file.

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
    /// The file's end: new grains go here.
    pub end: u64,
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

    /// Whether grain `grain` has a grain table to record an allocation in.
    pub fn can_allocate(&mut self, grain: u64) -> Result<bool, Error> {
        let (gdi, _) = self.split(grain);
        Ok(self.table(gdi)?.is_some())
    }

    /// Reserves a new grain at the end of the file; its byte offset.
    pub fn reserve(&mut self) -> Result<u64, Error> {
        let gb = self.header.grain_bytes();
        let at = self.end.div_ceil(gb) * gb;
        if at / SECTOR > u64::from(u32::MAX - 1) {
            return Err(Error::from_errno(libc::EFBIG));
        }
        self.end = at + gb;
        Ok(at)
    }

    /// Points grain `grain` at byte `host` in the grain table, then in its redundant copy.
    pub fn set(&mut self, grain: u64, host: u64) -> Result<(), Error> {
        let (gdi, gti) = self.split(grain);
        let sector = u32::try_from(host / SECTOR).map_err(|_| Error::from_errno(libc::EFBIG))?;
        let bytes = sector.to_le_bytes();
        let off = gti as u64 * 4;
        let primary = self.gd.get(gdi).copied().unwrap_or(0);
        if primary == 0 {
            return Err(bad(format!("grain {grain} has no grain table")));
        }
        self.io
            .write(MetaKind::Table, u64::from(primary) * SECTOR + off, &bytes)?;
        let backup = self
            .rgd
            .as_ref()
            .and_then(|r| r.get(gdi))
            .copied()
            .unwrap_or(0);
        if backup != 0 {
            self.io
                .write(MetaKind::Table, u64::from(backup) * SECTOR + off, &bytes)?;
        }
        if let Some(t) = self.tables.get_mut(&gdi).and_then(|t| t.get_mut(gti)) {
            *t = sector;
        }
        Ok(())
    }
}

/// Little-endian u32 words of `raw`.
pub(crate) fn le_words(raw: &[u8]) -> Vec<u32> {
    raw.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}
