//! Starting a pool service on demand: a backend worker that serves a volume of a pool no
//! service serves starts `rustbk thin serve` for it, so that any number of guests' workers
//! share the pool, each in its own process, with no set-up beyond the disk line.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::PoolDir;
use crate::error::{Error, Result};

/// The log of a pool service started on demand, inside the pool directory.
pub const SERVICE_LOG: &str = "service.log";
/// A pool service started on demand stops after this long with no connection.
pub const AUTO_IDLE_EXIT: Duration = Duration::from_secs(60);
/// How long a started service may take to answer.
const START_LIMIT: Duration = Duration::from_secs(10);
/// How long to wait for another starter's service after ours exited (it lost the race for
/// the pool's lock, or failed).
const RACE_LIMIT: Duration = Duration::from_secs(1);

impl PoolDir {
    /// Starts `exe thin serve POOL --idle-exit 60` unless a service answers already, and
    /// waits until one answers. The service runs in a process group of its own, so it
    /// outlives the caller and is not hit by signals sent to the caller's group; its log is
    /// `POOL/service.log`. Two callers may start one at once: the second service finds the
    /// pool locked and exits, and both callers use the first.
    pub fn start_service(&self, exe: &Path) -> Result<()> {
        if self.served() {
            return Ok(());
        }
        let child = self.spawn_service(exe)?;
        self.wait_served(child)
    }

    fn spawn_service(&self, exe: &Path) -> Result<Child> {
        let io = |what: &str, e: std::io::Error| {
            Error::Service(format!("{what} for {}: {e}", self.path.display()))
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path.join(SERVICE_LOG))
            .map_err(|e| io("cannot open the pool service's log", e))?;
        let idle = AUTO_IDLE_EXIT.as_secs().to_string();
        std::os::unix::process::CommandExt::process_group(
            Command::new(exe)
                .args(["thin", "serve"])
                .arg(&self.path)
                .args(["--idle-exit", &idle])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log),
            0,
        )
        .spawn()
        .map_err(|e| io(&format!("cannot start {} thin serve", exe.display()), e))
    }

    fn wait_served(&self, mut child: Child) -> Result<()> {
        let start = Instant::now();
        let mut exited: Option<(Instant, std::process::ExitStatus)> = None;
        loop {
            if self.served() {
                break;
            }
            if exited.is_none() {
                if let Ok(Some(status)) = child.try_wait() {
                    exited = Some((Instant::now(), status));
                }
            }
            let gave_up = match exited {
                Some((at, _)) => at.elapsed() >= RACE_LIMIT,
                None => start.elapsed() >= START_LIMIT,
            };
            if gave_up {
                let how = exited.map_or("did not answer in time".into(), |(_, s)| {
                    format!("exited ({s})")
                });
                return Err(Error::Service(format!(
                    "the pool service started for {} {how}; see {}",
                    self.path.display(),
                    self.path.join(SERVICE_LOG).display()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if exited.is_none() {
            // Reaped when it stops, if this process still runs then.
            let spawned = std::thread::Builder::new()
                .name("thin-service-reaper".into())
                .spawn(move || child.wait());
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start a thread to reap the pool service");
            }
        }
        tracing::info!(pool = %self.path.display(), "pool service started on demand");
        Ok(())
    }
}
