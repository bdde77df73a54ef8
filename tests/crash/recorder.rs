//! A [`WriteRecorder`] keeping every event, and replaying a crash from the log.

use std::sync::Mutex;

use rustbk_formats::WriteRecorder;

use crate::rng::Rng;

/// One recorded event on the image file.
#[derive(Clone, Debug)]
pub enum Event {
    Write {
        offset: u64,
        data: Vec<u8>,
    },
    Zero {
        offset: u64,
        len: u64,
    },
    /// An fdatasync completed: events before index `mark` are durable.
    Sync {
        mark: usize,
    },
}

/// Logs events in completion order.
#[derive(Debug, Default)]
pub struct Recorder {
    log: Mutex<Vec<Event>>,
}

impl Recorder {
    /// Events so far.
    pub fn len(&self) -> usize {
        self.log.lock().expect("log").len()
    }

    /// The whole log.
    pub fn events(&self) -> Vec<Event> {
        self.log.lock().expect("log").clone()
    }

    fn push(&self, e: Event) {
        self.log.lock().expect("log").push(e);
    }
}

impl WriteRecorder for Recorder {
    fn written(&self, offset: u64, data: &[u8]) {
        self.push(Event::Write {
            offset,
            data: data.to_vec(),
        });
    }

    fn zeroed(&self, offset: u64, len: u64) {
        self.push(Event::Zero { offset, len });
    }

    fn sync_begin(&self) -> u64 {
        self.len() as u64
    }

    fn synced(&self, mark: u64) {
        self.push(Event::Sync {
            mark: usize::try_from(mark).expect("mark"),
        });
    }
}

/// How many events are durable once the first `cut` events completed.
pub fn durable_prefix(events: &[Event], cut: usize) -> usize {
    events[..cut]
        .iter()
        .filter_map(|e| match e {
            Event::Sync { mark } => Some(*mark),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

/// Applies `e` to the file contents `file`.
pub fn apply(file: &mut Vec<u8>, e: &Event) {
    match e {
        Event::Write { offset, data } => write(file, *offset as usize, data),
        Event::Zero { offset, len } => {
            // Punch hole / zero range keep the size.
            let start = (*offset as usize).min(file.len());
            let end = (*offset + *len).min(file.len() as u64) as usize;
            file[start..end].fill(0);
        }
        Event::Sync { .. } => {}
    }
}

fn write(file: &mut Vec<u8>, at: usize, data: &[u8]) {
    if file.len() < at + data.len() {
        file.resize(at + data.len(), 0);
    }
    file[at..at + data.len()].copy_from_slice(data);
}

/// Applies a write torn at 512-byte boundaries of the file: each sector lands or not.
/// Returns how many of its sectors landed.
pub fn apply_torn(file: &mut Vec<u8>, e: &Event, rng: &mut Rng) -> usize {
    let Event::Write { offset, data } = e else {
        apply(file, e);
        return 0;
    };
    let mut landed = 0;
    let mut at = *offset as usize;
    let mut rest = data.as_slice();
    while !rest.is_empty() {
        let n = (512 - at % 512).min(rest.len());
        if rng.chance(1, 2) {
            write(file, at, &rest[..n]);
            landed += 1;
        }
        at += n;
        rest = &rest[n..];
    }
    landed
}
