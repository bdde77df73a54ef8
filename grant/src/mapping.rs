//! Mapped guest pages: the ring, indirect pages and data buffers.

use std::sync::Arc;

use rustbk_formats::{IoBuffers, IoVec};
use rustbk_ring::{PAGE_SIZE, SharedMemory};

use crate::sys::Region;
use crate::{Access, Error};

/// Guest pages mapped into the backend, page `i` at byte offset `i * PAGE_SIZE`.
///
/// Unmapped when dropped. The guest can change the bytes at any moment, so the contents are
/// only ever copied out ([`GrantMapping::read`]) or handed to the kernel as I/O buffers.
pub struct GrantMapping {
    region: Region,
    access: Access,
    /// Platform state released after the region is unmapped (e.g. a gntdev unmap ioctl).
    _release: Option<Box<dyn Send + Sync>>,
}

impl std::fmt::Debug for GrantMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantMapping")
            .field("len", &self.region.len())
            .field("access", &self.access)
            .finish()
    }
}

impl GrantMapping {
    pub(crate) fn new(
        region: Region,
        access: Access,
        release: Option<Box<dyn Send + Sync>>,
    ) -> Self {
        GrantMapping {
            region,
            access,
            _release: release,
        }
    }

    /// Number of mapped pages.
    pub fn pages(&self) -> usize {
        self.region.len() / PAGE_SIZE
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.region.len()
    }

    /// Always false: a mapping has at least one page.
    pub fn is_empty(&self) -> bool {
        self.region.len() == 0
    }

    /// How the pages are mapped.
    pub fn access(&self) -> Access {
        self.access
    }

    /// Copies `out.len()` bytes at `offset` into private memory.
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Result<(), Error> {
        self.region.read(offset, out)
    }

    /// Copies `data` into the guest pages at `offset`; the mapping must be writable.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<(), Error> {
        if self.access != Access::ReadWrite {
            return Err(Error::OutOfBounds {
                offset,
                len: data.len(),
                size: 0,
            });
        }
        self.region.write(offset, data)
    }

    /// Turns a writable mapping into shared-ring memory.
    pub fn into_ring(self) -> Result<RingPages, Error> {
        if self.access != Access::ReadWrite {
            return Err(Error::BadMapSize(self.pages()));
        }
        Ok(RingPages(self))
    }
}

/// A writable mapping holding a shared ring.
#[derive(Debug)]
pub struct RingPages(GrantMapping);

#[allow(unsafe_code)]
// SAFETY: the pages stay mapped readable and writable, at a fixed address, until the
// RingPages (which owns the mapping) is dropped.
unsafe impl SharedMemory for RingPages {
    fn as_ptr(&self) -> *mut u8 {
        self.0.region.as_ptr()
    }

    fn len(&self) -> usize {
        self.0.region.len()
    }
}

/// A byte range inside one page of a mapping (one blkif segment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageSpan {
    /// Index of the page in the mapping.
    pub page: usize,
    /// Byte offset inside the page.
    pub offset: usize,
    /// Length in bytes; `offset + len <= PAGE_SIZE`.
    pub len: usize,
}

/// Which way data moves between the image and the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The backend writes guest memory (a guest READ).
    ToGuest,
    /// The backend reads guest memory (a guest WRITE).
    FromGuest,
}

/// Guest memory handed to an image queue as I/O buffers; keeps its mappings alive.
#[derive(Debug)]
pub struct GuestBuf {
    iovecs: Vec<IoVec>,
    mappings: Vec<Arc<GrantMapping>>,
}

impl GuestBuf {
    /// Builds iovecs for `spans` of one `mapping`; adjacent spans become one iovec.
    pub fn new(mapping: GrantMapping, spans: &[PageSpan], dir: Direction) -> Result<Self, Error> {
        let mapping = Arc::new(mapping);
        Self::from_parts(spans.iter().map(|s| (&mapping, *s)), dir)
    }

    /// Builds iovecs for spans of several mappings (persistently mapped pages, say), in order.
    pub fn from_parts<'a>(
        parts: impl Iterator<Item = (&'a Arc<GrantMapping>, PageSpan)>,
        dir: Direction,
    ) -> Result<Self, Error> {
        let mut buf = GuestBuf {
            iovecs: Vec::new(),
            mappings: Vec::new(),
        };
        for (mapping, span) in parts {
            if dir == Direction::ToGuest && mapping.access() != Access::ReadWrite {
                return Err(Error::GrantReadOnly(rustbk_ring::GrantRef(0)));
            }
            let start = checked_span_start(mapping, &span)?;
            push_merged(
                &mut buf.iovecs,
                mapping.region.as_ptr().wrapping_add(start),
                span.len,
            );
            if !buf.mappings.last().is_some_and(|m| Arc::ptr_eq(m, mapping)) {
                buf.mappings.push(Arc::clone(mapping));
            }
        }
        Ok(buf)
    }

    /// Total bytes covered by the iovecs.
    pub fn len(&self) -> usize {
        self.iovecs.iter().map(|v| v.len).sum()
    }

    /// True when no bytes are covered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn checked_span_start(mapping: &GrantMapping, span: &PageSpan) -> Result<usize, Error> {
    let bad = || Error::OutOfBounds {
        offset: span.offset,
        len: span.len,
        size: PAGE_SIZE,
    };
    let in_page = span.offset.checked_add(span.len).ok_or_else(bad)?;
    if in_page > PAGE_SIZE || span.len == 0 || span.page >= mapping.pages() {
        return Err(bad());
    }
    Ok(span.page * PAGE_SIZE + span.offset)
}

fn push_merged(iovecs: &mut Vec<IoVec>, base: *mut u8, len: usize) {
    if let Some(last) = iovecs.last_mut() {
        if last.base.wrapping_add(last.len) == base {
            last.len += len;
            return;
        }
    }
    iovecs.push(IoVec { base, len });
}

#[allow(unsafe_code)]
// SAFETY: every iovec points inside one of `mappings` (checked in `from_parts`), which this
// object keeps alive, so the memory stays mapped and in place until the GuestBuf is dropped;
// ToGuest buffers come only from writable mappings (checked in `from_parts`).
unsafe impl IoBuffers for GuestBuf {
    fn iovecs(&self) -> &[IoVec] {
        &self.iovecs
    }
}
