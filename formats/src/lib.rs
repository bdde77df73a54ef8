//! Image formats for rustbk and the one I/O engine layer they all share.
//!
//! * [`BlockImage`] / [`ImageQueue`]: the control-plane and data-plane traits the backend uses.
//! * [`engine`]: positioned vectored read/write, flush, punch-hole and zero-range over io_uring,
//!   with a synchronous fallback of identical semantics. Every format builds on it.
//! * [`raw`]: raw images (regular files and block devices).
//! * [`null`]: null images (no file: every op completes at once, reads return zeros), for
//!   measuring the backend's own cost.
//! * [`qcow2`]: qcow2 images (versions 2 and 3) with backing chains, confined by a
//!   [`BackingPolicy`].
//! * [`vhd`]: VHD images (qemu's `vpc`): fixed, dynamic and differencing disks, parents
//!   confined by the same [`BackingPolicy`].
//! * [`vmdk`]: VMware VMDK images (monolithicSparse, twoGbMaxExtentSparse, monolithicFlat,
//!   twoGbMaxExtentFlat read and written, streamOptimized read) with parent chains and extent
//!   files confined by the same [`BackingPolicy`].
//!
//! `unsafe` lives only in [`buffer`] (the aligned buffer and copies to or from raw I/O memory),
//! `engine::uring` (raw buffers in SQEs) and `engine::sys` (raw-buffer syscalls and ioctls).
#![deny(unsafe_code)]

#[allow(unsafe_code)]
pub mod buffer;
mod cache;
#[cfg(test)]
mod cache_tests;
mod confine;
pub mod engine;
mod error;
mod image;
pub mod null;
pub mod planned;
pub mod qcow2;
pub mod raw;
mod size;
pub mod vhd;
pub mod vmdk;

#[cfg(any(test, feature = "suite"))]
pub mod suite;

pub use buffer::{AlignedBuf, Composite, InFixedSlot, IoBuffers, IoVec, SharedBuf, SharedBufs};
pub use cache::{CacheMode, UnknownCacheMode};
pub use confine::{BackingPolicy, protocol_of};
pub use engine::{Engine, EngineFile, WriteRecorder};
pub use error::Error;
pub use image::{
    BlockImage, Completion, EngineKind, Features, Format, Geometry, ImageQueue, IoOp, OpenOptions,
};
pub use null::NullImage;
pub use qcow2::{Qcow2Image, Qcow2Options};
pub use raw::{RawImage, create_raw};
pub use vhd::VhdImage;
pub use vmdk::VmdkImage;

use std::path::Path;
use std::sync::Arc;

/// Opens the image at `path` as `format` and follows its backing files (opened read-only, at
/// most [`qcow2::MAX_CHAIN_DEPTH`] deep, loops refused) as `opts.backing` allows. Every file
/// is locked as QEMU locks it (see [`engine::lock`]); an image another process uses in a
/// conflicting way is refused with [`Error::Locked`].
///
/// The format is always named by the caller: a guest can write any header into a raw disk, so
/// a backend that probed would let it pick a format and a backing file (QEMU's CVE-2008-2004).
/// Only the image tool probes, with [`probe_format`].
pub fn open_image(
    path: &Path,
    format: Format,
    opts: &OpenOptions,
) -> Result<Arc<dyn BlockImage>, Error> {
    if format == Format::Null {
        return Err(null_has_no_file(path));
    }
    let mut chain = qcow2::Chain::default();
    chain.enter(path)?;
    let file = open_file(path, opts)?;
    open_as(file, format, opts, &mut chain)
}

/// The format of the image at `path`, from its first bytes: qcow2 if it starts with qcow2's
/// magic, vpc if it starts with VHD's cookie `conectix` (the footer's copy of a dynamic or
/// differencing disk; a fixed disk has its footer only at the end and shows as raw, as in
/// qemu), vmdk if it starts with `KDMV` or `# Disk DescriptorFile`, else raw. For the image
/// tool only (see [`open_image`]).
pub fn probe_format(path: &Path) -> Result<Format, Error> {
    probe(&EngineFile::open(
        path,
        engine::Access::ForceShare,
        CacheMode::Writeback,
    )?)
}

/// Opens the file of one image of a chain.
pub(crate) fn open_file(path: &Path, opts: &OpenOptions) -> Result<EngineFile, Error> {
    let access = engine::Access::new(opts.read_only, opts.force_share);
    let mut file = EngineFile::open(path, access, opts.cache)?;
    if let Some(recorder) = opts.recorder.as_ref().filter(|_| !file.read_only()) {
        file.set_recorder(recorder.clone());
    }
    Ok(file)
}

/// Opens one image of a backing chain from its file; `chain` holds the images above it.
pub(crate) fn open_as(
    mut file: EngineFile,
    format: Format,
    opts: &OpenOptions,
    chain: &mut qcow2::Chain,
) -> Result<Arc<dyn BlockImage>, Error> {
    if format == Format::Qcow2 && file.dio_align().is_some() && sub_page_clusters(&file)? {
        // Metadata goes through the page cache; with clusters smaller than a page, data and
        // metadata share pages, and mixing O_DIRECT with dirty cached pages of the same page
        // loses writes. Such images use the page cache for everything.
        tracing::info!(path = %file.path().display(), "qcow2 clusters below the page size: not using O_DIRECT");
        file.disable_direct();
    }
    match format {
        Format::Raw => Ok(Arc::new(RawImage::new(Arc::new(file), opts)?)),
        Format::Qcow2 => Ok(Arc::new(Qcow2Image::open(Arc::new(file), opts, chain)?)),
        // Sector bitmaps sit in the same pages as block data (see `vhd::open_vhd`).
        Format::Vpc => Ok(Arc::new(vhd::open_vhd(file, opts, chain)?)),
        Format::Vmdk => {
            vmdk::keep_metadata_pages_apart(&mut file);
            Ok(Arc::new(VmdkImage::open(Arc::new(file), opts, chain)?))
        }
        Format::Null => Err(null_has_no_file(file.path())),
    }
}

/// The error of opening a file as a null image.
fn null_has_no_file(path: &Path) -> Error {
    Error::InvalidArgument(format!(
        "{}: a null image has no file (it is made from its size: NullImage::new)",
        path.display()
    ))
}

/// Whether a qcow2 image's clusters are smaller than a page.
fn sub_page_clusters(file: &EngineFile) -> Result<bool, Error> {
    let mut head = [0u8; qcow2::header::V2_HEADER_LEN as usize];
    let got = file.read_head(&mut head)?;
    let bits = qcow2::header::peek_cluster_bits(&head[..got])?;
    Ok(bits < PAGE_SHIFT)
}

/// log2 of the page size, the unit the page cache works in.
const PAGE_SHIFT: u32 = 12;

pub(crate) fn probe(file: &EngineFile) -> Result<Format, Error> {
    let mut head = [0u8; 24];
    let got = file.read_head(&mut head)?;
    let head = head.get(..got).unwrap_or_default();
    if head.starts_with(&qcow2::header::MAGIC) {
        return Ok(Format::Qcow2);
    }
    if head.starts_with(vhd::footer::COOKIE) {
        return Ok(Format::Vpc);
    }
    if head.starts_with(&vmdk::header::MAGIC)
        || head.starts_with(vmdk::descriptor::SIGNATURE.as_bytes())
    {
        return Ok(Format::Vmdk);
    }
    Ok(Format::Raw)
}
