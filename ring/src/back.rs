//! The backend's end of the ring (ring.h's `back_ring` and its macros).

use std::sync::atomic::{Ordering, fence};

use crate::abi::{
    Abi, MAX_REQUEST_SIZE, MAX_RESPONSE_SIZE, SRING_REQ_EVENT, SRING_REQ_PROD, SRING_RSP_EVENT,
    SRING_RSP_PROD,
};
use crate::error::Error;
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
}

impl<M: SharedMemory> std::fmt::Debug for BackRing<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackRing")
            .field("abi", &self.ring.abi())
            .field("size", &self.ring.size())
            .field("req_cons", &self.req_cons)
            .field("rsp_prod_pvt", &self.rsp_prod_pvt)
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
        })
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

    /// Requests published and not consumed, capped by free response slots
    /// (`RING_HAS_UNCONSUMED_REQUESTS`).
    fn unconsumed(&self) -> Result<u32, Error> {
        let req_prod = self.checked_req_prod()?;
        let requests = req_prod.wrapping_sub(self.req_cons);
        let room = self.size().saturating_sub(self.in_flight());
        Ok(requests.min(room))
    }

    /// Copies the next request entry out exactly once and decodes it.
    ///
    /// `Ok(None)` when nothing is pending or when the ring is full of
    /// unanswered requests (`RING_REQUEST_CONS_OVERFLOW`). `Err(Error::Overflow)`
    /// when the frontend's `req_prod` is impossible (hostile frontend): the
    /// caller disconnects.
    pub fn next_request(&mut self) -> Result<Option<Result<Request, BadRequest>>, Error> {
        let req_prod = self.checked_req_prod()?;
        // rmb: read the entries only after seeing the producer index.
        fence(Ordering::Acquire);
        if self.req_cons == req_prod || self.in_flight() >= self.size() {
            return Ok(None);
        }
        let mut buf = [0u8; MAX_REQUEST_SIZE];
        let entry = &mut buf[..self.abi().request_size()];
        self.ring.read_entry(self.req_cons, entry);
        self.req_cons = self.req_cons.wrapping_add(1);
        Ok(Some(decode_request(self.abi(), entry)))
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
        // mb: publish rsp_prod before reading rsp_event.
        fence(Ordering::SeqCst);
        event_crossed(old, new, self.ring.load(SRING_RSP_EVENT))
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
