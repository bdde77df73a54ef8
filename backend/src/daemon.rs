//! `rustbk daemon`: the long-running dom0 watcher.
//!
//! Watches `backend/<kind>` of its own domain for every kind it is given (`vbd` and `vbd3` by
//! default, [`crate::xenbus::DEFAULT_KINDS`]); for every guest with a disk rustbk claims (see
//! [`crate::xenbus::claimed`]) it starts one worker process (`rustbk serve --domid N`), which
//! moves the new devices to InitWait within libxl's window and serves them. A worker that
//! crashes while its guest still has disks is restarted (at most [`MAX_RESTARTS`] times a
//! minute); one guest's crash never touches another guest's worker. Workers outlive a daemon
//! restart: the per-guest lock tells the new daemon they are still there.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustbk_ring::DomId;
use tokio::process::Command;
use tokio::sync::mpsc;

use crate::Error;
use crate::lock::GuestLock;
use crate::xenbus::{ClaimRules, Store, backend_root, claimed_disks};

/// Restarts allowed per guest within [`RESTART_WINDOW`].
pub const MAX_RESTARTS: usize = 5;
/// The window of [`MAX_RESTARTS`].
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// How often the daemon re-checks everything, watch events or not.
const RESCAN: Duration = Duration::from_secs(5);

/// Builds the command that serves one guest.
pub type WorkerCommand = Arc<dyn Fn(DomId) -> Command + Send + Sync>;

/// What the daemon needs.
#[derive(Clone)]
pub struct DaemonConfig {
    /// Our own domain.
    pub backend: DomId,
    /// Backend kinds to watch (`vbd`, `vbd3`); one worker serves a guest's disks of all of
    /// them.
    pub kinds: Vec<String>,
    /// Folder of the per-guest lock files.
    pub lock_dir: PathBuf,
    /// The worker command for a guest.
    pub worker: WorkerCommand,
    /// Which disks are ours.
    pub claim: ClaimRules,
}

#[derive(Default)]
struct GuestWorker {
    running: bool,
    starts: Vec<Instant>,
}

/// Runs until xenstore goes away.
pub async fn run_daemon(store: Store, cfg: DaemonConfig) -> Result<(), Error> {
    let roots: Vec<String> = cfg
        .kinds
        .iter()
        .map(|kind| backend_root(cfg.backend, kind))
        .collect();
    let mut watch = store.watch_all(&roots).await?;
    let (exits, mut exit_rx) = mpsc::unbounded_channel::<(DomId, std::io::Result<ExitStatus>)>();
    let mut guests: HashMap<u16, GuestWorker> = HashMap::new();
    let mut rescan = tokio::time::interval(RESCAN);
    tracing::info!(?roots, "daemon watching");
    loop {
        reconcile(&store, &cfg, &roots, &mut guests, &exits).await?;
        tokio::select! {
            ev = watch.next() => if ev.is_none() { return Ok(()) },
            Some((domid, status)) = exit_rx.recv() => worker_exited(&mut guests, domid, status),
            _ = rescan.tick() => {}
        }
    }
}

async fn reconcile(
    store: &Store,
    cfg: &DaemonConfig,
    roots: &[String],
    guests: &mut HashMap<u16, GuestWorker>,
    exits: &mpsc::UnboundedSender<(DomId, std::io::Result<ExitStatus>)>,
) -> Result<(), Error> {
    for id in guest_ids(store, roots).await? {
        let domid = DomId(id);
        let g = guests.entry(id).or_default();
        if g.running
            || claimed_disks(store, cfg.backend, &cfg.kinds, domid, &cfg.claim)
                .await?
                .is_empty()
        {
            continue;
        }
        if GuestLock::is_held(&cfg.lock_dir, domid).unwrap_or(false) {
            continue;
        }
        let now = Instant::now();
        g.starts.retain(|t| now.duration_since(*t) < RESTART_WINDOW);
        if g.starts.len() >= MAX_RESTARTS {
            tracing::error!(
                domid = id,
                "worker keeps failing; not restarting within the window"
            );
            continue;
        }
        start_worker(cfg, domid, exits);
        g.running = true;
        g.starts.push(now);
    }
    guests.retain(|_, g| g.running || !g.starts.is_empty());
    Ok(())
}

/// The guests with a directory under any of `roots`, each once, in order.
async fn guest_ids(store: &Store, roots: &[String]) -> Result<Vec<u16>, Error> {
    let mut ids = Vec::new();
    for root in roots {
        for name in store.directory(root).await? {
            if let Ok(id) = name.parse::<u16>() {
                ids.push(id);
            }
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

fn start_worker(
    cfg: &DaemonConfig,
    domid: DomId,
    exits: &mpsc::UnboundedSender<(DomId, std::io::Result<ExitStatus>)>,
) {
    let mut cmd = (cfg.worker)(domid);
    cmd.kill_on_drop(false);
    let exits = exits.clone();
    match cmd.spawn() {
        Ok(mut child) => {
            tracing::info!(domid = domid.0, pid = child.id(), "worker started");
            tokio::spawn(async move {
                let status = child.wait().await;
                let _ = exits.send((domid, status));
            });
        }
        Err(e) => {
            tracing::error!(domid = domid.0, error = %e, "cannot start worker");
            let _ = exits.send((domid, Err(e)));
        }
    }
}

fn worker_exited(
    guests: &mut HashMap<u16, GuestWorker>,
    domid: DomId,
    status: std::io::Result<ExitStatus>,
) {
    match &status {
        Ok(s) if s.success() => tracing::info!(domid = domid.0, "worker finished"),
        Ok(s) => tracing::error!(domid = domid.0, status = %s, "worker crashed"),
        Err(e) => tracing::error!(domid = domid.0, error = %e, "worker lost"),
    }
    if let Some(g) = guests.get_mut(&domid.0) {
        g.running = false;
        if matches!(status, Ok(s) if s.success()) {
            g.starts.clear();
        }
    }
}
