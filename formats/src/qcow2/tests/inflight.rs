//! A flush's write-back runs on the queue's engine: other ops go on while it is in flight
//! (its fdatasyncs held in the engine), an allocation made meanwhile waits for the next
//! flush, and a flush on another queue waits for it. The file's writes and syncs are recorded
//! by the engine's write recorder.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::buffer::SharedBuf;
use crate::engine::record::tests::{Event, Log};
use crate::engine::{Access, EngineFile};
use crate::image::{Completion, EngineKind, ImageQueue, IoOp};
use crate::planned::Planner;
use crate::qcow2::layout::small;
use crate::qcow2::queue::Qcow2Queue;
use crate::qcow2::{Chain, CreateOptions, Qcow2Image, create};
use crate::suite::{pattern, read_at, run, write_at};

use super::{check_clean, opts, qemu_raw, temp};

const CS: u64 = 65536;
/// The layout of a new image after its first write at guest offset 0 (see `ordering.rs`).
const REFBLOCK: u64 = 3 * CS;
const L2: u64 = 4 * CS;

struct Rig {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    image: Qcow2Image,
    log: Arc<Log>,
}

/// A new 16 MiB image on `engine`, page-cached, metadata written back at flushes only.
fn rig(engine: EngineKind) -> Rig {
    rig_with(engine, 16 << 20, 2 << 20)
}

/// The same, `size` bytes large, with `l2_bytes` of L2 cache.
fn rig_with(engine: EngineKind, size: u64, l2_bytes: usize) -> Rig {
    let (dir, path) = temp("inflight.qcow2");
    create(&path, size, &CreateOptions::default()).expect("create");
    let mut file =
        EngineFile::open(&path, Access::ReadWrite, crate::CacheMode::Writeback).expect("open");
    let log = Arc::new(Log::default());
    file.set_recorder(log.clone());
    let mut o = opts(false, engine);
    o.cache = crate::CacheMode::Writeback;
    o.qcow2.writeback_age = Duration::from_secs(24 * 3600);
    o.qcow2.cache.l2_bytes = l2_bytes;
    let image = Qcow2Image::open(Arc::new(file), &o, &mut Chain::default()).expect("qcow2");
    Rig {
        _dir: dir,
        path,
        image,
        log,
    }
}

fn write(offset: u64, data: &[u8]) -> IoOp {
    let buf = SharedBuf::new(data.len());
    assert!(buf.copy_in(0, data));
    IoOp::Write {
        offset,
        bufs: Box::new(buf),
    }
}

/// Drives `q` until `tag` completed (at most 5 s); returns every completion seen.
fn drive_until(q: &mut Qcow2Queue, tag: u64) -> Vec<Completion> {
    let start = Instant::now();
    let mut done = Vec::new();
    while !done.iter().any(|c: &Completion| c.tag == tag) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "op {tag} never completed"
        );
        q.wait(Some(Duration::from_millis(5))).expect("wait");
        q.reap(&mut done);
    }
    done
}

/// Drives `q` for a while; returns what completed.
fn drive_a_while(q: &mut Qcow2Queue) -> Vec<Completion> {
    let mut done = Vec::new();
    for _ in 0..20 {
        q.wait(Some(Duration::from_millis(5))).expect("wait");
        q.reap(&mut done);
    }
    done
}

fn submit(q: &mut Qcow2Queue, op: IoOp, tag: u64) {
    q.submit(op, tag).expect("submit");
    q.commit().expect("commit");
}

fn completed(done: &[Completion], tag: u64) -> bool {
    done.iter().any(|c| c.tag == tag && c.result.is_ok())
}

/// What `len` bytes at `at` of the file hold after `events`, over a file that read zeros
/// there before them.
fn bytes_at(events: &[Event], at: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    for e in events {
        let Event::Write(offset, data) = e else {
            continue;
        };
        for (i, b) in out.iter_mut().enumerate() {
            let pos = at + i as u64;
            if let Some(byte) = pos.checked_sub(*offset).and_then(|d| data.get(small(d))) {
                *b = *byte;
            }
        }
    }
    out
}

/// Index of the first event after which `len` bytes at `at` are no longer zero.
fn first_set(events: &[Event], at: u64, len: usize) -> Option<usize> {
    (0..events.len()).find(|&i| bytes_at(&events[..=i], at, len).iter().any(|&b| b != 0))
}

