//! Recording one workload: a pool service in this process, a worker thread per volume over
//! the socket, two live snapshots through the admin channel, and (per scenario) a worker or
//! the service killed on the way.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustbk_formats::EngineKind;

use super::log::{Dev, DevRecorder, Event, Log, Source};
use super::model::{Expect, Gens, UNIT, VolModel, origin_bytes};
use super::workload::{self, Ctl, Killed, Outcome, Remains};
use crate::pool::{Origin, Pool, PoolOptions, Recorders, VolumeSpec};
use crate::service::{AdminClient, Service};
use crate::testing::sized_file;

/// Data block size.
pub(super) const BS: u64 = 64 << 10;
/// Data device size: 320 blocks.
const DATA_BYTES: usize = 320 << 16;
/// Metadata device size.
const META_BYTES: usize = 4 << 20;
/// Units of every volume (2 MiB).
const VOLUME_UNITS: usize = 512;
/// The external origin covers the first three quarters of volume 2 (zeros after).
const ORIGIN_UNITS: usize = VOLUME_UNITS * 3 / 4;
/// The volumes served, each by a worker; volume 2 has an external origin.
const VOLUMES: [u64; 3] = [1, 2, 3];
/// Snapshots taken while their origin is served: (origin, snapshot).
const SNAPSHOTS: [(u64, u64); 2] = [(1, 11), (2, 12)];

/// What happens besides the power cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Scenario {
    /// Nothing: every process runs until the power is cut.
    PowerCut,
    /// Volume 3's worker is killed at about 60% of its ops.
    KillWorker,
    /// The pool service is killed at about 60% of volume 3's ops; the workers go on.
    KillService,
}

/// How to record.
#[derive(Clone, Copy, Debug)]
pub(super) struct Options {
    pub scenario: Scenario,
    pub engine: EngineKind,
    pub passdown: bool,
    /// Commits skip the data device's sync (the broken order the test must notice).
    pub broken: bool,
    pub ops: usize,
    pub seed: u64,
}

/// A volume of the recording and what it holds.
pub(super) enum Volume {
    /// Served by a worker from the start.
    Served(VolModel),
    /// A snapshot, and how many events had completed when it returned.
    Snapshot { expect: Expect, returned_at: usize },
}

/// A recorded workload.
pub(super) struct Recording {
    pub dir: tempfile::TempDir,
    pub events: Vec<Event>,
    /// Events of the pool's creation and its volumes' (no cut before them).
    pub start: usize,
    pub service_dead_at: Option<usize>,
    pub killed: Option<Killed>,
    pub volumes: Vec<(u64, Volume)>,
    /// The volume records as the recording left them.
    pub sidecar: std::collections::BTreeMap<u64, crate::pool::VolumeRecord>,
    pub outcomes: Vec<Outcome>,
}

impl Recording {
    /// Sizes of the metadata and data devices.
    pub fn sizes(&self) -> (usize, usize) {
        (META_BYTES, DATA_BYTES)
    }
}

struct Running {
    handles: Vec<std::thread::JoinHandle<(Remains, Outcome)>>,
    models: Vec<Arc<Mutex<VolModel>>>,
    ctls: Vec<Arc<Ctl>>,
}

/// Records one workload.
pub(super) fn record(opts: Options) -> Recording {
    let dir = tempfile::tempdir().unwrap();
    let (meta, data) = (dir.path().join("meta"), dir.path().join("data"));
    sized_file(&meta, META_BYTES as u64);
    sized_file(&data, DATA_BYTES as u64);
    let origin = dir.path().join("origin.raw");
    std::fs::write(&origin, origin_bytes(ORIGIN_UNITS)).unwrap();
    let log = Arc::new(Log::default());
    let pool = create_pool(&meta, &data, &log, &opts);
    create_volumes(&pool, &origin);
    let socket = dir.path().join("pool.sock");
    let mut service = Some(Service::start(pool, &socket).unwrap());
    let start = log.len();
    let gens = Arc::new(Gens::default());
    let running = start_workers(&socket, &data, &log, &gens, &opts);
    let mut volumes = Vec::new();
    for (i, &(origin, id)) in SNAPSHOTS.iter().enumerate() {
        wait_for(&running.ctls[i], snapshot_at(&opts, i));
        running.ctls[i].release();
        let model = &running.models[i];
        volumes.push((id, snapshot(&socket, &log, model, (origin, id))));
    }
    let service_dead_at = kill(opts, &running.ctls[2], &mut service, &log);
    let (remains, outcomes): (Vec<_>, Vec<_>) = running
        .handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .unzip();
    if let Some(service) = service {
        service.stop().unwrap();
    }
    let events = log.freeze();
    drop(remains);
    let killed = outcomes.iter().find_map(|o| o.killed);
    let kill_worker = opts.scenario == Scenario::KillWorker;
    assert_eq!(killed.is_some(), kill_worker, "the worker was not killed");
    let abrupt = killed.is_none_or(|k| k.held > 0 && k.in_flight > 0);
    assert!(
        abrupt,
        "the worker died holding no block or with no op in flight"
    );
    for (id, model) in VOLUMES.iter().zip(&running.models) {
        let model = model.lock().unwrap().clone();
        volumes.push((*id, Volume::Served(model)));
    }
    let sidecar = crate::pool::sidecar::load(&crate::pool::sidecar::path_for(&meta))
        .unwrap()
        .unwrap();
    Recording {
        dir,
        events,
        start,
        service_dead_at,
        killed,
        volumes,
        sidecar,
        outcomes,
    }
}

