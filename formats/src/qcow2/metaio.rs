//! Synchronous metadata I/O on the image file (pread/pwrite/fdatasync through the page cache).
//!
//! Guest data goes through the shared engine; metadata (tables, copy-on-write sources,
//! compressed clusters) goes through this small seam, which tests wrap to record the order of
//! metadata writes and flushes. The write-back of a guest flush writes its metadata and
//! fdatasyncs on the queue's engine instead (through the same page-cached descriptor); it
//! announces each of those to this seam first ([`MetaIo::engine_write`],
//! [`MetaIo::engine_sync`]), so that the recording wrappers see one order either way. An L2
//! table a guest op misses in the cache is read on the queue's engine too (see
//! [`super::fetch`]), announced by [`MetaIo::engine_read`].

use std::sync::Arc;

use crate::engine::EngineFile;
use crate::error::Error;

/// What a metadata write or read is for (recorded by tests, logged at trace level).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MetaKind {
    /// The image header.
    Header,
    /// The L1 table.
    L1,
    /// An L2 table.
    L2,
    /// A refcount block.
    Refblock,
    /// The refcount table.
    Reftable,
    /// Guest data read for copy-on-write or decompression.
    Data,
}

/// Positioned synchronous I/O on the image file.
pub(crate) trait MetaIo: Send + Sync {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many (fewer only at end of file).
    fn read(&self, kind: MetaKind, offset: u64, buf: &mut [u8]) -> Result<usize, Error>;
    /// Writes all of `data` at `offset`.
    fn write(&self, kind: MetaKind, offset: u64, data: &[u8]) -> Result<(), Error>;
    /// Makes a range read as zeros with blocks reserved (growing the file if needed); false
    /// if the file system cannot.
    fn allocate_zeroed(&self, offset: u64, len: u64) -> Result<bool, Error>;
    /// fdatasync.
    fn sync(&self) -> Result<(), Error>;
    /// Current file size.
    fn size(&self) -> Result<u64, Error>;
    /// Grows the file to `offset + len` with blocks reserved under the new part, leaving
    /// what is there as it is (see [`EngineFile::allocate_to`]); false if the file cannot.
    fn allocate_to(&self, offset: u64, len: u64) -> Result<bool, Error>;
    /// Cuts the file back to `len` bytes (only ever an unused tail).
    fn cut_to(&self, len: u64) -> Result<(), Error>;

    /// A write-back is about to submit this metadata write to an engine (which does the
    /// write); an error fails it instead. Nothing but a trace line by default.
    fn engine_write(&self, kind: MetaKind, offset: u64, data: &[u8]) -> Result<(), Error> {
        tracing::trace!(
            ?kind,
            offset,
            len = data.len(),
            "metadata write on the engine"
        );
        Ok(())
    }

    /// Reads what the page cache holds of `buf.len()` bytes at `offset` without waiting for
    /// the device: `None` if it would have to (then a queue reads on its engine instead),
    /// else how many bytes. `None` by default.
    fn read_cached(
        &self,
        _kind: MetaKind,
        _offset: u64,
        _buf: &mut [u8],
    ) -> Result<Option<usize>, Error> {
        Ok(None)
    }

    /// A queue is about to submit this metadata read of `len` bytes to an engine (which does
    /// the read); an error fails it instead. Nothing but a trace line by default.
    fn engine_read(&self, kind: MetaKind, offset: u64, len: usize) -> Result<(), Error> {
        tracing::trace!(?kind, offset, len, "metadata read on the engine");
        Ok(())
    }

    /// A write-back is about to submit an fdatasync to an engine, after its writes finished;
    /// an error fails it instead. Nothing by default.
    fn engine_sync(&self) -> Result<(), Error> {
        Ok(())
    }

    /// Reads exactly `buf.len()` bytes; end of file is an invalid-image error.
    fn read_exact(&self, kind: MetaKind, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        let got = self.read(kind, offset, buf)?;
        if got < buf.len() {
            return Err(Error::InvalidImage(format!(
                "{kind:?} at {offset:#x} runs past the end of the file"
            )));
        }
        Ok(())
    }
}

/// [`MetaIo`] on the image's [`EngineFile`].
pub(crate) struct FileIo(pub Arc<EngineFile>);

impl MetaIo for FileIo {
    fn read(&self, kind: MetaKind, offset: u64, buf: &mut [u8]) -> Result<usize, Error> {
        tracing::trace!(?kind, offset, len = buf.len(), "metadata read");
        self.0.read_at(buf, offset)
    }

    fn write(&self, kind: MetaKind, offset: u64, data: &[u8]) -> Result<(), Error> {
        tracing::trace!(?kind, offset, len = data.len(), "metadata write");
        self.0.write_all_at(data, offset)
    }

    fn read_cached(
        &self,
        kind: MetaKind,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<Option<usize>, Error> {
        tracing::trace!(
            ?kind,
            offset,
            len = buf.len(),
            "metadata read from the page cache"
        );
        self.0.read_cached_at(buf, offset)
    }

    fn allocate_zeroed(&self, offset: u64, len: u64) -> Result<bool, Error> {
        tracing::trace!(offset, len, "zero range");
        self.0.allocate_zeroed(offset, len)
    }

    fn sync(&self) -> Result<(), Error> {
        self.0.datasync()
    }

    fn size(&self) -> Result<u64, Error> {
        self.0.size()
    }

    fn allocate_to(&self, offset: u64, len: u64) -> Result<bool, Error> {
        tracing::trace!(offset, len, "grow the file ahead");
        self.0.allocate_to(offset, len)
    }

    fn cut_to(&self, len: u64) -> Result<(), Error> {
        tracing::trace!(len, "cut the file's unused tail");
        self.0.set_len(len)
    }
}
