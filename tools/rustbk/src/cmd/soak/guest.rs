//! The soak's guests: each runs a paced, verifying workload on its disk, rebooting (closing its
//! frontend and connecting again) on schedule with the same model of its data; a second disk
//! is hot-attached now and then, verified, and detached.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use rustbk_blkfront::toolstack::{self, VbdSpec};
use rustbk_blkfront::workload::{DiskModel, Pattern, Report, Workload, run_with_model};
use rustbk_blkfront::{FrameAlloc, Frontend, FrontendConfig};
use rustbk_grant::emu::EmuDomain;
use rustbk_ring::DomId;
use rustbk_xenstored::XsClient;
use serde::Serialize;

/// Pages of guest RAM: the first disk uses the upper half, a hot-attached disk the lower.
pub const RAM_PAGES: u32 = 1024;
const HALF: u32 = RAM_PAGES / 2;
/// How long the frontend waits for each backend state change (32 workers start at once).
const STATE_TIMEOUT: Duration = Duration::from_secs(30);

/// The workload every guest runs.
#[derive(Clone, Debug)]
pub struct Load {
    /// Requests in flight.
    pub qd: u32,
    /// Requests per second per disk.
    pub rate: u32,
    /// A flush after this many writes.
    pub flush_every: u64,
    /// The run's seed (each run of each guest derives its own).
    pub seed: u64,
}

impl Load {
    fn workload(&self, seed: u64, duration: Duration) -> Workload {
        Workload {
            pattern: Pattern::Random,
            read_percent: 50,
            block_size: 4096,
            queue_depth: self.qd,
            duration,
            max_ops: None,
            verify: true,
            fresh: true,
            region: None,
            flush_every: Some(self.flush_every),
            seed,
            rate: Some(self.rate),
        }
    }
}

/// What a guest (or a hot-attached disk) did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Tally {
    /// Completed reads.
    pub reads: u64,
    /// Completed writes.
    pub writes: u64,
    /// Completed flushes.
    pub flushes: u64,
    /// Requests answered with an error.
    pub errors: u64,
    /// Reads that did not return what was written.
    pub mismatches: u64,
    /// Reboots (close and reconnect) done.
    pub reboots: u64,
    /// Hot attach and detach cycles done.
    pub hotplugs: u64,
    /// Failures that stopped a guest or a hot attach (handshake, timeout, ...).
    pub failures: Vec<String>,
}

impl Tally {
    fn add_report(&mut self, r: &Report) {
        self.reads += r.reads;
        self.writes += r.writes;
        self.flushes += r.flushes;
        self.errors += r.errors;
        self.mismatches += r.mismatches;
    }

    /// Adds `o` to this tally.
    pub fn merge(&mut self, o: Tally) {
        self.reads += o.reads;
        self.writes += o.writes;
        self.flushes += o.flushes;
        self.errors += o.errors;
        self.mismatches += o.mismatches;
        self.reboots += o.reboots;
        self.hotplugs += o.hotplugs;
        self.failures.extend(o.failures);
    }
}

/// One guest of the soak and what it shares with its hot-attach threads.
pub struct Guest {
    /// The guest's domain.
    pub dom: Arc<EmuDomain>,
    /// Its first disk (xvda), attached for the whole run.
    pub xvda: VbdSpec,
    /// Its second disk (xvdb), attached now and then.
    pub xvdb: VbdSpec,
    /// The model of xvdb's data, kept across attaches.
    pub xvdb_model: Mutex<Option<DiskModel>>,
    /// The guest's own xenstore socket.
    pub socket: PathBuf,
    /// The toolstack's (dom0's) xenstore socket.
    pub toolstack_socket: PathBuf,
}

impl Guest {
    fn frontend_config(&self, devid: u32) -> FrontendConfig {
        let mut cfg = FrontendConfig::new(self.dom.domid(), devid);
        cfg.timeout = STATE_TIMEOUT;
        cfg
    }

    fn seed(&self, load: &Load, devid: u32, run: u64) -> u64 {
        load.seed ^ (u64::from(self.dom.domid().0) << 40) ^ (u64::from(devid) << 20) ^ run
    }
}

