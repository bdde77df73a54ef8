//! An emulated Xen host made of real processes: the xenstore emulator, one backend process per
//! disk, and guest processes. `rustbk demo`, `rustbk bench` and the integration tests use it.

use std::fs::{File, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rustbk_backend::lock::GuestLock;
use rustbk_blkfront::toolstack::{self, VbdSpec};
use rustbk_ring::DomId;
use rustbk_xenstored::XsClient;

/// How long a component may take to come up or go away.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running emulated host. Dropping it kills every process it started.
pub struct EmuCluster {
    exe: PathBuf,
    dir: PathBuf,
    xs_socket: PathBuf,
    xenstored: Child,
    backends: Vec<(VbdSpec, Child)>,
    daemon: Option<Child>,
    introduced: Vec<u16>,
    /// The process group every process joins (the xenstore emulator's pid), if grouped.
    group: Option<i32>,
    backend_env: Vec<(String, String)>,
}

/// A process of the cluster that exited while it should have been running.
#[derive(Debug)]
pub struct Exited {
    /// What it was (`xenstored`, `serve (backend of guest 1, disk 51712)`, `daemon`).
    pub name: String,
    /// Its pid.
    pub pid: u32,
    /// How it ended.
    pub status: ExitStatus,
    /// Its log.
    pub log: PathBuf,
}

impl std::fmt::Display for Exited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (pid {}) exited unexpectedly ({}); last lines of {}:\n{}",
            self.name,
            self.pid,
            self.status,
            self.log.display(),
            crate::supervise::log_tail(&self.log, crate::supervise::TAIL_LINES)
        )
    }
}

impl EmuCluster {
    /// Starts the xenstore emulator (`exe emu xenstored`) with its socket and logs in `dir`.
    pub fn start(exe: &Path, dir: &Path) -> anyhow::Result<EmuCluster> {
        Self::start_in(exe, dir, false)
    }

    /// Like [`start`](Self::start), with every process in a new process group led by the
    /// xenstore emulator (see [`crate::supervise`]), away from the terminal's signals.
    pub fn start_grouped(exe: &Path, dir: &Path) -> anyhow::Result<EmuCluster> {
        Self::start_in(exe, dir, true)
    }

