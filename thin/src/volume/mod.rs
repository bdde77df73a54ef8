//! [`ThinVolume`]: a thin volume served like a raw image, over any [`PoolPort`].
//!
//! Mapped exclusive blocks are read and overwritten on the data device through the shared
//! engine with the guest's own buffers; the pool is asked only to provision, map, unmap and
//! commit. See `thin/DESIGN.md` ("The data path").

mod cache;
mod claims;
mod fill;
mod grow;
mod outage;
mod plan;
mod queue;
mod refill;
mod reserve;

#[cfg(test)]
mod ahead_tests;
#[cfg(test)]
mod held_map_tests;
#[cfg(test)]
mod lost_reply_tests;
#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;

pub use queue::ThinQueue;

use foldhash::{HashSet, HashSetExt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustbk_formats::planned::Bell;
use rustbk_formats::{
    BlockImage, CacheMode, EngineFile, EngineKind, Features, Format, Geometry, ImageQueue,
    IoBuffers, IoOp, OpenOptions,
};

use crate::error::{Error, Result};
use crate::pool::{LocalPort, Pool};
use crate::port::{PoolPort, VolumeInfo};
use cache::MapCache;
use claims::Claims;

/// Depth of the queue on the external origin (its reads are synchronous).
const ORIGIN_DEPTH: u32 = 4;
/// How often a volume whose port failed tries to open a new one.
pub const RECONNECT_EVERY: Duration = Duration::from_secs(1);
/// How long a read of the external origin may take.
const ORIGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// How to serve a volume.
#[derive(Clone, Debug)]
pub struct VolumeOptions {
    /// The engine of each queue.
    pub engine: EngineKind,
    /// Logical sector size presented: 512 or 4096.
    pub sector_size: u32,
    /// Refuse modifying ops (EROFS), as for a disk attached read-only.
    pub read_only: bool,
    /// How long a new op waits for a lost pool service to come back (the volume reconnects
    /// by itself, see [`ThinVolume::set_reconnect`]) before it fails with EIO.
    pub hold: Duration,
    /// The cache mode of the volume's writes (see [`CacheMode`]). In `writethrough` and
    /// `directsync` the pool commits before a modifying op completes, so the new mappings
    /// are durable with the data; in `unsafe` a flush completes at once (no sync, no
    /// commit: the pool's own commits still sync the data device first, so the pool stays
    /// consistent, but the volume's recent writes may be lost in a crash).
    pub cache: CacheMode,
}

/// How long ops wait for a lost pool service by default: long enough for a service
/// manager to restart it.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(30);

impl Default for VolumeOptions {
    fn default() -> Self {
        VolumeOptions {
            engine: EngineKind::Auto,
            sector_size: 512,
            read_only: false,
            hold: DEFAULT_HOLD,
            cache: CacheMode::None,
        }
    }
}

/// A thin volume as a block image.
pub struct ThinVolume {
    core: Arc<Mutex<Core>>,
    bells: Bells,
    data: Arc<EngineFile>,
    geometry: Geometry,
    /// The size the queues serve, in bytes (it grows with [`BlockImage::grow`]).
    size: Arc<AtomicU64>,
    opts: VolumeOptions,
}

/// What the queues of one volume share.
pub(crate) struct Core {
    pub(crate) port: Box<dyn PoolPort>,
    pub(crate) info: VolumeInfo,
    pub(crate) cache: MapCache,
    pub(crate) claims: Claims,
    pub(crate) reserve: Vec<u64>,
    /// How many blocks to ask of the pool when the reserve runs low.
    refill: refill::Refill,
    /// The refill asked ahead of need, on its way.
    ahead: Option<reserve::Ahead>,
    /// Blocks of the reserve known to read zeros (holes of the data file, or blocks the pool
    /// knows were never written since the file was filled with zeros) since they were
    /// handed out: no one writes a block handed out to this volume but it.
    pub(crate) holes: HashSet<u64>,
    /// Opens a new port once this one failed, and when to try next.
    reconnect: Option<Reconnect>,
    next_reconnect: Option<Instant>,
    /// Modifying ops started and not finished, on every queue.
    pub(crate) writes: usize,
    /// Some queue holds ops back until claims are released or a pause ends.
    pub(crate) waiting: bool,
    /// Mapping changes sent and made durable, for a service that goes away.
    pub(crate) changes: outage::Changes,
    /// How long a new op waits for a lost service.
    pub(crate) hold: Duration,
    pub(crate) origin: Option<OriginSrc>,
    pub(crate) data: Arc<EngineFile>,
}

/// The external origin: a read-only image read synchronously.
pub(crate) struct OriginSrc {
    queue: Box<dyn ImageQueue>,
    size: u64,
    _image: Arc<dyn BlockImage>,
}

impl ThinVolume {
    /// Serves the volume behind `port`, whose blocks live on `data`.
    pub fn new(
        mut port: Box<dyn PoolPort>,
        data: Arc<EngineFile>,
        opts: VolumeOptions,
    ) -> Result<ThinVolume> {
        let info = port.info()?;
        check_info(&info, &opts)?;
        let origin = info.origin.as_ref().map(open_origin).transpose()?;
        let bells: Bells = Arc::default();
        let ring = bells.clone();
        port.set_waker(Box::new(move || ring_all(&ring)));
        let geometry = Geometry {
            size: info.size,
            logical_sector_size: opts.sector_size,
            physical_sector_size: opts.sector_size.max(4096),
        };
        let core = Core {
            cache: MapCache::new(info.size.div_ceil(info.block_size)),
            refill: refill::Refill::new(info.block_size),
            ahead: None,
            port,
            info,
            claims: Claims::default(),
            reserve: Vec::new(),
            holes: HashSet::new(),
            reconnect: None,
            next_reconnect: None,
            writes: 0,
            waiting: false,
            changes: outage::Changes::default(),
            hold: opts.hold,
            origin,
            data: data.clone(),
        };
        Ok(ThinVolume {
            core: Arc::new(Mutex::new(core)),
            bells,
            data,
            size: Arc::new(AtomicU64::new(geometry.size)),
            geometry,
            opts,
        })
    }

    /// Serves volume `id` of `pool` through a port in this process.
    pub fn open_local(pool: &Pool, id: u64, opts: VolumeOptions) -> Result<ThinVolume> {
        let port: LocalPort = pool.open_port(id)?;
        let data = port.data_file();
        ThinVolume::new(Box::new(port), data, opts)
    }
}

/// Opens a new port to the same volume, after the old one failed.
pub type Reconnect = Box<dyn FnMut() -> Result<Box<dyn PoolPort>> + Send>;

impl ThinVolume {
    /// Goes on with a new port to the same volume, after the old one failed (the pool
    /// service restarted; see `thin/DESIGN.md`). The volume must be quiet: no op in flight.
    /// The new pool went back to its last commit, so the cached mappings are dropped, and so
    /// is the reserve (those blocks are free in the new pool).
    pub fn replace_port(&self, port: Box<dyn PoolPort>) -> Result<()> {
        lock(&self.core)?.install_port(port, &self.bells)
    }

    /// Lets the volume open a new port by itself once its port failed: when an op arrives
    /// and no op is in flight, at most once every [`RECONNECT_EVERY`]. New ops wait for it
    /// ([`VolumeOptions::hold`]); the first flush after it fails if mappings were lost.
    pub fn set_reconnect(&self, reconnect: Reconnect) -> Result<()> {
        lock(&self.core)?.reconnect = Some(reconnect);
        Ok(())
    }
}

impl Core {
    fn install_port(&mut self, mut port: Box<dyn PoolPort>, bells: &Bells) -> Result<()> {
        let info = port.info()?;
        if self.writes > 0 || !self.claims.is_empty() {
            return Err(Error::Busy("ops in flight on the volume".into()));
        }
        let old = &self.info;
        // The pool may have grown the volume meanwhile (`rustbk thin resize`), never shrunk it
        // (refused while served).
        if info.id != old.id || info.block_size != old.block_size || info.size < old.size {
            return Err(Error::InvalidArgument(format!(
                "the new port serves volume {} of {} bytes in blocks of {}",
                info.id, info.size, info.block_size
            )));
        }
        let ring = bells.clone();
        port.set_waker(Box::new(move || ring_all(&ring)));
        self.changes.new_port(info.id);
        self.cache = MapCache::new(info.size.div_ceil(info.block_size));
        self.reserve.clear();
        self.ahead = None;
        self.holes.clear();
        self.info = info;
        self.port = port;
        ring_all(bells);
        Ok(())
    }

    /// Whether the volume opens a new port by itself once its port failed.
    pub(crate) fn may_reconnect(&self) -> bool {
        self.reconnect.is_some()
    }

    /// Opens a new port if the volume may reconnect and is quiet (see
    /// [`ThinVolume::set_reconnect`]); true if it has a working port again.
    pub(crate) fn try_reconnect(&mut self, bells: &Bells) -> bool {
        let now = Instant::now();
        let quiet = self.writes == 0 && self.claims.is_empty();
        if !quiet || self.next_reconnect.is_some_and(|at| now < at) {
            return false;
        }
        let Some(mut reconnect) = self.reconnect.take() else {
            return false;
        };
        self.next_reconnect = now.checked_add(RECONNECT_EVERY);
        let installed = reconnect().and_then(|port| self.install_port(port, bells));
        self.reconnect = Some(reconnect);
        match installed {
            Ok(()) => {
                tracing::info!(volume = self.info.id, "thin volume reconnected to its pool");
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "thin volume cannot reconnect yet");
                false
            }
        }
    }
}

