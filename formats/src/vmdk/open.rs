//! Opening a VMDK: the descriptor (embedded in a sparse extent or a text file of its own),
//! the extent files (confined like backing files), each sparse extent's tables, and the parent
//! named by `parentFileNameHint`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::confine::{Confinement, Named};
use crate::engine::EngineFile;
use crate::error::Error;
use crate::image::OpenOptions;
use crate::qcow2::Chain;

use super::descriptor::{Descriptor, ExtentKind, MAX_DESCRIPTOR, SIGNATURE};
use super::header::{GD_AT_END, MAGIC, SECTOR, SparseHeader};
use super::metaio::{FileIo, MetaIo, MetaKind};
use super::tables::Sparse;

/// Where the descriptor text lives, for the CID update.
pub(crate) struct DescriptorSite {
    /// The file holding it.
    pub io: Arc<dyn MetaIo>,
    /// The file, when the descriptor is a file of its own (it is truncated to the text).
    pub own_file: Option<Arc<EngineFile>>,
    /// Byte offset of the text.
    pub offset: u64,
    /// Room for the text (embedded descriptors); `None` for a file of its own.
    pub room: Option<u64>,
    /// The text as read.
    pub text: String,
}

/// How one extent stores its bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Store {
    /// Zeros, no file.
    Zero,
    /// Plain data in `files[file]` from byte `offset`.
    Flat {
        /// Index into the image's files.
        file: usize,
        /// Byte offset of the extent's first byte.
        offset: u64,
    },
    /// A sparse extent in `files[file]`, metadata `sparse[sparse]`.
    Sparse {
        /// Index into the image's files.
        file: usize,
        /// Index into the metadata's sparse extents.
        sparse: usize,
    },
}

/// One extent: guest bytes `[start, start + len)`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Extent {
    /// First guest byte.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// Where the bytes are.
    pub store: Store,
}

/// Everything read at open.
pub(crate) struct Opened {
    /// The descriptor.
    pub descriptor: Descriptor,
    /// Where it lives.
    pub site: DescriptorSite,
    /// Extent files (deduplicated); the first is the opened file when it holds an extent.
    pub files: Vec<Arc<EngineFile>>,
    /// Extents in guest order.
    pub extents: Vec<Extent>,
    /// Sparse extent metadata.
    pub sparse: Vec<Sparse>,
}

fn bad(why: String) -> Error {
    Error::InvalidImage(format!("VMDK: {why}"))
}

/// Reads the first header of a sparse extent (the footer's copy when the directory is at the
/// end, as in streamOptimized).
pub(crate) fn read_sparse_header(io: &dyn MetaIo) -> Result<SparseHeader, Error> {
    let mut head = [0u8; 512];
    io.read_exact(MetaKind::Header, 0, &mut head)?;
    let h = SparseHeader::parse(&head)?;
    if h.gd_offset != GD_AT_END {
        return Ok(h);
    }
    let size = io.size()?;
    let at = size
        .checked_sub(1024)
        .filter(|&at| at >= SECTOR)
        .ok_or_else(|| bad("streamOptimized extent without a footer".to_owned()))?;
    io.read_exact(MetaKind::Header, at, &mut head)?;
    let footer =
        SparseHeader::parse(&head).map_err(|e| bad(format!("streamOptimized footer: {e}")))?;
    if footer.gd_offset == GD_AT_END {
        return Err(bad(
            "the footer's grain directory is also at the end".to_owned()
        ));
    }
    Ok(footer)
}

