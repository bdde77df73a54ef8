//! Consistency check and repair of qcow2 images, like `qemu-img check [-r leaks|all]`.
//!
//! A pass walks every structure that references clusters (header, active L1 table and its L2
//! tables, internal snapshots and their tables, the snapshot table, the refcount table and its
//! blocks) and counts the references each host cluster gets. The counts are compared with the
//! stored refcounts: a stored refcount lower than the references is a corruption (writes could
//! free or overwrite live data), a higher one is a leak (wasted space only). Entries pointing at
//! misaligned offsets or a cluster or more past the end of the file are corruptions, and so is a
//! COPIED flag that disagrees with the stored refcount.
//!
//! Repair: [`Repair::Leaks`] lowers leaked refcounts to the reference count in place;
//! [`Repair::All`] also rebuilds the refcount structure (a new refcount table and blocks at the
//! end of the file, switched to in a crash-safe order) when any refcount is too low or a
//! refcount block is damaged, and fixes COPIED flags. Entries pointing past the end of the file
//! are not repairable (as in QEMU): they stay corruptions. A repair that leaves no corruption
//! clears the dirty and corrupt bits. After a repair the image is checked again and the report
//! describes that second pass, plus what was fixed.
//!
//! Memory is bounded: the reference counts take 4 bytes per cluster of the image *file* (capped
//! at [`MAX_CHECK_CLUSTERS`]), every table read is bounded by the header's own caps, and the
//! messages kept are capped at [`MAX_MESSAGES`].

mod pass;
mod refs;
mod repair;
mod snapshots;
mod stored;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::Arc;

use crate::engine::{Access, EngineFile};
use crate::error::Error;

use super::header::Header;
use super::metaio::{FileIo, MetaIo};

/// Largest image file checked, in clusters (4 bytes of memory each).
pub const MAX_CHECK_CLUSTERS: u64 = 1 << 28;
/// Most messages kept in a report (the rest are counted in `messages_dropped`).
pub const MAX_MESSAGES: usize = 10_000;

/// What `check` may repair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Repair {
    /// Nothing: the image is opened read-only.
    #[default]
    None,
    /// Leaked clusters (refcounts higher than their references).
    Leaks,
    /// Leaks and every corruption that can be repaired safely.
    All,
}

/// The outcome of a check, with the field meanings of `qemu-img check`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Corruptions found (and not repaired).
    pub corruptions: u64,
    /// Leaked clusters found (and not repaired).
    pub leaks: u64,
    /// Errors that kept parts of the image from being checked (unreadable tables).
    pub check_errors: u64,
    /// Corruptions repaired.
    pub corruptions_fixed: u64,
    /// Leaks repaired.
    pub leaks_fixed: u64,
    /// One past the last byte of the highest cluster in use or referenced.
    pub image_end_offset: u64,
    /// Guest clusters (virtual size / cluster size, rounded up).
    pub total_clusters: u64,
    /// Guest clusters allocated in the active L1 table (data, compressed, preallocated zero).
    pub allocated_clusters: u64,
    /// Allocated guest clusters not following the previous one in the file.
    pub fragmented_clusters: u64,
    /// Compressed guest clusters.
    pub compressed_clusters: u64,
    /// The image was marked dirty (lazy refcounts) when the check started.
    pub dirty: bool,
    /// The image was marked corrupt when the check started.
    pub marked_corrupt: bool,
    /// A repair cleared the dirty/corrupt bits.
    pub marked_clean: bool,
    /// Findings, one line each, in QEMU's wording (`ERROR ...`, `Leaked cluster ...`).
    pub messages: Vec<String>,
    /// Messages not kept because of [`MAX_MESSAGES`].
    pub messages_dropped: u64,
}

impl CheckReport {
    /// True when nothing is wrong (no corruption, no leak, no check error).
    pub fn is_clean(&self) -> bool {
        self.corruptions == 0 && self.leaks == 0 && self.check_errors == 0
    }

    fn note(&mut self, message: String) {
        if self.messages.len() < MAX_MESSAGES {
            self.messages.push(message);
        } else {
            self.messages_dropped += 1;
        }
    }
}

/// Progress of a check: `(done, total)` in arbitrary units, called now and then.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// Checks the qcow2 image at `path` and repairs what `repair` allows.
pub fn check(path: &Path, repair: Repair) -> Result<CheckReport, Error> {
    check_with_progress(path, repair, false, &mut |_, _| {})
}

/// [`check`] reporting its progress; `force_share` (qemu-img's `-U`, only without repair)
/// checks an image other processes may be writing.
pub fn check_with_progress(
    path: &Path,
    repair: Repair,
    force_share: bool,
    progress: Progress<'_>,
) -> Result<CheckReport, Error> {
    let access = Access::new(repair == Repair::None, force_share);
    let file = Arc::new(EngineFile::open(path, access, crate::CacheMode::Writeback)?);
    let io: Arc<dyn MetaIo> = Arc::new(FileIo(file));
    let header = super::read_header(&*io)?;
    let first = pass::run(&*io, &header, progress)?;
    if repair == Repair::None {
        return Ok(first.report);
    }
    let (dirty, corrupt) = (first.report.dirty, first.report.marked_corrupt);
    let mut report = if first.is_sound() {
        first.report
    } else {
        repaired(&*io, &header, first, repair)?
    };
    report.dirty = dirty;
    report.marked_corrupt = corrupt;
    if report.corruptions == 0 && report.check_errors == 0 {
        let header = super::read_header(&*io)?;
        report.marked_clean = repair::mark_clean(&*io, &header)?;
    }
    Ok(report)
}

/// Repairs what `first` found, then checks again; the report is the last pass's plus the
/// numbers of fixed problems.
fn repaired(
    io: &dyn MetaIo,
    header: &Header,
    first: pass::Pass,
    repair: Repair,
) -> Result<CheckReport, Error> {
    let (corruptions, leaks) = (first.report.corruptions, first.report.leaks);
    repair::apply(io, header, first, repair)?;
    let header = super::read_header(io)?;
    let mut last = pass::run(io, &header, &mut |_, _| {})?;
    if repair == Repair::All && !last.fixes.is_empty() {
        repair::fix_entries(io, &last.fixes)?;
        last = pass::run(io, &header, &mut |_, _| {})?;
    }
    let mut report = last.report;
    report.corruptions_fixed = corruptions.saturating_sub(report.corruptions);
    report.leaks_fixed = leaks.saturating_sub(report.leaks);
    Ok(report)
}

/// The dirty and corrupt bits of a header.
fn header_flags(h: &Header) -> (bool, bool) {
    use super::header::incompat;
    (
        h.incompatible & incompat::DIRTY != 0,
        h.incompatible & incompat::CORRUPT != 0,
    )
}
