//! Live snapshots through the pool service while an emulated guest writes: the volume is
//! served by a backend worker connected to `rustbk thin serve`, the snapshot is asked for on
//! the service's admin channel, as `rustbk thin snapshot` asks for it.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use rustbk_blkfront::toolstack::VbdSpec;
use rustbk_ring::DomId;
use rustbk_thin::dir::{Devices, PoolDir};
use rustbk_thin::pool::{PoolOptions, VolumeSpec};
use rustbk_thin::service::AdminClient;

use crate::cluster::EmuCluster;

const XVDA: u32 = 51712;
const SNAPSHOTS: u64 = 5;

/// The five live snapshots of one volume.
pub struct SnapTimes {
    /// Milliseconds of each, as the admin waits for it.
    pub total_ms: Vec<f64>,
    /// Milliseconds the volume's worker was held still by each.
    pub held_ms: Vec<f64>,
}

/// Five live snapshots of a volume of `size` bytes while guest `domid` writes 4 KiB at
/// random into it.
pub fn through_guest(cluster: &mut EmuCluster, domid: u16, size: u64) -> anyhow::Result<SnapTimes> {
    let pool = PoolDir::new(cluster.dir().join(format!("snap-pool-{domid}")));
    let devices = Devices::Files {
        metadata: 64 << 20,
        data: 8 << 30,
    };
    let spec = VolumeSpec {
        size,
        ..VolumeSpec::default()
    };
    pool.create(&devices, 64 << 10, PoolOptions::default())?
        .create_volume(0, spec)?;
    let mut service = Service::start(cluster, &pool)?;
    let disk = VbdSpec::rustbk(
        DomId(domid),
        XVDA,
        format!("thin:{}:0", pool.path.display()),
    );
    cluster.add_disk(&disk, &[])?;
    let mut guest = cluster
        .guest_command(domid, XVDA)
        .args(["--json", "--no-verify", "--bs=4096", "--rw=randwrite"])
        .args(["--qd=8", "--duration=5"])
        .stdout(Stdio::null())
        .spawn()
        .context("cannot start the emulated guest")?;
    let times = snapshots(&pool);
    let status = guest.wait()?;
    cluster.remove_disk(&disk)?;
    service.stop()?;
    std::fs::remove_dir_all(&pool.path)?;
    let times = times?;
    ensure!(
        status.success(),
        "the guest writing during the snapshots failed ({status})"
    );
    Ok(times)
}

fn snapshots(pool: &PoolDir) -> anyhow::Result<SnapTimes> {
    std::thread::sleep(Duration::from_secs(1));
    let mut admin = AdminClient::connect(&pool.socket(), Duration::from_secs(30))?;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut times = SnapTimes {
        total_ms: Vec::new(),
        held_ms: Vec::new(),
    };
    for id in 1..=SNAPSHOTS {
        let start = Instant::now();
        let held = admin.snapshot_timed(0, id, "bench")?;
        times.total_ms.push(ms(start.elapsed()));
        let held = held.context("the pool service did not tell how long it held the volume")?;
        times.held_ms.push(ms(held));
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(times)
}

/// `rustbk thin serve` of one pool, stopped with SIGTERM (so that a removed pool's files do
/// not stay open in a service waiting for its idle exit).
pub(super) struct Service(Option<Child>);

impl Service {
    pub(super) fn start(cluster: &EmuCluster, pool: &PoolDir) -> anyhow::Result<Service> {
        let exe = std::env::current_exe()?;
        let name = pool.path.file_name().unwrap_or_default().to_string_lossy();
        let log = cluster.dir().join(format!("{name}-service.log"));
        let child = cluster
            .command(&exe)
            .args(["thin", "serve"])
            .arg(&pool.path)
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .context("cannot start rustbk thin serve")?;
        let service = Service(Some(child));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pool.served() {
            ensure!(Instant::now() < deadline, "the pool service never answered");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(service)
    }

    pub(super) fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.0.take() else {
            return Ok(());
        };
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let status = child.wait()?;
        ensure!(status.success(), "the pool service failed ({status})");
        Ok(())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
