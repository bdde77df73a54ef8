//! The data-plane queue of a VHD image.
//!
//! Each guest op becomes engine children (reads and writes of allocated data with the
//! caller's buffers), work done synchronously (zeros, parent reads), and for writes to a
//! differencing disk the bitmap bits to set once every child finished. Children beyond the
//! engine's depth wait in a backlog. In the O_DSYNC cache modes (`writethrough`,
//! `directsync`) the metadata the finished writes changed is written back before their
//! completions are handed out.

use foldhash::{HashMap, HashMapExt};
use std::mem::take;
use std::sync::{Arc, Mutex};

use crate::buffer::{SharedBufs, total_len};
use crate::engine::Engine;
use crate::error::Error;
use crate::image::{BlockImage, Completion, IoOp};
use crate::planned::{self, Child, PlanIo, Planner};
use crate::qcow2::backing::{BackingReader, piece, zero};

use super::meta::Meta;
use super::metaio::VhdIo;
use super::plan::{self, Seg, lock};
use super::zero::{self, Zeroing};

struct Parent {
    tag: u64,
    pending: usize,
    error: Option<Error>,
    marks: Vec<(u32, u64, u64)>,
    wrote: bool,
}

impl planned::Tracked for Parent {
    fn progress(&mut self) -> (&mut usize, &mut Option<Error>) {
        (&mut self.pending, &mut self.error)
    }
}

/// What a queue is made of.
pub(super) struct Parts {
    pub engine: Engine,
    pub meta: Option<Arc<Mutex<Meta>>>,
    pub io: Arc<VhdIo>,
    pub parent: Option<Arc<dyn BlockImage>>,
    pub size: u64,
    pub read_only: bool,
    pub depth: u32,
}

/// A queue of a [`VhdImage`](super::VhdImage).
pub struct VhdQueue {
    io: PlanIo,
    meta: Option<Arc<Mutex<Meta>>>,
    file: Arc<VhdIo>,
    parent: Option<BackingReader>,
    size: u64,
    read_only: bool,
    next_id: u64,
    parents: HashMap<u64, Parent>,
    children: HashMap<u64, u64>,
    /// Room the pump reuses: child completions, then the ids of finished parents.
    reaped: Vec<Completion>,
    finished: Vec<u64>,
}

impl VhdQueue {
    pub(super) fn new(p: Parts) -> Result<VhdQueue, Error> {
        Ok(VhdQueue {
            io: PlanIo::new(p.engine, p.depth)?,
            meta: p.meta,
            file: p.io,
            parent: p.parent.map(BackingReader::new),
            size: p.size,
            read_only: p.read_only,
            next_id: 1,
            parents: HashMap::new(),
            children: HashMap::new(),
            reaped: Vec::new(),
            finished: Vec::new(),
        })
    }

    fn shared(bufs: Box<dyn crate::IoBuffers>) -> Result<SharedBufs, Error> {
        SharedBufs::new(bufs)
            .ok_or_else(|| Error::InvalidArgument("buffer length overflows".to_owned()))
    }

    /// The guest buffers' length, or an error if it overflows.
    fn length(bufs: &dyn crate::IoBuffers) -> Result<usize, Error> {
        total_len(bufs.iovecs())
            .ok_or_else(|| Error::InvalidArgument("buffer length overflows".to_owned()))
    }

    /// The host offset of a plan that is one run of allocated data covering all `len` bytes:
    /// the engine then uses the guest's buffers as they are.
    fn direct(segs: &[Seg], len: usize) -> Option<u64> {
        match segs {
            [
                Seg::Host {
                    host,
                    skip: 0,
                    len: n,
                },
            ] if *n == len => Some(*host),
            _ => None,
        }
    }

