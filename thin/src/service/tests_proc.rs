//! Service tests with other processes: workers served from a child process (killed, or
//! snapshotted live), and a service in a child process (killed, stopped, terminated).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::child::{UNIT, Worker, check_units, unit_word, verify_workload};
use super::tests::{BS, MIB, local, pool_files, served, wait_closed};
use super::{SocketPort, open_volume};
use crate::pool::{Pool, PoolOptions, VolumeSpec};
use crate::port::PoolPort;
use crate::testing::{flush, get, put, queue, thin_check, us};
use crate::volume::VolumeOptions;

const LONG: Duration = Duration::from_secs(60);

#[test]
fn a_worker_process_and_a_thread_serve_two_volumes_of_one_pool() {
    let s = served(256, &[1, 2], 4 * MIB);
    let socket = s.socket.display().to_string();
    let mut worker = Worker::spawn(&format!("verify {socket} 2 2000 100"));
    let vol = open_volume(&s.socket, 1, VolumeOptions::default()).unwrap();
    verify_workload(&vol, 1000, 100);
    worker.wait_for("done", LONG);
    assert!(worker.exited_ok());
    wait_closed(s.service.pool(), 2);
    check_units(queue(&local(&s, 2)).as_mut(), 2000, 100);
    s.service.pool().commit().unwrap();
    thin_check(&s.meta);
}

#[test]
fn a_killed_worker_gives_back_its_blocks_and_the_other_volume_goes_on() {
    let s = served(256, &[1, 2], 4 * MIB);
    let pool = s.service.pool();
    let vol = Arc::new(open_volume(&s.socket, 1, VolumeOptions::default()).unwrap());
    verify_workload(&vol, 1, 60);
    // From now on volume 1 only overwrites its blocks in place: its use of space is fixed.
    let stop = Arc::new(AtomicBool::new(false));
    let busy = {
        let (vol, stop) = (vol.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut rounds = 0u64;
            while !stop.load(Ordering::SeqCst) {
                verify_workload(&vol, 1 + rounds % 3, 60);
                rounds += 1;
            }
            rounds
        })
    };
    let free = pool.usage().unwrap().data_free;
    let worker = Worker::spawn(&format!("hold {} 2", s.socket.display()));
    worker.wait_for("holding", LONG);
    let held = free - pool.usage().unwrap().data_free;
    let mapped = mapped_blocks(pool, 2);
    assert_eq!(mapped, 1);
    assert!(held > mapped, "the worker holds a reserve: {held} blocks");
    worker.kill();
    wait_closed(pool, 2);
    assert_eq!(pool.usage().unwrap().data_free, free - mapped);
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    assert!(busy.join().unwrap() > 0);
    pool.commit().unwrap();
    thin_check(&s.meta);
    assert_eq!(pool.usage().unwrap().data_free, free - mapped);
}

fn mapped_blocks(pool: &Pool, id: u64) -> u64 {
    let vols = pool.volumes().unwrap();
    vols.iter().find(|v| v.id == id).unwrap().mapped_blocks
}

const ROUND_UNITS: u64 = 512;
const ROUND_THREADS: u64 = 4;

#[test]
fn a_live_snapshot_of_a_volume_in_another_process_holds_its_data_as_of_the_pause() {
    let s = served(1024, &[1], 4 * MIB);
    let socket = s.socket.display().to_string();
    let worker = Worker::spawn(&format!("rounds {socket} 1 {ROUND_UNITS} {ROUND_THREADS}"));
    let round: u64 = worker.wait_for("round", LONG).parse().unwrap();
    assert!(round >= 1);
    s.service.pool().snapshot(1, 2, "snap").unwrap();
    let snap_rounds = unit_rounds(&local(&s, 2));
    let newest = *snap_rounds.iter().max().unwrap();
    let oldest = *snap_rounds.iter().min().unwrap();
    assert!(oldest >= 1 && newest - oldest <= 1, "{oldest}..={newest}");
    // Let the worker finish two more rounds over every unit, then kill it mid-round.
    while worker.wait_for("round", LONG).parse::<u64>().unwrap() < newest + 2 {}
    worker.kill();
    wait_closed(s.service.pool(), 1);

    // Each writer thread writes its units in order, one at a time: the snapshot holds the
    // newer round on a prefix of its units and the older one on the rest.
    for t in 0..ROUND_THREADS {
        let mine: Vec<u64> = snap_rounds
            .iter()
            .copied()
            .skip(us(t))
            .step_by(us(ROUND_THREADS))
            .collect();
        assert!(
            mine.windows(2).all(|w| w[0] >= w[1]),
            "thread {t}: {mine:?}"
        );
    }
    // The origin went on past the snapshot; the snapshot kept its data.
    let origin_rounds = unit_rounds(&local(&s, 1));
    assert!(
        origin_rounds.iter().all(|&r| r > newest),
        "{newest} {origin_rounds:?}"
    );
    s.service.pool().commit().unwrap();
    thin_check(&s.meta);
}