/// Index of the first `Synced` after event `after` whose `SyncBegin` also came after it.
fn synced_after(events: &[Event], after: usize) -> Option<usize> {
    events
        .iter()
        .enumerate()
        .position(|(i, e)| matches!(e, Event::Synced(mark) if i > after && *mark > after as u64))
}

#[test]
fn reads_and_writes_complete_while_a_flush_waits_for_its_fsync() {
    for engine in [EngineKind::IoUring, EngineKind::Sync] {
        let r = rig(engine);
        let mut q = r.image.queue(8).expect("queue");
        write_at(&mut q, 0, &pattern(1, 4096)).expect("allocating write");
        q.io().engine.hold_flushes();
        submit(&mut q, IoOp::Flush, 100);
        let buf = SharedBuf::new(4096);
        let read = IoOp::Read {
            offset: 0,
            bufs: Box::new(buf.clone()),
        };
        submit(&mut q, read, 101);
        let done = drive_until(&mut q, 101);
        assert!(completed(&done, 101), "{engine:?}: {done:?}");
        assert_eq!(buf.copy_out(), pattern(1, 4096), "{engine:?}");
        assert!(
            !done.iter().any(|c| c.tag == 100),
            "{engine:?}: the flush completed before its write-back was durable"
        );
        let done = drive_a_while(&mut q);
        assert!(done.is_empty(), "{engine:?}: {done:?}");
        assert_eq!(
            q.io().engine.held_flushes(),
            1,
            "{engine:?}: the first fsync waits"
        );
        // An overwrite and an allocating write are planned and complete meanwhile.
        submit(&mut q, write(512, &pattern(2, 512)), 102);
        submit(&mut q, write(5 * CS, &pattern(3, 4096)), 103);
        let mut done = drive_until(&mut q, 102);
        if !completed(&done, 103) {
            done.extend(drive_until(&mut q, 103));
        }
        assert!(completed(&done, 102) && completed(&done, 103), "{done:?}");
        assert!(!done.iter().any(|c| c.tag == 100), "{engine:?}: {done:?}");
        q.io().engine.release_flushes().expect("release");
        let done = drive_until(&mut q, 100);
        assert!(completed(&done, 100), "{engine:?}: {done:?}");
        run(&mut q, IoOp::Flush).expect("second flush");
        drop(q);
        drop(r.image);
        check_clean(&r.path);
        let guest = qemu_raw(&r.path);
        let mut first = pattern(1, 4096);
        first[512..1024].copy_from_slice(&pattern(2, 512));
        assert_eq!(&guest[..4096], &first[..], "{engine:?}");
        assert_eq!(
            &guest[small(5 * CS)..small(5 * CS) + 4096],
            &pattern(3, 4096)[..]
        );
    }
}

#[test]
fn an_allocation_during_a_write_back_waits_for_the_next_flush_behind_its_refcount() {
    let r = rig(EngineKind::IoUring);
    let mut q = r.image.queue(8).expect("queue");
    write_at(&mut q, 0, &pattern(4, 4096)).expect("write A");
    run(&mut q, IoOp::Flush).expect("flush");
    r.log.take();
    // B (guest cluster 1 -> host cluster 6) is dirty when the flush starts.
    write_at(&mut q, CS, &pattern(5, 4096)).expect("write B");
    q.io().engine.hold_flushes();
    submit(&mut q, IoOp::Flush, 200);
    drive_a_while(&mut q);
    // C (guest cluster 2 -> host cluster 7) allocates while the write-back is in flight.
    submit(&mut q, write(2 * CS, &pattern(6, 4096)), 201);
    let done = drive_until(&mut q, 201);
    assert!(completed(&done, 201), "{done:?}");
    q.io().engine.release_flushes().expect("release");
    let done = drive_until(&mut q, 200);
    assert!(completed(&done, 200), "{done:?}");
    let first = r.log.0.lock().expect("log").len();
    run(&mut q, IoOp::Flush).expect("second flush");
    let events = r.log.take();
    let (b_l2, c_l2) = (L2 + 8, L2 + 16);
    let (b_rc, c_rc) = (REFBLOCK + 12, REFBLOCK + 14);
    let after_first = &events[..first];
    assert_ne!(
        bytes_at(after_first, b_l2, 8),
        [0; 8],
        "B mapped: {events:?}"
    );
    assert_eq!(bytes_at(after_first, b_rc, 2), [0, 1], "B counted");
    assert_eq!(
        bytes_at(after_first, c_l2, 8),
        [0; 8],
        "C not mapped by the first flush"
    );
    assert_eq!(
        bytes_at(after_first, c_rc, 2),
        [0; 2],
        "C not counted by the first flush"
    );
    let data = first_set(&events, 7 * CS, 4096).expect("C's data written");
    let counted = first_set(&events, c_rc, 2).expect("C's refcount written");
    let mapped = first_set(&events, c_l2, 8).expect("C's entry written");
    let durable = synced_after(&events, data.max(counted)).expect("a sync after them");
    assert!(
        durable < mapped,
        "C's entry written at event {mapped}, before its data ({data}) and refcount \
         ({counted}) were synced ({durable}): {events:?}"
    );
    drop(q);
    drop(r.image);
    check_clean(&r.path);
    assert_eq!(
        read_at(
            &mut *super::open(&r.path, true).open_queue(1).expect("q"),
            2 * CS,
            4096
        )
        .expect("read C"),
        pattern(6, 4096)
    );
}

