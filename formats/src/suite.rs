//! The shared test suite: behaviour every [`ImageQueue`] must show, whatever the format and
//! engine. Each check takes a queue opened with depth [`DEPTH`] on a writable image of at least
//! [`MIN_SIZE`] bytes (unless it says otherwise) and panics on a violation. Built for this
//! crate's tests and, with the `suite` feature, for the tests of other crates' images.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::buffer::SharedBuf;
use crate::error::Error;
use crate::image::{Completion, ImageQueue, IoOp};

/// Queue depth the checks expect.
pub const DEPTH: u32 = 64;
/// Smallest image the checks work on.
pub const MIN_SIZE: u64 = 16 << 20;
const LONG: Duration = Duration::from_secs(10);

/// Deterministic, position-dependent bytes.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (i.wrapping_mul(31).wrapping_add(seed.wrapping_mul(7919)) % 251) as u8)
        .collect()
}

/// Asserts two byte strings are equal, reporting the first difference (not megabytes of bytes).
#[track_caller]
pub fn assert_bytes(got: &[u8], expected: &[u8], what: &str) {
    if let Some(i) = got.iter().zip(expected).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at byte {i}: got {} expected {}",
            got[i], expected[i]
        );
    }
    assert_eq!(got.len(), expected.len(), "{what}: length");
}

/// Waits until `count` completions have been reaped (panics after a generous timeout).
pub fn reap_n(q: &mut dyn ImageQueue, count: usize) -> Vec<Completion> {
    let start = Instant::now();
    let mut out = Vec::new();
    while out.len() < count {
        assert!(
            start.elapsed() < LONG,
            "only {} of {count} completions arrived",
            out.len()
        );
        q.wait(Some(Duration::from_millis(500))).expect("wait");
        q.reap(&mut out);
    }
    assert_eq!(out.len(), count, "more completions than ops");
    out
}

/// Submits one op, commits and returns its result.
pub fn run(q: &mut dyn ImageQueue, op: IoOp) -> Result<(), Error> {
    q.submit(op, 0xfeed).expect("submit");
    q.commit().expect("commit");
    let mut done = reap_n(q, 1);
    let c = done.remove(0);
    assert_eq!(c.tag, 0xfeed);
    c.result
}

/// Writes `data` at `offset` through one aligned segment.
pub fn write_at(q: &mut dyn ImageQueue, offset: u64, data: &[u8]) -> Result<(), Error> {
    let buf = SharedBuf::new(data.len());
    assert!(buf.copy_in(0, data));
    run(
        q,
        IoOp::Write {
            offset,
            bufs: Box::new(buf),
        },
    )
}

/// Reads `len` bytes at `offset` through one aligned segment.
pub fn read_at(q: &mut dyn ImageQueue, offset: u64, len: usize) -> Result<Vec<u8>, Error> {
    let buf = SharedBuf::new(len);
    run(
        q,
        IoOp::Read {
            offset,
            bufs: Box::new(buf.clone()),
        },
    )?;
    Ok(buf.copy_out())
}

/// Runs every check that needs a writable image.
pub fn run_writable(q: &mut dyn ImageQueue, size: u64) {
    run_writable_without_discard(q, size);
    discarded_range_reads_as_zeros(q);
    write_zeroes_range_reads_as_zeros(q);
}

/// Runs every check that needs a writable image, except discard and write-zeroes (for
/// formats that do not offer them).
pub fn run_writable_without_discard(q: &mut dyn ImageQueue, size: u64) {
    written_patterns_read_back_at_many_offsets(q, size);
    vectored_ops_use_every_segment_in_order(q);
    sixty_four_ops_in_flight_all_complete_with_their_tags(q);
    submit_past_depth_fails_with_queue_full(q);
    flush_succeeds_after_writes(q);
    misaligned_memory_is_read_and_written_correctly(q);
    misaligned_offsets_are_read_and_written_correctly(q);
    ops_beyond_the_end_complete_with_an_error(q, size);
    empty_ops_complete_successfully(q);
    notifier_is_readable_until_reap(q);
    wait_with_timeout_returns_when_idle_or_done(q);
}

/// Runs every check that fits a queue that stores nothing (null images): depth, tags,
/// bounds, the notifier, and reads returning zeros whatever was written before.
pub fn run_stateless(q: &mut dyn ImageQueue, size: u64) {
    writes_are_accepted_and_every_read_returns_zeros(q, size);
    ops_in_flight_all_complete_with_their_tags(q);
    submit_past_depth_fails_with_queue_full(q);
    run(q, IoOp::Flush).expect("flush");
    run(
        q,
        IoOp::Discard {
            offset: 0,
            len: 1 << 20,
        },
    )
    .expect("discard");
    ops_beyond_the_end_complete_with_an_error(q, size);
    empty_ops_complete_successfully(q);
    notifier_is_readable_until_reap(q);
    wait_with_timeout_returns_when_idle_or_done(q);
}

