//! What the image tool shows of a VHD without opening its parent.

use std::path::Path;

use crate::engine::{Access, EngineFile};
use crate::error::Error;

use super::dynamic::{DynHeader, HEADER_LEN};
use super::footer::DiskType;
use super::metaio::VhdIo;

/// A VHD's footer and header, as `rustbk img info` shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VhdInfo {
    /// Fixed, dynamic or differencing.
    pub disk_type: DiskType,
    /// Virtual size in bytes.
    pub virtual_size: u64,
    /// Block size of dynamic and differencing disks.
    pub block_size: Option<u32>,
    /// The parent's name, as its first parent locator (or the header's name) gives it.
    pub parent: Option<String>,
}

/// Reads the footer and dynamic header of the VHD at `path`.
pub fn describe(path: &Path, force_share: bool) -> Result<VhdInfo, Error> {
    let access = Access::new(true, force_share);
    let file = std::sync::Arc::new(EngineFile::open(path, access, crate::CacheMode::Writeback)?);
    let footer = super::read_footer(&file)?;
    let mut info = VhdInfo {
        disk_type: footer.disk_type,
        virtual_size: footer.virtual_size(),
        block_size: None,
        parent: None,
    };
    if footer.disk_type == DiskType::Fixed {
        return Ok(info);
    }
    let io = VhdIo(file);
    let mut raw = [0u8; HEADER_LEN];
    io.read_exact(footer.data_offset, &mut raw, "dynamic header")?;
    let header = DynHeader::parse(&raw)?;
    info.block_size = Some(header.block_size);
    if footer.disk_type == DiskType::Differencing {
        info.parent = super::locator::candidates(&io, &header)?.into_iter().next();
    }
    Ok(info)
}