#[test]
fn a_flush_on_another_queue_waits_for_the_write_back_then_syncs_itself() {
    let r = rig(EngineKind::IoUring);
    let mut a = r.image.queue(4).expect("queue a");
    let mut b = r.image.queue(4).expect("queue b");
    write_at(&mut a, 0, &pattern(7, 4096)).expect("write on a");
    a.io().engine.hold_flushes();
    submit(&mut a, IoOp::Flush, 300);
    drive_a_while(&mut a);
    // An overwrite on b (no metadata) completes before b's flush, which must wait for a's
    // write-back (it may hold b's mapping) and then still sync b's data.
    write_at(&mut b, 2048, &pattern(8, 1024)).expect("overwrite on b");
    submit(&mut b, IoOp::Flush, 301);
    let done = drive_a_while(&mut b);
    assert!(done.is_empty(), "b's flush did not wait: {done:?}");
    r.log.take();
    a.io().engine.release_flushes().expect("release");
    assert!(completed(&drive_until(&mut a, 300), 300));
    let done = drive_until(&mut b, 301);
    assert!(completed(&done, 301), "{done:?}");
    let events = r.log.take();
    let syncs = events
        .iter()
        .filter(|e| matches!(e, Event::Synced(_)))
        .count();
    // a's held fsync and its second-phase fsync, then b's own: nothing is dirty for b, but
    // its completed write must be durable.
    assert_eq!(syncs, 3, "{events:?}");
    drop((a, b));
    drop(r.image);
    check_clean(&r.path);
}

#[test]
fn a_table_the_write_back_still_has_to_write_stays_cached_until_written() {
    // One 64 KiB L2 table fits in the cache; each table maps 512 MiB.
    let r = rig_with(EngineKind::IoUring, 2 << 30, small(CS));
    let mut q = r.image.queue(4).expect("queue");
    let second_table = 1 << 29;
    write_at(&mut q, 0, &pattern(9, 4096)).expect("write A (table 1)");
    write_at(&mut q, second_table, &pattern(10, 4096)).expect("write (table 2)");
    run(&mut q, IoOp::Flush).expect("flush");
    // B changes an entry of table 1: the next write-back writes it after its first fsync.
    write_at(&mut q, CS, &pattern(11, 4096)).expect("write B");
    q.io().engine.hold_flushes();
    submit(&mut q, IoOp::Flush, 400);
    drive_a_while(&mut q);
    // Table 2 comes into the cache; table 1, clean in memory but not yet written, must stay.
    let table_2 = read_at(&mut q, second_table, 4096).expect("read table 2's cluster");
    assert!(
        table_2 == pattern(10, 4096),
        "table 2's cluster reads wrong"
    );
    let b = read_at(&mut q, CS, 4096).expect("read B");
    assert!(
        b == pattern(11, 4096),
        "B's mapping was read back from the file before the write-back wrote it"
    );
    q.io().engine.release_flushes().expect("release");
    assert!(completed(&drive_until(&mut q, 400), 400));
    drop(q);
    drop(r.image);
    check_clean(&r.path);
}
