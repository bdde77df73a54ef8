//! Turning a guest range into pieces: host ranges for the engine, zeros, parent reads, and
//! for writes the blocks to allocate and the bitmap bits to set afterwards.

use std::sync::{Mutex, MutexGuard};

use crate::buffer::{SharedBuf, SharedBufs};
use crate::error::Error;
use crate::qcow2::backing::BackingReader;

use super::footer::DiskType;
use super::meta::Meta;

/// Bytes per VHD sector (bitmap bits, BAT entries).
pub(super) const SECTOR: u64 = 512;
const SECTOR_LEN: usize = 512;

/// Locks the metadata (a poisoned lock is an I/O error: a thread panicked mid-change).
pub fn lock(meta: &Mutex<Meta>) -> Result<MutexGuard<'_, Meta>, Error> {
    meta.lock()
        .map_err(|_| Error::WriteBackFailed("VHD metadata lock poisoned".to_owned()))
}

/// One piece of a guest op: bytes `[skip, skip + len)` of its buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seg {
    /// Engine I/O at `host`.
    Host {
        /// File offset.
        host: u64,
        /// First buffer byte.
        skip: usize,
        /// Bytes.
        len: usize,
    },
    /// Zeros (reads only).
    Zero {
        /// First buffer byte.
        skip: usize,
        /// Bytes.
        len: usize,
    },
    /// The parent's bytes at guest offset `guest` (reads only).
    Parent {
        /// Guest offset.
        guest: u64,
        /// First buffer byte.
        skip: usize,
        /// Bytes.
        len: usize,
    },
}

impl Seg {
    fn try_merge(&mut self, next: Seg) -> Option<Seg> {
        match (self, next) {
            (
                Seg::Host { host, skip, len },
                Seg::Host {
                    host: h,
                    skip: s,
                    len: l,
                },
            ) if *skip + *len == s && *host + *len as u64 == h => {
                *len += l;
                None
            }
            (Seg::Zero { skip, len }, Seg::Zero { skip: s, len: l }) if *skip + *len == s => {
                *len += l;
                None
            }
            (
                Seg::Parent { skip, len, .. },
                Seg::Parent {
                    skip: s, len: l, ..
                },
            ) if *skip + *len == s => {
                *len += l;
                None
            }
            _ => Some(next),
        }
    }
}

pub(super) fn push(segs: &mut Vec<Seg>, seg: Seg) {
    let rest = match segs.last_mut() {
        Some(last) => last.try_merge(seg),
        None => Some(seg),
    };
    if let Some(seg) = rest {
        segs.push(seg);
    }
}

/// One block's part of a guest range.
pub(super) struct Piece {
    /// Block number.
    pub block: u64,
    /// Offset inside the block.
    pub inner: u64,
    /// Offset inside the guest range.
    pub skip: usize,
    /// Bytes.
    pub len: usize,
}

pub(super) fn pieces(block_size: u64, offset: u64, len: usize) -> impl Iterator<Item = Piece> {
    let mut skip = 0usize;
    std::iter::from_fn(move || {
        if skip >= len {
            return None;
        }
        let pos = offset + skip as u64;
        let inner = pos % block_size;
        let n = usize::try_from(block_size - inner).map_or(len - skip, |b| b.min(len - skip));
        let piece = Piece {
            block: pos / block_size,
            inner,
            skip,
            len: n,
        };
        skip += n;
        Some(piece)
    })
}

/// The pieces of a read of `len` bytes at `offset` (`meta` is `None` for fixed disks).
pub fn plan_read(meta: Option<&mut Meta>, offset: u64, len: usize) -> Result<Vec<Seg>, Error> {
    let Some(meta) = meta else {
        return Ok(vec![Seg::Host {
            host: offset,
            skip: 0,
            len,
        }]);
    };
    let l = meta.layout;
    let mut segs = Vec::new();
    for p in pieces(l.block_size, offset, len) {
        let guest = offset + p.skip as u64;
        let Some(at) = meta.block_at(p.block) else {
            let seg = match l.disk_type {
                DiskType::Differencing => Seg::Parent {
                    guest,
                    skip: p.skip,
                    len: p.len,
                },
                _ => Seg::Zero {
                    skip: p.skip,
                    len: p.len,
                },
            };
            push(&mut segs, seg);
            continue;
        };
        let data = at + l.bitmap_len;
        if l.disk_type != DiskType::Differencing {
            push(
                &mut segs,
                Seg::Host {
                    host: data + p.inner,
                    skip: p.skip,
                    len: p.len,
                },
            );
            continue;
        }
        let bits = meta.bitmap(block_u32(p.block)?)?;
        for (start, n, here) in runs(bits, p.inner, p.len) {
            let skip = p.skip + super::us(start - p.inner);
            let seg = match here {
                true => Seg::Host {
                    host: data + start,
                    skip,
                    len: n,
                },
                false => Seg::Parent {
                    guest: guest + (start - p.inner),
                    skip,
                    len: n,
                },
            };
            push(&mut segs, seg);
        }
    }
    Ok(segs)
}

pub(super) fn block_u32(block: u64) -> Result<u32, Error> {
    u32::try_from(block).map_err(|_| Error::InvalidArgument(format!("block {block} too large")))
}

