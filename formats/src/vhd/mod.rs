//! VHD images (Microsoft's "Virtual Hard Disk Image Format Specification"; qemu calls the
//! format `vpc`, XenServer's tapdisk `vhd`): fixed, dynamic and differencing disks.
//!
//! * Open: the footer at the end of the file (or, if that one is damaged, its copy at offset
//!   0 of dynamic disks), the dynamic header, the BAT, blktap's batmap (kept valid: see
//!   `DESIGN.md`), parent locators (see [`locator`]). Checksums are checked; every block
//!   must lie after the metadata, inside the file and apart from the others.
//! * Reads: allocated data goes through the shared engine straight into the caller's
//!   buffers; unallocated blocks read as zeros (dynamic) or from the parent (differencing),
//!   and inside an allocated block of a differencing disk each sector comes from here or
//!   from the parent by its bitmap bit.
//! * Writes: in place in allocated blocks (and fixed disks); a new block is allocated at the
//!   end of the file, crash-ordered (see [`meta`] and `DESIGN.md`). In a differencing disk
//!   the bits of written sectors are set once the data is written; a partial sector not yet
//!   here is first filled from the parent.
//! * Flush: the metadata write-back, or an fdatasync.
//! * Every disk follows the cache mode; in `none` and `directsync` the metadata of dynamic and
//!   differencing disks is written with O_DIRECT too (see [`shares_pages`]).
//!
//! * The image tool's `check [-r leaks|all]` is [`check`], its `map` is [`map`].
//!
//! Discard and write-zeroes are not supported (the features say so).

#![forbid(unsafe_code)]

pub mod check;
mod create;
pub mod dynamic;
pub mod footer;
mod info;
mod locator;
pub mod map;
mod meta;
mod metaio;
mod plan;
mod queue;
pub mod reparent;
mod zero;

#[cfg(test)]
mod tests;

pub use create::{VhdCreateOptions, VhdSubformat, create};
pub use info::{VhdInfo, describe};
pub use queue::VhdQueue;

use std::sync::{Arc, Mutex};

use crate::engine::{self, EngineFile, MAX_DEPTH};
use crate::error::Error;
use crate::image::{BlockImage, EngineKind, Features, Format, Geometry, ImageQueue, OpenOptions};
use crate::qcow2::Chain;

use dynamic::{DynHeader, HEADER_LEN};
use footer::{DiskType, FOOTER_LEN, Footer};
use meta::{Loaded, Meta};
use metaio::VhdIo;

/// Most bytes of BAT read into memory (1 Mi entries: 2 TiB of 2 MiB blocks, times 16).
const MAX_BAT_BYTES: u64 = 64 << 20;

/// An open VHD image.
pub struct VhdImage {
    file: Arc<EngineFile>,
    io: Arc<VhdIo>,
    footer: Footer,
    /// `None` for fixed disks.
    pub(crate) meta: Option<Arc<Mutex<Meta>>>,
    parent: Option<Arc<VhdImage>>,
    geometry: Geometry,
    engine: EngineKind,
    read_only: bool,
}

impl std::fmt::Debug for VhdImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhdImage")
            .field("path", &self.file.path())
            .field("type", &self.footer.disk_type)
            .field("size", &self.geometry.size)
            .finish()
    }
}

/// Reads the footer of the VHD in `io`: the one at the end, or the copy at offset 0 if the
/// one at the end is damaged and the copy is of a dynamic or differencing disk.
pub(crate) fn read_footer(file: &EngineFile) -> Result<Footer, Error> {
    let size = file.size()?;
    if size < FOOTER_LEN as u64 {
        return Err(Error::InvalidImage(format!(
            "a VHD file holds at least its {FOOTER_LEN}-byte footer; this one has {size} bytes"
        )));
    }
    let mut tail = [0u8; FOOTER_LEN];
    metaio::read_exact(file, size - FOOTER_LEN as u64, &mut tail, "footer")?;
    let at_end = match Footer::parse(&tail, "at the end of the file") {
        Ok(f) => return Ok(f),
        Err(e) => e,
    };
    let mut head = [0u8; FOOTER_LEN];
    metaio::read_exact(file, 0, &mut head, "footer copy")?;
    match Footer::parse(&head, "copy at offset 0") {
        Ok(f) if f.disk_type != DiskType::Fixed => {
            tracing::warn!(path = %file.path().display(), error = %at_end,
                "VHD footer at the end is damaged, using its copy at offset 0");
            Ok(f)
        }
        _ => Err(at_end),
    }
}

