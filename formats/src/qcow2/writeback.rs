//! Write-back of cached metadata in the crash-safe order.
//!
//! 1. dirty refcount blocks, and new L2 tables (no L1 entry on disk points at them yet);
//! 2. fdatasync: guest data, refcounts and new tables are durable;
//! 3. dirty entries of the other L2 tables, then dirty L1 entries; 4. fdatasync;
//! 5. the clusters that lost their last reference in step 3 get their refcounts lowered (in
//!    memory; written by the next write-back or when their block leaves the cache).
//!
//! So no entry on disk ever points at a cluster whose refcount on disk is zero or whose data
//! is not durable, and a cluster is reused only after no entry on disk points at it. A crash
//! at any moment leaks clusters at worst.
//!
//! A write-back starts with a [`Capture`]: the bytes of both phases, copied out of the caches
//! at once, and the frees of step 5. [`Meta::write_back`] then writes it synchronously; a
//! guest flush instead runs it as engine children on its queue's io_uring (see
//! [`super::flush`](super::flush)) while the image keeps taking changes. Changes made meanwhile are not in
//! the capture: the tables they touch are dirty again and wait for the next write-back, so an
//! allocation is never written ahead of its refcount. Only one write-back runs at a time: while
//! one is [`flushing`](Meta::flushing), no other starts, and the caches evict neither dirty
//! tables (whose newer bytes could land under the older ones in flight) nor the tables it
//! writes (read back from the file, they could miss what it has not written yet).

use crate::error::Error;

use super::meta::Meta;
use super::metaio::MetaKind;

/// One metadata write of a write-back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MetaWrite {
    /// What is written.
    pub kind: MetaKind,
    /// Where in the file.
    pub offset: u64,
    /// The bytes, as they were when the write-back started.
    pub bytes: Vec<u8>,
}

/// Everything one write-back writes, taken from the caches when it starts.
#[derive(Debug, Default)]
pub(super) struct Capture {
    /// Step 1: dirty refcount blocks and new L2 tables.
    pub first: Vec<MetaWrite>,
    /// Step 3: the other dirty L2 ranges and the dirty L1 span; `None` if the write-back ends
    /// after step 2 (no table changed and nothing to free).
    pub second: Option<Vec<MetaWrite>>,
    /// Step 5: host cluster runs `(first, count)` to lose a reference.
    pub frees: Vec<(u64, u64)>,
}

impl Capture {
    /// The offsets of the tables (L2 tables, refcount blocks) it writes, for clusters of
    /// `cluster_size` bytes.
    pub(super) fn tables(&self, cluster_size: u64) -> std::collections::HashSet<u64> {
        let mask = !(cluster_size.saturating_sub(1));
        let second = self.second.iter().flatten();
        let writes = self.first.iter().chain(second);
        let tables = writes.filter(|w| matches!(w.kind, MetaKind::L2 | MetaKind::Refblock));
        tables.map(|w| w.offset & mask).collect()
    }
}

impl Meta {
    /// Writes every change made so far in the crash-safe order. Returns whether it ended with
    /// an fdatasync (nothing dirty: no I/O at all, and the caller syncs if it needs to). After
    /// a failure the image takes no more changes: what the failed write-back held is lost.
    /// Refused with [`Error::WriteBackBusy`] while a queue runs one.
    pub(super) fn write_back(&mut self) -> Result<bool, Error> {
        self.check_usable()?;
        if self.flushing {
            return Err(Error::WriteBackBusy);
        }
        let Some(capture) = self.capture()? else {
            return Ok(false);
        };
        let result = self.write_capture(capture);
        if let Err(e) = &result {
            self.fail_write_back(e);
        }
        result.map(|()| true)
    }