    fn start_in(exe: &Path, dir: &Path, grouped: bool) -> anyhow::Result<EmuCluster> {
        let xs_socket = dir.join("xenstored.sock");
        let log = File::create(dir.join("xenstored.log"))?;
        let mut cmd = Command::new(exe);
        cmd.args(["emu", "xenstored", "--socket"])
            .arg(&xs_socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if grouped {
            cmd.process_group(0);
        }
        let xenstored = cmd.spawn().context("cannot start the xenstore emulator")?;
        let group = grouped.then(|| i32::try_from(xenstored.id())).transpose()?;
        if grouped {
            crate::supervise::adopt_group(xenstored.id());
        }
        let mut cluster = EmuCluster {
            exe: exe.to_owned(),
            dir: dir.to_owned(),
            xs_socket,
            xenstored,
            backends: Vec::new(),
            daemon: None,
            introduced: Vec::new(),
            group,
            backend_env: Vec::new(),
        };
        let mut gone = None;
        wait_until(START_TIMEOUT, || {
            gone = cluster.exited();
            gone.is_some() || XsClient::connect(&cluster.xs_socket).is_ok()
        })
        .context("the xenstore emulator did not come up")?;
        if let Some(gone) = gone {
            bail!("{gone}");
        }
        Ok(cluster)
    }

    /// A command that runs in the cluster's process group, if it has one.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        if let Some(group) = self.group {
            cmd.process_group(group);
        }
        cmd
    }

    /// The first process of the cluster (xenstore emulator, backend, daemon) found to have
    /// exited, reaped; `None` while all run.
    pub fn exited(&mut self) -> Option<Exited> {
        let dir = self.dir.clone();
        let xs = [(
            "xenstored".to_owned(),
            &mut self.xenstored,
            dir.join("xenstored.log"),
        )];
        let backends = self.backends.iter_mut().map(|(spec, child)| {
            let name = format!(
                "serve (backend of guest {}, disk {})",
                spec.domid.0, spec.devid
            );
            let log = dir.join(backend_log_name(spec));
            (name, child, log)
        });
        let daemon = self
            .daemon
            .iter_mut()
            .map(|c| ("daemon".to_owned(), c, dir.join("daemon.log")));
        for (name, child, log) in xs.into_iter().chain(backends).chain(daemon) {
            if let Ok(Some(status)) = child.try_wait() {
                let pid = child.id();
                return Some(Exited {
                    name,
                    pid,
                    status,
                    log,
                });
            }
        }
        None
    }

    /// The work folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The xenstore emulator's dom0 socket.
    pub fn xenstore_socket(&self) -> &Path {
        &self.xs_socket
    }

    /// A new dom0 (toolstack) xenstore connection.
    pub fn toolstack(&self) -> anyhow::Result<XsClient> {
        XsClient::connect(&self.xs_socket).with_context(|| {
            format!(
                "cannot reach the xenstore emulator at {}",
                self.xs_socket.display()
            )
        })
    }

    /// The xenstore socket of guest `domid`.
    pub fn guest_socket(&self, domid: u16) -> PathBuf {
        let mut s = self.xs_socket.clone().into_os_string();
        s.push(format!(".d{domid}"));
        PathBuf::from(s)
    }

    /// Writes the vbd to xenstore as libxl does (introducing the guest the first time).
    pub fn add_vbd(&mut self, spec: &VbdSpec) -> anyhow::Result<()> {
        let xs = self.toolstack()?;
        if !self.introduced.contains(&spec.domid.0) {
            toolstack::introduce_domain(&xs, spec.domid)?;
            self.introduced.push(spec.domid.0);
        }
        toolstack::add_vbd(&xs, spec)?;
        Ok(())
    }

    /// Writes the vbd and starts a backend process for just that disk (`exe serve --devid ...
    /// extra_args`), logging to `backend-<domid>-<devid>.log`.
    pub fn add_disk(&mut self, spec: &VbdSpec, extra_args: &[&str]) -> anyhow::Result<()> {
        self.add_vbd(spec)?;
        self.serve_disk(spec, extra_args)
    }

    /// Starts a backend process for the disk `spec` already written (`exe serve --devid ...
    /// extra_args`), appending to its log: a restarted backend after [`Self::kill_disk`].
    pub fn serve_disk(&mut self, spec: &VbdSpec, extra_args: &[&str]) -> anyhow::Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.backend_log(spec))?;
        let child = self
            .rustbk(log)
            .args(["serve", "--emu-dir"])
            .arg(&self.dir)
            .args([
                "--domid",
                &spec.domid.0.to_string(),
                "--devid",
                &spec.devid.to_string(),
            ])
            .args(["--backend-domid", &spec.backend_domid.0.to_string()])
            .args(extra_args)
            .spawn()
            .context("cannot start the backend")?;
        self.backends.push((spec.clone(), child));
        Ok(())
    }

    /// Starts `exe daemon` on the emulated platform, logging to `daemon.log`.
    pub fn start_daemon(&mut self, extra_args: &[&str]) -> anyhow::Result<()> {
        let log = File::create(self.dir.join("daemon.log"))?;
        let child = self
            .rustbk(log)
            .args(["daemon", "--emu-dir"])
            .arg(&self.dir)
            .args(extra_args)
            .spawn()
            .context("cannot start the daemon")?;
        self.daemon = Some(child);
        Ok(())
    }

    /// The daemon's log.
    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// Sets an environment variable for the backend processes started from now on (tests use
    /// it for the debug builds' fault injection).
    pub fn set_backend_env(&mut self, key: &str, value: &str) {
        self.backend_env.push((key.to_owned(), value.to_owned()));
    }

    fn rustbk(&self, log: File) -> Command {
        let mut cmd = self.command(&self.exe);
        cmd.envs(self.backend_env.iter().map(|(k, v)| (k, v)));
        cmd.env("XENSTORED_PATH", &self.xs_socket)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        cmd
    }

    /// A command running `exe emu guest` for `domid`/`devid`, ready for workload arguments.
    pub fn guest_command(&self, domid: u16, devid: u32) -> Command {
        let mut cmd = self.command(&self.exe);
        cmd.args(["emu", "guest", "--emu-dir"])
            .arg(&self.dir)
            .arg("--xenstore")
            .arg(self.guest_socket(domid))
            .args(["--domid", &domid.to_string(), "--devid", &devid.to_string()]);
        cmd
    }

    /// Takes the disk away as libxl does and waits for its backend process to exit.
    pub fn remove_disk(&mut self, spec: &VbdSpec) -> anyhow::Result<()> {
        let xs = self.toolstack()?;
        toolstack::remove_vbd(&xs, spec, START_TIMEOUT)?;
        let Some(i) = self.backends.iter().position(|(s, _)| s == spec) else {
            return Ok(());
        };
        let (_, mut child) = self.backends.remove(i);
        let mut status = None;
        wait_until(START_TIMEOUT, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        })
        .context("the backend did not exit after the disk was removed")?;
        match status {
            Some(s) if s.success() => Ok(()),
            other => bail!("the backend exited with {other:?}"),
        }
    }

    /// Sends SIGTERM to the backend process of `spec` (as an administrator stopping it would)
    /// and waits for it to exit successfully.
    pub fn terminate_disk(&mut self, spec: &VbdSpec) -> anyhow::Result<()> {
        let Some(i) = self.backends.iter().position(|(s, _)| s == spec) else {
            bail!("no backend process serves that disk");
        };
        let (_, mut child) = self.backends.remove(i);
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let mut status = None;
        wait_until(START_TIMEOUT, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        })
        .context("the backend did not exit after SIGTERM")?;
        match status {
            Some(s) if s.success() => Ok(()),
            other => bail!("the backend exited with {other:?} after SIGTERM"),
        }
    }

    /// Sends SIGKILL to the backend process of `spec` and reaps it (a crash, as far as the guest
    /// and xenstore can tell).
    pub fn kill_disk(&mut self, spec: &VbdSpec) -> anyhow::Result<()> {
        let Some(i) = self.backends.iter().position(|(s, _)| s == spec) else {
            bail!("no backend process serves that disk");
        };
        let (_, mut child) = self.backends.remove(i);
        child.kill().context("cannot kill the backend")?;
        child.wait().context("cannot reap the backend")?;
        Ok(())
    }

    /// Waits for the backend process of `spec` to exit by itself (a backend that refused its
    /// disk) and returns its exit status.
    pub fn wait_backend_exit(&mut self, spec: &VbdSpec) -> anyhow::Result<ExitStatus> {
        let Some(i) = self.backends.iter().position(|(s, _)| s == spec) else {
            bail!("no backend process serves that disk");
        };
        let mut status = None;
        wait_until(START_TIMEOUT, || {
            status = self.backends[i].1.try_wait().ok().flatten();
            status.is_some()
        })
        .context("the backend did not exit")?;
        self.backends.remove(i);
        status.context("no exit status")
    }

    /// The pid of the backend of `spec`, if it runs.
    pub fn backend_pid(&self, spec: &VbdSpec) -> Option<u32> {
        self.backends
            .iter()
            .find(|(s, _)| s == spec)
            .map(|(_, c)| c.id())
    }

    /// The pid of the daemon's worker serving guest `domid`, from its lock file.
    pub fn worker_pid(&self, domid: u16) -> Option<u32> {
        GuestLock::holder(&self.dir, DomId(domid)).ok().flatten()
    }

    /// The pid of the daemon, if one was started.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    /// The pid of the xenstore emulator.
    pub fn xenstored_pid(&self) -> u32 {
        self.xenstored.id()
    }

    /// The log of the backend of `spec`.
    pub fn backend_log(&self, spec: &VbdSpec) -> PathBuf {
        self.dir.join(backend_log_name(spec))
    }
}

fn backend_log_name(spec: &VbdSpec) -> String {
    format!("backend-{}-{}.log", spec.domid.0, spec.devid)
}

impl Drop for EmuCluster {
    fn drop(&mut self) {
        if crate::supervise::stopping() {
            // The signal thread stops and reaps the whole group.
            return;
        }
        let daemon = self.daemon.iter_mut();
        for child in daemon.chain(self.backends.iter_mut().map(|(_, c)| c)) {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Daemon workers are the daemon's children: find them through their lock files.
        for domid in &self.introduced {
            if let Some(pid) = self.worker_pid(*domid).and_then(|p| i32::try_from(p).ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let _ = self.xenstored.kill();
        let _ = self.xenstored.wait();
    }
}

/// Polls `ready` every 20 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !ready() {
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
