//! SIGKILL of a real backend process in the middle of a write + flush workload on qcow2, in
//! every cache mode that promises durability (none, writeback, writethrough, directsync).
//! A SIGKILL does not lose the page cache, so the page-cache modes are also checked for the
//! fdatasync their flushes must issue, with the engine's recorder (`formats/src/cache_tests.rs`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rustbk::cluster::EmuCluster;
use rustbk_blkfront::toolstack::VbdSpec;
use rustbk_blkfront::workload::fill_pattern;
use rustbk_blkfront::{FrameAlloc, Frontend, FrontendConfig, SlotPool};
use rustbk_formats::CacheMode;
use rustbk_grant::emu::{DomainConfig, EmuDomain};
use rustbk_ring::{DomId, Request, RwOp, Segments, status};
use rustbk_xenstored::XsClient;

use crate::model::{BLOCK, Change, Model};
use crate::qemu::{self, Spec};
use crate::rng::{self, Rng};

/// Cycles per cache mode: 12 covers every cluster size with and without a backing file
/// (cycle % 3, cycle % 4) and the synchronous engine twice (cycle % 5 == 2).
const CYCLES_PER_MODE: usize = 12;
pub(crate) const GUEST: DomId = DomId(1);
pub(crate) const XVDA: u32 = 51712;
pub(crate) const DISK: u64 = 64 << 20;
/// The workload writes the first half of the disk; the rest must keep its initial content.
pub(crate) const REGION: usize = 32 << 20;
const MAX_WRITE_BLOCKS: usize = 16;
const RAM_PAGES: u32 = 2048;

/// One cycle's image and backend set-up.
struct CycleSetup {
    spec: Spec,
    backend_args: Vec<&'static str>,
    cache: CacheMode,
    qd: u32,
    kill_after: Duration,
}

fn setup(cycle: usize, rng: &mut Rng, bases: &Bases, cache: CacheMode) -> CycleSetup {
    let cluster_size = [65536, 512, 2 << 20][cycle % 3];
    let compat = ["1.1", "0.10"][(cycle / 3) % 2];
    // Some version 3 images with 512-byte clusters get 64-bit refcounts: small refcount
    // blocks, and a refcount table that must grow.
    let refcount_bits = if cluster_size == 512 && compat == "1.1" && cycle % 4 < 2 {
        64
    } else {
        16
    };
    let backing = match cycle % 4 {
        1 => Some((bases.raw.clone(), "raw")),
        3 => Some((bases.qcow2.clone(), "qcow2")),
        _ => None,
    };
    let mut backend_args = vec!["--cache", cache.name()];
    if cycle % 5 == 2 {
        backend_args.extend(["--engine", "sync"]);
    }
    CycleSetup {
        spec: Spec {
            cluster_size,
            compat,
            refcount_bits,
            size: DISK,
            backing,
        },
        backend_args,
        cache,
        qd: rng.range(1, 16) as u32,
        kill_after: Duration::from_millis(rng.range(30, 1200)),
    }
}

/// Backing files shared by every cycle: raw, and qcow2, both with the same known content.
struct Bases {
    dir: tempfile::TempDir,
    raw: PathBuf,
    qcow2: PathBuf,
    content: Vec<u8>,
}

impl Bases {
    fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

fn bases() -> Bases {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut content = vec![0u8; DISK as usize];
    // Pattern in the first 48 MiB, zeros after (so backing data, holes and the end all occur).
    fill_pattern(&mut content[..48 << 20], 0, 0x00ba_5e00);
    let raw = dir.path().join("base.raw");
    std::fs::write(&raw, &content).expect("write base");
    let qcow2 = dir.path().join("base.qcow2");
    let (r, q) = (raw.display().to_string(), qcow2.display().to_string());
    qemu::ok(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        "-o",
        "cluster_size=4096",
        &r,
        &q,
    ]);
    Bases {
        dir,
        raw,
        qcow2,
        content,
    }
}

#[test]
fn qcow2_survives_sigkill_of_the_backend_during_writes_and_flushes_in_cache_mode_none() {
    sigkill_cycles(CacheMode::None);
}

