//! Crash ordering: the metadata writes and flushes of allocating writes, discards and cache
//! evictions, recorded.

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::Error;
use crate::engine::EngineFile;
use crate::image::{BlockImage, EngineKind, IoOp};
use crate::qcow2::layout::small;
use crate::qcow2::metaio::{FileIo, MetaIo, MetaKind};
use crate::qcow2::{Chain, CreateOptions, Qcow2Image, create};
use crate::suite::{pattern, read_at, run, write_at};

use super::{check_clean, opts, temp};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    Write(MetaKind, u64, usize),
    /// An fdatasync, and whether the guest data being allocated was already in the file.
    Sync {
        data_in_file: bool,
    },
}

/// Records metadata writes and syncs; at each sync, looks whether `expect` is in the file at
/// `expect_at`.
struct Recorder {
    inner: FileIo,
    file: std::fs::File,
    log: Arc<Mutex<Vec<Event>>>,
    expect: Vec<u8>,
    expect_at: Arc<Mutex<u64>>,
    fail_writes: Arc<AtomicBool>,
}

impl MetaIo for Recorder {
    fn read(&self, kind: MetaKind, offset: u64, buf: &mut [u8]) -> Result<usize, Error> {
        self.inner.read(kind, offset, buf)
    }

    fn write(&self, kind: MetaKind, offset: u64, data: &[u8]) -> Result<(), Error> {
        if self.fail_writes.load(Ordering::Relaxed) {
            return Err(std::io::Error::from_raw_os_error(libc::ENOSPC).into());
        }
        self.log
            .lock()
            .expect("log")
            .push(Event::Write(kind, offset, data.len()));
        self.inner.write(kind, offset, data)
    }

    fn allocate_zeroed(&self, offset: u64, len: u64) -> Result<bool, Error> {
        self.inner.allocate_zeroed(offset, len)
    }

    fn engine_write(&self, kind: MetaKind, offset: u64, data: &[u8]) -> Result<(), Error> {
        if self.fail_writes.load(Ordering::Relaxed) {
            return Err(std::io::Error::from_raw_os_error(libc::ENOSPC).into());
        }
        self.log
            .lock()
            .expect("log")
            .push(Event::Write(kind, offset, data.len()));
        Ok(())
    }

    fn engine_sync(&self) -> Result<(), Error> {
        self.log_sync();
        Ok(())
    }

    fn sync(&self) -> Result<(), Error> {
        self.log_sync();
        self.inner.sync()
    }

    fn size(&self) -> Result<u64, Error> {
        self.inner.size()
    }

    fn allocate_to(&self, offset: u64, len: u64) -> Result<bool, Error> {
        self.inner.allocate_to(offset, len)
    }

    fn cut_to(&self, len: u64) -> Result<(), Error> {
        self.inner.cut_to(len)
    }
}

