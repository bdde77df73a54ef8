//! Helpers of the pool and volume tests.

use std::path::{Path, PathBuf};

use rustbk_formats::suite::{read_at, run, write_at};
use rustbk_formats::{BlockImage, ImageQueue, IoOp};

use crate::pool::{FreshData, Pool, PoolOptions, VolumeSpec};
use crate::volume::{ThinVolume, VolumeOptions};

/// Sends the crate's logs (info and up, or what `RUST_LOG` says) to the running test's
/// output, which the harness shows when the test fails: the reason behind an error
/// completion is logged, not carried by its errno.
pub(crate) fn capture_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("rustbk_thin=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .with_ansi(false)
        .with_thread_names(true)
        .try_init();
}

/// A pool in a temporary folder.
pub(crate) struct TestPool {
    pub dir: tempfile::TempDir,
    pub meta: PathBuf,
    pub data: PathBuf,
    pub pool: Pool,
}

/// Metadata big enough for every test but the metadata-full ones.
pub(crate) const META_BYTES: u64 = 8 << 20;

/// A new pool of `data_blocks` blocks of `block_size` bytes.
pub(crate) fn new_pool(block_size: u64, data_blocks: u64, opts: PoolOptions) -> TestPool {
    new_pool_with_meta(block_size, data_blocks, META_BYTES, opts)
}

/// A new pool with `meta_bytes` of metadata.
pub(crate) fn new_pool_with_meta(
    block_size: u64,
    data_blocks: u64,
    meta_bytes: u64,
    opts: PoolOptions,
) -> TestPool {
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = dir.path().join("meta");
    let data = dir.path().join("data");
    sized_file(&meta, meta_bytes);
    sized_file(&data, block_size * data_blocks);
    let pool = Pool::create(&meta, &data, block_size, opts).expect("create pool");
    TestPool {
        dir,
        meta,
        data,
        pool,
    }
}

/// A new pool of `data_blocks` blocks of `block_size` bytes on a data file filled with
/// zeros, as `rustbk thin create-pool --preallocation full` makes it.
pub(crate) fn new_full_pool(block_size: u64, data_blocks: u64, opts: PoolOptions) -> TestPool {
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = dir.path().join("meta");
    let data = dir.path().join("data");
    sized_file(&meta, META_BYTES);
    let zeros = vec![0u8; us(block_size * data_blocks)];
    std::fs::write(&data, zeros).expect("fill the data file");
    let pool = Pool::create_on_fresh_data(&meta, &data, block_size, opts, FreshData::Filled)
        .expect("create pool");
    TestPool {
        dir,
        meta,
        data,
        pool,
    }
}

impl TestPool {
    /// Closes the pool (its volumes must be closed) and opens it again.
    pub(crate) fn reopen(self, opts: PoolOptions) -> TestPool {
        let TestPool {
            dir,
            meta,
            data,
            pool,
        } = self;
        drop(pool);
        let pool = Pool::open(&meta, &data, opts).expect("reopen pool");
        TestPool {
            dir,
            meta,
            data,
            pool,
        }
    }

    /// A volume of `size` bytes.
    pub(crate) fn volume(&self, id: u64, size: u64) -> ThinVolume {
        let spec = VolumeSpec {
            size,
            ..VolumeSpec::default()
        };
        self.pool.create_volume(id, spec).expect("create volume");
        self.open(id)
    }

    /// Serves volume `id`.
    pub(crate) fn open(&self, id: u64) -> ThinVolume {
        ThinVolume::open_local(&self.pool, id, VolumeOptions::default()).expect("open volume")
    }
}

/// Creates `path` with `len` bytes.
pub(crate) fn sized_file(path: &Path, len: u64) {
    let f = std::fs::File::create(path).expect("create file");
    f.set_len(len).expect("set_len");
}

/// Runs thin-provisioning-tools' `thin_check` on the metadata; panics unless it passes.
pub(crate) fn thin_check(meta: &Path) {
    let peer = crate::peers::Peer::V0_9;
    crate::peers::thin_check(peer, meta).unwrap_or_else(|e| panic!("{e}"));
}

/// A queue on `vol`.
pub(crate) fn queue(vol: &ThinVolume) -> Box<dyn ImageQueue> {
    vol.open_queue(64).expect("queue")
}

/// Writes, expecting success.
pub(crate) fn put(q: &mut dyn ImageQueue, offset: u64, data: &[u8]) {
    write_at(q, offset, data).expect("write");
}

/// Reads, expecting success.
pub(crate) fn get(q: &mut dyn ImageQueue, offset: u64, len: usize) -> Vec<u8> {
    read_at(q, offset, len).expect("read")
}

/// Flushes, expecting success.
pub(crate) fn flush(q: &mut dyn ImageQueue) {
    run(q, IoOp::Flush).expect("flush");
}

/// A byte count as a `usize` (tests run on 64-bit hosts).
pub(crate) fn us(n: u64) -> usize {
    usize::try_from(n).expect("fits in usize")
}

/// The [`crate::port::PoolPort`] methods a test port passes through to its `inner` port
/// unchanged (all but provision, maps, give-back and the ones a test changes), with no pause
/// ever requested.
macro_rules! forward_to_inner {
    () => {
        fn info(&mut self) -> crate::Result<crate::port::VolumeInfo> {
            self.inner.info()
        }
        fn lookup(
            &mut self,
            vblocks: std::ops::Range<u64>,
        ) -> crate::Result<Vec<(u64, crate::meta::Mapping)>> {
            self.inner.lookup(vblocks)
        }
        fn map(&mut self, mappings: &[crate::port::NewMapping]) -> crate::Result<()> {
            self.inner.map(mappings)
        }
        fn unmap(&mut self, vblocks: std::ops::Range<u64>) -> crate::Result<Vec<u64>> {
            self.inner.unmap(vblocks)
        }
        fn release(&mut self, blocks: &[u64]) -> crate::Result<()> {
            self.inner.release(blocks)
        }
        fn commit(&mut self) -> crate::Result<()> {
            self.inner.commit()
        }
        fn pause_requested(&self) -> bool {
            false
        }
        fn paused(&mut self) -> crate::Result<crate::port::VolumeInfo> {
            self.inner.paused()
        }
        fn set_waker(&mut self, waker: Box<dyn Fn() + Send + Sync>) {
            self.inner.set_waker(waker);
        }
    };
}
pub(crate) use forward_to_inner;
