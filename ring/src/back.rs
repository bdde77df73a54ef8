//! The backend's end of the ring (ring.h's `back_ring` and its macros).

use std::collections::VecDeque;
use std::sync::atomic::{Ordering, fence};

use crate::abi::{
    Abi, MAX_REQUEST_SIZE, MAX_RESPONSE_SIZE, SRING_REQ_EVENT, SRING_REQ_PROD, SRING_RSP_EVENT,
    SRING_RSP_PROD,
};
use crate::error::Error;
use crate::journal::{Journal, Replay};
use crate::request::{BadRequest, Request, decode_request};
use crate::response::{Response, encode_response};
use crate::shared::SharedMemory;
use crate::sring::{Sring, event_crossed};

/// The backend's view of a blkif ring: consumes requests, produces responses.
pub struct BackRing<M: SharedMemory> {
    ring: Sring<M>,
    req_cons: u32,
    rsp_prod_pvt: u32,
    rsp_published: u32,
    /// Where consumed requests are recorded until their responses are published, to survive
    /// a restart of the backend.
    journal: Option<Journal>,
    /// Requests an earlier backend left unanswered, served before the ring's (see
    /// [`crate::journal`]).
    replay: VecDeque<Replay>,
    /// Entries taken from the journal since attaching.
    replayed: u32,
}

impl<M: SharedMemory> std::fmt::Debug for BackRing<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackRing")
            .field("abi", &self.ring.abi())
            .field("size", &self.ring.size())
            .field("req_cons", &self.req_cons)
            .field("rsp_prod_pvt", &self.rsp_prod_pvt)
            .field("journal", &self.journal.is_some())
            .finish()
    }
}

impl<M: SharedMemory> BackRing<M> {
    /// Attaches to a freshly initialised ring (`BACK_RING_INIT`). Fails if the
    /// order is above the maximum or `mem` is smaller than `PAGE_SIZE << order`.
    pub fn new(mem: M, abi: Abi, order: u32) -> Result<Self, Error> {
        Self::attach(mem, abi, order, 0)
    }

    /// Attaches with both private indices at `index` (`BACK_RING_ATTACH`).
    pub fn attach(mem: M, abi: Abi, order: u32, index: u32) -> Result<Self, Error> {
        Ok(BackRing {
            ring: Sring::new(mem, abi, order)?,
            req_cons: index,
            rsp_prod_pvt: index,
            rsp_published: index,
            journal: None,
            replay: VecDeque::new(),
            replayed: 0,
        })
    }

    /// Attaches after a backend that published `published` responses, with a request journal
    /// in `journal` (at least [`crate::journal_bytes`] long, zeroed for a fresh ring): the
    /// requests an earlier backend of this ring left unanswered come first, from the journal,
    /// then the ring from where it stopped; every request consumed is recorded until its
    /// response is published (see [`crate::journal`]).
    pub fn attach_journaled(
        mem: M,
        abi: Abi,
        order: u32,
        published: u32,
        journal: Box<dyn SharedMemory>,
    ) -> Result<Self, Error> {
        let mut ring = Self::attach(mem, abi, order, published)?;
        let (journal, replay) = Journal::recover(journal, ring.size(), published)?;
        let unanswered = u32::try_from(replay.len()).unwrap_or(u32::MAX);
        ring.req_cons = published.wrapping_add(unanswered);
        ring.journal = Some(journal);
        ring.replay = replay;
        tracing::debug!(
            published,
            req_cons = ring.req_cons,
            req_prod = ring.ring.load(SRING_REQ_PROD),
            "attached after an earlier backend"
        );
        if unanswered > 0 {
            tracing::info!(
                replayed = unanswered,
                "requests of the previous backend taken from the journal"
            );
        }
        Ok(ring)
    }

    /// Number of ring entries.
    pub fn size(&self) -> u32 {
        self.ring.size()
    }

    /// The ABI of the entries.
    pub fn abi(&self) -> Abi {
        self.ring.abi()
    }

    /// The shared memory.
    pub fn mem(&self) -> &M {
        self.ring.mem()
    }

    /// Gives the shared memory back.
    pub fn into_mem(self) -> M {
        self.ring.into_mem()
    }

    /// Requests consumed but not yet answered.
    pub fn in_flight(&self) -> u32 {
        self.req_cons.wrapping_sub(self.rsp_prod_pvt)
    }

    /// Our request consumer index.
    pub fn req_cons(&self) -> u32 {
        self.req_cons
    }

    /// Our private response producer index.
    pub fn rsp_prod_pvt(&self) -> u32 {
        self.rsp_prod_pvt
    }

    /// Reads the frontend's `req_prod` and checks it is possible: no more than
    /// `size` requests past our responses, and not behind what we consumed.
    fn checked_req_prod(&self) -> Result<u32, Error> {
        let req_prod = self.ring.load(SRING_REQ_PROD);
        let produced = req_prod.wrapping_sub(self.rsp_prod_pvt);
        if produced > self.size() || produced < self.in_flight() {
            return Err(Error::Overflow {
                req_prod,
                req_cons: self.req_cons,
                rsp_prod_pvt: self.rsp_prod_pvt,
                size: self.size(),
            });
        }
        Ok(req_prod)
    }