impl Recorder {
    /// Logs a sync, and whether the expected data is in the file then.
    fn log_sync(&self) {
        let mut found = vec![0u8; self.expect.len()];
        let at = *self.expect_at.lock().expect("at");
        let data_in_file = !self.expect.is_empty()
            && self.file.read_exact_at(&mut found, at).is_ok()
            && found == self.expect;
        self.log
            .lock()
            .expect("log")
            .push(Event::Sync { data_in_file });
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    image: Qcow2Image,
    log: Arc<Mutex<Vec<Event>>>,
    expect_at: Arc<Mutex<u64>>,
    fail_writes: Arc<AtomicBool>,
}

const CS: u64 = 65536;

/// A fresh 1 MiB image (header, refcount table, L1 table, refcount block: clusters 0..=3).
/// Metadata is written back only at flushes (no age-based write-back during a slow test).
fn rig(data: &[u8]) -> Rig {
    rig_with(data, 1 << 20, flush_only(opts(false, EngineKind::Sync)))
}

fn flush_only(mut o: crate::image::OpenOptions) -> crate::image::OpenOptions {
    o.qcow2.writeback_age = std::time::Duration::from_secs(24 * 3600);
    o
}

fn rig_with(data: &[u8], size: u64, o: crate::image::OpenOptions) -> Rig {
    let (dir, path) = temp("o.qcow2");
    create(&path, size, &CreateOptions::default()).expect("create");
    let file = Arc::new(
        EngineFile::open(
            &path,
            crate::engine::Access::ReadWrite,
            crate::CacheMode::Writeback,
        )
        .expect("open"),
    );
    let log = Arc::new(Mutex::new(Vec::new()));
    let expect_at = Arc::new(Mutex::new(0));
    let fail_writes = Arc::new(AtomicBool::new(false));
    let io = Recorder {
        inner: FileIo(file.clone()),
        file: std::fs::File::open(&path).expect("open"),
        log: log.clone(),
        expect: data.to_vec(),
        expect_at: expect_at.clone(),
        fail_writes: fail_writes.clone(),
    };
    let image =
        Qcow2Image::open_with_io(file, Arc::new(io), &o, &mut Chain::default()).expect("qcow2");
    Rig {
        _dir: dir,
        path,
        image,
        log,
        expect_at,
        fail_writes,
    }
}

fn take(log: &Mutex<Vec<Event>>) -> Vec<Event> {
    std::mem::take(&mut *log.lock().expect("log"))
}

#[test]
fn first_write_waits_in_memory_then_flush_orders_refcounts_and_table_before_l1() {
    let data = pattern(1, 4096);
    let r = rig(&data);
    // Cluster 4 becomes the L2 table, cluster 5 the data cluster.
    *r.expect_at.lock().expect("at") = 5 * CS;
    let mut q = r.image.open_queue(4).expect("queue");
    take(&r.log);
    write_at(&mut *q, 0, &data).expect("write");
    assert_eq!(take(&r.log), vec![], "no metadata I/O before a flush");
    run(&mut *q, IoOp::Flush).expect("flush");
    let refblock = 3 * CS;
    assert_eq!(
        take(&r.log),
        vec![
            Event::Write(MetaKind::Refblock, refblock + 8, 4),
            Event::Write(MetaKind::L2, 4 * CS, small(CS)),
            Event::Sync { data_in_file: true },
            Event::Write(MetaKind::L1, 2 * CS, 8),
            Event::Sync { data_in_file: true },
        ]
    );
    drop(q);
    drop(r.image);
    check_clean(&r.path);
    let len = std::fs::metadata(&r.path).expect("stat").len();
    assert_eq!(
        len,
        6 * CS,
        "the data cluster was zero-range allocated, not zero-filled"
    );
}

#[test]
fn metadata_older_than_the_writeback_age_is_written_without_a_flush() {
    let data = pattern(10, 4096);
    let mut o = opts(false, EngineKind::Sync);
    o.qcow2.writeback_age = std::time::Duration::ZERO;
    let r = rig_with(&data, 1 << 20, o);
    *r.expect_at.lock().expect("at") = 5 * CS;
    let mut q = r.image.open_queue(4).expect("queue");
    take(&r.log);
    write_at(&mut *q, 0, &data).expect("write");
    // The write completed without waiting for the write-back, which goes on in the
    // background while the queue is driven.
    let mut events = take(&r.log);
    for _ in 0..100 {
        if events.len() >= 5 {
            break;
        }
        q.wait(Some(std::time::Duration::from_millis(10)))
            .expect("wait");
        q.reap(&mut Vec::new());
        events.extend(take(&r.log));
    }
    assert_eq!(
        events,
        vec![
            Event::Write(MetaKind::Refblock, 3 * CS + 8, 4),
            Event::Write(MetaKind::L2, 4 * CS, small(CS)),
            Event::Sync { data_in_file: true },
            Event::Write(MetaKind::L1, 2 * CS, 8),
            Event::Sync { data_in_file: true },
        ],
        "the same order as a flush, right after the allocation"
    );
}

#[test]
fn a_background_write_back_still_running_is_finished_when_the_queue_closes() {
    let data = pattern(11, 4096);
    let mut o = opts(false, EngineKind::IoUring);
    o.qcow2.writeback_age = std::time::Duration::ZERO;
    let r = rig_with(&data, 1 << 20, o);
    *r.expect_at.lock().expect("at") = 5 * CS;
    let mut q = r.image.open_queue(4).expect("queue");
    take(&r.log);
    write_at(&mut *q, 0, &data).expect("write");
    drop(q);
    let events = take(&r.log);
    assert_eq!(
        events.last(),
        Some(&Event::Sync { data_in_file: true }),
        "the close waited for the write-back's last step: {events:?}"
    );
    assert!(
        events.contains(&Event::Write(MetaKind::L1, 2 * CS, 8)),
        "the new table was linked: {events:?}"
    );
    drop(r.image);
    check_clean(&r.path);
}

#[test]
fn write_into_an_existing_table_flushes_refcount_before_the_l2_entry() {
    let data = pattern(2, 512);
    let r = rig(&data);
    let mut q = r.image.open_queue(4).expect("queue");
    write_at(&mut *q, 0, &pattern(3, 4096)).expect("first write");
    run(&mut *q, IoOp::Flush).expect("flush");
    *r.expect_at.lock().expect("at") = 6 * CS + 1024;
    take(&r.log);
    write_at(&mut *q, CS + 1024, &data).expect("second write");
    run(&mut *q, IoOp::Flush).expect("flush");
    assert_eq!(
        take(&r.log),
        vec![
            Event::Write(MetaKind::Refblock, 3 * CS + 12, 2),
            Event::Sync { data_in_file: true },
            Event::Write(MetaKind::L2, 4 * CS + 8, 8),
            Event::Sync { data_in_file: true },
        ]
    );
    // An overwrite in place touches no metadata at all.
    write_at(&mut *q, CS, &data).expect("overwrite");
    run(&mut *q, IoOp::Flush).expect("flush");
    assert_eq!(
        take(&r.log),
        vec![],
        "flush of clean metadata is the engine's fdatasync only"
    );
}

#[test]
fn discard_is_durable_before_its_cluster_is_freed_and_reused() {
    let r = rig(&[]);
    let mut q = r.image.open_queue(4).expect("queue");
    write_at(&mut *q, 0, &pattern(4, small(CS))).expect("write");
    run(&mut *q, IoOp::Flush).expect("flush");
    take(&r.log);
    run(&mut *q, IoOp::Discard { offset: 0, len: CS }).expect("discard");
    // Before the discard is durable, its cluster (5) is not reused: the entry on disk still
    // points at it.
    write_at(&mut *q, 2 * CS, &pattern(5, 4096)).expect("write elsewhere");
    assert_eq!(take(&r.log), vec![]);
    run(&mut *q, IoOp::Flush).expect("flush");
    let events = take(&r.log);
    assert_eq!(
        events,
        vec![
            Event::Write(MetaKind::Refblock, 3 * CS + 12, 2),
            Event::Sync {
                data_in_file: false
            },
            Event::Write(MetaKind::L2, 4 * CS, 24),
            Event::Sync {
                data_in_file: false
            },
        ],
        "entries flushed; the refcount drop stays in memory until the next flush"
    );
    run(&mut *q, IoOp::Flush).expect("flush");
    assert_eq!(
        take(&r.log),
        vec![
            Event::Write(MetaKind::Refblock, 3 * CS + 10, 2),
            Event::Sync {
                data_in_file: false
            },
        ]
    );
    // Now cluster 5 is free and reused (zeroed by the file system around the new data).
    *r.expect_at.lock().expect("at") = 5 * CS;
    write_at(&mut *q, 3 * CS, &pattern(6, 4096)).expect("write");
    run(&mut *q, IoOp::Flush).expect("flush");
    let mut expected = pattern(6, 4096);
    expected.resize(small(CS), 0);
    assert_eq!(read_file(&r.path, 5 * CS, small(CS)), expected);
    drop(q);
    drop(r.image);
    check_clean(&r.path);
}

#[test]
fn a_dirty_l2_table_leaving_the_cache_writes_back_in_order_first() {
    let mut o = flush_only(opts(false, EngineKind::Sync));
    // One 64 KiB L2 table fits; each covers 512 MiB of guest space.
    o.qcow2.cache.l2_bytes = small(CS);
    let r = rig_with(&[], 2 << 30, o);
    let mut q = r.image.open_queue(4).expect("queue");
    take(&r.log);
    write_at(&mut *q, 0, &pattern(7, 4096)).expect("write table 1");
    assert_eq!(take(&r.log), vec![]);
    write_at(&mut *q, 1 << 29, &pattern(8, 4096)).expect("write table 2");
    let events = take(&r.log);
    let syncs: Vec<usize> = (0..events.len())
        .filter(|&i| matches!(events[i], Event::Sync { .. }))
        .collect();
    let l1 = events
        .iter()
        .position(|e| matches!(e, Event::Write(MetaKind::L1, ..)))
        .expect("the first table was linked");
    let table = events
        .iter()
        .position(|e| matches!(e, Event::Write(MetaKind::L2, _, n) if *n == small(CS)))
        .expect("the first table was written");
    assert!(
        table < syncs[0] && syncs[0] < l1 && l1 < syncs[1],
        "{events:?}"
    );
    run(&mut *q, IoOp::Flush).expect("flush");
    drop(q);
    drop(r.image);
    check_clean(&r.path);
    let image = super::open(&r.path, true);
    let mut q = image.open_queue(4).expect("queue");
    assert_eq!(read_at(&mut *q, 0, 4096).expect("read"), pattern(7, 4096));
    assert_eq!(
        read_at(&mut *q, 1 << 29, 4096).expect("read"),
        pattern(8, 4096)
    );
}

#[test]
fn a_failed_write_back_fails_the_flush_and_every_later_change() {
    let r = rig(&[]);
    let mut q = r.image.open_queue(4).expect("queue");
    write_at(&mut *q, 0, &pattern(9, 4096)).expect("write");
    r.fail_writes.store(true, Ordering::Relaxed);
    let err = run(&mut *q, IoOp::Flush).expect_err("flush must fail");
    assert_eq!(err.errno(), libc::ENOSPC);
    r.fail_writes.store(false, Ordering::Relaxed);
    let err = run(&mut *q, IoOp::Flush).expect_err("the lost metadata is not forgotten");
    assert_eq!(err.errno(), libc::EIO);
    let err = write_at(&mut *q, CS, &pattern(9, 4096)).expect_err("no more changes");
    assert_eq!(err.errno(), libc::EIO);
    assert_eq!(
        read_at(&mut *q, 0, 4096).expect("reads still work"),
        pattern(9, 4096)
    );
}

fn read_file(path: &std::path::Path, at: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    std::fs::File::open(path)
        .expect("open")
        .read_exact_at(&mut buf, at)
        .expect("read");
    buf
}