#[cfg(test)]
impl ThinVolume {
    /// Whether the volume's port failed (the pool service went away).
    pub(crate) fn port_failed(&self) -> bool {
        lock(&self.core).is_ok_and(|core| core.port.failed())
    }

    /// Blocks the pool handed to the volume that no mapping uses yet.
    pub(crate) fn reserved(&self) -> usize {
        lock(&self.core).map_or(0, |core| core.reserve.len())
    }

    /// What the next commit does once the volume asked for no blocks for a while.
    pub(crate) fn trim_reserve_after_idle(&self) {
        let later = Instant::now() + Duration::from_secs(3600);
        lock(&self.core).expect("volume lock").trim_reserve(later);
    }
}

fn check_info(info: &VolumeInfo, opts: &VolumeOptions) -> Result<()> {
    let sector = opts.sector_size;
    if !(sector == 512 || sector == 4096) {
        return Err(Error::InvalidArgument(format!("sector size {sector}")));
    }
    let bs = info.block_size;
    if bs < 4096 || bs % 4096 != 0 || bs > 1 << 30 || info.size % u64::from(sector) != 0 {
        return Err(Error::InvalidArgument(format!(
            "volume of {} bytes in blocks of {bs}",
            info.size
        )));
    }
    Ok(())
}

fn open_origin((path, format): &(std::path::PathBuf, String)) -> Result<OriginSrc> {
    let format = crate::pool::format_of(format)?;
    let opts = OpenOptions {
        read_only: true,
        force_share: true,
        require_whole_sectors: false,
        ..OpenOptions::default()
    };
    let image = rustbk_formats::open_image(path, format, &opts)?;
    let queue = image.open_queue(ORIGIN_DEPTH)?;
    Ok(OriginSrc {
        queue,
        size: image.geometry().size,
        _image: image,
    })
}

