//! One device's state machine, driven by xenstore watches and worker exits.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustbk_formats::{
    BackingPolicy, BlockImage, CacheMode, EngineKind, NullImage, OpenOptions, open_image,
};
use rustbk_grant::Platform;
use rustbk_ring::{DEFAULT_MAX_INDIRECT_SEGMENTS, DomId, MAX_RING_PAGE_ORDER};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::connect::{FrontendRing, attach_ring, disk_limits, read_frontend_rings};
use super::journal::{open_journal, remove_journals};
use super::keys::{
    BackendInfo, Disk, discard_offered, publish_disk, publish_features, read_backend,
};
use super::{Store, XenbusState, fatal};
use crate::worker::{RingResources, Worker, WorkerConfig, WorkerExit};
use crate::{Error, Stats};

/// Default busy-poll time of a ring worker.
pub const DEFAULT_POLL_US: u32 = 0;

/// Default time after which an unused persistent grant is unmapped (Linux blkback's
/// `persistent_grant_unused_seconds`).
pub const DEFAULT_PERSISTENT_GRANT_UNUSED: Duration = Duration::from_secs(60);

/// Default most rings (queues) a device offers (`multi-queue-max-queues`): one per core, as
/// Linux blkback's `max_queues` (1 if the core count is unknown).
pub fn default_max_queues() -> u32 {
    std::thread::available_parallelism()
        .ok()
        .and_then(|n| u32::try_from(n.get()).ok())
        .unwrap_or(1)
}

/// Which device to serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSpec {
    /// The backend directory, e.g. `/local/domain/0/backend/vbd/1/51712`.
    pub backend_path: String,
    /// The frontend's domain.
    pub domid: DomId,
    /// The virtual device number.
    pub devid: u32,
}

/// Tunables of the backend.
#[derive(Clone, Debug)]
pub struct BackendOptions {
    /// Largest ring page order offered (`max-ring-page-order`).
    pub max_ring_order: u32,
    /// Most rings a frontend may use (`multi-queue-max-queues`), each served by its own worker
    /// thread and image queue; at least 1.
    pub max_queues: u32,
    /// Indirect segments offered (`feature-max-indirect-segments`).
    pub max_indirect_segments: u32,
    /// I/O engine.
    pub engine: EngineKind,
    /// The cache mode of disks whose backend directory has no `cache-mode` key.
    pub cache: CacheMode,
    /// Offer persistent grants (`feature-persistent`).
    pub persistent: bool,
    /// Most persistent grants a ring keeps mapped; `None`: Linux blkback's 1056, or a full
    /// ring's direct requests on larger rings (at most 8192).
    pub max_persistent_grants: Option<usize>,
    /// Unmap persistent grants left unused for this long; `None` keeps them while connected.
    pub persistent_grant_unused: Option<Duration>,
    /// Logical sector size announced to the guest (`sector-size`), 512 or 4096, of disks
    /// whose `params` does not choose one (`raw,sector-size=4096:/path`).
    pub sector_size: u32,
    /// Microseconds a ring worker busy-polls for work before sleeping.
    pub poll_us: u32,
    /// Folders where backing files named inside images may lie (and below); empty: each top
    /// image's own folder.
    pub backing_dirs: Vec<PathBuf>,
    /// Folder of the rings' request journals, which outlive a killed worker (the daemon's
    /// lock folder).
    pub journal_dir: PathBuf,
    /// The rustbk executable that starts a pool service (`rustbk thin serve`) for a thin
    /// volume's pool when none serves it; `None`: the worker opens the pool itself.
    pub thin_service: Option<PathBuf>,
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            max_ring_order: MAX_RING_PAGE_ORDER,
            max_queues: default_max_queues(),
            max_indirect_segments: DEFAULT_MAX_INDIRECT_SEGMENTS,
            engine: EngineKind::Auto,
            cache: CacheMode::None,
            persistent: true,
            max_persistent_grants: None,
            persistent_grant_unused: Some(DEFAULT_PERSISTENT_GRANT_UNUSED),
            sector_size: 512,
            poll_us: DEFAULT_POLL_US,
            backing_dirs: Vec::new(),
            journal_dir: PathBuf::from("/run/rustbk"),
            thin_service: None,
        }
    }
}

