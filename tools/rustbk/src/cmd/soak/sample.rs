//! Resource usage of the daemon and its workers, read from /proc while the soak runs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustbk_backend::lock::GuestLock;
use rustbk_grant::emu::GUEST_RAM_MEMFD;
use rustbk_ring::{DomId, PAGE_SIZE};
use serde::Serialize;

/// What one process (or a sum of processes) holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Open file descriptors (`/proc/PID/fd`).
    pub fds: u64,
    /// Threads (`Threads:` of `/proc/PID/status`, io_uring workers included).
    pub threads: u64,
    /// Resident memory in KiB (`VmRSS:`).
    pub rss_kib: u64,
    /// Guest pages mapped: pages of the emulated guest RAM memfds in `/proc/PID/maps`, one per
    /// mapped grant (ring pages, persistent grants, requests in flight).
    pub grant_pages: u64,
}

impl Usage {
    /// The usage of process `pid`.
    pub fn of(pid: u32) -> std::io::Result<Usage> {
        let proc = PathBuf::from(format!("/proc/{pid}"));
        let fds = std::fs::read_dir(proc.join("fd"))?.count() as u64;
        let status = std::fs::read_to_string(proc.join("status"))?;
        let maps = std::fs::read_to_string(proc.join("maps"))?;
        Ok(Usage {
            fds,
            threads: status_number(&status, "Threads:"),
            rss_kib: status_number(&status, "VmRSS:"),
            grant_pages: guest_ram_pages(&maps),
        })
    }

    /// Number of series in [`Usage::series`].
    pub const SERIES: usize = 4;

    /// Each series' name and value, always in the same order.
    pub fn series(&self) -> [(&'static str, u64); Self::SERIES] {
        [
            ("fds", self.fds),
            ("threads", self.threads),
            ("rss_kib", self.rss_kib),
            ("grant_pages", self.grant_pages),
        ]
    }

    fn add(&mut self, o: &Usage) {
        self.fds += o.fds;
        self.threads += o.threads;
        self.rss_kib += o.rss_kib;
        self.grant_pages += o.grant_pages;
    }
}

/// The number after `key` on its line of a `/proc/PID/status` text (0 if absent).
fn status_number(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Pages of guest RAM memfds mapped, from a `/proc/PID/maps` text.
pub fn guest_ram_pages(maps: &str) -> u64 {
    let name = format!("/memfd:{}", GUEST_RAM_MEMFD.to_string_lossy());
    maps.lines()
        .filter(|l| l.split_whitespace().nth(5) == Some(name.as_str()))
        .filter_map(|l| {
            let (a, b) = l.split_whitespace().next()?.split_once('-')?;
            let (a, b) = (
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            );
            b.checked_sub(a)
        })
        .sum::<u64>()
        / PAGE_SIZE as u64
}

/// One sample of the run.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// Seconds since the start.
    pub t: f64,
    /// The daemon.
    pub daemon: Usage,
    /// The sum over the workers running at that moment.
    pub workers: Usage,
    /// How many workers were running.
    pub workers_up: u32,
}

/// Samples the daemon and the workers of guests `1..=guests` every `every` in a thread.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<Sample>>,
}

impl Sampler {
    /// Starts sampling; `lock_dir` holds the workers' lock files (their pids).
    pub fn start(daemon: u32, lock_dir: &Path, guests: u16, every: Duration) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, dir) = (Arc::clone(&stop), lock_dir.to_owned());
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            let mut out = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                out.push(sample(start, daemon, &dir, guests));
                let next = start + every.mul_f64(out.len() as f64);
                while !flag.load(Ordering::Relaxed) && Instant::now() < next {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            out
        });
        Sampler { stop, thread }
    }

    /// Stops sampling and returns the samples.
    pub fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

fn sample(start: Instant, daemon: u32, lock_dir: &Path, guests: u16) -> Sample {
    let mut workers = Usage::default();
    let mut workers_up = 0;
    for domid in 1..=guests {
        let pid = GuestLock::holder(lock_dir, DomId(domid)).ok().flatten();
        // A worker that died between the two reads is simply not counted this time.
        if let Some(u) = pid.and_then(|p| Usage::of(p).ok()) {
            workers.add(&u);
            workers_up += 1;
        }
    }
    Sample {
        t: start.elapsed().as_secs_f64(),
        daemon: Usage::of(daemon).unwrap_or_default(),
        workers,
        workers_up,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_ram_pages_count_only_guest_ram_memfd_mappings() {
        let maps = "\
7f0000000000-7f0000003000 rw-s 00000000 00:01 1234 /memfd:rustbk-guest-ram (deleted)
7f0000003000-7f0000004000 rw-s 00005000 00:01 1234 /memfd:rustbk-guest-ram (deleted)
7f0000010000-7f0000011000 rw-s 00000000 00:01 1235 /memfd:rustbk-grant-table (deleted)
7f0000020000-7f0000030000 rw-p 00000000 00:00 0 
55d000000000-55d000001000 r--p 00000000 08:01 99 /usr/bin/rustbk";
        assert_eq!(guest_ram_pages(maps), 4);
    }

    #[test]
    fn own_process_usage_is_read_from_proc() {
        let u = Usage::of(std::process::id()).unwrap();
        assert!(u.fds >= 3 && u.threads >= 1 && u.rss_kib > 0, "{u:?}");
        assert_eq!(u.grant_pages, 0);
    }
}