/// The round each unit of the `rounds` workload holds (checking it is whole).
fn unit_rounds(vol: &crate::volume::ThinVolume) -> Vec<u64> {
    let mut q = queue(vol);
    (0..ROUND_UNITS)
        .map(|unit| {
            let got = get(q.as_mut(), unit * UNIT, us(UNIT));
            let first = u64::from_le_bytes(got[..8].try_into().unwrap());
            let round = first >> 32;
            let whole = unit_word(round, unit).to_le_bytes().repeat(us(UNIT / 8));
            assert!(got == whole, "unit {unit} is torn or misplaced");
            round
        })
        .collect()
}

/// A pool with volume 1, not served.
/// A pool with volume 1 in a new folder: the folder, metadata, data and the socket path.
fn pool_on_disk() -> (
    tempfile::TempDir,
    std::path::PathBuf,
    std::path::PathBuf,
    std::path::PathBuf,
) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("pool.sock");
    let (meta, data) = pool_files(&dir, 128);
    let pool = Pool::create(&meta, &data, BS, PoolOptions::default()).unwrap();
    let spec = VolumeSpec {
        size: 2 * MIB,
        ..VolumeSpec::default()
    };
    pool.create_volume(1, spec).unwrap();
    (dir, meta, data, socket)
}

/// Starts `rustbk_thin::service::run` in a child process and waits for its socket.
fn service_process(
    meta: &std::path::Path,
    data: &std::path::Path,
    socket: &std::path::Path,
) -> Worker {
    let service = Worker::service(meta, data, socket);
    service.wait_for("serving", LONG);
    let deadline = Instant::now() + LONG;
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        assert!(Instant::now() < deadline, "the service never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    service
}

/// Options of a volume whose ops wait at most a second for a lost service.
fn short_hold() -> VolumeOptions {
    VolumeOptions {
        hold: Duration::from_secs(1),
        ..VolumeOptions::default()
    }
}

#[test]
fn a_killed_service_fails_the_workers_calls_at_once() {
    let (_dir, meta, data, socket) = pool_on_disk();
    let service = service_process(&meta, &data, &socket);
    let vol = open_volume(&socket, 1, short_hold()).unwrap();
    let mut q = queue(&vol);
    put(q.as_mut(), 0, &[1u8; 8192]);
    flush(q.as_mut());
    service.kill();
    let start = Instant::now();
    let write = rustbk_formats::suite::write_at(q.as_mut(), MIB, &[2u8; 4096]);
    let flushed = rustbk_formats::suite::run(q.as_mut(), rustbk_formats::IoOp::Flush);
    assert!(write.is_err() || flushed.is_err(), "{write:?} {flushed:?}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    // What was flushed is in the pool; the pool opens (the stale socket is replaced).
    drop(q);
    drop(vol);
    thin_check(&meta);
    let service = service_process(&meta, &data, &socket);
    let vol = open_volume(&socket, 1, VolumeOptions::default()).unwrap();
    assert_eq!(get(queue(&vol).as_mut(), 0, 8192), vec![1u8; 8192]);
    drop(vol);
    service.kill();
}

#[test]
fn a_stopped_service_fails_a_call_within_the_timeout() {
    let (_dir, meta, data, socket) = pool_on_disk();
    let service = service_process(&meta, &data, &socket);
    let timeout = Duration::from_secs(1);
    let mut port = SocketPort::connect_with_timeout(&socket, 1, timeout).unwrap();
    port.commit().unwrap();
    service.stop();
    let start = Instant::now();
    let e = port.commit().unwrap_err();
    let took = start.elapsed();
    service.signal(Signal::SIGCONT);
    service.kill();
    assert!(matches!(e, crate::Error::Service(_)), "{e:?}");
    assert!(
        took >= timeout && took < Duration::from_secs(20),
        "{took:?}"
    );
    assert!(
        port.info().is_err(),
        "a port that lost a reply stays failed"
    );
}

#[test]
fn a_terminated_service_closes_its_connections_and_commits() {
    let (_dir, meta, data, socket) = pool_on_disk();
    let mut service = service_process(&meta, &data, &socket);
    let vol = open_volume(&socket, 1, VolumeOptions::default()).unwrap();
    let mut q = queue(&vol);
    put(q.as_mut(), 3 * BS, &[9u8; 4096]);
    service.signal(Signal::SIGTERM);
    service.wait_for("stopped", LONG);
    assert!(service.exited_ok());
    assert!(!socket.exists());
    drop(q);
    drop(vol);
    thin_check(&meta);
    // The mapping made without a flush was committed on the way out.
    let pool = Pool::open(&meta, &data, PoolOptions::default()).unwrap();
    let mut port = pool.open_port(1).unwrap();
    assert_eq!(port.lookup(3..4).unwrap().len(), 1);
}

#[test]
fn an_admin_connection_snapshots_and_manages_volumes_of_a_served_pool() {
    let (_dir, meta, data, socket) = pool_on_disk();
    let service = service_process(&meta, &data, &socket);
    let vol = open_volume(&socket, 1, VolumeOptions::default()).unwrap();
    let mut q = queue(&vol);
    put(q.as_mut(), 0, &[1u8; 8192]);
    let mut admin = super::AdminClient::connect(&socket, LONG).unwrap();
    // The worker's queue is driven (as a worker's event loop does) while the snapshot waits
    // for it to pause.
    let snap = std::thread::spawn(move || admin.snapshot(1, 2, "before").map(|()| admin));
    let mut out = Vec::new();
    while !snap.is_finished() {
        q.wait(Some(Duration::from_millis(5))).unwrap();
        q.reap(&mut out);
    }
    let mut admin = snap.join().unwrap().unwrap();
    put(q.as_mut(), 4096, &[2u8; 4096]);
    flush(q.as_mut());
    let snap = open_volume(&socket, 2, VolumeOptions::default()).unwrap();
    assert_eq!(get(queue(&snap).as_mut(), 0, 8192), vec![1u8; 8192]);
    let mut expected = vec![1u8; 4096];
    expected.extend([2u8; 4096]);
    assert_eq!(get(q.as_mut(), 0, 8192), expected);

    let e = admin.delete_volume(1).unwrap_err();
    assert!(matches!(e, crate::Error::Busy(_)), "{e:?}");
    let spec = VolumeSpec {
        size: MIB,
        name: "three".into(),
        origin: None,
    };
    admin.create_volume(3, spec).unwrap();
    let names: Vec<(u64, String, usize)> = admin
        .volumes()
        .unwrap()
        .into_iter()
        .map(|v| (v.id, v.record.name, v.ports))
        .collect();
    assert_eq!(
        names,
        [
            (1, String::new(), 1),
            (2, "before".into(), 1),
            (3, "three".into(), 0)
        ]
    );
    admin.delete_volume(3).unwrap();
    let usage = admin.usage().unwrap();
    assert_eq!(usage.data_blocks, 128);
    admin.commit().unwrap();
    drop((q, vol, snap));
    service.kill();
    thin_check(&meta);
}

/// Kills `service` and waits until `vol` has seen it go.
fn kill_and_notice(service: Worker, vol: &crate::volume::ThinVolume) {
    service.kill();
    let deadline = Instant::now() + LONG;
    while !vol.port_failed() {
        assert!(
            Instant::now() < deadline,
            "the volume never saw the service go"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn ops_wait_for_a_restarted_service_and_the_volume_reconnects_by_itself() {
    let (_dir, meta, data, socket) = pool_on_disk();
    let service = service_process(&meta, &data, &socket);
    let vol = open_volume(&socket, 1, VolumeOptions::default()).unwrap();
    let mut q = queue(&vol);
    put(q.as_mut(), 0, &[1u8; 4096]);
    flush(q.as_mut());
    kill_and_notice(service, &vol);
    let restart = {
        let (meta, data, socket) = (meta.clone(), data.clone(), socket.clone());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1500));
            service_process(&meta, &data, &socket)
        })
    };
    let start = Instant::now();
    assert_eq!(get(q.as_mut(), 0, 4096), vec![1u8; 4096]);
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "the read went on without the service: {:?}",
        start.elapsed()
    );
    let service = restart.join().unwrap();
    put(q.as_mut(), 3 * BS, &[2u8; 4096]);
    flush(q.as_mut());
    assert_eq!(get(q.as_mut(), 3 * BS, 4096), vec![2u8; 4096]);
    drop(q);
    drop(vol);
    service.kill();
    thin_check(&meta);
}

