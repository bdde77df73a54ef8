//! While a `map` is in flight, the first writes that finish wait for its answer and go out
//! together in the next one: fewer frames, wake-ups and answers per first write.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use rustbk_formats::suite::pattern;
use rustbk_formats::{BlockImage, Completion, ImageQueue, IoOp, SharedBuf};

use crate::error::Result;
use crate::pool::{LocalPort, PoolOptions, VolumeSpec};
use crate::port::{MapStart, NewMapping, PoolPort};
use crate::testing::{flush, forward_to_inner, get, new_pool, thin_check};
use crate::volume::{ThinVolume, VolumeOptions};

const BS: u64 = 64 << 10;

/// A port whose maps are answered only once `open` is set, as a pool service's are once
/// its answer arrives; it counts the maps sent.
struct Gated {
    inner: LocalPort,
    open: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    waiting: Vec<(u64, Vec<NewMapping>)>,
}

impl PoolPort for Gated {
    forward_to_inner!();
    fn provision_zeroed(&mut self, count: usize) -> Result<crate::port::Handout> {
        self.inner.provision_zeroed(count)
    }
    fn map_start(&mut self, mappings: &[NewMapping]) -> MapStart {
        let ticket = self.sent.fetch_add(1, Ordering::SeqCst) as u64;
        self.waiting.push((ticket, mappings.to_vec()));
        MapStart::Sent(ticket)
    }
    fn map_answer(&mut self, ticket: u64) -> Option<Result<()>> {
        if !self.open.load(Ordering::SeqCst) {
            return None;
        }
        let at = self.waiting.iter().position(|(t, _)| *t == ticket)?;
        let (_, mappings) = self.waiting.remove(at);
        Some(self.inner.map(&mappings))
    }
}

fn write(q: &mut dyn ImageQueue, vblock: u64, tag: u64) {
    let buf = SharedBuf::new(4096);
    assert!(buf.copy_in(0, &pattern(tag, 4096)));
    let op = IoOp::Write {
        offset: vblock * BS,
        bufs: Box::new(buf),
    };
    q.submit(op, tag).expect("submit");
    // Long enough for the data write to finish and the op to wait for its map.
    q.wait(Some(Duration::from_millis(150))).expect("wait");
}

#[test]
fn first_writes_finishing_while_a_map_is_in_flight_go_out_in_one_map() {
    let t = new_pool(BS, 64, PoolOptions::default());
    let spec = VolumeSpec {
        size: 32 * BS,
        ..VolumeSpec::default()
    };
    t.pool.create_volume(1, spec).expect("create");
    let inner = t.pool.open_port(1).expect("port");
    let data = inner.data_file();
    let (open, sent) = (Arc::new(AtomicBool::new(false)), Arc::default());
    let port = Gated {
        inner,
        open: open.clone(),
        sent: Arc::clone(&sent),
        waiting: Vec::new(),
    };
    let vol = ThinVolume::new(Box::new(port), data, VolumeOptions::default()).expect("volume");
    let mut q = vol.open_queue(8).expect("queue");
    for (tag, vblock) in [(1, 0), (2, 5), (3, 9), (4, 17)] {
        write(&mut *q, vblock, tag);
    }
    let mut done: Vec<Completion> = Vec::new();
    q.reap(&mut done);
    assert!(
        done.is_empty(),
        "no write completes before its map is answered"
    );
    assert_eq!(
        sent.load(Ordering::SeqCst),
        1,
        "the later three wait for the first map"
    );
    open.store(true, Ordering::SeqCst);
    while done.len() < 4 {
        q.wait(Some(Duration::from_millis(100))).expect("wait");
        q.reap(&mut done);
    }
    assert!(done.iter().all(|c| c.result.is_ok()), "{done:?}");
    assert_eq!(
        sent.load(Ordering::SeqCst),
        2,
        "one map for the three held writes"
    );
    for (tag, vblock) in [(1, 0), (2, 5), (3, 9), (4, 17)] {
        assert_eq!(get(&mut *q, vblock * BS, 4096), pattern(tag, 4096));
    }
    flush(&mut *q);
    drop(q);
    drop(vol);
    thin_check(&t.meta);
    assert_eq!(t.pool.volumes().expect("list")[0].mapped_blocks, 4);
}
