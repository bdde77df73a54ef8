//! A `map` whose answer is lost: the pool may have made (and committed) the mapping, so the
//! block is no longer the volume's to write anything else into; nor are the blocks in its
//! reserve, which the pool takes back when the connection closes, nor (until a new port)
//! the blocks its cache maps.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustbk_formats::BlockImage;
use rustbk_formats::suite::{self, pattern};

use crate::error::{Error, Result};
use crate::meta::Mapping;
use crate::pool::{LocalPort, PoolOptions, VolumeSpec};
use crate::port::{NewMapping, PoolPort, VolumeInfo};
use crate::testing::{flush, get, new_pool, put, queue};
use crate::volume::{ThinVolume, VolumeOptions};

const BS: u64 = 64 << 10;
/// A block whose mapping lives in another chunk of the cache than blocks 0 to 2.
const FAR: u64 = 300 * BS;

/// A port whose connection breaks once `lose` is set, right after the pool made the next
/// mappings it was sent (as when the pool service dies before it answers).
struct LostReply {
    inner: LocalPort,
    lose: Arc<AtomicBool>,
    broken: bool,
    /// Maps are sent and never answered: their answer is an error once [`OVERDUE`] passed,
    /// as a socket port's is after its call timeout (and nothing rings the queue).
    silent: bool,
    sent: Option<std::time::Instant>,
}

/// How long a silent port's map stays unanswered before it counts as lost.
const OVERDUE: std::time::Duration = std::time::Duration::from_millis(1500);

impl LostReply {
    fn check(&self) -> Result<()> {
        match self.broken {
            true => Err(Error::Service(
                "the pool service closed the connection".into(),
            )),
            false => Ok(()),
        }
    }
}

impl PoolPort for LostReply {
    fn info(&mut self) -> Result<VolumeInfo> {
        self.check()?;
        self.inner.info()
    }
    fn lookup(&mut self, vblocks: Range<u64>) -> Result<Vec<(u64, Mapping)>> {
        self.check()?;
        self.inner.lookup(vblocks)
    }
    fn provision_zeroed(&mut self, count: usize) -> Result<crate::port::Handout> {
        self.check()?;
        self.inner.provision_zeroed(count)
    }
    fn map(&mut self, mappings: &[NewMapping]) -> Result<()> {
        self.check()?;
        self.inner.map(mappings)?;
        self.broken = self.lose.load(Ordering::SeqCst);
        self.check()
    }
    fn map_start(&mut self, mappings: &[NewMapping]) -> crate::port::MapStart {
        match self.silent {
            true => {
                self.sent = Some(std::time::Instant::now());
                crate::port::MapStart::Sent(7)
            }
            false => crate::port::MapStart::Done(self.map(mappings)),
        }
    }
    fn map_answer(&mut self, ticket: u64) -> Option<Result<()>> {
        let overdue = self.sent.is_some_and(|at| at.elapsed() > OVERDUE);
        (ticket == 7 && overdue).then(|| Err(Error::Service("no answer to a map".into())))
    }
    fn unmap(&mut self, vblocks: Range<u64>) -> Result<Vec<u64>> {
        self.check()?;
        self.inner.unmap(vblocks)
    }
    fn release(&mut self, blocks: &[u64]) -> Result<()> {
        self.check()?;
        self.inner.release(blocks)
    }
    fn commit(&mut self) -> Result<()> {
        self.check()?;
        self.inner.commit()
    }
    fn pause_requested(&self) -> bool {
        false
    }
    fn paused(&mut self) -> Result<VolumeInfo> {
        self.check()?;
        self.inner.paused()
    }
    fn set_waker(&mut self, waker: Box<dyn Fn() + Send + Sync>) {
        self.inner.set_waker(waker);
    }
    fn failed(&self) -> bool {
        self.broken
    }
}

/// Volume 1 of a new pool served through a [`LostReply`] port: the pool, the volume, and
/// the switch that breaks the port after its next map.
fn served_through(silent: bool) -> (crate::testing::TestPool, ThinVolume, Arc<AtomicBool>) {
    let t = new_pool(BS, 64, PoolOptions::default());
    let spec = VolumeSpec {
        size: 32 << 20,
        ..VolumeSpec::default()
    };
    t.pool.create_volume(1, spec).expect("create");
    let inner = t.pool.open_port(1).expect("port");
    let data = inner.data_file();
    let lose = Arc::new(AtomicBool::new(false));
    let port = LostReply {
        inner,
        lose: lose.clone(),
        broken: false,
        silent,
        sent: None,
    };
    let vol = ThinVolume::new(Box::new(port), data, VolumeOptions::default()).expect("volume");
    (t, vol, lose)
}

