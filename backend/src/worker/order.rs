//! Ordering of flushes and barriers against data requests.
//!
//! * A flush without data waits until every write submitted before it has completed, then
//!   runs `fdatasync`; later requests are not held (they are not ordered by a flush).
//! * A barrier (and a flush that carries data) is exclusive: later requests are held, every
//!   earlier request drains, then the cache is flushed, then the data (if any) is written; only
//!   after it is answered do held requests start. This is what Linux blkback does for
//!   `WRITE_BARRIER` (drain, preflush, write).

use std::collections::{BTreeSet, VecDeque};
use std::time::Instant;

use rustbk_grant::GuestBuf;
use rustbk_ring::Request;

/// A flush waiting for earlier writes.
#[derive(Clone, Copy, Debug)]
pub(super) struct WaitingFlush {
    pub seq: u64,
    pub id: u64,
    pub op: u8,
    /// When the request left the ring.
    pub since: Instant,
}

/// Where the exclusive request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stage {
    /// Waiting for every earlier request to finish.
    Drain,
    /// The cache flush before the data is in flight.
    PreFlush,
    /// The data write is in flight.
    Write,
}

/// Data an exclusive request writes after its flush.
#[derive(Debug)]
pub(super) struct WriteData {
    pub offset: u64,
    pub buf: GuestBuf,
}

/// The request currently holding the ring exclusively.
#[derive(Debug)]
pub(super) struct Exclusive {
    pub id: u64,
    pub op: u8,
    pub stage: Stage,
    pub data: Option<WriteData>,
    /// When the request left the ring.
    pub since: Instant,
}

/// Ordering state of one ring.
#[derive(Debug, Default)]
pub(super) struct Order {
    next_seq: u64,
    writes: BTreeSet<u64>,
    flushes: VecDeque<WaitingFlush>,
    /// The exclusive request, if one is running.
    pub exclusive: Option<Exclusive>,
    /// Requests that arrived while an exclusive request ran, with when they left the ring.
    pub held: VecDeque<(Request, Instant)>,
}

impl Order {
    /// Registers a write (or discard) about to be submitted; returns its sequence number.
    pub fn write_started(&mut self) -> u64 {
        let seq = self.bump();
        self.writes.insert(seq);
        seq
    }

    /// Marks a write as completed.
    pub fn write_done(&mut self, seq: u64) {
        self.writes.remove(&seq);
    }

    /// Queues a flush behind every write started so far.
    pub fn queue_flush(&mut self, id: u64, op: u8, since: Instant) {
        let seq = self.bump();
        self.flushes.push_back(WaitingFlush { seq, id, op, since });
    }

    /// The next flush whose earlier writes have all completed.
    pub fn pop_ready_flush(&mut self) -> Option<WaitingFlush> {
        let front = self.flushes.front()?;
        let oldest_write = self.writes.first().copied().unwrap_or(u64::MAX);
        if front.seq < oldest_write {
            self.flushes.pop_front()
        } else {
            None
        }
    }

    /// True when no flush is waiting.
    pub fn no_waiting_flushes(&self) -> bool {
        self.flushes.is_empty()
    }

    /// True when nothing is held or exclusive.
    pub fn is_idle(&self) -> bool {
        self.exclusive.is_none() && self.held.is_empty() && self.flushes.is_empty()
    }

    fn bump(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_waits_for_earlier_writes_only() {
        let mut o = Order::default();
        let w1 = o.write_started();
        o.queue_flush(7, 3, Instant::now());
        let w2 = o.write_started();
        assert!(o.pop_ready_flush().is_none(), "w1 still in flight");
        o.write_done(w1);
        let f = o.pop_ready_flush().expect("only a later write remains");
        assert_eq!(f.id, 7);
        o.write_done(w2);
        assert!(o.is_idle());
    }

    #[test]
    fn flush_with_no_writes_is_ready_at_once() {
        let mut o = Order::default();
        o.queue_flush(1, 3, Instant::now());
        assert!(o.pop_ready_flush().is_some());
        assert!(o.pop_ready_flush().is_none());
    }
}
