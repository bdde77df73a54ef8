//! Requests sent to the pool service without waiting for their answers: maps (see
//! [`PoolPort::map_start`](crate::port::PoolPort::map_start)) and provisions asked ahead of
//! need (see [`PoolPort::provision_ahead`](crate::port::PoolPort::provision_ahead)).
//!
//! The service answers every frame in order, so the replies of the requests sent and not yet
//! answered come before the reply of any later call. The ring thread goes on serving while
//! they travel: a first write into a new block no longer holds up its queue for the round
//! trip to the service (two thread hops each way), which on a loaded host took longer than
//! the write itself, and neither does the refill of the volume's reserve.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::wire::Reply;
use crate::error::{Error, Result};
use crate::port::Handout;

/// Tickets are unique in the process, so an answer is never taken for another port's request.
static NEXT_TICKET: AtomicU64 = AtomicU64::new(1);

/// What a request sent ahead asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Asked {
    Map,
    /// Up to this many blocks.
    Blocks(usize),
}

/// What the service answered.
#[derive(Debug)]
enum Answer {
    Mapped,
    Blocks(Handout),
}

/// One request sent in `frames` frames.
#[derive(Debug)]
struct Pending {
    ticket: u64,
    asked: Asked,
    frames: usize,
    sent: Instant,
    answer: Option<Result<Answer>>,
}

/// The requests a port sent and the answers not yet taken.
#[derive(Debug, Default)]
pub(super) struct Pipeline {
    pending: VecDeque<Pending>,
    answered: HashMap<u64, Result<Answer>>,
}

impl Pipeline {
    /// Records a map sent in `frames` frames; its ticket.
    pub(super) fn sent_map(&mut self, frames: usize) -> u64 {
        self.sent(Asked::Map, frames)
    }

    /// Records a provision of up to `count` blocks, sent in one frame; its ticket.
    pub(super) fn sent_provision(&mut self, count: usize) -> u64 {
        self.sent(Asked::Blocks(count), 1)
    }

    fn sent(&mut self, asked: Asked, frames: usize) -> u64 {
        let ticket = NEXT_TICKET.fetch_add(1, Ordering::Relaxed);
        self.pending.push_back(Pending {
            ticket,
            asked,
            frames,
            sent: Instant::now(),
            answer: None,
        });
        ticket
    }

