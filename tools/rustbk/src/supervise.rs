//! The children of `rustbk demo` and `rustbk bench`: a child that exits while it should run is
//! noticed at once and reported with the end of its log, and SIGINT or SIGTERM stops every
//! child and removes the work folder.
//!
//! The children share one process group, led by the xenstore emulator and apart from the
//! terminal's (so a Ctrl-C reaches only the parent, which then stops them in order). A thread
//! of the parent waits for SIGINT and SIGTERM (tokio's handlers, which children do not inherit;
//! blocking the signals instead would hand the blocked mask down to every child): it sends
//! SIGTERM to the group (a backend writes back its metadata), SIGKILL to whatever is left after
//! [`GRACE`], reaps the children, removes the work folder unless it is to be kept and exits
//! with 128 + the signal number (130, 143).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

use crate::cluster::EmuCluster;

/// How often a waiting parent looks at its children.
pub const POLL: Duration = Duration::from_millis(50);

/// How long the children get to exit after SIGTERM before SIGKILL.
pub const GRACE: Duration = Duration::from_secs(3);

/// Lines of a log shown when its process exits unexpectedly.
pub const TAIL_LINES: usize = 20;

/// What the signal thread must clean up.
#[derive(Default)]
struct Stop {
    /// Process group of the children.
    group: Option<Pid>,
    /// Work folder and whether to keep it.
    dir: Option<(PathBuf, bool)>,
    /// A signal arrived: the signal thread owns the clean-up and the exit.
    stopping: bool,
}

static STOP: Mutex<Stop> = Mutex::new(Stop {
    group: None,
    dir: None,
    stopping: false,
});

fn state() -> MutexGuard<'static, Stop> {
    STOP.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Takes SIGINT and SIGTERM in a thread of their own, from now on.
pub fn handle_signals(command: &'static str) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Registered here, so that no signal is missed once this returns.
    let (mut int, mut term) = {
        let _in_runtime = rt.enter();
        let int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        (int, term)
    };
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let sig = rt.block_on(async {
                tokio::select! {
                    _ = int.recv() => Signal::SIGINT,
                    _ = term.recv() => Signal::SIGTERM,
                }
            });
            stop(command, sig);
        })
        .context("cannot start the signal thread")?;
    Ok(())
}

/// Records the process group of the children (the pid of its leader).
pub fn adopt_group(leader: u32) {
    if let Ok(pid) = i32::try_from(leader) {
        state().group = Some(Pid::from_raw(pid));
    }
}

/// Whether a signal is being handled. The main thread then leaves everything to the signal
/// thread: see [`park_if_stopping`].
pub fn stopping() -> bool {
    state().stopping
}

/// Blocks forever if a signal is being handled, so that the main thread neither prints an
/// error caused by the clean-up nor exits before the signal thread does.
pub fn park_if_stopping() {
    while stopping() {
        std::thread::park();
    }
}

fn stop(command: &str, sig: Signal) -> ! {
    let (group, dir) = {
        let mut s = state();
        s.stopping = true;
        (s.group, s.dir.clone())
    };
    eprintln!("rustbk {command}: {sig}: stopping");
    let reaped = group.map_or(0, stop_group);
    match dir {
        Some((dir, false)) => {
            let _ = std::fs::remove_dir_all(&dir);
            eprintln!(
                "rustbk {command}: stopped {reaped} processes, removed {}",
                dir.display()
            );
        }
        Some((dir, true)) => eprintln!(
            "rustbk {command}: stopped {reaped} processes, work folder kept: {}",
            dir.display()
        ),
        None => eprintln!("rustbk {command}: stopped {reaped} processes"),
    }
    std::process::exit(128 + sig as i32)
}

/// SIGTERM to the group, SIGKILL after [`GRACE`]; reaps the group's children until none is
/// left. Signals are sent again each round, so a child started meanwhile is stopped too.
fn stop_group(group: Pid) -> usize {
    let start = Instant::now();
    let mut reaped = 0;
    loop {
        let sig = if start.elapsed() < GRACE {
            Signal::SIGTERM
        } else {
            Signal::SIGKILL
        };
        let _ = killpg(group, sig);
        loop {
            match waitpid(Pid::from_raw(-group.as_raw()), Some(WaitPidFlag::WNOHANG)) {
                Ok(nix::sys::wait::WaitStatus::StillAlive) => break,
                Ok(_) => reaped += 1,
                Err(Errno::EINTR) => {}
                Err(_) => return reaped,
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The work folder of a run: removed after a success (unless kept), kept after a failure so
/// its logs can be read, removed by the signal thread on SIGINT/SIGTERM (unless kept).
#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl WorkDir {
    /// A new folder `/tmp/<prefix>XXXXXX`.
    pub fn create(prefix: &str, keep: bool) -> anyhow::Result<WorkDir> {
        let path = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .context("cannot create the work folder")?
            .keep();
        state().dir = Some((path.clone(), keep));
        Ok(WorkDir { path, keep })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the folder after a success, unless it is to be kept; returns the path of a kept
    /// folder.
    pub fn finish(self, success: bool) -> Option<PathBuf> {
        let mut s = state();
        if s.stopping {
            return None;
        }
        s.dir = None;
        if success && !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
            return None;
        }
        Some(self.path)
    }
}

/// The last `lines` lines of a log file (at most its last 64 KiB), each indented.
pub fn log_tail(path: &Path, lines: usize) -> String {
    const MAX: u64 = 64 << 10;
    let mut text = Vec::new();
    let read = File::open(path).and_then(|mut f| {
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(MAX)))?;
        f.read_to_end(&mut text)
    });
    if let Err(e) = read {
        return format!("    (cannot read {}: {e})", path.display());
    }
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    let tail = &all[all.len().saturating_sub(lines)..];
    if tail.is_empty() {
        return "    (empty)".into();
    }
    tail.iter()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits for `child` to exit while watching the processes of `cluster`: fails as soon as one
/// of them exits (killing `child`), with its name, status and the end of its log.
pub fn wait_child(cluster: &mut EmuCluster, child: &mut Child) -> anyhow::Result<ExitStatus> {
    loop {
        // Children dying of the signal thread's SIGTERM are no news.
        park_if_stopping();
        if let Some(gone) = cluster.exited() {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("{gone}");
        }
        if let Some(status) = child.try_wait().context("cannot wait for a child")? {
            return Ok(status);
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::log_tail;

    #[test]
    fn log_tail_shows_the_last_lines_indented() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("x.log");
        let text: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&log, text).unwrap();
        let tail = log_tail(&log, 3);
        assert_eq!(tail, "    line 28\n    line 29\n    line 30");
        assert!(log_tail(&dir.path().join("missing"), 3).contains("cannot read"));
    }
}
