use super::*;
use crate::abi::{SRING_RSP_PROD, status};
use crate::back::BackRing;
use crate::front::FrontRing;
use crate::request::{BadRequest, Request, RwOp, encode_request};
use crate::shared::HeapMemory;

const ABI: Abi = Abi::X86_64;

fn write(id: u64) -> Request {
    crate::request::one_page_request(id, RwOp::Write, 0)
}

/// A ring of 32 entries whose indices start at `start`, and an empty journal for it.
struct Setup {
    ring: HeapMemory,
    journal: HeapMemory,
    front: FrontRing<HeapMemory>,
}

impl Setup {
    fn new(start: u32) -> Setup {
        let ring = HeapMemory::new(1);
        let journal = HeapMemory::with_len(journal_bytes(ABI, 0));
        let front = FrontRing::init_at(ring.clone(), ABI, 0, start).unwrap();
        Setup {
            ring,
            journal,
            front,
        }
    }

    fn push(&mut self, ids: impl IntoIterator<Item = u64>) {
        for id in ids {
            self.front.push_request(&write(id)).unwrap();
        }
        self.front.push_requests_and_check_notify();
    }

    /// A backend attached at the published `rsp_prod` with `journal`, as after a restart.
    fn backend(&self, journal: &HeapMemory) -> BackRing<HeapMemory> {
        let start = self.ring.load_u32(SRING_RSP_PROD).unwrap();
        BackRing::attach_journaled(self.ring.clone(), ABI, 0, start, Box::new(journal.clone()))
            .unwrap()
    }
}

fn drain(back: &mut BackRing<HeapMemory>) -> Vec<Result<Request, BadRequest>> {
    std::iter::from_fn(|| back.next_request().unwrap()).collect()
}

fn ids(reqs: &[Result<Request, BadRequest>]) -> Vec<u64> {
    reqs.iter().map(|r| r.as_ref().unwrap().id()).collect()
}

/// Consumes everything pending and answers it, published, so the frontend reuses the slots.
fn serve_a_lap(s: &mut Setup, back: &mut BackRing<HeapMemory>, ids: std::ops::Range<u64>) {
    s.push(ids.clone());
    for req in drain(back) {
        back.push_response(&req.unwrap().response(status::OKAY));
    }
    back.push_responses_and_check_notify();
    while s.front.pop_response().is_some() {}
}

/// Takes `n` requests and pushes (without publishing) responses for the first `answered`,
/// which overwrite the ring slots of the first `answered` requests.
fn consume_and_answer_unpublished(back: &mut BackRing<HeapMemory>, n: usize, answered: usize) {
    let reqs = drain(back);
    assert_eq!(reqs.len(), n);
    for req in reqs.iter().take(answered) {
        back.push_response(&req.as_ref().unwrap().response(status::OKAY));
    }
}

#[test]
fn restarted_backend_gets_back_requests_whose_slots_hold_unpublished_responses() {
    // Indices wrap past u32::MAX, and a whole lap comes first so every slot has a stale tag.
    let mut s = Setup::new(u32::MAX - 20);
    let mut back = s.backend(&s.journal);
    serve_a_lap(&mut s, &mut back, 0..32);
    s.push(100..110);
    consume_and_answer_unpublished(&mut back, 10, 6);
    drop(back); // killed: six responses written, none published

    let mut back = s.backend(&s.journal);
    let again = drain(&mut back);
    assert_eq!(
        again,
        (100..110).map(|id| Ok(write(id))).collect::<Vec<_>>()
    );
    assert_eq!(back.replayed(), 10);

    // Killed again after answering some of them: the next backend still gets the originals.
    for req in again.iter().take(8) {
        back.push_response(&req.as_ref().unwrap().response(status::OKAY));
    }
    drop(back);
    let mut back = s.backend(&s.journal);
    assert_eq!(ids(&drain(&mut back)), (100..110).collect::<Vec<_>>());

    // Once the replay is over, new requests come from the ring as usual.
    s.push(200..203);
    assert_eq!(ids(&drain(&mut back)), vec![200, 201, 202]);
    assert_eq!(back.replayed(), 10);
}

