//! Synchronous metadata I/O on an extent file: headers, descriptors, grain directories and
//! tables, compressed grains, and the parent data that fills a new grain. Guest data of
//! allocated grains and flat extents goes through the shared engine instead.

use std::sync::Arc;

use crate::engine::EngineFile;
use crate::error::Error;

/// What a metadata access is for (logged at trace level, seen by tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MetaKind {
    /// The sparse extent header or footer.
    Header,
    /// The text descriptor.
    Descriptor,
    /// A grain directory.
    Directory,
    /// A grain table entry or table (primary or redundant).
    Table,
    /// A compressed grain.
    Grain,
}

/// Positioned synchronous I/O on one extent file.
pub(crate) trait MetaIo: Send + Sync {
    /// Reads up to `buf.len()` bytes at `offset`; how many (fewer only at end of file).
    fn read(&self, kind: MetaKind, offset: u64, buf: &mut [u8]) -> Result<usize, Error>;
    /// Writes all of `data` at `offset`.
    fn write(&self, kind: MetaKind, offset: u64, data: &[u8]) -> Result<(), Error>;
    /// fdatasync.
    fn sync(&self) -> Result<(), Error>;
    /// The file's size now.
    fn size(&self) -> Result<u64, Error>;

    /// Reads exactly `buf.len()` bytes; a short read is an invalid-image error.
    fn read_exact(&self, kind: MetaKind, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        if self.read(kind, offset, buf)? < buf.len() {
            return Err(Error::InvalidImage(format!(
                "VMDK {kind:?} at {offset:#x} runs past the end of the file"
            )));
        }
        Ok(())
    }
}

/// [`MetaIo`] on an [`EngineFile`].
pub(crate) struct FileIo(pub Arc<EngineFile>);

impl MetaIo for FileIo {
    fn read(&self, kind: MetaKind, offset: u64, buf: &mut [u8]) -> Result<usize, Error> {
        tracing::trace!(?kind, offset, len = buf.len(), "vmdk metadata read");
        self.0.read_at(buf, offset)
    }

    fn write(&self, kind: MetaKind, offset: u64, data: &[u8]) -> Result<(), Error> {
        tracing::trace!(?kind, offset, len = data.len(), "vmdk metadata write");
        self.0.write_all_at(data, offset)
    }

    fn sync(&self) -> Result<(), Error> {
        self.0.datasync()
    }

    fn size(&self) -> Result<u64, Error> {
        self.0.size()
    }
}
