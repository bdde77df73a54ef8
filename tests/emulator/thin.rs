//! The backend serving thin volumes (`params` = `thin:POOL:VOLUME`): verified guest I/O into
//! unprovisioned, provisioned and snapshot-shared blocks, and the pool passes thin_check 0.9
//! and 1.1 afterwards.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rustbk_blkfront::toolstack::VbdSpec;
use rustbk_blkfront::workload::{self, Pattern, Workload};
use rustbk_ring::{DomId, status};
use rustbk_thin::dir::{Devices, PoolDir};
use rustbk_thin::peers::{self, Peer};
use rustbk_thin::pool::{PoolOptions, VolumeSpec};

use crate::harness::{Host, Setup, XVDA, pattern, spec_for};

const SIZE: u64 = 64 << 20;

pub fn thin_setup() -> Setup {
    Setup {
        format: Some("thin"),
        ..Setup::default()
    }
}

/// A pool in `dir` with volume 0 ("vm") of 64 MiB; returns the `POOL:VOLUME` target.
pub fn pool_with_volume(dir: &Path) -> PathBuf {
    let pool = PoolDir::new(dir.join("pool"));
    let devices = Devices::Files {
        metadata: 16 << 20,
        data: 4 * SIZE,
    };
    let opened = pool
        .create(&devices, 64 << 10, PoolOptions::default())
        .unwrap();
    let spec = VolumeSpec {
        size: SIZE,
        name: "vm".into(),
        origin: None,
    };
    opened.create_volume(0, spec).unwrap();
    PathBuf::from(format!("{}:vm", pool.path.display()))
}

pub fn metadata_of(target: &Path) -> PathBuf {
    let text = target.display().to_string();
    let (pool, _) = text.rsplit_once(':').unwrap();
    PoolDir::new(pool).metadata()
}

pub fn thin_checks(metadata: &Path) {
    for peer in Peer::ALL {
        peers::thin_check(peer, metadata).unwrap_or_else(|e| panic!("{e}"));
    }
}

fn workload(fresh: bool, seed: u64) -> Workload {
    Workload {
        pattern: Pattern::Random,
        read_percent: 50,
        block_size: 16 << 10,
        queue_depth: 16,
        duration: Duration::from_secs(2),
        max_ops: Some(3000),
        verify: true,
        fresh,
        region: Some(SIZE),
        flush_every: Some(32),
        seed,
        rate: None,
    }
}

#[test]
fn thin_volume_named_by_its_name_is_served_with_verified_io_and_passes_thin_check() {
    let mut host = Host::serving(thin_setup(), pool_with_volume);
    let mut g = host.guest();
    assert_eq!(g.front.disk().sectors, SIZE / 512);
    // Discards unmap whole 64 KiB blocks only, so the guest is told to send those.
    assert_eq!(host.xenstore_read_cli("discard-granularity"), "65536");
    let r = workload::run(&mut g.front, &workload(true, 5), &mut |_| {}).expect("workload");
    assert_eq!((r.mismatches, r.errors), (0, 0), "{r:?}");
    g.front.close().unwrap();
    host.cluster.remove_disk(&host.spec).unwrap();
    thin_checks(&metadata_of(&host.image));
}

/// Runs `rustbk thin ARGS`, which must succeed.
fn run(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_rustbk"))
        .arg("thin")
        .args(args)
        .output()
        .expect("run rustbk thin");
    assert!(out.status.success(), "rustbk thin {args:?}: {out:?}");
}

/// A pool made by `rustbk thin create-pool --preallocation full`, with volume "vm" made by
/// `rustbk thin create`; returns the `POOL:VOLUME` target.
fn full_pool_with_volume(dir: &Path) -> PathBuf {
    let pool = dir.join("pool");
    let path = pool.to_str().unwrap();
    run(&[
        "create-pool",
        path,
        "--size",
        "256m",
        "--preallocation",
        "full",
    ]);
    run(&["create", path, "--size", "64m", "--name", "vm"]);
    PathBuf::from(format!("{path}:vm"))
}

