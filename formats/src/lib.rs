//! Image formats for rustbk and the one I/O engine layer they all share.
//!
//! * [`BlockImage`] / [`ImageQueue`]: the control-plane and data-plane traits the backend uses.
//! * [`engine`]: positioned vectored read/write, flush, punch-hole and zero-range over io_uring,
//!   with a synchronous fallback of identical semantics. Every format builds on it.
//! * [`raw`]: raw images (regular files and block devices).
//! * [`qcow2`]: qcow2 images (versions 2 and 3) with backing chains.
//!
//! `unsafe` lives only in [`buffer`] (the aligned buffer and copies to or from raw I/O memory),
//! `engine::uring` (raw buffers in SQEs) and `engine::sys` (raw-buffer syscalls and ioctls).
#![deny(unsafe_code)]

#[allow(unsafe_code)]
pub mod buffer;
pub mod engine;
mod error;
mod image;
pub mod qcow2;
pub mod raw;

#[cfg(test)]
mod suite;

pub use buffer::{AlignedBuf, Composite, IoBuffers, IoVec, SharedBuf, SharedBufs};
pub use engine::{Engine, EngineFile, WriteRecorder};
pub use error::Error;
pub use image::{
    BlockImage, Completion, EngineKind, Features, Format, Geometry, ImageQueue, IoOp, OpenOptions,
};
pub use qcow2::{Qcow2Image, Qcow2Options};
pub use raw::{RawImage, create_raw};

use std::path::Path;
use std::sync::Arc;

/// Opens an image, probing its format unless `opts.format` names one, and follows backing
/// files (relative to the image's folder, opened read-only, at most
/// [`qcow2::MAX_CHAIN_DEPTH`] deep, loops refused). Every file is locked as QEMU locks it
/// (see [`engine::lock`]); an image another process uses in a conflicting way is refused with
/// [`Error::Locked`].
///
/// When no format is given and the file starts with the magic of a format this crate cannot
/// open yet (vmdk, vhd), the open fails rather than exposing the container's metadata to the
/// guest as raw data.
pub fn open_image(path: &Path, opts: &OpenOptions) -> Result<Arc<dyn BlockImage>, Error> {
    open_chain(path, opts, &mut qcow2::Chain::default())
}

/// Opens one image of a backing chain; `chain` holds the images above it.
pub(crate) fn open_chain(
    path: &Path,
    opts: &OpenOptions,
    chain: &mut qcow2::Chain,
) -> Result<Arc<dyn BlockImage>, Error> {
    chain.enter(path)?;
    let access = engine::Access::new(opts.read_only, opts.force_share);
    let mut file = EngineFile::open(path, access, opts.direct)?;
    if let Some(recorder) = opts.recorder.as_ref().filter(|_| !file.read_only()) {
        file.set_recorder(recorder.clone());
    }
    let format = match opts.format {
        Some(format) => format,
        None => probe(&file)?,
    };
    if format == Format::Qcow2 && file.dio_align().is_some() && sub_page_clusters(&file)? {
        // Metadata goes through the page cache; with clusters smaller than a page, data and
        // metadata share pages, and mixing O_DIRECT with dirty cached pages of the same page
        // loses writes. Such images use the page cache for everything.
        tracing::info!(path = %path.display(), "qcow2 clusters below the page size: not using O_DIRECT");
        file.disable_direct();
    }
    let file = Arc::new(file);
    match format {
        Format::Raw => Ok(Arc::new(RawImage::new(file, opts)?)),
        Format::Qcow2 => Ok(Arc::new(Qcow2Image::open(file, opts, chain)?)),
    }
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

/// Magic numbers at offset 0 of the formats this crate does not open yet.
const FOREIGN_MAGICS: [(&[u8], &str); 2] = [(b"KDMV", "vmdk"), (b"conectix", "vhd")];

fn probe(file: &EngineFile) -> Result<Format, Error> {
    let mut head = [0u8; 8];
    let got = file.read_head(&mut head)?;
    let head = head.get(..got).unwrap_or_default();
    if head.starts_with(&qcow2::header::MAGIC) {
        return Ok(Format::Qcow2);
    }
    for (magic, name) in FOREIGN_MAGICS {
        if head.starts_with(magic) {
            return Err(Error::UnsupportedFormat(name));
        }
    }
    Ok(Format::Raw)
}
