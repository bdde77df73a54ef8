//! Creating VMDK images: the four hosted subformats (with an optional parent), and a whole
//! streamOptimized image written from a reader (`convert`).

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::Error;

use super::descriptor::{Descriptor, ExtentKind, ExtentLine, NO_PARENT};
use super::header::{COMPRESS_DEFLATE, COMPRESS_NONE, GD_AT_END, SECTOR, SparseHeader, flags};

/// Grain size of new sparse extents, in sectors (64 KiB, as VMware and qemu use).
const GRAIN_SECTORS: u64 = 128;
/// Grain table entries of new sparse extents.
const GTES: u32 = 512;
/// Room for the embedded descriptor, in sectors.
const DESCRIPTOR_SECTORS: u64 = 20;
/// Size of each extent of the twoGbMaxExtent subformats.
const SPLIT: u64 = 2047 << 20;

/// The subformats `create` makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subformat {
    /// One sparse extent with the descriptor inside.
    MonolithicSparse,
    /// A descriptor file and one flat extent.
    MonolithicFlat,
    /// A descriptor file and sparse extents of at most 2047 MiB.
    TwoGbMaxExtentSparse,
    /// A descriptor file and flat extents of at most 2047 MiB.
    TwoGbMaxExtentFlat,
    /// One compressed sparse extent, written whole (see [`write_stream_optimized`]).
    StreamOptimized,
}

impl Subformat {
    /// The subformat named `name` (qemu-img's `subformat=` values).
    pub fn from_name(name: &str) -> Result<Subformat, Error> {
        Ok(match name {
            "monolithicSparse" => Subformat::MonolithicSparse,
            "monolithicFlat" => Subformat::MonolithicFlat,
            "twoGbMaxExtentSparse" => Subformat::TwoGbMaxExtentSparse,
            "twoGbMaxExtentFlat" => Subformat::TwoGbMaxExtentFlat,
            "streamOptimized" => Subformat::StreamOptimized,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "VMDK subformat {other:?} (monolithicSparse, monolithicFlat, \
                     twoGbMaxExtentSparse, twoGbMaxExtentFlat, streamOptimized)"
                )));
            }
        })
    }

    fn name(self) -> &'static str {
        match self {
            Subformat::MonolithicSparse => "monolithicSparse",
            Subformat::MonolithicFlat => "monolithicFlat",
            Subformat::TwoGbMaxExtentSparse => "twoGbMaxExtentSparse",
            Subformat::TwoGbMaxExtentFlat => "twoGbMaxExtentFlat",
            Subformat::StreamOptimized => "streamOptimized",
        }
    }
}

/// A parent for a new image: its name as stored and its CID.
#[derive(Clone, Debug)]
pub struct Parent {
    /// `parentFileNameHint` (relative to the new image's folder, or absolute).
    pub hint: String,
    /// The parent's CID.
    pub cid: u32,
}

/// The descriptor of the VMDK at `path` (its CID and size, for making a child of it).
pub fn describe(path: &Path) -> Result<Descriptor, Error> {
    let file = crate::engine::EngineFile::open(
        path,
        crate::engine::Access::ForceShare,
        crate::CacheMode::Writeback,
    )?;
    let (d, _) = super::open::read_descriptor(&std::sync::Arc::new(file))?;
    Ok(d)
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Open {
        path: path.to_owned(),
        source,
    }
}

/// How the sparse extents of a new image are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SparseLayout {
    /// Grain size in sectors (a power of two in 8..=2048; qemu and VMware use 128).
    pub grain_sectors: u64,
    /// Entries per grain table (1..=512 for qemu to open the image; qemu and VMware use 512).
    pub gtes_per_gt: u32,
    /// Keep a redundant grain directory and tables.
    pub redundant: bool,
    /// Write every grain table now, as qemu-img and VMware do; else the directories are all
    /// zeros and each table is allocated by the first write into it (as some other tools
    /// leave them).
    pub preallocate_tables: bool,
}

impl Default for SparseLayout {
    fn default() -> SparseLayout {
        SparseLayout {
            grain_sectors: GRAIN_SECTORS,
            gtes_per_gt: GTES,
            redundant: true,
            preallocate_tables: true,
        }
    }
}

