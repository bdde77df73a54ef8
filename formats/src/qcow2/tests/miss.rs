//! An L2 table missing from the cache is read on the queue's engine: the ops that need it wait
//! (joining one read), the others go on, and a failed read fails only the ops waiting for it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::buffer::SharedBuf;
use crate::engine::{Access, EngineFile};
use crate::image::{Completion, EngineKind, ImageQueue, IoOp};
use crate::planned::Planner;
use crate::qcow2::meta::Table;
use crate::qcow2::queue::Qcow2Queue;
use crate::qcow2::read::lock;
use crate::qcow2::{Chain, CreateOptions, Qcow2Image, create};
use crate::suite::{pattern, read_at, run, write_at};

use super::{check_clean, opts, temp};

const CS: u64 = 65536;
/// Guest offsets mapped by three different L2 tables (each maps 512 MiB).
const A: u64 = 0;
const B: u64 = 1 << 29;
const C: u64 = 1 << 30;

struct Rig {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

/// A 2 GiB image with 4 KiB of data at `A`, `B` and `C` (patterns 1, 2, 3), closed.
fn rig() -> Rig {
    let (dir, path) = temp("miss.qcow2");
    create(&path, 2 << 30, &CreateOptions::default()).expect("create");
    let image = open(&path, EngineKind::Sync);
    let mut q = image.queue(4).expect("queue");
    for (i, at) in [A, B, C].into_iter().enumerate() {
        write_at(&mut q, at, &pattern(i as u64 + 1, 4096)).expect("write");
    }
    run(&mut q, IoOp::Flush).expect("flush");
    Rig { _dir: dir, path }
}

/// Opens the image page-cached on `engine`, with an empty cache; its missing tables are read
/// on the engine even though the host's page cache holds them (it just wrote them).
fn open(path: &std::path::Path, engine: EngineKind) -> Qcow2Image {
    let image = open_with_page_cache(path, engine);
    let q = image.queue(1).expect("queue");
    lock(&q.meta).expect("meta").tables_from_page_cache = false;
    image
}

fn open_with_page_cache(path: &std::path::Path, engine: EngineKind) -> Qcow2Image {
    let file = EngineFile::open(path, Access::ReadWrite, crate::CacheMode::Writeback).expect("f");
    let mut o = opts(false, engine);
    o.cache = crate::CacheMode::Writeback;
    Qcow2Image::open(Arc::new(file), &o, &mut Chain::default()).expect("qcow2")
}

/// The L2 table mapping guest offset `at`.
fn table_of(q: &Qcow2Queue, at: u64) -> u64 {
    let table = lock(&q.meta).expect("meta").l2_table(at / CS);
    table.expect("L1 entry")
}

fn read(offset: u64, buf: &SharedBuf) -> IoOp {
    IoOp::Read {
        offset,
        bufs: Box::new(buf.clone()),
    }
}

fn submit(q: &mut Qcow2Queue, op: IoOp, tag: u64) {
    q.submit(op, tag).expect("submit");
    q.commit().expect("commit");
}

/// Drives `q` until every tag of `tags` completed (at most 5 s); returns what completed.
fn drive_until(q: &mut Qcow2Queue, tags: &[u64]) -> Vec<Completion> {
    let start = Instant::now();
    let mut done: Vec<Completion> = Vec::new();
    while !tags.iter().all(|t| done.iter().any(|c| c.tag == *t)) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{tags:?}: {done:?}"
        );
        q.wait(Some(Duration::from_millis(5))).expect("wait");
        q.reap(&mut done);
    }
    done
}

fn ok(done: &[Completion], tag: u64) -> bool {
    done.iter().any(|c| c.tag == tag && c.result.is_ok())
}

fn failed(done: &[Completion], tag: u64) -> bool {
    done.iter().any(|c| c.tag == tag && c.result.is_err())
}

#[test]
fn a_read_whose_table_is_cached_completes_while_another_tables_read_is_held() {
    let r = rig();
    for engine in [EngineKind::IoUring, EngineKind::Sync] {
        let image = open(&r.path, engine);
        let mut q = image.queue(8).expect("queue");
        assert_eq!(read_at(&mut q, B, 4096).expect("read B"), pattern(2, 4096));
        let table_a = table_of(&q, A);
        q.io().engine.hold_reads_at(table_a);
        let (a, b) = (SharedBuf::new(4096), SharedBuf::new(4096));
        submit(&mut q, read(A, &a), 1);
        submit(&mut q, read(B, &b), 2);
        let done = drive_until(&mut q, &[2]);
        assert!(ok(&done, 2), "{engine:?}: {done:?}");
        assert_eq!(b.copy_out(), pattern(2, 4096), "{engine:?}");
        assert!(!done.iter().any(|c| c.tag == 1), "{engine:?}: {done:?}");
        assert_eq!(
            q.io().engine.held_flushes(),
            1,
            "{engine:?}: A's table read"
        );
        q.io().engine.release_flushes().expect("release");
        assert!(ok(&drive_until(&mut q, &[1]), 1), "{engine:?}");
        assert_eq!(a.copy_out(), pattern(1, 4096), "{engine:?}");
    }
}