struct Device {
    spec: DeviceSpec,
    store: Store,
    platform: Arc<dyn Platform>,
    opts: BackendOptions,
    info: BackendInfo,
    image: Arc<dyn BlockImage>,
    state: XenbusState,
    /// One worker per connected ring, with the ring's own counters.
    workers: Vec<(Worker, Arc<Stats>)>,
    stats: Arc<Stats>,
    exits: mpsc::UnboundedSender<WorkerExit>,
    online: bool,
    /// The next connect takes over a ring a previous worker served (and its journal).
    reattach: bool,
}

/// Serves one device until the toolstack takes it away (`online` 0 and the frontend closed)
/// or xenstore goes away.
pub async fn run_device(
    store: Store,
    platform: Arc<dyn Platform>,
    spec: DeviceSpec,
    opts: BackendOptions,
    stats: Arc<Stats>,
) -> Result<(), Error> {
    let span = tracing::info_span!("vbd", domid = spec.domid.0, devid = spec.devid);
    run_device_inner(store, platform, spec, opts, stats)
        .instrument(span)
        .await
}

async fn run_device_inner(
    store: Store,
    platform: Arc<dyn Platform>,
    spec: DeviceSpec,
    opts: BackendOptions,
    stats: Arc<Stats>,
) -> Result<(), Error> {
    let be = spec.backend_path.clone();
    if store
        .read(&format!("{be}/online"))
        .await?
        .is_some_and(|v| v.trim() == "0")
    {
        tracing::info!("device is offline (being removed); not serving it");
        return Ok(());
    }
    let (info, image) = match read_and_open(&store, &be, &opts).await {
        Ok(opened) => opened,
        Err(e) => {
            fatal::fail_unserved(&store, &be, &e).await?;
            return Err(e);
        }
    };
    let (exits, mut exit_rx) = mpsc::unbounded_channel();
    let mut dev = Device {
        spec,
        store,
        platform,
        opts,
        info,
        image,
        state: XenbusState::Unknown,
        workers: Vec::new(),
        stats,
        exits,
        online: true,
        reattach: false,
    };
    if dev.reattaching().await? {
        // A restarted worker: the frontend is still connected to the ring, so publish the
        // features and map the ring again without flapping the state through InitWait.
        publish_features(&dev.store, &be, &*dev.image, &dev.info, &dev.opts).await?;
        dev.state = XenbusState::InitWait;
        dev.reattach = true;
        tracing::info!("reattaching to a connected frontend");
    } else {
        dev.enter_init_wait().await?;
    }
    let mut fe_watch = dev
        .store
        .watch(&format!("{}/state", dev.info.frontend))
        .await?;
    let mut online_watch = dev.store.watch(&format!("{be}/online")).await?;
    loop {
        tokio::select! {
            ev = fe_watch.next() => match ev {
                Some(_) => dev.on_frontend_change().await?,
                None => break,
            },
            ev = online_watch.next() => match ev {
                Some(_) => dev.on_online_change().await?,
                None => break,
            },
            Some(exit) = exit_rx.recv() => dev.on_worker_exit(exit).await?,
        }
        if !dev.online && matches!(dev.state, XenbusState::Closed) {
            break;
        }
    }
    dev.disconnect().await;
    tracing::info!("device released");
    Ok(())
}

/// What the toolstack asked for, and the image opened accordingly.
async fn read_and_open(
    store: &Store,
    be: &str,
    opts: &BackendOptions,
) -> Result<(BackendInfo, Arc<dyn BlockImage>), Error> {
    let info = read_backend(store, be).await?;
    let image = open(&info, opts)?;
    Ok((info, image))
}

fn open(info: &BackendInfo, opts: &BackendOptions) -> Result<Arc<dyn BlockImage>, Error> {
    let (format, path) = match &info.disk {
        Disk::Image { format, path } => (*format, path),
        Disk::Thin { pool, volume } => return super::thin::open(pool, volume, info, opts),
        Disk::Null { size } => return open_null(*size, info, opts),
    };
    let cache = info.cache.unwrap_or(opts.cache);
    let open_opts = OpenOptions {
        read_only: info.read_only,
        cache,
        engine: opts.engine,
        sector_size: info.sector_size(opts),
        backing: BackingPolicy::Confined(opts.backing_dirs.clone()),
        ..OpenOptions::default()
    };
    let image = open_image(path, format, &open_opts)?;
    let g = image.geometry();
    tracing::info!(path = %path.display(), ?format, size = g.size, sector_size = g.logical_sector_size, read_only = info.read_only, %cache, "image opened");
    Ok(image)
}

