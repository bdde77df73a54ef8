//! The dynamic disk header (1024 bytes, big-endian) of dynamic and differencing disks: where
//! the BAT is, the block size, and the parent of a differencing disk.

use crate::error::Error;

use super::footer::{be32, be64, checksum};

/// Length of the dynamic header.
pub const HEADER_LEN: usize = 1024;
/// The header's cookie.
pub const COOKIE: &[u8; 8] = b"cxsparse";
/// A BAT entry of a block that is not allocated.
pub const UNUSED: u32 = u32::MAX;
/// Largest block size accepted (the specification's default is 2 MiB).
pub const MAX_BLOCK_SIZE: u32 = 256 << 20;
/// Offset of the checksum field.
const CHECKSUM_AT: usize = 36;
/// Offset of the first of the 8 parent locator entries.
const LOCATORS_AT: usize = 576;

/// One parent locator entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Locator {
    /// Platform code (`W2ku`, `W2ru`, `MacX`, ...).
    pub code: [u8; 4],
    /// Bytes reserved for the data (some writers store sectors: see [`Locator::space_bytes`]).
    pub space: u32,
    /// Length of the data in bytes.
    pub len: u32,
    /// File offset of the data.
    pub offset: u64,
}

impl Locator {
    /// The space the locator's data occupies in the file: the specification says sectors,
    /// Microsoft's and XenServer's tools write bytes; a value below 512 is taken as sectors.
    pub fn space_bytes(&self) -> u64 {
        let space = u64::from(self.space);
        if space < 512 { space * 512 } else { space }
    }
}

/// A parsed dynamic header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DynHeader {
    /// File offset of the BAT.
    pub table_offset: u64,
    /// Entries in the BAT.
    pub max_entries: u32,
    /// Bytes per block.
    pub block_size: u32,
    /// Unique id of the parent (differencing disks).
    pub parent_id: [u8; 16],
    /// The parent's file name (UTF-16BE in the file).
    pub parent_name: String,
    /// Parent locators with a platform code.
    pub locators: Vec<Locator>,
}

impl DynHeader {
    /// Parses and checks a dynamic header.
    pub fn parse(raw: &[u8; HEADER_LEN]) -> Result<DynHeader, Error> {
        let header = DynHeader::parse_unchecked(raw)?;
        let (stored, computed) = checksums(raw);
        if stored != computed {
            return Err(Error::InvalidImage(format!(
                "VHD dynamic header: checksum field is {stored:#010x}, the header's bytes give \
                 {computed:#010x}"
            )));
        }
        Ok(header)
    }

    /// Parses a dynamic header without looking at its checksum (the image checker judges a
    /// wrong checksum apart from the rest); the cookie and block size are still checked.
    pub fn parse_unchecked(raw: &[u8; HEADER_LEN]) -> Result<DynHeader, Error> {
        if &raw[..8] != COOKIE {
            return Err(Error::InvalidImage(
                "VHD dynamic header: no \"cxsparse\" cookie".to_owned(),
            ));
        }
        let block_size = be32(raw, 32);
        if !block_size.is_power_of_two() || !(512..=MAX_BLOCK_SIZE).contains(&block_size) {
            return Err(Error::InvalidImage(format!(
                "VHD block size {block_size} is not a power of two from 512 to {MAX_BLOCK_SIZE}"
            )));
        }
        let mut parent_id = [0u8; 16];
        parent_id.copy_from_slice(&raw[40..56]);
        Ok(DynHeader {
            table_offset: be64(raw, 16),
            max_entries: be32(raw, 28),
            block_size,
            parent_id,
            parent_name: utf16(&raw[64..576], u16::from_be_bytes),
            locators: (0..8).filter_map(|i| locator(raw, i)).collect(),
        })
    }

    /// Bytes of the sector bitmap in front of each block (whole sectors).
    pub fn bitmap_len(&self) -> u64 {
        bitmap_len(self.block_size)
    }
}

/// The checksum field of a dynamic header and the checksum its bytes give.
pub fn checksums(raw: &[u8; HEADER_LEN]) -> (u32, u32) {
    (be32(raw, CHECKSUM_AT), checksum(raw, CHECKSUM_AT))
}

/// `raw` with its checksum field set to what its bytes give.
pub fn with_checksum(raw: &[u8; HEADER_LEN]) -> [u8; HEADER_LEN] {
    let mut b = *raw;
    let sum = checksum(&b, CHECKSUM_AT);
    b[CHECKSUM_AT..CHECKSUM_AT + 4].copy_from_slice(&sum.to_be_bytes());
    b
}

