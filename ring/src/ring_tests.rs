use super::*;
use crate::abi::{SRING_REQ_EVENT, SRING_REQ_PROD, SRING_RSP_EVENT, SRING_RSP_PROD, op, status};
use crate::front::FrontRing;
use crate::request::{BadReason, RwOp};
use crate::shared::{HeapMemory, SharedMemoryExt};
use proptest::prelude::*;
use std::sync::mpsc;
use std::time::Duration;

fn read(id: u64) -> Request {
    crate::request::one_page_request(id, RwOp::Read, 1)
}

fn pair(abi: Abi, order: u32, start: u32) -> (FrontRing<HeapMemory>, BackRing<HeapMemory>) {
    let mem = HeapMemory::new(1 << order);
    let front = FrontRing::init_at(mem.clone(), abi, order, start).unwrap();
    let back = BackRing::attach(mem, abi, order, start).unwrap();
    (front, back)
}

fn take(back: &mut BackRing<HeapMemory>) -> Option<Request> {
    back.next_request().unwrap().map(|r| r.unwrap())
}

#[test]
fn construction_checks_order_and_memory_size() {
    let small = HeapMemory::new(1);
    assert_eq!(
        BackRing::new(small.clone(), Abi::X86_64, 1).unwrap_err(),
        Error::MemoryTooSmall {
            len: 4096,
            need: 8192
        }
    );
    assert!(matches!(
        FrontRing::init(HeapMemory::new(32), Abi::X86_64, 5),
        Err(Error::OrderTooLarge { order: 5, .. })
    ));
    for order in 0..=4 {
        let back = BackRing::new(HeapMemory::new(1 << order), Abi::X86_32, order).unwrap();
        assert_eq!(back.size(), 32 << order);
    }
}

#[test]
fn init_sets_shared_ring_header_like_ring_h() {
    let mem = HeapMemory::new(1);
    mem.fill_bytes(0, 64, 0xee).unwrap();
    let _front = FrontRing::init(mem.clone(), Abi::X86_64, 0).unwrap();
    assert_eq!(mem.load_u32(SRING_REQ_PROD), Ok(0));
    assert_eq!(mem.load_u32(SRING_RSP_PROD), Ok(0));
    assert_eq!(mem.load_u32(SRING_REQ_EVENT), Ok(1));
    assert_eq!(mem.load_u32(SRING_RSP_EVENT), Ok(1));
    let mut pad = [0xffu8; 48];
    mem.read_bytes(16, &mut pad).unwrap();
    assert_eq!(pad, [0u8; 48]);
}

#[test]
fn request_and_response_cross_the_ring() {
    for abi in [Abi::X86_64, Abi::X86_32] {
        let (mut front, mut back) = pair(abi, 0, 0);
        front.push_request(&read(5)).unwrap();
        assert!(
            front.push_requests_and_check_notify(),
            "first request notifies (req_event = 1)"
        );
        assert_eq!(take(&mut back), Some(read(5)));
        assert_eq!(take(&mut back), None);
        back.push_response(&read(5).response(status::OKAY));
        assert!(
            back.push_responses_and_check_notify(),
            "first response notifies (rsp_event = 1)"
        );
        assert_eq!(
            front.pop_response(),
            Some(Response {
                id: 5,
                op: op::READ,
                status: 0
            })
        );
        assert_eq!(front.pop_response(), None);
    }
}

#[test]
fn bad_entry_on_ring_yields_bad_request_with_id() {
    let (mut front, mut back) = pair(Abi::X86_64, 0, 0);
    let mut raw = [0u8; 112];
    raw[0] = 9;
    raw[8..16].copy_from_slice(&1234u64.to_le_bytes());
    front.push_raw(&raw).unwrap();
    front.push_requests_and_check_notify();
    let bad = back.next_request().unwrap().unwrap().unwrap_err();
    assert_eq!(
        (bad.id, bad.op, bad.status, bad.reason),
        (1234, 9, status::EOPNOTSUPP, BadReason::UnknownOp)
    );
    assert!(matches!(
        front.push_raw(&[0u8; 113]),
        Err(Error::EntryLength { len: 113, max: 112 })
    ));
}

#[test]
fn full_ring_of_unanswered_requests_yields_none_until_answered() {
    let (mut front, mut back) = pair(Abi::X86_64, 0, 0);
    for id in 0..32 {
        front.push_request(&read(id)).unwrap();
    }
    assert_eq!(front.push_request(&read(32)), Err(Error::RingFull));
    front.push_requests_and_check_notify();
    for id in 0..32 {
        assert_eq!(take(&mut back).map(|r| r.id()), Some(id));
    }
    assert_eq!(back.next_request(), Ok(None));
    assert_eq!(back.in_flight(), 32);
    back.push_response(&read(0).response(status::OKAY));
    back.push_responses_and_check_notify();
    assert!(front.pop_response().is_some());
    front.push_request(&read(32)).unwrap();
    front.push_requests_and_check_notify();
    assert_eq!(take(&mut back).map(|r| r.id()), Some(32));
}

