use std::sync::Arc;
use std::time::{Duration, Instant};

use rustbk_formats::suite::{self, pattern};
use rustbk_formats::{ImageQueue, IoOp};

use super::{OnFull, PoolOptions, VolumeSpec};
use crate::error::Error;
use crate::port::{NewMapping, PoolPort};
use crate::testing::{flush, get, new_pool, new_pool_with_meta, put, queue, thin_check, us};

const MIB: u64 = 1 << 20;
const BS: u64 = 64 << 10;

fn spec(size: u64) -> VolumeSpec {
    VolumeSpec {
        size,
        ..VolumeSpec::default()
    }
}

#[test]
fn a_dropped_port_gives_back_its_unmapped_blocks() {
    let t = new_pool(BS, 100, PoolOptions::default());
    t.pool.create_volume(1, spec(MIB)).unwrap();
    let free = t.pool.usage().unwrap().data_free;
    let mut port = t.pool.open_port(1).unwrap();
    let blocks = port.provision(10).unwrap();
    assert_eq!(blocks.len(), 10);
    port.map(&[NewMapping {
        vblock: 3,
        block: blocks[0],
    }])
    .unwrap();
    port.commit().unwrap();
    assert_eq!(t.pool.usage().unwrap().data_free, free - 10);
    thin_check(&t.meta);
    // A crash now (the port's process dies) leaves only the mapped block in use on disk.
    let access = rustbk_formats::engine::Access::ForceShare;
    let file =
        rustbk_formats::EngineFile::open(&t.meta, access, rustbk_formats::CacheMode::Writeback)
            .unwrap();
    let on_disk = crate::meta::Metadata::open(Arc::new(file), |_| 100).unwrap();
    assert_eq!(on_disk.data_refs().nr_free(), free - 1);
    drop(port);
    assert_eq!(t.pool.usage().unwrap().data_free, free - 1);
    t.pool.commit().unwrap();
    thin_check(&t.meta);
    assert_eq!(t.pool.usage().unwrap().data_free, free - 1);
}

#[test]
fn a_handout_takes_at_most_16_blocks_or_a_64th_of_the_free_ones() {
    let t = new_pool(BS, 4096, PoolOptions::default());
    t.pool.create_volume(1, spec(256 * MIB)).unwrap();
    let mut port = t.pool.open_port(1).unwrap();
    assert_eq!(port.provision(256).unwrap().len(), 4096 / 64);
    let mut taken = 64;
    while 4096 - taken >= 64 * 16 {
        let got = port.provision(256).unwrap().len() as u64;
        assert_eq!(got, ((4096 - taken) / 64).max(16));
        taken += got;
    }
    assert_eq!(port.provision(256).unwrap().len(), 16);
    assert_eq!(port.provision(5).unwrap().len(), 5);
}

#[test]
fn a_port_cannot_map_blocks_it_was_not_given_or_past_the_volume_end() {
    let t = new_pool(BS, 100, PoolOptions::default());
    t.pool.create_volume(1, spec(MIB)).unwrap();
    let mut port = t.pool.open_port(1).unwrap();
    let mine = port.provision(1).unwrap()[0];
    let foreign = NewMapping {
        vblock: 0,
        block: mine + 1,
    };
    assert!(matches!(
        port.map(&[foreign]),
        Err(Error::InvalidArgument(_))
    ));
    let past = NewMapping {
        vblock: MIB / BS,
        block: mine,
    };
    assert!(matches!(port.map(&[past]), Err(Error::InvalidArgument(_))));
    assert!(port.release(&[mine + 1]).is_err());
    assert!(port.lookup(0..u64::MAX).is_err());
}

#[test]
fn commits_requested_together_are_grouped() {
    let t = new_pool(BS, 1000, PoolOptions::default());
    for id in 0..8 {
        t.pool.create_volume(id, spec(MIB)).unwrap();
    }
    let before = t.pool.commits();
    let pool = &t.pool;
    std::thread::scope(|s| {
        for id in 0..8 {
            s.spawn(move || {
                let mut port = pool.open_port(id).unwrap();
                for round in 0..5 {
                    let b = port.provision(1).unwrap()[0];
                    port.map(&[NewMapping {
                        vblock: round,
                        block: b,
                    }])
                    .unwrap();
                    port.commit().unwrap();
                }
            });
        }
    });
    let commits = t.pool.commits() - before;
    assert!(commits < 40, "{commits} commits for 40 requests");
    thin_check(&t.meta);
}