/// For queues storing nothing: writes, write-zeroes and flushes succeed, and reads, plain
/// and vectored, fill their buffers with zeros (whatever the buffers held before).
pub fn writes_are_accepted_and_every_read_returns_zeros(q: &mut dyn ImageQueue, size: u64) {
    let offsets = [0, 4096, 1 << 20, size - 8192];
    for (i, &off) in offsets.iter().enumerate() {
        write_at(q, off, &pattern(i as u64, 8192)).expect("write");
    }
    let zeroes = IoOp::WriteZeroes {
        offset: 0,
        len: 65536,
    };
    run(q, zeroes).expect("write zeroes");
    run(q, IoOp::Flush).expect("flush");
    for &off in &offsets {
        let buf = SharedBuf::new(8192);
        assert!(buf.copy_in(0, &[0xEE; 8192]));
        let op = IoOp::Read {
            offset: off,
            bufs: Box::new(buf.clone()),
        };
        run(q, op).expect("read");
        assert_bytes(&buf.copy_out(), &[0; 8192], &format!("read at {off}"));
    }
    let segments = [(8192, 512), (0, 4096), (12288, 3584)];
    let back = SharedBuf::with_segments(16384, &segments).expect("segments");
    assert!(back.copy_in(0, &[0xEE; 16384]));
    run(
        q,
        IoOp::Read {
            offset: 0,
            bufs: Box::new(back.clone()),
        },
    )
    .expect("readv");
    let got = back.copy_out();
    for (start, len) in segments {
        assert_bytes(&got[start..start + len], &vec![0; len], "vectored read");
    }
    assert_bytes(
        &got[4096..8192],
        &[0xEE; 4096],
        "bytes outside the segments untouched",
    );
}

/// [`DEPTH`] reads and writes in flight complete, each once, with its own tag.
pub fn ops_in_flight_all_complete_with_their_tags(q: &mut dyn ImageQueue) {
    for i in 0..u64::from(DEPTH) {
        let bufs = Box::new(SharedBuf::new(4096));
        let offset = i * 4096;
        let op = match i % 2 {
            0 => IoOp::Write { offset, bufs },
            _ => IoOp::Read { offset, bufs },
        };
        q.submit(op, 500 + i).expect("submit");
    }
    assert_eq!(q.in_flight(), DEPTH as usize);
    q.commit().expect("commit");
    let done = reap_n(q, DEPTH as usize);
    assert!(done.iter().all(|c| c.result.is_ok()), "{done:?}");
    let tags: HashSet<u64> = done.iter().map(|c| c.tag).collect();
    assert_eq!(tags, (500..500 + u64::from(DEPTH)).collect());
    assert_eq!(q.in_flight(), 0);
}

pub fn written_patterns_read_back_at_many_offsets(q: &mut dyn ImageQueue, size: u64) {
    let offsets = [0, 16384, 65536, 1 << 20, 3 << 20, size - 8192];
    for (i, &off) in offsets.iter().enumerate() {
        write_at(q, off, &pattern(i as u64, 8192)).expect("write");
    }
    for (i, &off) in offsets.iter().enumerate() {
        assert_bytes(
            &read_at(q, off, 8192).expect("read"),
            &pattern(i as u64, 8192),
            &format!("data at {off}"),
        );
    }
}

pub fn vectored_ops_use_every_segment_in_order(q: &mut dyn ImageQueue) {
    let segments = [(8192, 512), (0, 4096), (4096, 1024), (12288, 3584)];
    let total: usize = segments.iter().map(|s| s.1).sum();
    let data = pattern(99, 16384);
    let out = SharedBuf::with_segments(16384, &segments).expect("segments");
    assert!(out.copy_in(0, &data));
    run(
        q,
        IoOp::Write {
            offset: 2 << 20,
            bufs: Box::new(out),
        },
    )
    .expect("writev");
    let expected: Vec<u8> = segments
        .iter()
        .flat_map(|&(s, l)| data[s..s + l].to_vec())
        .collect();
    assert_bytes(
        &read_at(q, 2 << 20, total).expect("read"),
        &expected,
        "vectored write",
    );
    let back = SharedBuf::with_segments(16384, &segments).expect("segments");
    run(
        q,
        IoOp::Read {
            offset: 2 << 20,
            bufs: Box::new(back.clone()),
        },
    )
    .expect("readv");
    let got = back.copy_out();
    for &(s, l) in &segments {
        assert_bytes(&got[s..s + l], &data[s..s + l], &format!("segment at {s}"));
    }
}

