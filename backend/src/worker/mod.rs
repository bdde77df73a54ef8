//! The data path: one thread per ring (one per queue of a multi-queue device), driving its own
//! image queue; the rings of a device share no lock on the request path (but the throttle of a
//! disk with I/O limits).
//!
//! The thread sleeps in `poll(2)` on three descriptors: the event channel (new requests), the
//! image queue's completion notifier, and a stop doorbell. Each wake-up pulls every pending
//! request (copied out of the ring once and validated), submits their I/O as one batch, reaps
//! completions, publishes responses and notifies the frontend only when it asked for it. A
//! disk with I/O limits holds back the request that would exceed them and sleeps until it may
//! start (see [`crate::qos`]).

mod adaptive;
mod copy_path;
mod dispatch;
mod fault;
mod fixed;
mod order;
mod persistent;
mod qos;
mod ring_loop;
mod slots;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use rustbk_formats::ImageQueue;
use rustbk_grant::{EventChannel, EventFd, GuestHandle, RingPages};
use rustbk_ring::{BackRing, DiskLimits, DomId};

pub use fault::PANIC_AT_SECTOR_ENV;

use crate::{Error, Stats};

/// Everything a ring worker needs, set up by the xenbus state machine.
pub struct RingResources {
    /// The mapped shared ring.
    pub ring: BackRing<RingPages>,
    /// The bound event channel.
    pub evtchn: Box<dyn EventChannel>,
    /// The guest, for mapping data and indirect pages.
    pub guest: Arc<dyn GuestHandle>,
    /// The image queue this ring owns.
    pub queue: Box<dyn ImageQueue>,
}

/// Identity and limits of the device a worker serves.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// The frontend's domain.
    pub domid: DomId,
    /// The virtual device number.
    pub devid: u32,
    /// Which of the device's rings (queues) this is; 0 with a single ring.
    pub queue: u32,
    /// What requests may do. Its `sectors` is replaced by [`WorkerConfig::sectors`] before
    /// each request is validated.
    pub limits: DiskLimits,
    /// The disk's size now, which an online resize raises while the worker runs.
    pub sectors: DiskSectors,
    /// Keep up to this many grants mapped across requests (`feature-persistent` negotiated);
    /// 0 maps every request's pages afresh.
    pub persistent_grants: usize,
    /// Unmap persistent grants left unused for this long (`None`: keep them while connected).
    pub persistent_unused: Option<std::time::Duration>,
    /// Most microseconds to busy-poll for work before sleeping (0: never poll); the window
    /// adapts below it (`adaptive`).
    pub poll_us: u32,
    /// Busy-poll even while runnable threads outnumber the CPUs.
    pub poll_shared_cores: bool,
    /// How the guest's data pages are reached.
    pub data_path: DataPath,
    /// Register persistently mapped pages as the image queue's io_uring fixed buffers.
    pub fixed_buffers: bool,
    /// The disk's I/O limits, shared by its rings and changed while it is served.
    pub qos: Arc<crate::qos::DiskQos>,
}

/// How a ring worker reaches the guest's data pages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DataPath {
    /// Map the granted pages and do the I/O straight into them (Linux blkback's way), keeping
    /// them mapped across requests when persistent grants are negotiated.
    #[default]
    Map,
    /// Grant-copy between the guest's pages and bounce buffers the worker owns (tapdisk's and
    /// QEMU qdisk's way): no mapping, no persistent grants.
    Copy,
}

impl DataPath {
    /// The name used by the `data-path` backend key and the `--data-path` flag.
    pub fn name(self) -> &'static str {
        match self {
            DataPath::Map => "map",
            DataPath::Copy => "copy",
        }
    }
}

impl std::fmt::Display for DataPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for DataPath {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "map" => Ok(DataPath::Map),
            "copy" => Ok(DataPath::Copy),
            other => Err(format!("unknown data path {other:?} (map or copy)")),
        }
    }
}

/// A disk's size in 512-byte sectors (always 512-byte units, as the ring's sector fields), shared
/// by the control plane and every ring worker of the disk. An online resize raises it once the
/// image has grown and before the new size is announced, and each worker reads it before it
/// validates a request, so no request is checked against an older, smaller size after the
/// guest could know the new one, and none against a size the image does not have.
#[derive(Clone, Debug, Default)]
pub struct DiskSectors(Arc<AtomicU64>);

