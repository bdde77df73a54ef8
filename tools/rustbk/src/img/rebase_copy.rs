//! The data copy of a safe `rustbk img rebase`: the ranges the image does not answer itself
//! (from its allocation map, as `rustbk img map` shows it; when the new backing file is in the
//! old chain, only the ranges answered above it) are read through the image, so
//! through its old backing chain, and compared with the new backing file in [`SUB`]-byte
//! pieces; the pieces that differ are written into the image through its format's normal
//! write path (zeros as write-zeroes ops where the format takes them). Past the new backing
//! file's end the new chain reads zeros. The image is then flushed and its metadata synced,
//! before the caller rewrites the reference.

use std::path::Path;

use anyhow::Context;
use rustbk_formats::engine::Access;
use rustbk_formats::qcow2::map::{MapEntry, map_chain};
use rustbk_formats::{Format, ImageQueue, IoOp, SharedBuf};

use super::pipe::{self, CHUNK, DEPTH, QUEUE_DEPTH};
use super::progress::Progress;
use super::rebase::{RebaseArgs, Target};

/// Bytes compared (and written when they differ) at a time.
const SUB: usize = 64 << 10;

/// Copies into FILE what its old chain reads differently from the new one (`None`: zeros).
pub fn copy(args: &RebaseArgs, format: Format, target: Option<&Target>) -> anyhow::Result<()> {
    let below = match target {
        Some(t) => level_in_chain(&args.file, format, &t.path)?,
        None => None,
    };
    let ranges = uncovered(&args.file, format, below).with_context(|| {
        format!(
            "Could not read the backing chain of '{}'",
            args.file.display()
        )
    })?;
    let child = super::open_cached(
        &args.file,
        Some(format),
        Access::ReadWrite,
        args.cache.into(),
    )?;
    let new = match target {
        Some(t) => Some(super::open(
            &t.path,
            Some(t.format),
            super::read_access(false),
        )?),
        None => None,
    };
    let mut job = Job {
        child: child.open_queue(QUEUE_DEPTH)?,
        new_size: new.as_ref().map_or(0, |n| n.geometry().size),
        new: new
            .as_ref()
            .map(|n| n.open_queue(QUEUE_DEPTH))
            .transpose()?,
        zeroes: child.features().write_zeroes,
        progress: Progress::new(args.progress && !args.quiet, false),
        copied: 0,
    };
    job.run(&ranges)?;
    pipe::flush(&mut *job.child)?;
    job.progress.finish();
    let copied = job.copied;
    drop(job);
    child.sync_metadata()?;
    tracing::debug!(copied, file = %args.file.display(), "rebase copied the differing ranges");
    Ok(())
}

/// The level of `new` in the backing chain of `file` (1: its backing file), if it is there.
fn level_in_chain(file: &Path, format: Format, new: &Path) -> anyhow::Result<Option<u32>> {
    let Ok(wanted) = std::fs::metadata(new) else {
        return Ok(None);
    };
    let chain = super::info::read_chain(file, Some(super::rebase::arg_of(format)), true)?;
    for (level, info) in chain.iter().enumerate().skip(1) {
        let meta = std::fs::metadata(&info.filename)
            .with_context(|| format!("Cannot stat '{}'", info.filename.display()))?;
        if super::convert::same_file(&meta, &wanted) {
            return Ok(u32::try_from(level).ok());
        }
    }
    Ok(None)
}

/// The ranges `file` does not answer itself (adjacent ones merged). When the new backing file
/// is level `below` of the old chain, the ranges answered by it or further down read the same
/// through both chains and are left out, as qemu-img leaves them out.
fn uncovered(file: &Path, format: Format, below: Option<u32>) -> anyhow::Result<Vec<(u64, u64)>> {
    let entries: Vec<MapEntry> = match format {
        Format::Vpc => rustbk_formats::vhd::map::map_file(file, true)?,
        Format::Vmdk => rustbk_formats::vmdk::map::map_file(file, true)?,
        _ => map_chain(file, format, true)?,
    };
    let mut out: Vec<(u64, u64)> = Vec::new();
    // Depth 0 without `present`: the chain stops at the image itself (no backing file, or
    // past a shorter one's end) and the old chain reads zeros there.
    let differs = |e: &&MapEntry| (e.depth > 0 || !e.present) && below.is_none_or(|b| e.depth < b);
    for e in entries.iter().filter(differs) {
        match out.last_mut() {
            Some(last) if last.0 + last.1 == e.start => last.1 += e.length,
            _ => out.push((e.start, e.length)),
        }
    }
    Ok(out)
}

