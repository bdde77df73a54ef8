//! `rustbk soak`: the daemon serving many emulated guests for a long time while workers are
//! killed, guests reboot and disks are hot-attached and detached. Passes when no request failed,
//! no read returned wrong data, and the daemon's and workers' fds, threads, RSS and grant
//! mappings stayed flat after the warm-up.

mod guest;
mod report;
mod sample;
mod schedule;
mod verdict;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, ensure};
use rustbk_backend::lock::GuestLock;
use rustbk_grant::emu::{DomainConfig, EmuDomain};
use rustbk_ring::DomId;

use crate::cli::SoakArgs;
use crate::cluster::EmuCluster;
use guest::{Guest, Load, RAM_PAGES, Tally};
use report::{Counts, Summary};
use sample::{Sampler, Usage};
use schedule::{Fault, Rates, Schedule};
use verdict::Bounds;

const XVDA: u32 = 51712;
const XVDB: u32 = XVDA + 16;
/// Size of each hot-attached disk.
const XVDB_SIZE: u64 = 16 << 20;
/// Hot-attached disks at most at once over all guests; a planned attach beyond is skipped.
const MAX_HOT: usize = 2;

/// The fault rates of a profile, in seconds.
struct Profile {
    duration: f64,
    kill_every: f64,
    reboot_every: f64,
    hotplug_every: f64,
    hotplug_hold: f64,
    sample_every: f64,
}

/// Ten minutes: a kill every 10 s, each guest reboots about every minute, a hot attach every
/// 5 s.
const LONG: Profile = Profile {
    duration: 600.0,
    kill_every: 10.0,
    reboot_every: 60.0,
    hotplug_every: 5.0,
    hotplug_hold: 5.0,
    sample_every: 5.0,
};

/// CI: 90 s with faults about three times as often.
const SHORT: Profile = Profile {
    duration: 90.0,
    kill_every: 5.0,
    reboot_every: 20.0,
    hotplug_every: 3.0,
    hotplug_hold: 4.0,
    sample_every: 2.0,
};

/// Everything the run needs, checked.
struct Config {
    rates: Rates,
    sample_every: Duration,
    seed: u64,
    size: u64,
    load: Load,
}

fn config(args: &SoakArgs) -> anyhow::Result<Config> {
    let p = if args.short { &SHORT } else { &LONG };
    let secs = |v: Option<f64>, d: f64, what: &str| -> anyhow::Result<Duration> {
        let v = v.unwrap_or(d);
        Duration::try_from_secs_f64(v).map_err(|_| anyhow::anyhow!("--{what} must be >= 0"))
    };
    let duration = if args.short {
        Duration::from_secs_f64(p.duration)
    } else {
        args.duration
    };
    ensure!(
        args.guests >= 1 && args.guests <= 1000,
        "--guests must be 1..=1000"
    );
    ensure!(
        duration >= Duration::from_secs(30),
        "--duration must be at least 30 s"
    );
    ensure!(args.qd >= 1 && args.qd <= 32, "--qd must be 1..=32");
    ensure!(args.rate >= 1, "--rate must be at least 1");
    ensure!(args.flush_every >= 1, "--flush-every must be at least 1");
    ensure!(args.size >= 1 << 20, "--size must be at least 1 MiB");
    let seed = args.seed.unwrap_or_else(clock_seed);
    let sample_every = secs(args.sample_every, p.sample_every, "sample-every")?;
    ensure!(
        sample_every >= Duration::from_millis(500),
        "--sample-every must be at least 0.5"
    );
    Ok(Config {
        rates: Rates {
            guests: args.guests,
            duration,
            reboot_every: secs(args.reboot_every, p.reboot_every, "reboot-every")?,
            kill_every: secs(args.kill_every, p.kill_every, "kill-every")?,
            hotplug_every: secs(args.hotplug_every, p.hotplug_every, "hotplug-every")?,
            hotplug_hold: secs(args.hotplug_hold, p.hotplug_hold, "hotplug-hold")?,
        },
        sample_every,
        seed,
        size: args.size,
        load: Load {
            qd: args.qd,
            rate: args.rate,
            flush_every: args.flush_every,
            seed,
        },
    })
}

fn clock_seed() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(1, |d| {
            u64::try_from(d.as_nanos() & u128::from(u64::MAX)).unwrap_or(1)
        })
}

