//! Turning an [`IoOp`] into an engine request, and the per-op state machine that handles short
//! transfers, retries and fallbacks. Shared by the io_uring and the synchronous driver.
//!
//! Invariant relied on by the unsafe drivers: the iovecs of a [`Prepared`] always point into
//! buffers the `Prepared` itself keeps alive (the caller's `IoBuffers` or its bounce buffer), and
//! a [`LiveIovecs`] can only be made here, from a `Prepared`.

use crate::buffer::{AlignedBuf, IoBuffers, IoVec, gather, scatter, total_len, zero_from};
use crate::error::Error;
use crate::image::IoOp;

use super::file::{EngineFile, FileKind};
use super::record::WriteRecorder;

/// Most iovecs one readv/writev accepts (IOV_MAX); longer lists go through a bounce buffer.
const IOV_MAX: usize = 1024;
/// How often EAGAIN/EINTR/ECANCELED is retried before it becomes the op's error.
const MAX_RETRIES: u8 = 8;

/// Which descriptor of the [`EngineFile`] an op uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Which {
    /// The page-cached descriptor (always present).
    Buffered,
    /// The O_DIRECT descriptor.
    Direct,
}

#[derive(Clone, Copy, Debug)]
enum Action {
    Read,
    Write,
    Sync,
    Fallocate { mode: i32, len: u64 },
    BlkDiscard { len: u64 },
}

/// Iovecs that point into memory a [`Prepared`] keeps alive. Only this module makes them.
#[derive(Clone, Copy)]
pub(crate) struct LiveIovecs<'a>(&'a [IoVec]);

impl LiveIovecs<'_> {
    /// The segments.
    pub(crate) fn as_slice(&self) -> &[IoVec] {
        self.0
    }
}

/// What one system call (or SQE) of an op does.
pub(crate) enum Request<'a> {
    /// preadv.
    Read {
        which: Which,
        offset: u64,
        iovs: LiveIovecs<'a>,
        /// The fixed buffer slot the caller's buffers claim to lie in.
        fixed: Option<u32>,
    },
    /// pwritev.
    Write {
        which: Which,
        offset: u64,
        iovs: LiveIovecs<'a>,
        /// As for reads.
        fixed: Option<u32>,
    },
    /// fdatasync.
    Sync,
    /// fallocate with `mode`.
    Fallocate { mode: i32, offset: u64, len: u64 },
    /// The BLKDISCARD ioctl (no io_uring equivalent: always executed synchronously).
    BlkDiscard { offset: u64, len: u64 },
}

/// What happens after one system call of an op.
pub(crate) enum Step {
    /// Issue [`Prepared::request`] again (remainder of a short transfer, retry, fallback).
    Again,
    /// The op is finished.
    Done(Result<(), Error>),
}

/// Result of [`prepare`].
pub(crate) enum Prep {
    /// The op needs I/O.
    Run(Prepared),
    /// The op finished without I/O (empty, refused, invalid).
    Finished(Result<(), Error>),
}

/// An op in progress.
pub(crate) struct Prepared {
    tag: u64,
    action: Action,
    which: Which,
    offset: u64,
    iovs: Vec<IoVec>,
    first: usize,
    done: usize,
    total: usize,
    align: usize,
    guest: Option<Box<dyn IoBuffers>>,
    bounce: Option<AlignedBuf>,
    /// The caller's fixed buffer slot hint (never set with a bounce buffer).
    fixed: Option<u32>,
    retries: u8,
    punch_fallback: bool,
    /// A zeroing or discard followed by an fdatasync before it completes (the O_DSYNC cache
    /// modes: fallocate and BLKDISCARD are not covered by O_DSYNC).
    sync_after: bool,
    /// That fdatasync is the next (or current) system call.
    syncing: bool,
    /// The recorder's mark of a flush (see `record.rs`).
    sync_mark: u64,
}

/// Like [`prepare`], but a read or write always uses the page-cached descriptor: format
/// metadata, which the formats also read and write through the page cache (so it needs no
/// O_DIRECT alignment and never bounces).
pub(crate) fn prepare_buffered(op: IoOp, tag: u64, file: &EngineFile) -> Prep {
    if op.is_modifying() && file.read_only() {
        return Prep::Finished(Err(Error::ReadOnly));
    }
    match op {
        IoOp::Read { offset, bufs } => prepare_rw(Action::Read, offset, bufs, tag, None),
        IoOp::Write { offset, bufs } => prepare_rw(Action::Write, offset, bufs, tag, None),
        op => prepare(op, tag, file),
    }
}

