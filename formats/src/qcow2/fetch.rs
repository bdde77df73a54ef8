//! L2 tables missing from the cache, read on the queue's engine while the queue goes on.
//!
//! Before a guest read, write, discard or write-zeroes is planned, the queue looks up the L2
//! tables its guest clusters need. If one is mapped but not cached, it is first read from the
//! host's page cache without waiting (`preadv2` with `RWF_NOWAIT`): a table the host has in
//! memory costs a copy, as a synchronous read would, and no trip through the engine. If the
//! page cache does not hold all of it, the op is parked and the
//! table is read on the queue's engine (through the page-cached descriptor, as the write-back
//! writes: [`Engine::submit_meta`]), as a child that belongs to no guest op. Ops missing the
//! same table meanwhile join that read; ops whose tables are cached are planned and complete
//! as usual. When the read ends, the table enters the cache (with the cache's rules: a dirty
//! table about to be evicted writes the cache back first, and nothing a running write-back
//! writes is evicted) and the parked ops are planned again. A failed read fails the ops parked
//! on it, and only them; the table is not cached.
//!
//! The file bounds of the table are checked before the read, as the synchronous path checks
//! them: a table outside the file fails the op at once, and one in the file's last, partly
//! written cluster reads zeros past the end. Its entries are checked when used, as always.
//!
//! A read may be overtaken: the table may come into the cache another way (a synchronous read,
//! another queue's read) and change before this one ends. [`Meta::fetching`] notes that; what
//! an overtaken read returns is dropped (the file may hold older bytes than the cache had).
//!
//! An op is parked once: planned again, it reads a table still missing synchronously (two
//! tables, or its table evicted again meanwhile by other misses), so it always makes progress.
//! Everything that is not a guest op on a queue (opening, `check`, the image tools, growing,
//! committing allocations, refcount blocks) still reads its tables synchronously.
//!
//! [`Engine::submit_meta`]: crate::engine::Engine::submit_meta

use crate::buffer::SharedBuf;
use crate::error::Error;
use crate::image::IoOp;
use crate::planned::Child;

use super::layout;
use super::meta::{Meta, Table};
use super::metaio::{MetaIo, MetaKind};
use super::queue::Qcow2Queue;
use super::read::lock;

impl Meta {
    /// The first L2 table that guest clusters `first..=last` are mapped to and that is not
    /// cached; `None` if there is none (unmapped clusters, or an L1 entry the planning will
    /// report as invalid).
    fn missing_l2(&self, first: u64, last: u64) -> Option<u64> {
        let layout = self.layout();
        for index in layout.l1_index(first)..=layout.l1_index(last) {
            let entry = usize::try_from(index).ok().and_then(|i| self.l1.get(i))?;
            let table = layout::decode_l1(*entry, layout).ok()?;
            if table != 0 && !self.l2_cache.contains(table) {
                return Some(table);
            }
        }
        None
    }

    /// An engine read of the L2 table at `table` is about to be issued.
    pub(super) fn begin_fetch(&mut self, table: u64) -> Result<(), Error> {
        self.check_table_inside(Table::L2, table)?;
        self.fetching.entry(table).or_default().reads += 1;
        Ok(())
    }

    /// The L2 table at `table` came into the cache or was forgotten: the engine reads of it in
    /// flight may return older bytes.
    pub(super) fn fetch_overtaken(&mut self, table: u64) {
        if let Some(f) = self.fetching.get_mut(&table) {
            f.stale = true;
        }
    }

    /// One engine read of `table` ended with `data` (`None`: it failed). The table is cached
    /// unless the read was overtaken.
    pub(super) fn end_fetch(&mut self, table: u64, data: Option<Vec<u8>>) -> Result<(), Error> {
        let stale = match self.fetching.get_mut(&table) {
            Some(f) => {
                f.reads = f.reads.saturating_sub(1);
                let stale = f.stale;
                if f.reads == 0 {
                    self.fetching.remove(&table);
                }
                stale
            }
            None => true,
        };
        match data {
            Some(data) if !stale && !self.l2_cache.contains(table) => {
                self.cache_table(Table::L2, table, data)
            }
            _ => Ok(()),
        }
    }
}

