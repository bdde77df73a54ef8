//! The allocation map of a VMDK image and its parents, as `qemu-img map` shows it.

use std::path::Path;
use std::sync::Arc;

use crate::error::Error;
use crate::image::{BlockImage, OpenOptions};
use crate::qcow2::Chain;
use crate::qcow2::map::MapEntry;

use super::VmdkImage;
use super::open::Store;
use super::tables::Grain;

/// Opens the VMDK at `path` read-only (parents followed wherever they are, as the image tool
/// does) and maps it.
pub fn map_file(path: &Path, force_share: bool) -> Result<Vec<MapEntry>, Error> {
    let opts = OpenOptions::inspect(force_share);
    let mut chain = Chain::default();
    chain.enter(path)?;
    let file = crate::open_file(path, &opts)?;
    let image = VmdkImage::open(Arc::new(file), &opts, &mut chain)?;
    map(&image)
}

/// The map of `image`: one entry per run of guest bytes answered the same way.
pub fn map(image: &VmdkImage) -> Result<Vec<MapEntry>, Error> {
    let mut out = Vec::new();
    level(image, 0, 0, image.geometry().size, &mut out)?;
    Ok(out)
}

/// How one piece of one image answers.
enum Answer {
    Stored { file: usize, at: u64 },
    Compressed { file: usize },
    Zero,
    Below,
}

fn level(
    image: &VmdkImage,
    depth: u32,
    start: u64,
    len: u64,
    out: &mut Vec<MapEntry>,
) -> Result<(), Error> {
    let end = start + len.min(image.geometry().size.saturating_sub(start));
    let mut pos = start;
    while pos < end {
        let (answer, n) = answer(image, pos, end - pos)?;
        let entry = |file: usize, present, zero, data, offset: Option<u64>| MapEntry {
            start: pos,
            length: n,
            depth,
            present,
            zero,
            data,
            compressed: false,
            offset,
            file: image
                .files
                .get(file)
                .map_or_else(Default::default, |f| f.path().to_owned()),
        };
        match answer {
            Answer::Stored { file, at } => merge(out, entry(file, true, false, true, Some(at))),
            Answer::Compressed { file } => merge(
                out,
                MapEntry {
                    compressed: true,
                    ..entry(file, true, false, true, None)
                },
            ),
            Answer::Zero => merge(out, entry(0, true, true, false, None)),
            Answer::Below => match &image.parent {
                Some(p) => level(p, depth + 1, pos, n, out)?,
                None => merge(out, entry(0, false, true, false, None)),
            },
        }
        pos += n;
    }
    // Past a parent's end the child reads zeros.
    if end < start + len {
        merge(
            out,
            MapEntry {
                start: end,
                length: start + len - end,
                depth,
                present: false,
                zero: true,
                data: false,
                compressed: false,
                offset: None,
                file: Default::default(),
            },
        );
    }
    Ok(())
}

/// How guest byte `pos` is answered, and for how many bytes (at most `left`).
fn answer(image: &VmdkImage, pos: u64, left: u64) -> Result<(Answer, u64), Error> {
    let i = image.extents.partition_point(|e| e.start + e.len <= pos);
    let e = image
        .extents
        .get(i)
        .ok_or_else(|| Error::InvalidImage("VMDK map past the extents".to_owned()))?;
    let in_extent = (e.start + e.len - pos).min(left);
    match e.store {
        Store::Zero => Ok((Answer::Zero, in_extent)),
        Store::Flat { file, offset } => Ok((
            Answer::Stored {
                file,
                at: offset + pos - e.start,
            },
            in_extent,
        )),
        Store::Sparse { file, sparse } => {
            let mut meta = super::lock(&image.meta)?;
            let s = meta
                .sparse
                .get_mut(sparse)
                .ok_or_else(|| Error::InvalidImage("VMDK sparse index".to_owned()))?;
            let gb = s.header.grain_bytes();
            let rel = pos - e.start;
            let n = (gb - rel % gb).min(in_extent);
            let a = match s.lookup(rel / gb)? {
                Grain::Data(host) => Answer::Stored {
                    file,
                    at: host + rel % gb,
                },
                Grain::Compressed(_) => Answer::Compressed { file },
                Grain::Zero => Answer::Zero,
                Grain::Unallocated => Answer::Below,
            };
            Ok((a, n))
        }
    }
}

/// Appends `e`, merged into the last entry when it continues it.
fn merge(out: &mut Vec<MapEntry>, e: MapEntry) {
    if let Some(last) = out.last_mut() {
        let same = last.depth == e.depth
            && (last.present, last.zero, last.data, last.compressed)
                == (e.present, e.zero, e.data, e.compressed)
            && last.file == e.file
            && last.start + last.length == e.start;
        let follows = match (last.offset, e.offset) {
            (Some(a), Some(b)) => a + last.length == b,
            (None, None) => true,
            _ => false,
        };
        if same && follows {
            last.length += e.length;
            return;
        }
    }
    out.push(e);
}
