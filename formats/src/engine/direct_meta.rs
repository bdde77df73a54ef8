//! Metadata writes through the O_DIRECT descriptor, for formats whose metadata shares pages
//! with guest data (a VHD block's sector bitmap sits in the page of its first data sectors).
//!
//! Mixing the two descriptors on one page loses writes: a metadata write through the page
//! cache reads the page in and dirties it, an O_DIRECT data write of another part of the page
//! then goes to the disk, and the later write-back of the cached page puts the old data back.
//! Writing the metadata with O_DIRECT too, one aligned block at a time, never leaves a dirty
//! cached page, and the kernel drops cached copies of every range it writes directly.

use std::io;
use std::os::unix::fs::FileExt;

use crate::buffer::AlignedBuf;
use crate::error::Error;

use super::file::EngineFile;

impl EngineFile {
    /// Writes all of `data` at `offset` as format metadata: with O_DIRECT when the file has an
    /// O_DIRECT descriptor, reading the aligned blocks at both ends first so that their other
    /// bytes stay as they are; through the page cache otherwise, and when the last aligned
    /// block would reach past the end of the file. The aligned blocks around
    /// `data` must hold metadata only (never guest data another op may be writing).
    pub fn write_meta_at(&self, data: &[u8], offset: u64) -> Result<(), Error> {
        let Some((direct, align)) = self.direct_descriptor() else {
            return self.write_all_at(data, offset);
        };
        if self.read_only() {
            return Err(Error::ReadOnly);
        }
        let mask = u64::from(align.offset) - 1;
        let end = offset
            .checked_add(data.len() as u64)
            .and_then(|e| e.checked_add(mask))
            .ok_or_else(|| Error::from_errno(libc::EINVAL))?
            & !mask;
        let start = offset & !mask;
        let exact_end = offset + data.len() as u64;
        if end != exact_end && end > self.size()? {
            // A whole last block would grow the file past the data (a footer must stay last).
            return self.write_all_at(data, offset);
        }
        let span = usize::try_from(end - start).map_err(|_| Error::from_errno(libc::EINVAL))?;
        let mut buf = AlignedBuf::zeroed(span);
        let head = usize::try_from(offset - start).unwrap_or(0);
        if head != 0 || span != data.len() {
            // Bytes past the end of the file read as the zeros the buffer starts with.
            read_full(direct, buf.as_mut_slice(), start)?;
        }
        buf.as_mut_slice()[head..head + data.len()].copy_from_slice(data);
        direct.write_all_at(buf.as_slice(), start)?;
        if let Some(recorder) = self.recorder() {
            recorder.written(offset, data);
        }
        Ok(())
    }
}

/// Reads up to `buf.len()` bytes at `offset`, stopping early only at the end of the file.
fn read_full(file: &std::fs::File, buf: &mut [u8], offset: u64) -> Result<(), Error> {
    let mut got = 0;
    while let Some(rest) = buf.get_mut(got..).filter(|r| !r.is_empty()) {
        match file.read_at(rest, offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::cache::CacheMode;
    use crate::engine::{Access, EngineFile};

    #[test]
    fn unaligned_metadata_writes_keep_the_bytes_around_them() {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let path = dir.path().join("meta.img");
        let before: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &before).unwrap();
        let file = EngineFile::open(&path, Access::new(false, false), CacheMode::None).unwrap();
        assert!(
            file.direct_descriptor().is_some(),
            "the test needs O_DIRECT on {}",
            dir.path().display()
        );
        file.write_meta_at(&[0xaa; 700], 1000).unwrap();
        file.write_meta_at(&[0xbb; 4], 4095).unwrap();
        // Past the end, aligned: the file grows to exactly its end, the gap reads as zeros.
        file.write_meta_at(&[0xcc; 512], 9216).unwrap();
        // Past the end, unaligned: the file ends exactly after the bytes written.
        file.write_meta_at(&[0xdd; 100], 9728).unwrap();
        let after = std::fs::read(&path).unwrap();
        let mut want = before.clone();
        want[1000..1700].fill(0xaa);
        want[4095..4099].fill(0xbb);
        want.resize(9216, 0);
        want.extend_from_slice(&[0xcc; 512]);
        want.extend_from_slice(&[0xdd; 100]);
        assert_eq!(after, want);
    }
}
