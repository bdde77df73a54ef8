//! Allocation status: what each guest range of one qcow2 image maps to
//! ([`Qcow2Image::block_status`]), and the map of a whole backing chain in the terms of
//! `qemu-img map` ([`map_chain`]; raw images answer through SEEK_DATA/SEEK_HOLE).

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::unistd::{Whence, lseek};

use crate::BackingPolicy;
use crate::confine::{Confinement, Named};
use crate::engine::{Access, EngineFile};
use crate::error::Error;
use crate::image::{BlockImage, Format, OpenOptions};

use super::layout::Mapping;
use super::{Chain, Qcow2Image, backing, read};

/// How a guest range of one image is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allocation {
    /// Not allocated here: the backing image's data, or zeros without one.
    Unallocated,
    /// Reads as zeros; `host` is a preallocated cluster, if any.
    Zero {
        /// Host offset of the preallocated range.
        host: Option<u64>,
    },
    /// Data at `host` in the image file (contiguous for the extent's length).
    Data {
        /// Host offset of the extent's first byte.
        host: u64,
    },
    /// Compressed clusters.
    Compressed,
}

/// A guest range with one allocation status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// First guest byte.
    pub start: u64,
    /// Length in bytes.
    pub length: u64,
    /// How the range is stored.
    pub allocation: Allocation,
}

impl Allocation {
    /// `self` followed by `next` (which starts `len` bytes later) as one extent, if possible.
    fn merge(self, len: u64, next: Allocation) -> Option<Allocation> {
        use Allocation::{Compressed, Data, Unallocated, Zero};
        match (self, next) {
            (Unallocated, Unallocated) | (Compressed, Compressed) => Some(self),
            (Zero { host: None }, Zero { host: None }) => Some(self),
            (Zero { host: Some(a) }, Zero { host: Some(b) }) if a.checked_add(len) == Some(b) => {
                Some(self)
            }
            (Data { host: a }, Data { host: b }) if a.checked_add(len) == Some(b) => Some(self),
            _ => None,
        }
    }
}

/// Appends an extent, merging it into the last one when they continue each other.
fn push(out: &mut Vec<Extent>, e: Extent) {
    if let Some(last) = out.last_mut() {
        let adjacent = last.start + last.length == e.start;
        if let Some(a) = adjacent
            .then(|| last.allocation.merge(last.length, e.allocation))
            .flatten()
        {
            last.allocation = a;
            last.length += e.length;
            return;
        }
    }
    out.push(e);
}

impl Qcow2Image {
    /// The allocation status of guest bytes `[offset, offset + len)` (clipped to the virtual
    /// size), adjacent ranges of the same kind merged. Reads L1/L2 tables only.
    pub fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, Error> {
        let size = self.geometry().size;
        let end = offset.saturating_add(len).min(size);
        let mut out = Vec::new();
        if offset >= end {
            return Ok(out);
        }
        let mut meta = read::lock(&self.meta)?;
        let layout = *meta.layout();
        for (gc, inner, n) in layout.split(offset, end - offset) {
            let allocation = match meta.mapping(gc)? {
                Mapping::Unallocated => Allocation::Unallocated,
                Mapping::Zero { prealloc } => Allocation::Zero {
                    host: prealloc.map(|h| h + inner),
                },
                Mapping::Data { host, .. } => Allocation::Data { host: host + inner },
                Mapping::Compressed { .. } => Allocation::Compressed,
            };
            let start = (gc << layout.cluster_bits) + inner;
            push(
                &mut out,
                Extent {
                    start,
                    length: n,
                    allocation,
                },
            );
        }
        Ok(out)
    }
}

/// One range of a backing chain's map, with the fields of `qemu-img map --output=json`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapEntry {
    /// First guest byte.
    pub start: u64,
    /// Length in bytes.
    pub length: u64,
    /// Chain level answering for the range (0: the top image).
    pub depth: u32,
    /// Some image of the chain stores the range (else it reads as zeros by default).
    pub present: bool,
    /// The range reads as zeros.
    pub zero: bool,
    /// The range holds data.
    pub data: bool,
    /// The range is stored in compressed clusters.
    pub compressed: bool,
    /// Offset in `file` where the range is stored, when it is stored plainly.
    pub offset: Option<u64>,
    /// The image file answering for the range.
    pub file: PathBuf,
}

/// One image of a chain.
enum Level {
    Qcow2(Box<Qcow2Image>),
    Raw(std::fs::File, u64),
}

struct ChainLevel {
    level: Level,
    path: PathBuf,
    size: u64,
}

/// The map of the image at `path` and of its backing chain, for the image tool: backing files
/// are followed wherever they are and probed when their format is not named
/// ([`BackingPolicy::Follow`](crate::BackingPolicy::Follow)). `force_share` opens the files
/// sharing them with writers (qemu-img's `-U`).
pub fn map_chain(path: &Path, format: Format, force_share: bool) -> Result<Vec<MapEntry>, Error> {
    let levels = open_levels(path, format, Access::new(true, force_share))?;
    let size = levels.first().map_or(0, |l| l.size);
    let mut out = Vec::new();
    map_level(&levels, 0, 0, size, &mut out)?;
    Ok(out)
}