#[test]
fn a_full_pool_fails_writes_with_enospc() {
    let t = new_pool(BS, 4, PoolOptions::default());
    let vol = t.volume(1, MIB);
    let mut q = queue(&vol);
    for i in 0..4 {
        put(&mut *q, i * BS, &[1; 512]);
    }
    let refused = suite::write_at(&mut *q, 4 * BS, &[1; 512]);
    assert_eq!(refused.expect_err("pool full").errno(), libc::ENOSPC);
    put(&mut *q, 0, &[2; 512]);
    assert_eq!(get(&mut *q, 0, 512), vec![2; 512], "overwrites still work");
}

#[test]
fn a_queueing_pool_holds_writes_until_the_data_device_grows() {
    let opts = PoolOptions {
        on_full: OnFull::Queue,
        full_timeout: Duration::from_secs(30),
        ..PoolOptions::default()
    };
    let t = new_pool(BS, 2, opts);
    let vol = t.volume(1, MIB);
    let mut q = queue(&vol);
    put(&mut *q, 0, &[1; 512]);
    put(&mut *q, BS, &[1; 512]);
    let data = t.data.clone();
    let pool = &t.pool;
    std::thread::scope(|s| {
        let grower = s.spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            sized_file_grow(&data, 8 * BS);
            pool.grow_data().unwrap()
        });
        let start = Instant::now();
        put(&mut *q, 2 * BS, &pattern(7, 4096));
        assert!(
            start.elapsed() >= Duration::from_millis(250),
            "the write did not wait"
        );
        assert_eq!(grower.join().unwrap(), 8);
    });
    assert_eq!(get(&mut *q, 2 * BS, 4096), pattern(7, 4096));
    flush(&mut *q);
    thin_check(&t.meta);
}

#[test]
fn a_queued_write_fails_with_enospc_after_the_timeout() {
    let opts = PoolOptions {
        on_full: OnFull::Queue,
        full_timeout: Duration::from_millis(200),
        ..PoolOptions::default()
    };
    let t = new_pool(BS, 1, opts);
    let vol = t.volume(1, MIB);
    let mut q = queue(&vol);
    put(&mut *q, 0, &[1; 512]);
    let start = Instant::now();
    let refused = suite::write_at(&mut *q, BS, &[1; 512]);
    assert_eq!(refused.expect_err("full").errno(), libc::ENOSPC);
    assert!(start.elapsed() >= Duration::from_millis(150));
}

fn sized_file_grow(path: &std::path::Path, len: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_len(len).unwrap();
}

#[test]
fn running_out_of_metadata_fails_writes_and_keeps_the_pool_consistent() {
    let t = new_pool_with_meta(BS, 40_000, 128 * 4096, PoolOptions::default());
    let vol = t.volume(1, 40_000 * BS);
    let mut q = queue(&vol);
    let mut written = 0u64;
    let error = loop {
        // Every write lands in a new block, spread so the B-tree grows.
        let at = (written * 7919 % 40_000) * BS;
        match suite::write_at(&mut *q, at, &[1; 512]) {
            Ok(()) => written += 1,
            Err(e) => break e,
        }
        if written % 64 == 0 {
            flush(&mut *q);
        }
        assert!(written < 40_000, "metadata never ran out");
    };
    assert_eq!(error.errno(), libc::ENOSPC, "{error}");
    assert!(written > 100, "only {written} blocks mapped");
    eprintln!("{written} blocks mapped before the metadata ran out");
    assert_eq!(t.pool.failed().unwrap(), None, "refused before any change");
    drop(q);
    drop(vol);
    let _ = t.pool.commit();
    thin_check(&t.meta);
    let t = t.reopen(PoolOptions::default());
    thin_check(&t.meta);
    let mapped = t.pool.volumes().unwrap()[0].mapped_blocks;
    assert!(
        mapped >= written / 64 * 64,
        "{mapped} mapped, {written} written"
    );
}

