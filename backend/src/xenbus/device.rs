//! One device's state machine, driven by xenstore watches, worker exits, control commands
//! ([`DeviceControl`]: pause, unpause, close, resize) and a once-a-second check of the image's
//! size.

mod budget;
mod resize;

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
    BackendInfo, Disk, data_path, discard_offered, persistent_offered, publish_disk,
    publish_features, read_backend,
};
use super::qos::{apply_qos_change, read_qos};
use super::{Store, XenbusState, fatal};
use crate::control::{Answer, Command, DeviceControl, Pending};
use crate::qos::{DiskQos, QosLimits};
use crate::worker::{DataPath, DiskSectors, RingResources, Worker, WorkerConfig, WorkerExit};
use crate::{Error, Stats};

/// Whether persistently mapped pages are registered as io_uring fixed buffers by default.
pub const DEFAULT_FIXED_BUFFERS: bool = false;

/// Default most busy-poll time of a ring worker (its adaptive window's upper bound): off,
/// since on the shared 2-vCPU development machine polling helped QD1 reads but slowed QD1
/// writes (README, "Busy-polling").
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
    /// Most microseconds a ring worker busy-polls for work before sleeping (adaptive).
    pub poll_us: u32,
    /// Busy-poll even while runnable threads outnumber the CPUs.
    pub poll_shared_cores: bool,
    /// How disks whose backend directory has no `data-path` key reach the guest's data pages.
    pub data_path: DataPath,
    /// Register persistently mapped pages as io_uring fixed buffers.
    pub fixed_buffers: bool,
    /// Folders where backing files named inside images may lie (and below); empty: each top
    /// image's own folder.
    pub backing_dirs: Vec<PathBuf>,
    /// Folders the images and thin pools that `params` names must lie in (and below, after
    /// resolving symlinks); empty: anywhere.
    pub image_dirs: Vec<PathBuf>,
    /// Folder of the rings' request journals, which outlive a killed worker (the daemon's
    /// lock folder).
    pub journal_dir: PathBuf,
    /// The rustbk executable that starts a pool service (`rustbk thin serve`) for a thin
    /// volume's pool when none serves it; `None`: the worker opens the pool itself.
    pub thin_service: Option<PathBuf>,
    /// The I/O limits of disks whose backend directory has no `qos/` key.
    pub qos: QosLimits,
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
            poll_shared_cores: false,
            data_path: DataPath::Map,
            fixed_buffers: DEFAULT_FIXED_BUFFERS,
            backing_dirs: Vec::new(),
            image_dirs: Vec::new(),
            journal_dir: PathBuf::from("/run/rustbk"),
            thin_service: None,
            qos: QosLimits::default(),
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
    /// The disk's I/O limits, shared with its ring workers.
    qos: Arc<DiskQos>,
    /// A bad change of the `qos/` keys is reported in the `error` node.
    qos_error: bool,
    state: XenbusState,
    /// One worker per connected ring, with the ring's own counters.
    workers: Vec<(Worker, Arc<Stats>)>,
    stats: Arc<Stats>,
    /// Counters, status and commands of the control socket.
    control: DeviceControl,
    /// Paused by a control command: the rings are released until it is unpaused.
    paused: bool,
    exits: mpsc::UnboundedSender<WorkerExit>,
    online: bool,
    /// The next connect takes over a ring a previous worker served (and its journal).
    reattach: bool,
    /// The disk's size in sectors, shared with every ring worker (raised by a resize).
    sectors: DiskSectors,
    /// A storage size already refused or failed to take up (logged once).
    refused_size: Option<u64>,
}

/// Serves one device until the toolstack takes it away (`online` 0 and the frontend closed),
/// a control command closes it, or xenstore goes away. It counts into `control`'s counters and
/// carries out the commands sent to it.
pub async fn run_device(
    store: Store,
    platform: Arc<dyn Platform>,
    spec: DeviceSpec,
    opts: BackendOptions,
    control: DeviceControl,
) -> Result<(), Error> {
    let span = tracing::info_span!("vbd", domid = spec.domid.0, devid = spec.devid);
    run_device_inner(store, platform, spec, opts, control)
        .instrument(span)
        .await
}

