//! Rewriting a qcow2 image's backing file reference (`rustbk img rebase`): the name in the
//! header cluster and the backing format extension. Nothing else of the image changes.
//!
//! The new layout is built in memory from the header as read (every other extension kept, in
//! order; then the backing format extension, the end marker and the name, as qemu lays them
//! out) and must fit in the first cluster; it is then written in one write at offset 0 and
//! made durable (fdatasync) before the call returns. The image's data and its other metadata
//! are never touched, so the rewrite is the last step of a rebase.

use std::path::Path;
use std::sync::Arc;

use crate::engine::{Access, EngineFile};
use crate::error::Error;

use super::header::{self, Header};

/// Points the qcow2 image at `path` (locked as a writer) at `backing`: its name as stored
/// (relative to the image's folder unless absolute) and the format named in the backing
/// format extension (`None`: no extension). `backing == None` removes the backing file.
pub fn set_backing(path: &Path, backing: Option<(&[u8], Option<&str>)>) -> Result<(), Error> {
    let file = Arc::new(EngineFile::open(
        path,
        Access::ReadWrite,
        crate::CacheMode::Writeback,
    )?);
    let (first, h) = read_header(&file)?;
    let bytes = header::with_backing(&first, &h, backing)?;
    // What is written must parse as the header it is meant to be.
    let mut check = first.clone();
    check[..bytes.len()].copy_from_slice(&bytes);
    let parsed = Header::parse(&check, file.size()?)?;
    let name = backing.map(|(n, _)| n);
    if parsed.backing_file.as_deref().map(|p| p.as_os_str().len()) != name.map(<[u8]>::len) {
        return Err(Error::InvalidImage(
            "the rewritten qcow2 header does not name the new backing file".to_owned(),
        ));
    }
    file.write_all_at(&bytes, 0)?;
    file.datasync()
}

/// The first cluster of the image in `file` (or all of the file if shorter) and its header.
pub(super) fn read_header(file: &EngineFile) -> Result<(Vec<u8>, Header), Error> {
    let mut head = [0u8; header::V2_HEADER_LEN as usize];
    file.read_head(&mut head)?;
    let bits = header::peek_cluster_bits(&head)?;
    let mut first = vec![0u8; 1usize << bits];
    let got = file.read_head(&mut first)?;
    first.truncate(got);
    let h = Header::parse(&first, file.size()?)?;
    first.resize(1usize << bits, 0);
    Ok((first, h))
}