/// Runs guest `g` on xvda until `end`, rebooting at the given offsets from `start`.
pub fn run_guest(
    g: &Guest,
    load: &Load,
    start: Instant,
    reboots: &[Duration],
    end: Instant,
) -> Tally {
    let mut tally = Tally::default();
    if let Err(e) = guest_loop(g, load, start, reboots, end, &mut tally) {
        tally
            .failures
            .push(format!("guest {}: {e:#}", g.dom.domid().0));
    }
    tally
}

fn guest_loop(
    g: &Guest,
    load: &Load,
    start: Instant,
    reboots: &[Duration],
    end: Instant,
    tally: &mut Tally,
) -> anyhow::Result<()> {
    let mut frames = FrameAlloc::new(RAM_PAGES);
    frames.alloc(HALF)?;
    let mut xs = XsClient::connect(&g.socket).context("cannot reach xenstore")?;
    let mut model: Option<DiskModel> = None;
    let stops = reboots.iter().map(|t| start + *t).chain([end]);
    for (run, stop) in (0u64..).zip(stops) {
        let cfg = g.frontend_config(g.xvda.devid);
        let mut front = Frontend::connect(Arc::clone(&g.dom), xs, frames, cfg)
            .with_context(|| format!("connect (after {} reboots)", tally.reboots))?;
        let w = load.workload(
            g.seed(load, g.xvda.devid, run),
            stop.saturating_duration_since(Instant::now()),
        );
        let m = match &mut model {
            Some(m) => m,
            empty => empty.insert(DiskModel::for_workload(&front, &w)?),
        };
        let report = run_with_model(&mut front, &w, m, &mut |_| {})
            .with_context(|| format!("workload (after {} reboots)", tally.reboots))?;
        tally.add_report(&report);
        let closed = front.close().context("close")?;
        (xs, frames) = (closed.xs, closed.frames);
        if stop >= end {
            break;
        }
        tally.reboots += 1;
    }
    Ok(())
}

/// Hot-attaches xvdb to guest `g` as the toolstack does, verifies I/O on it for `hold`, then
/// the guest closes it and the toolstack removes it.
pub fn hot_attach(g: &Guest, load: &Load, hold: Duration, run: u64) -> Tally {
    let mut tally = Tally::default();
    match hot_cycle(g, load, hold, run) {
        Ok(r) => {
            tally.add_report(&r);
            tally.hotplugs = 1;
        }
        Err(e) => tally
            .failures
            .push(format!("guest {} hot attach: {e:#}", g.dom.domid().0)),
    }
    tally
}

fn hot_cycle(g: &Guest, load: &Load, hold: Duration, run: u64) -> anyhow::Result<Report> {
    let ts = XsClient::connect(&g.toolstack_socket).context("toolstack xenstore")?;
    toolstack::add_vbd(&ts, &g.xvdb).context("add xvdb")?;
    let used = use_xvdb(g, load, hold, run);
    let removed = toolstack::remove_vbd(&ts, &g.xvdb, STATE_TIMEOUT).context("remove xvdb");
    let report = used?;
    removed?;
    Ok(report)
}

/// The guest's side of a hot attach: connect xvdb, verify I/O on it, close it.
fn use_xvdb(g: &Guest, load: &Load, hold: Duration, run: u64) -> anyhow::Result<Report> {
    let xs = XsClient::connect(&g.socket).context("guest xenstore")?;
    let cfg = g.frontend_config(g.xvdb.devid);
    let mut front = Frontend::connect(Arc::clone(&g.dom), xs, FrameAlloc::new(HALF), cfg)
        .context("connect xvdb")?;
    let w = load.workload(g.seed(load, g.xvdb.devid, run), hold);
    let mut guard = g.xvdb_model.lock().unwrap_or_else(PoisonError::into_inner);
    let m = match &mut *guard {
        Some(m) => m,
        empty => empty.insert(DiskModel::for_workload(&front, &w)?),
    };
    let report = run_with_model(&mut front, &w, m, &mut |_| {}).context("xvdb workload")?;
    front.close().context("close xvdb")?;
    Ok(report)
}

/// The toolstack's spec of guest `domid`'s disk `devid` on `image`.
pub fn spec(domid: DomId, devid: u32, image: &std::path::Path) -> VbdSpec {
    VbdSpec::rustbk(domid, devid, image.display().to_string())
}