#[test]
fn the_low_water_hook_runs_once_when_crossed_and_again_after_space_came_back() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("fired");
    let hook = dir.path().join("hook.sh");
    let script = format!(
        "#!/bin/sh\necho \"$RUSTBK_POOL_FREE_BLOCKS\" >> {}\n",
        marker.display()
    );
    std::fs::write(&hook, script).unwrap();
    let chmod = std::process::Command::new("chmod")
        .arg("+x")
        .arg(&hook)
        .status();
    assert!(chmod.unwrap().success());
    let opts = PoolOptions {
        low_water_blocks: 5,
        low_water_hook: Some(hook),
        ..PoolOptions::default()
    };
    let t = new_pool(BS, 10, opts);
    let vol = t.volume(1, MIB);
    let mut q = queue(&vol);
    for i in 0..9 {
        put(&mut *q, i * BS, &[1; 4096]);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !marker.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    let fired = std::fs::read_to_string(&marker).expect("the hook ran");
    assert_eq!(fired.lines().count(), 1, "{fired}");
    // Space given back re-arms the mark: crossing it again runs the hook again.
    let discard = IoOp::Discard {
        offset: 0,
        len: 8 * BS,
    };
    suite::run(&mut *q, discard).expect("discard");
    flush(&mut *q);
    for i in 0..8 {
        put(&mut *q, i * BS, &[2; 4096]);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = || std::fs::read_to_string(&marker).map_or(0, |s| s.lines().count());
    while lines() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    let fired = std::fs::read_to_string(&marker).expect("the hook ran");
    assert_eq!(fired.lines().count(), 2, "{fired}");
}

#[test]
fn volumes_survive_a_reopen_with_their_records() {
    let t = new_pool(BS, 100, PoolOptions::default());
    t.pool.create_volume(1, spec(MIB)).unwrap();
    t.pool.create_volume(2, spec(2 * MIB)).unwrap();
    t.pool.resize_volume(2, 3 * MIB).unwrap();
    t.pool.snapshot(1, 3, "snap").unwrap();
    t.pool.delete_volume(1).unwrap();
    let t = t.reopen(PoolOptions::default());
    let vols = t.pool.volumes().unwrap();
    let sizes: Vec<(u64, u64, String)> = vols
        .iter()
        .map(|v| (v.id, v.record.size, v.record.name.clone()))
        .collect();
    assert_eq!(
        sizes,
        vec![(2, 3 * MIB, String::new()), (3, MIB, "snap".into())]
    );
    thin_check(&t.meta);
}

#[test]
fn the_record_of_a_new_volume_is_durable_before_the_volume_and_never_replaces_another() {
    let t = new_pool(BS, 100, PoolOptions::default());
    t.pool.create_volume(1, spec(MIB)).unwrap();
    let sidecar = crate::pool::sidecar::path_for(&t.meta);
    let taken = t.pool.create_volume(1, spec(2 * MIB));
    assert!(matches!(taken, Err(Error::DeviceExists(1))), "{taken:?}");
    let taken = t.pool.snapshot(1, 1, "again");
    assert!(matches!(taken, Err(Error::DeviceExists(1))), "{taken:?}");
    let on_disk = crate::pool::sidecar::load(&sidecar).unwrap().unwrap();
    assert_eq!(on_disk[&1].size, MIB);
    // A crash after the record was written and before the commit: the record of a device
    // that does not exist is dropped when the pool opens.
    let mut ahead = on_disk.clone();
    ahead.insert(7, on_disk[&1].clone());
    crate::pool::sidecar::store(&sidecar, &ahead).unwrap();
    let t = t.reopen(PoolOptions::default());
    let ids: Vec<u64> = t.pool.volumes().unwrap().iter().map(|v| v.id).collect();
    assert_eq!(ids, vec![1]);
    t.pool.snapshot(1, 7, "snap").unwrap();
    let on_disk = crate::pool::sidecar::load(&sidecar).unwrap().unwrap();
    assert_eq!(on_disk[&7].name, "snap");
}

#[test]
fn a_pool_without_a_volume_list_sizes_volumes_by_their_last_mapped_block() {
    let t = new_pool(BS, 100, PoolOptions::default());
    t.pool.create_volume(1, spec(MIB)).unwrap();
    let vol = crate::testing::TestPool::open(&t, 1);
    let mut q = queue(&vol);
    put(&mut *q, 5 * BS + 10, &[3; 10]);
    flush(&mut *q);
    drop(q);
    drop(vol);
    super::sidecar::remove(&super::sidecar::path_for(&t.meta)).unwrap();
    let t = t.reopen(PoolOptions::default());
    assert_eq!(t.pool.volumes().unwrap()[0].record.size, 6 * BS);
}

#[test]
fn shrinking_a_volume_unmaps_the_blocks_past_its_end() {
    let t = new_pool(BS, 100, PoolOptions::default());
    let vol = t.volume(1, MIB);
    let mut q = queue(&vol);
    put(&mut *q, 0, &pattern(1, us(MIB)));
    flush(&mut *q);
    assert!(matches!(t.pool.resize_volume(1, BS), Err(Error::Busy(_))));
    drop(q);
    drop(vol);
    let free = t.pool.usage().unwrap().data_free;
    t.pool.resize_volume(1, 2 * BS).unwrap();
    assert_eq!(t.pool.volumes().unwrap()[0].mapped_blocks, 2);
    assert_eq!(t.pool.usage().unwrap().data_free, free + 14);
    thin_check(&t.meta);
}

/// Writes region after region (4 in flight, paced) until `stop`, counting the completed ones
/// in `written`; returns how many were written.
fn write_regions(
    q: &mut dyn ImageQueue,
    stop: &std::sync::atomic::AtomicBool,
    written: &std::sync::atomic::AtomicU64,
) -> u64 {
    let region = 16 << 10;
    let mut next = 0u64;
    let mut done = Vec::new();
    let mut in_flight = 0;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) || in_flight > 0 {
        while in_flight < 4 && !stop.load(std::sync::atomic::Ordering::SeqCst) && next < 256 {
            let buf = rustbk_formats::SharedBuf::new(region);
            assert!(buf.copy_in(0, &pattern(next + 1, region)));
            let op = rustbk_formats::IoOp::Write {
                offset: next * region as u64,
                bufs: Box::new(buf),
            };
            q.submit(op, next).unwrap();
            next += 1;
            in_flight += 1;
        }
        q.commit().unwrap();
        q.wait(Some(Duration::from_millis(10))).unwrap();
        done.clear();
        let n = q.reap(&mut done);
        in_flight -= n;
        written.fetch_add(n as u64, std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(1));
        assert!(done.iter().all(|c| c.result.is_ok()), "{done:?}");
        if next == 256 && in_flight == 0 {
            break;
        }
    }
    next
}

