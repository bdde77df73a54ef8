use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use rustbk_formats::suite::{self, DEPTH, MIN_SIZE, pattern};
use rustbk_formats::{BlockImage, IoOp};

use crate::pool::{PoolOptions, VolumeSpec};
use crate::testing::{flush, get, new_full_pool, new_pool, put, queue, thin_check, us};

const MIB: u64 = 1 << 20;

fn shared_suite_passes_with_blocks_of(block_size: u64) {
    let t = new_pool(block_size, 64 * MIB / block_size, PoolOptions::default());
    let size = 2 * MIN_SIZE;
    let vol = t.volume(1, size);
    let mut q = vol.open_queue(DEPTH).expect("queue");
    suite::run_writable(&mut *q, size);
    drop(q);
    drop(vol);
    t.pool.commit().expect("commit");
    thin_check(&t.meta);
}

#[test]
fn shared_suite_passes_with_64k_blocks() {
    shared_suite_passes_with_blocks_of(64 << 10);
}

#[test]
fn shared_suite_passes_with_256k_blocks() {
    shared_suite_passes_with_blocks_of(256 << 10);
}

#[test]
fn partial_write_into_an_unprovisioned_block_reads_zeros_around_it() {
    let t = new_pool(64 << 10, 64, PoolOptions::default());
    let vol = t.volume(1, 4 * MIB);
    let mut q = queue(&vol);
    // A recycled data block full of old bytes must not show through.
    std::fs::write(&t.data, vec![0xee; 4 << 20]).expect("dirty data device");
    put(&mut *q, 65536 + 1000, &[7; 3000]);
    let got = get(&mut *q, 65536, 65536);
    let mut expected = vec![0; 65536];
    expected[1000..4000].fill(7);
    suite::assert_bytes(&got, &expected, "block around a partial write");
}

#[test]
fn partial_write_into_a_never_written_block_leaves_the_rest_a_hole_that_reads_zeros() {
    let t = new_pool(1 << 20, 16, PoolOptions::default());
    let vol = t.volume(1, 4 * MIB);
    let mut q = queue(&vol);
    put(&mut *q, 5000, &[7; 3000]);
    flush(&mut *q);
    // The pool reserves the file's blocks ahead (unwritten extents read as holes), so count
    // what the file system says holds data.
    let written = data_bytes(&t.data);
    assert!(
        written < 1 << 20,
        "the 1 MiB block was zero-filled: {written} bytes hold data"
    );
    let got = get(&mut *q, 0, us(MIB));
    let mut expected = vec![0; us(MIB)];
    expected[5000..8000].fill(7);
    suite::assert_bytes(&got, &expected, "block around a partial write into a hole");
}

#[test]
fn partial_write_into_a_fresh_block_of_a_full_pool_writes_only_its_part() {
    let t = new_full_pool(64 << 10, 64, PoolOptions::default());
    let vol = t.volume(1, 4 * MIB);
    let mut q = queue(&vol);
    put(&mut *q, 5000, &[7; 3000]);
    flush(&mut *q);
    // Zeroing the rest of the block (a zero-range) would leave unwritten extents, which
    // `lseek` reports as holes.
    assert_eq!(
        data_bytes(&t.data),
        64 * 65536,
        "the block was zeroed around the write"
    );
    let got = get(&mut *q, 0, 65536);
    let mut expected = vec![0; 65536];
    expected[5000..8000].fill(7);
    suite::assert_bytes(&got, &expected, "fresh block around a partial write");
}

#[test]
fn a_block_handed_out_before_a_restart_is_never_fresh_again() {
    let t = new_full_pool(64 << 10, 4, PoolOptions::default());
    t.pool
        .create_volume(
            1,
            VolumeSpec {
                size: 4 * MIB,
                ..VolumeSpec::default()
            },
        )
        .unwrap();
    let mut port = t.pool.open_port(1).unwrap();
    let got = crate::port::PoolPort::provision_zeroed(&mut port, 4).unwrap();
    assert_eq!(
        got.zeroed.len(),
        4,
        "every block of a new full pool reads zeros"
    );
    // A worker wrote them and died before mapping them; the pool restarts.
    std::fs::write(&t.data, vec![0xee; 4 * 65536]).unwrap();
    drop(port);
    let t = t.reopen(PoolOptions::default());
    let vol = t.open(1);
    let mut q = queue(&vol);
    put(&mut *q, 65536 + 512, &[7; 512]);
    let got = get(&mut *q, 65536, 65536);
    let mut expected = vec![0; 65536];
    expected[512..1024].fill(7);
    suite::assert_bytes(&got, &expected, "block written before the restart");
}