#[test]
fn a_volume_of_a_fully_preallocated_pool_is_served_and_the_pool_grows_the_same_way() {
    use std::os::unix::fs::MetadataExt;
    // The worker opens the pool itself, so `rustbk thin grow` can open it afterwards.
    let setup = Setup {
        backend_args: vec!["--no-thin-service".into()],
        ..thin_setup()
    };
    let mut host = Host::serving(setup, full_pool_with_volume);
    let pool = PoolDir::new(metadata_of(&host.image).parent().unwrap());
    let allocated = || std::fs::metadata(pool.data()).unwrap().blocks() * 512;
    assert!(allocated() >= 256 << 20, "the data file is written whole");
    let mut g = host.guest();
    let r = workload::run(&mut g.front, &workload(true, 11), &mut |_| {}).expect("workload");
    assert_eq!((r.mismatches, r.errors), (0, 0), "{r:?}");
    g.front.close().unwrap();
    host.cluster.remove_disk(&host.spec).unwrap();
    // Partial first writes into fresh blocks left no zero-ranged block behind: unwritten
    // extents read as holes.
    assert_eq!(
        data_bytes(&pool.data()),
        256 << 20,
        "a write zero-ranged a block"
    );
    thin_checks(&pool.metadata());
    let out = Command::new(env!("CARGO_BIN_EXE_rustbk"))
        .args([
            "thin",
            "grow",
            pool.path.to_str().unwrap(),
            "--size",
            "320m",
        ])
        .output()
        .expect("rustbk thin grow");
    assert!(out.status.success(), "rustbk thin grow: {out:?}");
    assert!(allocated() >= 320 << 20, "the grown part is written too");
}

/// Bytes of `path` that are not holes, from `lseek(SEEK_DATA/SEEK_HOLE)`.
fn data_bytes(path: &Path) -> u64 {
    use nix::unistd::{Whence, lseek};
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).unwrap();
    let (mut total, mut at) = (0, 0);
    while let Ok(start) = lseek(file.as_raw_fd(), at, Whence::SeekData) {
        let end = lseek(file.as_raw_fd(), start, Whence::SeekHole).unwrap();
        total += end - start;
        at = end;
    }
    u64::try_from(total).unwrap()
}

#[test]
fn snapshot_taken_between_attachments_keeps_the_data_the_origin_overwrites_later() {
    let mut host = Host::serving(thin_setup(), pool_with_volume);
    let first = pattern(64 << 10, 1);
    let mut g = host.guest();
    // A partial block, then a whole one in two halves (a request holds 11 pages at most):
    // all into unprovisioned blocks.
    assert_eq!(g.write(8, &first[..4096]), status::OKAY);
    assert_eq!(g.write(256, &first[..32 << 10]), status::OKAY);
    assert_eq!(g.write(256 + 64, &first[32 << 10..]), status::OKAY);
    g.front.close().unwrap();
    host.cluster.remove_disk(&host.spec).unwrap();
    let metadata = metadata_of(&host.image);
    let pool = PoolDir::new(metadata.parent().unwrap());
    // The worker started a pool service for the pool: the snapshot goes through it, as
    // `rustbk thin snapshot` does.
    assert!(pool.served(), "no pool service was started");
    pool.handle(PoolOptions::default())
        .unwrap()
        .snapshot(0, 1, "snap")
        .unwrap();
    host.cluster.add_disk(&host.spec, &[]).unwrap();
    let mut g = host.guest();
    let second = pattern(4096, 2);
    assert_eq!(
        g.write(8, &second),
        status::OKAY,
        "copy-on-write of a partial block"
    );
    let (st, data) = g.read(0, 2);
    assert_eq!(st, status::OKAY);
    assert_eq!(
        &data[..4096],
        &[0; 4096][..],
        "zeros around the first write"
    );
    assert_eq!(&data[4096..], &second[..], "the origin sees its new data");
    g.front.close().unwrap();
    host.cluster.remove_disk(&host.spec).unwrap();
    let snap_target = PathBuf::from(format!("{}:snap", pool.path.display()));
    let snap = spec_for(&thin_setup(), DomId(2), &snap_target);
    host.cluster.add_disk(&snap, &[]).unwrap();
    let mut s = host.guest_of(DomId(2), XVDA, |_| {});
    let (st, data) = s.read(8, 1);
    assert_eq!(st, status::OKAY);
    assert_eq!(
        data,
        first[..4096].to_vec(),
        "the snapshot keeps the old data"
    );
    for half in 0..2u64 {
        let (st, data) = s.read(256 + half * 64, 8);
        assert_eq!(st, status::OKAY);
        let at = usize::try_from(half).unwrap() * (32 << 10);
        assert_eq!(
            data,
            first[at..at + (32 << 10)].to_vec(),
            "a block shared with the origin"
        );
    }
    s.front.close().unwrap();
    host.cluster.remove_disk(&snap).unwrap();
    thin_checks(&metadata);
}

