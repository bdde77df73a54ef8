//! The CPU time of a process's threads, from /proc, sampled while a run goes on.
//!
//! A ring worker thread lives as long as the guest's connection, and the emulated guest
//! connects for each run; so the bench samples the worker's CPU clock every few milliseconds
//! while the run goes on and takes the busy middle of the thread's life as the window (see
//! [`busy_window`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the sampler reads the threads' CPU clocks.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_millis(10);

/// The share of a worker's life left out at each end of the window (connect, close).
const TRIM: f64 = 0.1;

/// CPU time of a thread in nanoseconds from its `schedstat` (first field: time on a CPU).
pub(crate) fn parse_schedstat(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// `utime + stime` in clock ticks from a `stat` line. The name (field 2) may hold spaces and
/// parentheses, so fields are counted after its last `)`.
pub(crate) fn parse_stat_ticks(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)
}

/// Nanoseconds per clock tick of `stat` (`sysconf(_SC_CLK_TCK)`, 100 Hz if unknown).
fn ns_per_tick() -> u64 {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|hz| u64::try_from(hz).ok())
        .filter(|hz| *hz > 0)
        .unwrap_or(100);
    1_000_000_000 / hz
}

fn task_dir(pid: u32, tid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/task/{tid}"))
}

/// CPU time of thread `tid` of process `pid` in nanoseconds: `schedstat` (nanosecond
/// resolution), else `stat`'s `utime + stime` (clock-tick resolution).
pub(crate) fn thread_cpu_ns(pid: u32, tid: u32) -> std::io::Result<u64> {
    let dir = task_dir(pid, tid);
    if let Some(ns) = std::fs::read_to_string(dir.join("schedstat"))
        .ok()
        .as_deref()
        .and_then(parse_schedstat)
    {
        return Ok(ns);
    }
    let stat = std::fs::read_to_string(dir.join("stat"))?;
    parse_stat_ticks(&stat)
        .and_then(|t| t.checked_mul(ns_per_tick()))
        .ok_or_else(|| std::io::Error::other(format!("unreadable {}/stat", dir.display())))
}

/// Whether a thread name (`comm`, cut to 15 bytes by the kernel) is `name` or starts with it.
fn name_matches(comm: &str, name: &str) -> bool {
    let max = rustbk_backend::worker::THREAD_NAME_MAX.min(name.len());
    let cut = name.get(..max).unwrap_or(name);
    comm.starts_with(cut)
}

/// The threads of `pid` whose name starts with `name`, with their CPU time in nanoseconds.
/// Threads that end while being read are left out.
pub(crate) fn threads_named(pid: u32, name: &str) -> std::io::Result<Vec<(u32, u64)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Some(tid) = entry?.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(task_dir(pid, tid).join("comm")) else {
            continue;
        };
        if !name_matches(comm.trim_end(), name) {
            continue;
        }
        if let Ok(ns) = thread_cpu_ns(pid, tid) {
            out.push((tid, ns));
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// The CPU clocks of the matching threads at one moment.
#[derive(Clone, Debug)]
pub(crate) struct Sample {
    /// When they were read.
    pub at: Instant,
    /// `(tid, CPU nanoseconds)` of each thread.
    pub threads: Vec<(u32, u64)>,
}

/// Reads the CPU clocks of a process's matching threads every [`SAMPLE_EVERY`] on a thread
/// of its own, until [`finish`](Self::finish).
pub(crate) struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<Sample>>,
}

impl Sampler {
    /// Starts sampling the threads of `pid` named `name` (or starting with it).
    pub(crate) fn start(pid: u32, name: &str) -> std::io::Result<Sampler> {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, name) = (Arc::clone(&stop), name.to_owned());
        let thread = std::thread::Builder::new()
            .name("cpu-sampler".into())
            .spawn(move || {
                let mut samples = Vec::new();
                while !flag.load(Ordering::Relaxed) {
                    if let Ok(threads) = threads_named(pid, &name) {
                        let at = Instant::now();
                        samples.push(Sample { at, threads });
                    }
                    std::thread::sleep(SAMPLE_EVERY);
                }
                samples
            })?;
        Ok(Sampler { stop, thread })
    }

    /// Stops sampling; every sample taken.
    pub(crate) fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// The worker threads' CPU time over a window of wall time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct WorkerCpu {
    /// CPU seconds of all worker threads together in the window.
    pub cpu_seconds: f64,
    /// Wall seconds of the window.
    pub wall_seconds: f64,
    /// Worker threads seen at both ends of the window (one per queue).
    pub threads: usize,
}

impl WorkerCpu {
    /// Busy cores: CPU seconds per wall second.
    pub(crate) fn cores(&self) -> f64 {
        if self.wall_seconds > 0.0 {
            self.cpu_seconds / self.wall_seconds
        } else {
            0.0
        }
    }
}

