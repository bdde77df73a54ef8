//! Several queues on one qcow2 image, driven the way ring workers drive them: sleep on the
//! queue's notifier, then reap; never `ImageQueue::wait`.

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

#[test]
fn a_write_waiting_for_another_queues_allocation_completes_when_woken() {
    let (_dir, path) = temp("queues.qcow2");
    create(&path, 4 << 20, &CreateOptions::default()).expect("create");
    let image = open_image(&path, Format::Qcow2, &opts(false, EngineKind::Auto)).expect("open");
    let (mut a, mut b) = (
        image.open_queue(4).expect("a"),
        image.open_queue(4).expect("b"),
    );
    let cluster = 65536;
    // Queue a allocates the cluster; queue b writes another page of it while that is in flight.
    a.submit(write(cluster, &pattern(1, 4096)), 1)
        .expect("submit a");
    a.commit().expect("commit a");
    b.submit(write(cluster + 8192, &pattern(2, 4096)), 2)
        .expect("submit b");
    b.commit().expect("commit b");
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
    let got = read_at(&mut *a, cluster, 12288).expect("read");
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
