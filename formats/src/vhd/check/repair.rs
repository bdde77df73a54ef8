//! Repairs of the VHD checker, each crash-safe on its own, then a new pass.
//!
//! * Footer at the end restored from the copy (`All`): the copy is written over the last
//!   512 bytes and synced. Until then, and if that write is torn, readers use the copy.
//! * Header checksum (`All`, only when nothing else but the footers is wrong): the header
//!   is written back with its checksum field set to what its bytes give, and synced.
//! * Footer copy restored from the end (`All`): the end footer's bytes are written at offset
//!   0 and synced; readers take the end footer all along.
//! * Leak at the end (`Leaks`, `All`): the footer is written at the end of the last block (or
//!   of the metadata) and synced, then the file is shortened to just after it (and synced).
//!   Before the shortening the file still ends with its old, valid footer; after it, with
//!   the new one. When the leak is shorter than a footer the two overlap, so that is only
//!   done when a good copy at offset 0 covers a torn write.

use std::sync::Arc;

use crate::engine::EngineFile;
use crate::error::Error;
use crate::qcow2::check::Repair;

use super::super::dynamic;
use super::super::footer::{DiskType, FOOTER_LEN};
use super::scan::{CopyState, Scan, scan};
use super::{VhdCheckOptions, VhdCheckReport};

const FOOTER: u64 = FOOTER_LEN as u64;

/// One repair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fix {
    EndFromCopy,
    HeaderChecksum,
    CopyFromEnd,
    TrailingLeak,
}

/// Repairs what `first` found, one fix at a time with a new pass after each; the report is
/// the last pass plus what was fixed and what was refused.
pub(super) fn run(
    file: &Arc<EngineFile>,
    first: Scan,
    opts: &VhdCheckOptions,
) -> Result<VhdCheckReport, Error> {
    let (corruptions, leaks) = (first.report.corruptions, first.report.leaks);
    let mut done = Vec::new();
    let mut last = first;
    while let Some(fix) = next_fix(&last, opts.repair, &done) {
        done.push(apply(file, &last, fix)?);
        last = scan(file, &opts.backing)?;
    }
    let refused = refusals(&last, opts.repair);
    let mut report = last.report;
    report.corruptions_fixed = corruptions.saturating_sub(report.corruptions);
    report.leaks_fixed = leaks.saturating_sub(report.leaks);
    report.repairs = done;
    report.repairs.extend(refused);
    Ok(report)
}

/// The first repair `s` calls for that `repair` allows and that was not done yet.
fn next_fix(s: &Scan, repair: Repair, done: &[String]) -> Option<Fix> {
    let all = repair == Repair::All;
    let header_trusted =
        s.footer.disk_type == DiskType::Fixed || s.header.as_ref().is_some_and(|h| h.checksum_ok);
    let candidates = [
        (Fix::EndFromCopy, all && end_from_copy_ok(s)),
        (Fix::HeaderChecksum, all && header_checksum_ok(s)),
        (Fix::CopyFromEnd, all && copy_from_end_ok(s)),
        (Fix::TrailingLeak, header_trusted && trailing_leak_ok(s)),
    ];
    candidates
        .into_iter()
        .find(|(f, ok)| *ok && !done.iter().any(|d| d == describe(*f)))
        .map(|(f, _)| f)
}

fn end_from_copy_ok(s: &Scan) -> bool {
    !s.end_ok
        && s.header.as_ref().is_some_and(|h| h.checksum_ok)
        && s.used_end.is_some_and(|u| u + FOOTER <= s.size)
}

fn header_checksum_ok(s: &Scan) -> bool {
    s.end_ok
        && s.other_corruptions == 0
        && s.used_end.is_some()
        && s.header
            .as_ref()
            .is_some_and(|h| !h.checksum_ok && fixed_fields_hold(&h.raw))
}