    /// Takes what a write-back writes, in memory only (`None` if nothing is dirty); the caches
    /// are clean afterwards. The caller must write it, or call
    /// [`fail_write_back`](Self::fail_write_back).
    pub(super) fn capture(&mut self) -> Result<Option<Capture>, Error> {
        if !self.is_dirty() {
            return Ok(None);
        }
        let tables = self.l2_cache.has_dirty() || !self.dirty_l1.is_empty();
        let mut first = self.dirty_refblocks();
        let new = std::mem::take(&mut self.new_l2);
        let new_tables = self.l2_cache.take_dirty_if(|t| new.contains(&t));
        first.extend(new_tables.into_iter().map(l2_write));
        let frees = std::mem::take(&mut self.pending_free);
        let second = match tables || !frees.is_empty() {
            true => Some(self.second_phase()?),
            false => None,
        };
        self.dirty_since = None;
        Ok(Some(Capture {
            first,
            second,
            frees,
        }))
    }

    fn second_phase(&mut self) -> Result<Vec<MetaWrite>, Error> {
        let mut second: Vec<MetaWrite> = self
            .l2_cache
            .take_dirty()
            .into_iter()
            .map(l2_write)
            .collect();
        second.extend(self.dirty_l1_span()?);
        Ok(second)
    }

    /// Writes a capture synchronously, fdatasyncs included, then lowers its refcounts.
    fn write_capture(&mut self, capture: Capture) -> Result<(), Error> {
        for w in &capture.first {
            self.io.write(w.kind, w.offset, &w.bytes)?;
        }
        self.io.sync()?;
        let Some(second) = capture.second else {
            return Ok(());
        };
        for w in &second {
            self.io.write(w.kind, w.offset, &w.bytes)?;
        }
        self.io.sync()?;
        self.free_captured(&capture.frees)
    }

    /// Step 5 of a write-back whose tables are durable.
    pub(super) fn free_captured(&mut self, frees: &[(u64, u64)]) -> Result<(), Error> {
        for &(first, count) in frees {
            self.decrement(first, count)?;
        }
        Ok(())
    }

    /// Records that a write-back failed: the image takes no more changes.
    pub(super) fn fail_write_back(&mut self, e: &Error) {
        tracing::error!(error = %e, "qcow2 metadata write-back failed");
        self.failed = Some(e.to_string());
    }

    /// Whether metadata changed longer ago than the configured age and no queue runs a
    /// write-back (its end starts the age again): then a queue starts one in the background.
    pub(super) fn write_back_due(&mut self) -> bool {
        let now = std::time::Instant::now();
        let since = *self.dirty_since.get_or_insert(now);
        !self.flushing && now.saturating_duration_since(since) >= self.writeback_age
    }

    /// Fails if an earlier write-back failed.
    pub(super) fn check_usable(&self) -> Result<(), Error> {
        match &self.failed {
            Some(why) => Err(Error::WriteBackFailed(why.clone())),
            None => Ok(()),
        }
    }

    /// Whether a write-back has anything to write.
    pub(super) fn is_dirty(&self) -> bool {
        self.l2_cache.has_dirty()
            || !self.dirty_l1.is_empty()
            || self.refcounts_dirty()
            || !self.pending_free.is_empty()
    }

    /// The span of the L1 table from the first to the last dirty entry (marked clean).
    fn dirty_l1_span(&mut self) -> Result<Option<MetaWrite>, Error> {
        let (Some(&first), Some(&last)) = (self.dirty_l1.first(), self.dirty_l1.last()) else {
            return Ok(None);
        };
        self.dirty_l1.clear();
        let span = usize::try_from(first)
            .ok()
            .zip(usize::try_from(last).ok())
            .and_then(|(f, l)| self.l1.get(f..=l))
            .ok_or_else(|| Error::InvalidImage("dirty L1 entry out of range".to_owned()))?;
        let offset = first
            .checked_mul(8)
            .and_then(|b| b.checked_add(self.l1_offset))
            .ok_or_else(|| Error::InvalidImage("dirty L1 entry out of range".to_owned()))?;
        Ok(Some(MetaWrite {
            kind: MetaKind::L1,
            offset,
            bytes: span.iter().flat_map(|e| e.to_be_bytes()).collect(),
        }))
    }
}

fn l2_write((offset, bytes): (u64, Vec<u8>)) -> MetaWrite {
    MetaWrite {
        kind: MetaKind::L2,
        offset,
        bytes,
    }
}