/// A null disk of `size` bytes (`params` = `null:SIZE`).
fn open_null(
    size: u64,
    info: &BackendInfo,
    opts: &BackendOptions,
) -> Result<Arc<dyn BlockImage>, Error> {
    let open_opts = OpenOptions {
        read_only: info.read_only,
        sector_size: info.sector_size(opts),
        ..OpenOptions::default()
    };
    let image = NullImage::new(size, &open_opts)?;
    tracing::info!(
        size,
        read_only = info.read_only,
        "null disk opened (no I/O: reads return zeros)"
    );
    Ok(Arc::new(image))
}

impl Device {
    async fn set_state(&mut self, state: XenbusState) -> Result<(), Error> {
        let path = format!("{}/state", self.spec.backend_path);
        self.store.write(&path, &state.number().to_string()).await?;
        tracing::info!(?state, "backend state");
        self.state = state;
        Ok(())
    }

    async fn enter_init_wait(&mut self) -> Result<(), Error> {
        self.reattach = false;
        publish_features(
            &self.store,
            &self.spec.backend_path,
            &*self.image,
            &self.info,
            &self.opts,
        )
        .await?;
        self.set_state(XenbusState::InitWait).await
    }

    /// Whether a previous backend left this device Connected to a live frontend.
    async fn reattaching(&self) -> Result<bool, Error> {
        let ours = self
            .store
            .read(&format!("{}/state", self.spec.backend_path))
            .await?;
        let fe = self.frontend_state().await?;
        Ok(
            XenbusState::parse(ours.as_deref()) == XenbusState::Connected
                && matches!(fe, XenbusState::Initialised | XenbusState::Connected),
        )
    }

    async fn frontend_state(&self) -> Result<XenbusState, Error> {
        let v = self
            .store
            .read(&format!("{}/state", self.info.frontend))
            .await?;
        Ok(XenbusState::parse(v.as_deref()))
    }