/// An engine read of an L2 table, run as a parent of its own on a queue.
#[derive(Debug)]
pub(super) struct Fetch {
    /// Where the table is.
    pub table: u64,
    /// What the read fills.
    pub buf: SharedBuf,
}

impl Qcow2Queue {
    /// Parks `op` on an engine read of an L2 table it needs and the cache lacks (issuing the
    /// read unless this queue has it in flight already); gives it back if it needs none.
    pub(super) fn park_on_miss(&mut self, op: IoOp, tag: u64) -> Option<IoOp> {
        let Some((offset, Some(len))) = op.range().filter(|r| r.1.is_some_and(|l| l > 0)) else {
            return Some(op);
        };
        let meta = self.meta.clone();
        let Ok(mut meta) = lock(&meta) else {
            return Some(op);
        };
        let bits = meta.layout().cluster_bits;
        let last = offset.saturating_add(len - 1) >> bits;
        let Some(table) = meta.missing_l2(offset >> bits, last) else {
            return Some(op);
        };
        if let Some(waiting) = self.fetches.get_mut(&table) {
            waiting.push((op, tag));
            return None;
        }
        let cs = meta.layout().cluster_usize();
        if meta.tables_from_page_cache {
            match from_page_cache(&mut meta, &*self.meta_io, table, cs) {
                Ok(true) => return Some(op),
                Ok(false) => {}
                Err(e) => {
                    drop(meta);
                    self.finish_now(tag, Err(e));
                    return None;
                }
            }
        }
        let begun = meta.begin_fetch(table);
        drop(meta);
        let announced = begun.and_then(|()| {
            let told = self.meta_io.engine_read(MetaKind::L2, table, cs);
            if told.is_err() {
                lock(&self.meta)?.end_fetch(table, None)?;
            }
            told
        });
        if let Err(e) = announced {
            self.finish_now(tag, Err(e));
            return None;
        }
        self.fetches.insert(table, vec![(op, tag)]);
        let buf = SharedBuf::new(cs);
        let read = IoOp::Read {
            offset: table,
            bufs: Box::new(buf.clone()),
        };
        self.spawn_fetch(Fetch { table, buf }, Child::Meta(read));
        None
    }

    /// The engine read `fetch` ended (`error`: it failed): the table enters the cache and the
    /// ops parked on it are planned again, or fail.
    pub(super) fn fetch_done(&mut self, fetch: Fetch, error: Option<Error>) {
        let data = error.is_none().then(|| table_bytes(fetch.buf));
        let ended = lock(&self.meta).and_then(|mut meta| meta.end_fetch(fetch.table, data));
        let mut failure = error.or(ended.err());
        if let Some(e) = &failure {
            tracing::debug!(error = %e, table = fetch.table, "qcow2 L2 table read failed");
        }
        for (op, tag) in self.fetches.remove(&fetch.table).unwrap_or_default() {
            match failure.take() {
                Some(e) => {
                    failure = Some(Error::from_errno(e.errno()));
                    self.finish_now(tag, Err(e));
                }
                None => {
                    self.replanned = true;
                    self.start_op(op, tag, false);
                }
            }
        }
    }
}

/// Caches the L2 table at `table` if the host's page cache holds all of it (read without
/// waiting); false if it does not, and the engine must read it.
fn from_page_cache(meta: &mut Meta, io: &dyn MetaIo, table: u64, cs: usize) -> Result<bool, Error> {
    meta.check_table_inside(Table::L2, table)?;
    let mut data = vec![0u8; cs];
    match io.read_cached(MetaKind::L2, table, &mut data)? {
        Some(got) if got == cs => {
            meta.cache_table(Table::L2, table, data)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// What a finished read put in `buf`. The engine dropped its handle when the read completed,
/// so this copies once (a handle still held elsewhere costs a zeroed copy more).
fn table_bytes(mut buf: SharedBuf) -> Vec<u8> {
    match buf.get_mut() {
        Some(bytes) => bytes.to_vec(),
        None => buf.copy_out(),
    }
}
