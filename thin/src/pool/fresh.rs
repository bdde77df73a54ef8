//! Data blocks known to read as zeros because no one has been handed them since the data
//! file was made: filled with zeros (`rustbk thin create-pool --preallocation full`), or
//! made sparse by `create-pool` (then such a block is a hole, or an unwritten extent the
//! pool reserved ahead).
//!
//! A first write of part of such a block writes the guest's part alone: nothing has to be
//! zeroed around it, and the worker need not ask the file system (`lseek`, which waits for
//! the data file's inode lock behind the writes that allocate) whether it is a hole; in a
//! filled file there is no unwritten extent to convert either. The pool keeps
//! a mark in two slot files next to the metadata (`<metadata>.zeroed.0` and `.1`): every
//! block at or past the mark reads zeros. In memory it keeps `next`, the lowest block never
//! handed out since the mark was loaded. Before a block at or past the mark is handed out,
//! the mark is raised past it (a window ahead, so the store is rare) and made durable: a
//! block handed out, written and never mapped before a crash is never taken for a zero block
//! after it. A pool with no mark (made by other tools, or on a device or a file that
//! existed before) has no such blocks: its holes are still found with `lseek`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::sidecar::slots;
use crate::error::{Error, Result};
use crate::pdata::refs::RefCounts;

/// The mark is raised at least this many blocks past the highest block handed out (16 GiB
/// of 64 KiB blocks): the store is an fdatasync under the pool's lock (every volume's maps
/// and refills wait for it), and it flushes the device's cache under the guests' writes, so
/// it must stay rare. On the development VM such a flush during random first writes took
/// 0.5 to 1 s, and with a window of 65536 blocks the first one came 2 s into the writes.
/// A crash forgets at most a window of zero blocks: in a filled data file they are then
/// zeroed around partial writes as recycled ones are; in a sparse one they are looked up
/// with `lseek`, as in a pool without a mark.
const WINDOW: u64 = 1 << 18;
/// The window doubles on every store that follows the last one within [`FAST`] (and is
/// [`WINDOW`] again after a slower one), up to this (64 GiB of 64 KiB blocks): random first
/// writes use up a 64 KiB block per 4 KiB write, tens of thousands a second, and a fixed
/// window of 16384 blocks stored the mark about twice a second.
const MAX_WINDOW: u64 = 1 << 20;
/// Stores closer together than this make the next window larger.
const FAST: Duration = Duration::from_secs(10);

#[derive(Serialize, Deserialize)]
struct MarkFile {
    /// Every data block at or past this one reads zeros.
    zeroed_from: u64,
    /// How the data file was made, and so how it grows. Marks written before sparse pools
    /// had one are all of filled files.
    #[serde(default)]
    data: FreshData,
}

/// How a pool's data file was made, so that its never-used blocks read zeros.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FreshData {
    /// Written with zeros (full preallocation): it grows by writing zeros too.
    #[default]
    Filled,
    /// Made sparse: it grows by its length alone.
    Sparse,
}

/// The zero blocks of a pool whose data file was filled with zeros.
#[derive(Debug)]
pub(crate) struct Fresh {
    base: PathBuf,
    data: FreshData,
    /// Lowest block never handed out since the mark was loaded.
    next: u64,
    /// The mark on disk: `next <= durable`.
    durable: u64,
    /// How far past `next` the next store puts the mark.
    window: u64,
    /// When the mark was last stored by this process.
    stored_at: Option<Instant>,
}

impl Fresh {
    /// The mark kept next to `metadata`, if the pool has one.
    pub(crate) fn load(metadata: &Path) -> Result<Option<Fresh>> {
        let base = base_for(metadata);
        let loaded = slots::load(&base).map_err(Error::io)?;
        let body = match (loaded.best, loaded.damaged) {
            (Some(body), _) => body,
            (None, true) => {
                return Err(Error::corrupt(format!(
                    "{}: no slot holds a valid zero mark",
                    base.display()
                )));
            }
            (None, false) => return Ok(None),
        };
        let mark: MarkFile = serde_json::from_slice(&body)
            .map_err(|e| Error::corrupt(format!("{}: {e}", base.display())))?;
        Ok(Some(Fresh {
            base,
            data: mark.data,
            next: mark.zeroed_from,
            durable: mark.zeroed_from,
            window: WINDOW,
            stored_at: None,
        }))
    }

    /// The mark, if the metadata agrees with it: rustbk raises the mark past a block before it
    /// hands the block out, so no block at or past it is in use. A block there that is in use
    /// was mapped by another tool (`thin_restore`, `thin_repair`, the kernel's dm-thin), and
    /// may hold data after it is freed: such a mark is removed, and no block is taken for zeros.
    pub(crate) fn checked(self, refs: &RefCounts, metadata: &Path) -> Result<Option<Fresh>> {
        if !refs.any_allocated_from(self.durable) {
            return Ok(Some(self));
        }
        tracing::warn!(
            mark = self.durable,
            metadata = %metadata.display(),
            "data blocks past the pool's zero mark are in use: the metadata was written by \
             another tool; the mark is dropped and free blocks are no longer taken for zeros"
        );
        remove(metadata)?;
        Ok(None)
    }

    /// Records durably that every block of the data device next to `metadata` reads zeros.
    pub(crate) fn create(metadata: &Path, data: FreshData) -> Result<()> {
        store(&base_for(metadata), 0, data)
    }

    /// How the data file was made.
    pub(crate) fn data(&self) -> FreshData {
        self.data
    }

