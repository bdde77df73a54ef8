//! Consistency check and repair of VHD images, like `qemu-img check [-r leaks|all]` (qemu
//! itself has no check for `vpc`).
//!
//! A pass (`scan`) reads the footer at the end of the file and its copy at offset 0
//! (dynamic and differencing disks: both valid, and the same bytes), the dynamic header
//! (cookie, checksum, block size), the BAT (inside the file), blktap's batmap and the parent
//! locators' data (inside the file, apart from each other), and every allocated block: after
//! all metadata, apart from every other block and ending before the footer at the end.
//! Space after the metadata that no block uses is leaked. Differencing disks get their
//! parent looked for inside the allowed directories (a [`BackingPolicy`]); what is found is
//! reported, nothing is opened beyond the parent's footer.
//!
//! Repair (`repair`): `Leaks` gives back a leak at the end of the file (new footer written
//! and synced at the end of the last block, then the file shortened); `All` also restores a
//! damaged footer at the end from a good copy (or the reverse) and rewrites a wrong header
//! checksum when nothing else is wrong. Nothing else is repaired: overlapping blocks, blocks
//! past the end of the file and a BAT past it would need dropping or inventing data. After a
//! repair the image is checked again; the report is that last pass plus what was fixed.

mod repair;
mod scan;

use std::path::Path;
use std::sync::Arc;

use crate::BackingPolicy;
use crate::engine::{Access, EngineFile, WriteRecorder};
use crate::error::Error;
use crate::qcow2::check::{MAX_MESSAGES, Repair};

use super::footer::DiskType;

/// How to check.
#[derive(Clone, Debug, Default)]
pub struct VhdCheckOptions {
    /// What may be repaired (nothing: the file is opened read-only).
    pub repair: Repair,
    /// Check an image other processes may be writing (qemu-img's `-U`; not with a repair).
    pub force_share: bool,
    /// Where a differencing disk's parent may be looked for.
    pub backing: BackingPolicy,
    /// Test hook: told every write, fdatasync and resize a repair makes.
    pub recorder: Option<Arc<dyn WriteRecorder>>,
}

/// What kind of problem a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FindingKind {
    /// Damage: reads may return wrong data, or writes may corrupt the image.
    Corruption,
    /// Space of the file nothing uses.
    Leak,
    /// Worth knowing, not counted (a parent that cannot be found here).
    Warning,
}

/// One problem, as one line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// Its kind.
    pub kind: FindingKind,
    /// What is wrong, and where.
    pub message: String,
}

/// The outcome of a check, with the field meanings of `qemu-img check` where they apply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VhdCheckReport {
    /// Fixed, dynamic or differencing (`None` if no footer could be read).
    pub disk_type: Option<DiskType>,
    /// Corruptions found (and not repaired).
    pub corruptions: u64,
    /// Leaked ranges found (and not repaired).
    pub leaks: u64,
    /// Bytes of those ranges.
    pub leaked_bytes: u64,
    /// Parts of the image that could not be checked.
    pub check_errors: u64,
    /// Corruptions repaired.
    pub corruptions_fixed: u64,
    /// Leaked ranges given back.
    pub leaks_fixed: u64,
    /// Where the image would end without leaks: after the last block or metadata, plus the
    /// footer.
    pub image_end_offset: u64,
    /// Blocks of the virtual size (dynamic and differencing disks).
    pub total_blocks: u64,
    /// Of those, the allocated ones.
    pub allocated_blocks: u64,
    /// Allocated blocks not right after the previous allocated block in the file.
    pub fragmented_blocks: u64,
    /// The parent's name (differencing disks), as the first locator gives it.
    pub backing_filename: Option<String>,
    /// Problems, one line each.
    pub findings: Vec<Finding>,
    /// Findings not kept because of [`MAX_MESSAGES`].
    pub findings_dropped: u64,
    /// What a repair did, and what it refused to do and why.
    pub repairs: Vec<String>,
}

impl VhdCheckReport {
    /// True when nothing is wrong (no corruption, no leak, no check error).
    pub fn is_clean(&self) -> bool {
        self.corruptions == 0 && self.leaks == 0 && self.check_errors == 0
    }

    fn note(&mut self, kind: FindingKind, message: String) {
        match kind {
            FindingKind::Corruption => self.corruptions += 1,
            FindingKind::Leak => self.leaks += 1,
            FindingKind::Warning => {}
        }
        if self.findings.len() < MAX_MESSAGES {
            self.findings.push(Finding { kind, message });
        } else {
            self.findings_dropped += 1;
        }
    }

    fn corrupt(&mut self, message: String) {
        self.note(FindingKind::Corruption, message);
    }
}

/// Checks the VHD at `path` and repairs what `opts.repair` allows.
pub fn check(path: &Path, opts: &VhdCheckOptions) -> Result<VhdCheckReport, Error> {
    let access = Access::new(opts.repair == Repair::None, opts.force_share);
    let mut file = EngineFile::open(path, access, crate::CacheMode::Writeback)?;
    if let Some(recorder) = opts.recorder.as_ref().filter(|_| !file.read_only()) {
        file.set_recorder(recorder.clone());
    }
    let file = Arc::new(file);
    let first = scan::scan(&file, &opts.backing)?;
    if opts.repair == Repair::None || first.report.is_clean() {
        return Ok(first.report);
    }
    repair::run(&file, first, opts)
}
