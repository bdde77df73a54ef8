//! One ordered log of the writes, zeroings and syncs of both pool devices, whoever made them
//! (the pool service or a worker), and the crash images built from it.

use std::sync::{Arc, Mutex};

use rustbk_formats::WriteRecorder;

use super::rng::Rng;

/// Writes of the data device are torn at this granularity when they are not durable.
const TEAR: usize = 4096;

/// Which device an event concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Dev {
    Meta,
    Data,
}

/// Who made an event: the pool (the service's process) or the worker of a volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Source {
    Pool,
    Worker(u64),
}

#[derive(Clone, Debug)]
pub(super) enum Kind {
    Write {
        offset: u64,
        data: Vec<u8>,
    },
    Zero {
        offset: u64,
        len: u64,
    },
    /// An fdatasync completed: the device's events before index `mark` are durable.
    Sync {
        mark: usize,
    },
}

#[derive(Clone, Debug)]
pub(super) struct Event {
    pub dev: Dev,
    pub source: Source,
    pub kind: Kind,
}

/// The log. Once frozen it takes no more events (what a dead worker's drop does is not part
/// of the recording).
#[derive(Debug, Default)]
pub(super) struct Log {
    inner: Mutex<(Vec<Event>, bool)>,
}

impl Log {
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().0.len()
    }

    fn push(&self, event: Event) {
        let mut inner = self.inner.lock().unwrap();
        if !inner.1 {
            inner.0.push(event);
        }
    }

    /// Stops recording; returns the events.
    pub fn freeze(&self) -> Vec<Event> {
        let mut inner = self.inner.lock().unwrap();
        inner.1 = true;
        inner.0.clone()
    }
}

/// A recorder for one device as one source sees it.
#[derive(Debug)]
pub(super) struct DevRecorder {
    pub log: Arc<Log>,
    pub dev: Dev,
    pub source: Source,
}

impl DevRecorder {
    pub fn new(log: &Arc<Log>, dev: Dev, source: Source) -> Arc<DevRecorder> {
        let log = log.clone();
        Arc::new(DevRecorder { log, dev, source })
    }

    fn push(&self, kind: Kind) {
        self.log.push(Event {
            dev: self.dev,
            source: self.source,
            kind,
        });
    }
}

impl WriteRecorder for DevRecorder {
    fn written(&self, offset: u64, data: &[u8]) {
        let data = data.to_vec();
        self.push(Kind::Write { offset, data });
    }

    fn zeroed(&self, offset: u64, len: u64) {
        self.push(Kind::Zero { offset, len });
    }

    fn sync_begin(&self) -> u64 {
        self.log.len() as u64
    }

    fn synced(&self, mark: u64) {
        let mark = usize::try_from(mark).unwrap();
        self.push(Kind::Sync { mark });
    }
}

/// Where a crash happens: power is cut once `cut` events completed; with `service_dead_at`,
/// the service was killed when that many events had completed, so none of its later events
/// (metadata writes, its syncs of the data device) happened.
#[derive(Clone, Copy, Debug)]
pub(super) struct Crash {
    pub cut: usize,
    pub service_dead_at: Option<usize>,
}

impl Crash {
    fn happened(&self, i: usize, e: &Event) -> bool {
        let dead = self
            .service_dead_at
            .is_some_and(|n| i >= n && e.source == Source::Pool);
        i < self.cut && !dead
    }
}

/// The two device images after `crash`: every event before the last sync of its device
/// lands; each later one lands, lands torn (data writes, in 4 KiB pieces) or not at all.
/// Also returns how many events were left out or torn.
pub(super) fn crash_images(
    events: &[Event],
    sizes: (usize, usize),
    crash: Crash,
    rng: &mut Rng,
) -> ([Vec<u8>; 2], usize) {
    let mut images = [vec![0u8; sizes.0], vec![0u8; sizes.1]];
    let mut durable = [0usize; 2];
    for (i, e) in events.iter().enumerate() {
        if let (true, Kind::Sync { mark }) = (crash.happened(i, e), &e.kind) {
            let d = &mut durable[e.dev as usize];
            *d = (*d).max(*mark);
        }
    }
    let mut dropped = 0;
    for (i, e) in events.iter().enumerate() {
        if !crash.happened(i, e) || matches!(e.kind, Kind::Sync { .. }) {
            continue;
        }
        let image = &mut images[e.dev as usize];
        if i < durable[e.dev as usize] {
            apply(image, &e.kind, None);
            continue;
        }
        dropped += 1;
        match rng.below(4) {
            0 | 1 => {}
            2 if e.dev == Dev::Data => apply(image, &e.kind, Some(rng)),
            _ => {
                apply(image, &e.kind, None);
                dropped -= 1;
            }
        }
    }
    (images, dropped)
}

/// Applies a write or zeroing; with `tear`, each 4 KiB piece of a write lands or not.
fn apply(image: &mut [u8], kind: &Kind, mut tear: Option<&mut Rng>) {
    match kind {
        Kind::Write { offset, data } => {
            let at = usize::try_from(*offset).unwrap();
            for (i, piece) in data.chunks(TEAR).enumerate() {
                if tear.as_mut().is_none_or(|rng| rng.below(2) == 0) {
                    let start = at + i * TEAR;
                    image[start..start + piece.len()].copy_from_slice(piece);
                }
            }
        }
        Kind::Zero { offset, len } => {
            let start = usize::try_from(*offset).unwrap().min(image.len());
            let end = usize::try_from(offset + len).unwrap().min(image.len());
            image[start..end].fill(0);
        }
        Kind::Sync { .. } => {}
    }
}

/// Indices just after each completed metadata sync at or after `from`: the commit points.
pub(super) fn commit_points(events: &[Event], from: usize) -> Vec<usize> {
    let syncs = events.iter().enumerate().skip(from);
    syncs
        .filter(|(_, e)| e.dev == Dev::Meta && matches!(e.kind, Kind::Sync { .. }))
        .map(|(i, _)| i + 1)
        .collect()
}