    /// Takes the blocks just handed out (`got`): returns those that read zeros, after the
    /// mark on disk has been raised past them. On an error nothing is known to be zero and
    /// the caller must not hand the blocks out (the mark may not cover them).
    pub(crate) fn hand_out(&mut self, got: &[u64]) -> Result<Vec<u64>> {
        let zeroed: Vec<u64> = got.iter().copied().filter(|&b| b >= self.next).collect();
        let Some(&highest) = zeroed.iter().max() else {
            return Ok(zeroed);
        };
        let next = highest
            .checked_add(1)
            .ok_or_else(|| Error::corrupt(format!("data block {highest}")))?;
        if next > self.durable {
            let now = Instant::now();
            self.window = match self.stored_at {
                Some(at) if now.saturating_duration_since(at) < FAST => {
                    self.window.saturating_mul(2).min(MAX_WINDOW)
                }
                _ => WINDOW,
            };
            let mark = next.saturating_add(self.window);
            store(&self.base, mark, self.data)?;
            self.durable = mark;
            self.stored_at = Some(now);
        }
        self.next = next;
        Ok(zeroed)
    }
}

/// Removes the mark next to `metadata` (a pool made anew there starts without one).
pub(crate) fn remove(metadata: &Path) -> Result<()> {
    for path in slots::paths(&base_for(metadata)) {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(e)),
            _ => {}
        }
    }
    Ok(())
}

fn store(base: &Path, zeroed_from: u64, data: FreshData) -> Result<()> {
    let body = serde_json::to_vec(&MarkFile { zeroed_from, data })
        .map_err(|e| Error::InvalidArgument(format!("zero mark: {e}")))?;
    slots::store(base, &body).map_err(Error::io)
}

fn base_for(metadata: &Path) -> PathBuf {
    let mut name = metadata.as_os_str().to_owned();
    name.push(".zeroed");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_on_disk_is_past_every_block_reported_zero_before_it_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join("metadata");
        assert!(Fresh::load(&meta).unwrap().is_none(), "no mark: none");
        Fresh::create(&meta, FreshData::Filled).unwrap();
        let mut fresh = Fresh::load(&meta).unwrap().unwrap();
        assert_eq!(fresh.hand_out(&[0, 1, 2]).unwrap(), vec![0, 1, 2]);
        let on_disk = Fresh::load(&meta).unwrap().unwrap();
        assert!(
            on_disk.next > 2,
            "the mark on disk covers what was handed out"
        );
        // Blocks below `next` were (or may have been) handed out: never zero again.
        assert_eq!(fresh.hand_out(&[1, 7]).unwrap(), vec![7]);
        assert!(fresh.hand_out(&[3, 4, 5]).unwrap().is_empty());
        // Past the window the mark moves again, durably, before the answer.
        let far = WINDOW + 50;
        assert_eq!(fresh.hand_out(&[far]).unwrap(), vec![far]);
        assert!(Fresh::load(&meta).unwrap().unwrap().next > far);
        // A reload (a crash or a restart) knows nothing below the mark on disk.
        let mut again = Fresh::load(&meta).unwrap().unwrap();
        assert!(again.hand_out(&[far, far - 1, 8]).unwrap().is_empty());
    }

    #[test]
    fn stores_in_quick_succession_double_the_window_up_to_its_cap_and_a_slow_one_resets_it() {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join("metadata");
        Fresh::create(&meta, FreshData::Filled).unwrap();
        let mut fresh = Fresh::load(&meta).unwrap().unwrap();
        // Each time, the first block past the mark on disk: the mark moves again.
        let store_past = |fresh: &mut Fresh, block: u64| {
            assert_eq!(fresh.hand_out(&[block]).unwrap(), vec![block]);
            let mark = Fresh::load(&meta).unwrap().unwrap().durable;
            (mark, mark - (block + 1))
        };
        let mut gaps = Vec::new();
        let mut block = 0;
        for _ in 0..9 {
            let (mark, gap) = store_past(&mut fresh, block);
            gaps.push(gap);
            block = mark;
        }
        let doubled: Vec<u64> = (0..9).map(|i| (WINDOW << i).min(MAX_WINDOW)).collect();
        assert_eq!(gaps, doubled);
        assert!(gaps[0] < gaps[1] && gaps[1] < gaps[2], "{gaps:?}");
        assert_eq!(gaps[8], MAX_WINDOW);
        fresh.stored_at = Instant::now().checked_sub(FAST);
        assert_eq!(
            store_past(&mut fresh, block).1,
            WINDOW,
            "a slow store starts again"
        );
    }

    #[test]
    fn a_mark_that_cannot_be_stored_reports_no_block_as_zero() {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join("metadata");
        Fresh::create(&meta, FreshData::Filled).unwrap();
        let mut fresh = Fresh::load(&meta).unwrap().unwrap();
        // Both slots turned into directories: the store fails.
        remove(&meta).unwrap();
        for path in slots::paths(&base_for(&meta)) {
            std::fs::create_dir(path).unwrap();
        }
        assert!(fresh.hand_out(&[5]).is_err());
    }

    #[test]
    fn damaged_slots_are_an_error_and_removal_leaves_no_mark() {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join("metadata");
        std::fs::write(&slots::paths(&base_for(&meta))[1], b"RBKVOLS1 garbage").unwrap();
        assert!(Fresh::load(&meta).is_err());
        remove(&meta).unwrap();
        assert!(Fresh::load(&meta).unwrap().is_none());
    }
}