/// Reads the descriptor of the image in `file`: embedded in a sparse extent or the whole file.
pub(crate) fn read_descriptor(
    file: &Arc<EngineFile>,
) -> Result<(Descriptor, DescriptorSite), Error> {
    let io: Arc<dyn MetaIo> = Arc::new(FileIo(file.clone()));
    let mut magic = [0u8; 4];
    let got = io.read(MetaKind::Header, 0, &mut magic)?;
    let (offset, len, own) = if got == 4 && magic == MAGIC {
        let h = read_sparse_header(&*io)?;
        if h.descriptor_offset == 0 || h.descriptor_sectors == 0 {
            return Err(bad(format!(
                "{} is a sparse extent without a descriptor: open the descriptor file naming it",
                file.path().display()
            )));
        }
        let at = h.descriptor_offset.saturating_mul(SECTOR);
        (at, h.descriptor_sectors * SECTOR, false)
    } else {
        let size = io.size()?;
        if size > MAX_DESCRIPTOR as u64 {
            return Err(bad(format!(
                "{} is {size} bytes: not a sparse extent, and too large for a descriptor \
                 (at most {MAX_DESCRIPTOR} bytes)",
                file.path().display()
            )));
        }
        (0, size, true)
    };
    let mut text = vec![0u8; usize::try_from(len).unwrap_or(0)];
    let got = io.read(MetaKind::Descriptor, offset, &mut text)?;
    text.truncate(got);
    if !own && got < text.capacity() {
        return Err(bad(
            "the embedded descriptor runs past the end of the file".to_owned()
        ));
    }
    if own && !text.starts_with(SIGNATURE.as_bytes()) {
        return Err(bad(format!(
            "{} is neither a sparse extent (KDMV) nor a descriptor (\"{SIGNATURE}\")",
            file.path().display()
        )));
    }
    let descriptor = Descriptor::parse(&text)?;
    let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
    let site = DescriptorSite {
        io,
        own_file: own.then(|| file.clone()),
        offset,
        room: (!own).then_some(len),
        text: String::from_utf8_lossy(&text[..end]).into_owned(),
    };
    Ok((descriptor, site))
}

/// Opens the image in `file` (its extents and their metadata; not the parent).
pub(crate) fn open_extents(
    file: &Arc<EngineFile>,
    opts: &OpenOptions,
    top: Option<&Path>,
) -> Result<Opened, Error> {
    let (descriptor, site) = read_descriptor(file)?;
    descriptor.check_supported()?;
    if !file.read_only() && descriptor.create_type == "streamOptimized" {
        return Err(Error::UnsupportedFeature(
            "writing to a streamOptimized VMDK (open it read-only, or convert it)".to_owned(),
        ));
    }
    let confinement = Confinement::new(&opts.backing, top.unwrap_or(file.path()))?;
    let mut o = Opened {
        descriptor,
        site,
        files: Vec::new(),
        extents: Vec::new(),
        sparse: Vec::new(),
    };
    let own = file.real_path()?;
    let mut paths: Vec<PathBuf> = Vec::new();
    if o.site.own_file.is_none() {
        o.files.push(file.clone());
        paths.push(own.clone());
    }
    // A descriptor embedded in a sparse extent naming one sparse extent describes that very
    // file, whatever name it gives (the file may have been renamed or copied), as in qemu.
    let embedded_alone = o.site.own_file.is_none()
        && o.descriptor.extents.len() == 1
        && o.descriptor.extents[0].kind == ExtentKind::Sparse;
    let mut start = 0u64;
    for line in o.descriptor.extents.clone() {
        let len = line.sectors.checked_mul(SECTOR).ok_or_else(|| {
            bad(format!(
                "an extent of {} sectors overflows the disk size",
                line.sectors
            ))
        })?;
        let store = match (line.kind, &line.file) {
            (ExtentKind::Zero, _) | (_, None) => Store::Zero,
            (ExtentKind::Sparse, Some(_)) if embedded_alone => {
                sparse_store(&mut o, 0, line.sectors)?
            }
            (kind, Some(name)) => {
                let named = Named {
                    image: file.path(),
                    name: Path::new(name),
                };
                let index = open_extent_file(&confinement, &named, opts, &mut o.files, &mut paths)?;
                match kind {
                    ExtentKind::Flat => Store::Flat {
                        file: index,
                        offset: flat_offset(line.offset, len)?,
                    },
                    _ => sparse_store(&mut o, index, line.sectors)?,
                }
            }
        };
        check_sharing(&o.extents, store)?;
        o.extents.push(Extent { start, len, store });
        start = start
            .checked_add(len)
            .ok_or_else(|| bad("disk size overflows".to_owned()))?;
    }
    if o.files.is_empty() {
        // Only ZERO extents: the descriptor file carries the (idle) engine.
        o.files.push(file.clone());
    }
    Ok(o)
}

