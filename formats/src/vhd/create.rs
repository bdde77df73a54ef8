//! Creating VHD images: fixed, dynamic, and differencing disks over a VHD parent.

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::Error;

use super::dynamic::{self, Locator, NewHeader, UNUSED};
use super::footer::{self, DiskType, FOOTER_LEN, NewFooter};

/// Seconds between 1970-01-01 and 2000-01-01, the VHD epoch.
const VHD_EPOCH: u64 = 946_684_800;
/// Where the BAT of a new dynamic disk goes (after the footer copy and the header).
const TABLE_OFFSET: u64 = 1536;
/// Largest virtual size (qemu's limit: 2040 GiB).
pub const MAX_SIZE: u64 = 2040 << 30;

/// The kind of disk `create` makes, named like `qemu-img create -o subformat=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum VhdSubformat {
    /// Blocks allocated on first write.
    #[default]
    Dynamic,
    /// Every byte allocated up front.
    Fixed,
}

/// How to create a VHD image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VhdCreateOptions {
    /// Fixed or dynamic (ignored with a parent: differencing disks are dynamic).
    pub subformat: VhdSubformat,
    /// Block size of dynamic disks: a power of two from 512 bytes to 256 MiB.
    pub block_size: u32,
    /// The parent, as it is to be stored (relative names are relative to the new image's
    /// folder): makes a differencing disk.
    pub parent: Option<PathBuf>,
}

impl Default for VhdCreateOptions {
    fn default() -> Self {
        VhdCreateOptions {
            subformat: VhdSubformat::Dynamic,
            block_size: 2 << 20,
            parent: None,
        }
    }
}

fn now() -> u32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    u32::try_from(secs.saturating_sub(VHD_EPOCH)).unwrap_or(u32::MAX)
}

fn unique_id() -> Result<[u8; 16], Error> {
    let mut id = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut id)?;
    Ok(id)
}

/// Creates a VHD image of `size` bytes at `path` (which must not exist). With a parent, a
/// `size` of 0 takes the parent's size.
pub fn create(path: &Path, size: u64, opts: &VhdCreateOptions) -> Result<(), Error> {
    let parent = match &opts.parent {
        Some(name) => Some(ParentInfo::read(path, name)?),
        None => None,
    };
    let size = match (&parent, size) {
        (Some(p), 0) => p.size,
        _ => size,
    };
    if size % 512 != 0 || size == 0 || size > MAX_SIZE {
        return Err(Error::InvalidArgument(format!(
            "VHD size {size} is not a whole number of 512-byte sectors from 512 to {MAX_SIZE}"
        )));
    }
    let bs = opts.block_size;
    if !bs.is_power_of_two() || !(512..=dynamic::MAX_BLOCK_SIZE).contains(&bs) {
        return Err(Error::InvalidArgument(format!(
            "VHD block size {bs} is not a power of two from 512 to {}",
            dynamic::MAX_BLOCK_SIZE
        )));
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|source| Error::Open {
            path: path.to_owned(),
            source,
        })?;
    let disk_type = match (&parent, opts.subformat) {
        (Some(_), _) => DiskType::Differencing,
        (None, VhdSubformat::Fixed) => DiskType::Fixed,
        (None, VhdSubformat::Dynamic) => DiskType::Dynamic,
    };
    let foot = footer::serialize(&NewFooter {
        disk_type,
        size,
        unique_id: unique_id()?,
        timestamp: now(),
    });
    if disk_type == DiskType::Fixed {
        file.set_len(size)?;
        file.write_all_at(&foot, size)?;
        file.sync_all()?;
        return Ok(());
    }
    let entries = size.div_ceil(u64::from(bs));
    let max_entries = u32::try_from(entries)
        .map_err(|_| Error::InvalidArgument(format!("{entries} blocks are too many")))?;
    let bat_len = (entries * 4).next_multiple_of(512);
    let mut locators = Vec::new();
    let mut end = TABLE_OFFSET + bat_len;
    if let Some(p) = &parent {
        for (code, data) in p.locator_data() {
            let space = (data.len() as u64).next_multiple_of(512);
            locators.push(Locator {
                code,
                space: u32::try_from(space).unwrap_or(u32::MAX),
                len: u32::try_from(data.len()).unwrap_or(u32::MAX),
                offset: end,
            });
            file.write_all_at(&data, end)?;
            end += space;
        }
    }
    let parent_name = parent
        .as_ref()
        .map(|p| p.stored.to_string_lossy().into_owned());
    let header = dynamic::serialize(&NewHeader {
        table_offset: TABLE_OFFSET,
        max_entries,
        block_size: bs,
        parent: parent
            .as_ref()
            .zip(parent_name.as_deref())
            .map(|(p, name)| (p.unique_id, p.timestamp, name)),
        locators: &locators,
    });
    let bat: Vec<u8> = std::iter::repeat_n(UNUSED.to_be_bytes(), super::us(entries))
        .flatten()
        .collect();
    file.write_all_at(&foot, 0)?;
    file.write_all_at(&header, FOOTER_LEN as u64)?;
    file.write_all_at(&bat, TABLE_OFFSET)?;
    let pad = vec![0xffu8; super::us(bat_len - bat.len() as u64)];
    file.write_all_at(&pad, TABLE_OFFSET + bat.len() as u64)?;
    file.write_all_at(&foot, end)?;
    file.sync_all()?;
    Ok(())
}

/// What a differencing disk records of its parent.
pub(crate) struct ParentInfo {
    /// The name as stored.
    pub stored: PathBuf,
    /// Absolute path.
    pub absolute: PathBuf,
    /// The parent's virtual size.
    pub size: u64,
    /// The parent's unique id.
    pub unique_id: [u8; 16],
    /// The parent file's modification time, in VHD seconds.
    pub timestamp: u32,
}

impl ParentInfo {
    /// Reads the parent named `name` (relative to `child`'s folder unless absolute).
    pub fn read(child: &Path, name: &Path) -> Result<ParentInfo, Error> {
        let located = crate::confine::resolve(child, name);
        let absolute = std::fs::canonicalize(&located).map_err(|source| Error::Open {
            path: located.clone(),
            source,
        })?;
        let file = crate::engine::EngineFile::open(
            &absolute,
            crate::engine::Access::ForceShare,
            crate::CacheMode::Writeback,
        )?;
        let f = super::read_footer(&file)?;
        let mtime = std::fs::metadata(&absolute)?
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        Ok(ParentInfo {
            stored: name.to_owned(),
            absolute,
            size: f.virtual_size(),
            unique_id: f.unique_id,
            timestamp: u32::try_from(mtime.saturating_sub(VHD_EPOCH)).unwrap_or(0),
        })
    }

    /// The locators XenServer's `vhd-util` writes: a MacX file URL of the relative name
    /// (`./` added), W2ku with the absolute path and W2ru with the relative name (UTF-16LE).
    pub fn locator_data(&self) -> Vec<([u8; 4], Vec<u8>)> {
        let stored = self.stored.to_string_lossy();
        let relative = match self.stored.is_absolute() || stored.starts_with("./") {
            true => stored.into_owned(),
            false => format!("./{stored}"),
        };
        let le = |s: &str| {
            s.encode_utf16()
                .flat_map(u16::to_le_bytes)
                .collect::<Vec<u8>>()
        };
        vec![
            (*b"MacX", format!("file://{relative}").into_bytes()),
            (*b"W2ku", le(&self.absolute.to_string_lossy())),
            (*b"W2ru", le(&relative)),
        ]
    }
}