/// How many leading regions hold their data; panics unless the rest read as zeros.
fn written_prefix(q: &mut dyn ImageQueue) -> u64 {
    let region = 16 << 10;
    let all = get(q, 0, 256 * region);
    let mut k = 0;
    while k < 256 && all[k * region..(k + 1) * region] == pattern(k as u64 + 1, region)[..] {
        k += 1;
    }
    assert!(
        all[k * region..].iter().all(|&b| b == 0),
        "the snapshot holds region writes out of order after region {k}"
    );
    k as u64
}

#[test]
fn a_live_snapshot_holds_exactly_the_writes_before_its_pause() {
    let t = new_pool(BS, 400, PoolOptions::default());
    let vol = t.volume(1, 4 * MIB);
    let mut q = queue(&vol);
    // Every block is mapped before, so the snapshot shares blocks the writer then splits.
    put(&mut *q, 0, &vec![0; us(4 * MIB)]);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let pool = &t.pool;
    let (stop2, written2) = (stop.clone(), written.clone());
    let total = std::thread::scope(|s| {
        let snap = s.spawn(move || {
            while written2.load(std::sync::atomic::Ordering::SeqCst) < 32 {
                std::thread::sleep(Duration::from_millis(1));
            }
            let r = pool.snapshot(1, 2, "live");
            std::thread::sleep(Duration::from_millis(50));
            stop2.store(true, std::sync::atomic::Ordering::SeqCst);
            r
        });
        let total = write_regions(&mut *q, &stop, &written);
        snap.join().unwrap().expect("snapshot");
        total
    });
    flush(&mut *q);
    let snap = crate::testing::TestPool::open(&t, 2);
    let mut sq = queue(&snap);
    let k = written_prefix(&mut *sq);
    assert!(
        (32..total).contains(&k),
        "the snapshot holds {k} of {total} writes"
    );
    let mut expected = Vec::new();
    for i in 0..total {
        expected.extend(pattern(i + 1, 16 << 10));
    }
    suite::assert_bytes(&get(&mut *q, 0, expected.len()), &expected, "origin");
    drop((q, sq, vol, snap));
    t.pool.commit().unwrap();
    thin_check(&t.meta);
}