/// `rustbk thin serve` of the pool in `pool`, until dropped (SIGTERM, then waited for).
struct Service(std::process::Child);

impl Service {
    fn start(pool: &Path) -> Service {
        let child = Command::new(env!("CARGO_BIN_EXE_rustbk"))
            .args(["thin", "serve"])
            .arg(pool)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("rustbk thin serve");
        let dir = PoolDir::new(pool);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !dir.served() {
            assert!(
                std::time::Instant::now() < deadline,
                "the pool service never answered"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Service(child)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.0.id()).unwrap());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

#[test]
fn one_guest_keeps_its_data_while_the_worker_of_another_on_the_same_pool_is_killed_again_and_again()
{
    let mut service = None;
    let mut host = Host::serving(thin_setup(), |dir| {
        let target = pool_with_volume(dir);
        let pool = dir.join("pool");
        let opened = PoolDir::new(&pool).open(PoolOptions::default()).unwrap();
        let spec = VolumeSpec {
            size: SIZE,
            name: "victim".into(),
            origin: None,
        };
        opened.create_volume(1, spec).unwrap();
        drop(opened);
        service = Some(Service::start(&pool));
        target
    });
    let pool = PoolDir::new(metadata_of(&host.image).parent().unwrap());
    let mut g = host.guest();
    for round in 0..5u32 {
        let devid = XVDA + 16 * (round + 1);
        let victim = VbdSpec {
            devid,
            ..spec_for(
                &thin_setup(),
                DomId(2),
                &PathBuf::from(format!("{}:victim", pool.path.display())),
            )
        };
        host.cluster.add_disk(&victim, &[]).unwrap();
        let mut v = host.guest_of(DomId(2), devid, |_| {});
        for i in 0..8u64 {
            assert_eq!(v.write(i * 1024, &pattern(4096, 7)), status::OKAY);
        }
        let pid = host.cluster.backend_pid(&victim).unwrap();
        let killed = Arc::new(AtomicBool::new(false));
        let told = killed.clone();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100 + 150 * u64::from(round)));
            let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap());
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
            told.store(true, Ordering::SeqCst);
        });
        // Timed, not counted: the kill (at 100-700 ms) must land while the guest verifies.
        let verify = Workload {
            max_ops: None,
            duration: Duration::from_secs(1),
            ..workload(round == 0, u64::from(round))
        };
        let r = workload::run(&mut g.front, &verify, &mut |_| {}).expect("workload");
        assert!(
            killed.load(Ordering::SeqCst),
            "round {round}: the guest's workload ended before the other worker was killed"
        );
        assert_eq!((r.mismatches, r.errors), (0, 0), "round {round}: {r:?}");
        killer.join().unwrap();
        std::mem::forget(v);
    }
    g.front.close().unwrap();
    host.cluster.remove_disk(&host.spec).unwrap();
    drop(service);
    let report = rustbk_thin::check::check_path(&pool.metadata(), &Default::default()).unwrap();
    assert!(report.is_clean(), "{report}");
    thin_checks(&pool.metadata());
}

#[test]
fn a_thin_volume_is_served_in_every_cache_mode_and_its_pool_stays_clean() {
    for mode in rustbk_formats::CacheMode::ALL {
        let setup = Setup {
            cache_mode: Some(mode.to_string()),
            ..thin_setup()
        };
        let mut host = Host::serving(setup, pool_with_volume);
        let data = pattern(64 << 10, 3);
        let mut g = host.guest();
        // The worker opened the pool itself: its data device, `unsafe` as `writeback`.
        let pool = PoolDir::new(metadata_of(&host.image).parent().unwrap());
        let pid = host.cluster.backend_pid(&host.spec).unwrap();
        let flags = crate::cache::open_flags(pid, &pool.data());
        let expected = crate::cache::expected_flags(mode.always_syncing());
        assert_eq!(flags, expected, "{mode}");
        for (i, half) in data.chunks(32 << 10).enumerate() {
            let sector = 128 + 64 * i as u64;
            assert_eq!(g.write(sector, half), status::OKAY, "{mode}");
        }
        let flush = g.no_data(rustbk_ring::RwOp::Flush);
        g.send(&flush);
        assert_eq!(g.wait(flush.id()).status, status::OKAY, "{mode}");
        g.front.close().unwrap();
        host.cluster.remove_disk(&host.spec).unwrap();
        thin_checks(&metadata_of(&host.image));
        // Served again (default mode): the data is there.
        let again = VbdSpec {
            cache_mode: None,
            ..host.spec.clone()
        };
        host.cluster.add_disk(&again, &[]).unwrap();
        let mut g = host.guest();
        assert_eq!(
            g.read(128, 8),
            (status::OKAY, data[..32 << 10].to_vec()),
            "{mode}"
        );
        assert_eq!(
            g.read(192, 8),
            (status::OKAY, data[32 << 10..].to_vec()),
            "{mode}"
        );
        g.front.close().unwrap();
        host.cluster.remove_disk(&again).unwrap();
    }
}