#[test]
fn an_op_fails_once_the_service_stayed_away_longer_than_the_hold() {
    let (_dir, meta, data, socket) = pool_on_disk();
    let service = service_process(&meta, &data, &socket);
    let opts = VolumeOptions {
        hold: Duration::from_millis(1200),
        ..VolumeOptions::default()
    };
    let vol = open_volume(&socket, 1, opts).unwrap();
    let mut q = queue(&vol);
    put(q.as_mut(), 0, &[1u8; 4096]);
    flush(q.as_mut());
    kill_and_notice(service, &vol);
    let start = Instant::now();
    let write = rustbk_formats::suite::write_at(q.as_mut(), BS, &[2u8; 4096]);
    assert!(write.is_err(), "no service: the write must fail");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(1200) && waited < Duration::from_secs(20),
        "{waited:?}"
    );
}

#[test]
fn writes_lost_with_the_service_fail_the_next_flush_once() {
    let (_dir, meta, data, socket) = pool_on_disk();
    let service = service_process(&meta, &data, &socket);
    let vol = open_volume(&socket, 1, VolumeOptions::default()).unwrap();
    let mut q = queue(&vol);
    put(q.as_mut(), 0, &[1u8; 4096]);
    flush(q.as_mut());
    // Mapped, complete, never flushed: the service takes the mapping with it.
    put(q.as_mut(), 5 * BS, &[2u8; 4096]);
    kill_and_notice(service, &vol);
    let service = service_process(&meta, &data, &socket);
    put(q.as_mut(), 7 * BS, &[3u8; 4096]);
    let flushed = rustbk_formats::suite::run(q.as_mut(), rustbk_formats::IoOp::Flush);
    assert!(flushed.is_err(), "a write was lost: the flush must say so");
    flush(q.as_mut());
    assert_eq!(get(q.as_mut(), 0, 4096), vec![1u8; 4096]);
    assert_eq!(get(q.as_mut(), 5 * BS, 4096), vec![0u8; 4096]);
    assert_eq!(get(q.as_mut(), 7 * BS, 4096), vec![3u8; 4096]);
    drop(q);
    drop(vol);
    service.kill();
    thin_check(&meta);
}