/// The bells of a volume's queues.
pub(crate) type Bells = Arc<Mutex<Vec<Arc<Bell>>>>;

/// Wakes every queue of a volume (a pause request arrived).
fn ring_all(bells: &Mutex<Vec<Arc<Bell>>>) {
    let Ok(bells) = bells.lock() else { return };
    for bell in bells.iter() {
        bell.ring();
    }
}

impl OriginSrc {
    /// Reads the origin's bytes at `offset` into `bufs` (of `len` bytes), zeros past its end.
    pub(crate) fn read(&mut self, offset: u64, bufs: Box<dyn IoBuffers>, len: u64) -> Result<()> {
        let inside = self.size.saturating_sub(offset).min(len);
        let zero_from = usize::try_from(inside).unwrap_or(usize::MAX);
        if inside < len {
            fill::zero(
                &*bufs,
                zero_from,
                usize::try_from(len - inside).unwrap_or(0),
            );
        }
        if inside == 0 {
            return Ok(());
        }
        let op = match inside == len {
            true => IoOp::Read { offset, bufs },
            false => {
                let shared = rustbk_formats::SharedBufs::new(bufs)
                    .ok_or_else(|| Error::InvalidArgument("buffer length overflows".into()))?;
                let mut part = rustbk_formats::Composite::new();
                part.push_shared(&shared, 0, zero_from);
                IoOp::Read {
                    offset,
                    bufs: Box::new(part),
                }
            }
        };
        self.queue.submit(op, 0)?;
        self.queue.commit()?;
        let mut done = Vec::with_capacity(1);
        let deadline = Instant::now() + ORIGIN_TIMEOUT;
        while done.is_empty() {
            if Instant::now() > deadline {
                return Err(Error::Busy("the origin image does not answer".into()));
            }
            self.queue.wait(Some(Duration::from_secs(1)))?;
            self.queue.reap(&mut done);
        }
        Ok(done.remove(0).result?)
    }
}