/// The file of an extent's store (none for ZERO).
fn file_of(store: Store) -> Option<usize> {
    match store {
        Store::Zero => None,
        Store::Flat { file, .. } | Store::Sparse { file, .. } => Some(file),
    }
}

/// Refuses `store` when it shares a file with an earlier extent and either is sparse: a
/// sparse extent owns its file (its tables and free space are tracked per extent, so a second
/// view of the file would allocate the same room twice, or expose its metadata as data).
/// FLAT extents may share a file.
fn check_sharing(extents: &[Extent], store: Store) -> Result<(), Error> {
    let Some(file) = file_of(store) else {
        return Ok(());
    };
    let sparse = |s: Store| matches!(s, Store::Sparse { .. });
    let clash = extents
        .iter()
        .any(|e| file_of(e.store) == Some(file) && (sparse(store) || sparse(e.store)));
    if clash {
        return Err(bad(
            "a sparse extent file is named by more than one extent".to_owned()
        ));
    }
    Ok(())
}

/// The byte offset of a FLAT extent of `len` bytes starting at sector `sector` of its file;
/// refused unless the whole range lies below the largest file offset (reads add the
/// position inside the extent to it).
fn flat_offset(sector: u64, len: u64) -> Result<u64, Error> {
    sector
        .checked_mul(SECTOR)
        .filter(|at| {
            at.checked_add(len)
                .is_some_and(|end| i64::try_from(end).is_ok())
        })
        .ok_or_else(|| {
            bad(format!(
                "a FLAT extent of {len} bytes at sector {sector} of its file ends past the \
                 largest file offset"
            ))
        })
}

/// Opens (or finds among those open) the file of one extent; its index in `files`.
fn open_extent_file(
    confinement: &Confinement,
    named: &Named<'_>,
    opts: &OpenOptions,
    files: &mut Vec<Arc<EngineFile>>,
    paths: &mut Vec<PathBuf>,
) -> Result<usize, Error> {
    let located = confinement.locate(named)?;
    let real = std::fs::canonicalize(&located).map_err(|source| Error::Open {
        path: located.clone(),
        source,
    })?;
    if let Some(i) = paths.iter().position(|p| *p == real) {
        return Ok(i);
    }
    let mut file = crate::open_file(&located, opts)?;
    confinement.check_opened(named, &file)?;
    super::keep_metadata_pages_apart(&mut file);
    files.push(Arc::new(file));
    paths.push(real);
    Ok(files.len() - 1)
}

fn sparse_store(o: &mut Opened, file: usize, sectors: u64) -> Result<Store, Error> {
    let io: Arc<dyn MetaIo> = Arc::new(FileIo(o.files[file].clone()));
    let header = read_sparse_header(&*io)?;
    if header.capacity < sectors {
        return Err(bad(format!(
            "a sparse extent of {} sectors listed as {sectors} sectors",
            header.capacity
        )));
    }
    if o.sparse.len() >= super::descriptor::MAX_EXTENTS {
        return Err(bad("too many sparse extents".to_owned()));
    }
    o.sparse.push(Sparse::open(io, header, SECTOR)?);
    Ok(Store::Sparse {
        file,
        sparse: o.sparse.len() - 1,
    })
}

/// Opens the parent named by `hint` (read-only, confined, chain-checked).
pub(crate) fn open_parent(
    path: &Path,
    hint: &str,
    opts: &OpenOptions,
    chain: &mut Chain,
) -> Result<super::VmdkImage, Error> {
    let named = Named {
        image: path,
        name: Path::new(hint),
    };
    let confinement = Confinement::new(&opts.backing, chain.top().unwrap_or(path))?;
    let located = confinement.locate(&named)?;
    chain.enter(&located)?;
    let parent_opts = OpenOptions {
        read_only: true,
        require_whole_sectors: false,
        ..opts.clone()
    };
    let file = crate::open_file(&located, &parent_opts)?;
    confinement.check_opened(&named, &file)?;
    super::VmdkImage::open(Arc::new(file), &parent_opts, chain)
}