/// Checks `op` against the file and builds its state, bouncing misaligned direct I/O.
pub(crate) fn prepare(op: IoOp, tag: u64, file: &EngineFile) -> Prep {
    if op.is_modifying() && file.read_only() {
        return Prep::Finished(Err(Error::ReadOnly));
    }
    match op {
        IoOp::Read { offset, bufs } => prepare_rw(Action::Read, offset, bufs, tag, Some(file)),
        IoOp::Write { offset, bufs } => prepare_rw(Action::Write, offset, bufs, tag, Some(file)),
        // `unsafe`: nothing is ever synced.
        IoOp::Flush if !file.cache().syncs() => Prep::Finished(Ok(())),
        IoOp::Flush => Prep::Run(Prepared::bare(tag, Action::Sync, 0)),
        IoOp::Discard { offset, len } => {
            let action = match file.kind() {
                FileKind::Regular => Action::Fallocate {
                    mode: PUNCH_HOLE,
                    len,
                },
                FileKind::BlockDevice => Action::BlkDiscard { len },
            };
            prepare_range(action, (offset, len), tag, false, file.cache().dsync())
        }
        IoOp::WriteZeroes { offset, len } => {
            let action = Action::Fallocate {
                mode: ZERO_RANGE,
                len,
            };
            let punch_fallback = file.kind() == FileKind::Regular;
            let sync_after = file.cache().dsync();
            prepare_range(action, (offset, len), tag, punch_fallback, sync_after)
        }
    }
}

const PUNCH_HOLE: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
const ZERO_RANGE: i32 = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;

/// True if `offset + len` stays within what the kernel accepts as a file position.
fn fits_off_t(offset: u64, len: u64) -> bool {
    offset
        .checked_add(len)
        .is_some_and(|end| i64::try_from(end).is_ok())
}

fn invalid(what: &str) -> Prep {
    Prep::Finished(Err(Error::InvalidArgument(what.to_owned())))
}

fn prepare_range(
    action: Action,
    (offset, len): (u64, u64),
    tag: u64,
    punch_fallback: bool,
    sync_after: bool,
) -> Prep {
    if len == 0 {
        return Prep::Finished(Ok(()));
    }
    if !fits_off_t(offset, len) {
        return invalid("range beyond the largest file offset");
    }
    let mut p = Prepared::bare(tag, action, offset);
    p.punch_fallback = punch_fallback;
    p.sync_after = sync_after;
    Prep::Run(p)
}

/// A read or write; `direct` is the file when the op may use its O_DIRECT descriptor.
fn prepare_rw(
    action: Action,
    offset: u64,
    bufs: Box<dyn IoBuffers>,
    tag: u64,
    direct: Option<&EngineFile>,
) -> Prep {
    let Some(total) = total_len(bufs.iovecs()) else {
        return invalid("buffer length overflows");
    };
    if total == 0 {
        return Prep::Finished(Ok(()));
    }
    if !u64::try_from(total).is_ok_and(|len| fits_off_t(offset, len)) {
        return invalid("range beyond the largest file offset");
    }
    let mut p = Prepared::bare(tag, action, offset);
    p.total = total;
    if let Some(file) = direct {
        p.which = file.choose(offset, total);
        p.align = file.dio_offset_align();
    }
    let iovs = bufs.iovecs();
    let memory_ok = match direct {
        Some(file) if p.which == Which::Direct => iovs.iter().all(|iov| file.dio_memory_ok(iov)),
        _ => true,
    };
    if memory_ok && iovs.len() <= IOV_MAX {
        p.iovs = iovs.to_vec();
        p.fixed = bufs.fixed_slot();
    } else {
        if let Some(file) = direct {
            file.note_bounce();
        }
        let mut bounce = AlignedBuf::zeroed(total);
        if matches!(action, Action::Write) {
            gather(&*bufs, bounce.as_mut_slice());
        }
        p.iovs = bounce.iovecs().to_vec();
        p.bounce = Some(bounce);
    }
    p.guest = Some(bufs);
    Prep::Run(p)
}