async fn run_device_inner(
    store: Store,
    platform: Arc<dyn Platform>,
    spec: DeviceSpec,
    opts: BackendOptions,
    control: DeviceControl,
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
    let (info, image, qos) = match read_and_open(&store, &be, &opts).await {
        Ok(opened) => opened,
        Err(e) => {
            fatal::fail_unserved(&store, &be, &e).await?;
            return Err(e);
        }
    };
    let (exits, mut exit_rx) = mpsc::unbounded_channel();
    show_disk(&control, &info, &*image, &opts);
    let stats = Arc::clone(control.stats());
    let sectors = DiskSectors::new(image.geometry().size / 512);
    let mut dev = Device {
        spec,
        store,
        platform,
        opts,
        info,
        image,
        qos,
        qos_error: false,
        state: XenbusState::Unknown,
        workers: Vec::new(),
        stats,
        control,
        paused: false,
        exits,
        online: true,
        reattach: false,
        sectors,
        refused_size: None,
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
    let mut size_check = tokio::time::interval(resize::SIZE_CHECK_EVERY);
    size_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut qos_watch = dev.store.watch(&format!("{be}/qos")).await?;
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
            ev = qos_watch.next() => match ev {
                Some(_) => dev.on_qos_change().await?,
                None => break,
            },
            Some(exit) = exit_rx.recv() => dev.on_worker_exit(exit).await?,
            Some(cmd) = dev.control.next_command() => dev.on_command(cmd).await?,
            _ = size_check.tick() => dev.check_storage_size().await?,
        }
        if !dev.online && matches!(dev.state, XenbusState::Closed) {
            break;
        }
    }
    dev.disconnect().await;
    tracing::info!("device released");
    Ok(())
}