/// Creates an empty (all unallocated, or zero) image of `size` bytes at `path`, which must
/// not exist, with `parent` if given. streamOptimized is made by [`write_stream_optimized`].
pub fn create(
    path: &Path,
    size: u64,
    sub: Subformat,
    parent: Option<&Parent>,
) -> Result<(), Error> {
    create_with(path, size, sub, parent, &SparseLayout::default())
}

/// [`create`] with the sparse extents laid out as `sl` says.
pub fn create_with(
    path: &Path,
    size: u64,
    sub: Subformat,
    parent: Option<&Parent>,
    sl: &SparseLayout,
) -> Result<(), Error> {
    let probe = layout(SECTOR, false, false, sl).header;
    if probe.gtes_per_gt > 512 {
        return Err(Error::InvalidArgument(format!(
            "{} grain table entries (at most 512)",
            probe.gtes_per_gt
        )));
    }
    SparseHeader::parse(&probe.to_bytes()).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    if size == 0 || size % SECTOR != 0 {
        return Err(Error::InvalidArgument(format!(
            "VMDK size {size} is not a positive multiple of 512"
        )));
    }
    if parent.is_some()
        && !matches!(
            sub,
            Subformat::MonolithicSparse | Subformat::TwoGbMaxExtentSparse
        )
    {
        return Err(Error::InvalidArgument(
            "a VMDK with a parent must be sparse".to_owned(),
        ));
    }
    let mut d = Descriptor {
        cid: super::new_cid(NO_PARENT),
        parent_cid: parent.map_or(NO_PARENT, |p| p.cid),
        create_type: sub.name().to_owned(),
        parent: parent.map(|p| p.hint.clone()),
        extents: Vec::new(),
    };
    match sub {
        Subformat::MonolithicSparse => {
            let name = file_name(path)?;
            d.extents.push(line(size, ExtentKind::Sparse, name));
            write_sparse(path, size, Some(&d.to_text()), sl)
        }
        Subformat::StreamOptimized => Err(Error::InvalidArgument(
            "a streamOptimized VMDK is written whole: use convert".to_owned(),
        )),
        _ => create_split(path, size, (sub, sl), d),
    }
}

fn line(bytes: u64, kind: ExtentKind, name: String) -> ExtentLine {
    ExtentLine {
        writable: true,
        sectors: bytes / SECTOR,
        kind,
        file: Some(name),
        offset: 0,
    }
}

fn file_name(path: &Path) -> Result<String, Error> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| Error::InvalidArgument(format!("{} has no UTF-8 file name", path.display())))
}

/// `dir/name-SUFFIX.vmdk` for `dir/name.vmdk`.
fn sibling(path: &Path, suffix: &str) -> Result<(PathBuf, String), Error> {
    let stem = path.file_stem().and_then(|s| s.to_str()).ok_or_else(|| {
        Error::InvalidArgument(format!("{} has no UTF-8 file name", path.display()))
    })?;
    let name = format!("{stem}-{suffix}.vmdk");
    Ok((path.with_file_name(&name), name))
}