#[test]
fn a_snapshot_times_out_when_the_volume_never_pauses() {
    let opts = PoolOptions {
        pause_timeout: Duration::from_millis(200),
        ..PoolOptions::default()
    };
    let t = new_pool(BS, 100, opts);
    let vol = t.volume(1, MIB);
    let q = queue(&vol);
    assert!(matches!(t.pool.snapshot(1, 2, ""), Err(Error::Busy(_))));
    drop(q);
    drop(vol);
    t.pool.snapshot(1, 2, "").expect("no port, no pause needed");
}

#[test]
fn deleting_a_snapshot_frees_only_its_own_blocks() {
    let t = new_pool(BS, 100, PoolOptions::default());
    let vol = t.volume(1, MIB);
    let mut q = queue(&vol);
    put(&mut *q, 0, &pattern(1, us(4 * BS)));
    flush(&mut *q);
    drop(q);
    drop(vol);
    t.pool.snapshot(1, 2, "").unwrap();
    let snap = crate::testing::TestPool::open(&t, 2);
    let mut q = queue(&snap);
    put(&mut *q, 100, &[5; 100]);
    flush(&mut *q);
    drop(q);
    drop(snap);
    let free = t.pool.usage().unwrap().data_free;
    t.pool.delete_volume(2).unwrap();
    assert_eq!(t.pool.usage().unwrap().data_free, free + 1);
    let vol = crate::testing::TestPool::open(&t, 1);
    let mut q = queue(&vol);
    suite::assert_bytes(
        &get(&mut *q, 0, us(4 * BS)),
        &pattern(1, us(4 * BS)),
        "origin",
    );
    thin_check(&t.meta);
}

#[test]
fn after_a_live_snapshot_a_block_is_copied_once_then_overwritten_in_place() {
    let t = new_pool(BS, 100, PoolOptions::default());
    let vol = t.volume(1, MIB);
    let mut q = queue(&vol);
    put(&mut *q, 0, &[1; 4096]);
    let pool = &t.pool;
    std::thread::scope(|s| {
        let snap = s.spawn(move || pool.snapshot(1, 2, ""));
        let mut out = Vec::new();
        while !snap.is_finished() {
            q.wait(Some(Duration::from_millis(5))).unwrap();
            q.reap(&mut out);
        }
        snap.join().unwrap().unwrap();
    });
    let mut port = t.pool.open_port(1).unwrap();
    let mut block_of_0 = || port.lookup(0..1).unwrap()[0].1.block;
    let shared = block_of_0();
    put(&mut *q, 100, &[2; 100]);
    let copied = block_of_0();
    assert_ne!(copied, shared, "the first write copies the shared block");
    put(&mut *q, 300, &[3; 100]);
    assert_eq!(
        block_of_0(),
        copied,
        "the copy is the volume's own: overwritten in place"
    );
}

#[test]
fn a_pool_closed_cleanly_commits_its_last_mappings() {
    let t = new_pool(BS, 100, PoolOptions::default());
    let vol = t.volume(1, MIB);
    let mut q = queue(&vol);
    put(&mut *q, 0, &pattern(5, 4096));
    drop(q);
    drop(vol);
    let t = t.reopen(PoolOptions::default());
    assert_eq!(t.pool.volumes().unwrap()[0].mapped_blocks, 1);
    thin_check(&t.meta);
}

