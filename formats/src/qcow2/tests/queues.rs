//! Several queues on one qcow2 image, driven the way ring workers and `rustbk img` drive
//! them: sleep in the queue (`wait_any`) or on its notifier, then reap; never
//! `ImageQueue::wait`.

use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::buffer::SharedBuf;
use crate::image::{Completion, EngineKind, Format, ImageQueue, IoOp};
use crate::open_image;
use crate::qcow2::{CreateOptions, create};
use crate::suite::{assert_bytes, pattern, read_at};

use super::{check_clean, opts, qemu_raw, temp};

fn write(offset: u64, data: &[u8]) -> IoOp {
    let buf = SharedBuf::new(data.len());
    assert!(buf.copy_in(0, data));
    IoOp::Write {
        offset,
        bufs: Box::new(buf),
    }
}

/// Sleeps up to 50 ms on the queue's notifier, then reaps and commits, as a ring worker does.
fn worker_step(q: &mut dyn ImageQueue, done: &mut Vec<Completion>) {
    let mut fds = [PollFd::new(q.notifier(), PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::from(50u16)).expect("poll");
    q.reap(done);
    q.commit().expect("commit");
}

/// Runs `q` as a ring worker does, on a thread of its own: sleeps in the queue (`wait_any`,
/// for up to `nap`) while it has ops, reaps and commits; returns how long its op took.
fn sleeping_worker(mut q: Box<dyn ImageQueue>, nap: Duration) -> (Vec<Completion>, Duration) {
    let start = Instant::now();
    let mut done = Vec::new();
    while q.in_flight() > 0 {
        q.wait_any(&[], Some(nap)).expect("wait_any");
        q.reap(&mut done);
        q.commit().expect("commit");
    }
    (done, start.elapsed())
}

/// The guest cluster both writes go into.
const CLUSTER: u64 = 65536;

/// An image's folder, path, image and two of its queues.
type TwoQueues = (
    tempfile::TempDir,
    std::path::PathBuf,
    std::sync::Arc<dyn crate::BlockImage>,
    [Box<dyn ImageQueue>; 2],
);

/// A new image whose queue a allocates [`CLUSTER`] (a write of pattern 1 at its start) while
/// queue b writes pattern 2 into its third page: b's write waits for a's allocation.
fn two_writes_into_one_new_cluster() -> TwoQueues {
    let (dir, path) = temp("queues.qcow2");
    create(&path, 4 << 20, &CreateOptions::default()).expect("create");
    let image = open_image(&path, Format::Qcow2, &opts(false, EngineKind::Auto)).expect("open");
    let mut queues = [
        image.open_queue(4).expect("a"),
        image.open_queue(4).expect("b"),
    ];
    for (seed, q) in (1..).zip(queues.iter_mut()) {
        let at = CLUSTER + 8192 * (seed - 1);
        q.submit(write(at, &pattern(seed, 4096)), seed)
            .expect("submit");
        q.commit().expect("commit");
    }
    (dir, path, image, queues)
}

#[test]
fn a_queue_sleeping_in_wait_any_is_woken_by_another_queues_allocation() {
    let (_dir, _path, image, [a, b]) = two_writes_into_one_new_cluster();
    // Nothing but queue a's bell can wake queue b before its 10 s nap ends.
    let nap = Duration::from_secs(10);
    let (a, b) = std::thread::scope(|s| {
        let b = s.spawn(move || sleeping_worker(b, nap));
        let a = s.spawn(move || sleeping_worker(a, nap));
        (a.join().expect("a"), b.join().expect("b"))
    });
    assert!(a.0[0].result.is_ok() && b.0[0].result.is_ok());
    assert!(
        b.1 < Duration::from_secs(5),
        "queue b slept {:?} after queue a's allocation (a took {:?})",
        b.1,
        a.1
    );
    let mut q = image.open_queue(1).expect("reader");
    let got = read_at(&mut *q, CLUSTER + 8192, 4096).expect("read");
    assert_bytes(&got, &pattern(2, 4096), "queue b's write");
}

#[test]
fn a_write_waiting_for_another_queues_allocation_completes_when_woken() {
    let (_dir, path, image, [mut a, mut b]) = two_writes_into_one_new_cluster();
    let (mut done_a, mut done_b) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + Duration::from_secs(5);
    while done_a.is_empty() || done_b.is_empty() {
        assert!(
            Instant::now() < deadline,
            "queue b's write never completed after queue a's allocation committed (a done: {}, b done: {})",
            done_a.len(),
            done_b.len()
        );
        worker_step(&mut *a, &mut done_a);
        worker_step(&mut *b, &mut done_b);
    }
    assert!(done_a[0].result.is_ok() && done_b[0].result.is_ok());
    let got = read_at(&mut *a, CLUSTER, 12288).expect("read");
    let mut want = pattern(1, 4096);
    want.extend(vec![0; 4096]);
    want.extend(pattern(2, 4096));
    assert_bytes(&got, &want, "both queues' writes");
    drop((a, b));
    drop(image);
    check_clean(&path);
    let raw = qemu_raw(&path);
    assert_bytes(&raw[65536..65536 + 12288], &want, "qemu-img convert");
}

#[test]
fn a_polling_worker_sees_a_read_finish_in_the_shared_completion_ring() {
    let (_dir, path) = temp("peek.qcow2");
    create(&path, 4 << 20, &CreateOptions::default()).expect("create");
    let image = open_image(&path, Format::Qcow2, &opts(false, EngineKind::Auto)).expect("open");
    let mut q = image.open_queue(4).expect("queue");
    crate::suite::write_at(&mut *q, 0, &pattern(3, 4096)).expect("write");
    let buf = SharedBuf::new(4096);
    let read = IoOp::Read {
        offset: 0,
        bufs: Box::new(buf.clone()),
    };
    q.submit(read, 7).expect("submit");
    q.commit().expect("commit");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut done = Vec::new();
    while done.is_empty() {
        assert!(Instant::now() < deadline, "the read never showed up");
        match q.peek_completions() {
            Some(true) => {
                q.reap(&mut done);
            }
            Some(false) => std::hint::spin_loop(),
            None => panic!("an io_uring qcow2 queue cannot show its completions"),
        }
    }
    assert_eq!(done[0].tag, 7);
    assert_bytes(&buf.copy_out(), &pattern(3, 4096), "the read");
    assert_eq!(q.peek_completions(), Some(false), "nothing left to reap");
    drop((q, image));
    let sync = open_image(&path, Format::Qcow2, &opts(false, EngineKind::Sync)).expect("open");
    let mut q = sync.open_queue(4).expect("queue");
    assert_eq!(
        q.peek_completions(),
        None,
        "a sync engine queue claims to show completions"
    );
}