#[test]
fn after_a_lost_map_answer_nothing_goes_through_the_failed_port() {
    let (t, vol, lose) = served_through(false);
    let mut q = queue(&vol);
    put(&mut *q, 0, &pattern(1, 4096));
    put(&mut *q, FAR, &pattern(5, 4096));
    // Block 301 is known to be unmapped: its mapping is cached, as block 300's.
    assert_eq!(get(&mut *q, FAR + BS, 4096), vec![0; 4096]);
    flush(&mut *q);
    // Block 1's mapping is made, but the answer never comes: the write fails.
    lose.store(true, Ordering::SeqCst);
    let lost = suite::write_at(&mut *q, BS, &pattern(2, 4096));
    assert_eq!(lost.expect_err("answer lost").errno(), libc::EIO);
    // Another worker's flush commits it.
    t.pool.commit().expect("commit");
    assert!(vol.reserved() > 0, "the volume holds blocks in reserve");
    // No overwrite in place (block 300), no new block (blocks 2 and 301): a restarted
    // service may have handed the blocks mapped after its last commit to another volume,
    // and the block that may hold block 1 and the reserve went back to the pool.
    for offset in [FAR, 2 * BS, FAR + BS] {
        let refused = suite::write_at(&mut *q, offset, &pattern(3, 4096));
        assert_eq!(refused.expect_err("port failed").errno(), libc::EIO);
    }
    drop(q);
    drop(vol);
    let vol = ThinVolume::open_local(&t.pool, 1, VolumeOptions::default()).expect("reopen");
    let mut q = vol.open_queue(4).expect("queue");
    let mut expected = pattern(2, 4096);
    expected.extend(vec![0; 4096]);
    let got = get(&mut *q, BS, 8192);
    suite::assert_bytes(&got, &expected, "block 1 as its lost write made it");
    suite::assert_bytes(&get(&mut *q, 0, 4096), &pattern(1, 4096), "block 0");
    suite::assert_bytes(&get(&mut *q, FAR, 4096), &pattern(5, 4096), "block 300");
    drop(q);
    drop(vol);
    unmapped_blocks_were_never_written(&t);
}

/// Every data block volume 1 does not map still reads zeros on the data device.
fn unmapped_blocks_were_never_written(t: &crate::testing::TestPool) {
    let mut port = t.pool.open_port(1).expect("port");
    let mapped: Vec<u64> = port
        .lookup(0..512)
        .expect("lookup")
        .iter()
        .map(|(_, m)| m.block)
        .collect();
    let device = std::fs::read(&t.data).expect("data device");
    let bs = usize::try_from(BS).expect("block size");
    for (b, block) in device.chunks(bs).enumerate() {
        let written = block.iter().any(|x| *x != 0);
        assert!(
            !written || mapped.contains(&(b as u64)),
            "unmapped data block {b} was written"
        );
    }
}

#[test]
fn a_map_never_answered_fails_its_write_once_overdue_though_nothing_rings_the_queue() {
    let (_pool, vol, _) = served_through(true);
    let mut q = queue(&vol);
    let bufs = rustbk_formats::SharedBuf::new(4096);
    let op = rustbk_formats::IoOp::Write {
        offset: 0,
        bufs: Box::new(bufs),
    };
    q.submit(op, 1).expect("submit");
    q.commit().expect("commit");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // The ring worker's sleep, with no limit: only the queue's own wake-up finds the
        // answer overdue.
        let mut done = Vec::new();
        let waited = loop {
            if let Err(e) = q.wait_any(&[], None) {
                break Err(e);
            }
            q.reap(&mut done);
            if !done.is_empty() {
                break Ok(done);
            }
        };
        let _ = tx.send(waited);
    });
    let done = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("the queue slept on past the map's timeout")
        .expect("wait");
    assert_eq!(done.len(), 1, "{done:?}");
    let errno = done[0]
        .result
        .as_ref()
        .map_err(rustbk_formats::Error::errno);
    assert_eq!(errno, Err(libc::EIO), "{done:?}");
}