/// Whether the VHD in `file` keeps metadata in the pages of guest data: dynamic and
/// differencing disks do (a block's sector bitmap shares its first page with the block's data,
/// the footer its page with the last block's data). Their metadata is written with O_DIRECT
/// when data is, one aligned block at a time, so such files can use O_DIRECT only where that
/// block is one 512-byte sector. Fixed disks have no metadata among their data.
pub(crate) fn shares_pages(file: &EngineFile) -> bool {
    read_footer(file).map_or(true, |f| f.disk_type != DiskType::Fixed)
}

/// Opens the VHD in `file` (one image of a chain; `chain` holds the images above it).
/// Dynamic and differencing disks write their metadata with O_DIRECT when data is written so,
/// one aligned block at a time (see [`shares_pages`]); that block must not take in data
/// sectors, so where O_DIRECT needs more than 512-byte alignment they use the page cache for
/// everything.
pub(crate) fn open_vhd(
    mut file: EngineFile,
    opts: &OpenOptions,
    chain: &mut Chain,
) -> Result<VhdImage, Error> {
    if file.dio_align().is_some_and(|a| a.offset > 512) && shares_pages(&file) {
        tracing::info!(path = %file.path().display(), "VHD on a file system without 512-byte O_DIRECT: not using O_DIRECT");
        file.disable_direct();
    }
    VhdImage::open(Arc::new(file), opts, chain)
}

impl VhdImage {
    /// Opens the VHD image in `file`, following its parents (`chain` holds the images above).
    pub(crate) fn open(
        file: Arc<EngineFile>,
        opts: &OpenOptions,
        chain: &mut Chain,
    ) -> Result<VhdImage, Error> {
        let sector = opts.sector_size;
        if !(sector.is_power_of_two() && (512..=4096).contains(&sector)) {
            return Err(Error::InvalidArgument(format!(
                "sector size {sector} is not 512..=4096 and a power of two"
            )));
        }
        let io = Arc::new(VhdIo(file.clone()));
        let footer = read_footer(&file)?;
        let size = footer.virtual_size();
        opts.check_disk_size(file.path(), size)?;
        let file_size = io.size()?;
        let (meta, parent) = match footer.disk_type {
            DiskType::Fixed => {
                check_fixed(size, file_size)?;
                (None, None)
            }
            _ => {
                let (loaded, header) = load(&io, &footer, size, file_size)?;
                let parent = match footer.disk_type {
                    DiskType::Differencing => Some(locator::open_parent(
                        file.path(),
                        &io,
                        &header,
                        opts,
                        chain,
                    )?),
                    _ => None,
                };
                let meta = Meta::load(io.clone(), loaded)?;
                (Some(Arc::new(Mutex::new(meta))), parent)
            }
        };
        let geometry = Geometry {
            size,
            logical_sector_size: sector,
            physical_sector_size: file.physical_block_size().max(sector),
        };
        tracing::debug!(path = %file.path().display(), size, kind = ?footer.disk_type, "vhd image open");
        Ok(VhdImage {
            read_only: file.read_only(),
            engine: engine::resolve(opts.engine)?,
            file,
            io,
            footer,
            meta,
            parent,
            geometry,
        })
    }

    /// The footer (as it was at open time).
    pub fn footer(&self) -> &Footer {
        &self.footer
    }

    /// A queue with the concrete type (tests and tools).
    pub fn queue(&self, depth: u32) -> Result<VhdQueue, Error> {
        if depth == 0 || depth > MAX_DEPTH {
            return Err(Error::InvalidArgument(format!(
                "queue depth {depth} not in 1..={MAX_DEPTH}"
            )));
        }
        let engine_depth = depth.saturating_mul(2).saturating_add(16).min(MAX_DEPTH);
        let engine = engine::Engine::new(self.file.clone(), self.engine, engine_depth)?;
        VhdQueue::new(queue::Parts {
            engine,
            meta: self.meta.clone(),
            io: self.io.clone(),
            parent: self.parent.clone().map(|p| -> Arc<dyn BlockImage> { p }),
            size: self.geometry.size,
            read_only: self.read_only,
            depth,
        })
    }
}

fn check_fixed(size: u64, file_size: u64) -> Result<(), Error> {
    if size > file_size - FOOTER_LEN as u64 {
        return Err(Error::InvalidImage(format!(
            "fixed VHD of {size} bytes in a file of {file_size} bytes (its data and footer \
             need {} bytes)",
            size.saturating_add(FOOTER_LEN as u64)
        )));
    }
    Ok(())
}