/// Bytes of `path` that are not holes, from `lseek(SEEK_DATA/SEEK_HOLE)`.
fn data_bytes(path: &std::path::Path) -> u64 {
    use nix::unistd::{Whence, lseek};
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).expect("open data");
    let fd = file.as_raw_fd();
    let (mut total, mut at) = (0, 0);
    while let Ok(start) = lseek(fd, at, Whence::SeekData) {
        let end = lseek(fd, start, Whence::SeekHole).expect("seek hole");
        total += end - start;
        at = end;
    }
    u64::try_from(total).expect("size")
}

#[test]
fn two_writes_into_one_new_block_provision_it_once() {
    let t = new_pool(64 << 10, 64, PoolOptions::default());
    let vol = t.volume(1, 4 * MIB);
    let mut q = queue(&vol);
    let bufs: Vec<_> = (0..8)
        .map(|i| {
            let b = rustbk_formats::SharedBuf::new(4096);
            assert!(b.copy_in(0, &pattern(i, 4096)));
            b
        })
        .collect();
    for (i, b) in bufs.iter().enumerate() {
        let op = IoOp::Write {
            offset: i as u64 * 4096,
            bufs: Box::new(b.clone()),
        };
        q.submit(op, i as u64).expect("submit");
    }
    q.commit().expect("commit");
    let done = suite::reap_n(&mut *q, 8);
    assert!(done.iter().all(|c| c.result.is_ok()), "{done:?}");
    let expected: Vec<u8> = (0..8).flat_map(|i| pattern(i, 4096)).collect();
    suite::assert_bytes(&get(&mut *q, 0, 32768), &expected, "eight writes");
    let mapped = t.pool.volumes().expect("list")[0].mapped_blocks;
    assert_eq!(mapped, 1);
}

#[test]
fn ops_past_the_end_or_overflowing_get_errors() {
    let t = new_pool(64 << 10, 64, PoolOptions::default());
    let vol = t.volume(1, MIB);
    let mut q = queue(&vol);
    assert!(suite::read_at(&mut *q, u64::MAX - 10, 512).is_err());
    assert!(suite::write_at(&mut *q, MIB, &[1; 512]).is_err());
    let discard = IoOp::Discard {
        offset: u64::MAX,
        len: u64::MAX,
    };
    assert!(suite::run(&mut *q, discard).is_err());
}

#[test]
fn data_written_and_flushed_reads_back_after_reopen() {
    let t = new_pool(64 << 10, 256, PoolOptions::default());
    let vol = t.volume(1, 8 * MIB);
    let mut q = queue(&vol);
    put(&mut *q, 3 * MIB + 512, &pattern(3, 200_000));
    flush(&mut *q);
    drop(q);
    drop(vol);
    let t = t.reopen(PoolOptions::default());
    let vol = t.open(1);
    let mut q = queue(&vol);
    suite::assert_bytes(
        &get(&mut *q, 3 * MIB + 512, 200_000),
        &pattern(3, 200_000),
        "after reopen",
    );
    thin_check(&t.meta);
}

/// As dm-thin: the blocks wholly inside a discard are unmapped, the partial blocks at its
/// ends keep their data, and a discard inside one block does nothing.
#[test]
fn discard_unmaps_whole_blocks_and_leaves_partial_ones_alone() {
    let bs = 64 << 10;
    let t = new_pool(bs, 64, PoolOptions::default());
    let vol = t.volume(1, MIB);
    assert_eq!(
        vol.discard_granularity(),
        65536,
        "the frontend is told the block size"
    );
    let mut q = queue(&vol);
    put(&mut *q, 0, &pattern(1, us(4 * bs)));
    let discard = IoOp::Discard {
        offset: bs / 2,
        len: 2 * bs,
    };
    suite::run(&mut *q, discard).expect("discard");
    let inside = IoOp::Discard {
        offset: 3 * bs + 512,
        len: 4096,
    };
    suite::run(&mut *q, inside).expect("discard inside a block");
    let mut expected = pattern(1, us(4 * bs));
    expected[us(bs)..us(2 * bs)].fill(0);
    suite::assert_bytes(&get(&mut *q, 0, us(4 * bs)), &expected, "discard");
    assert_eq!(t.pool.volumes().expect("list")[0].mapped_blocks, 3);
}

