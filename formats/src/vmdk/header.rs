//! The hosted sparse extent header (`KDMV`, 512 bytes, little-endian), as VMware's "Virtual
//! Disk Format 5.0" lays it out.

use crate::error::Error;

/// The magic at offset 0 of a sparse extent.
pub const MAGIC: [u8; 4] = *b"KDMV";
/// Bytes of a sector, the unit of every offset in a sparse extent.
pub const SECTOR: u64 = 512;
/// `gdOffset` of a streamOptimized extent whose real header is the footer at the end.
pub const GD_AT_END: u64 = u64::MAX;

/// Header flag bits.
pub mod flags {
    /// The newline-detection characters are valid.
    pub const NEWLINE_TEST: u32 = 1;
    /// A redundant grain directory and tables are kept (`rgdOffset`).
    pub const REDUNDANT_GT: u32 = 1 << 1;
    /// A grain table entry of 1 means a zeroed grain.
    pub const ZERO_GRAIN: u32 = 1 << 2;
    /// Grains are deflate-compressed.
    pub const COMPRESSED: u32 = 1 << 16;
    /// Grains and metadata are preceded by markers (streamOptimized).
    pub const MARKERS: u32 = 1 << 17;
}

/// Compression algorithm: none.
pub const COMPRESS_NONE: u16 = 0;
/// Compression algorithm: deflate (zlib stream).
pub const COMPRESS_DEFLATE: u16 = 1;

/// Largest grain accepted, in sectors (1 MiB; VMware uses 128 = 64 KiB).
pub const MAX_GRAIN_SECTORS: u64 = 2048;
/// Largest number of entries in one grain table accepted.
pub const MAX_GTES: u32 = 64 << 10;

/// A parsed sparse extent header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SparseHeader {
    /// Format version (1, 2 or 3).
    pub version: u32,
    /// Flag bits ([`flags`]).
    pub flags: u32,
    /// Extent size in sectors.
    pub capacity: u64,
    /// Grain size in sectors.
    pub grain_sectors: u64,
    /// Embedded descriptor start, in sectors (0: none).
    pub descriptor_offset: u64,
    /// Embedded descriptor length, in sectors.
    pub descriptor_sectors: u64,
    /// Entries per grain table.
    pub gtes_per_gt: u32,
    /// Redundant grain directory, in sectors.
    pub rgd_offset: u64,
    /// Grain directory, in sectors ([`GD_AT_END`]: see the footer).
    pub gd_offset: u64,
    /// Sectors of metadata before the first grain.
    pub overhead: u64,
    /// Set while the extent is open for writing.
    pub unclean_shutdown: bool,
    /// Compression algorithm.
    pub compress: u16,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn bad(why: String) -> Error {
    Error::InvalidImage(format!("VMDK sparse extent header: {why}"))
}

impl SparseHeader {
    /// Parses and checks the first 512 bytes of a sparse extent.
    pub fn parse(b: &[u8]) -> Result<SparseHeader, Error> {
        if b.len() < 512 {
            return Err(bad(format!("{} bytes, 512 needed", b.len())));
        }
        if b[..4] != MAGIC {
            return Err(bad(format!("bad magic {:02x?} (KDMV expected)", &b[..4])));
        }
        let h = SparseHeader {
            version: u32_at(b, 4),
            flags: u32_at(b, 8),
            capacity: u64_at(b, 12),
            grain_sectors: u64_at(b, 20),
            descriptor_offset: u64_at(b, 28),
            descriptor_sectors: u64_at(b, 36),
            gtes_per_gt: u32_at(b, 44),
            rgd_offset: u64_at(b, 48),
            gd_offset: u64_at(b, 56),
            overhead: u64_at(b, 64),
            unclean_shutdown: b[72] != 0,
            compress: u16::from_le_bytes([b[77], b[78]]),
        };
        h.check()?;
        Ok(h)
    }

    fn check(&self) -> Result<(), Error> {
        if !(1..=3).contains(&self.version) {
            return Err(Error::UnsupportedFeature(format!(
                "VMDK sparse extent version {} (1, 2 and 3 are supported)",
                self.version
            )));
        }
        let g = self.grain_sectors;
        if !(8..=MAX_GRAIN_SECTORS).contains(&g) || !g.is_power_of_two() {
            return Err(bad(format!(
                "grain of {g} sectors (a power of two in 8..={MAX_GRAIN_SECTORS})"
            )));
        }
        if self.gtes_per_gt == 0 || self.gtes_per_gt > MAX_GTES {
            return Err(bad(format!(
                "{} entries per grain table (1..={MAX_GTES})",
                self.gtes_per_gt
            )));
        }
        if self.descriptor_sectors > (super::descriptor::MAX_DESCRIPTOR as u64) / SECTOR {
            return Err(bad(format!(
                "embedded descriptor of {} sectors is too large",
                self.descriptor_sectors
            )));
        }
        if self.flags & flags::COMPRESSED != 0 && self.compress != COMPRESS_DEFLATE {
            return Err(Error::UnsupportedFeature(format!(
                "VMDK compression algorithm {}",
                self.compress
            )));
        }
        if self.flags & flags::COMPRESSED != 0 && self.flags & flags::MARKERS == 0 {
            return Err(Error::UnsupportedFeature(
                "VMDK compressed grains without markers".to_owned(),
            ));
        }
        self.capacity
            .checked_mul(SECTOR)
            .ok_or_else(|| bad(format!("capacity of {} sectors overflows", self.capacity)))?;
        Ok(())
    }

    /// Bytes per grain.
    pub fn grain_bytes(&self) -> u64 {
        self.grain_sectors * SECTOR
    }

    /// Guest bytes one grain table covers.
    pub fn gt_coverage(&self) -> u64 {
        self.grain_bytes() * u64::from(self.gtes_per_gt)
    }

    /// Entries in the grain directory.
    pub fn gd_entries(&self) -> u64 {
        let grains = self.capacity.div_ceil(self.grain_sectors);
        grains.div_ceil(u64::from(self.gtes_per_gt))
    }

    /// True if grains are compressed (streamOptimized).
    pub fn compressed(&self) -> bool {
        self.flags & flags::COMPRESSED != 0
    }

    /// The header as 512 bytes.
    pub fn to_bytes(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[..4].copy_from_slice(&MAGIC);
        b[4..8].copy_from_slice(&self.version.to_le_bytes());
        b[8..12].copy_from_slice(&self.flags.to_le_bytes());
        b[12..20].copy_from_slice(&self.capacity.to_le_bytes());
        b[20..28].copy_from_slice(&self.grain_sectors.to_le_bytes());
        b[28..36].copy_from_slice(&self.descriptor_offset.to_le_bytes());
        b[36..44].copy_from_slice(&self.descriptor_sectors.to_le_bytes());
        b[44..48].copy_from_slice(&self.gtes_per_gt.to_le_bytes());
        b[48..56].copy_from_slice(&self.rgd_offset.to_le_bytes());
        b[56..64].copy_from_slice(&self.gd_offset.to_le_bytes());
        b[64..72].copy_from_slice(&self.overhead.to_le_bytes());
        b[72] = u8::from(self.unclean_shutdown);
        b[73..77].copy_from_slice(b"\n \r\n");
        b[77..79].copy_from_slice(&self.compress.to_le_bytes());
        b
    }
}