    fn read(&mut self, offset: u64, bufs: Box<dyn crate::IoBuffers>) -> Result<Vec<Child>, Error> {
        let len = Self::length(&*bufs)?;
        let segs = match &self.meta {
            Some(meta) => plan::plan_read(Some(&mut *lock(meta)?), offset, len)?,
            None => plan::plan_read(None, offset, len)?,
        };
        if let Some(host) = Self::direct(&segs, len) {
            return Ok(vec![Child::Io(IoOp::Read { offset: host, bufs })]);
        }
        let bufs = Self::shared(bufs)?;
        let mut kids = Vec::new();
        for seg in segs {
            match seg {
                Seg::Host { host, skip, len } => kids.push(Child::Io(IoOp::Read {
                    offset: host,
                    bufs: Box::new(piece(&bufs, skip, len)?),
                })),
                Seg::Zero { skip, len } => zero(&bufs, skip, len)?,
                Seg::Parent { guest, skip, len } => match &mut self.parent {
                    Some(parent) => parent.read(guest, &bufs, skip, len)?,
                    None => zero(&bufs, skip, len)?,
                },
            }
        }
        Ok(kids)
    }

    #[allow(clippy::type_complexity)]
    fn write(
        &mut self,
        offset: u64,
        bufs: Box<dyn crate::IoBuffers>,
    ) -> Result<(Vec<Child>, Vec<(u32, u64, u64)>), Error> {
        let len = Self::length(&*bufs)?;
        let parent = self.parent.as_mut();
        let plan = match &self.meta {
            Some(meta) => plan::plan_write(Some(&mut *lock(meta)?), parent, offset, len)?,
            None => plan::plan_write(None, parent, offset, len)?,
        };
        if let Some(host) = Self::direct(&plan.segs, len) {
            let write = IoOp::Write { offset: host, bufs };
            return Ok((vec![Child::Io(write)], plan.marks));
        }
        let bufs = Self::shared(bufs)?;
        let mut kids = Vec::new();
        for seg in plan.segs {
            if let Seg::Host { host, skip, len } = seg {
                kids.push(Child::Io(IoOp::Write {
                    offset: host,
                    bufs: Box::new(piece(&bufs, skip, len)?),
                }));
            }
        }
        Ok((kids, plan.marks))
    }

    /// A discard or write-zeroes (`zero` module).
    #[allow(clippy::type_complexity)]
    fn zero(
        &mut self,
        offset: u64,
        len: u64,
        kind: Zeroing,
    ) -> Result<(Vec<Child>, Vec<(u32, u64, u64)>), Error> {
        let parent = self.parent.as_mut();
        let plan = match &self.meta {
            Some(meta) => zero::plan_zero(Some(&mut *lock(meta)?), parent, offset, len, kind)?,
            None => zero::plan_zero(None, parent, offset, len, kind)?,
        };
        let kids = plan.ranges.into_iter().map(|(offset, len)| {
            Child::Io(match kind {
                Zeroing::Discard => IoOp::Discard { offset, len },
                Zeroing::WriteZeroes => IoOp::WriteZeroes { offset, len },
            })
        });
        Ok((kids.collect(), plan.marks))
    }