pub fn sixty_four_ops_in_flight_all_complete_with_their_tags(q: &mut dyn ImageQueue) {
    let base = 4u64 << 20;
    for i in 0..u64::from(DEPTH) {
        let buf = SharedBuf::new(4096);
        assert!(buf.copy_in(0, &pattern(1000 + i, 4096)));
        q.submit(
            IoOp::Write {
                offset: base + i * 4096,
                bufs: Box::new(buf),
            },
            i,
        )
        .expect("submit");
    }
    assert_eq!(q.in_flight(), DEPTH as usize);
    q.commit().expect("commit");
    let done = reap_n(q, DEPTH as usize);
    assert!(done.iter().all(|c| c.result.is_ok()), "{done:?}");
    assert_eq!(
        done.iter().map(|c| c.tag).collect::<HashSet<_>>().len(),
        DEPTH as usize
    );
    assert_eq!(q.in_flight(), 0);
    let bufs: Vec<SharedBuf> = (0..DEPTH).map(|_| SharedBuf::new(4096)).collect();
    for (i, buf) in bufs.iter().enumerate() {
        let op = IoOp::Read {
            offset: base + i as u64 * 4096,
            bufs: Box::new(buf.clone()),
        };
        q.submit(op, 100 + i as u64).expect("submit");
    }
    q.commit().expect("commit");
    assert!(reap_n(q, DEPTH as usize).iter().all(|c| c.result.is_ok()));
    for (i, buf) in bufs.iter().enumerate() {
        assert_bytes(
            &buf.copy_out(),
            &pattern(1000 + i as u64, 4096),
            &format!("op {i}"),
        );
    }
}

pub fn submit_past_depth_fails_with_queue_full(q: &mut dyn ImageQueue) {
    for tag in 0..u64::from(DEPTH) {
        q.submit(IoOp::Flush, tag).expect("within depth");
    }
    let refused = q.submit(IoOp::Flush, 999);
    assert!(matches!(refused, Err(Error::QueueFull(_))), "{refused:?}");
    q.commit().expect("commit");
    let done = reap_n(q, DEPTH as usize);
    assert!(done.iter().all(|c| c.tag != 999 && c.result.is_ok()));
    run(q, IoOp::Flush).expect("room again after reaping");
}

pub fn flush_succeeds_after_writes(q: &mut dyn ImageQueue) {
    write_at(q, 0, &pattern(5, 4096)).expect("write");
    run(q, IoOp::Flush).expect("flush");
    assert_bytes(
        &read_at(q, 0, 4096).expect("read"),
        &pattern(5, 4096),
        "after flush",
    );
}

pub fn discarded_range_reads_as_zeros(q: &mut dyn ImageQueue) {
    let off = 6u64 << 20;
    write_at(q, off, &pattern(6, 1 << 20)).expect("write");
    run(
        q,
        IoOp::Discard {
            offset: off,
            len: 1 << 20,
        },
    )
    .expect("discard");
    assert!(
        read_at(q, off, 1 << 20)
            .expect("read")
            .iter()
            .all(|&b| b == 0)
    );
}

pub fn write_zeroes_range_reads_as_zeros(q: &mut dyn ImageQueue) {
    let off = 8u64 << 20;
    write_at(q, off, &pattern(8, 65536)).expect("write");
    run(
        q,
        IoOp::WriteZeroes {
            offset: off + 4096,
            len: 8192,
        },
    )
    .expect("write zeroes");
    let got = read_at(q, off, 65536).expect("read");
    let mut expected = pattern(8, 65536);
    expected[4096..12288].fill(0);
    assert_bytes(&got, &expected, "write zeroes");
}

pub fn misaligned_memory_is_read_and_written_correctly(q: &mut dyn ImageQueue) {
    let off = 9u64 << 20;
    let data = pattern(9, 8192);
    let out = SharedBuf::with_segments(8193, &[(1, 4096), (4097, 4096)]).expect("segments");
    assert!(out.copy_in(1, &data));
    run(
        q,
        IoOp::Write {
            offset: off,
            bufs: Box::new(out),
        },
    )
    .expect("write");
    assert_bytes(
        &read_at(q, off, 8192).expect("read"),
        &data,
        "bounced write",
    );
    let back = SharedBuf::with_segments(8195, &[(3, 8192)]).expect("segments");
    run(
        q,
        IoOp::Read {
            offset: off,
            bufs: Box::new(back.clone()),
        },
    )
    .expect("read");
    let got = back.copy_out();
    assert_bytes(&got[3..], &data, "bounced read");
    assert_eq!(&got[..3], &[0, 0, 0], "bytes outside the segment untouched");
}