fn create_split(
    path: &Path,
    size: u64,
    (sub, sl): (Subformat, &SparseLayout),
    mut d: Descriptor,
) -> Result<(), Error> {
    let sparse = sub == Subformat::TwoGbMaxExtentSparse;
    let chunk = if sub == Subformat::MonolithicFlat {
        size
    } else {
        SPLIT
    };
    let mut at = 0u64;
    let mut n = 1;
    while at < size {
        let len = chunk.min(size - at);
        let suffix = match sub {
            Subformat::MonolithicFlat => "flat".to_owned(),
            _ if sparse => format!("s{n:03}"),
            _ => format!("f{n:03}"),
        };
        let (file, name) = sibling(path, &suffix)?;
        if sparse {
            write_sparse(&file, len, None, sl)?;
            d.extents.push(line(len, ExtentKind::Sparse, name));
        } else {
            crate::raw::create_raw(&file, len)?;
            d.extents.push(line(len, ExtentKind::Flat, name));
        }
        at += len;
        n += 1;
    }
    let mut f = crate::engine::create_new(path)?;
    f.write_all(d.to_text().as_bytes()).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// The layout of a new sparse extent: header, descriptor, redundant directory and tables,
/// directory and tables, then grains from `overhead`.
struct Layout {
    header: SparseHeader,
    gt_sectors: u64,
}

fn layout(size: u64, descriptor: bool, compressed: bool, sl: &SparseLayout) -> Layout {
    let capacity = size / SECTOR;
    let redundant = if sl.redundant { flags::REDUNDANT_GT } else { 0 };
    let mut h = SparseHeader {
        version: if compressed { 3 } else { 1 },
        flags: flags::NEWLINE_TEST | redundant,
        capacity,
        grain_sectors: sl.grain_sectors,
        descriptor_offset: if descriptor { 1 } else { 0 },
        descriptor_sectors: if descriptor { DESCRIPTOR_SECTORS } else { 0 },
        gtes_per_gt: sl.gtes_per_gt,
        rgd_offset: 0,
        gd_offset: 0,
        overhead: 0,
        unclean_shutdown: false,
        compress: COMPRESS_NONE,
    };
    let entries = h.gd_entries();
    let gd_sectors = (entries * 4).div_ceil(SECTOR);
    let gt_sectors = (u64::from(sl.gtes_per_gt) * 4).div_ceil(SECTOR);
    let tables = if sl.preallocate_tables {
        entries * gt_sectors
    } else {
        0
    };
    let mut at = 1 + h.descriptor_sectors;
    if sl.redundant {
        h.rgd_offset = at;
        at += gd_sectors + tables;
    }
    h.gd_offset = at;
    let end = h.gd_offset + gd_sectors + tables;
    h.overhead = end.div_ceil(sl.grain_sectors) * sl.grain_sectors;
    if compressed {
        h.flags = flags::NEWLINE_TEST | flags::COMPRESSED | flags::MARKERS;
        h.compress = COMPRESS_DEFLATE;
        h.rgd_offset = 0;
    }
    Layout {
        header: h,
        gt_sectors,
    }
}

/// A directory whose entries point at consecutive tables right after it.
fn directory(at: u64, entries: u64, gt_sectors: u64) -> Vec<u8> {
    let gd_sectors = (entries * 4).div_ceil(SECTOR);
    let mut out = Vec::with_capacity(usize::try_from(entries * 4).unwrap_or(0));
    for i in 0..entries {
        let gt = at + gd_sectors + i * gt_sectors;
        out.extend_from_slice(&u32::try_from(gt).unwrap_or(0).to_le_bytes());
    }
    out
}

fn write_sparse(
    path: &Path,
    size: u64,
    descriptor: Option<&str>,
    sl: &SparseLayout,
) -> Result<(), Error> {
    let l = layout(size, descriptor.is_some(), false, sl);
    let h = l.header;
    if h.overhead > u64::from(u32::MAX) {
        return Err(Error::InvalidArgument(format!(
            "VMDK size {size} too large"
        )));
    }
    let file = crate::engine::create_new(path)?;
    let err = io_err(path);
    file.write_all_at(&h.to_bytes(), 0).map_err(&err)?;
    if let Some(text) = descriptor {
        if text.len() as u64 >= DESCRIPTOR_SECTORS * SECTOR {
            return Err(Error::InvalidArgument(
                "VMDK descriptor too long".to_owned(),
            ));
        }
        file.write_all_at(text.as_bytes(), SECTOR).map_err(&err)?;
    }
    let entries = h.gd_entries();
    for at in [h.rgd_offset, h.gd_offset] {
        if at != 0 && sl.preallocate_tables {
            file.write_all_at(&directory(at, entries, l.gt_sectors), at * SECTOR)
                .map_err(&err)?;
        }
    }
    file.set_len(h.overhead * SECTOR).map_err(&err)?;
    file.sync_all().map_err(&err)
}

/// Marker types of streamOptimized metadata.
const MARKER_EOS: u32 = 0;
const MARKER_GT: u32 = 1;
const MARKER_GD: u32 = 2;
const MARKER_FOOTER: u32 = 3;

fn marker(sectors: u64, kind: u32) -> [u8; 512] {
    let mut m = [0u8; 512];
    m[..8].copy_from_slice(&sectors.to_le_bytes());
    m[12..16].copy_from_slice(&kind.to_le_bytes());
    m
}

/// Writes a streamOptimized image of `size` bytes at `path` (which must not exist); `read`
/// fills one grain of guest data from an offset and tells whether it holds anything but zeros.
pub fn write_stream_optimized(
    path: &Path,
    size: u64,
    mut read: impl FnMut(u64, &mut [u8]) -> Result<bool, Error>,
) -> Result<(), Error> {
    if size == 0 || size % SECTOR != 0 {
        return Err(Error::InvalidArgument(format!(
            "VMDK size {size} is not a positive multiple of 512"
        )));
    }
    let name = file_name(path)?;
    let mut d = Descriptor {
        cid: super::new_cid(NO_PARENT),
        parent_cid: NO_PARENT,
        create_type: Subformat::StreamOptimized.name().to_owned(),
        parent: None,
        extents: Vec::new(),
    };
    d.extents.push(line(size, ExtentKind::Sparse, name));
    let l = layout(size, true, true, &SparseLayout::default());
    let mut h = l.header;
    let file = crate::engine::create_new(path)?;
    let err = io_err(path);
    let mut head = h;
    head.gd_offset = GD_AT_END;
    file.write_all_at(&head.to_bytes(), 0).map_err(&err)?;
    file.write_all_at(d.to_text().as_bytes(), SECTOR)
        .map_err(&err)?;
    let gb = h.grain_bytes();
    let mut at = h.overhead * SECTOR;
    let mut gtes = vec![0u32; usize::try_from(h.gd_entries() * u64::from(GTES)).unwrap_or(0)];
    let mut grain = vec![0u8; usize::try_from(gb).unwrap_or(0)];
    for (g, entry) in gtes.iter_mut().enumerate() {
        let pos = g as u64 * gb;
        if pos >= size {
            break;
        }
        let len = usize::try_from(gb.min(size - pos)).unwrap_or(0);
        grain.fill(0);
        if !read(pos, &mut grain[..len])? {
            continue;
        }
        let packed = super::stream::deflate(&grain)?;
        let mut rec = Vec::with_capacity(packed.len() + 12);
        rec.extend_from_slice(&(pos / SECTOR).to_le_bytes());
        rec.extend_from_slice(&u32::try_from(packed.len()).unwrap_or(0).to_le_bytes());
        rec.extend_from_slice(&packed);
        rec.resize(rec.len().div_ceil(512) * 512, 0);
        *entry = u32::try_from(at / SECTOR).map_err(|_| Error::from_errno(libc::EFBIG))?;
        file.write_all_at(&rec, at).map_err(&err)?;
        at += rec.len() as u64;
    }
    let mut gd = Vec::new();
    for table in gtes.chunks(GTES as usize) {
        file.write_all_at(&marker(l.gt_sectors, MARKER_GT), at)
            .map_err(&err)?;
        at += SECTOR;
        gd.push(u32::try_from(at / SECTOR).map_err(|_| Error::from_errno(libc::EFBIG))?);
        let bytes: Vec<u8> = table.iter().flat_map(|e| e.to_le_bytes()).collect();
        file.write_all_at(&bytes, at).map_err(&err)?;
        at += l.gt_sectors * SECTOR;
    }
    let gd_bytes: Vec<u8> = gd.iter().flat_map(|e| e.to_le_bytes()).collect();
    let gd_sectors = (gd_bytes.len() as u64).div_ceil(SECTOR);
    file.write_all_at(&marker(gd_sectors, MARKER_GD), at)
        .map_err(&err)?;
    at += SECTOR;
    h.gd_offset = at / SECTOR;
    file.write_all_at(&gd_bytes, at).map_err(&err)?;
    at += gd_sectors * SECTOR;
    file.write_all_at(&marker(1, MARKER_FOOTER), at)
        .map_err(&err)?;
    file.write_all_at(&h.to_bytes(), at + SECTOR)
        .map_err(&err)?;
    file.write_all_at(&marker(0, MARKER_EOS), at + 2 * SECTOR)
        .map_err(&err)?;
    file.sync_all().map_err(&err)
}