/// Runs the soak and prints the summary; fails if anything went wrong or grew.
pub fn run(args: SoakArgs) -> anyhow::Result<ExitCode> {
    let cfg = config(&args)?;
    let tmp = tempfile::Builder::new().prefix("rustbk-soak-").tempdir()?;
    let dir = tmp.path().to_owned();
    let exe = std::env::current_exe().context("cannot find the rustbk executable")?;
    let mut cluster = EmuCluster::start(&exe, &dir)?;
    let backend_args = super::platform::backend_args(&args.backend);
    let backend_args: Vec<&str> = backend_args.iter().map(String::as_str).collect();
    cluster.start_daemon(&backend_args)?;
    let guests = make_guests(&mut cluster, &cfg)?;
    let schedule = Schedule::draw(&cfg.rates, cfg.seed);
    report::print_plan(&cfg, &schedule, &dir);
    let daemon = cluster.daemon_pid().context("the daemon is not running")?;
    let sampler = Sampler::start(daemon, &dir, cfg.rates.guests, cfg.sample_every);
    let (tally, counts) = soak(&guests, &cfg, &schedule, &dir);
    let samples = sampler.finish();
    let bounds = bounds(&cfg);
    let checks = verdict::check(&samples, &bounds);
    let summary = Summary::new(&cfg, counts, tally, bounds, checks, samples);
    summary.print(args.output)?;
    if !summary.pass {
        report::print_guest_logs(&cluster.daemon_log(), &summary.io.failures);
    }
    if args.keep || !summary.pass {
        eprintln!("rustbk soak: work folder kept: {}", tmp.keep().display());
    }
    drop(cluster);
    Ok(if summary.pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Creates each guest's domain, its two images, and attaches its first disk.
fn make_guests(cluster: &mut EmuCluster, cfg: &Config) -> anyhow::Result<Vec<Arc<Guest>>> {
    let mut out = Vec::new();
    for i in 1..=cfg.rates.guests {
        let domid = DomId(i);
        let dir = cluster.dir().to_owned();
        let xvda = dir.join(format!("guest{i}-xvda.img"));
        let xvdb = dir.join(format!("guest{i}-xvdb.img"));
        rustbk_formats::create_raw(&xvda, cfg.size)?;
        rustbk_formats::create_raw(&xvdb, XVDB_SIZE)?;
        let dc = DomainConfig {
            domid,
            ram_pages: RAM_PAGES,
            grant_entries: RAM_PAGES + 64,
        };
        let dom = Arc::new(EmuDomain::create(&dir, dc)?);
        let g = Guest {
            dom,
            xvda: guest::spec(domid, XVDA, &xvda),
            xvdb: guest::spec(domid, XVDB, &xvdb),
            xvdb_model: std::sync::Mutex::new(None),
            socket: cluster.guest_socket(i),
            toolstack_socket: cluster.xenstore_socket().to_owned(),
        };
        cluster.add_vbd(&g.xvda)?;
        out.push(Arc::new(g));
    }
    Ok(out)
}

/// Runs the guests and injects the faults until the end; returns what the guests did.
fn soak(guests: &[Arc<Guest>], cfg: &Config, s: &Schedule, dir: &Path) -> (Tally, Counts) {
    let start = Instant::now();
    let end = start + cfg.rates.duration;
    let runners: Vec<JoinHandle<Tally>> = guests
        .iter()
        .zip(&s.reboots)
        .map(|(g, reboots)| {
            let (g, load, reboots) = (Arc::clone(g), cfg.load.clone(), reboots.clone());
            std::thread::spawn(move || guest::run_guest(&g, &load, start, &reboots, end))
        })
        .collect();
    let mut faults = Faults::new(guests.len());
    for (t, fault) in &s.faults {
        sleep_until(start + *t);
        faults.inject(*fault, guests, &cfg.load, dir);
    }
    let mut tally = Tally::default();
    for h in runners.into_iter().chain(faults.hot.drain(..)) {
        tally.merge(h.join().unwrap_or_else(|_| panicked()));
    }
    (tally, faults.counts)
}

fn panicked() -> Tally {
    Tally {
        failures: vec!["a guest thread panicked".into()],
        ..Tally::default()
    }
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// Fault injection state.
struct Faults {
    counts: Counts,
    hot: Vec<JoinHandle<Tally>>,
    hot_busy: Arc<Vec<AtomicBool>>,
    hot_active: Arc<AtomicUsize>,
}

impl Faults {
    fn new(guests: usize) -> Faults {
        Faults {
            counts: Counts::default(),
            hot: Vec::new(),
            hot_busy: Arc::new((0..guests).map(|_| AtomicBool::new(false)).collect()),
            hot_active: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn inject(&mut self, fault: Fault, guests: &[Arc<Guest>], load: &Load, dir: &Path) {
        match fault {
            Fault::Kill { guest } => match kill_worker(dir, DomId(guest + 1)) {
                Ok(true) => self.counts.kills += 1,
                Ok(false) => self.counts.kills_skipped += 1,
                Err(e) => self
                    .counts
                    .notes
                    .push(format!("kill of guest {}: {e}", guest + 1)),
            },
            Fault::HotAttach { guest, hold } => self.hot_attach(guest, hold, guests, load),
        }
    }

    fn hot_attach(&mut self, guest: u16, hold: Duration, guests: &[Arc<Guest>], load: &Load) {
        let i = usize::from(guest);
        let (Some(g), Some(busy)) = (guests.get(i), self.hot_busy.get(i)) else {
            return;
        };
        if self.hot_active.load(Ordering::SeqCst) >= MAX_HOT || busy.swap(true, Ordering::SeqCst) {
            self.counts.hotplugs_skipped += 1;
            return;
        }
        self.hot_active.fetch_add(1, Ordering::SeqCst);
        let (g, load, run) = (Arc::clone(g), load.clone(), self.hot.len() as u64);
        let (flags, active) = (Arc::clone(&self.hot_busy), Arc::clone(&self.hot_active));
        self.hot.push(std::thread::spawn(move || {
            let t = guest::hot_attach(&g, &load, hold, run);
            active.fetch_sub(1, Ordering::SeqCst);
            if let Some(b) = flags.get(i) {
                b.store(false, Ordering::SeqCst);
            }
            t
        }));
    }
}

/// SIGKILLs the worker serving `domid`; false if none runs right now (being restarted).
fn kill_worker(dir: &Path, domid: DomId) -> anyhow::Result<bool> {
    let Some(pid) = GuestLock::holder(dir, domid)? else {
        return Ok(false);
    };
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid)?);
    match nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL) {
        Ok(()) => Ok(true),
        Err(nix::errno::Errno::ESRCH) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The bounds of the run. Measured on the emulator (32 guests, debug build): a worker
/// serving one disk holds about 22 fds, 3 threads (main, ring worker, io_uring workers that come
/// and go) and 11 MiB; each hot-attached disk adds 9 fds, a ring thread and `1 + qd` mapped
/// guest pages (its ring and its persistent grants). The daemon does not move at all.
///
/// * daemon: +2 fds, +1 thread, +2 MiB RSS, never a grant mapping. A leak per worker restart
///   (about 60 in ten minutes) or per reboot (about 300) goes far past these.
/// * workers (sum over all): +10 fds and +2 threads per hot-attached disk that may be attached
///   at once ([`MAX_HOT`]), +1 thread per worker for io_uring workers, +8 MiB + 5 % RSS. One fd
///   or thread leaked per reboot exceeds this within a minute; 8 MiB + 5 % is about 60 KiB per
///   reboot or 20 bytes per request over ten minutes.
/// * grant mappings: at most `1 + qd` pages per disk that can be attached at once, at any time
///   and after the reference window alike. This is exact, since the guest uses `qd` buffers and
///   a one-page ring per disk, and a leak of mappings passes it. A growth bound would not fit:
///   the workers' persistent grant caches are emptied by every reboot and worker kill and refill
///   with the load, so the count in the reference window says little about a steady state
///   (short runs saw its maximum move from 81 to 156 with the load).
fn bounds(cfg: &Config) -> Bounds {
    let (warmup_s, reference_end_s) = Bounds::windows(cfg.rates.duration);
    let hot = MAX_HOT as u64;
    let per_disk_pages = 1 + u64::from(cfg.load.qd);
    Bounds {
        warmup_s,
        reference_end_s,
        daemon: Usage {
            fds: 2,
            threads: 1,
            rss_kib: 2 << 10,
            grant_pages: 0,
        },
        workers: Usage {
            fds: 10 * hot,
            threads: 2 * hot + u64::from(cfg.rates.guests),
            rss_kib: 8 << 10,
            // Unused: the workers' mappings are held to `grant_ceiling` (see above).
            grant_pages: 0,
        },
        workers_rss_percent: 5,
        grant_ceiling: (u64::from(cfg.rates.guests) + hot) * per_disk_pages,
    }
}