    /// A flush writes back the metadata (whose last step is an fdatasync), or, with nothing
    /// dirty, is one engine fdatasync.
    fn flush(&mut self) -> Result<Vec<Child>, Error> {
        let synced = match &self.meta {
            Some(meta) => lock(meta)?.write_back()?,
            None => false,
        };
        Ok(match synced {
            true => Vec::new(),
            false => vec![Child::Io(IoOp::Flush)],
        })
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn spawn(&mut self, tag: u64, mut kids: Vec<Child>, marks: Vec<(u32, u64, u64)>, wrote: bool) {
        if kids.is_empty() {
            kids.push(Child::Now(Ok(())));
        }
        let id = self.id();
        let parent = Parent {
            tag,
            pending: kids.len(),
            error: None,
            marks,
            wrote,
        };
        self.parents.insert(id, parent);
        for kid in kids {
            let child = self.id();
            self.children.insert(child, id);
            self.io.backlog.push_back((child, kid));
        }
        self.io.feed();
    }

    fn finish(&mut self, p: Parent) {
        let mut result = p.error.map_or(Ok(()), Err);
        if result.is_ok() && !p.marks.is_empty() {
            result = self.apply_marks(&p.marks);
        }
        self.io.tally.ready.push(Completion { tag: p.tag, result });
    }

    fn apply_marks(&self, marks: &[(u32, u64, u64)]) -> Result<(), Error> {
        let Some(meta) = &self.meta else {
            return Ok(());
        };
        let mut meta = lock(meta)?;
        for &(block, first, count) in marks {
            meta.mark_written(block, first, count)?;
        }
        Ok(())
    }

    /// Writes back the metadata changed by the ops whose completions are `ready[first..]`;
    /// if that fails, those that succeeded fail.
    fn write_through(&mut self, first: usize) {
        let result = match &self.meta {
            Some(meta) => lock(meta).and_then(|mut m| m.write_back().map(drop)),
            None => Ok(()),
        };
        let Err(e) = result else { return };
        let errno = e.errno();
        for c in self.io.tally.ready.iter_mut().skip(first) {
            if c.result.is_ok() {
                c.result = Err(Error::from_errno(errno));
            }
        }
    }
}

impl Planner for VhdQueue {
    fn start(&mut self, op: IoOp, tag: u64) {
        if let Some(error) = op.range_error(self.size) {
            return self.spawn(tag, vec![Child::Now(Err(error))], Vec::new(), false);
        }
        if op.is_modifying() && self.read_only {
            return self.spawn(
                tag,
                vec![Child::Now(Err(Error::ReadOnly))],
                Vec::new(),
                false,
            );
        }
        let planned = match op {
            IoOp::Read { offset, bufs } => self.read(offset, bufs).map(|k| (k, Vec::new(), false)),
            IoOp::Write { offset, bufs } => self.write(offset, bufs).map(|(k, m)| (k, m, true)),
            IoOp::Flush => self.flush().map(|k| (k, Vec::new(), false)),
            IoOp::Discard { len: 0, .. } | IoOp::WriteZeroes { len: 0, .. } => {
                Ok((Vec::new(), Vec::new(), false))
            }
            IoOp::Discard { offset, len } => self
                .zero(offset, len, Zeroing::Discard)
                .map(|(k, m)| (k, m, true)),
            IoOp::WriteZeroes { offset, len } => self
                .zero(offset, len, Zeroing::WriteZeroes)
                .map(|(k, m)| (k, m, true)),
        };
        match planned {
            Ok((kids, marks, wrote)) => self.spawn(tag, kids, marks, wrote),
            Err(e) => self.spawn(tag, vec![Child::Now(Err(e))], Vec::new(), false),
        }
    }

    fn pump(&mut self) {
        let mut finished = take(&mut self.finished);
        let maps = (&mut self.children, &mut self.parents);
        planned::reap_and_settle(&mut self.io.engine, &mut self.reaped, maps, &mut finished);
        let wrote = finished.iter().any(|id| {
            self.parents
                .get(id)
                .is_some_and(|p| p.wrote && p.error.is_none())
        });
        let first = self.io.tally.ready.len();
        for id in finished.drain(..) {
            if let Some(p) = self.parents.remove(&id) {
                self.finish(p);
            }
        }
        self.finished = finished;
        if wrote && self.io.engine.file().cache().dsync() {
            self.write_through(first);
        }
        self.io.feed_and_commit(false);
    }

    /// No op waits for another queue: nothing to retry.
    fn woken(&mut self) {}

    fn has_deferred(&self) -> bool {
        false
    }

    fn io(&mut self) -> &mut PlanIo {
        &mut self.io
    }

    fn io_ref(&self) -> &PlanIo {
        &self.io
    }
}

impl Drop for VhdQueue {
    fn drop(&mut self) {
        planned::drain(self, "VHD");
        if let Some(meta) = &self.meta {
            if let Err(e) = lock(meta).and_then(|mut m| m.write_back()) {
                tracing::error!(error = %e, path = %self.file.0.path().display(), "cannot write back VHD metadata");
            }
        }
    }
}