#[test]
fn qcow2_survives_sigkill_of_the_backend_during_writes_and_flushes_in_cache_mode_writeback() {
    sigkill_cycles(CacheMode::Writeback);
}

#[test]
fn qcow2_survives_sigkill_of_the_backend_during_writes_and_flushes_in_cache_mode_writethrough() {
    sigkill_cycles(CacheMode::Writethrough);
}

#[test]
fn qcow2_survives_sigkill_of_the_backend_during_writes_and_flushes_in_cache_mode_directsync() {
    sigkill_cycles(CacheMode::DirectSync);
}

fn sigkill_cycles(cache: CacheMode) {
    let seed = rng::seed(&format!("kill9 {cache}"));
    let mut rng = Rng::new(seed);
    let bases = bases();
    let start = Instant::now();
    let mut leaks = 0;
    for cycle in 0..CYCLES_PER_MODE {
        let s = setup(cycle, &mut rng, &bases, cache);
        let stats = run_cycle(cycle, &s, &mut rng, &bases);
        leaks += stats.leaks;
        println!(
            "cycle {cycle}: cluster {} compat {} refcount_bits {} backing {:?} args {:?} qd {} kill after {:?}: \
             {} writes acked, {} flushes acked, {} leaked clusters",
            s.spec.cluster_size,
            s.spec.compat,
            s.spec.refcount_bits,
            s.spec.backing.as_ref().map(|b| b.1),
            s.backend_args,
            s.qd,
            s.kill_after,
            stats.writes,
            stats.flushes,
            stats.leaks
        );
    }
    println!(
        "kill9 {cache}: {CYCLES_PER_MODE} cycles, 0 corruptions, {leaks} leaked clusters repaired, {:?}",
        start.elapsed()
    );
}

#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) writes: u64,
    pub(crate) flushes: u64,
    pub(crate) leaks: u64,
}

fn run_cycle(cycle: usize, s: &CycleSetup, rng: &mut Rng, bases: &Bases) -> Stats {
    let work = tempfile::tempdir().expect("tempdir");
    let image = qemu::create(&work.path().join("disk.qcow2"), &s.spec);
    let params = format!("qcow2:{}", image.display());
    // The backing files lie in a folder of their own, which the backend must be told about.
    let bases_dir = bases.dir().display().to_string();
    let mut args = s.backend_args.clone();
    args.extend(["--backing-dir", &bases_dir]);
    let (model, mut stats, seed) = serve_until_killed(&params, &args, s.qd, s.kill_after, rng);
    let context = format!("cycle {cycle} ({:?}, workload seed {seed})", s.spec);
    stats.leaks = qemu::check_crash_safe(&image, &context);
    let initial = s.spec.backing.as_ref().map(|_| bases.content.as_slice());
    // In the O_DSYNC modes every acknowledged write is durable, mapping included (the killed
    // process's metadata cache is gone): flushed or not, it must read back.
    let floor = match s.cache.dsync() {
        true => model.acked(),
        false => model.durable().to_vec(),
    };
    verify(&image, &model, &floor, initial, work.path(), &context);
    stats
}

/// Serves `params` (a vbd's `params`) with `rustbk serve ARGS` to an emulated guest running
/// the random write + flush workload at depth `qd`, SIGKILLs the backend after `kill_after`,
/// and reaps it (and stops xenstored) before returning what the guest saw acknowledged, the
/// counts, and the workload's seed.
pub(crate) fn serve_until_killed(
    params: &str,
    args: &[&str],
    qd: u32,
    kill_after: Duration,
    rng: &mut Rng,
) -> (Model, Stats, u64) {
    let emu_dir = tempfile::tempdir().expect("tempdir");
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_rustbk"));
    let mut cluster = EmuCluster::start(&exe, emu_dir.path()).expect("xenstored");
    let spec = VbdSpec::rustbk(GUEST, XVDA, params.to_owned());
    cluster.add_disk(&spec, args).expect("backend");
    let mut front = connect(&cluster, &spec);
    let pid = cluster.backend_pid(&spec).expect("backend pid");
    let mut model = Model::new(REGION / BLOCK, false);
    let mut stats = Stats::default();
    let killed = killer(pid, kill_after);
    let seed = rng.next_u64();
    let log = cluster.backend_log(&spec);
    let drive = Drive {
        qd,
        seed,
        killed: &killed,
        backend_log: &log,
    };
    guest_workload(&mut front, &drive, &mut model, &mut stats);
    drop(front);
    drop(cluster);
    (model, stats, seed)
}

