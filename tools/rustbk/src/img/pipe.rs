//! Chunked I/O through image queues for `convert` and `compare`: many large ops in flight,
//! data handed over as [`SharedBuf`]s, waits on several queues at once.

use std::time::Duration;

use anyhow::{Context, bail};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use rustbk_formats::{Completion, Composite, ImageQueue, IoOp, SharedBuf, SharedBufs};

/// Bytes per read op.
pub const CHUNK: u64 = 2 << 20;
/// Ops in flight per queue.
pub const DEPTH: usize = 16;
/// [`DEPTH`] as a queue depth.
pub const QUEUE_DEPTH: u32 = 16;

/// Splits `[start, start + len)` into pieces that do not cross a multiple of `chunk`.
pub fn chunks(start: u64, len: u64, chunk: u64) -> impl Iterator<Item = (u64, u64)> {
    let end = start.saturating_add(len);
    let mut at = start;
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let next = ((at / chunk) + 1).saturating_mul(chunk).min(end);
        let piece = (at, next - at);
        at = next;
        Some(piece)
    })
}

/// Submits a read of `len` bytes at `offset`; returns the buffer it fills.
pub fn read(q: &mut dyn ImageQueue, offset: u64, len: u64, tag: u64) -> anyhow::Result<SharedBuf> {
    let buf = SharedBuf::new(usize::try_from(len)?);
    read_into(q, offset, &buf, tag)?;
    Ok(buf)
}

/// Submits a read filling all of `buf` from `offset`.
pub fn read_into(
    q: &mut dyn ImageQueue,
    offset: u64,
    buf: &SharedBuf,
    tag: u64,
) -> anyhow::Result<()> {
    let op = IoOp::Read {
        offset,
        bufs: Box::new(buf.clone()),
    };
    q.submit(op, tag).context("Cannot queue a read")
}

/// Submits a write of bytes `[skip, skip + len)` of `buf` to `offset`.
pub fn write(
    q: &mut dyn ImageQueue,
    offset: u64,
    buf: &SharedBuf,
    (skip, len): (usize, usize),
    tag: u64,
) -> anyhow::Result<()> {
    let shared = SharedBufs::new(Box::new(buf.clone())).context("buffer too large")?;
    let mut piece = Composite::new();
    if !piece.push_shared(&shared, skip, len) {
        bail!("write range {skip}+{len} outside its buffer");
    }
    let op = IoOp::Write {
        offset,
        bufs: Box::new(piece),
    };
    q.submit(op, tag).context("Cannot queue a write")
}

/// Completions of `q`, failing on the first op that failed.
pub fn reap(q: &mut dyn ImageQueue, what: &str) -> anyhow::Result<Vec<u64>> {
    let mut done: Vec<Completion> = Vec::new();
    q.reap(&mut done);
    done.into_iter()
        .map(|c| match c.result {
            Ok(()) => Ok(c.tag),
            Err(e) => Err(anyhow::Error::new(e).context(format!("{what} failed"))),
        })
        .collect()
}

/// Commits every queue, then waits until one of those with ops in flight may have completions.
pub fn wait_any(queues: &mut [&mut dyn ImageQueue]) -> anyhow::Result<()> {
    for q in queues.iter_mut() {
        q.commit()?;
    }
    let mut busy: Vec<&mut &mut dyn ImageQueue> =
        queues.iter_mut().filter(|q| q.in_flight() > 0).collect();
    if busy.len() == 1 {
        busy[0].wait(Some(Duration::from_millis(100)))?;
        return Ok(());
    }
    let mut fds: Vec<PollFd<'_>> = busy
        .iter()
        .map(|q| PollFd::new(q.notifier(), PollFlags::POLLIN))
        .collect();
    if !fds.is_empty() {
        poll(&mut fds, PollTimeout::from(20u8)).context("poll")?;
    }
    Ok(())
}

/// Flushes `q` and waits for the flush.
pub fn flush(q: &mut dyn ImageQueue) -> anyhow::Result<()> {
    q.submit(IoOp::Flush, u64::MAX)
        .context("Cannot queue a flush")?;
    while q.in_flight() > 0 {
        q.wait(Some(Duration::from_millis(100)))?;
        reap(q, "flush")?;
    }
    Ok(())
}

/// Reads every range (at most [`DEPTH`]) at once and returns the buffers in order.
pub fn read_all(q: &mut dyn ImageQueue, ranges: &[(u64, u64)]) -> anyhow::Result<Vec<SharedBuf>> {
    let mut bufs = Vec::with_capacity(ranges.len());
    for (i, &(offset, len)) in ranges.iter().enumerate() {
        bufs.push(read(q, offset, len, i as u64)?);
    }
    while q.in_flight() > 0 {
        q.wait(Some(Duration::from_millis(100)))?;
        reap(q, "read")?;
    }
    Ok(bufs)
}