#[test]
fn ops_missing_the_same_table_share_one_read() {
    let r = rig();
    let image = open(&r.path, EngineKind::IoUring);
    let mut q = image.queue(8).expect("queue");
    let table_a = table_of(&q, A);
    q.io().engine.hold_reads_at(table_a);
    let first = SharedBuf::new(4096);
    submit(&mut q, read(A, &first), 1);
    let overwrite = SharedBuf::new(512);
    assert!(overwrite.copy_in(0, &pattern(4, 512)));
    let write = IoOp::Write {
        offset: A + 1024,
        bufs: Box::new(overwrite),
    };
    submit(&mut q, write, 2);
    let second = SharedBuf::new(4096);
    submit(&mut q, read(A + CS, &second), 3);
    let mut done = Vec::new();
    for _ in 0..10 {
        q.wait(Some(Duration::from_millis(5))).expect("wait");
        q.reap(&mut done);
    }
    assert!(done.is_empty(), "{done:?}");
    assert_eq!(q.io().engine.held_flushes(), 1, "one read of A's table");
    q.io().engine.release_flushes().expect("release");
    let done = drive_until(&mut q, &[1, 2, 3]);
    assert!(ok(&done, 1) && ok(&done, 2) && ok(&done, 3), "{done:?}");
    assert_eq!(first.copy_out(), pattern(1, 4096));
    assert_eq!(second.copy_out(), vec![0; 4096]);
    let mut expected = pattern(1, 4096);
    expected[1024..1536].copy_from_slice(&pattern(4, 512));
    assert_eq!(read_at(&mut q, A, 4096).expect("read A again"), expected);
    run(&mut q, IoOp::Flush).expect("flush");
    drop(q);
    drop(image);
    check_clean(&r.path);
}

#[test]
fn a_failed_table_read_fails_only_the_ops_waiting_for_it() {
    let r = rig();
    let image = open(&r.path, EngineKind::IoUring);
    let mut q = image.queue(8).expect("queue");
    assert_eq!(read_at(&mut q, B, 4096).expect("read B"), pattern(2, 4096));
    let table_a = table_of(&q, A);
    q.io().engine.fail_reads_at(Some(table_a));
    let bufs: Vec<SharedBuf> = (0..4).map(|_| SharedBuf::new(4096)).collect();
    for (tag, at) in [A, A + 4096, B, C].into_iter().enumerate() {
        submit(&mut q, read(at, &bufs[tag]), tag as u64);
    }
    let done = drive_until(&mut q, &[0, 1, 2, 3]);
    assert!(failed(&done, 0) && failed(&done, 1), "{done:?}");
    assert!(ok(&done, 2) && ok(&done, 3), "{done:?}");
    assert_eq!(bufs[2].copy_out(), pattern(2, 4096));
    assert_eq!(bufs[3].copy_out(), pattern(3, 4096));
    // Nothing of the failed read was cached: A reads right once the file answers.
    q.io().engine.fail_reads_at(None);
    assert_eq!(read_at(&mut q, A, 4096).expect("read A"), pattern(1, 4096));
}

#[test]
fn a_table_past_the_end_of_the_file_fails_its_ops_and_the_queue_goes_on() {
    let r = rig();
    let table_c = {
        let image = open(&r.path, EngineKind::Sync);
        let q = image.queue(1).expect("queue");
        table_of(&q, C)
    };
    let table_b = {
        let image = open(&r.path, EngineKind::Sync);
        let q = image.queue(1).expect("queue");
        table_of(&q, B)
    };
    assert!(table_c > table_b, "{table_b:#x} {table_c:#x}");
    let file = std::fs::OpenOptions::new().write(true).open(&r.path);
    file.expect("open").set_len(table_c).expect("truncate");
    let image = open(&r.path, EngineKind::IoUring);
    let mut q = image.queue(8).expect("queue");
    let (c, b) = (SharedBuf::new(4096), SharedBuf::new(4096));
    submit(&mut q, read(C, &c), 1);
    submit(&mut q, read(B, &b), 2);
    let done = drive_until(&mut q, &[1, 2]);
    assert!(failed(&done, 1) && ok(&done, 2), "{done:?}");
    assert_eq!(b.copy_out(), pattern(2, 4096));
}

#[test]
fn an_overtaken_table_read_is_dropped() {
    let r = rig();
    let image = open(&r.path, EngineKind::IoUring);
    let mut q = image.queue(4).expect("queue");
    let table_a = table_of(&q, A);
    {
        let mut meta = lock(&q.meta).expect("meta");
        meta.begin_fetch(table_a).expect("begin");
        // Meanwhile the table comes into the cache another way, and leaves it again.
        meta.table(Table::L2, table_a).expect("synchronous read");
        meta.forget_table(Table::L2, table_a);
        // The engine read ends with bytes older than what the cache had.
        let older = vec![0xff; crate::qcow2::layout::small(CS)];
        meta.end_fetch(table_a, Some(older)).expect("end");
        assert!(
            !meta.l2_cache.contains(table_a),
            "an overtaken read was cached"
        );
        assert!(meta.fetching.is_empty());
    }
    assert_eq!(read_at(&mut q, A, 4096).expect("read A"), pattern(1, 4096));
}

#[test]
fn a_table_the_host_has_in_memory_is_taken_from_its_page_cache_not_the_engine() {
    let r = rig();
    let image = open_with_page_cache(&r.path, EngineKind::IoUring);
    let mut q = image.queue(8).expect("queue");
    let table_a = table_of(&q, A);
    // The rig just wrote the file: its tables are in the host's page cache.
    q.io().engine.hold_reads_at(table_a);
    let a = SharedBuf::new(4096);
    submit(&mut q, read(A, &a), 1);
    let done = drive_until(&mut q, &[1]);
    assert!(ok(&done, 1), "{done:?}");
    assert_eq!(a.copy_out(), pattern(1, 4096));
    assert_eq!(
        q.io().engine.held_flushes(),
        0,
        "the table went through the engine"
    );
}