impl Prepared {
    fn bare(tag: u64, action: Action, offset: u64) -> Prepared {
        Prepared {
            tag,
            action,
            which: Which::Buffered,
            offset,
            iovs: Vec::new(),
            first: 0,
            done: 0,
            total: 0,
            align: 1,
            guest: None,
            bounce: None,
            fixed: None,
            retries: 0,
            punch_fallback: false,
            sync_after: false,
            syncing: false,
            sync_mark: 0,
        }
    }

    /// The caller's tag.
    pub(crate) fn tag(&self) -> u64 {
        self.tag
    }

    /// Takes the recorder's mark for a flush about to be issued (other ops: nothing).
    pub(crate) fn mark_sync(&mut self, recorder: &dyn WriteRecorder) {
        if matches!(self.action, Action::Sync) {
            self.sync_mark = recorder.sync_begin();
        }
    }

    /// Tells `recorder` what this successfully finished op did to the file.
    pub(crate) fn report(&self, recorder: &dyn WriteRecorder) {
        match self.action {
            Action::Read => {}
            Action::Write => {
                // `offset` advanced by `total` bytes on the way to completion.
                let start = self.offset.saturating_sub(self.total as u64);
                match (&self.bounce, &self.guest) {
                    (Some(bounce), _) => recorder.written(start, bounce.as_slice()),
                    (None, Some(guest)) => {
                        let mut data = vec![0u8; self.total];
                        let got = gather(&**guest, &mut data);
                        data.truncate(got);
                        recorder.written(start, &data);
                    }
                    (None, None) => {}
                }
            }
            Action::Sync => recorder.synced(self.sync_mark),
            Action::Fallocate { len, .. } | Action::BlkDiscard { len } => {
                recorder.zeroed(self.offset, len);
            }
        }
    }

    /// True for an fdatasync (a flush).
    #[cfg(test)]
    pub(crate) fn is_flush(&self) -> bool {
        matches!(self.action, Action::Sync)
    }

    /// Tests: true if the op is a read starting at `offset`.
    #[cfg(test)]
    pub(crate) fn is_read_at(&self, offset: u64) -> bool {
        matches!(self.action, Action::Read) && self.offset == offset && self.done == 0
    }

    /// True if the op has no io_uring form and must run synchronously.
    pub(crate) fn is_blocking_ioctl(&self) -> bool {
        matches!(self.action, Action::BlkDiscard { .. }) && !self.syncing
    }

