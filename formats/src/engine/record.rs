//! A test hook: report every completed modification and flush of an image file.
//!
//! Crash-consistency tests install a [`WriteRecorder`] through
//! [`OpenOptions::recorder`](crate::OpenOptions::recorder) (or [`EngineFile::set_recorder`]).
//! The engine then reports, for the writable file of the image only:
//!
//! * every completed guest-data write (io_uring or synchronous engine), after the kernel
//!   finished it and before the caller can reap its completion;
//! * every completed metadata write ([`EngineFile::write_all_at`]);
//! * every completed punch hole, zero range or BLKDISCARD (the range reads as zeros);
//! * every fdatasync, in two steps: [`WriteRecorder::sync_begin`] just before it is issued, and
//!   [`WriteRecorder::synced`] with the mark `sync_begin` returned once it completed. Everything
//!   the recorder saw before `sync_begin` is durable when `synced` arrives.
//!   No sync is reported in [`CacheMode::Unsafe`](crate::CacheMode::Unsafe), where none is
//!   issued; the fdatasync that follows a zeroing or discard in the O_DSYNC modes is not
//!   reported either (the zeroing is reported as completed, which is all a model needs).
//!
//! Reports arrive in completion order as this process observes it, from whichever thread
//! completed the op. Ops that fail are not reported (a failed write may still have changed
//! part of its range). Without a recorder the cost is one `Option` test per completion.

use std::fmt::Debug;

use super::file::EngineFile;
use super::prep::Prepared;

/// Receives the modifications and flushes of an image file (see the module docs).
pub trait WriteRecorder: Send + Sync + Debug {
    /// `data` was written at byte `offset` (the file grows if it ends past the end).
    fn written(&self, offset: u64, data: &[u8]);
    /// `[offset, offset + len)` now reads as zeros; the file size did not change.
    fn zeroed(&self, offset: u64, len: u64);
    /// An fdatasync is about to be issued; the mark returned is handed back to [`synced`].
    ///
    /// [`synced`]: WriteRecorder::synced
    fn sync_begin(&self) -> u64;
    /// The fdatasync that [`sync_begin`] returned `mark` for completed successfully.
    ///
    /// [`sync_begin`]: WriteRecorder::sync_begin
    fn synced(&self, mark: u64);
    /// The file was cut (or grown) to `len` bytes, and that length is durable (the resize
    /// is synced before it returns). Recorders that never see a resize may ignore it.
    fn truncated(&self, len: u64) {
        let _ = len;
    }
}

/// Reports a successfully finished engine op to the file's recorder, if it has one.
pub(crate) fn report_op(file: &EngineFile, op: &Prepared) {
    if let Some(recorder) = file.recorder() {
        op.report(recorder);
    }
}

/// Marks a flush about to be issued, if the file has a recorder.
pub(crate) fn mark_sync(file: &EngineFile, op: &mut Prepared) {
    if let Some(recorder) = file.recorder() {
        op.mark_sync(recorder);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{Arc, Mutex};

    use super::WriteRecorder;
    use crate::image::{EngineKind, IoOp, OpenOptions};
    use crate::{SharedBuf, create_raw, open_image};

    /// What a [`Log`] saw.
    #[derive(Debug, PartialEq, Eq)]
    pub(crate) enum Event {
        Write(u64, Vec<u8>),
        Zero(u64, u64),
        SyncBegin(u64),
        Synced(u64),
    }

    /// A recorder keeping every report in order.
    #[derive(Debug, Default)]
    pub(crate) struct Log(pub(crate) Mutex<Vec<Event>>);

    impl Log {
        /// Everything seen so far; the log starts empty again.
        pub(crate) fn take(&self) -> Vec<Event> {
            std::mem::take(&mut *self.0.lock().expect("log"))
        }
    }

    impl WriteRecorder for Log {
        fn written(&self, offset: u64, data: &[u8]) {
            self.0
                .lock()
                .expect("log")
                .push(Event::Write(offset, data.to_vec()));
        }
        fn zeroed(&self, offset: u64, len: u64) {
            self.0.lock().expect("log").push(Event::Zero(offset, len));
        }
        fn sync_begin(&self) -> u64 {
            let mut log = self.0.lock().expect("log");
            let mark = log.len() as u64;
            log.push(Event::SyncBegin(mark));
            mark
        }
        fn synced(&self, mark: u64) {
            self.0.lock().expect("log").push(Event::Synced(mark));
        }
    }

    /// Runs `op` to completion; it must succeed.
    pub(crate) fn run_one(q: &mut dyn crate::ImageQueue, op: IoOp) {
        q.submit(op, 7).expect("submit");
        q.commit().expect("commit");
        let mut done = Vec::new();
        while done.is_empty() {
            q.wait(None).expect("wait");
            q.reap(&mut done);
        }
        assert!(done.iter().all(|c| c.result.is_ok()), "{done:?}");
    }

    #[test]
    fn every_engine_reports_writes_zeroing_and_flushes_in_completion_order() {
        let modes = [
            (EngineKind::IoUring, crate::CacheMode::None),
            (EngineKind::Sync, crate::CacheMode::Writeback),
        ];
        for (engine, cache) in modes {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("r.img");
            create_raw(&path, 1 << 20).expect("create");
            let log = Arc::new(Log::default());
            let opts = OpenOptions {
                engine,
                cache,
                recorder: Some(log.clone()),
                ..OpenOptions::default()
            };
            let image = open_image(&path, crate::Format::Raw, &opts).expect("open");
            let mut q = image.open_queue(4).expect("queue");
            let buf = SharedBuf::new(4096);
            assert!(buf.copy_in(0, &[0xab; 4096]));
            let write = IoOp::Write {
                offset: 8192,
                bufs: Box::new(buf),
            };
            run_one(&mut *q, write);
            run_one(&mut *q, IoOp::Flush);
            let discard = IoOp::Discard {
                offset: 0,
                len: 4096,
            };
            run_one(&mut *q, discard);
            let events = std::mem::take(&mut *log.0.lock().expect("log"));
            assert_eq!(
                events,
                [
                    Event::Write(8192, vec![0xab; 4096]),
                    Event::SyncBegin(1),
                    Event::Synced(1),
                    Event::Zero(0, 4096),
                ],
                "{engine:?}"
            );
        }
    }

    #[test]
    fn metadata_writes_and_datasync_are_reported_and_read_only_opens_record_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.img");
        create_raw(&path, 1 << 20).expect("create");
        let log = Arc::new(Log::default());
        let mut file = crate::EngineFile::open(
            &path,
            crate::engine::Access::ReadWrite,
            crate::CacheMode::Writeback,
        )
        .expect("open");
        file.set_recorder(log.clone());
        file.write_all_at(b"meta", 100).expect("write");
        file.datasync().expect("sync");
        let events = std::mem::take(&mut *log.0.lock().expect("log"));
        assert_eq!(
            events,
            [
                Event::Write(100, b"meta".to_vec()),
                Event::SyncBegin(1),
                Event::Synced(1),
            ]
        );
        drop(file);
        let opts = OpenOptions {
            read_only: true,
            recorder: Some(log.clone()),
            ..OpenOptions::default()
        };
        let image = open_image(&path, crate::Format::Raw, &opts).expect("open read-only");
        let mut q = image.open_queue(2).expect("queue");
        run_one(&mut *q, IoOp::Flush);
        assert!(log.0.lock().expect("log").is_empty());
    }
}