/// After how many of its ops the snapshot of `SNAPSHOTS[i]` is taken.
fn snapshot_at(opts: &Options, i: usize) -> usize {
    opts.ops * (i + 1) / 4
}

/// After how many of its ops volume 3's worker or the service is killed.
fn kill_at(opts: &Options) -> usize {
    opts.ops * 3 / 5
}

/// Where each worker holds still until the test acts: volumes 1 and 2 at their snapshots,
/// volume 3 where the scenario kills it or the service (0: nowhere).
fn hold_points(opts: &Options) -> [usize; 3] {
    let kill = match opts.scenario {
        Scenario::PowerCut => 0,
        Scenario::KillWorker | Scenario::KillService => kill_at(opts),
    };
    [snapshot_at(opts, 0), snapshot_at(opts, 1), kill]
}

/// Kills volume 3's worker or the service at 60% of that worker's ops, as the scenario
/// says, then lets the worker go on; returns how many events had completed when the service
/// died.
fn kill(opts: Options, ctl: &Ctl, service: &mut Option<Service>, log: &Log) -> Option<usize> {
    if opts.scenario == Scenario::PowerCut {
        return None;
    }
    wait_for(ctl, kill_at(&opts));
    if opts.scenario == Scenario::KillWorker {
        ctl.kill.store(true, Ordering::SeqCst);
        ctl.release();
        return None;
    }
    let mut dying = service.take()?;
    dying.close_connections();
    let dead_at = log.len();
    // The pool's last commit is recorded, and left out of every crash after this.
    drop(dying);
    ctl.release();
    Some(dead_at)
}

fn create_pool(meta: &Path, data: &Path, log: &Arc<Log>, opts: &Options) -> Pool {
    let recorders = Recorders {
        metadata: Some(DevRecorder::new(log, Dev::Meta, Source::Pool)),
        data: Some(DevRecorder::new(log, Dev::Data, Source::Pool)),
    };
    let pool_opts = PoolOptions {
        passdown: opts.passdown,
        pause_timeout: Duration::from_secs(30),
        ..PoolOptions::default()
    };
    let pool = Pool::create_recorded(meta, data, BS, pool_opts, recorders).unwrap();
    if opts.broken {
        pool.skip_data_sync_before_commit();
    }
    pool
}

fn create_volumes(pool: &Pool, origin: &Path) {
    for id in VOLUMES {
        let origin = (id == 2).then(|| Origin {
            path: origin.to_owned(),
            format: "raw".into(),
        });
        let spec = VolumeSpec {
            size: (VOLUME_UNITS * UNIT) as u64,
            name: format!("volume {id}"),
            origin,
        };
        pool.create_volume(id, spec).unwrap();
    }
}

fn start_workers(
    socket: &Path,
    data: &Path,
    log: &Arc<Log>,
    gens: &Arc<Gens>,
    opts: &Options,
) -> Running {
    let mut running = Running {
        handles: Vec::new(),
        models: Vec::new(),
        ctls: Vec::new(),
    };
    let holds = hold_points(opts);
    for (i, &volume) in VOLUMES.iter().enumerate() {
        let origin_units = if volume == 2 { ORIGIN_UNITS } else { 0 };
        let model = Arc::new(Mutex::new(VolModel::new(VOLUME_UNITS, origin_units)));
        let ctl = Arc::new(Ctl::default());
        ctl.hold_at.store(holds[i], Ordering::SeqCst);
        let setup = workload::Setup {
            socket: socket.to_owned(),
            data: data.to_owned(),
            volume,
            ops: opts.ops,
            engine: opts.engine,
            seed: opts.seed.wrapping_add(i as u64 * 0x1000_0001),
            log: log.clone(),
            gens: gens.clone(),
            model: model.clone(),
            ctl: ctl.clone(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("worker-{volume}"))
            .spawn(move || workload::run(setup))
            .unwrap();
        running.handles.push(handle);
        running.models.push(model);
        running.ctls.push(ctl);
    }
    running
}

/// Waits until the worker completed `ops` ops (or ended).
fn wait_for(ctl: &Ctl, ops: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while ctl.done.load(Ordering::SeqCst) < ops && !ctl.finished.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "worker makes no progress");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Snapshots `origin` as `id` through the admin channel while its worker runs.
fn snapshot(socket: &Path, log: &Log, model: &Mutex<VolModel>, (origin, id): (u64, u64)) -> Volume {
    let mut admin = AdminClient::connect(socket, Duration::from_secs(60)).unwrap();
    let lo = model.lock().unwrap().acked();
    admin
        .snapshot(origin, id, &format!("snapshot of {origin}"))
        .unwrap();
    let returned_at = log.len();
    let model = model.lock().unwrap();
    let expect = model.expect(lo, model.lens());
    Volume::Snapshot {
        expect,
        returned_at,
    }
}