/// Bytes of the sector bitmap in front of a block of `block_size` bytes (whole sectors).
pub fn bitmap_len(block_size: u32) -> u64 {
    (u64::from(block_size) / 512)
        .div_ceil(8)
        .next_multiple_of(512)
}

/// Parent locator slot `i` (0..8) of a header, if it has a platform code.
pub(crate) fn locator(raw: &[u8], i: usize) -> Option<Locator> {
    let at = LOCATORS_AT + i * 24;
    let mut code = [0u8; 4];
    code.copy_from_slice(&raw[at..at + 4]);
    (code != [0; 4]).then(|| Locator {
        code,
        space: be32(raw, at + 4),
        len: be32(raw, at + 8),
        offset: be64(raw, at + 16),
    })
}

/// A NUL-terminated UTF-16 string decoded with `unit` (bytes of invalid sequences replaced).
pub fn utf16(bytes: &[u8], unit: fn([u8; 2]) -> u16) -> String {
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| unit([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

/// The fields of a new dynamic header.
pub struct NewHeader<'a> {
    /// File offset of the BAT.
    pub table_offset: u64,
    /// Entries in the BAT.
    pub max_entries: u32,
    /// Bytes per block.
    pub block_size: u32,
    /// Parent unique id, timestamp and name, for differencing disks.
    pub parent: Option<([u8; 16], u32, &'a str)>,
    /// Parent locators.
    pub locators: &'a [Locator],
}

/// Serialises a dynamic header, checksum included.
pub fn serialize(h: &NewHeader<'_>) -> [u8; HEADER_LEN] {
    let mut b = [0u8; HEADER_LEN];
    b[..8].copy_from_slice(COOKIE);
    b[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
    b[16..24].copy_from_slice(&h.table_offset.to_be_bytes());
    b[24..28].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    b[28..32].copy_from_slice(&h.max_entries.to_be_bytes());
    b[32..36].copy_from_slice(&h.block_size.to_be_bytes());
    if let Some((id, time, name)) = h.parent {
        b[40..56].copy_from_slice(&id);
        b[56..60].copy_from_slice(&time.to_be_bytes());
        let units = name.encode_utf16().take(255).flat_map(u16::to_be_bytes);
        for (i, byte) in units.enumerate() {
            b[64 + i] = byte;
        }
    }
    for (i, l) in h.locators.iter().take(8).enumerate() {
        let at = LOCATORS_AT + i * 24;
        b[at..at + 4].copy_from_slice(&l.code);
        b[at + 4..at + 8].copy_from_slice(&l.space.to_be_bytes());
        b[at + 8..at + 12].copy_from_slice(&l.len.to_be_bytes());
        b[at + 16..at + 24].copy_from_slice(&l.offset.to_be_bytes());
    }
    let sum = checksum(&b, CHECKSUM_AT);
    b[CHECKSUM_AT..CHECKSUM_AT + 4].copy_from_slice(&sum.to_be_bytes());
    b
}

/// Sets the parent fields of a header: unique id, time stamp, name (UTF-16BE, at most 255
/// units, the rest zeroed). The checksum is left to [`with_checksum`].
pub(crate) fn set_parent(raw: &mut [u8; HEADER_LEN], id: &[u8; 16], time: u32, name: &str) {
    raw[40..56].copy_from_slice(id);
    raw[56..60].copy_from_slice(&time.to_be_bytes());
    raw[64..LOCATORS_AT].fill(0);
    let units = name.encode_utf16().take(255).flat_map(u16::to_be_bytes);
    for (i, byte) in units.enumerate() {
        raw[64 + i] = byte;
    }
}

/// Sets parent locator slot `i` (0..8) of a header (`None`: cleared). The checksum is left
/// to [`with_checksum`].
pub(crate) fn set_locator(raw: &mut [u8; HEADER_LEN], i: usize, l: Option<&Locator>) {
    let at = LOCATORS_AT + i * 24;
    raw[at..at + 24].fill(0);
    if let Some(l) = l {
        raw[at..at + 4].copy_from_slice(&l.code);
        raw[at + 4..at + 8].copy_from_slice(&l.space.to_be_bytes());
        raw[at + 8..at + 12].copy_from_slice(&l.len.to_be_bytes());
        raw[at + 16..at + 24].copy_from_slice(&l.offset.to_be_bytes());
    }
}