#[test]
fn a_change_failing_half_way_stops_the_pool_and_writes_nothing() {
    let t = new_pool(BS, 100, PoolOptions::default());
    t.pool.create_volume(1, spec(MIB)).unwrap();
    let t = t.reopen(PoolOptions::default());
    // The metadata device loses everything but its superblock: the mapping tree cannot be
    // read any more, and a change that needs it fails half-way.
    let meta = std::fs::OpenOptions::new()
        .write(true)
        .open(&t.meta)
        .unwrap();
    meta.set_len(4096).unwrap();
    let mut port = t.pool.open_port(1).unwrap();
    let b = port.provision(1).unwrap()[0];
    let failed = port.map(&[NewMapping {
        vblock: 0,
        block: b,
    }]);
    assert!(failed.is_err());
    assert!(t.pool.failed().unwrap().is_some());
    assert!(matches!(port.provision(1), Err(Error::PoolFailed(_))));
    assert!(matches!(t.pool.commit(), Err(Error::PoolFailed(_))));
    drop(port);
    let crate::testing::TestPool { pool, meta, .. } = t;
    drop(pool);
    assert_eq!(
        std::fs::metadata(&meta).unwrap().len(),
        4096,
        "nothing was written"
    );
}

#[test]
fn pool_grown_online_uses_its_larger_devices_and_passes_thin_check() {
    let t = crate::testing::new_pool_with_meta(BS, 16, 1 << 20, PoolOptions::default());
    t.pool.create_volume(1, spec(4 * MIB)).unwrap();
    let vol = t.open(1);
    let mut q = queue(&vol);
    put(&mut *q, 0, &pattern(1, us(MIB)));
    let full = Error::DataFull(16).errno();
    let err = suite::write_at(&mut *q, 2 * MIB, &pattern(2, us(MIB))).unwrap_err();
    assert_eq!(err.errno(), full, "16 blocks of 64 KiB hold 1 MiB");
    let grow = |path: &std::path::Path, len: u64| {
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.set_len(len).unwrap();
    };
    grow(&t.data, 64 * BS);
    grow(&t.meta, 8 << 20);
    assert_eq!(t.pool.grow_data().unwrap(), 64);
    assert_eq!(t.pool.grow_metadata().unwrap(), 2048);
    put(&mut *q, 2 * MIB, &pattern(2, us(MIB)));
    flush(&mut *q);
    suite::assert_bytes(&get(&mut *q, 0, us(MIB)), &pattern(1, us(MIB)), "first MiB");
    suite::assert_bytes(
        &get(&mut *q, 2 * MIB, us(MIB)),
        &pattern(2, us(MIB)),
        "grown",
    );
    assert_eq!(t.pool.usage().unwrap().metadata_blocks, 2048);
    drop(q);
    drop(vol);
    thin_check(&t.meta);
}

#[test]
fn a_full_pool_takes_back_the_blocks_another_volume_holds_in_reserve() {
    // 20 blocks: volume 1's first write takes a reserve of 16 and uses one of them.
    let t = new_pool(BS, 20, PoolOptions::default());
    let (a, b) = (t.volume(1, MIB), t.volume(2, 2 * MIB));
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let stop = std::sync::atomic::AtomicBool::new(false);
    /// Stops volume 1's worker however the test ends (a failed assertion too).
    struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
    std::thread::scope(|s| {
        let _stop = Stop(&stop);
        // Volume 1's worker then sleeps on its queue, as a ring worker does between requests.
        s.spawn(|| {
            let mut qa = queue(&a);
            put(&mut *qa, 0, &pattern(1, 4096));
            ready_tx.send(a.reserved()).unwrap();
            let mut done = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                qa.wait_any(&[], Some(Duration::from_millis(50))).unwrap();
                qa.reap(&mut done);
            }
        });
        assert_eq!(ready.recv().unwrap(), 15, "volume 1's reserve");
        let mut qb = queue(&b);
        // 4 blocks are free; the other 15 come from volume 1's reserve.
        for i in 0..19 {
            put(&mut *qb, i * BS, &pattern(10 + i, 4096));
        }
        let start = Instant::now();
        let refused = suite::write_at(&mut *qb, 19 * BS, &[1; 512]);
        assert_eq!(refused.expect_err("pool full").errno(), libc::ENOSPC);
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "no volume holds a reserve: the write fails at once ({:?})",
            start.elapsed()
        );
        for i in 0..19 {
            assert_eq!(get(&mut *qb, i * BS, 4096), pattern(10 + i, 4096));
        }
        flush(&mut *qb);
    });
    assert_eq!(a.reserved(), 0, "volume 1 gave its reserve back");
    assert_eq!(get(&mut *queue(&a), 0, 4096), pattern(1, 4096));
    assert_eq!(t.pool.usage().unwrap().data_free, 0);
    drop((a, b));
    t.pool.commit().unwrap();
    thin_check(&t.meta);
}