#[test]
fn a_volume_over_a_raw_origin_reads_it_and_fills_partial_writes_from_it() {
    let t = new_pool(64 << 10, 64, PoolOptions::default());
    let origin = t.dir.path().join("origin.raw");
    std::fs::write(&origin, pattern(42, us(MIB))).expect("origin");
    let spec = VolumeSpec {
        size: 2 * MIB,
        name: "over origin".into(),
        origin: Some(crate::pool::Origin {
            path: origin,
            format: "raw".into(),
        }),
    };
    t.pool.create_volume(1, spec).expect("create");
    let vol = t.open(1);
    let mut q = queue(&vol);
    let mut expected = pattern(42, us(MIB));
    expected.resize(us(2 * MIB), 0);
    suite::assert_bytes(&get(&mut *q, 0, us(2 * MIB)), &expected, "origin");
    put(&mut *q, 70_000, &[9; 100]);
    put(&mut *q, MIB - 50, &[8; 100]);
    expected[70_000..70_100].fill(9);
    expected[us(MIB - 50)..us(MIB + 50)].fill(8);
    let zeroes = IoOp::WriteZeroes {
        offset: 200_000,
        len: 300_000,
    };
    suite::run(&mut *q, zeroes).expect("write zeroes");
    expected[200_000..500_000].fill(0);
    suite::assert_bytes(&get(&mut *q, 0, us(2 * MIB)), &expected, "after writes");
    drop(q);
    drop(vol);
    thin_check(&t.meta);
}

#[test]
fn a_partial_write_into_a_shared_block_copies_the_rest_of_it() {
    let bs = 256 << 10;
    let t = new_pool(bs, 64, PoolOptions::default());
    let vol = t.volume(1, 4 * MIB);
    let mut q = queue(&vol);
    put(&mut *q, 0, &pattern(1, us(2 * bs)));
    drop(q);
    drop(vol);
    t.pool.snapshot(1, 2, "").expect("snapshot");
    let vol = t.open(1);
    let mut q = queue(&vol);
    put(&mut *q, bs - 100, &[4; 200]);
    let mut expected = pattern(1, us(2 * bs));
    expected[us(bs - 100)..us(bs + 100)].fill(4);
    suite::assert_bytes(&get(&mut *q, 0, us(2 * bs)), &expected, "origin");
    let snap = t.open(2);
    let mut sq = queue(&snap);
    let before = pattern(1, us(2 * bs));
    suite::assert_bytes(&get(&mut *sq, 0, us(2 * bs)), &before, "snapshot");
    assert_eq!(t.pool.volumes().expect("list")[0].mapped_blocks, 2);
}

#[test]
fn passdown_punches_the_freed_blocks_out_of_the_data_file_after_the_commit() {
    use std::os::unix::fs::MetadataExt;
    let opts = PoolOptions {
        passdown: true,
        ..PoolOptions::default()
    };
    let t = new_pool(64 << 10, 64, opts);
    let vol = t.volume(1, 4 * MIB);
    let mut q = queue(&vol);
    put(&mut *q, 0, &pattern(1, us(2 * MIB)));
    flush(&mut *q);
    let used = |p: &std::path::Path| std::fs::metadata(p).expect("stat").blocks() * 512;
    let before = used(&t.data);
    let discard = IoOp::Discard {
        offset: 0,
        len: 2 * MIB,
    };
    suite::run(&mut *q, discard).expect("discard");
    assert_eq!(
        used(&t.data),
        before,
        "blocks punched before the commit that frees them (a crash would find them mapped)"
    );
    flush(&mut *q);
    let after = used(&t.data);
    assert!(
        before - after >= 2 * MIB - (64 << 10),
        "{before} -> {after} bytes"
    );
}

