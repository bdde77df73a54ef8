//! The hard disk footer (512 bytes, big-endian): at the end of every VHD file, and copied to
//! offset 0 of dynamic and differencing disks.

use crate::error::Error;

/// Length of the footer.
pub const FOOTER_LEN: usize = 512;
/// The footer's cookie.
pub const COOKIE: &[u8; 8] = b"conectix";
/// `data_offset` of a fixed disk (no dynamic header).
pub const NO_DATA_OFFSET: u64 = u64::MAX;
/// Offset of the checksum field.
const CHECKSUM_AT: usize = 64;
/// The largest CHS geometry: disks that have it take their size from `current_size`.
const MAX_CHS: (u16, u8, u8) = (65535, 16, 255);

/// What kind of disk a footer describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskType {
    /// Guest bytes as they are, followed by the footer.
    Fixed,
    /// Blocks allocated on first write, through the BAT.
    Dynamic,
    /// A dynamic disk whose unwritten sectors come from a parent.
    Differencing,
}

impl DiskType {
    /// The on-disk code.
    pub fn code(self) -> u32 {
        match self {
            DiskType::Fixed => 2,
            DiskType::Dynamic => 3,
            DiskType::Differencing => 4,
        }
    }

    fn from_code(code: u32) -> Result<DiskType, Error> {
        match code {
            2 => Ok(DiskType::Fixed),
            3 => Ok(DiskType::Dynamic),
            4 => Ok(DiskType::Differencing),
            other => Err(Error::InvalidImage(format!(
                "VHD footer disk type {other} is not fixed (2), dynamic (3) or differencing (4)"
            ))),
        }
    }
}

/// A parsed footer, with the bytes it came from (written back unchanged when it moves).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Footer {
    /// Where the dynamic header is (`NO_DATA_OFFSET` for fixed disks).
    pub data_offset: u64,
    /// The creator application (`"tap\0"`, `"qemu"`, `"vpc "`, ...).
    pub creator_app: [u8; 4],
    /// The size the footer states, in bytes.
    pub current_size: u64,
    /// Cylinders, heads, sectors per track.
    pub chs: (u16, u8, u8),
    /// The disk type.
    pub disk_type: DiskType,
    /// The disk's unique id (a differencing child names its parent's).
    pub unique_id: [u8; 16],
    /// The 512 bytes, checksum included.
    pub raw: [u8; FOOTER_LEN],
}

/// One's complement of the byte sum of `bytes`, skipping the 4 bytes at `skip`.
pub fn checksum(bytes: &[u8], skip: usize) -> u32 {
    let sum = bytes
        .iter()
        .enumerate()
        .filter(|(i, _)| !(skip..skip + 4).contains(i))
        .fold(0u32, |s, (_, &b)| s.wrapping_add(u32::from(b)));
    !sum
}

pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(x)
}

pub(crate) fn be64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

impl Footer {
    /// Parses and checks a footer (`what` names where it was read, for errors).
    pub fn parse(raw: &[u8; FOOTER_LEN], what: &str) -> Result<Footer, Error> {
        if &raw[..8] != COOKIE {
            return Err(Error::InvalidImage(format!(
                "VHD footer {what}: no \"conectix\" cookie"
            )));
        }
        let stored = be32(raw, CHECKSUM_AT);
        let computed = checksum(raw, CHECKSUM_AT);
        if stored != computed {
            return Err(Error::InvalidImage(format!(
                "VHD footer {what}: checksum field is {stored:#010x}, the footer's bytes give \
                 {computed:#010x}"
            )));
        }
        let version = be32(raw, 12);
        if version >> 16 != 1 {
            return Err(Error::UnsupportedFeature(format!(
                "VHD file format version {version:#010x} (only 1.x is defined)"
            )));
        }
        let mut creator_app = [0u8; 4];
        creator_app.copy_from_slice(&raw[28..32]);
        let mut unique_id = [0u8; 16];
        unique_id.copy_from_slice(&raw[68..84]);
        let cyl = u16::from_be_bytes([raw[56], raw[57]]);
        Ok(Footer {
            data_offset: be64(raw, 16),
            creator_app,
            current_size: be64(raw, 48),
            chs: (cyl, raw[58], raw[59]),
            disk_type: DiskType::from_code(be32(raw, 60))?,
            unique_id,
            raw: *raw,
        })
    }

