//! Crash consistency of the checker's repairs by replay: every write, fdatasync and resize a
//! repair makes is recorded, then the file is rebuilt as a crash at each point could leave
//! it (nothing lost, unsynced writes lost, the last unsynced write torn half way) and
//! opened. Every such file must open and read the guest's bytes, and check with no more
//! corruptions or leaks than before the repair (clean once the repair is complete).

use std::sync::{Arc, Mutex};

use crate::engine::WriteRecorder;
use crate::qcow2::check::Repair;
use crate::suite::assert_bytes;
use crate::vhd::check::{VhdCheckOptions, check};

use super::check::{SIZE, contents, leak_tail, read, size, write, written};
use super::{open, read_all, temp};

#[derive(Clone, Debug)]
enum Event {
    Write(u64, Vec<u8>),
    SyncBegin,
    Synced(u64),
    Truncated(u64),
}

#[derive(Debug, Default)]
struct Log(Mutex<Vec<Event>>);

impl Log {
    fn push(&self, e: Event) -> u64 {
        let mut log = self.0.lock().expect("log");
        log.push(e);
        log.len() as u64 - 1
    }
}

impl WriteRecorder for Log {
    fn written(&self, offset: u64, data: &[u8]) {
        self.push(Event::Write(offset, data.to_vec()));
    }
    fn zeroed(&self, offset: u64, len: u64) {
        self.push(Event::Write(offset, vec![0; len as usize]));
    }
    fn sync_begin(&self) -> u64 {
        self.push(Event::SyncBegin)
    }
    fn synced(&self, mark: u64) {
        self.push(Event::Synced(mark));
    }
    fn truncated(&self, len: u64) {
        self.push(Event::Truncated(len));
    }
}

#[derive(Clone, Copy, Debug)]
enum Loss {
    None,
    Unsynced,
    Torn,
}

/// The file a crash after `cut` events leaves with `loss`.
fn crashed(initial: &[u8], events: &[Event], cut: usize, loss: Loss) -> Vec<u8> {
    let durable = events[..cut]
        .iter()
        .filter_map(|e| match e {
            Event::Synced(mark) => Some(*mark as usize),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    let last_write = events[..cut]
        .iter()
        .rposition(|e| matches!(e, Event::Write(..)));
    let mut file = initial.to_vec();
    for (i, e) in events[..cut].iter().enumerate() {
        match e {
            Event::Write(off, data) => {
                let kept = match loss {
                    Loss::Unsynced if i > durable => 0,
                    Loss::Torn if Some(i) == last_write && i > durable => data.len() / 2,
                    _ => data.len(),
                };
                let (off, data) = (*off as usize, &data[..kept]);
                if file.len() < off + data.len() {
                    file.resize(off + data.len(), 0);
                }
                file[off..off + data.len()].copy_from_slice(data);
            }
            Event::Truncated(len) => file.resize(*len as usize, 0),
            Event::SyncBegin | Event::Synced(_) => {}
        }
    }
    file
}

/// Repairs the image at `path` with `repair` under a recorder; returns the events.
fn recorded_repair(path: &std::path::Path, repair: Repair) -> Vec<Event> {
    let log = Arc::new(Log::default());
    let opts = VhdCheckOptions {
        repair,
        recorder: Some(log.clone()),
        ..VhdCheckOptions::default()
    };
    let r = check(path, &opts).expect("repair");
    assert!(r.is_clean(), "the repair itself succeeds: {r:?}");
    let events = log.0.lock().expect("log").clone();
    assert!(
        events.iter().any(|e| matches!(e, Event::Write(..))),
        "{r:?}"
    );
    events
}

/// Replays every crash point of `repair` on the image at `path` (damaged by `damage`).
fn every_cut_is_valid(name: &str, repair: Repair, damage: impl FnOnce(&std::path::Path)) {
    let (dir, path) = temp(name);
    let model = written(&path);
    damage(&path);
    let initial = std::fs::read(&path).expect("read");
    let before = check(&path, &VhdCheckOptions::default()).expect("check");
    assert!(!before.is_clean(), "{name}: the damage is found");
    let events = recorded_repair(&path, repair);
    let replayed = dir.path().join("replayed.vhd");
    let mut states = 0;
    for cut in 0..=events.len() {
        for loss in [Loss::None, Loss::Unsynced, Loss::Torn] {
            std::fs::write(&replayed, crashed(&initial, &events, cut, loss)).expect("write");
            let image = open(&replayed, true);
            let mut q = image.open_queue(4).expect("queue");
            let what = format!(
                "{name}: crash after {cut} of {} events, {loss:?}",
                events.len()
            );
            assert_bytes(&read_all(&mut *q, SIZE, 1 << 20), &model, &what);
            drop(q);
            drop(image);
            let r = check(&replayed, &VhdCheckOptions::default()).expect("check");
            assert!(r.corruptions <= before.corruptions, "{what}: {r:?}");
            assert!(r.leaks <= before.leaks, "{what}: {r:?}");
            if cut == events.len() && matches!(loss, Loss::None) {
                assert!(r.is_clean(), "{what}: {r:?}");
            }
            states += 1;
        }
    }
    assert!(states >= 9);
    assert_bytes(&contents(&path), &model, name);
}

#[test]
fn a_crash_anywhere_in_the_leak_repair_leaves_a_valid_image() {
    every_cut_is_valid("leak", Repair::Leaks, |p| {
        leak_tail(p, 3 * ((2 << 20) + 512))
    });
}

#[test]
fn a_crash_anywhere_in_restoring_the_end_footer_leaves_a_valid_image() {
    every_cut_is_valid("end", Repair::All, |p| {
        let end = size(p);
        let mut footer = read(p, end - 512, 512);
        footer[70] ^= 0xff;
        write(p, end - 512, &footer);
    });
}

#[test]
fn a_crash_anywhere_in_restoring_the_footer_copy_leaves_a_valid_image() {
    every_cut_is_valid("copy", Repair::All, |p| write(p, 8, b"damaged"));
}