pub(super) fn bit(bits: &[u8], sector: u64) -> bool {
    let byte = usize::try_from(sector / 8).unwrap_or(usize::MAX);
    bits.get(byte)
        .is_some_and(|b| b & (0x80 >> (sector % 8)) != 0)
}

/// Runs of `[inner, inner + len)` whose sectors all have the same bitmap bit:
/// (start, length, bit).
fn runs(bits: &[u8], inner: u64, len: usize) -> Vec<(u64, usize, bool)> {
    let end = inner + len as u64;
    let mut out: Vec<(u64, usize, bool)> = Vec::new();
    let mut pos = inner;
    while pos < end {
        let next = ((pos / SECTOR + 1) * SECTOR).min(end);
        let here = bit(bits, pos / SECTOR);
        let n = super::us(next - pos);
        match out.last_mut() {
            Some(last) if last.2 == here => last.1 += n,
            _ => out.push((pos, n, here)),
        }
        pos = next;
    }
    out
}

/// What a write turns into.
#[derive(Debug, Default)]
pub struct WritePlan {
    /// Engine writes.
    pub segs: Vec<Seg>,
    /// Bitmap bits to set once the data is written: (block, first sector, sectors).
    pub marks: Vec<(u32, u64, u64)>,
}

/// Plans a write of `len` bytes at `offset`: allocates missing blocks, and in differencing
/// disks fills partial sectors not yet here from the parent first.
pub fn plan_write(
    meta: Option<&mut Meta>,
    parent: Option<&mut BackingReader>,
    offset: u64,
    len: usize,
) -> Result<WritePlan, Error> {
    let mut plan = WritePlan::default();
    let Some(meta) = meta else {
        plan.segs.push(Seg::Host {
            host: offset,
            skip: 0,
            len,
        });
        return Ok(plan);
    };
    meta.check_usable()?;
    let mut parent = parent;
    let l = meta.layout;
    for p in pieces(l.block_size, offset, len) {
        let block = block_u32(p.block)?;
        let at = match meta.block_at(p.block) {
            Some(at) => at,
            None => meta.allocate(block)?,
        };
        let data = at + l.bitmap_len;
        push(
            &mut plan.segs,
            Seg::Host {
                host: data + p.inner,
                skip: p.skip,
                len: p.len,
            },
        );
        if l.disk_type != DiskType::Differencing {
            continue;
        }
        let first = p.inner / SECTOR;
        let last = (p.inner + p.len as u64 - 1) / SECTOR;
        for s in partial_sectors(p.inner, p.len) {
            if !bit(meta.bitmap(block)?, s) {
                let guest = p.block * l.block_size + s * SECTOR;
                fill_from_parent(meta, parent.as_deref_mut(), guest, data + s * SECTOR)?;
                meta.mark_written(block, s, 1)?;
            }
        }
        plan.marks.push((block, first, last - first + 1));
    }
    Ok(plan)
}

/// The sectors that `[inner, inner + len)` covers only in part.
pub(super) fn partial_sectors(inner: u64, len: usize) -> Vec<u64> {
    let end = inner + len as u64;
    let mut out = Vec::new();
    if inner % SECTOR != 0 {
        out.push(inner / SECTOR);
    }
    if end % SECTOR != 0 && out.last() != Some(&(end / SECTOR)) {
        out.push(end / SECTOR);
    }
    out
}

/// Copies the parent's sector at `guest` to `host` (before a partial write over it).
pub(super) fn fill_from_parent(
    meta: &Meta,
    parent: Option<&mut BackingReader>,
    guest: u64,
    host: u64,
) -> Result<(), Error> {
    let buf = SharedBuf::new(SECTOR_LEN);
    if let Some(parent) = parent {
        let shared = SharedBufs::new(Box::new(buf.clone()))
            .ok_or_else(|| Error::InvalidArgument("sector buffer".to_owned()))?;
        parent.read(guest, &shared, 0, SECTOR_LEN)?;
    }
    meta.write_data(host, &buf.copy_out())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_split_where_the_bitmap_bit_changes() {
        let bits = [0b1100_0000u8, 0];
        assert_eq!(
            runs(&bits, 0, 2048),
            vec![(0, 1024, true), (1024, 1024, false)]
        );
        assert_eq!(runs(&bits, 100, 500), vec![(100, 500, true)]);
        assert_eq!(
            runs(&bits, 1000, 100),
            vec![(1000, 24, true), (1024, 76, false)]
        );
    }

    #[test]
    fn partial_sectors_are_the_head_and_tail_ones() {
        assert_eq!(partial_sectors(0, 1024), Vec::<u64>::new());
        assert_eq!(partial_sectors(100, 333), vec![0]);
        assert_eq!(partial_sectors(100, 1000), vec![0, 2]);
        assert_eq!(partial_sectors(512, 100), vec![1]);
    }

    #[test]
    fn pieces_split_at_block_boundaries() {
        let got: Vec<(u64, u64, usize, usize)> = pieces(4096, 4000, 5000)
            .map(|p| (p.block, p.inner, p.skip, p.len))
            .collect();
        assert_eq!(
            got,
            vec![(0, 4000, 0, 96), (1, 0, 96, 4096), (2, 0, 4192, 808)]
        );
    }
}
