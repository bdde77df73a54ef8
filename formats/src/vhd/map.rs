//! The allocation map of a VHD and its parents, as `qemu-img map` shows it.
//!
//! qemu's `vpc` driver answers per block: an allocated block of a dynamic disk is data at
//! its file offset (the sector bitmap is not looked at, and holes of the file inside the
//! block are not reported), an unallocated one reads as zeros and counts as present. A
//! fixed disk is data at the guest offset, and its file's holes (`SEEK_HOLE`) show as data
//! that reads as zeros. qemu cannot read differencing disks; here they map like a qcow2
//! backing chain: inside an allocated block, sectors whose bitmap bit is set are data of
//! this level, the others (and whole unallocated blocks) come from the parent, one level
//! (`depth`) further down.

use std::path::Path;

use crate::error::Error;
use crate::image::{BlockImage, OpenOptions};
use crate::qcow2::Chain;
use crate::qcow2::map::{Allocation, MapEntry, merge_entry, raw_status};

use super::VhdImage;
use super::footer::DiskType;
use super::meta::Meta;

/// Opens the VHD at `path` read-only (parents followed wherever they are, as the image tool
/// does) and maps it.
pub fn map_file(path: &Path, force_share: bool) -> Result<Vec<MapEntry>, Error> {
    let opts = OpenOptions::inspect(force_share);
    let mut chain = Chain::default();
    chain.enter(path)?;
    let file = crate::open_file(path, &opts)?;
    let image = super::open_vhd(file, &opts, &mut chain)?;
    map(&image)
}

/// The map of `image`: one entry per run of guest bytes answered the same way.
pub fn map(image: &VhdImage) -> Result<Vec<MapEntry>, Error> {
    let mut out = Vec::new();
    level(image, 0, 0, image.geometry().size, &mut out)?;
    Ok(out)
}

/// How one piece of one level answers.
enum Answer {
    /// Guest data at this file offset.
    Data(u64),
    /// Zeros, stored nowhere (an unallocated block of a dynamic disk).
    Zero,
    /// The parent's data.
    Below,
}

/// The fields of one entry of `image` at `depth`.
struct At<'a> {
    image: &'a VhdImage,
    depth: u32,
}

impl At<'_> {
    fn entry(
        &self,
        start: u64,
        length: u64,
        flags: (bool, bool, bool),
        offset: Option<u64>,
    ) -> MapEntry {
        let (present, zero, data) = flags;
        MapEntry {
            start,
            length,
            depth: self.depth,
            present,
            zero,
            data,
            compressed: false,
            offset,
            file: self.image.file.path().to_owned(),
        }
    }
}

fn level(
    image: &VhdImage,
    depth: u32,
    start: u64,
    len: u64,
    out: &mut Vec<MapEntry>,
) -> Result<(), Error> {
    let at = At { image, depth };
    let end = start.saturating_add(len.min(image.geometry().size.saturating_sub(start)));
    match &image.meta {
        None => fixed(&at, start, end, out)?,
        Some(meta) => {
            let mut pos = start;
            while pos < end {
                let (answer, n) = {
                    let mut meta = super::plan::lock(meta)?;
                    answer(&mut meta, pos, end - pos)?
                };
                match answer {
                    Answer::Data(host) => {
                        merge_entry(out, at.entry(pos, n, (true, false, true), Some(host)))
                    }
                    Answer::Zero => merge_entry(out, at.entry(pos, n, (true, true, false), None)),
                    Answer::Below => match &image.parent {
                        Some(parent) => level(parent, depth + 1, pos, n, out)?,
                        None => merge_entry(out, at.entry(pos, n, (false, true, false), None)),
                    },
                }
                pos += n;
            }
        }
    }
    // Past a parent's end the child reads zeros.
    let wanted = start.saturating_add(len);
    if end < wanted {
        merge_entry(out, at.entry(end, wanted - end, (false, true, false), None));
    }
    Ok(())
}

/// A fixed disk: data at the guest offset; the file's holes read as zeros.
fn fixed(at: &At<'_>, start: u64, end: u64, out: &mut Vec<MapEntry>) -> Result<(), Error> {
    let path = at.image.file.path();
    let file = std::fs::File::open(path).map_err(|source| Error::Open {
        path: path.to_owned(),
        source,
    })?;
    for e in raw_status(&file, start, end - start)? {
        let entry = match e.allocation {
            Allocation::Data { host } => {
                at.entry(e.start, e.length, (true, false, true), Some(host))
            }
            Allocation::Zero { host } => at.entry(e.start, e.length, (true, true, true), host),
            _ => at.entry(e.start, e.length, (true, false, true), Some(e.start)),
        };
        merge_entry(out, entry);
    }
    Ok(())
}

/// How guest byte `pos` is answered, and for how many bytes (at most `left`, inside one
/// block).
fn answer(meta: &mut Meta, pos: u64, left: u64) -> Result<(Answer, u64), Error> {
    let l = meta.layout;
    let block = pos / l.block_size;
    let in_block = pos % l.block_size;
    let n = (l.block_size - in_block).min(left);
    let Some(host) = meta.block_at(block) else {
        return Ok(match l.disk_type {
            DiskType::Differencing => (Answer::Below, n),
            _ => (Answer::Zero, n),
        });
    };
    let data = host + l.bitmap_len + in_block;
    if l.disk_type != DiskType::Differencing {
        return Ok((Answer::Data(data), n));
    }
    let index = u32::try_from(block)
        .map_err(|_| Error::InvalidImage(format!("VHD block {block} past the BAT")))?;
    let bits = meta.bitmap(index)?;
    let is_set = |s: u64| {
        bits.get(super::us(s / 8))
            .is_some_and(|b| b & (0x80u8 >> (s % 8)) != 0)
    };
    let first = in_block / 512;
    let here = is_set(first);
    let last = (in_block + n).div_ceil(512);
    let same = (first..last).take_while(|&s| is_set(s) == here).count() as u64;
    let run = (same * 512 - (in_block % 512)).min(n);
    Ok(match here {
        true => (Answer::Data(data), run),
        false => (Answer::Below, run),
    })
}
