//! qcow2 images (versions 2 and 3, QEMU's `docs/interop/qcow2.txt`).
//!
//! * Reads: L1 → L2 (LRU cache bounded in bytes) → standard clusters read by the shared engine
//!   straight into the caller's buffers (adjacent host clusters coalesced), zero clusters,
//!   unallocated clusters from the backing image (zeros past its end or without one),
//!   compressed clusters (deflate or zstd).
//! * Writes: in place when the cluster's refcount is one; otherwise a new cluster is allocated
//!   and written in one engine write holding the guest data plus the copy-on-write head and
//!   tail (just the guest data when the file system zeroed the new cluster, or when the write
//!   covers all of it). Metadata is write-back: entries and refcounts change in memory and
//!   reach the disk at a guest flush (or when a dirty L2 table leaves the cache, or at the
//!   first allocation once changes are older than [`Qcow2Options::writeback_age`]) in a
//!   crash-safe order (see the `writeback` module): refcounts and new tables → flush → L2/L1
//!   entries → flush. A crash may leak clusters (`qemu-img check -r leaks` repairs that),
//!   never corrupts the image, and loses no write acknowledged before the last completed
//!   flush.
//! * Flush: the guest flush's write-back is captured when the flush starts and runs as engine
//!   children on the flushing queue's io_uring (the `flush` module), writes and fdatasyncs
//!   alike, while that queue goes on serving reads and writes (allocating ones included: what
//!   they change waits for the next write-back). One write-back runs per image at a time; a
//!   flush on any queue meanwhile waits for it, then writes back what is left, or is one
//!   fdatasync. In the O_DSYNC modes (`writethrough`, `directsync`) completions already wait
//!   for a synchronous write-back, and a flush with dirty metadata writes back synchronously.
//! * Discard / write-zeroes: whole clusters get the zero flag (version 3 with a backing file)
//!   or become unallocated, and their clusters are freed after the entry is durable; partial
//!   clusters are written with zeros by write-zeroes, and by a discard only where they hold
//!   data (a discard never allocates).
//!
//! First-increment limits: metadata I/O other than a flush's write-back (table reads on a
//! cache miss, copy-on-write sources, compressed clusters, the write-back of a dirty L2 table
//! leaving the cache or of changes older than the write-back age, the O_DSYNC modes'
//! write-backs, closing) and backing-file reads are synchronous on the queue's thread, under
//! the image's metadata mutex where metadata changes; guest data I/O of standard clusters goes
//! through the shared engine and never waits for unrelated metadata. Refused: encryption, external data files,
//! extended L2 entries; read-write opens of dirty or corrupt images and of images with
//! internal snapshots. Autoclear feature bits are cleared when an image is opened read-write.
//! Clusters freed by a discard are reused only after a flush made the discard durable, possibly
//! while a read of the discarded range (which the guest raced with the discard) is in flight.

#![forbid(unsafe_code)]

pub(crate) mod backing;
mod cache;
pub mod check;
mod compress;
mod create;
mod discard;
pub mod empty;
mod fetch;
mod flush;
mod grow;
pub mod header;
mod layout;
pub mod map;
mod meta;
mod metaio;
mod queue;
mod read;
pub mod rebase;
mod refcount;
mod shrink;
mod tail;
mod write;
mod writeback;

#[cfg(test)]
mod tests;

pub use backing::MAX_CHAIN_DEPTH;
pub use check::{CheckReport, Repair, check};
pub use create::{Compat, CreateOptions, create, resize};
pub use meta::CacheSizes;
pub use queue::Qcow2Queue;

pub(crate) use backing::Chain;

use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::confine::{Confinement, Named};
use crate::engine::{self, Engine, EngineFile, MAX_DEPTH};
use crate::error::Error;
use crate::image::{BlockImage, EngineKind, Features, Format, Geometry, ImageQueue, OpenOptions};
use crate::size::SharedSize;

use header::{Header, incompat};
use meta::Meta;
use metaio::{FileIo, MetaIo, MetaKind};
use read::Sources;

/// qcow2-specific open options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Qcow2Options {
    /// Metadata cache sizes.
    pub cache: CacheSizes,
    /// Metadata changed longer ago than this is written back at the next allocation even
    /// without a guest flush (bounds what a crash of a guest that never flushes can lose).
    pub writeback_age: std::time::Duration,
}