/// What the toolstack asked for, the image opened accordingly, and the disk's limits.
async fn read_and_open(
    store: &Store,
    be: &str,
    opts: &BackendOptions,
) -> Result<(BackendInfo, Arc<dyn BlockImage>, Arc<DiskQos>), Error> {
    let info = read_backend(store, be).await?;
    let key = format!("{be}/params");
    match &info.disk {
        Disk::Image { path, .. } => super::allowed::check_allowed(path, &opts.image_dirs, &key)?,
        Disk::Thin { pool, .. } => super::allowed::check_allowed(pool, &opts.image_dirs, &key)?,
        Disk::Null { .. } => {}
    }
    let limits = read_qos(store, be, &opts.qos).await?;
    let qos = DiskQos::new(limits).map_err(|why| Error::BadNode {
        path: format!("{be}/qos"),
        value: limits.to_string(),
        why,
    })?;
    let image = open(&info, opts)?;
    tracing::info!(qos = %limits, "QoS limits");
    Ok((info, image, qos))
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

/// What `rustbk ctl list` shows of the opened disk.
fn show_disk(
    control: &DeviceControl,
    info: &BackendInfo,
    image: &dyn BlockImage,
    opts: &BackendOptions,
) {
    let cache = match info.disk {
        Disk::Null { .. } => "none (no I/O)".to_owned(),
        _ => info.cache.unwrap_or(opts.cache).to_string(),
    };
    control.update(|s| {
        s.params = info.params.clone();
        s.format = info.disk.format_name().to_owned();
        s.cache = cache;
        s.read_only = info.read_only;
        s.size = image.geometry().size;
        s.data_path = data_path(info, opts).to_string();
        s.state = format!("{:?}", XenbusState::Unknown);
    });
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
        self.control.update(|s| s.state = format!("{state:?}"));
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
            XenbusState::Initialised | XenbusState::Connected if self.paused => {
                tracing::debug!("paused: the rings stay released until unpaused");
                Ok(())
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
        self.refresh_qos().await?;
        let rings = read_frontend_rings(&self.store, &self.info.frontend, &self.opts).await?;
        // Map every ring before any worker starts: a bad ring leaves nothing running.
        let mut attached = Vec::with_capacity(rings.len());
        for fr in &rings {
            let journal = open_journal(&self.opts.journal_dir, &self.spec, fr, reattach)?;
            let res = attach_ring(
                &*self.platform,
                self.spec.domid,
                fr,
                &*self.image,
                journal,
                reattach,
            )?;
            attached.push((fr, res));
        }
        self.sectors.set(self.image.geometry().size / 512);
        let mut persistent = false;
        for (fr, res) in attached {
            persistent = self.start_worker(fr, res)?;
        }
        let queues = u32::try_from(self.workers.len()).unwrap_or(u32::MAX);
        self.control.update(|s| s.queues = queues);
        publish_disk(
            &self.store,
            &self.spec.backend_path,
            &*self.image,
            &self.info,
        )
        .await?;
        if let Some(fr) = rings.first() {
            let (abi, queues) = (fr.abi.protocol_name(), rings.len());
            let qos = self.qos.limits();
            let data_path = data_path(&self.info, &self.opts).name();
            tracing::info!(
                queues,
                order = fr.order,
                abi,
                persistent,
                data_path,
                %qos,
                "rings connected"
            );
        }
        Ok(())
    }

    /// Starts the worker of one mapped ring; whether it keeps persistent grants.
    fn start_worker(&mut self, fr: &FrontendRing, res: RingResources) -> Result<bool, Error> {
        let discard = discard_offered(&*self.image, &self.info);
        let limits = disk_limits(&*self.image, self.info.read_only, discard, &self.opts);
        let data_path = data_path(&self.info, &self.opts);
        let persistent_grants = if persistent_offered(&self.info, &self.opts) && fr.persistent {
            self.opts.max_persistent_grants.unwrap_or_else(|| {
                budget::persistent_budget(res.ring.size(), self.opts.max_indirect_segments)
            })
        } else {
            0
        };
        let cfg = WorkerConfig {
            domid: self.spec.domid,
            devid: self.spec.devid,
            queue: fr.queue,
            limits,
            sectors: self.sectors.clone(),
            persistent_grants,
            persistent_unused: self.opts.persistent_grant_unused,
            poll_us: self.opts.poll_us,
            poll_shared_cores: self.opts.poll_shared_cores,
            data_path,
            fixed_buffers: self.opts.fixed_buffers,
            qos: Arc::clone(&self.qos),
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
        self.control.update(|s| s.queues = 0);
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
        let be = &self.spec.backend_path;
        let v = self.store.read(&format!("{be}/online")).await?;
        if v.is_none() && self.store.read(&format!("{be}/state")).await?.is_none() {
            return self.directory_removed().await;
        }
        self.online = v.as_deref().is_none_or(|v| v.trim() != "0");
        self.go_offline().await
    }

    /// The toolstack removed the device's directory (libxl does once it read Closed, and
    /// may do so before this backend saw `online` turn 0): the device is gone. It is released
    /// without a write into the removed directory, which would create it again.
    async fn directory_removed(&mut self) -> Result<(), Error> {
        tracing::info!("backend directory removed: the device is gone");
        self.online = false;
        self.disconnect().await;
        self.state = XenbusState::Closed;
        self.control
            .update(|s| s.state = format!("{:?}", XenbusState::Closed));
        Ok(())
    }

    /// Once the device is no longer online: Closing while connected, Closed (and released)
    /// once the frontend has closed.
    async fn go_offline(&mut self) -> Result<(), Error> {
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

    /// Reads the `qos/` keys at connect: bad ones refuse the connection, as at start.
    async fn refresh_qos(&mut self) -> Result<(), Error> {
        let limits = read_qos(&self.store, &self.spec.backend_path, &self.opts.qos).await?;
        self.qos_error = false;
        if limits != self.qos.limits() {
            self.qos.set_limits(limits).map_err(|why| Error::BadNode {
                path: format!("{}/qos", self.spec.backend_path),
                value: limits.to_string(),
                why,
            })?;
        }
        Ok(())
    }

    async fn on_qos_change(&mut self) -> Result<(), Error> {
        let be = &self.spec.backend_path;
        apply_qos_change(
            &self.store,
            be,
            &self.opts.qos,
            &self.qos,
            &mut self.qos_error,
        )
        .await
    }

    /// Carries out a control command and sends its outcome back.
    async fn on_command(&mut self, pending: Pending) -> Result<(), Error> {
        tracing::info!(command = ?pending.command, "control command");
        let done = |r: Result<(), CommandError>| r.map(|()| Answer::Done);
        let outcome = match pending.command {
            Command::Pause => done(self.pause().await),
            Command::Unpause => done(self.unpause().await),
            Command::Close => done(self.close().await),
            Command::Resize(size) => self.resize(size).await.map(Answer::Resized),
            Command::Qos(limits) => done(self.set_qos(limits)),
        };
        let (reply, result) = match outcome {
            Ok(answer) => (Ok(answer), Ok(())),
            // A xenstore failure ends the device; the client hears why.
            Err(CommandError::Fatal(e)) => (Err(error_chain(&e)), Err(e)),
            Err(CommandError::Refused(why)) => (Err(why), Ok(())),
        };
        let _ = pending.reply.send(reply);
        result
    }

    /// Answers every request in flight, flushes the image and releases the rings; the state
    /// stays Connected, so the guest queues new requests in its ring.
    async fn pause(&mut self) -> Result<(), CommandError> {
        if self.paused {
            return Ok(());
        }
        if self.state != XenbusState::Connected || self.workers.is_empty() {
            return Err(CommandError::Refused(format!(
                "device is not connected (backend state {:?})",
                self.state
            )));
        }
        self.disconnect().await;
        self.paused = true;
        self.control.update(|s| s.paused = true);
        let image = Arc::clone(&self.image);
        let flushed = tokio::task::spawn_blocking(move || flush_image(&*image))
            .await
            .map_err(|e| CommandError::Refused(format!("flush task failed: {e}")))?;
        if let Err(e) = flushed {
            let why = format!("paused, but the flush failed: {}", error_chain(&e));
            tracing::error!(error = %why, "pause");
            return Err(CommandError::Refused(why));
        }
        tracing::info!("paused: rings released, image flushed");
        Ok(())
    }

    /// Maps the rings again after [`Self::pause`] and serves what the guest queued meanwhile.
    async fn unpause(&mut self) -> Result<(), CommandError> {
        if !self.paused {
            return Ok(());
        }
        self.paused = false;
        self.control.update(|s| s.paused = false);
        let fe = self.frontend_state().await.map_err(CommandError::Fatal)?;
        let fe_ready = matches!(fe, XenbusState::Initialised | XenbusState::Connected);
        if !fe_ready || !self.workers.is_empty() {
            return Ok(());
        }
        if self.state == XenbusState::Connected {
            if let Err(e) = self.connect().await {
                let why = format!("cannot map the rings again: {}", error_chain(&e));
                fatal::write_error(&self.store, &self.spec.backend_path, e.errno(), &why).await;
                self.disconnect().await;
                self.set_state(XenbusState::Closing)
                    .await
                    .map_err(CommandError::Fatal)?;
                return Err(CommandError::Refused(why));
            }
            tracing::info!("unpaused");
            return Ok(());
        }
        self.connect_or_close().await.map_err(CommandError::Fatal)
    }

    /// New I/O limits from the control socket; they hold until the `qos/` keys change or the
    /// frontend connects again (both read the keys).
    fn set_qos(&mut self, limits: QosLimits) -> Result<(), CommandError> {
        self.qos.set_limits(limits).map_err(CommandError::Refused)?;
        tracing::info!(qos = %limits, "QoS limits set by a control command");
        Ok(())
    }

    /// Grows the disk online (see [`Command::Resize`]); a refusal leaves it serving.
    async fn resize(&mut self, size: u64) -> Result<crate::control::Resized, CommandError> {
        self.grow_to(size).await.map_err(|e| match e {
            e @ Error::Xenstore { .. } => CommandError::Fatal(e),
            e => {
                let why = error_chain(&e);
                tracing::warn!(error = %why, new = size, "resize refused");
                CommandError::Refused(why)
            }
        })
    }

    /// Asks the frontend to close and lets the device go once it has, as when the toolstack
    /// sets `online` to 0.
    async fn close(&mut self) -> Result<(), CommandError> {
        self.paused = false;
        self.online = false;
        self.go_offline().await.map_err(CommandError::Fatal)
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

/// Why a control command was not carried out.
enum CommandError {
    /// Not possible now; the device goes on.
    Refused(String),
    /// The device cannot go on.
    Fatal(Error),
}

/// Makes every write the image completed durable, through a queue of its own.
fn flush_image(image: &dyn BlockImage) -> Result<(), Error> {
    let mut queue = image.open_queue(1)?;
    queue.submit(rustbk_formats::IoOp::Flush, 0)?;
    queue.commit()?;
    let mut done = Vec::new();
    while done.is_empty() {
        queue.wait(None)?;
        queue.reap(&mut done);
    }
    done.into_iter()
        .try_for_each(|c| c.result)
        .map_err(Error::from)
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