#[test]
fn a_worker_goes_on_with_a_restarted_service_from_its_last_commit() {
    let (_dir, meta, data, socket) = pool_on_disk();
    let service = service_process(&meta, &data, &socket);
    let vol = open_volume(&socket, 1, short_hold()).unwrap();
    let mut q = queue(&vol);
    put(q.as_mut(), 0, &[1u8; 4096]);
    flush(q.as_mut());
    put(q.as_mut(), 5 * BS, &[2u8; 4096]);
    service.kill();
    assert!(rustbk_formats::suite::run(q.as_mut(), rustbk_formats::IoOp::Flush).is_err());

    let service = service_process(&meta, &data, &socket);
    let port = SocketPort::connect(&socket, 1).unwrap();
    vol.replace_port(Box::new(port)).unwrap();
    assert_eq!(get(q.as_mut(), 0, 4096), vec![1u8; 4096]);
    // Mapped after the last commit: gone with the old service.
    assert_eq!(get(q.as_mut(), 5 * BS, 4096), vec![0u8; 4096]);
    put(q.as_mut(), 5 * BS, &[3u8; 4096]);
    put(q.as_mut(), 7 * BS + 512, &[4u8; 512]);
    flush(q.as_mut());
    assert_eq!(get(q.as_mut(), 5 * BS, 4096), vec![3u8; 4096]);
    drop(q);
    drop(vol);
    let mut admin = super::AdminClient::connect(&socket, LONG).unwrap();
    let usage = admin.usage().unwrap();
    let volumes = admin.volumes().unwrap();
    assert_eq!(volumes[0].mapped_blocks, 3);
    // Only the mapped blocks are in use: the old reserve is free in the new service.
    assert_eq!(usage.data_free, usage.data_blocks - 3);
    drop(admin);
    service.kill();
    thin_check(&meta);
}