impl Default for Qcow2Options {
    fn default() -> Self {
        Qcow2Options {
            cache: CacheSizes {
                l2_bytes: 8 << 20,
                refcount_bytes: 1 << 20,
            },
            writeback_age: std::time::Duration::from_secs(5),
        }
    }
}

/// An open qcow2 image.
pub struct Qcow2Image {
    file: Arc<EngineFile>,
    meta: Arc<Mutex<Meta>>,
    io: Arc<dyn MetaIo>,
    header: Header,
    backing: Option<Arc<dyn BlockImage>>,
    geometry: Geometry,
    /// The virtual size, shared with the queues (it grows with [`BlockImage::grow`]).
    size: SharedSize,
    engine: EngineKind,
    read_only: bool,
}

impl std::fmt::Debug for Qcow2Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2Image")
            .field("path", &self.file.path())
            .field("size", &self.size.get())
            .field("read_only", &self.read_only)
            .finish()
    }
}

impl Qcow2Image {
    /// Opens the qcow2 image in `file`, following its backing chain (`chain` holds the images
    /// above it).
    pub(crate) fn open(
        file: Arc<EngineFile>,
        opts: &OpenOptions,
        chain: &mut Chain,
    ) -> Result<Qcow2Image, Error> {
        let io: Arc<dyn MetaIo> = Arc::new(FileIo(file.clone()));
        Qcow2Image::open_with_io(file, io, opts, chain)
    }

    pub(crate) fn open_with_io(
        file: Arc<EngineFile>,
        io: Arc<dyn MetaIo>,
        opts: &OpenOptions,
        chain: &mut Chain,
    ) -> Result<Qcow2Image, Error> {
        let sector = opts.sector_size;
        if !(sector.is_power_of_two() && (512..=4096).contains(&sector)) {
            return Err(Error::InvalidArgument(format!(
                "sector size {sector} is not 512..=4096 and a power of two"
            )));
        }
        let header = read_header(&*io)?;
        opts.check_disk_size(file.path(), header.size)?;
        let read_only = file.read_only();
        check_writable(&header, read_only)?;
        let backing = open_backing(file.path(), &header, opts, chain)?;
        let mut meta = Meta::load(&header, io.clone(), &opts.qcow2, backing.is_some())?;
        if !read_only && header.autoclear != 0 {
            clear_autoclear(&*io)?;
        }
        if !read_only {
            // A refcount structure that cannot be read there is left for the allocator to
            // report; the open goes on, as it did before tails were cut.
            if let Err(e) = meta.cut_unused_tail() {
                tracing::warn!(error = %e, "cannot look for an unused end of the qcow2 file");
            }
        }
        let geometry = Geometry {
            size: header.size,
            logical_sector_size: sector,
            physical_sector_size: file.physical_block_size().max(sector),
        };
        let engine = engine::resolve(opts.engine)?;
        tracing::debug!(path = %file.path().display(), size = header.size, version = header.version,
            cluster_bits = header.cluster_bits, backing = backing.is_some(), "qcow2 image open");
        Ok(Qcow2Image {
            file,
            meta: Arc::new(Mutex::new(meta)),
            io,
            header,
            backing,
            geometry,
            size: SharedSize::new(geometry.size),
            engine,
            read_only,
        })
    }

    /// The parsed header (as it was at open time).
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The backing image, if any.
    pub fn backing(&self) -> Option<&Arc<dyn BlockImage>> {
        self.backing.as_ref()
    }

    /// A queue with the concrete type (tests and tools).
    pub fn queue(&self, depth: u32) -> Result<Qcow2Queue, Error> {
        let engine_depth = depth.saturating_mul(2).saturating_add(16).min(MAX_DEPTH);
        if depth == 0 || depth > MAX_DEPTH {
            return Err(Error::InvalidArgument(format!(
                "queue depth {depth} not in 1..={MAX_DEPTH}"
            )));
        }
        let engine = Engine::new(self.file.clone(), self.engine, engine_depth)?;
        let layout = *read::lock(&self.meta)?.layout();
        let srcs = Sources::new(
            self.backing.clone().map(backing::BackingReader::new),
            self.io.clone(),
            self.header.compression,
            layout,
        );
        Qcow2Queue::new(
            engine,
            self.meta.clone(),
            srcs,
            self.size.clone(),
            self.read_only,
            depth,
        )
    }
}

/// The longest a synchronous write-back of the image waits for a queue's to end.
const IDLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