/// The header fields every writer sets the same way hold their values: the unused data
/// offset (all ones) and the header version (1.0). A header that damage reached there is
/// not trusted to be right elsewhere.
fn fixed_fields_hold(raw: &[u8; dynamic::HEADER_LEN]) -> bool {
    raw[8..16] == [0xff; 8] && raw[24..28] == 0x0001_0000u32.to_be_bytes()
}

fn copy_from_end_ok(s: &Scan) -> bool {
    s.end_ok
        && matches!(s.copy, CopyState::Damaged | CopyState::Differs)
        && !s.first_sector_used
        && s.header.is_some()
}

fn trailing_leak_ok(s: &Scan) -> bool {
    let Some(used) = s.used_end else {
        return false;
    };
    let footer_at = s.size - FOOTER;
    s.end_ok && used < footer_at && (footer_at - used >= FOOTER || s.copy == CopyState::Good)
}

fn describe(f: Fix) -> &'static str {
    match f {
        Fix::EndFromCopy => {
            "Repaired: the footer at the end was rewritten from its copy at offset 0"
        }
        Fix::HeaderChecksum => "Repaired: the dynamic header's checksum was rewritten",
        Fix::CopyFromEnd => {
            "Repaired: the footer copy at offset 0 was rewritten from the footer at the end"
        }
        Fix::TrailingLeak => {
            "Repaired: the leaked space at the end was given back (footer moved, file shortened)"
        }
    }
}

fn apply(file: &EngineFile, s: &Scan, fix: Fix) -> Result<String, Error> {
    tracing::info!(path = %file.path().display(), ?fix, "vhd check repair");
    match fix {
        Fix::EndFromCopy => {
            file.write_all_at(&s.footer.raw, s.size - FOOTER)?;
            file.datasync()?;
        }
        Fix::HeaderChecksum => {
            if let Some(h) = &s.header {
                file.write_all_at(&dynamic::with_checksum(&h.raw), s.footer.data_offset)?;
                file.datasync()?;
            }
        }
        Fix::CopyFromEnd => {
            file.write_all_at(&s.footer.raw, 0)?;
            file.datasync()?;
        }
        Fix::TrailingLeak => {
            if let Some(used) = s.used_end {
                file.write_all_at(&s.footer.raw, used)?;
                file.datasync()?;
                file.set_len(used + FOOTER)?;
            }
        }
    }
    Ok(describe(fix).to_owned())
}

/// Why what is still wrong after the repairs was left alone.
fn refusals(s: &Scan, repair: Repair) -> Vec<String> {
    let mut out = Vec::new();
    let trailing = s.used_end.is_some_and(|u| u + FOOTER < s.size);
    if trailing && s.header.as_ref().is_some_and(|h| !h.checksum_ok) {
        out.push(
            "Not repaired: the leak at the end, because the dynamic header's checksum is wrong \
             and its BAT cannot be trusted (use -r all if nothing else is damaged)"
                .to_owned(),
        );
    }
    if s.report.leaks > u64::from(trailing) {
        out.push(
            "Not repaired: leaked space between blocks (giving it back would mean moving blocks)"
                .to_owned(),
        );
    }
    if repair == Repair::All && s.header.as_ref().is_some_and(|h| !h.checksum_ok) {
        out.push(
            "Not repaired: the dynamic header's checksum, because other damage means its \
             content cannot be trusted"
                .to_owned(),
        );
    }
    if s.other_corruptions > 0 {
        out.push(format!(
            "Not repaired: {} problems with blocks or metadata (repairing them would drop or \
             invent data)",
            s.other_corruptions
        ));
    }
    if !s.end_ok && repair == Repair::All {
        let why = match s.header.as_ref().is_some_and(|h| h.checksum_ok) {
            true => "blocks reach into it (the file is too short)",
            false => "the dynamic header cannot be trusted to say where blocks end",
        };
        out.push(format!(
            "Not repaired: the footer at the end, because {why}"
        ));
    }
    out
}