fn verify(
    image: &Path,
    model: &Model,
    floor: &[u32],
    initial: Option<&[u8]>,
    work: &Path,
    context: &str,
) {
    let disk = qemu::read_raw(image, &work.join("disk.raw"));
    assert_eq!(disk.len() as u64, DISK, "{context}: converted size");
    if let Err(e) = model.verify(floor, &disk, initial) {
        panic!("{context}: {e}");
    }
}

/// Kills `pid` with SIGKILL after `delay`; the flag is set once the signal was sent.
pub(crate) fn killer(pid: u32, delay: Duration) -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    std::thread::spawn(move || {
        std::thread::sleep(delay);
        let pid = Pid::from_raw(i32::try_from(pid).expect("pid"));
        kill(pid, Signal::SIGKILL).expect("kill -9 the backend");
        f.store(true, Ordering::SeqCst);
    });
    flag
}

pub(crate) fn connect(cluster: &EmuCluster, spec: &VbdSpec) -> Frontend {
    let mut cfg = FrontendConfig::new(GUEST, XVDA);
    cfg.timeout = Duration::from_secs(15);
    let dc = DomainConfig {
        domid: GUEST,
        ram_pages: RAM_PAGES,
        grant_entries: RAM_PAGES + 64,
    };
    let dom = Arc::new(EmuDomain::create(cluster.dir(), dc).expect("guest domain"));
    let xs = XsClient::connect(&cluster.guest_socket(GUEST.0)).expect("guest xenstore");
    Frontend::connect(dom, xs, FrameAlloc::new(RAM_PAGES), cfg).unwrap_or_else(|e| {
        let log = std::fs::read_to_string(cluster.backend_log(spec)).unwrap_or_default();
        panic!("connect failed: {e:?}; backend log:\n{log}")
    })
}

/// What a slot's request is doing.
#[derive(Clone)]
enum InFlight {
    Write {
        first: usize,
        count: usize,
        generation: u32,
    },
    Flush {
        snap: Vec<u32>,
    },
}

/// Random writes of 4–64 KiB and a flush every few writes, up to `qd` in flight, until the
/// backend is killed. Updates `model` with what was acknowledged.
/// How the guest drives the disk.
pub(crate) struct Drive<'a> {
    pub(crate) qd: u32,
    pub(crate) seed: u64,
    /// Set once the backend was sent SIGKILL.
    pub(crate) killed: &'a AtomicBool,
    /// Shown when a request fails before the kill.
    pub(crate) backend_log: &'a Path,
}

pub(crate) fn guest_workload(
    front: &mut Frontend,
    d: &Drive<'_>,
    model: &mut Model,
    stats: &mut Stats,
) {
    let (qd, seed, killed) = (d.qd, d.seed, d.killed);
    let dom = front.domain().clone();
    let backend = front.backend_domid();
    let mut pool = SlotPool::new(
        &dom,
        front.frames_mut(),
        backend,
        qd,
        MAX_WRITE_BLOCKS * BLOCK,
    )
    .expect("slots");
    let mut g = GuestRun {
        rng: Rng::new(seed),
        inflight: vec![None; pool.len()],
        busy: vec![false; model.blocks()],
        until_flush: 0,
        buf: vec![0u8; MAX_WRITE_BLOCKS * BLOCK],
        backend_log: d.backend_log.to_owned(),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let dead = killed.load(Ordering::SeqCst);
        if !dead && !g.fill(front, &mut pool, model, &dom) {
            // The ring broke under us: only acceptable once the backend is gone.
            assert!(was_killed(killed), "guest I/O failed before the kill");
        }
        let mut rsps = Vec::new();
        let wait = if dead {
            Duration::ZERO
        } else {
            Duration::from_millis(5)
        };
        if front.poll_responses(&mut rsps, wait).is_err() {
            assert!(was_killed(killed), "polling failed before the kill");
        }
        for rsp in rsps {
            g.complete(rsp.id, rsp.status, &mut pool, model, stats);
        }
        if dead {
            return;
        }
        assert!(Instant::now() < deadline, "the backend was never killed");
    }
}

