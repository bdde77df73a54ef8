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

use crate::error::Error;

use super::meta::Meta;
use super::metaio::MetaKind;

impl Meta {
    /// Writes every change made so far in the crash-safe order. Returns whether it ended with
    /// an fdatasync (nothing dirty: no I/O at all, and the caller syncs if it needs to). After
    /// a failure the image takes no more changes: what the failed write-back held is lost.
    pub(super) fn write_back(&mut self) -> Result<bool, Error> {
        self.check_usable()?;
        let result = self.write_back_in_order();
        if result.is_ok() {
            self.dirty_since = None;
        }
        if let Err(e) = &result {
            tracing::error!(error = %e, "qcow2 metadata write-back failed");
            self.failed = Some(e.to_string());
        }
        result
    }

    /// Writes back if metadata changed longer ago than the configured age. A failure is
    /// logged and marks the image failed (the next flush reports it).
    pub(super) fn write_back_if_old(&mut self) {
        let now = std::time::Instant::now();
        let since = *self.dirty_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= self.writeback_age {
            // A failure is recorded in `failed` and logged by `write_back`.
            let _ = self.write_back();
        }
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

    fn write_back_in_order(&mut self) -> Result<bool, Error> {
        if !self.is_dirty() {
            return Ok(false);
        }
        let tables = self.l2_cache.has_dirty() || !self.dirty_l1.is_empty();
        self.flush_refcounts()?;
        let new = std::mem::take(&mut self.new_l2);
        for (offset, bytes) in self.l2_cache.take_dirty_if(|t| new.contains(&t)) {
            self.io.write(MetaKind::L2, offset, &bytes)?;
        }
        self.io.sync()?;
        if !tables && self.pending_free.is_empty() {
            return Ok(true);
        }
        for (offset, bytes) in self.l2_cache.take_dirty() {
            self.io.write(MetaKind::L2, offset, &bytes)?;
        }
        self.write_dirty_l1()?;
        self.io.sync()?;
        for (first, count) in std::mem::take(&mut self.pending_free) {
            self.decrement(first, count)?;
        }
        Ok(true)
    }

    /// Writes the span of the L1 table from the first to the last dirty entry.
    fn write_dirty_l1(&mut self) -> Result<(), Error> {
        let (Some(&first), Some(&last)) = (self.dirty_l1.first(), self.dirty_l1.last()) else {
            return Ok(());
        };
        self.dirty_l1.clear();
        let span = usize::try_from(first)
            .ok()
            .zip(usize::try_from(last).ok())
            .and_then(|(f, l)| self.l1.get(f..=l))
            .ok_or_else(|| Error::InvalidImage("dirty L1 entry out of range".to_owned()))?;
        let bytes: Vec<u8> = span.iter().flat_map(|e| e.to_be_bytes()).collect();
        self.io
            .write(MetaKind::L1, self.l1_offset + first * 8, &bytes)
    }
}
