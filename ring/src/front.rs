//! The frontend's end of the ring, for the emulated frontend and hostile tests.

use std::sync::atomic::{Ordering, fence};

use crate::abi::{
    Abi, MAX_REQUEST_SIZE, MAX_RESPONSE_SIZE, SRING_REQ_EVENT, SRING_REQ_PROD, SRING_RING,
    SRING_RSP_EVENT, SRING_RSP_PROD,
};
use crate::error::Error;
use crate::request::{Request, encode_request};
use crate::response::{Response, decode_response};
use crate::shared::SharedMemory;
use crate::sring::{Sring, event_crossed};

/// First header byte after the four indices (the private and padding area).
const SRING_PAD: usize = 16;

/// The frontend's view of a blkif ring: produces requests, consumes responses.
pub struct FrontRing<M: SharedMemory> {
    ring: Sring<M>,
    req_prod_pvt: u32,
    rsp_cons: u32,
    req_published: u32,
}

impl<M: SharedMemory> std::fmt::Debug for FrontRing<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontRing")
            .field("abi", &self.ring.abi())
            .field("size", &self.ring.size())
            .field("req_prod_pvt", &self.req_prod_pvt)
            .field("rsp_cons", &self.rsp_cons)
            .finish()
    }
}

impl<M: SharedMemory> FrontRing<M> {
    /// Initialises the shared ring and attaches to it (`SHARED_RING_INIT` +
    /// `FRONT_RING_INIT`).
    pub fn init(mem: M, abi: Abi, order: u32) -> Result<Self, Error> {
        Self::init_at(mem, abi, order, 0)
    }

    /// Like [`FrontRing::init`] but with every index starting at `start`
    /// instead of 0 (to exercise index wrap-around).
    pub fn init_at(mem: M, abi: Abi, order: u32, start: u32) -> Result<Self, Error> {
        let ring = Sring::new(mem, abi, order)?;
        ring.store(SRING_REQ_PROD, start);
        ring.store(SRING_RSP_PROD, start);
        ring.store(SRING_REQ_EVENT, start.wrapping_add(1));
        ring.store(SRING_RSP_EVENT, start.wrapping_add(1));
        ring.zero(SRING_PAD, SRING_RING);
        Ok(Self::from_ring(ring, start))
    }

    /// Attaches to an existing ring at its current `req_prod`, assuming every
    /// response has been consumed (`FRONT_RING_ATTACH`).
    pub fn attach(mem: M, abi: Abi, order: u32) -> Result<Self, Error> {
        let ring = Sring::new(mem, abi, order)?;
        let index = ring.load(SRING_REQ_PROD);
        Ok(Self::from_ring(ring, index))
    }

    fn from_ring(ring: Sring<M>, index: u32) -> Self {
        FrontRing {
            ring,
            req_prod_pvt: index,
            rsp_cons: index,
            req_published: index,
        }
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

    /// Requests pushed whose responses were not yet popped.
    pub fn in_flight(&self) -> u32 {
        self.req_prod_pvt.wrapping_sub(self.rsp_cons)
    }

    /// Slots free for new requests (`RING_FREE_REQUESTS`).
    pub fn free_slots(&self) -> u32 {
        self.size().saturating_sub(self.in_flight())
    }

    /// Encodes `req` into the next slot (not yet visible to the backend).
    pub fn push_request(&mut self, req: &Request) -> Result<(), Error> {
        let mut buf = [0u8; MAX_REQUEST_SIZE];
        let entry = &mut buf[..self.abi().request_size()];
        encode_request(self.abi(), req, entry);
        self.push_raw(entry)
    }

    /// Copies raw bytes into the next slot, zero-padded to a full request
    /// (hostile tests). Fails if the ring is full or `entry` is too long.
    pub fn push_raw(&mut self, entry: &[u8]) -> Result<(), Error> {
        let size = self.abi().request_size();
        if entry.len() > size {
            return Err(Error::EntryLength {
                len: entry.len(),
                max: size,
            });
        }
        if self.free_slots() == 0 {
            return Err(Error::RingFull);
        }
        let mut buf = [0u8; MAX_REQUEST_SIZE];
        buf[..entry.len()].copy_from_slice(entry);
        self.ring.write_entry(self.req_prod_pvt, &buf[..size]);
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Publishes the pushed requests and tells whether the backend asked to be
    /// notified (`RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`).
    pub fn push_requests_and_check_notify(&mut self) -> bool {
        let old = self.req_published;
        let new = self.req_prod_pvt;
        // wmb: the backend sees the requests before the new producer index.
        fence(Ordering::Release);
        self.ring.store(SRING_REQ_PROD, new);
        self.req_published = new;
        // mb: publish req_prod before reading req_event.
        fence(Ordering::SeqCst);
        event_crossed(old, new, self.ring.load(SRING_REQ_EVENT))
    }

    /// Takes the next published response, checking the backend's `rsp_prod`.
    pub fn try_pop_response(&mut self) -> Result<Option<Response>, Error> {
        let rsp_prod = self.ring.load(SRING_RSP_PROD);
        // rmb: read the responses only after seeing the producer index.
        fence(Ordering::Acquire);
        if rsp_prod.wrapping_sub(self.rsp_cons) > self.in_flight() {
            return Err(Error::ResponseOverflow {
                rsp_prod,
                rsp_cons: self.rsp_cons,
                size: self.size(),
            });
        }
        if rsp_prod == self.rsp_cons {
            return Ok(None);
        }
        let mut buf = [0u8; MAX_RESPONSE_SIZE];
        let entry = &mut buf[..self.abi().response_size()];
        self.ring.read_entry(self.rsp_cons, entry);
        self.rsp_cons = self.rsp_cons.wrapping_add(1);
        Ok(Some(decode_response(self.abi(), entry)))
    }

    /// Takes the next published response; `None` when there is none or the
    /// backend published an impossible `rsp_prod` (logged).
    pub fn pop_response(&mut self) -> Option<Response> {
        self.try_pop_response().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "bogus response producer index");
            None
        })
    }

    fn has_responses(&self) -> bool {
        self.ring.load(SRING_RSP_PROD) != self.rsp_cons
    }

    /// Whether responses are pending; if none, asks the backend for a
    /// notification on the next one and checks again
    /// (`RING_FINAL_CHECK_FOR_RESPONSES`).
    pub fn final_check_for_responses(&mut self) -> bool {
        if self.has_responses() {
            return true;
        }
        self.ring
            .store(SRING_RSP_EVENT, self.rsp_cons.wrapping_add(1));
        // mb: publish rsp_event before re-reading rsp_prod.
        fence(Ordering::SeqCst);
        self.has_responses()
    }

    /// Hostile-test hook: publishes an arbitrary `req_prod`.
    pub fn force_req_prod(&mut self, v: u32) {
        fence(Ordering::Release);
        self.ring.store(SRING_REQ_PROD, v);
    }
}
