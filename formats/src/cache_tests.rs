//! What each cache mode syncs, seen by the engine's write recorder: every fdatasync the
//! image's file gets is reported, so these tests see the syncs a page-cache mode relies on
//! (which a killed process would not reveal: its page cache survives it).

use std::path::Path;
use std::sync::Arc;

use crate::engine::record::tests::{Event, Log, run_one};
use crate::image::{EngineKind, Format, IoOp, OpenOptions};
use crate::{BlockImage, CacheMode, SharedBuf, create_raw, open_image};

const ENGINES: [EngineKind; 2] = [EngineKind::IoUring, EngineKind::Sync];

fn open(
    path: &Path,
    format: Format,
    cache: CacheMode,
    engine: EngineKind,
) -> (Arc<Log>, Arc<dyn BlockImage>) {
    let log = Arc::new(Log::default());
    let opts = OpenOptions {
        engine,
        cache,
        recorder: Some(log.clone()),
        ..OpenOptions::default()
    };
    let image = open_image(path, format, &opts).expect("open");
    (log, image)
}

fn write(offset: u64, byte: u8, len: usize) -> IoOp {
    let buf = SharedBuf::new(len);
    assert!(buf.copy_in(0, &vec![byte; len]));
    IoOp::Write {
        offset,
        bufs: Box::new(buf),
    }
}

fn syncs(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Event::SyncBegin(_)))
        .count()
}

fn new_qcow2(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let path = dir.path().join("disk.qcow2");
    let opts = crate::qcow2::CreateOptions {
        cluster_size: 65536,
        ..crate::qcow2::CreateOptions::default()
    };
    crate::qcow2::create(&path, 16 << 20, &opts).expect("create qcow2");
    path
}

#[test]
fn a_raw_flush_is_an_fdatasync_after_the_acknowledged_writes_in_every_mode_but_unsafe() {
    for cache in CacheMode::ALL {
        for engine in ENGINES {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("disk.raw");
            create_raw(&path, 1 << 20).expect("create");
            let (log, image) = open(&path, Format::Raw, cache, engine);
            let mut q = image.open_queue(4).expect("queue");
            run_one(&mut *q, write(0, 1, 4096));
            run_one(&mut *q, IoOp::Flush);
            run_one(&mut *q, write(4096, 2, 4096));
            run_one(&mut *q, IoOp::Flush);
            let events = log.take();
            let expected = match cache.syncs() {
                true => vec![
                    Event::Write(0, vec![1; 4096]),
                    Event::SyncBegin(1),
                    Event::Synced(1),
                    Event::Write(4096, vec![2; 4096]),
                    Event::SyncBegin(4),
                    Event::Synced(4),
                ],
                false => vec![
                    Event::Write(0, vec![1; 4096]),
                    Event::Write(4096, vec![2; 4096]),
                ],
            };
            assert_eq!(events, expected, "{cache} on {engine:?}");
        }
    }
}

#[test]
fn qcow2_in_unsafe_mode_never_syncs_not_even_to_order_its_metadata() {
    for cache in [CacheMode::Writeback, CacheMode::Unsafe] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = new_qcow2(&dir);
        let (log, image) = open(&path, Format::Qcow2, cache, EngineKind::Auto);
        let mut q = image.open_queue(4).expect("queue");
        for cluster in 0..8u8 {
            run_one(&mut *q, write(u64::from(cluster) << 16, cluster, 4096));
        }
        run_one(&mut *q, IoOp::Flush);
        drop(q);
        image.sync_metadata().expect("sync metadata");
        drop(image);
        let events = log.take();
        let writes = events
            .iter()
            .filter(|e| matches!(e, Event::Write(..)))
            .count();
        assert!(writes > 8, "{cache}: data and metadata written: {writes}");
        match cache {
            // The flush writes back in the crash-safe order: two fdatasyncs at least.
            CacheMode::Writeback => assert!(syncs(&events) >= 2, "{cache}: {events:?}"),
            _ => assert_eq!(syncs(&events), 0, "{cache}: {events:?}"),
        }
        let image = open(&path, Format::Qcow2, CacheMode::Writeback, EngineKind::Sync).1;
        let mut q = image.open_queue(1).expect("queue");
        let buf = SharedBuf::new(4096);
        let read = IoOp::Read {
            offset: 7 << 16,
            bufs: Box::new(buf.clone()),
        };
        run_one(&mut *q, read);
        assert_eq!(buf.copy_out(), vec![7; 4096], "{cache}: data read back");
    }
}

/// The events of one allocating write, from its submission to its completion.
fn allocating_write(cache: CacheMode, engine: EngineKind) -> Vec<Event> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = new_qcow2(&dir);
    let (log, image) = open(&path, Format::Qcow2, cache, engine);
    let mut q = image.open_queue(4).expect("queue");
    log.take();
    run_one(&mut *q, write(3 << 16, 3, 4096));
    log.take()
}

#[test]
fn qcow2_in_o_dsync_modes_makes_a_new_mapping_durable_before_the_write_completes() {
    for cache in CacheMode::ALL {
        for engine in ENGINES {
            let events = allocating_write(cache, engine);
            let data = events
                .iter()
                .position(
                    |e| matches!(e, Event::Write(o, d) if *o != 0 && d.len() == 4096 && d[0] == 3),
                )
                .unwrap_or_else(|| panic!("{cache}: no data write in {events:?}"));
            if !cache.dsync() {
                assert_eq!(syncs(&events), 0, "{cache} {engine:?}: {events:?}");
                continue;
            }
            // Data, then sync; then the L2 entry written, then sync, all before completion.
            let last_sync = events
                .iter()
                .rposition(|e| matches!(e, Event::Synced(_)))
                .unwrap_or_else(|| panic!("{cache}: no sync in {events:?}"));
            let metadata_after_data = events[data + 1..last_sync]
                .iter()
                .any(|e| matches!(e, Event::Write(..)));
            assert!(syncs(&events) >= 2, "{cache} {engine:?}: {events:?}");
            assert!(metadata_after_data, "{cache} {engine:?}: {events:?}");
        }
    }
}
