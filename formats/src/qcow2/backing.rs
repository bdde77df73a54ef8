//! Backing files: where they are, which format they have, loop and depth checks for the chain,
//! and synchronous reads through a backing image's own queue.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::buffer::{Composite, SharedBufs, zero_from};
use crate::error::Error;
use crate::image::{BlockImage, Format, ImageQueue, IoOp};

/// Most backing files below the top image.
pub const MAX_CHAIN_DEPTH: usize = 16;

/// The images opened so far along one backing chain (top first).
#[derive(Debug, Default)]
pub(crate) struct Chain {
    seen: Vec<((u64, u64), PathBuf)>,
}

impl Chain {
    /// Records `path` as the next image of the chain; refuses loops (same device and inode)
    /// and chains deeper than [`MAX_CHAIN_DEPTH`].
    pub fn enter(&mut self, path: &Path) -> Result<(), Error> {
        let meta = std::fs::metadata(path).map_err(|source| Error::Open {
            path: path.to_owned(),
            source,
        })?;
        let id = (meta.dev(), meta.ino());
        let shown = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
        if let Some((_, first)) = self.seen.iter().find(|(seen, _)| *seen == id) {
            let names: Vec<String> = self
                .seen
                .iter()
                .map(|(_, p)| p.display().to_string())
                .chain(std::iter::once(shown.display().to_string()))
                .collect();
            return Err(Error::BackingChain(format!(
                "loop through {}: {}",
                first.display(),
                names.join(" -> ")
            )));
        }
        if self.seen.len() > MAX_CHAIN_DEPTH {
            return Err(Error::BackingChain(format!(
                "more than {MAX_CHAIN_DEPTH} backing files below {}",
                self.seen
                    .first()
                    .map_or(String::new(), |(_, p)| p.display().to_string())
            )));
        }
        self.seen.push((id, shown));
        Ok(())
    }

    /// The top image of the chain (canonical path), once entered.
    pub fn top(&self) -> Option<&Path> {
        self.seen.first().map(|(_, p)| p.as_path())
    }
}

/// The format named by a backing format extension (`None`: none named).
pub(crate) fn format_named(name: Option<&str>) -> Result<Option<Format>, Error> {
    match name {
        None => Ok(None),
        Some("raw") => Ok(Some(Format::Raw)),
        Some("qcow2") => Ok(Some(Format::Qcow2)),
        Some(other) => Err(Error::UnsupportedFeature(format!(
            "backing file format {other:?}"
        ))),
    }
}

/// Bytes `[skip, skip + len)` of `bufs` as one composite.
pub(crate) fn piece(bufs: &SharedBufs, skip: usize, len: usize) -> Result<Composite, Error> {
    let mut c = Composite::new();
    if !c.push_shared(bufs, skip, len) {
        return Err(Error::InvalidArgument(
            "buffer range out of bounds".to_owned(),
        ));
    }
    Ok(c)
}

/// Writes zeros to bytes `[skip, skip + len)` of `bufs` (buffers of a read).
pub(crate) fn zero(bufs: &SharedBufs, skip: usize, len: usize) -> Result<(), Error> {
    zero_from(&piece(bufs, skip, len)?, 0);
    Ok(())
}

/// Synchronous reads from a backing image through a queue of its own. Bytes past the backing
/// image's end read as zeros.
pub(crate) struct BackingReader {
    image: Arc<dyn BlockImage>,
    queue: Option<Box<dyn ImageQueue>>,
    size: u64,
}

impl BackingReader {
    /// A reader of `image`; its queue opens on first use.
    pub fn new(image: Arc<dyn BlockImage>) -> BackingReader {
        let size = image.geometry().size;
        BackingReader {
            image,
            queue: None,
            size,
        }
    }

    /// Reads backing bytes `[offset, offset + len)` into bytes `[skip, skip + len)` of `dst`.
    pub fn read(
        &mut self,
        offset: u64,
        dst: &SharedBufs,
        skip: usize,
        len: usize,
    ) -> Result<(), Error> {
        let inside = usize::try_from(self.size.saturating_sub(offset))
            .unwrap_or(usize::MAX)
            .min(len);
        if inside > 0 {
            self.read_inside(offset, piece(dst, skip, inside)?)?;
        }
        if inside < len {
            zero(dst, skip + inside, len - inside)?;
        }
        Ok(())
    }

    fn read_inside(&mut self, offset: u64, bufs: Composite) -> Result<(), Error> {
        let queue = match &mut self.queue {
            Some(q) => q,
            None => self.queue.insert(self.image.open_queue(4)?),
        };
        let op = IoOp::Read {
            offset,
            bufs: Box::new(bufs),
        };
        queue.submit(op, 0)?;
        queue.commit()?;
        let mut done = Vec::new();
        while done.is_empty() {
            if queue.in_flight() == 0 {
                return Err(Error::from_errno(libc::EIO));
            }
            queue.wait(None)?;
            queue.reap(&mut done);
        }
        done.swap_remove(0).result
    }
}
