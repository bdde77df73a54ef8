//! Pointing a child at its changed parent: a VMDK child names its parent's `CID` in its
//! `parentCID`, and a parent changes its CID on its first write after open, so a child whose
//! parent was written to (by `rustbk img commit`, which leaves the child's data as it is) must
//! take the parent's new CID, or rustbk and QEMU refuse to read it.
//!
//! [`set_parent`] (`rustbk img rebase`) also rewrites `parentFileNameHint`, or removes it
//! with the parent. The descriptor is rewritten in one write where it lives (its room in the
//! sparse extent, or its own file) and made durable before the call returns; its text must
//! still parse, and an embedded descriptor must still fit its room.

use std::path::Path;
use std::sync::Arc;

use crate::engine::{Access, EngineFile};
use crate::error::Error;

use super::descriptor::Descriptor;
use super::metaio::MetaKind;
use super::open::{DescriptorSite, read_descriptor};

/// Sets the `parentCID` of the VMDK at `path` (locked as a writer) to `cid`, durably.
pub fn set_parent_cid(path: &Path, cid: u32) -> Result<(), Error> {
    let file = Arc::new(EngineFile::open(
        path,
        Access::ReadWrite,
        crate::CacheMode::Writeback,
    )?);
    let (descriptor, site) = read_descriptor(&file)?;
    if descriptor.parent_cid == cid {
        return Ok(());
    }
    let text = with_parent_cid(&site.text, cid);
    write_text(&site, &text)
}

/// Points the VMDK at `path` (locked as a writer) at the parent `hint` (as stored: relative
/// to `path`'s folder unless absolute) whose CID is `cid`; `None` removes the parent
/// (`parentCID=ffffffff`, no `parentFileNameHint`). Durable when it returns.
pub fn set_parent(path: &Path, parent: Option<(&str, u32)>) -> Result<(), Error> {
    if let Some((hint, _)) = parent {
        if hint.contains(['"', '\n', '\r']) || hint.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{hint:?} cannot be stored as a VMDK parentFileNameHint"
            )));
        }
    }
    let file = Arc::new(EngineFile::open(
        path,
        Access::ReadWrite,
        crate::CacheMode::Writeback,
    )?);
    let (_, site) = read_descriptor(&file)?;
    let cid = parent.map_or(super::descriptor::NO_PARENT, |(_, cid)| cid);
    let text = with_hint(&with_parent_cid(&site.text, cid), parent.map(|(h, _)| h));
    write_text(&site, &text)
}

/// `text` with its `parentFileNameHint=` line set to `hint` (added after the `parentCID=`
/// line when missing), or removed (`None`).
fn with_hint(text: &str, hint: Option<&str>) -> String {
    let mut out = String::with_capacity(text.len() + 64);
    let mut placed = false;
    let line_of = |h: &str| format!("parentFileNameHint=\"{h}\"\n");
    for line in text.split_inclusive('\n') {
        let key = line.trim_start();
        if key.starts_with("parentFileNameHint=") {
            if let Some(h) = hint.filter(|_| !placed) {
                out.push_str(&line_of(h));
                placed = true;
            }
            continue;
        }
        out.push_str(line);
        if key.starts_with("parentCID=") && !text.contains("parentFileNameHint=") {
            if !line.ends_with('\n') {
                out.push('\n');
            }
            if let Some(h) = hint {
                out.push_str(&line_of(h));
                placed = true;
            }
        }
    }
    out
}

/// `text` with the value of its `parentCID=` line replaced.
fn with_parent_cid(text: &str, cid: u32) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        if line.trim_start().starts_with("parentCID=") {
            let nl = if line.ends_with('\n') { "\n" } else { "" };
            out.push_str(&format!("parentCID={cid:08x}{nl}"));
        } else {
            out.push_str(line);
        }
    }
    out
}

/// Writes `text` where the descriptor lives (padded with zeros to its room when embedded,
/// the file cut to it otherwise) and syncs. The new text must still parse.
fn write_text(site: &DescriptorSite, text: &str) -> Result<(), Error> {
    Descriptor::parse(text.as_bytes())?;
    match site.room {
        Some(room) => {
            if text.len() as u64 >= room {
                return Err(Error::InvalidImage(
                    "VMDK descriptor has no room for its new parentCID".to_owned(),
                ));
            }
            let mut bytes = text.as_bytes().to_vec();
            bytes.resize(usize::try_from(room).unwrap_or(0), 0);
            site.io.write(MetaKind::Descriptor, site.offset, &bytes)?;
        }
        None => {
            site.io.write(MetaKind::Descriptor, 0, text.as_bytes())?;
            if let Some(f) = &site.own_file {
                f.set_len(text.len() as u64)?;
            }
        }
    }
    site.io.sync()
}

#[cfg(test)]
mod tests {
    use super::{with_hint, with_parent_cid};

    #[test]
    fn the_hint_is_replaced_added_or_removed() {
        let with = "version=1\nparentCID=1\nparentFileNameHint=\"a.vmdk\"\nRW 8 SPARSE \"x\"\n";
        let without = "version=1\nparentCID=1\nRW 8 SPARSE \"x\"\n";
        let replaced = "version=1\nparentCID=1\nparentFileNameHint=\"b.vmdk\"\nRW 8 SPARSE \"x\"\n";
        assert_eq!(with_hint(with, Some("b.vmdk")), replaced);
        assert_eq!(with_hint(without, Some("b.vmdk")), replaced);
        assert_eq!(with_hint(with, None), without);
    }

    #[test]
    fn only_the_parent_cid_line_changes() {
        let text = "# Disk DescriptorFile\nversion=1\nCID=0000abcd\nparentCID=12345678\nx=1";
        let got = with_parent_cid(text, 0xfeed);
        assert_eq!(
            got,
            "# Disk DescriptorFile\nversion=1\nCID=0000abcd\nparentCID=0000feed\nx=1"
        );
    }
}