    async fn on_frontend_change(&mut self) -> Result<(), Error> {
        let fe = self.frontend_state().await?;
        tracing::debug!(frontend = ?fe, backend = ?self.state, "frontend state changed");
        match fe {
            XenbusState::Initialising if self.state == XenbusState::Closed => {
                self.enter_init_wait().await
            }
            XenbusState::Initialised | XenbusState::Connected if self.workers.is_empty() => {
                self.connect_or_close().await
            }
            XenbusState::Closing if self.state != XenbusState::Closed => {
                self.set_state(XenbusState::Closing).await
            }
            XenbusState::Closed | XenbusState::Unknown => {
                self.disconnect().await;
                if self.state != XenbusState::Closed {
                    self.set_state(XenbusState::Closed).await?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    async fn connect_or_close(&mut self) -> Result<(), Error> {
        if self.state == XenbusState::Closed {
            self.enter_init_wait().await?;
        }
        if self.state != XenbusState::InitWait {
            return Ok(());
        }
        match self.connect().await {
            Ok(()) => {
                fatal::clear_error(&self.store, &self.spec.backend_path).await?;
                self.set_state(XenbusState::Connected).await
            }
            Err(e) => {
                let why = format!("cannot connect to the frontend: {}", error_chain(&e));
                fatal::write_error(&self.store, &self.spec.backend_path, e.errno(), &why).await;
                self.disconnect().await;
                self.set_state(XenbusState::Closing).await
            }
        }
    }

    async fn connect(&mut self) -> Result<(), Error> {
        // Only the first connect after a restart takes over the old ring, whatever happens.
        let reattach = std::mem::take(&mut self.reattach);
        let rings = read_frontend_rings(&self.store, &self.info.frontend, &self.opts).await?;
        // Map every ring before any worker starts: a bad ring leaves nothing running.
        let mut attached = Vec::with_capacity(rings.len());
        for fr in &rings {
            let journal = open_journal(&self.opts.journal_dir, &self.spec, fr, reattach)?;
            let res = attach_ring(&*self.platform, self.spec.domid, fr, &*self.image, journal)?;
            attached.push((fr, res));
        }
        let mut persistent = false;
        for (fr, res) in attached {
            persistent = self.start_worker(fr, res)?;
        }
        publish_disk(
            &self.store,
            &self.spec.backend_path,
            &*self.image,
            &self.info,
        )
        .await?;
        if let Some(fr) = rings.first() {
            let (abi, queues) = (fr.abi.protocol_name(), rings.len());
            tracing::info!(queues, order = fr.order, abi, persistent, "rings connected");
        }
        Ok(())
    }

    /// Starts the worker of one mapped ring; whether it keeps persistent grants.
    fn start_worker(&mut self, fr: &FrontendRing, res: RingResources) -> Result<bool, Error> {
        let discard = discard_offered(&*self.image, &self.info);
        let limits = disk_limits(&*self.image, self.info.read_only, discard, &self.opts);
        let persistent_grants = if self.opts.persistent && fr.persistent {
            self.opts
                .max_persistent_grants
                .unwrap_or_else(|| persistent_budget(res.ring.size()))
        } else {
            0
        };
        let cfg = WorkerConfig {
            domid: self.spec.domid,
            devid: self.spec.devid,
            queue: fr.queue,
            limits,
            persistent_grants,
            persistent_unused: self.opts.persistent_grant_unused,
            poll_us: self.opts.poll_us,
        };
        let exits = self.exits.clone();
        let on_exit = move |exit: &WorkerExit| {
            let _ = exits.send(exit.clone());
        };
        let stats = self.stats.queue();
        match Worker::spawn(cfg, res, Arc::clone(&stats), on_exit) {
            Ok(worker) => self.workers.push((worker, stats)),
            Err(e) => {
                self.stats.retire(&stats);
                return Err(e);
            }
        }
        tracing::debug!(queue = fr.queue, port = fr.port.0, "ring worker started");
        Ok(persistent_grants > 0)
    }

    /// Stops every ring's worker, waiting for in-flight I/O, unmaps the rings and removes their
    /// journals (every request they consumed is answered now; a new connection starts new
    /// journals).
    async fn disconnect(&mut self) {
        let workers = std::mem::take(&mut self.workers);
        let stop_all = move || {
            // Ask every worker first, so the rings drain together.
            let stopping: Vec<_> = workers
                .into_iter()
                .map(|(worker, stats)| (worker.ask_stop(), stats))
                .collect();
            stopping
                .into_iter()
                .map(|(worker, stats)| (worker.stop(), stats))
                .collect::<Vec<_>>()
        };
        match tokio::task::spawn_blocking(stop_all).await {
            Ok(exits) => {
                for (exit, stats) in exits {
                    self.stats.retire(&stats);
                    tracing::info!(?exit, "ring disconnected");
                }
            }
            Err(e) => tracing::error!(error = %e, "ring workers did not stop cleanly"),
        }
        remove_journals(&self.opts.journal_dir, &self.spec);
    }

    async fn on_online_change(&mut self) -> Result<(), Error> {
        let v = self
            .store
            .read(&format!("{}/online", self.spec.backend_path))
            .await?;
        self.online = v.as_deref().is_none_or(|v| v.trim() != "0");
        if !self.online && self.state == XenbusState::Connected {
            self.set_state(XenbusState::Closing).await?;
        }
        if !self.online
            && matches!(
                self.frontend_state().await?,
                XenbusState::Closed | XenbusState::Unknown
            )
        {
            self.disconnect().await;
            self.set_state(XenbusState::Closed).await?;
        }
        Ok(())
    }

    async fn on_worker_exit(&mut self, exit: WorkerExit) -> Result<(), Error> {
        let (errno, why) = match &exit {
            WorkerExit::Stopped => return Ok(()),
            WorkerExit::RingOverflow => (nix::libc::EPROTO, "frontend overflowed the ring".into()),
            WorkerExit::Failed(msg) => (nix::libc::EIO, format!("ring worker failed: {msg}")),
        };
        tracing::error!(?exit, "ring worker ended; closing the device");
        fatal::write_error(&self.store, &self.spec.backend_path, errno, &why).await;
        self.disconnect().await;
        self.set_state(XenbusState::Closing).await
    }
}

/// Pages a ring may keep mapped: Linux blkback's 1056, or enough for a full ring of direct
/// requests on larger rings.
fn persistent_budget(ring_size: u32) -> usize {
    (ring_size as usize * rustbk_ring::MAX_SEGMENTS_PER_REQUEST).clamp(1056, 8192)
}

/// An error and its causes on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