#[test]
fn fresh_journal_leaves_the_ring_contents_as_they_are() {
    let mut s = Setup::new(7);
    let mut back = s.backend(&s.journal);
    s.push(0..5);
    consume_and_answer_unpublished(&mut back, 5, 3);
    drop(back);

    let fresh = HeapMemory::with_len(journal_bytes(ABI, 0));
    let mut journaled = s.backend(&fresh);
    let from_journal = drain(&mut journaled);
    let start = s.ring.load_u32(SRING_RSP_PROD).unwrap();
    let mut plain = BackRing::attach(s.ring.clone(), ABI, 0, start).unwrap();
    assert_eq!(
        from_journal,
        drain(&mut plain),
        "same as a ring without a journal"
    );
    assert_eq!(from_journal.len(), 5);
    assert_eq!(journaled.replayed(), 0);
    for (id, answered) in (0..3).zip(&from_journal) {
        assert_ne!(answered, &Ok(write(id)), "slot holds a response now");
    }
    assert_eq!(ids(&from_journal[3..]), vec![3, 4]);
}

#[test]
fn tag_of_an_earlier_lap_is_not_replayed() {
    let mut s = Setup::new(0);
    let mut back = s.backend(&s.journal);
    serve_a_lap(&mut s, &mut back, 0..32);
    drop(back);
    // Slot 0 holds index 0's record (request 0); index 32, same slot, was never consumed.
    s.push([500]);
    let mut back = s.backend(&s.journal);
    assert_eq!(ids(&drain(&mut back)), vec![500]);
    assert_eq!(back.replayed(), 0);
}

#[test]
fn record_torn_before_its_tag_falls_back_to_the_ring() {
    let mut s = Setup::new(40);
    let mut back = s.backend(&s.journal);
    s.push(0..3);
    consume_and_answer_unpublished(&mut back, 3, 3);
    drop(back);
    s.push([3]);
    // Killed while recording index 43: its bytes reached the journal, its tag did not.
    let mut torn = [0u8; MAX_REQUEST_SIZE];
    encode_request(ABI, &write(999), &mut torn);
    let slot = (43 % 32) * SLOT_BYTES;
    s.journal.write_bytes(slot + TAG_BYTES, &torn).unwrap();
    assert_eq!(s.journal.load_u64(slot), Ok(0), "no tag yet");

    let mut back = s.backend(&s.journal);
    assert_eq!(ids(&drain(&mut back)), vec![0, 1, 2, 3]);
    assert_eq!(back.replayed(), 3);
}

#[test]
fn consuming_records_the_entry_with_its_full_index_as_tag() {
    let mut s = Setup::new(u32::MAX);
    let mut back = s.backend(&s.journal);
    s.push([1, 2]);
    drain(&mut back);
    for (idx, id) in [(u32::MAX, 1), (0, 2)] {
        let slot = (idx % 32) as usize * SLOT_BYTES;
        let tag = s.journal.load_u64(slot).unwrap();
        assert_eq!(tag, (u64::from(TAG_MAGIC) << 32) | u64::from(idx));
        let mut entry = [0u8; MAX_REQUEST_SIZE];
        s.journal.read_bytes(slot + TAG_BYTES, &mut entry).unwrap();
        assert_eq!(crate::decode_request(ABI, &entry), Ok(write(id)));
    }
}

#[test]
fn journal_smaller_than_the_ring_needs_is_refused() {
    let ring = HeapMemory::new(1);
    let small = HeapMemory::with_len(journal_bytes(ABI, 0) - 1);
    let err = BackRing::attach_journaled(ring, ABI, 0, 0, Box::new(small)).unwrap_err();
    assert_eq!(
        err,
        Error::MemoryTooSmall {
            len: 32 * SLOT_BYTES - 1,
            need: 32 * SLOT_BYTES
        }
    );
}