impl Qcow2Image {
    /// The metadata, locked once no queue runs a write-back, or after [`IDLE_LIMIT`] (then a
    /// write-back is refused with [`Error::WriteBackBusy`]).
    fn lock_idle(&self) -> Result<std::sync::MutexGuard<'_, Meta>, Error> {
        let start = std::time::Instant::now();
        loop {
            let meta = read::lock(&self.meta)?;
            if !meta.flushing || start.elapsed() >= IDLE_LIMIT {
                return Ok(meta);
            }
            drop(meta);
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

fn read_header(io: &dyn MetaIo) -> Result<Header, Error> {
    let file_size = io.size()?;
    let mut head = [0u8; 128];
    let got = io.read(MetaKind::Header, 0, &mut head)?;
    let bits = header::peek_cluster_bits(&head[..got])?;
    let len = usize::try_from(file_size.min(1 << bits)).unwrap_or(1 << bits);
    let mut first = vec![0u8; len];
    let got = io.read(MetaKind::Header, 0, &mut first)?;
    first.truncate(got);
    Header::parse(&first, file_size)
}

fn check_writable(h: &Header, read_only: bool) -> Result<(), Error> {
    if read_only {
        return Ok(());
    }
    if h.incompatible & incompat::CORRUPT != 0 {
        return Err(Error::NeedsRepair(
            "the image is marked corrupt: open it read-only, or repair it with `qemu-img check -r all`"
                .to_owned(),
        ));
    }
    if h.incompatible & incompat::DIRTY != 0 {
        return Err(Error::NeedsRepair(
            "the image is dirty (lazy refcounts not written back): run `qemu-img check -r all` \
             before opening it read-write, or open it read-only"
                .to_owned(),
        ));
    }
    if h.nb_snapshots > 0 {
        return Err(Error::UnsupportedFeature(format!(
            "writing to an image with {} internal snapshots (open it read-only)",
            h.nb_snapshots
        )));
    }
    Ok(())
}

fn open_backing(
    path: &Path,
    h: &Header,
    opts: &OpenOptions,
    chain: &mut Chain,
) -> Result<Option<Arc<dyn BlockImage>>, Error> {
    let Some(name) = &h.backing_file else {
        return Ok(None);
    };
    let named = Named { image: path, name };
    let confinement = Confinement::new(&opts.backing, chain.top().unwrap_or(path))?;
    let format = backing::format_named(h.backing_format.as_deref())?;
    let located = confinement.locate(&named)?;
    chain.enter(&located)?;
    let backing_opts = OpenOptions {
        read_only: true,
        // The guest sees the top image's size; a backing file may be any size.
        require_whole_sectors: false,
        ..opts.clone()
    };
    let file = crate::open_file(&located, &backing_opts)?;
    confinement.check_opened(&named, &file)?;
    let format = confinement.format(&named, format, || crate::probe(&file))?;
    crate::open_as(file, format, &backing_opts, chain).map(Some)
}

fn clear_autoclear(io: &dyn MetaIo) -> Result<(), Error> {
    io.write(
        MetaKind::Header,
        header::AUTOCLEAR_OFFSET,
        &0u64.to_be_bytes(),
    )?;
    io.sync()
}

impl BlockImage for Qcow2Image {
    fn geometry(&self) -> Geometry {
        Geometry {
            size: self.size.get(),
            ..self.geometry
        }
    }

    fn features(&self) -> Features {
        Features::full(self.read_only)
    }

    fn open_queue(&self, depth: u32) -> Result<Box<dyn ImageQueue>, Error> {
        Ok(Box::new(self.queue(depth)?))
    }

    /// Writes back synchronously, after the write-back a queue may be running (waiting for
    /// it at most 10 s).
    fn sync_metadata(&self) -> Result<(), Error> {
        if self.read_only {
            return Ok(());
        }
        if self.lock_idle()?.write_back()? {
            return Ok(());
        }
        self.io.sync()
    }

    fn format(&self) -> Format {
        Format::Qcow2
    }

    fn grow(&self, new_size: u64) -> Result<(), Error> {
        self.grow_served(new_size)
    }
}

impl Drop for Qcow2Image {
    fn drop(&mut self) {
        let busy = read::lock(&self.meta).is_ok_and(|meta| meta.flushing);
        if busy {
            // A queue still runs a write-back: its close writes back the rest.
            tracing::debug!(path = %self.file.path().display(), "qcow2 write-back left to a queue");
            return;
        }
        if let Err(e) = self.sync_metadata() {
            tracing::error!(error = %e, path = %self.file.path().display(), "cannot write back qcow2 metadata");
        }
    }
}