#[test]
fn impossible_req_prod_is_overflow() {
    for start in [0u32, u32::MAX - 3] {
        let (mut front, mut back) = pair(Abi::X86_32, 0, start);
        front.force_req_prod(start.wrapping_add(33));
        assert!(matches!(
            back.next_request(),
            Err(Error::Overflow { size: 32, .. })
        ));
        assert!(matches!(
            back.final_check_for_requests(),
            Err(Error::Overflow { .. })
        ));
        front.force_req_prod(start.wrapping_add(32));
        assert!(
            back.next_request().unwrap().is_some(),
            "exactly a full ring is fine"
        );
        front.force_req_prod(start.wrapping_sub(1));
        assert!(matches!(back.next_request(), Err(Error::Overflow { .. })));
    }
}

#[test]
fn req_prod_moving_backwards_past_consumed_is_overflow() {
    let (mut front, mut back) = pair(Abi::X86_64, 0, 100);
    for id in 0..4 {
        front.push_request(&read(id)).unwrap();
    }
    front.push_requests_and_check_notify();
    for _ in 0..4 {
        take(&mut back).unwrap();
    }
    front.force_req_prod(102);
    assert!(matches!(
        back.next_request(),
        Err(Error::Overflow {
            req_prod: 102,
            req_cons: 104,
            ..
        })
    ));
}

#[test]
fn response_without_outstanding_request_is_dropped() {
    let (mut front, mut back) = pair(Abi::X86_64, 0, 0);
    back.push_response(&Response {
        id: 1,
        op: 0,
        status: 0,
    });
    assert!(!back.push_responses_and_check_notify());
    assert_eq!(back.rsp_prod_pvt(), 0);
    assert_eq!(front.pop_response(), None);
}

#[test]
fn front_refuses_impossible_rsp_prod() {
    let (mut front, back) = pair(Abi::X86_64, 0, 0);
    back.mem().store_u32(SRING_RSP_PROD, 3).unwrap();
    assert!(matches!(
        front.try_pop_response(),
        Err(Error::ResponseOverflow { rsp_prod: 3, .. })
    ));
    assert_eq!(front.pop_response(), None);
}

#[test]
fn indices_wrap_around_u32_max() {
    for abi in [Abi::X86_64, Abi::X86_32] {
        let start = u32::MAX - 40;
        let (mut front, mut back) = pair(abi, 1, start);
        for round in 0u64..10 {
            for i in 0..50 {
                front.push_request(&read(round * 100 + i)).unwrap();
            }
            front.push_requests_and_check_notify();
            for i in 0..50 {
                let req = take(&mut back).unwrap();
                assert_eq!(req, read(round * 100 + i));
                back.push_response(&req.response(status::OKAY));
            }
            back.push_responses_and_check_notify();
            for i in 0..50 {
                assert_eq!(front.pop_response().map(|r| r.id), Some(round * 100 + i));
            }
        }
        assert_eq!(back.req_cons(), start.wrapping_add(500));
        assert!(back.req_cons() < start, "the index wrapped");
    }
}

/// One step of the single-threaded model test.
#[derive(Clone, Copy, Debug)]
enum Step {
    FrontPush(u32),
    FrontPublish,
    FrontPop(u32),
    FrontFinalCheck,
    BackTake(u32),
    BackRespond(u32),
    BackPublish,
    BackFinalCheck,
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (1u32..40).prop_map(Step::FrontPush),
        Just(Step::FrontPublish),
        (1u32..40).prop_map(Step::FrontPop),
        Just(Step::FrontFinalCheck),
        (1u32..40).prop_map(Step::BackTake),
        (1u32..40).prop_map(Step::BackRespond),
        Just(Step::BackPublish),
        Just(Step::BackFinalCheck),
    ]
}

/// Whether publishing `old..new` passes `event`, checked index by index.
fn passes(old: u32, new: u32, event: u32) -> bool {
    let mut i = old;
    while i != new {
        i = i.wrapping_add(1);
        if i == event {
            return true;
        }
    }
    false
}

/// Model state of the single-threaded test.
struct Model {
    front: FrontRing<HeapMemory>,
    back: BackRing<HeapMemory>,
    mem: HeapMemory,
    start: u32,
    next_id: u64,
    taken: std::collections::VecDeque<u64>,
    next_rsp: u64,
    req_published: u32,
    rsp_published: u32,
    back_waiting: bool,
    front_waiting: bool,
}

impl Model {
    fn new(start: u32) -> Self {
        let (front, back) = pair(Abi::X86_64, 0, start);
        let mem = front.mem().clone();
        Model {
            front,
            back,
            mem,
            start,
            next_id: 0,
            taken: Default::default(),
            next_rsp: 0,
            req_published: start,
            rsp_published: start,
            back_waiting: true,
            front_waiting: true,
        }
    }