    /// The virtual size in bytes as qemu computes it: from the CHS geometry for images made
    /// by Virtual PC (`"vpc "`) and old qemu (`"qemu"`) unless the geometry is the largest
    /// one, else from `current_size` (Hyper-V, XenServer's `"tap\0"`, qemu's `"qem2"`, ...).
    pub fn virtual_size(&self) -> u64 {
        let uses_chs = matches!(&self.creator_app, b"vpc " | b"qemu") && self.chs != MAX_CHS;
        if !uses_chs {
            return self.current_size;
        }
        let (c, h, s) = self.chs;
        u64::from(c) * u64::from(h) * u64::from(s) * 512
    }
}

/// The fields a new footer is made of.
pub struct NewFooter {
    /// The disk type.
    pub disk_type: DiskType,
    /// The virtual size in bytes.
    pub size: u64,
    /// The unique id.
    pub unique_id: [u8; 16],
    /// Seconds since 2000-01-01 00:00 UTC.
    pub timestamp: u32,
}

/// Serialises a footer as XenServer's tools do (creator `"tap\0"`, so every reader takes the
/// size from `current_size`), checksum included.
pub fn serialize(f: &NewFooter) -> [u8; FOOTER_LEN] {
    let mut b = [0u8; FOOTER_LEN];
    b[..8].copy_from_slice(COOKIE);
    b[8..12].copy_from_slice(&2u32.to_be_bytes());
    b[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    let data_offset = match f.disk_type {
        DiskType::Fixed => NO_DATA_OFFSET,
        _ => FOOTER_LEN as u64,
    };
    b[16..24].copy_from_slice(&data_offset.to_be_bytes());
    b[24..28].copy_from_slice(&f.timestamp.to_be_bytes());
    b[28..32].copy_from_slice(b"tap\0");
    b[32..36].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    b[40..48].copy_from_slice(&f.size.to_be_bytes());
    b[48..56].copy_from_slice(&f.size.to_be_bytes());
    let (c, h, s) = chs_of(f.size / 512);
    b[56..58].copy_from_slice(&c.to_be_bytes());
    b[58] = h;
    b[59] = s;
    b[60..64].copy_from_slice(&f.disk_type.code().to_be_bytes());
    b[68..84].copy_from_slice(&f.unique_id);
    let sum = checksum(&b, CHECKSUM_AT);
    b[CHECKSUM_AT..CHECKSUM_AT + 4].copy_from_slice(&sum.to_be_bytes());
    b
}

/// The CHS geometry of the VHD specification's appendix for `sectors` sectors.
pub fn chs_of(sectors: u64) -> (u16, u8, u8) {
    let total = sectors.min(65535 * 16 * 255);
    let (spt, heads, cyl_heads) = if total >= 65535 * 16 * 63 {
        (255u64, 16u64, total / 255)
    } else {
        let mut spt = 17u64;
        let mut cyl_heads = total / spt;
        let mut heads = cyl_heads.div_ceil(1024).max(4);
        if cyl_heads >= heads * 1024 || heads > 16 {
            spt = 31;
            heads = 16;
            cyl_heads = total / spt;
        }
        if cyl_heads >= heads * 1024 {
            spt = 63;
            heads = 16;
            cyl_heads = total / spt;
        }
        (spt, heads, cyl_heads)
    };
    let cyl = u16::try_from(cyl_heads / heads).unwrap_or(u16::MAX);
    let small = |x: u64| u8::try_from(x).unwrap_or(u8::MAX);
    (cyl, small(heads), small(spt))
}
