//! Maps sent to the pool service without waiting for their answers (see
//! [`PoolPort::map_start`](crate::port::PoolPort::map_start)).
//!
//! The service answers every frame in order, so the replies of the maps sent and not yet
//! answered come before the reply of any later call. The ring thread goes on serving while
//! they travel: a first write into a new block no longer holds up its queue for the round
//! trip to the service (two thread hops each way), which on a loaded host took longer than
//! the write itself.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::wire::Reply;
use crate::error::{Error, Result};

/// Tickets are unique in the process, so an answer is never taken for another port's map.
static NEXT_TICKET: AtomicU64 = AtomicU64::new(1);

/// One map sent in `frames` frames.
#[derive(Debug)]
struct Pending {
    ticket: u64,
    frames: usize,
    sent: Instant,
    error: Option<Error>,
}

/// The maps a port sent and the answers not yet taken.
#[derive(Debug, Default)]
pub(super) struct Pipeline {
    pending: VecDeque<Pending>,
    answered: HashMap<u64, Result<()>>,
}

impl Pipeline {
    /// Records a map sent in `frames` frames; its ticket.
    pub(super) fn sent(&mut self, frames: usize) -> u64 {
        let ticket = NEXT_TICKET.fetch_add(1, Ordering::Relaxed);
        self.pending.push_back(Pending {
            ticket,
            frames,
            sent: Instant::now(),
            error: None,
        });
        ticket
    }

    /// Frames whose replies come before the next call's.
    pub(super) fn awaited(&self) -> bool {
        !self.pending.is_empty()
    }

    /// When the oldest map still waiting was sent.
    pub(super) fn oldest(&self) -> Option<Instant> {
        self.pending.front().map(|p| p.sent)
    }

    /// Takes the reply to the oldest frame still waiting.
    pub(super) fn reply(&mut self, reply: Reply) {
        let Some(front) = self.pending.front_mut() else {
            return;
        };
        match reply {
            Reply::Done => {}
            Reply::Failed { error } => {
                front.error.get_or_insert(error.into());
            }
            other => {
                let what = format!("unexpected reply to a map: {other:?}");
                front.error.get_or_insert(Error::Service(what));
            }
        }
        front.frames = front.frames.saturating_sub(1);
        if front.frames == 0 {
            if let Some(done) = self.pending.pop_front() {
                let result = done.error.map_or(Ok(()), Err);
                self.answered.insert(done.ticket, result);
            }
        }
    }

    /// Answers every map still waiting with `why` (the connection is lost).
    pub(super) fn fail_all(&mut self, why: &str) {
        for p in self.pending.drain(..) {
            let error = Error::Service(why.to_owned());
            self.answered.insert(p.ticket, Err(error));
        }
    }

    /// The answer to `ticket`: `None` while it waits, an error for a ticket never sent here.
    pub(super) fn answer(&mut self, ticket: u64) -> Option<Result<()>> {
        if let Some(answer) = self.answered.remove(&ticket) {
            return Some(answer);
        }
        if self.pending.iter().any(|p| p.ticket == ticket) {
            return None;
        }
        Some(Err(Error::Service(format!(
            "map {ticket} was not sent on this connection"
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_answer_the_maps_in_order_and_a_failed_frame_fails_its_map() {
        let mut p = Pipeline::default();
        let a = p.sent(2);
        let b = p.sent(1);
        assert_eq!(p.answer(a).map(|r| r.is_ok()), None);
        p.reply(Reply::Done);
        assert!(p.answer(a).is_none(), "one of a's two frames is answered");
        let failed = Error::MetadataFull(7);
        p.reply(Reply::Failed {
            error: (&failed).into(),
        });
        assert!(p.answer(a).unwrap().is_err());
        p.reply(Reply::Done);
        assert!(p.answer(b).unwrap().is_ok());
        assert!(p.answer(b).unwrap().is_err(), "an answer is taken once");
        let c = p.sent(1);
        p.fail_all("gone");
        assert!(p.answer(c).unwrap().is_err());
        assert!(!p.awaited());
    }
}