impl DiskSectors {
    /// A size of `sectors`.
    pub fn new(sectors: u64) -> DiskSectors {
        DiskSectors(Arc::new(AtomicU64::new(sectors)))
    }

    /// The size now.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// Sets the size (every worker sharing it sees it at its next request).
    pub fn set(&self, sectors: u64) {
        self.0.store(sectors, Ordering::Release);
    }
}

/// Longest thread name Linux keeps (`comm`, 16 bytes with the NUL); longer names are cut.
pub const THREAD_NAME_MAX: usize = 15;

/// The name of the ring worker thread of queue `queue` of disk `devid` of guest `domid`:
/// `ring-d<domid>-<devid>q<queue>` (what `top -H`, `ps -L` and `/proc/<pid>/task/<tid>/comm`
/// show, cut to [`THREAD_NAME_MAX`] bytes by the kernel for large numbers).
pub fn thread_name(domid: DomId, devid: u32, queue: u32) -> String {
    format!("{}{queue}", disk_thread_prefix(domid, devid))
}

/// What the names of every ring worker thread of one disk start with: `ring-d<domid>-<devid>q`.
/// Tools find a disk's data-path threads in a backend process by it, e.g. `rustbk bench
/// --null` to measure their CPU time.
pub fn disk_thread_prefix(domid: DomId, devid: u32) -> String {
    format!("ring-d{}-{}q", domid.0, devid)
}

/// Why a worker thread ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkerExit {
    /// Asked to stop; every in-flight request was answered.
    Stopped,
    /// The frontend broke the ring protocol (request producer beyond the ring): disconnected.
    RingOverflow,
    /// An unrecoverable local error.
    Failed(String),
}

/// A running ring worker.
pub struct Worker {
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<WorkerExit>>,
}

impl Worker {
    /// Starts the worker thread. `on_exit` runs on that thread when it ends, whatever the cause.
    pub fn spawn(
        cfg: WorkerConfig,
        res: RingResources,
        stats: Arc<Stats>,
        on_exit: impl FnOnce(&WorkerExit) + Send + 'static,
    ) -> Result<Worker, Error> {
        let stop = Arc::new(EventFd::new()?);
        let thread_stop = Arc::clone(&stop);
        let name = thread_name(cfg.domid, cfg.devid, cfg.queue);
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                // `run` catches a panic of the loop itself; this catches one during set-up or
                // clean-up, so `on_exit` runs whatever happens.
                let run = AssertUnwindSafe(|| ring_loop::run(cfg, res, stats, &thread_stop));
                let exit = std::panic::catch_unwind(run).unwrap_or_else(|panic| {
                    let msg = panic_message(&*panic);
                    tracing::error!(panic = %msg, "ring worker panicked");
                    WorkerExit::Failed(format!("panicked: {msg}"))
                });
                on_exit(&exit);
                exit
            })
            .map_err(Error::Spawn)?;
        Ok(Worker {
            stop,
            thread: Some(thread),
        })
    }

    /// Asks the worker to stop taking requests without waiting for it (see [`Worker::stop`]).
    pub fn ask_stop(self) -> Worker {
        if let Err(e) = self.stop.signal() {
            tracing::error!(error = %e, "cannot signal ring worker to stop");
        }
        self
    }

    /// Asks the worker to stop taking requests, waits until every in-flight request is
    /// answered, and returns why it ended. Blocks.
    pub fn stop(mut self) -> WorkerExit {
        self.join()
    }

    fn join(&mut self) -> WorkerExit {
        if let Err(e) = self.stop.signal() {
            tracing::error!(error = %e, "cannot signal ring worker to stop");
        }
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(exit)) => exit,
            Some(Err(_)) => WorkerExit::Failed("ring worker panicked".into()),
            None => WorkerExit::Stopped,
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.join();
        }
    }
}

/// The text of a panic payload (`panic!` with a literal or a formatted message).
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_owned()
    }
}