#[test]
fn a_volume_over_a_qcow2_origin_made_by_qemu_img_reads_its_data() {
    let t = new_pool(64 << 10, 64, PoolOptions::default());
    let origin = t.dir.path().join("base.qcow2");
    let ok = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&origin)
        .arg("1M")
        .status()
        .expect("qemu-img must be installed");
    assert!(ok.success());
    let ok = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x5a 4096 8192"])
        .arg(&origin)
        .output()
        .expect("qemu-io must be installed");
    assert!(ok.status.success(), "{ok:?}");
    let spec = VolumeSpec {
        size: MIB,
        name: String::new(),
        origin: Some(crate::pool::Origin {
            path: origin,
            format: "qcow2".into(),
        }),
    };
    t.pool.create_volume(1, spec).expect("create");
    let vol = t.open(1);
    let mut q = queue(&vol);
    put(&mut *q, 8192, &[1; 512]);
    let mut expected = vec![0; 16384];
    expected[4096..12288].fill(0x5a);
    expected[8192..8704].fill(1);
    suite::assert_bytes(&get(&mut *q, 0, 16384), &expected, "qcow2 origin");
}

#[test]
fn a_write_waiting_on_another_queues_new_block_goes_on_when_it_is_mapped() {
    let t = new_pool(64 << 10, 64, PoolOptions::default());
    let vol = t.volume(1, MIB);
    let mut a = queue(&vol);
    let mut b = queue(&vol);
    let first = rustbk_formats::SharedBuf::new(4096);
    assert!(first.copy_in(0, &pattern(1, 4096)));
    let second = rustbk_formats::SharedBuf::new(4096);
    assert!(second.copy_in(0, &pattern(2, 4096)));
    let write = |offset, buf: &rustbk_formats::SharedBuf| IoOp::Write {
        offset,
        bufs: Box::new(buf.clone()),
    };
    a.submit(write(0, &first), 1).expect("submit a");
    a.commit().expect("commit a");
    b.submit(write(8192, &second), 2).expect("submit b");
    b.commit().expect("commit b");
    assert!(suite::reap_n(&mut *a, 1)[0].result.is_ok());
    // Driven as a ring worker drives it: reap when the notifier is readable, never wait().
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while got.is_empty() && std::time::Instant::now() < deadline {
        let mut fds = [PollFd::new(b.notifier(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::from(100u16)).expect("poll");
        b.reap(&mut got);
        b.commit().expect("commit b");
    }
    assert_eq!(got.len(), 1, "the waiting write never completed");
    assert!(got[0].result.is_ok());
    let mut expected = pattern(1, 4096);
    expected.extend(vec![0; 4096]);
    expected.extend(pattern(2, 4096));
    suite::assert_bytes(&get(&mut *a, 0, 12288), &expected, "both writes");
    assert_eq!(t.pool.volumes().expect("list")[0].mapped_blocks, 1);
}

/// A pool that answers lookups with mappings outside the range asked.
struct LyingPort(crate::port::VolumeInfo);

impl crate::port::PoolPort for LyingPort {
    fn info(&mut self) -> crate::Result<crate::port::VolumeInfo> {
        Ok(self.0.clone())
    }
    fn lookup(
        &mut self,
        vblocks: std::ops::Range<u64>,
    ) -> crate::Result<Vec<(u64, crate::meta::Mapping)>> {
        let liar = crate::meta::Mapping { block: 1, time: 0 };
        Ok(vec![(vblocks.start + 1_000_000, liar)])
    }
    fn provision_zeroed(&mut self, _: usize) -> crate::Result<crate::port::Handout> {
        Err(crate::Error::DataFull(0))
    }
    fn map(&mut self, _: &[crate::port::NewMapping]) -> crate::Result<()> {
        Ok(())
    }
    fn unmap(&mut self, _: std::ops::Range<u64>) -> crate::Result<Vec<u64>> {
        Ok(Vec::new())
    }
    fn release(&mut self, _: &[u64]) -> crate::Result<()> {
        Ok(())
    }
    fn commit(&mut self) -> crate::Result<()> {
        Ok(())
    }
    fn pause_requested(&self) -> bool {
        false
    }
    fn paused(&mut self) -> crate::Result<crate::port::VolumeInfo> {
        Ok(self.0.clone())
    }
    fn set_waker(&mut self, _: Box<dyn Fn() + Send + Sync>) {}
}

#[test]
fn a_pool_answering_lookups_outside_the_range_gets_errors_not_panics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    crate::testing::sized_file(&data, MIB);
    let access = rustbk_formats::engine::Access::ReadWrite;
    let file =
        rustbk_formats::EngineFile::open(&data, access, rustbk_formats::CacheMode::Writeback)
            .expect("data");
    let info = crate::port::VolumeInfo {
        id: 1,
        block_size: 64 << 10,
        size: MIB,
        snapshotted_time: 0,
        time: 0,
        data_path: data.clone(),
        origin: None,
    };
    let port = Box::new(LyingPort(info));
    let opts = crate::volume::VolumeOptions::default();
    let vol = crate::volume::ThinVolume::new(port, std::sync::Arc::new(file), opts).expect("vol");
    let mut q = queue(&vol);
    let read = suite::read_at(&mut *q, 0, 4096);
    assert_eq!(read.expect_err("lying pool").errno(), libc::EIO);
    let write = suite::write_at(&mut *q, 4096, &[1; 512]);
    assert_eq!(write.expect_err("lying pool").errno(), libc::EIO);
}

#[test]
fn a_volume_served_read_only_refuses_modifying_ops() {
    let t = new_pool(64 << 10, 64, PoolOptions::default());
    let spec = VolumeSpec {
        size: 2 * MIB,
        ..VolumeSpec::default()
    };
    t.pool.create_volume(1, spec).expect("create");
    let opts = crate::volume::VolumeOptions {
        read_only: true,
        ..crate::volume::VolumeOptions::default()
    };
    let vol = crate::volume::ThinVolume::open_local(&t.pool, 1, opts).expect("open");
    assert!(vol.features().read_only);
    let mut q = queue(&vol);
    suite::read_only_refuses_modifying_ops(&mut *q);
    assert_eq!(t.pool.usage().unwrap().data_free, 64, "nothing provisioned");
}

#[test]
fn a_recycled_block_is_zeroed_around_a_partial_write() {
    let t = new_pool(64 << 10, 1, PoolOptions::default());
    let vol = t.volume(1, 4 * MIB);
    let mut q = queue(&vol);
    put(&mut *q, 0, &[0xaa; 65536]);
    flush(&mut *q);
    let discard = IoOp::Discard {
        offset: 0,
        len: 65536,
    };
    suite::run(&mut *q, discard).expect("discard");
    flush(&mut *q);
    // The pool's only block comes back with the old bytes in it (no passdown).
    put(&mut *q, 3 * 65536 + 512, &[7; 512]);
    let got = get(&mut *q, 3 * 65536, 65536);
    let mut expected = vec![0; 65536];
    expected[512..1024].fill(7);
    suite::assert_bytes(&got, &expected, "recycled block around a partial write");
}

/// Commits the pool made while `run` drives a queue of a volume in cache mode `cache`.
fn commits_during(
    cache: rustbk_formats::CacheMode,
    run: impl Fn(&mut dyn rustbk_formats::ImageQueue),
) -> u64 {
    let t = new_pool(64 << 10, 64, PoolOptions::default());
    let spec = VolumeSpec {
        size: 4 * MIB,
        ..VolumeSpec::default()
    };
    t.pool.create_volume(1, spec).expect("create volume");
    let opts = crate::volume::VolumeOptions {
        cache,
        ..crate::volume::VolumeOptions::default()
    };
    let vol = crate::volume::ThinVolume::open_local(&t.pool, 1, opts).expect("open volume");
    let mut q = queue(&vol);
    let before = t.pool.commits();
    run(&mut *q);
    t.pool.commits() - before
}

#[test]
fn a_write_in_an_o_dsync_mode_is_committed_before_it_completes() {
    use rustbk_formats::CacheMode;
    let write = |q: &mut dyn rustbk_formats::ImageQueue| put(q, 65536, &[5; 4096]);
    for cache in CacheMode::ALL {
        let commits = commits_during(cache, write);
        match cache.dsync() {
            true => assert!(commits >= 1, "{cache}: the new mapping was not committed"),
            false => assert_eq!(commits, 0, "{cache}: a write alone commits nothing"),
        }
    }
}

#[test]
fn a_flush_in_unsafe_mode_neither_syncs_nor_commits() {
    use rustbk_formats::CacheMode;
    let write_and_flush = |q: &mut dyn rustbk_formats::ImageQueue| {
        put(q, 65536, &[5; 4096]);
        flush(q);
    };
    assert_eq!(commits_during(CacheMode::Unsafe, write_and_flush), 0);
    assert!(commits_during(CacheMode::Writeback, write_and_flush) >= 1);
}

#[test]
fn an_overwrite_in_an_o_dsync_mode_commits_nothing() {
    use rustbk_formats::CacheMode;
    let write_twice = |q: &mut dyn rustbk_formats::ImageQueue| {
        put(q, 65536, &[5; 4096]);
        put(q, 65536, &[6; 4096]);
        put(q, 65536 + 8192, &[7; 4096]);
    };
    for cache in [CacheMode::Writethrough, CacheMode::DirectSync] {
        assert_eq!(
            commits_during(cache, write_twice),
            1,
            "{cache}: only the new mapping needs a commit"
        );
    }
}

#[test]
fn a_served_volume_takes_up_the_size_its_pool_gave_it_and_never_shrinks() {
    let t = new_pool(64 << 10, 64, PoolOptions::default());
    let vol = t.volume(1, 2 * MIB);
    let mut q = queue(&vol);
    put(&mut *q, 2 * MIB - 4096, &[3; 4096]);
    assert!(
        suite::write_at(&mut *q, 2 * MIB, &[4; 4096]).is_err(),
        "past the end"
    );
    assert_eq!(vol.storage_size().expect("size"), Some(2 * MIB));
    // Not until the pool holds the size.
    assert!(vol.grow(3 * MIB).is_err());
    t.pool.resize_volume(1, 3 * MIB).expect("pool resize");
    assert_eq!(vol.storage_size().expect("size"), Some(3 * MIB));
    assert_eq!(
        vol.geometry().size,
        2 * MIB,
        "served size follows only through grow"
    );
    vol.grow(3 * MIB).expect("grow");
    assert_eq!(vol.geometry().size, 3 * MIB);
    put(&mut *q, 2 * MIB, &[4; 4096]);
    put(&mut *q, 3 * MIB - 4096, &[5; 4096]);
    assert_eq!(get(&mut *q, 2 * MIB - 4096, 4096), vec![3; 4096]);
    assert_eq!(get(&mut *q, 2 * MIB, 4096), vec![4; 4096]);
    assert_eq!(
        get(&mut *q, 3 * MIB - 8192, 4096),
        vec![0; 4096],
        "new area reads zeros"
    );
    assert!(
        suite::read_at(&mut *q, 3 * MIB, 4096).is_err(),
        "past the new end"
    );
    assert!(matches!(
        vol.grow(MIB),
        Err(rustbk_formats::Error::Shrink { .. })
    ));
    flush(&mut *q);
    drop(q);
    drop(vol);
    t.pool.commit().expect("commit");
    thin_check(&t.meta);
}

#[test]
fn a_volume_that_stops_allocating_gives_its_reserve_back_down_to_16_blocks() {
    let t = new_pool(64 << 10, 4096, PoolOptions::default());
    let vol = t.volume(1, 256 * MIB);
    let mut q = queue(&vol);
    // Quick refills double the batch: 16, 32, then 64 blocks.
    for block in 0..60u64 {
        put(&mut *q, block * 65536, &pattern(block, 4096));
    }
    flush(&mut *q);
    let held = vol.reserved();
    assert!(
        held > 16,
        "only {held} blocks in reserve after quick refills"
    );
    let free = t.pool.usage().expect("usage").data_free;
    vol.trim_reserve_after_idle();
    assert_eq!(vol.reserved(), 16);
    let freed = t.pool.usage().expect("usage").data_free - free;
    assert_eq!(freed, held as u64 - 16);
    put(&mut *q, 100 * 65536, &pattern(100, 4096));
    flush(&mut *q);
    for block in (0..60u64).chain([100]) {
        let got = get(&mut *q, block * 65536, 4096);
        suite::assert_bytes(&got, &pattern(block, 4096), "block written before the trim");
    }
    drop(q);
    drop(vol);
    t.pool.commit().expect("commit");
    thin_check(&t.meta);
}