#[test]
fn blocks_another_tool_mapped_past_the_zero_mark_are_zeroed_around_a_first_write_after_reuse() {
    for peer in crate::peers::Peer::ALL {
        reuse_after_a_peer_restore(peer);
    }
}

fn reuse_after_a_peer_restore(peer: crate::peers::Peer) {
    let dir = tempfile::tempdir().unwrap();
    let (xml, meta, data) = (
        dir.path().join("pool.xml"),
        dir.path().join("meta"),
        dir.path().join("data"),
    );
    crate::testing::sized_file(&meta, 4 << 20);
    crate::testing::sized_file(&data, 4 * BS);
    let made = super::FreshData::Sparse;
    drop(
        super::Pool::create_on_fresh_data(&meta, &data, BS, PoolOptions::default(), made).unwrap(),
    );
    // Another tool rewrites the metadata: volume 1 maps every block, with its data written.
    std::fs::write(
        &xml,
        r#"<superblock uuid="" time="0" transaction="1" flags="0" version="2" data_block_size="128" nr_data_blocks="4">
  <device dev_id="1" mapped_blocks="4" transaction="0" creation_time="0" snap_time="0">
    <range_mapping origin_begin="0" data_begin="0" length="4" time="0"/>
  </device>
</superblock>
"#,
    )
    .unwrap();
    crate::peers::thin_restore(peer, &xml, &meta).unwrap();
    std::fs::write(&data, pattern(9, us(4 * BS))).unwrap();
    let pool = super::Pool::open(&meta, &data, PoolOptions::default()).unwrap();
    pool.delete_volume(1).unwrap();
    pool.create_volume(2, spec(4 * BS)).unwrap();
    let vol = crate::volume::ThinVolume::open_local(&pool, 2, Default::default()).unwrap();
    let mut q = queue(&vol);
    for b in 0..4 {
        put(&mut *q, b * BS, &[7; 512]);
    }
    flush(&mut *q);
    let mut expected = vec![0; us(BS)];
    expected[..512].fill(7);
    for b in 0..4 {
        let got = get(&mut *q, b * BS, us(BS));
        suite::assert_bytes(&got, &expected, &format!("block {b} of the new volume"));
    }
    thin_check(&meta);
}

/// A snapshot shares its origin's mapping tree by its root, as dm-thin's does: it costs the
/// same few metadata blocks whether the origin maps 20 blocks or 20000 (O(1) in the size of
/// the volume). A copy of the larger tree would take over a hundred blocks (126 mappings a
/// leaf).
#[test]
fn a_snapshot_costs_the_same_metadata_for_20_and_for_20000_mapped_blocks() {
    let t = new_pool(BS, 20_100, PoolOptions::default());
    let mut costs = Vec::new();
    for (id, mapped) in [(1u64, 20u64), (2, 20_000)] {
        t.pool.create_volume(id, spec(mapped * BS)).unwrap();
        let mut port = t.pool.open_port(id).unwrap();
        let mut vblock = 0;
        while vblock < mapped {
            let blocks = port.provision(1000.min(us(mapped - vblock))).unwrap();
            let maps: Vec<NewMapping> = blocks
                .into_iter()
                .map(|block| {
                    vblock += 1;
                    NewMapping {
                        vblock: vblock - 1,
                        block,
                    }
                })
                .collect();
            port.map(&maps).unwrap();
        }
        port.commit().unwrap();
        drop(port);
        let before = t.pool.usage().unwrap().metadata_free;
        t.pool.snapshot(id, id + 10, "").unwrap();
        t.pool.commit().unwrap();
        costs.push(before - t.pool.usage().unwrap().metadata_free);
    }
    assert_eq!(t.pool.volumes().unwrap()[1].mapped_blocks, 20_000);
    assert!(
        costs[1] <= costs[0] + 1 && costs[1] <= 8,
        "metadata blocks: {costs:?}"
    );
    thin_check(&t.meta);
}
