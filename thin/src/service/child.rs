//! The other processes of the service tests: the test binary runs itself again with
//! [`CHILD_ENV`] naming a role, and the child says how far it got in lines starting with
//! `CHILD ` on its standard output.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use rustbk_formats::ImageQueue;
use rustbk_formats::suite::pattern;

use super::open_volume;
use crate::testing::{flush, get, put, queue, us};
use crate::volume::{ThinVolume, VolumeOptions};

/// The environment variable that names a child's role and arguments.
pub(super) const CHILD_ENV: &str = "RUSTBK_THIN_SERVICE_CHILD";
/// Bytes of one unit the workloads write.
pub(super) const UNIT: u64 = 4096;

/// A child process and the `CHILD` lines it printed.
pub(super) struct Worker {
    child: Child,
    lines: Receiver<String>,
}

impl Worker {
    /// Starts the test binary again in `role` (words separated by spaces).
    pub(super) fn spawn(role: &str) -> Worker {
        let exe = std::env::current_exe().expect("test binary");
        let mut command = Command::new(exe);
        command
            .args(["--exact", "service::tests::child_entry", "--ignored"])
            .args(["--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, role);
        Worker::start(command)
    }

    /// Starts the `thin_service` example (built with the tests) on a pool: it blocks SIGTERM
    /// and SIGINT in its main thread before any other thread starts, as a real service does.
    pub(super) fn service(meta: &Path, data: &Path, socket: &Path) -> Worker {
        let exe = std::env::current_exe().expect("test binary");
        let deps = exe.parent().expect("deps folder");
        let example = deps.with_file_name("examples").join("thin_service");
        assert!(
            example.exists(),
            "{} is built by cargo test",
            example.display()
        );
        let mut command = Command::new(example);
        command.arg(meta).arg(data).arg(socket);
        Worker::start(command)
    }

    fn start(mut command: Command) -> Worker {
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn a child process");
        let out = child.stdout.take().expect("child stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || forward(out, &tx));
        Worker { child, lines }
    }

    /// Waits for a `CHILD` line starting with `prefix`; returns the rest of it.
    pub(super) fn wait_for(&self, prefix: &str, within: Duration) -> String {
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no `CHILD {prefix}` line from the child: {e}"));
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.trim().to_owned();
            }
        }
    }

    /// Sends `signal` to the child.
    pub(super) fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = i32::try_from(self.child.id()).expect("pid");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).expect("kill");
    }

    /// Stops the child (SIGSTOP) and waits until the kernel has stopped it.
    pub(super) fn stop(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
        let stat = format!("/proc/{}/stat", self.child.id());
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&stat).expect("the child's /proc stat");
            // The state follows the command name in parentheses.
            let state = text
                .rsplit(") ")
                .next()
                .and_then(|rest| rest.chars().next());
            if state == Some('T') {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "child not stopped");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills the child and reaps it.
    pub(super) fn kill(mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }

    /// Waits for the child to exit; true if it succeeded.
    pub(super) fn exited_ok(&mut self) -> bool {
        self.child.wait().expect("wait for the child").success()
    }
}

/// A test that fails leaves no child behind (it would hold the test's output open).
impl Drop for Worker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn forward(out: ChildStdout, tx: &mpsc::Sender<String>) {
    for line in BufReader::new(out).lines() {
        let Ok(line) = line else { return };
        // libtest prints the test's name and then its output on the same line.
        match line.find("CHILD ").map(|at| &line[at + 6..]) {
            Some(rest) => {
                if tx.send(rest.to_owned()).is_err() {
                    return;
                }
            }
            None => eprintln!("child: {line}"),
        }
    }
}

/// Runs the role `spec` names, in the child.
pub(super) fn run_role(spec: &str) {
    let words: Vec<&str> = spec.split(' ').collect();
    let num = |i: usize| -> u64 { words[i].parse().expect("number argument") };
    match words[0] {
        "verify" => {
            let vol = open_volume(Path::new(words[1]), num(2), VolumeOptions::default())
                .expect("open the volume through the socket");
            verify_workload(&vol, num(3), num(4));
            println!("CHILD done");
        }
        "hold" => hold(Path::new(words[1]), num(2)),
        "rounds" => rounds(Path::new(words[1]), num(2), num(3), num(4)),
        other => panic!("unknown child role {other}"),
    }
}

/// Writes `units` units of 4 KiB spread over the volume (patterns from `seed`), flushes,
/// and reads every one back.
pub(super) fn verify_workload(vol: &ThinVolume, seed: u64, units: u64) {
    let mut q = queue(vol);
    for i in 0..units {
        put(q.as_mut(), unit_offset(i), &pattern(seed + i, us(UNIT)));
    }
    flush(q.as_mut());
    check_units(q.as_mut(), seed, units);
}

/// Reads back the units [`verify_workload`] wrote.
pub(super) fn check_units(q: &mut dyn ImageQueue, seed: u64, units: u64) {
    for i in 0..units {
        let got = get(q, unit_offset(i), us(UNIT));
        assert!(
            got == pattern(seed + i, us(UNIT)),
            "unit {i} of seed {seed}"
        );
    }
}

/// Unit `i` of the verify workload: 12 KiB apart, so units land in new and in provisioned
/// blocks alike, and partial blocks get zero fill.
fn unit_offset(i: u64) -> u64 {
    i * 3 * UNIT
}

/// Writes into a new block (the volume provisions a reserve), flushes, says so and waits to
/// be killed.
fn hold(socket: &Path, volume: u64) {
    let vol = open_volume(socket, volume, VolumeOptions::default()).expect("open");
    let mut q = queue(&vol);
    put(q.as_mut(), 0, &pattern(7, us(UNIT)));
    flush(q.as_mut());
    println!("CHILD holding");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Rewrites `units` units in rounds, forever, from `threads` threads: thread `t` writes units
/// `t, t + threads, ...` one at a time, all threads finish a round before the next starts,
/// and every unit holds [`unit_word`] of its round and number.
fn rounds(socket: &Path, volume: u64, units: u64, threads: u64) {
    let vol = Arc::new(open_volume(socket, volume, VolumeOptions::default()).expect("open"));
    let barrier = Arc::new(Barrier::new(us(threads)));
    let mut handles = Vec::new();
    for t in 0..threads {
        let (vol, barrier) = (vol.clone(), barrier.clone());
        handles.push(std::thread::spawn(move || {
            let mut q = queue(&vol);
            for round in 1u64.. {
                for unit in (t..units).step_by(us(threads)) {
                    put(q.as_mut(), unit * UNIT, &unit_bytes(round, unit));
                }
                if barrier.wait().is_leader() {
                    println!("CHILD round {round}");
                }
            }
        }));
    }
    for h in handles {
        h.join().expect("writer thread");
    }
}

/// The word unit `unit` holds in round `round`, repeated over the unit.
pub(super) fn unit_word(round: u64, unit: u64) -> u64 {
    (round << 32) | unit
}

fn unit_bytes(round: u64, unit: u64) -> Vec<u8> {
    unit_word(round, unit).to_le_bytes().repeat(us(UNIT / 8))
}
