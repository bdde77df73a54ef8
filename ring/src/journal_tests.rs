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

/// Takes `n` requests and pushes (without publishing) responses for those with an id in
/// `answered`, in that order; returns every request taken.
fn consume_and_answer(
    back: &mut BackRing<HeapMemory>,
    n: usize,
    answered: &[u64],
) -> Vec<Result<Request, BadRequest>> {
    let reqs = drain(back);
    assert_eq!(reqs.len(), n);
    for id in answered {
        let req = reqs.iter().flatten().find(|r| r.id() == *id).unwrap();
        back.push_response(&req.response(status::OKAY));
    }
    reqs
}

/// The ids the frontend received.
fn received(s: &mut Setup) -> Vec<u64> {
    std::iter::from_fn(|| s.front.pop_response())
        .map(|r| r.id)
        .collect()
}

#[test]
fn restarted_backend_serves_exactly_the_requests_left_unanswered_out_of_order() {
    // Indices wrap past u32::MAX, and a whole lap comes first so every slot was used before.
    let mut s = Setup::new(u32::MAX - 20);
    let mut back = s.backend(&s.journal);
    serve_a_lap(&mut s, &mut back, 0..32);
    s.push(100..110);
    // Answered out of order and published: 107 and 101. Then 103, not published.
    consume_and_answer(&mut back, 10, &[107, 101]);
    back.push_responses_and_check_notify();
    assert_eq!(received(&mut s), vec![107, 101]);
    back.push_response(&write(103).response(status::OKAY));
    drop(back); // killed

    let mut back = s.backend(&s.journal);
    let again = drain(&mut back);
    let left: Vec<u64> = [100, 102, 103, 104, 105, 106, 108, 109].into();
    assert_eq!(
        ids(&again),
        left,
        "each unanswered request once, in ring order"
    );
    assert_eq!(back.replayed(), 8);
    assert_eq!(back.in_flight(), 8);

    // New requests come from the ring after them, in the slots the frontend freed.
    s.push(200..202);
    assert_eq!(ids(&drain(&mut back)), vec![200, 201]);
    for id in left.iter().chain(&[200, 201]) {
        back.push_response(&write(*id).response(status::OKAY));
    }
    back.push_responses_and_check_notify();
    let mut got = received(&mut s);
    got.sort_unstable();
    assert_eq!(got, [100, 102, 103, 104, 105, 106, 108, 109, 200, 201]);
}

#[test]
fn a_backend_killed_twice_still_serves_each_request_once() {
    let mut s = Setup::new(3);
    let mut back = s.backend(&s.journal);
    s.push(0..6);
    consume_and_answer(&mut back, 6, &[4, 0, 2]);
    drop(back); // three answers written, none published

    let mut back = s.backend(&s.journal);
    assert_eq!(ids(&drain(&mut back)), (0..6).collect::<Vec<_>>());
    // The second backend publishes 5 and answers 1 unpublished: the stale answer the first
    // backend left for 1's entry must not make it look published now.
    back.push_response(&write(5).response(status::OKAY));
    back.push_responses_and_check_notify();
    back.push_response(&write(1).response(status::OKAY));
    drop(back);
    assert_eq!(received(&mut s), vec![5]);

    let mut back = s.backend(&s.journal);
    assert_eq!(ids(&drain(&mut back)), vec![0, 1, 2, 3, 4]);
}

#[test]
fn a_response_published_but_not_yet_freed_is_not_served_again() {
    let mut s = Setup::new(0);
    let mut back = s.backend(&s.journal);
    s.push(0..4);
    consume_and_answer(&mut back, 4, &[2]);
    // Killed right after storing rsp_prod, before freeing 2's entry.
    s.ring.store_u32(SRING_RSP_PROD, 1).unwrap();
    drop(back);
    assert_eq!(received(&mut s), vec![2]);

    let mut back = s.backend(&s.journal);
    assert_eq!(ids(&drain(&mut back)), vec![0, 1, 3]);
}

#[test]
fn fresh_journal_leaves_the_ring_contents_as_they_are() {
    let mut s = Setup::new(7);
    let mut back = s.backend(&s.journal);
    s.push(0..5);
    consume_and_answer(&mut back, 5, &[0, 1, 2]);
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
fn a_whole_lap_served_and_published_leaves_nothing_to_serve_again() {
    let mut s = Setup::new(0);
    let mut back = s.backend(&s.journal);
    serve_a_lap(&mut s, &mut back, 0..32);
    drop(back);
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
    consume_and_answer(&mut back, 3, &[0, 1, 2]);
    drop(back);
    s.push([3]);
    // Killed while recording index 43: its bytes reached a free entry, its tag did not.
    let mut torn = [0u8; MAX_REQUEST_SIZE];
    encode_request(ABI, &write(999), &mut torn);
    let free = (0..32)
        .map(|e| e * SLOT_BYTES)
        .find(|off| s.journal.load_u64(*off) == Ok(0))
        .unwrap();
    s.journal.write_bytes(free + HEAD_BYTES, &torn).unwrap();

    let mut back = s.backend(&s.journal);
    assert_eq!(ids(&drain(&mut back)), vec![0, 1, 2, 3]);
    assert_eq!(back.replayed(), 3);
}

#[test]
fn consuming_records_the_entry_with_its_full_index_as_tag_until_published() {
    let mut s = Setup::new(u32::MAX);
    let mut back = s.backend(&s.journal);
    s.push([1, 2]);
    drain(&mut back);
    let recorded = |s: &Setup| -> Vec<(u64, Request)> {
        (0..32)
            .map(|e| e * SLOT_BYTES)
            .filter_map(|off| {
                let tag = s.journal.load_u64(off).unwrap();
                let mut entry = [0u8; MAX_REQUEST_SIZE];
                s.journal.read_bytes(off + HEAD_BYTES, &mut entry).unwrap();
                (tag != 0).then(|| (tag, crate::decode_request(ABI, &entry).unwrap()))
            })
            .collect()
    };
    let mut found = recorded(&s);
    found.sort_by_key(|(_, r)| r.id());
    let tags = [u32::MAX, 0].map(|idx| (u64::from(TAG_MAGIC) << 32) | u64::from(idx));
    assert_eq!(found, vec![(tags[0], write(1)), (tags[1], write(2))]);
    back.push_response(&write(2).response(status::OKAY));
    back.push_responses_and_check_notify();
    assert_eq!(
        recorded(&s),
        vec![(tags[0], write(1))],
        "2's entry is free again"
    );
}

#[test]
fn journal_smaller_than_the_ring_needs_is_refused() {
    let ring = HeapMemory::new(1);
    let small = HeapMemory::with_len(journal_bytes(ABI, 0) - 1);
    let err = BackRing::attach_journaled(ring, ABI, 0, 0, Box::new(small))
        .err()
        .unwrap();
    assert_eq!(
        err,
        Error::MemoryTooSmall {
            len: 32 * SLOT_BYTES - 1,
            need: 32 * SLOT_BYTES
        }
    );
}