impl Core {
    /// Byte offset of data block `block` on the data device.
    pub(crate) fn phys(&self, block: u64) -> Result<u64> {
        block
            .checked_mul(self.info.block_size)
            .ok_or_else(|| Error::corrupt(format!("data block {block} is past any device")))
    }
}

pub(crate) fn lock(core: &Mutex<Core>) -> Result<MutexGuard<'_, Core>> {
    core.lock()
        .map_err(|_| Error::PoolFailed("a volume operation panicked".into()))
}

impl ThinVolume {
    fn read_only(&self) -> bool {
        self.opts.read_only || self.data.read_only()
    }
}

impl BlockImage for ThinVolume {
    fn geometry(&self) -> Geometry {
        Geometry {
            size: self.size.load(Ordering::Acquire),
            ..self.geometry
        }
    }

    /// The pool's data block size: a discard unmaps whole blocks only (as dm-thin, which
    /// gives its thin devices the same granularity).
    fn discard_granularity(&self) -> u32 {
        let bs = lock(&self.core).map_or(0, |core| core.info.block_size);
        u32::try_from(bs)
            .ok()
            .filter(|&b| b > 0)
            .unwrap_or(self.geometry.physical_sector_size)
    }

    fn features(&self) -> Features {
        Features {
            discard: true,
            write_zeroes: true,
            flush: true,
            read_only: self.read_only(),
        }
    }

    fn open_queue(&self, depth: u32) -> Result<Box<dyn ImageQueue>, rustbk_formats::Error> {
        let queue = ThinQueue::new(
            self.core.clone(),
            self.bells.clone(),
            self.data.clone(),
            &self.opts,
            (self.size.clone(), self.read_only()),
            depth,
        )
        .map_err(to_formats)?;
        Ok(Box::new(queue))
    }

    /// Commits the pool (every mapping made so far becomes durable).
    fn sync_metadata(&self) -> Result<(), rustbk_formats::Error> {
        let mut core = lock(&self.core).map_err(to_formats)?;
        let mark = core.changes.mark();
        let result = core.port.commit();
        core.changes.committed(mark, result).map_err(to_formats)
    }

    fn format(&self) -> Format {
        Format::Raw
    }

    fn grow(&self, new_size: u64) -> Result<(), rustbk_formats::Error> {
        self.take_up(new_size)
    }

    /// The volume's size in the pool (asked of the pool, holding the volume's lock for one
    /// call: `rustbk thin resize` may have grown it).
    fn storage_size(&self) -> Result<Option<u64>, rustbk_formats::Error> {
        self.pool_size().map(Some).map_err(to_formats)
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        let reserve = std::mem::take(&mut self.reserve);
        if !reserve.is_empty() {
            if let Err(e) = self.port.release(&reserve) {
                tracing::warn!(error = %e, "cannot give back reserved blocks");
            }
        }
    }
}

/// A pool error as the image error a completion carries (its errno is kept).
pub(crate) fn to_formats(e: Error) -> rustbk_formats::Error {
    match e {
        Error::Io(e) => e,
        Error::InvalidArgument(why) => rustbk_formats::Error::InvalidArgument(why),
        other => {
            tracing::debug!(error = %other, "thin volume op failed");
            rustbk_formats::Error::from_errno(other.errno())
        }
    }
}
