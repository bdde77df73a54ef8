//! A `map` whose answer is lost: the pool may have made (and committed) the mapping, so the
//! block is no longer the volume's to write anything else into; nor are the blocks in its
//! reserve, which the pool takes back when the connection closes.

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
}

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
    fn provision(&mut self, count: usize) -> Result<Vec<u64>> {
        self.check()?;
        self.inner.provision(count)
    }
    fn map(&mut self, mappings: &[NewMapping]) -> Result<()> {
        self.check()?;
        self.inner.map(mappings)?;
        self.broken = self.lose.load(Ordering::SeqCst);
        self.check()
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

#[test]
fn a_block_whose_map_answer_was_lost_is_not_written_again() {
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
    };
    let vol = ThinVolume::new(Box::new(port), data, VolumeOptions::default()).expect("volume");
    let mut q = queue(&vol);
    put(&mut *q, 0, &pattern(1, 4096));
    flush(&mut *q);
    // Block 300's mapping (none) is cached from here on.
    assert_eq!(get(&mut *q, FAR, 4096), vec![0; 4096]);
    // Block 1's mapping is made, but the answer never comes: the write fails.
    lose.store(true, Ordering::SeqCst);
    let lost = suite::write_at(&mut *q, BS, &pattern(2, 4096));
    assert_eq!(lost.expect_err("answer lost").errno(), libc::EIO);
    // Another worker's flush commits it.
    t.pool.commit().expect("commit");
    // Blocks 2 and 300 are new: they must not take the block that may now hold block 1, nor
    // any other block the volume was handed (they went back to the pool with the
    // connection). Block 2's mapping is asked again (and cannot be); block 300's is cached.
    assert!(vol.reserved() > 0, "the volume held blocks in reserve");
    for offset in [2 * BS, FAR] {
        let refused = suite::write_at(&mut *q, offset, &pattern(3, 4096));
        assert_eq!(refused.expect_err("port failed").errno(), libc::EIO);
    }
    assert_eq!(vol.reserved(), 0, "the reserve is dropped");
    drop(q);
    drop(vol);
    let vol = ThinVolume::open_local(&t.pool, 1, VolumeOptions::default()).expect("reopen");
    let mut q = vol.open_queue(4).expect("queue");
    let mut expected = pattern(2, 4096);
    expected.extend(vec![0; 4096]);
    let got = get(&mut *q, BS, 8192);
    suite::assert_bytes(&got, &expected, "block 1 as its lost write made it");
}
