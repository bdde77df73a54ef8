//! Raw images: a regular file or a block device holding the disk bytes as they are.

#![forbid(unsafe_code)]

#[cfg(test)]
mod tests;

use std::os::fd::BorrowedFd;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::buffer::IoBuffers;
use crate::engine::{self, Engine, EngineFile};
use crate::error::Error;
use crate::image::{
    BlockImage, Completion, EngineKind, Features, Format, Geometry, ImageQueue, IoOp, OpenOptions,
};
use crate::size::{SharedSize, check_growth};

/// A raw image. Ops beyond its size fail, they never grow the file; the size changes only
/// through [`BlockImage::grow`] (which also takes up a file its owner extended).
#[derive(Debug)]
pub struct RawImage {
    file: Arc<EngineFile>,
    geometry: Geometry,
    size: SharedSize,
    engine: EngineKind,
    /// Held while growing: one resize at a time.
    growing: Mutex<()>,
}

impl RawImage {
    /// Wraps an open file as a raw image with the sector size and engine of `opts`.
    pub fn new(file: Arc<EngineFile>, opts: &OpenOptions) -> Result<RawImage, Error> {
        let sector = opts.sector_size;
        if !(sector.is_power_of_two() && (512..=4096).contains(&sector)) {
            return Err(Error::InvalidArgument(format!(
                "sector size {sector} is not 512..=4096 and a power of two"
            )));
        }
        let size = file.size()?;
        opts.check_disk_size(file.path(), size)?;
        let geometry = Geometry {
            size,
            logical_sector_size: sector,
            physical_sector_size: file.physical_block_size().max(sector),
        };
        let engine = engine::resolve(opts.engine)?;
        tracing::debug!(path = %file.path().display(), size = geometry.size, ?engine, "raw image open");
        Ok(RawImage {
            file,
            geometry,
            size: SharedSize::new(size),
            engine,
            growing: Mutex::new(()),
        })
    }

    /// The host file.
    pub fn file(&self) -> &Arc<EngineFile> {
        &self.file
    }

    /// The engine each queue uses.
    pub fn engine_kind(&self) -> EngineKind {
        self.engine
    }
}

impl BlockImage for RawImage {
    fn geometry(&self) -> Geometry {
        Geometry {
            size: self.size.get(),
            ..self.geometry
        }
    }

    fn features(&self) -> Features {
        let read_only = self.file.read_only();
        Features {
            discard: !read_only,
            write_zeroes: !read_only,
            flush: true,
            read_only,
        }
    }

    fn open_queue(&self, depth: u32) -> Result<Box<dyn ImageQueue>, Error> {
        let engine = Engine::new(self.file.clone(), self.engine, depth)?;
        Ok(Box::new(RawQueue {
            engine,
            size: self.size.clone(),
        }))
    }

    /// Raw images have no metadata: nothing to do.
    fn sync_metadata(&self) -> Result<(), Error> {
        Ok(())
    }

    fn format(&self) -> Format {
        Format::Raw
    }

    /// Extends the file to `new_size` bytes unless it already holds them (its owner extended
    /// it), then serves the new size. A block device cannot be extended here, only taken up
    /// once it has grown.
    fn grow(&self, new_size: u64) -> Result<(), Error> {
        let _one = self.growing.lock().unwrap_or_else(PoisonError::into_inner);
        let old = self.size.get();
        check_growth(old, new_size, self.geometry.logical_sector_size)?;
        if self.file.size()? < new_size {
            self.file.set_len(new_size)?;
        }
        self.size.set(new_size);
        tracing::debug!(path = %self.file.path().display(), old, new = new_size, "raw image grown");
        Ok(())
    }

    fn storage_size(&self) -> Result<Option<u64>, Error> {
        self.file.size().map(Some)
    }
}

/// A data-plane queue of a [`RawImage`]: the engine plus a bounds check (against the image's
/// size now, which grows with it).
pub struct RawQueue {
    engine: Engine,
    size: SharedSize,
}

impl ImageQueue for RawQueue {
    fn submit(&mut self, op: IoOp, tag: u64) -> Result<(), Error> {
        match op.range_error(self.size.get()) {
            Some(error) => self.engine.fail(tag, error),
            None => self.engine.submit(op, tag),
        }
    }

    fn commit(&mut self) -> Result<(), Error> {
        self.engine.commit()
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> usize {
        self.engine.reap(out)
    }

    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), Error> {
        self.engine.wait(timeout)
    }

    fn peek_completions(&mut self) -> Option<bool> {
        self.engine.peek_completions()
    }

    fn notifier(&self) -> BorrowedFd<'_> {
        self.engine.notifier()
    }

    fn in_flight(&self) -> usize {
        self.engine.in_flight()
    }

    fn wait_any(
        &mut self,
        fds: &[BorrowedFd<'_>],
        timeout: Option<Duration>,
    ) -> Result<Vec<bool>, Error> {
        self.engine.wait_any(fds, timeout)
    }

    fn enable_fixed_buffers(&mut self, slots: u32) -> Result<bool, Error> {
        self.engine.enable_fixed_buffers(slots)
    }

    fn register_fixed(&mut self, slot: u32, bufs: Box<dyn IoBuffers>) -> Result<bool, Error> {
        self.engine.register_fixed(slot, bufs)
    }

    fn unregister_fixed(&mut self, slot: u32) -> Result<(), Error> {
        self.engine.unregister_fixed(slot)
    }
}

/// Creates a sparse raw image of `size` bytes. Fails if `path` exists.
pub fn create_raw(path: &Path, size: u64) -> Result<(), Error> {
    let err = |source| Error::Open {
        path: path.to_owned(),
        source,
    };
    if i64::try_from(size).is_err() {
        return Err(Error::InvalidArgument(format!(
            "image size {size} too large"
        )));
    }
    let file = crate::engine::create_new(path)?;
    file.set_len(size).map_err(err)?;
    file.sync_all().map_err(err)?;
    Ok(())
}