pub fn misaligned_offsets_are_read_and_written_correctly(q: &mut dyn ImageQueue) {
    let off = 10u64 << 20;
    write_at(q, off, &pattern(10, 8192)).expect("write");
    write_at(q, off + 100, &[0xAB; 333]).expect("misaligned write");
    let mut expected = pattern(10, 8192);
    expected[100..433].fill(0xAB);
    assert_bytes(
        &read_at(q, off, 8192).expect("read"),
        &expected,
        "misaligned write",
    );
    assert_bytes(
        &read_at(q, off + 99, 335).expect("misaligned read"),
        &expected[99..434],
        "misaligned read",
    );
}

pub fn ops_beyond_the_end_complete_with_an_error(q: &mut dyn ImageQueue, size: u64) {
    let past = write_at(q, size - 512, &[1; 1024]);
    assert_eq!(
        past.expect_err("write across the end").errno(),
        libc::EINVAL
    );
    assert!(read_at(q, size, 512).is_err(), "read at the end");
    assert!(read_at(q, u64::MAX - 100, 512).is_err(), "offset overflow");
    assert!(
        run(
            q,
            IoOp::Discard {
                offset: size - 512,
                len: 4096
            }
        )
        .is_err()
    );
    assert!(
        run(
            q,
            IoOp::WriteZeroes {
                offset: size,
                len: 512
            }
        )
        .is_err()
    );
    assert_eq!(q.in_flight(), 0);
}

pub fn empty_ops_complete_successfully(q: &mut dyn ImageQueue) {
    run(
        q,
        IoOp::Read {
            offset: 0,
            bufs: Box::new(SharedBuf::new(0)),
        },
    )
    .expect("empty read");
    run(q, IoOp::Discard { offset: 0, len: 0 }).expect("empty discard");
}

fn readable(q: &dyn ImageQueue, timeout_ms: u16) -> bool {
    let mut fds = [PollFd::new(q.notifier(), PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::from(timeout_ms)).expect("poll") == 1
}

pub fn notifier_is_readable_until_reap(q: &mut dyn ImageQueue) {
    let mut out = Vec::new();
    q.reap(&mut out);
    assert!(!readable(q, 0), "idle queue signals");
    q.submit(IoOp::Flush, 1).expect("submit");
    q.commit().expect("commit");
    assert!(readable(q, 5000), "no signal for a completion");
    assert!(readable(q, 0), "signal vanished before reap");
    assert_eq!(reap_n(q, 1)[0].tag, 1);
    assert!(!readable(q, 0), "reap left the notifier readable");
}

pub fn wait_with_timeout_returns_when_idle_or_done(q: &mut dyn ImageQueue) {
    let start = Instant::now();
    q.wait(Some(Duration::from_secs(5))).expect("idle wait");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "idle wait blocked"
    );
    let buf = SharedBuf::new(1 << 20);
    q.submit(
        IoOp::Read {
            offset: 0,
            bufs: Box::new(buf),
        },
        3,
    )
    .expect("submit");
    q.commit().expect("commit");
    q.wait(Some(Duration::from_secs(5))).expect("wait");
    let mut out = Vec::new();
    assert_eq!(q.reap(&mut out), 1, "wait returned before the completion");
    assert!(out[0].result.is_ok());
}

/// Checks for a queue on a read-only image holding at least one MiB.
pub fn read_only_refuses_modifying_ops(q: &mut dyn ImageQueue) {
    let write = write_at(q, 0, &[1; 512]);
    assert_eq!(write.expect_err("write").errno(), libc::EROFS);
    let discard = run(
        q,
        IoOp::Discard {
            offset: 0,
            len: 4096,
        },
    );
    assert_eq!(discard.expect_err("discard").errno(), libc::EROFS);
    let zeroes = run(
        q,
        IoOp::WriteZeroes {
            offset: 0,
            len: 4096,
        },
    );
    assert_eq!(zeroes.expect_err("write zeroes").errno(), libc::EROFS);
    read_at(q, 0, 4096).expect("reads still work");
    run(q, IoOp::Flush).expect("flush still works");
}