/// The comparison and copy.
struct Job {
    child: Box<dyn ImageQueue>,
    new: Option<Box<dyn ImageQueue>>,
    new_size: u64,
    /// The image takes write-zeroes ops.
    zeroes: bool,
    progress: Progress,
    /// Bytes written into the image.
    copied: u64,
}

impl Job {
    /// Handles `ranges`, [`DEPTH`] chunks at a time.
    fn run(&mut self, ranges: &[(u64, u64)]) -> anyhow::Result<()> {
        let total: u64 = ranges.iter().map(|r| r.1).sum();
        let pieces: Vec<(u64, u64)> = ranges
            .iter()
            .flat_map(|&(s, l)| pipe::chunks(s, l, CHUNK))
            .collect();
        let mut done = 0u64;
        for window in pieces.chunks(DEPTH) {
            self.window(window)?;
            done += window.iter().map(|p| p.1).sum::<u64>();
            self.progress.update(done, total);
        }
        Ok(())
    }

    /// Reads `window` through both chains, then writes the differing pieces into the image.
    fn window(&mut self, window: &[(u64, u64)]) -> anyhow::Result<()> {
        let old = pipe::read_all(&mut *self.child, window)?;
        let new = self.read_new(window)?;
        let mut tag = 0u64;
        for ((&(offset, _), old), new) in window.iter().zip(&old).zip(&new) {
            let bytes = old.copy_out();
            for (skip, len) in differing(&bytes, new) {
                let at = offset + skip as u64;
                if self.zeroes && bytes[skip..skip + len].iter().all(|&b| b == 0) {
                    let op = IoOp::WriteZeroes {
                        offset: at,
                        len: len as u64,
                    };
                    self.child
                        .submit(op, tag)
                        .context("Cannot queue a write of zeros")?;
                } else {
                    pipe::write(&mut *self.child, at, old, (skip, len), tag)?;
                }
                self.copied += len as u64;
                tag += 1;
            }
        }
        while self.child.in_flight() > 0 {
            self.child
                .wait(Some(std::time::Duration::from_millis(100)))?;
            pipe::reap(&mut *self.child, "write into the image")?;
        }
        Ok(())
    }

    /// What the new chain reads at each piece of `window` (zeros past its end).
    fn read_new(&mut self, window: &[(u64, u64)]) -> anyhow::Result<Vec<Vec<u8>>> {
        let inside: Vec<(u64, u64)> = window
            .iter()
            .map(|&(o, l)| (o, l.min(self.new_size.saturating_sub(o))))
            .collect();
        let wanted: Vec<(u64, u64)> = inside.iter().copied().filter(|r| r.1 > 0).collect();
        let mut bufs: std::vec::IntoIter<SharedBuf> = match &mut self.new {
            Some(q) if !wanted.is_empty() => pipe::read_all(&mut **q, &wanted)?.into_iter(),
            _ => Vec::new().into_iter(),
        };
        let mut out = Vec::with_capacity(window.len());
        for (&(_, len), &(_, got)) in window.iter().zip(&inside) {
            let mut bytes = match got {
                0 => Vec::new(),
                _ => bufs.next().map(|b| b.copy_out()).unwrap_or_default(),
            };
            bytes.resize(usize::try_from(len)?, 0);
            out.push(bytes);
        }
        Ok(out)
    }
}

/// The runs of [`SUB`]-byte pieces (the last may be shorter) where `a` and `b` differ, as
/// `(skip, len)`, adjacent ones merged.
fn differing(a: &[u8], b: &[u8]) -> Vec<(usize, usize)> {
    let sub = SUB;
    let mut out: Vec<(usize, usize)> = Vec::new();
    for (i, (x, y)) in a.chunks(sub).zip(b.chunks(sub)).enumerate() {
        if x == y {
            continue;
        }
        let skip = i * sub;
        match out.last_mut() {
            Some(last) if last.0 + last.1 == skip => last.1 += x.len(),
            _ => out.push((skip, x.len())),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{SUB, differing};

    #[test]
    fn only_differing_pieces_are_reported_and_neighbours_merge() {
        let sub = SUB;
        let a = vec![0u8; 4 * sub + 100];
        let mut b = a.clone();
        b[sub + 5] = 1;
        b[2 * sub] = 1;
        b[4 * sub + 99] = 1;
        assert_eq!(differing(&a, &b), vec![(sub, 2 * sub), (4 * sub, 100)]);
        assert!(differing(&a, &a).is_empty());
    }
}