    /// The system call to issue next.
    pub(crate) fn request(&self) -> Request<'_> {
        if self.syncing {
            return Request::Sync;
        }
        let iovs = LiveIovecs(self.iovs.get(self.first..).unwrap_or_default());
        let (which, offset, fixed) = (self.which, self.offset, self.fixed);
        match self.action {
            Action::Read => Request::Read {
                which,
                offset,
                iovs,
                fixed,
            },
            Action::Write => Request::Write {
                which,
                offset,
                iovs,
                fixed,
            },
            Action::Sync => Request::Sync,
            Action::Fallocate { mode, len } => Request::Fallocate { mode, offset, len },
            Action::BlkDiscard { len } => Request::BlkDiscard { offset, len },
        }
    }

    /// Feeds the result of one system call (bytes, or a negative errno).
    pub(crate) fn on_result(&mut self, res: i64) -> Step {
        if res < 0 {
            let errno = res
                .checked_neg()
                .and_then(|e| i32::try_from(e).ok())
                .unwrap_or(libc::EIO);
            return self.on_error(errno);
        }
        match self.action {
            Action::Read | Action::Write => {
                self.on_transfer(usize::try_from(res).unwrap_or(usize::MAX))
            }
            _ if self.sync_after && !self.syncing => {
                self.syncing = true;
                self.retries = 0;
                Step::Again
            }
            _ => self.finish(Ok(())),
        }
    }

    fn on_error(&mut self, errno: i32) -> Step {
        match errno {
            libc::EAGAIN | libc::EINTR | libc::ECANCELED if self.retries < MAX_RETRIES => {
                self.retries += 1;
                Step::Again
            }
            libc::EOPNOTSUPP if self.punch_fallback && !self.syncing => {
                self.punch_fallback = false;
                if let Action::Fallocate { len, .. } = self.action {
                    self.action = Action::Fallocate {
                        mode: PUNCH_HOLE,
                        len,
                    };
                }
                Step::Again
            }
            _ => self.finish(Err(Error::from_errno(errno))),
        }
    }

    fn on_transfer(&mut self, n: usize) -> Step {
        let left = self.total - self.done;
        if n == 0 {
            return match self.action {
                Action::Read => self.zero_fill_to_end(),
                _ => self.finish(Err(Error::from_errno(libc::EIO))),
            };
        }
        let n = n.min(left);
        self.done += n;
        self.offset = self.offset.saturating_add(n as u64);
        self.advance(n);
        if self.done == self.total {
            return self.finish(Ok(()));
        }
        if n % self.align != 0 {
            // The remainder is no longer aligned for O_DIRECT.
            self.which = Which::Buffered;
        }
        self.retries = 0;
        Step::Again
    }

    /// A read hit end of file: the rest reads as zeros.
    fn zero_fill_to_end(&mut self) -> Step {
        if self.bounce.is_none() {
            if let Some(guest) = &self.guest {
                zero_from(&**guest, self.done);
            }
        }
        // A bounce buffer was allocated zeroed and the kernel filled only its first `done` bytes.
        self.finish(Ok(()))
    }

    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(iov) = self.iovs.get_mut(self.first) else {
                return;
            };
            if n >= iov.len {
                n -= iov.len;
                self.first += 1;
            } else {
                iov.base = iov.base.wrapping_add(n);
                iov.len -= n;
                n = 0;
            }
        }
    }

    fn finish(&mut self, result: Result<(), Error>) -> Step {
        if result.is_ok() && matches!(self.action, Action::Read) {
            if let (Some(bounce), Some(guest)) = (&self.bounce, &self.guest) {
                scatter(&**guest, 0, bounce.as_slice());
            }
        }
        Step::Done(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::SharedBuf;
    use crate::cache::CacheMode;

    fn file(cache: CacheMode) -> (tempfile::TempDir, EngineFile) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f.img");
        crate::create_raw(&path, 1 << 20).expect("create");
        let file = EngineFile::open(&path, crate::engine::Access::ReadWrite, cache).expect("open");
        (dir, file)
    }

    fn run(op: IoOp, file: &EngineFile) -> Prepared {
        match prepare(op, 1, file) {
            Prep::Run(p) => p,
            Prep::Finished(r) => panic!("finished early: {r:?}"),
        }
    }

    fn lens(p: &Prepared) -> Vec<usize> {
        match p.request() {
            Request::Read { iovs, .. } | Request::Write { iovs, .. } => {
                iovs.as_slice().iter().map(|i| i.len).collect()
            }
            _ => Vec::new(),
        }
    }

    #[test]
    fn short_transfer_resubmits_the_remainder_at_the_advanced_offset() {
        let (_dir, f) = file(CacheMode::Writeback);
        let buf = SharedBuf::with_segments(3000, &[(0, 1000), (1000, 2000)]).expect("segments");
        let mut p = run(
            IoOp::Read {
                offset: 100,
                bufs: Box::new(buf),
            },
            &f,
        );
        assert!(matches!(p.on_result(1500), Step::Again));
        assert_eq!(lens(&p), vec![1500]);
        assert!(matches!(p.request(), Request::Read { offset: 1600, .. }));
        assert!(matches!(p.on_result(1500), Step::Done(Ok(()))));
    }

    #[test]
    fn read_hitting_end_of_file_zero_fills_the_rest() {
        let (_dir, f) = file(CacheMode::Writeback);
        let buf = SharedBuf::new(8);
        assert!(buf.copy_in(0, &[9; 8]));
        let mut p = run(
            IoOp::Read {
                offset: 0,
                bufs: Box::new(buf.clone()),
            },
            &f,
        );
        assert!(matches!(p.on_result(3), Step::Again));
        assert!(matches!(p.on_result(0), Step::Done(Ok(()))));
        assert_eq!(buf.copy_out(), [9, 9, 9, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn write_making_no_progress_fails_with_eio() {
        let (_dir, f) = file(CacheMode::Writeback);
        let mut p = run(
            IoOp::Write {
                offset: 0,
                bufs: Box::new(SharedBuf::new(512)),
            },
            &f,
        );
        let Step::Done(Err(e)) = p.on_result(0) else {
            panic!("no error")
        };
        assert_eq!(e.errno(), libc::EIO);
    }

    #[test]
    fn transient_errors_are_retried_a_bounded_number_of_times() {
        let (_dir, f) = file(CacheMode::Writeback);
        let mut p = run(IoOp::Flush, &f);
        for _ in 0..MAX_RETRIES {
            assert!(matches!(p.on_result(-i64::from(libc::EAGAIN)), Step::Again));
        }
        let Step::Done(Err(e)) = p.on_result(-i64::from(libc::EINTR)) else {
            panic!("retried forever")
        };
        assert_eq!(e.errno(), libc::EINTR);
    }

    #[test]
    fn unsupported_zero_range_on_a_file_falls_back_to_punch_hole() {
        let (_dir, f) = file(CacheMode::Writeback);
        let mut p = run(
            IoOp::WriteZeroes {
                offset: 0,
                len: 4096,
            },
            &f,
        );
        assert!(matches!(
            p.request(),
            Request::Fallocate {
                mode: ZERO_RANGE,
                ..
            }
        ));
        assert!(matches!(
            p.on_result(-i64::from(libc::EOPNOTSUPP)),
            Step::Again
        ));
        assert!(matches!(
            p.request(),
            Request::Fallocate {
                mode: PUNCH_HOLE,
                offset: 0,
                len: 4096
            }
        ));
        let Step::Done(Err(e)) = p.on_result(-i64::from(libc::EOPNOTSUPP)) else {
            panic!("no error")
        };
        assert_eq!(e.errno(), libc::EOPNOTSUPP);
    }

    #[test]
    fn unaligned_short_direct_transfer_continues_through_the_page_cache() {
        let (_dir, f) = file(CacheMode::None);
        let mut p = run(
            IoOp::Read {
                offset: 0,
                bufs: Box::new(SharedBuf::new(8192)),
            },
            &f,
        );
        assert!(matches!(
            p.request(),
            Request::Read {
                which: Which::Direct,
                ..
            }
        ));
        assert!(matches!(p.on_result(100), Step::Again));
        assert!(matches!(
            p.request(),
            Request::Read {
                which: Which::Buffered,
                offset: 100,
                ..
            }
        ));
    }

    #[test]
    fn read_only_file_refuses_writes_before_any_io() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f.img");
        crate::create_raw(&path, 4096).expect("create");
        let access = crate::engine::Access::ReadOnly;
        let f = EngineFile::open(&path, access, CacheMode::Writeback).expect("open");
        let refused = prepare(
            IoOp::Discard {
                offset: 0,
                len: 512,
            },
            1,
            &f,
        );
        assert!(matches!(refused, Prep::Finished(Err(Error::ReadOnly))));
    }

    #[test]
    fn a_flush_in_unsafe_mode_completes_without_any_system_call() {
        let (_dir, f) = file(CacheMode::Unsafe);
        assert!(matches!(
            prepare(IoOp::Flush, 1, &f),
            Prep::Finished(Ok(()))
        ));
        let (_dir, f) = file(CacheMode::Writeback);
        assert!(matches!(prepare(IoOp::Flush, 1, &f), Prep::Run(_)));
    }

    #[test]
    fn zeroing_in_an_o_dsync_mode_is_followed_by_an_fdatasync() {
        for cache in CacheMode::ALL {
            let (_dir, f) = file(cache);
            let zero = IoOp::WriteZeroes {
                offset: 0,
                len: 4096,
            };
            let mut p = run(zero, &f);
            assert!(matches!(p.request(), Request::Fallocate { .. }));
            let step = p.on_result(0);
            if !cache.dsync() {
                assert!(matches!(step, Step::Done(Ok(()))), "{cache}");
                continue;
            }
            assert!(matches!(step, Step::Again), "{cache}");
            assert!(matches!(p.request(), Request::Sync), "{cache}");
            let Step::Done(Err(e)) = p.on_result(-i64::from(libc::EIO)) else {
                panic!("{cache}: a failed sync must fail the zeroing")
            };
            assert_eq!(e.errno(), libc::EIO);
        }
    }
}