/// Whether the killer sent SIGKILL, allowing it a moment to say so (an error may reach the
/// guest between the signal and the flag).
fn was_killed(killed: &AtomicBool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    while !killed.load(Ordering::SeqCst) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    killed.load(Ordering::SeqCst)
}

struct GuestRun {
    rng: Rng,
    inflight: Vec<Option<InFlight>>,
    busy: Vec<bool>,
    until_flush: u64,
    buf: Vec<u8>,
    backend_log: PathBuf,
}

impl GuestRun {
    /// Queues requests while slots are free; false if the ring refused them.
    fn fill(
        &mut self,
        front: &mut Frontend,
        pool: &mut SlotPool,
        model: &mut Model,
        dom: &EmuDomain,
    ) -> bool {
        let mut pushed = false;
        while front.free_slots() > 0 {
            let Some(slot) = pool.take() else { break };
            let req = if self.until_flush == 0 {
                self.until_flush = self.rng.range(1, 8);
                self.inflight[slot] = Some(InFlight::Flush {
                    snap: model.acked(),
                });
                Some(Request::Rw {
                    id: slot as u64,
                    op: RwOp::Flush,
                    handle: 0,
                    sector: rustbk_ring::Sector(0),
                    segments: Segments::new(),
                })
            } else {
                self.write(slot, pool, model, dom)
            };
            let Some(req) = req else {
                pool.give_back(slot);
                break;
            };
            if front.push(&req).is_err() {
                return false;
            }
            pushed = true;
        }
        !pushed || front.kick().is_ok()
    }

    /// A write of a random free range, its data already in the slot's pages.
    fn write(
        &mut self,
        slot: usize,
        pool: &SlotPool,
        model: &mut Model,
        dom: &EmuDomain,
    ) -> Option<Request> {
        let count = self.rng.range(1, MAX_WRITE_BLOCKS as u64) as usize;
        let first = (0..8).find_map(|_| {
            let first = self.rng.index(model.blocks() - count + 1);
            (!self.busy[first..first + count].iter().any(|b| *b)).then_some(first)
        })?;
        self.busy[first..first + count].fill(true);
        self.until_flush -= 1;
        let generation = model.submit(first, count, Change::Data);
        let len = count * BLOCK;
        let data = &mut self.buf[..len];
        fill_pattern(data, (first * BLOCK) as u64, generation);
        let s = pool.get(slot).expect("slot");
        dom.ram().write(s.addr(), data).expect("guest RAM");
        self.inflight[slot] = Some(InFlight::Write {
            first,
            count,
            generation,
        });
        let sector = (first * BLOCK / 512) as u64;
        Some(
            s.rw_request(slot as u64, RwOp::Write, sector, len)
                .expect("request"),
        )
    }

    fn complete(
        &mut self,
        id: u64,
        st: i16,
        pool: &mut SlotPool,
        model: &mut Model,
        stats: &mut Stats,
    ) {
        let slot = usize::try_from(id).expect("id");
        let op = self.inflight.get_mut(slot).and_then(Option::take);
        let op = op.unwrap_or_else(|| panic!("response for idle slot {id}"));
        if st != status::OKAY {
            let log = std::fs::read_to_string(&self.backend_log).unwrap_or_default();
            panic!("request failed with status {st} before the kill; backend log:\n{log}");
        }
        match op {
            InFlight::Write {
                first,
                count,
                generation,
            } => {
                model.ack(first, count, generation);
                self.busy[first..first + count].fill(false);
                stats.writes += 1;
            }
            InFlight::Flush { snap } => {
                model.flushed(&snap);
                stats.flushes += 1;
            }
        }
        pool.give_back(slot);
    }
}