    fn step(&mut self, step: Step) -> Result<(), TestCaseError> {
        match step {
            Step::FrontPush(n) => {
                for _ in 0..n.min(self.front.free_slots()) {
                    self.front.push_request(&read(self.next_id)).unwrap();
                    self.next_id += 1;
                }
            }
            Step::FrontPublish => {
                let event = self.mem.load_u32(SRING_REQ_EVENT).unwrap();
                let old = self.req_published;
                let notify = self.front.push_requests_and_check_notify();
                let new = self.mem.load_u32(SRING_REQ_PROD).unwrap();
                prop_assert_eq!(notify, passes(old, new, event));
                if self.back_waiting && new != old {
                    prop_assert!(
                        notify,
                        "backend asked for a notification and did not get it"
                    );
                    self.back_waiting = false;
                }
                self.req_published = new;
            }
            Step::FrontPop(n) => {
                for _ in 0..n {
                    match self.front.pop_response() {
                        Some(r) => {
                            prop_assert_eq!(r.id, self.next_rsp);
                            self.next_rsp += 1;
                        }
                        None => break,
                    }
                }
            }
            Step::FrontFinalCheck => {
                let pending = self.front.final_check_for_responses();
                prop_assert_eq!(pending, self.rsp_published != self.front_rsp_cons());
                self.front_waiting = !pending;
            }
            Step::BackTake(n) => {
                for _ in 0..n {
                    match self.back.next_request().unwrap() {
                        Some(r) => self.taken.push_back(r.unwrap().id()),
                        None => break,
                    }
                }
            }
            Step::BackRespond(n) => {
                for _ in 0..n {
                    let Some(id) = self.taken.pop_front() else {
                        break;
                    };
                    self.back.push_response(&Response {
                        id,
                        op: op::READ,
                        status: 0,
                    });
                }
            }
            Step::BackPublish => {
                let event = self.mem.load_u32(SRING_RSP_EVENT).unwrap();
                let old = self.rsp_published;
                let notify = self.back.push_responses_and_check_notify();
                let new = self.mem.load_u32(SRING_RSP_PROD).unwrap();
                prop_assert_eq!(notify, passes(old, new, event));
                if self.front_waiting && new != old {
                    prop_assert!(
                        notify,
                        "frontend asked for a notification and did not get it"
                    );
                    self.front_waiting = false;
                }
                self.rsp_published = new;
            }
            Step::BackFinalCheck => {
                let pending = self.back.final_check_for_requests().unwrap();
                let room = self.back.in_flight() < self.back.size();
                prop_assert_eq!(pending, room && self.req_published != self.back.req_cons());
                self.back_waiting = !pending;
            }
        }
        Ok(())
    }

    fn front_rsp_cons(&self) -> u32 {
        self.start
            .wrapping_add(u32::try_from(self.next_rsp).unwrap())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn notifications_happen_exactly_when_asked(
        start in prop_oneof![Just(0u32), Just(u32::MAX - 20), any::<u32>()],
        steps in proptest::collection::vec(arb_step(), 1..300),
    ) {
        let mut m = Model::new(start);
        for s in steps {
            m.step(s)?;
        }
    }
}

#[test]
fn threads_exchange_ten_thousand_requests_without_lost_wakeups() {
    const TOTAL: u64 = 10_000;
    let (mut front, mut back) = pair(Abi::X86_64, 2, u32::MAX - 1000);
    let (to_back, back_evt) = mpsc::channel::<()>();
    let (to_front, front_evt) = mpsc::channel::<()>();
    let wait = Duration::from_secs(10);
    let backend = std::thread::spawn(move || {
        let mut answered = 0u64;
        while answered < TOTAL {
            while let Some(req) = back.next_request().unwrap() {
                let req = req.unwrap();
                assert_eq!(req, read(answered));
                back.push_response(&req.response(status::OKAY));
                answered += 1;
                if answered % 7 == 0 && back.push_responses_and_check_notify() {
                    to_front.send(()).unwrap();
                }
            }
            if back.push_responses_and_check_notify() {
                to_front.send(()).unwrap();
            }
            let idle = answered < TOTAL && !back.final_check_for_requests().unwrap();
            if idle && back_evt.recv_timeout(wait).is_err() {
                let m = back.mem();
                panic!(
                    "backend missed a notification: {back:?} hdr {:?}",
                    [0, 4, 8, 12].map(|o| m.load_u32(o).unwrap())
                );
            }
        }
    });
    let (mut sent, mut received) = (0u64, 0u64);
    while received < TOTAL {
        while sent < TOTAL && front.free_slots() > 0 {
            front.push_request(&read(sent)).unwrap();
            sent += 1;
            if sent % 5 == 0 && front.push_requests_and_check_notify() {
                to_back.send(()).unwrap();
            }
        }
        if front.push_requests_and_check_notify() {
            to_back.send(()).unwrap();
        }
        while let Some(rsp) = front.pop_response() {
            assert_eq!(
                rsp,
                Response {
                    id: received,
                    op: op::READ,
                    status: 0
                }
            );
            received += 1;
        }
        let can_send = sent < TOTAL && front.free_slots() > 0;
        let idle = received < TOTAL && !can_send && !front.final_check_for_responses();
        if idle && front_evt.recv_timeout(wait).is_err() {
            panic!("frontend missed a notification: {front:?} sent {sent} received {received}");
        }
    }
    backend.join().unwrap();
}
