//! Null images: the stateless part of the shared suite, geometry from the size given, and
//! the refusals a file-less image needs.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::image::{BlockImage, Format, ImageQueue, IoOp, OpenOptions};
use crate::suite::{self, DEPTH, MIN_SIZE, read_at, run, write_at};
use crate::{Error, SharedBuf, open_image};

use super::NullImage;

fn image(size: u64) -> NullImage {
    NullImage::new(size, &OpenOptions::default()).expect("null image")
}

#[test]
fn stateless_suite_passes() {
    let img = image(MIN_SIZE);
    let mut q = img.open_queue(DEPTH).expect("queue");
    suite::run_stateless(&mut *q, MIN_SIZE);
}

#[test]
fn geometry_and_features_follow_the_size_and_options() {
    let img = image(8 << 30);
    let g = img.geometry();
    assert_eq!(
        (g.size, g.logical_sector_size, g.physical_sector_size),
        (8 << 30, 512, 512)
    );
    let f = img.features();
    assert!(f.flush && f.discard && f.write_zeroes && !f.read_only);
    assert_eq!(img.format(), Format::Null);
    let big = OpenOptions {
        sector_size: 4096,
        read_only: true,
        ..OpenOptions::default()
    };
    let ro = NullImage::new(1 << 20, &big).expect("4k read-only");
    assert_eq!(ro.geometry().logical_sector_size, 4096);
    let f = ro.features();
    assert!(f.read_only && !f.discard && !f.write_zeroes && f.flush);
}

#[test]
fn sizes_that_are_no_whole_disk_are_refused() {
    let four_k = OpenOptions {
        sector_size: 4096,
        ..OpenOptions::default()
    };
    for (size, opts) in [
        (0, OpenOptions::default()),
        (1000, OpenOptions::default()),
        (512, four_k.clone()),
        (u64::MAX - 511, OpenOptions::default()),
    ] {
        let err = NullImage::new(size, &opts).expect_err("bad size");
        assert!(matches!(err, Error::InvalidArgument(_)), "{size}: {err}");
    }
    let odd = OpenOptions {
        sector_size: 1000,
        ..OpenOptions::default()
    };
    assert!(NullImage::new(1 << 20, &odd).is_err());
}

#[test]
fn read_only_null_image_refuses_modifying_ops() {
    let opts = OpenOptions {
        read_only: true,
        ..OpenOptions::default()
    };
    let img = NullImage::new(MIN_SIZE, &opts).expect("image");
    let mut q = img.open_queue(DEPTH).expect("queue");
    suite::read_only_refuses_modifying_ops(&mut *q);
}

#[test]
fn completions_are_ready_at_reap_right_after_submit_without_waiting() {
    let img = image(MIN_SIZE);
    let mut q = img.open_queue(4).expect("queue");
    for tag in 0..3 {
        q.submit(IoOp::Flush, tag).expect("submit");
    }
    let mut out = Vec::new();
    assert_eq!(q.reap(&mut out), 3, "not ready before commit");
    assert_eq!(out.iter().map(|c| c.tag).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(q.in_flight(), 0);
    let mut fds = [PollFd::new(q.notifier(), PollFlags::POLLIN)];
    assert_eq!(
        poll(&mut fds, PollTimeout::ZERO).expect("poll"),
        0,
        "reap cleared it"
    );
}

#[test]
fn a_notifier_fetched_late_or_kept_tells_the_truth() {
    let img = image(MIN_SIZE);
    let mut q = img.open_queue(8).expect("queue");
    let readable = |q: &dyn ImageQueue| {
        let mut fds = [PollFd::new(q.notifier(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::ZERO).expect("poll") == 1
    };
    // Completions made before anyone asked for the notifier show once it is asked for.
    q.submit(IoOp::Flush, 1).expect("submit");
    assert!(readable(&*q), "pending completion not signalled");
    let mut out = Vec::new();
    assert_eq!(q.reap(&mut out), 1);
    assert!(!readable(&*q), "reap left it readable");
    // A descriptor kept from one call (as in an epoll set) follows every later batch.
    let fd = q.notifier().try_clone_to_owned().expect("dup");
    for round in 0..3 {
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        assert_eq!(
            poll(&mut fds, PollTimeout::ZERO).expect("poll"),
            0,
            "{round}"
        );
        q.submit(IoOp::Flush, round).expect("submit");
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        assert_eq!(
            poll(&mut fds, PollTimeout::ZERO).expect("poll"),
            1,
            "{round}"
        );
        assert_eq!(q.reap(&mut out), 1);
    }
}

#[test]
fn wait_any_returns_at_once_with_completions_and_reports_ready_fds() {
    let img = image(MIN_SIZE);
    let mut q = img.open_queue(8).expect("queue");
    let bell = EventFd::from_flags(EfdFlags::EFD_NONBLOCK).expect("eventfd");
    let quiet = EventFd::from_flags(EfdFlags::EFD_NONBLOCK).expect("eventfd");
    q.submit(IoOp::Flush, 1).expect("submit");
    let start = Instant::now();
    let fired = q.wait_any(&[bell.as_fd()], None).expect("wait_any");
    assert_eq!(fired, [false]);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "slept with a completion ready"
    );
    let mut out = Vec::new();
    q.reap(&mut out);
    bell.write(1).expect("ring");
    let fired = q
        .wait_any(&[quiet.as_fd(), bell.as_fd()], None)
        .expect("wait_any");
    assert_eq!(fired, [false, true]);
    let fired = q
        .wait_any(&[quiet.as_fd()], Some(Duration::from_millis(20)))
        .expect("timeout");
    assert_eq!(fired, [false]);
}

#[test]
fn a_read_overwrites_whatever_the_buffer_held_and_writes_store_nothing() {
    let img = image(MIN_SIZE);
    let mut q = img.open_queue(DEPTH).expect("queue");
    write_at(&mut *q, 4096, &suite::pattern(3, 4096)).expect("write");
    assert_eq!(read_at(&mut *q, 4096, 4096).expect("read"), vec![0; 4096]);
    let buf = SharedBuf::new(4096);
    assert!(buf.copy_in(0, &[0x5A; 4096]));
    let op = IoOp::Read {
        offset: MIN_SIZE - 4096,
        bufs: Box::new(buf.clone()),
    };
    run(&mut *q, op).expect("read at the end");
    assert_eq!(buf.copy_out(), vec![0; 4096]);
}

#[test]
fn a_null_image_is_never_opened_from_a_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("missing");
    let err = open_image(&path, Format::Null, &OpenOptions::default())
        .err()
        .expect("refused");
    assert!(err.to_string().contains("null image has no file"), "{err}");
    assert!(!path.exists(), "a file was created");
}

#[test]
fn queue_depth_must_be_in_range() {
    let img = image(MIN_SIZE);
    assert!(img.open_queue(0).is_err());
    assert!(img.open_queue(crate::engine::MAX_DEPTH + 1).is_err());
}