/// Reads the dynamic header and the BAT, and finds where the metadata ends.
fn load(
    io: &VhdIo,
    footer: &Footer,
    size: u64,
    file_size: u64,
) -> Result<(Loaded, DynHeader), Error> {
    let mut raw = [0u8; HEADER_LEN];
    io.read_exact(footer.data_offset, &mut raw, "dynamic header")?;
    let header = DynHeader::parse(&raw)?;
    let needed = size.div_ceil(u64::from(header.block_size));
    if needed > u64::from(header.max_entries) {
        return Err(Error::InvalidImage(format!(
            "VHD BAT has {} entries, the disk size of {size} bytes needs {needed}",
            header.max_entries
        )));
    }
    let bat_bytes = needed * 4;
    if bat_bytes > MAX_BAT_BYTES {
        return Err(Error::UnsupportedFeature(format!(
            "VHD BAT of {needed} entries ({bat_bytes} bytes; at most {MAX_BAT_BYTES} are read)"
        )));
    }
    let bat_end = header
        .table_offset
        .checked_add(u64::from(header.max_entries) * 4)
        .filter(|&end| end <= file_size)
        .ok_or_else(|| {
            Error::InvalidImage(format!(
                "VHD BAT at {:#x} ({} entries) runs past the end of the file ({file_size} bytes)",
                header.table_offset, header.max_entries
            ))
        })?;
    let mut bytes = vec![0u8; us(bat_bytes)];
    io.read_exact(header.table_offset, &mut bytes, "BAT")?;
    let bat = bytes
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let meta_end = metadata_end(io, footer, &header, bat_end, file_size)?;
    let loaded = Loaded {
        header: header.clone(),
        bat,
        meta_end,
        file_end: file_size,
        footer: footer.raw,
        disk_type: footer.disk_type,
    };
    Ok((loaded, header))
}

/// The first byte after the footer copy, the header, the BAT, blktap's batmap and the parent
/// locators' data: no block may start before it.
fn metadata_end(
    io: &VhdIo,
    footer: &Footer,
    header: &DynHeader,
    bat_end: u64,
    file_size: u64,
) -> Result<u64, Error> {
    let bat_end = bat_end.next_multiple_of(512);
    let mut end = (footer.data_offset + HEADER_LEN as u64).max(bat_end);
    if let Some(batmap_end) = batmap_end(io, bat_end, file_size)? {
        end = end.max(inside(batmap_end, file_size, "blktap's batmap")?);
    }
    for l in &header.locators {
        let locator_end = l
            .offset
            .saturating_add(l.space_bytes().max(u64::from(l.len)));
        end = end.max(inside(locator_end, file_size, "parent locator data")?);
    }
    Ok(end.next_multiple_of(512))
}

/// `end`, refused if past the end of the file.
fn inside(end: u64, file_size: u64, what: &str) -> Result<u64, Error> {
    if end > file_size {
        return Err(Error::InvalidImage(format!(
            "VHD {what} ends at {end:#x}, past the end of the file ({file_size} bytes)"
        )));
    }
    Ok(end)
}

/// The end of blktap's batmap, if the sector after the BAT holds its header (`tdbatmap`,
/// then the batmap's offset and its size in sectors).
pub(crate) fn batmap_end(io: &VhdIo, bat_end: u64, file_size: u64) -> Result<Option<u64>, Error> {
    if bat_end.saturating_add(512) > file_size {
        return Ok(None);
    }
    let mut head = [0u8; 512];
    io.read_exact(bat_end, &mut head, "batmap header")?;
    if &head[..8] != b"tdbatmap" {
        return Ok(None);
    }
    let offset = footer::be64(&head, 8);
    let sectors = u64::from(footer::be32(&head, 16));
    Ok(Some(
        offset.saturating_add(sectors * 512).max(bat_end + 512),
    ))
}

impl BlockImage for VhdImage {
    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn features(&self) -> Features {
        Features::full(self.read_only)
    }

    fn open_queue(&self, depth: u32) -> Result<Box<dyn ImageQueue>, Error> {
        Ok(Box::new(self.queue(depth)?))
    }

    fn sync_metadata(&self) -> Result<(), Error> {
        if self.read_only {
            return Ok(());
        }
        if let Some(meta) = &self.meta {
            if plan::lock(meta)?.write_back()? {
                return Ok(());
            }
        }
        self.io.sync()
    }

    fn format(&self) -> Format {
        Format::Vpc
    }
}

impl Drop for VhdImage {
    fn drop(&mut self) {
        if let Err(e) = self.sync_metadata() {
            tracing::error!(error = %e, path = %self.file.path().display(), "cannot write back VHD metadata");
        }
    }
}

/// A size bounded by the checks of this module as a `usize` (saturating).
pub(crate) fn us(x: u64) -> usize {
    usize::try_from(x).unwrap_or(usize::MAX)
}
