//! Preallocation of the data file ahead of the blocks handed out.
//!
//! On a file system, the first write into a hole of the data file allocates the file's
//! blocks on the write path. Data blocks are handed out in ascending order, so those writes
//! all land at the end of the file's extent tree and queue behind one another there (ext4
//! runs them at about half the rate of writes into the same holes at random places). The
//! pool therefore reserves the file system's blocks ahead of the highest block handed out, a
//! window at a time, as unwritten extents: they still read as zeros (so a new block needs
//! no zeroing), and a first write into them only marks its part written. Blocks handed out
//! again below the window may have been punched out by passdown; their runs are reserved
//! again one by one.

use rustbk_formats::EngineFile;

use crate::error::{Error, Result};

/// Bytes reserved past the highest block handed out, at most.
const WINDOW: u64 = 32 << 20;

/// How far the data file is reserved, from the start of this process's use of the pool.
#[derive(Debug, Default)]
pub(crate) struct Prealloc {
    /// Bytes `[0, end)` hold no hole made before the pool was opened here, except where
    /// passdown punched one.
    end: u64,
    /// The file system cannot preallocate: stop trying.
    off: bool,
}

/// Blocks just handed out, and what to reserve them in.
pub(crate) struct Handout<'a> {
    /// The data device.
    pub data: &'a EngineFile,
    pub block_size: u64,
    /// Data blocks of the pool.
    pub blocks: u64,
    /// The blocks handed out.
    pub got: &'a [u64],
    /// Passdown may have punched holes below the window.
    pub punched: bool,
}

impl Prealloc {
    /// Reserves the file system's blocks under the blocks just handed out, and a window past
    /// them. A failure only costs speed: it is logged, never returned.
    pub(crate) fn reserve(&mut self, h: &Handout<'_>) {
        if self.off || h.got.is_empty() {
            return;
        }
        if let Err(e) = self.try_reserve(h) {
            tracing::warn!(error = %e, "data file preallocation stopped");
            self.off = true;
        }
    }

    fn try_reserve(&mut self, h: &Handout<'_>) -> Result<()> {
        let limit = bytes(h.blocks, h.block_size)?;
        for (first, count) in runs(h.got) {
            let start = bytes(first, h.block_size)?;
            let end = bytes(first.saturating_add(count), h.block_size)?.min(limit);
            if end <= start {
                continue;
            }
            if end <= self.end {
                if h.punched && !self.fallocate(h.data, start, end - start)? {
                    return Ok(());
                }
                continue;
            }
            let from = match h.punched {
                true => start,
                false => start.max(self.end),
            };
            let to = end.max(end.saturating_add(WINDOW).min(limit));
            if !self.fallocate(h.data, from, to - from)? {
                return Ok(());
            }
            self.end = self.end.max(to);
        }
        Ok(())
    }

    /// False (and preallocation off) where the file system cannot do it.
    fn fallocate(&mut self, data: &EngineFile, offset: u64, len: u64) -> Result<bool> {
        if data.preallocate(offset, len)? {
            return Ok(true);
        }
        self.off = true;
        Ok(false)
    }
}

fn bytes(block: u64, block_size: u64) -> Result<u64> {
    block
        .checked_mul(block_size)
        .ok_or_else(|| Error::corrupt(format!("data block {block} is past any device")))
}

/// `got` as runs of consecutive blocks: (first, count).
fn runs(got: &[u64]) -> Vec<(u64, u64)> {
    let mut sorted = got.to_vec();
    sorted.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for b in sorted {
        match out.last_mut() {
            Some((first, count)) if first.checked_add(*count) == Some(b) => *count += 1,
            _ => out.push((b, 1)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::{WINDOW, runs};
    use crate::pool::{PoolOptions, VolumeSpec};
    use crate::port::PoolPort;
    use crate::testing::new_pool;

    const BS: u64 = 64 << 10;

    fn allocated(path: &std::path::Path) -> u64 {
        std::fs::metadata(path).unwrap().blocks() * 512
    }

    #[test]
    fn blocks_handed_out_are_reserved_ahead_and_still_read_as_holes() {
        let t = new_pool(BS, 2048, PoolOptions::default());
        let spec = VolumeSpec {
            size: 64 << 20,
            ..VolumeSpec::default()
        };
        t.pool.create_volume(1, spec).unwrap();
        assert_eq!(allocated(&t.data), 0);
        let mut port = t.pool.open_port(1).unwrap();
        let got = port.provision(8).unwrap();
        let data = t.pool.data_file();
        for &b in &got {
            assert!(
                data.is_hole(b * BS, BS),
                "block {b} must still read as a hole"
            );
        }
        let highest = got.iter().max().unwrap() + 1;
        assert!(allocated(&t.data) >= highest * BS + WINDOW);
        // The next batches fall inside the window: nothing more is reserved.
        let before = allocated(&t.data);
        port.provision(8).unwrap();
        assert_eq!(allocated(&t.data), before);
        // Never past the pool's data blocks.
        while port.provision(64).is_ok_and(|b| !b.is_empty()) {}
        assert!(allocated(&t.data) <= 2048 * BS);
    }

    #[test]
    fn runs_join_consecutive_blocks_in_any_order() {
        assert_eq!(runs(&[7, 3, 4, 9, 8, 5]), vec![(3, 3), (7, 3)]);
        assert_eq!(runs(&[]), vec![]);
        assert_eq!(runs(&[u64::MAX, 0]), vec![(0, 1), (u64::MAX, 1)]);
    }
}