/// The worker CPU time over the busy middle of the threads' life: from the first sample at
/// least 10% of their seen life after they appeared to the last at least 10% before they
/// were last seen, summing each thread seen at both ends. `None` if the threads were seen in
/// fewer than two usable samples.
pub(crate) fn busy_window(samples: &[Sample]) -> Option<WorkerCpu> {
    let seen: Vec<&Sample> = samples.iter().filter(|s| !s.threads.is_empty()).collect();
    let (first, last) = (seen.first()?.at, seen.last()?.at);
    let trim = last.duration_since(first).mul_f64(TRIM);
    let start = seen.iter().find(|s| s.at >= first + trim)?;
    let end = seen.iter().rev().find(|s| s.at + trim <= last)?;
    let wall_seconds = end.at.checked_duration_since(start.at)?.as_secs_f64();
    if wall_seconds <= 0.0 {
        return None;
    }
    let before: HashMap<u32, u64> = start.threads.iter().copied().collect();
    let mut cpu_ns = 0u64;
    let mut threads = 0;
    for (tid, ns) in &end.threads {
        if let Some(was) = before.get(tid) {
            cpu_ns = cpu_ns.saturating_add(ns.saturating_sub(*was));
            threads += 1;
        }
    }
    (threads > 0).then_some(WorkerCpu {
        cpu_seconds: cpu_ns as f64 / 1e9,
        wall_seconds,
        threads,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spins on a named thread of this process for `busy` of wall time.
    fn spin(name: &str, busy: Duration) -> JoinHandle<()> {
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let start = Instant::now();
                let mut x = 0u64;
                while start.elapsed() < busy {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            })
            .expect("spawn")
    }

    #[test]
    fn cpu_time_of_a_busy_thread_of_this_process_is_read_from_proc() {
        let pid = std::process::id();
        let name = "ring-d7-42424q0"; // what queue 0 of guest 7's disk 42424 is called
        let worker = spin(name, Duration::from_millis(600));
        std::thread::sleep(Duration::from_millis(100));
        let before = threads_named(pid, name).expect("read /proc");
        assert_eq!(before.len(), 1, "exactly the spinning thread: {before:?}");
        let (tid, ns0) = before[0];
        let wall = Instant::now();
        std::thread::sleep(Duration::from_millis(300));
        let ns1 = thread_cpu_ns(pid, tid).expect("cpu time");
        let elapsed = u64::try_from(wall.elapsed().as_nanos()).expect("elapsed");
        let spent = ns1 - ns0;
        // Two shared cores: the spinner gets at least some of them, and never more than
        // the wall time that passed.
        assert!(
            spent > 10_000_000,
            "only {spent} ns of CPU in 300 ms of spinning"
        );
        assert!(
            spent <= elapsed + 5_000_000,
            "{spent} ns of CPU in {elapsed} ns"
        );
        // stat (clock ticks) and schedstat (nanoseconds) tell the same story.
        let dir = task_dir(pid, tid);
        let stat = std::fs::read_to_string(dir.join("stat")).expect("stat");
        let ticks_ns = parse_stat_ticks(&stat).expect("parse stat") * ns_per_tick();
        let sched = std::fs::read_to_string(dir.join("schedstat")).expect("schedstat");
        let sched_ns = parse_schedstat(&sched).expect("parse schedstat");
        let diff = ticks_ns.abs_diff(sched_ns);
        assert!(
            diff < 50_000_000,
            "stat {ticks_ns} ns vs schedstat {sched_ns} ns"
        );
        worker.join().expect("spinner");
        // A joined thread can stay listed in /proc for a moment while the kernel reaps it.
        let deadline = Instant::now() + Duration::from_secs(2);
        while !threads_named(pid, name).expect("read").is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(threads_named(pid, name).expect("read").is_empty(), "gone");
        assert!(threads_named(pid, "ring-d9-").expect("read").is_empty());
        assert!(
            threads_named(pid, "ring-d7-42424q1")
                .expect("read")
                .is_empty()
        );
    }

    #[test]
    fn sampler_window_covers_the_busy_middle_of_a_workers_life() {
        let pid = std::process::id();
        let name = "ring-d8-51712q";
        let sampler = Sampler::start(pid, name).expect("sampler");
        std::thread::sleep(Duration::from_millis(50));
        spin("ring-d8-51712q0", Duration::from_millis(500))
            .join()
            .expect("spin");
        std::thread::sleep(Duration::from_millis(50));
        let samples = sampler.finish();
        let w = busy_window(&samples).expect("window");
        assert_eq!(w.threads, 1);
        assert!(
            (0.3..=0.5).contains(&w.wall_seconds),
            "window of {} s in a 500 ms life",
            w.wall_seconds
        );
        assert!(w.cores() > 0.05 && w.cores() <= 1.05, "{w:?}");
    }

    #[test]
    fn stat_lines_are_parsed_after_the_last_parenthesis() {
        let line = "4242 (ring-d1 (x) 5) S 1 2 3 4 5 6 7 8 9 10 1200 34 0 0 20 0 1 0";
        assert_eq!(parse_stat_ticks(line), Some(1234));
        assert_eq!(parse_stat_ticks("4242 (short) S 1 2"), None);
        assert_eq!(parse_schedstat("123456789 2000 31\n"), Some(123_456_789));
        assert_eq!(parse_schedstat(""), None);
    }

    #[test]
    fn names_cut_by_the_kernel_still_match() {
        assert!(name_matches("ring-d1-51712q0", "ring-d1-51712q"));
        assert!(name_matches("ring-d1-51712q1", "ring-d1-51712q"));
        assert!(name_matches("ring-d1234-2684", "ring-d1234-268435456q"));
        assert!(!name_matches("ring-d1-517120q", "ring-d1-51712q"));
        assert!(!name_matches("tokio-runtime-w", "ring-d1-51712q"));
    }

    #[test]
    fn no_window_without_two_samples_of_a_thread() {
        let at = Instant::now();
        let empty = Sample {
            at,
            threads: Vec::new(),
        };
        let one = Sample {
            at,
            threads: vec![(1, 5)],
        };
        assert_eq!(busy_window(&[empty.clone(), one, empty]), None);
        assert_eq!(busy_window(&[]), None);
    }
}
