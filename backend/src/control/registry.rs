//! The devices a worker process serves, as the control socket sees them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rustbk_ring::DomId;
use tokio::sync::{mpsc, oneshot};

use super::proto::DeviceReport;
use crate::Stats;

/// A command for one device's state machine.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Command {
    /// Drain, flush, release the rings; requests wait in the ring.
    Pause,
    /// Serve the rings again.
    Unpause,
    /// Ask the frontend to close and stop serving.
    Close,
    /// Grow the disk online to this many bytes, as Linux blkback does when its device grows:
    /// the image grows first (raw: the file is extended unless it already holds the size;
    /// qcow2: a larger L1 table and the header's size; a thin volume: in its pool), then the
    /// size every ring worker checks requests against, and then, if a frontend is connected,
    /// the new `sectors` (512-byte units) and `state` (Connected again) are written in one
    /// xenstore transaction, so that blkfront re-reads `sectors` without a reboot. The size
    /// must be a whole number of logical sectors. Shrinking is refused, and so are null disks,
    /// block devices (grow the device: it is taken up within a second), a qcow2 image whose
    /// backing file (or a thin volume whose origin) is larger, and a thin volume whose pool
    /// the worker opened itself. A refused resize leaves the disk serving at its old size.
    Resize(u64),
    /// Replace the disk's I/O limits (all of them: limits not named are lifted) until its
    /// `qos/` keys change or its frontend connects again.
    Qos(crate::qos::QosLimits),
}

/// What an online resize did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Resized {
    /// The disk's size before, in bytes.
    pub old: u64,
    /// The disk's size now, in bytes.
    pub new: u64,
    /// Announced to a connected frontend; false while none is connected (it reads the size
    /// when it connects).
    pub announced: bool,
}

/// The outcome of a command that was carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Done.
    Done,
    /// The disk was resized.
    Resized(Resized),
}

/// A command with the channel its outcome goes back on.
#[derive(Debug)]
pub struct Pending {
    /// What to do.
    pub command: Command,
    /// The outcome: `Err` holds a message for the client.
    pub reply: oneshot::Sender<Result<Answer, String>>,
}

/// What `list` shows of a device; kept up to date by its state machine.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceStatus {
    /// The backend's xenbus state.
    pub state: String,
    /// Paused by a `pause` command.
    pub paused: bool,
    /// The toolstack's `params`.
    pub params: String,
    /// The format's name.
    pub format: String,
    /// The cache mode's name.
    pub cache: String,
    /// How guest pages are reached: `map` or `copy`.
    pub data_path: String,
    /// Served read-only.
    pub read_only: bool,
    /// Size in bytes.
    pub size: u64,
    /// Rings connected now.
    pub queues: u32,
}

struct Entry {
    domid: DomId,
    stats: Arc<Stats>,
    status: Arc<Mutex<DeviceStatus>>,
    commands: mpsc::UnboundedSender<Pending>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The devices of one worker process, by device number.
#[derive(Clone, Default)]
pub struct Registry(Arc<Mutex<BTreeMap<u32, Entry>>>);

impl Registry {
    /// Registers device `devid` of guest `domid` (replacing an earlier registration of the
    /// same device); it stays listed until the returned handle is dropped.
    pub fn register(&self, domid: DomId, devid: u32) -> DeviceControl {
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(Stats::default());
        let status = Arc::new(Mutex::new(DeviceStatus::default()));
        let entry = Entry {
            domid,
            stats: Arc::clone(&stats),
            status: Arc::clone(&status),
            commands: tx,
        };
        lock(&self.0).insert(devid, entry);
        DeviceControl {
            registry: Some(self.clone()),
            devid,
            stats,
            status,
            commands: rx,
            _idle: None,
        }
    }

    /// The devices (all, or `devid` only), with their counters if `with_stats`.
    pub fn reports(&self, devid: Option<u32>, with_stats: bool) -> Vec<DeviceReport> {
        let pid = std::process::id();
        lock(&self.0)
            .iter()
            .filter(|(id, _)| devid.is_none_or(|d| d == **id))
            .map(|(id, e)| DeviceReport {
                pid,
                domid: e.domid.0,
                devid: *id,
                status: lock(&e.status).clone(),
                stats: with_stats.then(|| e.stats.snapshot()),
            })
            .collect()
    }

    /// Hands `command` to device `devid`'s state machine and waits for the outcome.
    pub async fn command(&self, devid: u32, command: Command) -> Result<Answer, String> {
        let (reply, outcome) = oneshot::channel();
        let sent = {
            let devices = lock(&self.0);
            let entry = devices
                .get(&devid)
                .ok_or_else(|| format!("no device {devid} in this worker"))?;
            entry.commands.send(Pending { command, reply })
        };
        sent.map_err(|_| format!("device {devid} is shutting down"))?;
        outcome
            .await
            .map_err(|_| format!("device {devid} ended before answering"))?
    }

    fn unregister(&self, devid: u32, status: &Arc<Mutex<DeviceStatus>>) {
        let mut devices = lock(&self.0);
        if devices
            .get(&devid)
            .is_some_and(|e| Arc::ptr_eq(&e.status, status))
        {
            devices.remove(&devid);
        }
    }
}

/// One device's side of the registry: its counters, its status, the commands sent to it.
pub struct DeviceControl {
    registry: Option<Registry>,
    devid: u32,
    stats: Arc<Stats>,
    status: Arc<Mutex<DeviceStatus>>,
    commands: mpsc::UnboundedReceiver<Pending>,
    /// A detached device's own sender, so that its receiver never reports the end.
    _idle: Option<mpsc::UnboundedSender<Pending>>,
}

impl DeviceControl {
    /// A device no control socket reaches (its commands never arrive).
    pub fn detached(devid: u32) -> DeviceControl {
        let (tx, rx) = mpsc::unbounded_channel();
        DeviceControl {
            registry: None,
            devid,
            stats: Arc::new(Stats::default()),
            status: Arc::new(Mutex::new(DeviceStatus::default())),
            commands: rx,
            _idle: Some(tx),
        }
    }

    /// The device's counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Changes what `list` shows.
    pub fn update(&self, f: impl FnOnce(&mut DeviceStatus)) {
        f(&mut lock(&self.status));
    }

    /// The next command; pending forever on a detached device.
    pub async fn next_command(&mut self) -> Option<Pending> {
        self.commands.recv().await
    }
}

impl Drop for DeviceControl {
    fn drop(&mut self) {
        if let Some(registry) = &self.registry {
            registry.unregister(self.devid, &self.status);
        }
    }
}