fn open_levels(path: &Path, format: Format, access: Access) -> Result<Vec<ChainLevel>, Error> {
    let opts = OpenOptions::inspect(access == Access::ForceShare);
    let follow = Confinement::new(&BackingPolicy::Follow, path)?;
    let mut levels = Vec::new();
    let mut next = Some((path.to_owned(), format));
    while let Some((path, format)) = next.take() {
        if levels.len() > backing::MAX_CHAIN_DEPTH {
            return Err(Error::BackingChain(format!(
                "more than {} backing files",
                backing::MAX_CHAIN_DEPTH
            )));
        }
        let file = Arc::new(EngineFile::open(
            &path,
            access,
            crate::CacheMode::Writeback,
        )?);
        let level = if format == Format::Qcow2 {
            let image = Qcow2Image::open(file, &opts, &mut Chain::default())?;
            let h = image.header();
            if let Some(name) = &h.backing_file {
                let named = Named { image: &path, name };
                let below = follow.locate(&named)?;
                let fmt = backing::format_named(h.backing_format.as_deref())?;
                let fmt = follow.format(&named, fmt, || crate::probe_format(&below))?;
                next = Some((below, fmt));
            }
            Level::Qcow2(Box::new(image))
        } else {
            let f = std::fs::File::open(&path).map_err(|source| Error::Open {
                path: path.clone(),
                source,
            })?;
            Level::Raw(f, file.size()?)
        };
        let size = match &level {
            Level::Qcow2(image) => image.geometry().size,
            Level::Raw(_, size) => *size,
        };
        levels.push(ChainLevel { level, path, size });
    }
    Ok(levels)
}

fn map_level(
    levels: &[ChainLevel],
    depth: usize,
    start: u64,
    len: u64,
    out: &mut Vec<MapEntry>,
) -> Result<(), Error> {
    let Some(level) = levels.get(depth) else {
        return Ok(());
    };
    let inside = len.min(level.size.saturating_sub(start));
    let extents = match &level.level {
        Level::Qcow2(image) => image.block_status(start, inside)?,
        Level::Raw(file, _) => raw_status(file, start, inside)?,
    };
    for e in extents {
        let entry = |present, zero, data, offset| MapEntry {
            start: e.start,
            length: e.length,
            depth: u32::try_from(depth).unwrap_or(u32::MAX),
            present,
            zero,
            data,
            compressed: false,
            offset,
            file: level.path.clone(),
        };
        match e.allocation {
            Allocation::Unallocated if depth + 1 < levels.len() => {
                map_level(levels, depth + 1, e.start, e.length, out)?;
                let below = levels[depth + 1].size.max(e.start);
                let end = e.start + e.length;
                if below < end {
                    let mut tail = entry(false, true, false, None);
                    (tail.start, tail.length) = (below, end - below);
                    merge_entry(out, tail);
                }
            }
            Allocation::Unallocated => merge_entry(out, entry(false, true, false, None)),
            Allocation::Zero { host } => merge_entry(out, entry(true, true, false, host)),
            Allocation::Data { host } => merge_entry(out, entry(true, false, true, Some(host))),
            Allocation::Compressed => {
                let compressed = MapEntry {
                    compressed: true,
                    ..entry(true, false, true, None)
                };
                merge_entry(out, compressed);
            }
        }
    }
    Ok(())
}

/// Appends `e`, merging it into the last entry when all fields agree and offsets continue.
pub(crate) fn merge_entry(out: &mut Vec<MapEntry>, e: MapEntry) {
    if let Some(last) = out.last_mut() {
        let same = (
            last.depth,
            last.present,
            last.zero,
            last.data,
            last.compressed,
        ) == (e.depth, e.present, e.zero, e.data, e.compressed)
            && last.file == e.file;
        let offsets = match (last.offset, e.offset) {
            (None, None) => true,
            (Some(a), Some(b)) => a.checked_add(last.length) == Some(b),
            _ => false,
        };
        if same && offsets && last.start + last.length == e.start {
            last.length += e.length;
            return;
        }
    }
    out.push(e);
}

/// Data and holes of a raw file in `[start, start + len)` (SEEK_DATA / SEEK_HOLE).
pub fn raw_status(file: &std::fs::File, start: u64, len: u64) -> Result<Vec<Extent>, Error> {
    let end = start.saturating_add(len);
    let mut out = Vec::new();
    let mut at = start;
    while at < end {
        let data = seek(file, at, Whence::SeekData)?.unwrap_or(end).min(end);
        if data > at {
            let hole = Allocation::Zero { host: Some(at) };
            push(&mut out, extent(at, data - at, hole));
            at = data;
            continue;
        }
        let hole = seek(file, at, Whence::SeekHole)?.unwrap_or(end).min(end);
        let next = hole.max(at + 1).min(end);
        push(
            &mut out,
            extent(at, next - at, Allocation::Data { host: at }),
        );
        at = next;
    }
    Ok(out)
}

fn extent(start: u64, length: u64, allocation: Allocation) -> Extent {
    Extent {
        start,
        length,
        allocation,
    }
}

/// lseek with SEEK_DATA/SEEK_HOLE; `None` past the last data (ENXIO).
fn seek(file: &std::fs::File, at: u64, whence: Whence) -> Result<Option<u64>, Error> {
    let offset = i64::try_from(at).map_err(|_| Error::InvalidArgument(format!("offset {at}")))?;
    match lseek(file.as_raw_fd(), offset, whence) {
        Ok(pos) => Ok(u64::try_from(pos).ok()),
        Err(nix::errno::Errno::ENXIO) => Ok(None),
        Err(e) => Err(Error::Io(e.into())),
    }
}
