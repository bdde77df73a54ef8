//! Crash ordering: the metadata writes and flushes of allocating writes, recorded.

use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use crate::Error;
use crate::engine::EngineFile;
use crate::image::{BlockImage, EngineKind, IoOp};
use crate::qcow2::layout::small;
use crate::qcow2::metaio::{FileIo, MetaIo, MetaKind};
use crate::qcow2::{Chain, CreateOptions, Qcow2Image, create};
use crate::suite::{pattern, run, write_at};

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
}

impl MetaIo for Recorder {
    fn read(&self, kind: MetaKind, offset: u64, buf: &mut [u8]) -> Result<usize, Error> {
        self.inner.read(kind, offset, buf)
    }

    fn write(&self, kind: MetaKind, offset: u64, data: &[u8]) -> Result<(), Error> {
        self.log
            .lock()
            .expect("log")
            .push(Event::Write(kind, offset, data.len()));
        self.inner.write(kind, offset, data)
    }

    fn sync(&self) -> Result<(), Error> {
        let mut found = vec![0u8; self.expect.len()];
        let at = *self.expect_at.lock().expect("at");
        let data_in_file = !self.expect.is_empty()
            && self.file.read_exact_at(&mut found, at).is_ok()
            && found == self.expect;
        self.log
            .lock()
            .expect("log")
            .push(Event::Sync { data_in_file });
        self.inner.sync()
    }

    fn size(&self) -> Result<u64, Error> {
        self.inner.size()
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    image: Qcow2Image,
    log: Arc<Mutex<Vec<Event>>>,
    expect_at: Arc<Mutex<u64>>,
}

const CS: u64 = 65536;

/// A fresh 1 MiB image (header, refcount table, L1 table, refcount block: clusters 0..=3).
fn rig(data: &[u8]) -> Rig {
    let (dir, path) = temp("o.qcow2");
    create(&path, 1 << 20, &CreateOptions::default()).expect("create");
    let o = opts(false, EngineKind::Sync);
    let file = Arc::new(EngineFile::open(&path, false, false).expect("open"));
    let log = Arc::new(Mutex::new(Vec::new()));
    let expect_at = Arc::new(Mutex::new(0));
    let io = Recorder {
        inner: FileIo(file.clone()),
        file: std::fs::File::open(&path).expect("open"),
        log: log.clone(),
        expect: data.to_vec(),
        expect_at: expect_at.clone(),
    };
    let image =
        Qcow2Image::open_with_io(file, Arc::new(io), &o, &mut Chain::default()).expect("qcow2");
    Rig {
        _dir: dir,
        path,
        image,
        log,
        expect_at,
    }
}

fn take(log: &Mutex<Vec<Event>>) -> Vec<Event> {
    std::mem::take(&mut *log.lock().expect("log"))
}

#[test]
fn first_write_orders_data_and_new_table_then_refcounts_then_l1() {
    let data = pattern(1, 4096);
    let r = rig(&data);
    // Cluster 4 becomes the L2 table, cluster 5 the data cluster.
    *r.expect_at.lock().expect("at") = 5 * CS;
    let mut q = r.image.open_queue(4).expect("queue");
    take(&r.log);
    write_at(&mut *q, 0, &data).expect("write");
    let events = take(&r.log);
    let refblock = 3 * CS;
    assert_eq!(
        events,
        vec![
            Event::Write(MetaKind::L2, 4 * CS, small(CS)),
            Event::Write(MetaKind::L2, 4 * CS, 8),
            Event::Sync { data_in_file: true },
            Event::Write(MetaKind::Refblock, refblock + 8, 4),
            Event::Sync { data_in_file: true },
            Event::Write(MetaKind::L1, 2 * CS, 8),
        ]
    );
    drop(q);
    drop(r.image);
    check_clean(&r.path);
}

#[test]
fn write_into_an_existing_table_flushes_refcount_before_the_l2_entry() {
    let data = pattern(2, 512);
    let r = rig(&data);
    let mut q = r.image.open_queue(4).expect("queue");
    write_at(&mut *q, 0, &pattern(3, 4096)).expect("first write");
    *r.expect_at.lock().expect("at") = 6 * CS + 1024;
    take(&r.log);
    write_at(&mut *q, CS + 1024, &data).expect("second write");
    let events = take(&r.log);
    assert_eq!(
        events,
        vec![
            Event::Sync { data_in_file: true },
            Event::Write(MetaKind::Refblock, 3 * CS + 12, 2),
            Event::Sync { data_in_file: true },
            Event::Write(MetaKind::L2, 4 * CS + 8, 8),
        ]
    );
    // An overwrite in place touches no metadata at all.
    write_at(&mut *q, CS, &data).expect("overwrite");
    assert!(take(&r.log).is_empty());
    run(&mut *q, IoOp::Flush).expect("flush");
    assert_eq!(
        take(&r.log),
        vec![],
        "flush of clean metadata is the engine's fdatasync only"
    );
}

#[test]
fn discard_makes_the_entry_durable_before_freeing_the_cluster() {
    let r = rig(&[]);
    let mut q = r.image.open_queue(4).expect("queue");
    write_at(&mut *q, 0, &pattern(4, small(CS))).expect("write");
    take(&r.log);
    run(&mut *q, IoOp::Discard { offset: 0, len: CS }).expect("discard");
    let events = take(&r.log);
    assert_eq!(
        events,
        vec![
            Event::Write(MetaKind::L2, 4 * CS, 8),
            Event::Sync {
                data_in_file: false
            },
        ],
        "entry cleared, flushed; the refcount drop stays in memory until the next flush"
    );
    run(&mut *q, IoOp::Flush).expect("flush");
    assert_eq!(
        take(&r.log),
        vec![Event::Write(MetaKind::Refblock, 3 * CS + 10, 2)]
    );
    assert!(r.image.features().discard);
    drop(q);
    drop(r.image);
    check_clean(&r.path);
}