    /// Frames whose replies come before the next call's.
    pub(super) fn awaited(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Whether a map still waits for its answer (the reader thread wakes the data path for
    /// those; a provision asked ahead is looked for when the volume takes its next block).
    pub(super) fn maps_awaited(&self) -> bool {
        self.pending.iter().any(|p| p.asked == Asked::Map)
    }

    /// Whether `ticket` still waits for its answer.
    pub(super) fn waits(&self, ticket: u64) -> bool {
        self.pending.iter().any(|p| p.ticket == ticket)
    }

    /// When the oldest request still waiting was sent.
    pub(super) fn oldest(&self) -> Option<Instant> {
        self.pending.front().map(|p| p.sent)
    }

    /// Takes the reply to the oldest frame still waiting.
    pub(super) fn reply(&mut self, reply: Reply) {
        let Some(front) = self.pending.front_mut() else {
            return;
        };
        let answer = match (front.asked, reply) {
            (_, Reply::Failed { error }) => Err(error.into()),
            (Asked::Map, Reply::Done) => Ok(Answer::Mapped),
            (Asked::Blocks(count), Reply::Blocks { blocks, zeroed }) => {
                handout(count, blocks, zeroed).map(Answer::Blocks)
            }
            (asked, other) => Err(Error::Service(format!(
                "unexpected reply to {asked:?}: {other:?}"
            ))),
        };
        // A map's first error is its answer; a later frame's success does not hide it.
        match (&front.answer, answer) {
            (Some(Err(_)), _) => {}
            (_, answer) => front.answer = Some(answer),
        }
        front.frames = front.frames.saturating_sub(1);
        if front.frames == 0 {
            if let Some(done) = self.pending.pop_front() {
                let answer = done.answer.unwrap_or(Ok(Answer::Mapped));
                self.answered.insert(done.ticket, answer);
            }
        }
    }

    /// Answers every request still waiting with `why` (the connection is lost).
    pub(super) fn fail_all(&mut self, why: &str) {
        for p in self.pending.drain(..) {
            let error = Error::Service(why.to_owned());
            self.answered.insert(p.ticket, Err(error));
        }
    }

    /// The answer to map `ticket`: `None` while it waits, an error for a ticket never sent
    /// here.
    pub(super) fn answer_map(&mut self, ticket: u64) -> Option<Result<()>> {
        self.answer(ticket).map(|a| match a? {
            Answer::Mapped => Ok(()),
            Answer::Blocks(_) => Err(not_sent("map", ticket)),
        })
    }

    /// The answer to provision `ticket`, as [`Pipeline::answer_map`].
    pub(super) fn answer_provision(&mut self, ticket: u64) -> Option<Result<Handout>> {
        self.answer(ticket).map(|a| match a? {
            Answer::Blocks(handout) => Ok(handout),
            Answer::Mapped => Err(not_sent("provision", ticket)),
        })
    }

    fn answer(&mut self, ticket: u64) -> Option<Result<Answer>> {
        if let Some(answer) = self.answered.remove(&ticket) {
            return Some(answer);
        }
        match self.waits(ticket) {
            true => None,
            false => Some(Err(not_sent("request", ticket))),
        }
    }
}

fn not_sent(what: &str, ticket: u64) -> Error {
    Error::Service(format!("{what} {ticket} was not sent on this connection"))
}

/// The blocks handed out for a provision of `count`: no more than asked, and the zeroed
/// ones among them.
pub(super) fn handout(count: usize, blocks: Vec<u64>, zeroed: Vec<u64>) -> Result<Handout> {
    let known: foldhash::HashSet<u64> = blocks.iter().copied().collect();
    if blocks.len() > count
        || known.len() != blocks.len()
        || !zeroed.iter().all(|b| known.contains(b))
    {
        return Err(Error::Service(format!(
            "the pool service handed out {} blocks for {count}, or blocks it did not hand out as zeroed",
            blocks.len()
        )));
    }
    Ok(Handout { blocks, zeroed })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_answer_the_maps_in_order_and_a_failed_frame_fails_its_map() {
        let mut p = Pipeline::default();
        let a = p.sent_map(2);
        let b = p.sent_map(1);
        assert_eq!(p.answer_map(a).map(|r| r.is_ok()), None);
        p.reply(Reply::Done);
        assert!(
            p.answer_map(a).is_none(),
            "one of a's two frames is answered"
        );
        let failed = Error::MetadataFull(7);
        p.reply(Reply::Failed {
            error: (&failed).into(),
        });
        assert!(p.answer_map(a).unwrap().is_err());
        p.reply(Reply::Done);
        assert!(p.answer_map(b).unwrap().is_ok());
        assert!(p.answer_map(b).unwrap().is_err(), "an answer is taken once");
        let c = p.sent_map(1);
        p.fail_all("gone");
        assert!(p.answer_map(c).unwrap().is_err());
        assert!(!p.awaited());
    }

    #[test]
    fn a_provision_between_maps_takes_its_own_reply_and_a_bad_one_fails_it() {
        let mut p = Pipeline::default();
        let m = p.sent_map(1);
        let a = p.sent_provision(4);
        assert!(p.maps_awaited());
        p.reply(Reply::Done);
        assert!(!p.maps_awaited() && p.waits(a));
        p.reply(Reply::Blocks {
            blocks: vec![7, 8],
            zeroed: vec![8],
        });
        assert!(p.answer_map(m).unwrap().is_ok());
        let got = p.answer_provision(a).unwrap().unwrap();
        assert_eq!((got.blocks, got.zeroed), (vec![7, 8], vec![8]));
        for bad in [
            Reply::Blocks {
                blocks: vec![1, 2, 3],
                zeroed: vec![],
            },
            Reply::Blocks {
                blocks: vec![1],
                zeroed: vec![2],
            },
            Reply::Blocks {
                blocks: vec![1, 1],
                zeroed: vec![],
            },
            Reply::Done,
        ] {
            let t = p.sent_provision(2);
            p.reply(bad);
            assert!(p.answer_provision(t).unwrap().is_err());
        }
        let t = p.sent_map(1);
        p.reply(Reply::Blocks {
            blocks: vec![],
            zeroed: vec![],
        });
        assert!(
            p.answer_map(t).unwrap().is_err(),
            "a map answered with blocks"
        );
    }
}