#[test]
fn two_guests_share_a_pool_whose_service_the_first_worker_started_by_itself() {
    let mut host = Host::serving(thin_setup(), |dir| {
        let target = pool_with_volume(dir);
        let opened = PoolDir::new(dir.join("pool"))
            .open(PoolOptions::default())
            .unwrap();
        let spec = VolumeSpec {
            size: SIZE,
            name: "second".into(),
            origin: None,
        };
        opened.create_volume(1, spec).unwrap();
        target
    });
    let pool = PoolDir::new(metadata_of(&host.image).parent().unwrap());
    let g = host.guest();
    assert!(pool.served(), "the first worker started no pool service");
    let devid = XVDA + 16;
    let second = VbdSpec {
        devid,
        ..spec_for(
            &thin_setup(),
            DomId(2),
            &PathBuf::from(format!("{}:second", pool.path.display())),
        )
    };
    host.cluster.add_disk(&second, &[]).unwrap();
    let mut s = host.guest_of(DomId(2), devid, |_| {});
    let r = workload::run(&mut s.front, &workload(true, 2), &mut |_| {}).expect("workload");
    assert_eq!((r.mismatches, r.errors), (0, 0), "second guest: {r:?}");
    // The first guest's worker dies; the service it started serves the second one on.
    let pid = host.cluster.backend_pid(&host.spec).unwrap();
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    let r = workload::run(&mut s.front, &workload(false, 3), &mut |_| {}).expect("workload");
    assert_eq!((r.mismatches, r.errors), (0, 0), "after the kill: {r:?}");
    assert!(
        pool.served(),
        "the service died with the worker that started it"
    );
    s.front.close().unwrap();
    host.cluster.remove_disk(&second).unwrap();
    std::mem::forget(g.front);
    let mut admin = pool.handle(PoolOptions::default()).unwrap();
    let volumes = admin.volumes().unwrap();
    assert_eq!(volumes.len(), 2, "{volumes:?}");
    thin_checks(&pool.metadata());
}

#[test]
fn a_restore_over_a_pools_metadata_makes_it_forget_which_blocks_read_zeros() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = tmp.path().join("pool");
    run(&["create-pool", pool.to_str().unwrap(), "--size", "64m"]);
    let metadata = PoolDir::new(&pool).metadata();
    let mark = || rustbk_thin::pool::zero_mark(&metadata).unwrap();
    assert_eq!(mark(), Some(rustbk_thin::pool::FreshData::Sparse));
    let xml = tmp.path().join("dump.xml");
    let (m, x) = (metadata.to_str().unwrap(), xml.to_str().unwrap());
    run(&["dump", m, "-o", x]);
    // The dump could come from any pool, mapping blocks past the mark.
    run(&["restore", "-i", x, "-o", m]);
    assert_eq!(mark(), None, "the mark outlived the restore");
}

#[test]
fn rustbk_thin_grow_grows_a_served_pool_online() {
    let mut host = Host::serving(thin_setup(), pool_with_volume);
    let pool = PoolDir::new(metadata_of(&host.image).parent().unwrap());
    let mut g = host.guest();
    assert!(pool.served(), "the worker started no pool service");
    let size = (5 * SIZE).to_string();
    run(&["grow", pool.path.to_str().unwrap(), "--size", &size]);
    let usage = pool
        .handle(PoolOptions::default())
        .unwrap()
        .usage()
        .unwrap();
    assert_eq!(usage.data_blocks, 5 * SIZE / (64 << 10));
    let r = workload::run(&mut g.front, &workload(true, 5), &mut |_| {}).expect("workload");
    assert_eq!((r.mismatches, r.errors), (0, 0), "{r:?}");
    g.front.close().unwrap();
    host.cluster.remove_disk(&host.spec).unwrap();
    thin_checks(&pool.metadata());
}
