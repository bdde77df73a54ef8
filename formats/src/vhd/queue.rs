//! The data-plane queue of a VHD image.
//!
//! Each guest op becomes engine children (reads and writes of allocated data with the
//! caller's buffers), work done synchronously (zeros, parent reads), and for writes to a
//! differencing disk the bitmap bits to set once every child finished. Children beyond the
//! engine's depth wait in a backlog. In the O_DSYNC cache modes (`writethrough`,
//! `directsync`) the metadata the finished writes changed is written back before their
//! completions are handed out.

use std::collections::{HashMap, VecDeque};
use std::os::fd::BorrowedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::buffer::SharedBufs;
use crate::engine::Engine;
use crate::error::Error;
use crate::image::{BlockImage, Completion, ImageQueue, IoOp};
use crate::qcow2::backing::{BackingReader, piece, zero};

use super::meta::Meta;
use super::metaio::VhdIo;
use super::plan::{self, Seg, lock};

enum Child {
    Io(IoOp),
    Now(Result<(), Error>),
}

struct Parent {
    tag: u64,
    pending: usize,
    error: Option<Error>,
    marks: Vec<(u32, u64, u64)>,
    wrote: bool,
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
    engine: Engine,
    meta: Option<Arc<Mutex<Meta>>>,
    io: Arc<VhdIo>,
    parent: Option<BackingReader>,
    size: u64,
    read_only: bool,
    depth: usize,
    outstanding: usize,
    next_id: u64,
    parents: HashMap<u64, Parent>,
    children: HashMap<u64, u64>,
    backlog: VecDeque<(u64, Child)>,
    ready: Vec<Completion>,
}

impl VhdQueue {
    pub(super) fn new(p: Parts) -> Result<VhdQueue, Error> {
        Ok(VhdQueue {
            engine: p.engine,
            meta: p.meta,
            io: p.io,
            parent: p.parent.map(BackingReader::new),
            size: p.size,
            read_only: p.read_only,
            depth: p.depth as usize,
            outstanding: 0,
            next_id: 1,
            parents: HashMap::new(),
            children: HashMap::new(),
            backlog: VecDeque::new(),
            ready: Vec::new(),
        })
    }

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
            IoOp::Discard { .. } | IoOp::WriteZeroes { .. } => Err(Error::UnsupportedFeature(
                "discard and write-zeroes on VHD images".to_owned(),
            )),
        };
        match planned {
            Ok((kids, marks, wrote)) => self.spawn(tag, kids, marks, wrote),
            Err(e) => self.spawn(tag, vec![Child::Now(Err(e))], Vec::new(), false),
        }
    }

    fn shared(bufs: Box<dyn crate::IoBuffers>) -> Result<SharedBufs, Error> {
        SharedBufs::new(bufs)
            .ok_or_else(|| Error::InvalidArgument("buffer length overflows".to_owned()))
    }

    fn read(&mut self, offset: u64, bufs: Box<dyn crate::IoBuffers>) -> Result<Vec<Child>, Error> {
        let bufs = Self::shared(bufs)?;
        let segs = match &self.meta {
            Some(meta) => plan::plan_read(Some(&mut *lock(meta)?), offset, bufs.len())?,
            None => plan::plan_read(None, offset, bufs.len())?,
        };
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
        let bufs = Self::shared(bufs)?;
        let parent = self.parent.as_mut();
        let plan = match &self.meta {
            Some(meta) => plan::plan_write(Some(&mut *lock(meta)?), parent, offset, bufs.len())?,
            None => plan::plan_write(None, parent, offset, bufs.len())?,
        };
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
            self.backlog.push_back((child, kid));
        }
        self.feed();
    }

    fn feed(&mut self) -> bool {
        let mut moved = false;
        while self.engine.in_flight() < self.engine.depth() {
            let Some((tag, child)) = self.backlog.pop_front() else {
                break;
            };
            let result = match child {
                Child::Io(op) => self.engine.submit(op, tag),
                Child::Now(result) => self.engine.complete_now(tag, result),
            };
            if let Err(e) = result {
                tracing::error!(error = %e, "engine refused a child op");
            }
            moved = true;
        }
        moved
    }

    fn pump(&mut self) {
        let mut done = Vec::new();
        self.engine.reap(&mut done);
        let mut finished = Vec::new();
        for c in done {
            let Some(id) = self.children.remove(&c.tag) else {
                continue;
            };
            let Some(parent) = self.parents.get_mut(&id) else {
                continue;
            };
            parent.pending -= 1;
            if let Err(e) = c.result {
                parent.error.get_or_insert(e);
            }
            if parent.pending == 0 {
                finished.push(id);
            }
        }
        let wrote = finished.iter().any(|id| {
            self.parents
                .get(id)
                .is_some_and(|p| p.wrote && p.error.is_none())
        });
        let first = self.ready.len();
        for id in finished {
            if let Some(p) = self.parents.remove(&id) {
                self.finish(p);
            }
        }
        if wrote && self.engine.file().cache().dsync() {
            self.write_through(first);
        }
        if self.feed() {
            if let Err(e) = self.engine.commit() {
                tracing::warn!(error = %e, "engine commit failed in pump");
            }
        }
    }

    fn finish(&mut self, p: Parent) {
        let mut result = p.error.map_or(Ok(()), Err);
        if result.is_ok() && !p.marks.is_empty() {
            result = self.apply_marks(&p.marks);
        }
        self.ready.push(Completion { tag: p.tag, result });
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
        for c in self.ready.iter_mut().skip(first) {
            if c.result.is_ok() {
                c.result = Err(Error::from_errno(errno));
            }
        }
    }
}

impl ImageQueue for VhdQueue {
    fn submit(&mut self, op: IoOp, tag: u64) -> Result<(), Error> {
        if self.outstanding >= self.depth {
            return Err(Error::QueueFull(
                u32::try_from(self.depth).unwrap_or(u32::MAX),
            ));
        }
        self.outstanding += 1;
        self.start(op, tag);
        Ok(())
    }

    fn commit(&mut self) -> Result<(), Error> {
        self.feed();
        self.engine.commit()
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> usize {
        self.pump();
        let n = self.ready.len();
        out.append(&mut self.ready);
        self.outstanding = self.outstanding.saturating_sub(n);
        n
    }

    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), Error> {
        self.commit()?;
        loop {
            self.pump();
            if !self.ready.is_empty() {
                // The engine's eventfd was read by `pump`: keep the notifier readable until
                // the caller reaps.
                if let Err(e) = nix::unistd::write(self.engine.notifier(), &1u64.to_ne_bytes()) {
                    tracing::warn!(error = %e, "cannot wake a queue");
                }
                return Ok(());
            }
            if self.engine.in_flight() == 0 && self.backlog.is_empty() {
                return Ok(());
            }
            self.engine.wait(timeout)?;
            if timeout.is_some() {
                self.pump();
                return Ok(());
            }
        }
    }

    fn notifier(&self) -> BorrowedFd<'_> {
        self.engine.notifier()
    }

    fn in_flight(&self) -> usize {
        self.outstanding
    }
}

impl Drop for VhdQueue {
    fn drop(&mut self) {
        let mut done = Vec::new();
        for _ in 0..300 {
            if self.outstanding == 0 {
                break;
            }
            if self.wait(Some(Duration::from_millis(100))).is_err() {
                break;
            }
            self.reap(&mut done);
        }
        if let Some(meta) = &self.meta {
            if let Err(e) = lock(meta).and_then(|mut m| m.write_back()) {
                tracing::error!(error = %e, path = %self.io.0.path().display(), "cannot write back VHD metadata");
            }
        }
    }
}
