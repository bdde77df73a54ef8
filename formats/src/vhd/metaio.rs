//! Synchronous metadata I/O on a VHD file (footer, header, BAT, bitmaps, locator data): reads
//! through the page cache, writes with O_DIRECT when the file has an O_DIRECT descriptor (they
//! share pages with guest data). Guest data goes through the shared engine instead.

use std::sync::Arc;

use crate::engine::EngineFile;
use crate::error::Error;

/// Positioned synchronous I/O on the image file.
pub struct VhdIo(pub Arc<EngineFile>);

impl VhdIo {
    /// Reads exactly `buf.len()` bytes at `offset`; a short read names `what`.
    pub fn read_exact(&self, offset: u64, buf: &mut [u8], what: &str) -> Result<(), Error> {
        read_exact(&self.0, offset, buf, what)
    }

    /// Writes all of `data` at `offset`: with O_DIRECT when guest data is written so (see
    /// `EngineFile::write_meta_at`), since bitmaps and the footer share pages with data.
    pub fn write(&self, offset: u64, data: &[u8], what: &str) -> Result<(), Error> {
        tracing::trace!(what, offset, len = data.len(), "vhd metadata write");
        self.0.write_meta_at(data, offset)
    }

    /// Makes `[offset, offset + len)` read as zeros (zero-range, else written zeros).
    pub fn zero(&self, offset: u64, len: u64) -> Result<(), Error> {
        if len == 0 || self.0.allocate_zeroed(offset, len)? {
            return Ok(());
        }
        let chunk = vec![0u8; 1 << 20];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(chunk.len() as u64);
            self.write(offset + done, &chunk[..super::us(n)], "zeros")?;
            done += n;
        }
        Ok(())
    }

    /// Reserves file system space for `[offset, offset + len)` without changing the file size
    /// (nothing where the file system cannot).
    pub fn preallocate(&self, offset: u64, len: u64) -> Result<(), Error> {
        self.0.preallocate(offset, len).map(drop)
    }

    /// fdatasync (nothing in the `unsafe` cache mode).
    pub fn sync(&self) -> Result<(), Error> {
        self.0.datasync()
    }

    /// The file size.
    pub fn size(&self) -> Result<u64, Error> {
        self.0.size()
    }
}

/// Reads exactly `buf.len()` bytes at `offset` of `file`; a short read names `what`.
pub fn read_exact(file: &EngineFile, offset: u64, buf: &mut [u8], what: &str) -> Result<(), Error> {
    tracing::trace!(what, offset, len = buf.len(), "vhd metadata read");
    let got = file.read_at(buf, offset)?;
    if got < buf.len() {
        return Err(Error::InvalidImage(format!(
            "VHD {what} at {offset:#x} ({} bytes) runs past the end of the file",
            buf.len()
        )));
    }
    Ok(())
}