    /// Requests published and not consumed, capped by free response slots and free journal
    /// entries (`RING_HAS_UNCONSUMED_REQUESTS`), plus those left to serve again.
    fn unconsumed(&self) -> Result<u32, Error> {
        let req_prod = self.checked_req_prod()?;
        let requests = req_prod.wrapping_sub(self.req_cons);
        let mut room = self.size().saturating_sub(self.in_flight());
        if let Some(j) = &self.journal {
            room = room.min(j.room());
        }
        let replays = u32::try_from(self.replay.len()).unwrap_or(u32::MAX);
        Ok(requests.min(room).saturating_add(replays))
    }

    /// Copies the next request entry out exactly once and decodes it: first those an earlier
    /// backend left unanswered, then the ring's.
    ///
    /// `Ok(None)` when nothing is pending or when the ring is full of
    /// unanswered requests (`RING_REQUEST_CONS_OVERFLOW`). `Err(Error::Overflow)`
    /// when the frontend's `req_prod` is impossible (hostile frontend): the
    /// caller disconnects.
    pub fn next_request(&mut self) -> Result<Option<Result<Request, BadRequest>>, Error> {
        if let Some(r) = self.replay.pop_front() {
            self.replayed = self.replayed.wrapping_add(1);
            let decoded = decode_request(self.abi(), &r.bytes[..self.abi().request_size()]);
            self.track(&decoded, r.slot);
            return Ok(Some(decoded));
        }
        let req_prod = self.checked_req_prod()?;
        // rmb: read the entries only after seeing the producer index.
        fence(Ordering::Acquire);
        let journal_full = self.journal.as_ref().is_some_and(|j| !j.has_room());
        if self.req_cons == req_prod || self.in_flight() >= self.size() || journal_full {
            return Ok(None);
        }
        let mut buf = [0u8; MAX_REQUEST_SIZE];
        let entry = &mut buf[..self.abi().request_size()];
        self.ring.read_entry(self.req_cons, entry);
        let slot = self
            .journal
            .as_mut()
            .and_then(|j| j.record(self.req_cons, entry));
        self.req_cons = self.req_cons.wrapping_add(1);
        let decoded = decode_request(self.abi(), entry);
        if let Some(slot) = slot {
            self.track(&decoded, slot);
        }
        Ok(Some(decoded))
    }

    /// Notes the id of a request recorded in journal entry `slot`, to find it when answered.
    fn track(&mut self, decoded: &Result<Request, BadRequest>, slot: u32) {
        let id = match decoded {
            Ok(req) => req.id(),
            Err(bad) => bad.id,
        };
        if let Some(j) = &mut self.journal {
            j.track(id, slot);
        }
    }

    /// Entries taken from the journal rather than the ring since attaching.
    pub fn replayed(&self) -> u32 {
        self.replayed
    }

    /// Writes `rsp` at `rsp_prod_pvt` (not yet visible to the frontend).
    ///
    /// A response with no consumed request left to answer is a caller bug; it
    /// is dropped and logged rather than overwriting a pending request.
    pub fn push_response(&mut self, rsp: &Response) {
        if self.in_flight() == 0 {
            tracing::error!(
                id = rsp.id,
                "response pushed without an outstanding request; dropped"
            );
            return;
        }
        let mut buf = [0u8; MAX_RESPONSE_SIZE];
        let entry = &mut buf[..self.abi().response_size()];
        encode_response(self.abi(), rsp, entry);
        if let Some(j) = &mut self.journal {
            j.answer(rsp.id, self.rsp_prod_pvt);
        }
        self.ring.write_entry(self.rsp_prod_pvt, entry);
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
    }

    /// Publishes the pushed responses and tells whether the frontend asked to
    /// be notified (`RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`).
    pub fn push_responses_and_check_notify(&mut self) -> bool {
        let old = self.rsp_published;
        let new = self.rsp_prod_pvt;
        // wmb: the frontend sees the responses before the new producer index.
        fence(Ordering::Release);
        self.ring.store(SRING_RSP_PROD, new);
        self.rsp_published = new;
        if let Some(j) = &mut self.journal {
            j.published();
        }
        // mb: publish rsp_prod before reading rsp_event.
        fence(Ordering::SeqCst);
        event_crossed(old, new, self.ring.load(SRING_RSP_EVENT))
    }

    /// Whether requests are pending, without asking the frontend for a notification
    /// (`RING_HAS_UNCONSUMED_REQUESTS`): for busy-polling, which reads shared memory only.
    pub fn has_unconsumed_requests(&self) -> Result<bool, Error> {
        Ok(self.unconsumed()? != 0)
    }

    /// Whether requests are pending; if none, asks the frontend for a
    /// notification on the next one and checks again to close the race
    /// (`RING_FINAL_CHECK_FOR_REQUESTS`).
    pub fn final_check_for_requests(&mut self) -> Result<bool, Error> {
        if self.unconsumed()? != 0 {
            return Ok(true);
        }
        self.ring
            .store(SRING_REQ_EVENT, self.req_cons.wrapping_add(1));
        // mb: publish req_event before re-reading req_prod.
        fence(Ordering::SeqCst);
        Ok(self.unconsumed()? != 0)
    }
}

#[cfg(test)]
#[path = "ring_tests.rs"]
mod tests;
