//! Pointing a differencing VHD at another parent (`rustbk img rebase`; `vhd-util modify -p`
//! does the same): the parent locators, and the parent's unique id, time stamp and name in
//! the dynamic header, checksum included. The footer (and its copy at offset 0) does not
//! name the parent and is left as it is.
//!
//! The locators are rewritten in the space the image reserved for them, with the codes it
//! already has (`MacX`: a file URL of the relative name, `W2ku`: the absolute path, `W2ru`:
//! the relative name, UTF-16LE, as rustbk's create and vhd-util write them); locators of other
//! codes are cleared, so no reader follows them to the old parent. A name that does not fit
//! in a locator's space is refused before anything is written.
//!
//! Order: the locators' data is written and made durable first (fdatasync), then the header
//! (one 1024-byte write) and fdatasync again. A crash in between leaves the locators naming
//! the new parent and the header the old parent's unique id: the image is refused at open
//! (the unique ids differ), never read over the wrong parent, and the same rebase run again
//! completes it.

use std::path::Path;

use crate::engine::{Access, EngineFile};
use crate::error::Error;

use super::create::ParentInfo;
use super::dynamic::{self, DynHeader, HEADER_LEN, Locator, UNUSED};
use super::footer::{DiskType, FOOTER_LEN};
use super::metaio;

/// Most BAT entries read to check that no block lies in a locator's space.
const MAX_BAT_ENTRIES: u64 = 16 << 20;

/// Makes the differencing VHD at `path` (locked as a writer) the child of the VHD named
/// `name` (relative to `path`'s folder unless absolute; stored as given).
pub fn set_parent(path: &Path, name: &Path) -> Result<(), Error> {
    let parent = ParentInfo::read(path, name)?;
    let file = EngineFile::open(path, Access::ReadWrite, crate::CacheMode::Writeback)?;
    let footer = super::read_footer(&file)?;
    if footer.disk_type != DiskType::Differencing {
        return Err(Error::InvalidArgument(format!(
            "{} is a {:?} VHD, not a differencing disk: only a differencing VHD has a parent",
            path.display(),
            footer.disk_type
        )));
    }
    let at = footer.data_offset;
    let mut raw = [0u8; HEADER_LEN];
    metaio::read_exact(&file, at, &mut raw, "dynamic header")?;
    let header = DynHeader::parse(&raw)?;
    let writes = new_locators(&mut raw, &parent, &header, &file, at)?;
    let name = parent.stored.to_string_lossy();
    dynamic::set_parent(&mut raw, &parent.unique_id, parent.timestamp, &name);
    let raw = dynamic::with_checksum(&raw);
    for (offset, bytes) in &writes {
        file.write_all_at(bytes, *offset)?;
    }
    file.datasync()?;
    file.write_all_at(&raw, at)?;
    file.datasync()
}

/// Sets the locator slots of `raw` for `parent`; returns the data to write `(offset, bytes)`.
fn new_locators(
    raw: &mut [u8; HEADER_LEN],
    parent: &ParentInfo,
    header: &DynHeader,
    file: &EngineFile,
    header_at: u64,
) -> Result<Vec<(u64, Vec<u8>)>, Error> {
    let data = parent.locator_data();
    let file_size = file.size()?;
    let blocks = block_starts(file, header)?;
    let span = header.bitmap_len() + u64::from(header.block_size);
    let mut writes = Vec::new();
    for i in 0..8 {
        let Some(old) = dynamic::locator(raw.as_slice(), i) else {
            continue;
        };
        let Some((_, bytes)) = data.iter().find(|(code, _)| *code == old.code) else {
            dynamic::set_locator(raw, i, None);
            continue;
        };
        let room = old.space_bytes();
        let end = old.offset.saturating_add(room);
        let what = String::from_utf8_lossy(&old.code).into_owned();
        if bytes.len() as u64 > room {
            return Err(Error::InvalidArgument(format!(
                "the new parent name needs {} bytes in the {what} parent locator, which has \
                 room for {room}: use a shorter name (a relative one)",
                bytes.len()
            )));
        }
        let outside = old.offset < header_at.saturating_add(HEADER_LEN as u64)
            || end > file_size.saturating_sub(FOOTER_LEN as u64)
            || blocks
                .iter()
                .any(|&b| b < end && b.saturating_add(span) > old.offset);
        if outside {
            return Err(Error::InvalidImage(format!(
                "VHD parent locator {what} at {:#x} ({room} bytes) overlaps other data",
                old.offset
            )));
        }
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        dynamic::set_locator(raw, i, Some(&Locator { len, ..old }));
        let mut padded = bytes.clone();
        padded.resize(super::us(room.min(1 << 20)).max(bytes.len()), 0);
        writes.push((old.offset, padded));
    }
    Ok(writes)
}

/// File offsets of the allocated blocks.
fn block_starts(file: &EngineFile, header: &DynHeader) -> Result<Vec<u64>, Error> {
    let entries = u64::from(header.max_entries).min(MAX_BAT_ENTRIES);
    let mut bat = vec![0u8; super::us(entries * 4)];
    metaio::read_exact(file, header.table_offset, &mut bat, "BAT")?;
    Ok(bat
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .filter(|&e| e != UNUSED)
        .map(|e| u64::from(e) * 512)
        .collect())
}
