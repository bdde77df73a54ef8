//! VMware VMDK images (VMware's "Virtual Disk Format 5.0"): monolithicSparse,
//! twoGbMaxExtentSparse, monolithicFlat and twoGbMaxExtentFlat read and written;
//! streamOptimized read (and written whole by [`create::write_stream_optimized`]).
//!
//! On-disk rules relied on:
//! * The descriptor is text, embedded in the first sparse extent (`descriptorOffset`,
//!   `descriptorSize`) or a file of its own starting with `# Disk DescriptorFile`; see
//!   [`descriptor`] for its limits. An embedded descriptor naming one sparse extent describes
//!   the file holding it, whatever name it gives (as in qemu: copies and renames work).
//!   Extent files and `parentFileNameHint` are relative to the descriptor's folder and
//!   confined by the [`BackingPolicy`](crate::BackingPolicy) like qcow2 backing files;
//!   parents at most [`MAX_CHAIN_DEPTH`](crate::qcow2::MAX_CHAIN_DEPTH) deep, loops refused,
//!   and a parent whose `CID` is not the child's `parentCID` refused.
//! * Extent lines are checked at open: sizes and FLAT offsets in bytes must not overflow, a
//!   FLAT extent must end below the largest file offset (2^63), and a sparse extent file
//!   belongs to one extent line (a second SPARSE or FLAT line naming it is refused; FLAT
//!   lines may share a file).
//! * A sparse extent's grain directory holds sector offsets of grain tables; a grain table
//!   holds sector offsets of grains (0: unallocated, read from the parent or as zeros; 1 with
//!   the zero-grain flag: zeros). With the redundant flag, a second directory and tables
//!   (`rgdOffset`) mirror the first. streamOptimized grains are zlib streams behind a marker,
//!   and the real header is the footer 1024 bytes before the end of the file.
//!
//! Data path: reads and overwrites of allocated grains and flat extents go through the shared
//! engine with the caller's buffers (one engine per extent file, one notifier). Everything else
//! (zeros, parent data, compressed grains, metadata) is synchronous on the queue's thread.
//!
//! Crash order of a grain allocation: the new grain (guest data plus the parent's bytes or
//! zeros around it), and any grain table it needs (zeroed, with its redundant copy), are
//! written past the end of the file → fdatasync → the grain table entry, then its redundant
//! copy → the new tables' directory entries, primary then redundant. A crash before the
//! entries leaves unused room at the end of the file; after, they point at durable data. The
//! entries are durable after the next flush (at once in the O_DSYNC cache modes). Writes into
//! grains of one new table join one table allocation. `DESIGN.md` (next to this file) gives
//! the placement rules and why each crash cut is safe. The descriptor's `CID` changes before
//! the first write after open, as qemu does, so children made from the old content stop
//! opening.

#![forbid(unsafe_code)]

pub mod create;
pub mod descriptor;
mod discard;
pub mod header;
pub mod map;
mod metaio;
mod open;
mod plan;
mod queue;
pub mod relink;
mod stream;
mod tables;

#[cfg(test)]
mod tests;

pub use queue::VmdkQueue;

use std::collections::HashSet;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::engine::{self, Engine, EngineFile, MAX_DEPTH};
use crate::error::Error;
use crate::image::{BlockImage, EngineKind, Features, Format, Geometry, ImageQueue, OpenOptions};
use crate::qcow2::Chain;
use crate::qcow2::backing::BackingReader;

use descriptor::Descriptor;
use open::{DescriptorSite, Extent};
use tables::Sparse;

/// State shared by an image's queues, under one mutex.
pub(crate) struct Meta {
    /// Sparse extents' metadata.
    pub sparse: Vec<Sparse>,
    /// Grains (sparse extent, grain) whose allocation is in flight.
    pub busy: HashSet<(usize, u64)>,
    /// Notifiers of queues waiting for an allocation to finish.
    pub waiters: Vec<Arc<OwnedFd>>,
    /// Where the descriptor lives.
    site: DescriptorSite,
    /// The CID was changed since open.
    cid_updated: bool,
}

impl Meta {
    /// Changes the descriptor's CID before the first change to the image's content.
    pub fn update_cid(&mut self) -> Result<(), Error> {
        if self.cid_updated {
            return Ok(());
        }
        let old = Descriptor::parse(self.site.text.as_bytes())?.cid;
        let text = with_cid(&self.site.text, new_cid(old));
        let site = &self.site;
        if let Some(room) = site.room {
            if text.len() as u64 >= room {
                return Err(Error::InvalidImage(
                    "VMDK descriptor has no room for its new CID".to_owned(),
                ));
            }
            let mut bytes = text.clone().into_bytes();
            bytes.resize(usize::try_from(room).unwrap_or(0), 0);
            site.io
                .write(metaio::MetaKind::Descriptor, site.offset, &bytes)?;
        } else {
            site.io
                .write(metaio::MetaKind::Descriptor, 0, text.as_bytes())?;
            if let Some(f) = &site.own_file {
                f.set_len(text.len() as u64)?;
            }
        }
        site.io.sync()?;
        self.site.text = text;
        self.cid_updated = true;
        Ok(())
    }

    /// Ends the allocations of `grains` and wakes the queues waiting for them.
    pub fn release(&mut self, grains: impl IntoIterator<Item = (usize, u64)>) {
        for g in grains {
            self.busy.remove(&g);
        }
        for w in self.waiters.drain(..) {
            let _ = nix::unistd::write(&*w, &1u64.to_ne_bytes());
        }
    }
}

/// `text` with the value of its `CID=` line replaced.
fn with_cid(text: &str, cid: u32) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        if line.trim_start().starts_with("CID=") {
            let nl = if line.ends_with('\n') { "\n" } else { "" };
            out.push_str(&format!("CID={cid:08x}{nl}"));
        } else {
            out.push_str(line);
        }
    }
    out
}

/// A CID different from `old` (and from the no-parent value).
fn new_cid(old: u32) -> u32 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let low = u32::try_from(now & 0xffff_ffff).unwrap_or(0);
    let mut cid = low ^ std::process::id().rotate_left(16);
    while cid == old || cid == descriptor::NO_PARENT {
        cid = cid.wrapping_add(1);
    }
    cid
}

/// The refusal of a child whose `parentCID` is not its parent's CID: the parent changed
/// after the child was made or last linked. That is also what a crash leaves between a
/// commit's first write into the parent (which changes its CID) and the child's relink, so
/// the message says how to relink when the parent still holds what the child expects.
fn cid_mismatch(child: &std::path::Path, hint: &str, expected: u32, found: u32) -> Error {
    Error::BackingChain(format!(
        "{}: parentCID {expected:08x} is not the CID {found:08x} of its parent {hint:?} (the \
         parent changed after this image was made or last linked to it). If the parent was \
         changed only by a commit of this image (for example one interrupted before it relinked \
         the image), relink it with `rustbk img rebase -u -b {hint} -F vmdk {}`",
        child.display(),
        child.display()
    ))
}

/// Locks the metadata.
/// Keeps O_DIRECT out of the pages a writable extent file's metadata may share with data.
/// Grain tables are written through the page cache, and a grain may start at any sector of
/// the file (qemu and VMware align grains to their size, but an image is the tenant's): only
/// ops covering whole pages go through O_DIRECT, and those never touch a metadata page.
pub(crate) fn keep_metadata_pages_apart(file: &mut EngineFile) {
    if !file.read_only() {
        file.direct_in_whole_pages();
    }
}

pub(crate) fn lock(meta: &Mutex<Meta>) -> Result<MutexGuard<'_, Meta>, Error> {
    meta.lock()
        .map_err(|_| Error::InvalidImage("VMDK metadata lock poisoned".to_owned()))
}

/// An open VMDK image.
pub struct VmdkImage {
    files: Vec<Arc<EngineFile>>,
    extents: Arc<Vec<Extent>>,
    meta: Arc<Mutex<Meta>>,
    descriptor: Descriptor,
    parent: Option<Arc<VmdkImage>>,
    geometry: Geometry,
    engine: EngineKind,
    read_only: bool,
}

impl std::fmt::Debug for VmdkImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmdkImage")
            .field("create_type", &self.descriptor.create_type)
            .field("size", &self.geometry.size)
            .field("read_only", &self.read_only)
            .finish()
    }
}

#[cfg(test)]
impl VmdkImage {
    /// The extent files.
    pub(crate) fn files(&self) -> &[Arc<EngineFile>] {
        &self.files
    }
}

impl VmdkImage {
    /// Opens the VMDK whose descriptor (or first sparse extent) is `file`, its extents and
    /// its parent chain (`chain` holds the images above it).
    pub(crate) fn open(
        file: Arc<EngineFile>,
        opts: &OpenOptions,
        chain: &mut Chain,
    ) -> Result<VmdkImage, Error> {
        let sector = opts.sector_size;
        if !(sector.is_power_of_two() && (512..=4096).contains(&sector)) {
            return Err(Error::InvalidArgument(format!(
                "sector size {sector} is not 512..=4096 and a power of two"
            )));
        }
        let o = open::open_extents(&file, opts, chain.top())?;
        let size = o.descriptor.size()?;
        opts.check_disk_size(file.path(), size)?;
        let parent = match &o.descriptor.parent {
            Some(hint) if o.descriptor.parent_cid != descriptor::NO_PARENT => {
                let p = open::open_parent(file.path(), hint, opts, chain)?;
                if p.descriptor.cid != o.descriptor.parent_cid {
                    return Err(cid_mismatch(
                        file.path(),
                        hint,
                        o.descriptor.parent_cid,
                        p.descriptor.cid,
                    ));
                }
                Some(Arc::new(p))
            }
            _ => None,
        };
        let read_only = o.files.iter().any(|f| f.read_only()) || file.read_only();
        let physical = o.files.first().map_or(512, |f| f.physical_block_size());
        let geometry = Geometry {
            size,
            logical_sector_size: sector,
            physical_sector_size: physical.max(sector),
        };
        let meta = Meta {
            sparse: o.sparse,
            busy: HashSet::new(),
            waiters: Vec::new(),
            site: o.site,
            cid_updated: false,
        };
        tracing::debug!(path = %file.path().display(), size, create_type = %o.descriptor.create_type,
            extents = o.extents.len(), parent = parent.is_some(), "vmdk image open");
        Ok(VmdkImage {
            files: o.files,
            extents: Arc::new(o.extents),
            meta: Arc::new(Mutex::new(meta)),
            descriptor: o.descriptor,
            parent,
            geometry,
            engine: engine::resolve(opts.engine)?,
            read_only,
        })
    }

    /// The descriptor as it was at open time.
    pub fn descriptor(&self) -> &Descriptor {
        &self.descriptor
    }

    /// The parent image, if any.
    pub fn parent(&self) -> Option<&Arc<VmdkImage>> {
        self.parent.as_ref()
    }

    /// A queue with the concrete type (tests and tools).
    pub fn queue(&self, depth: u32) -> Result<VmdkQueue, Error> {
        if depth == 0 || depth > MAX_DEPTH {
            return Err(Error::InvalidArgument(format!(
                "queue depth {depth} not in 1..={MAX_DEPTH}"
            )));
        }
        let engine_depth = depth.saturating_mul(2).saturating_add(16).min(MAX_DEPTH);
        let mut engines: Vec<Engine> = Vec::with_capacity(self.files.len());
        for f in &self.files {
            let e = match engines.first() {
                None => Engine::new(f.clone(), self.engine, engine_depth)?,
                Some(first) => Engine::new_sharing(f.clone(), self.engine, engine_depth, first)?,
            };
            engines.push(e);
        }
        let parent = self
            .parent
            .clone()
            .map(|p| BackingReader::new(p as Arc<dyn BlockImage>));
        let ctx = plan::Context {
            extents: self.extents.clone(),
            meta: self.meta.clone(),
            parent,
            last: None,
        };
        VmdkQueue::new(engines, ctx, self.geometry.size, self.read_only, depth)
    }
}

impl BlockImage for VmdkImage {
    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn features(&self) -> Features {
        // Discard punches holes (`discard`); write-zeroes is not offered.
        Features {
            discard: !self.read_only,
            ..Features::without_discard(self.read_only)
        }
    }

    fn open_queue(&self, depth: u32) -> Result<Box<dyn ImageQueue>, Error> {
        Ok(Box::new(self.queue(depth)?))
    }

    fn sync_metadata(&self) -> Result<(), Error> {
        if self.read_only {
            return Ok(());
        }
        self.files.iter().try_for_each(|f| f.datasync())
    }

    fn format(&self) -> Format {
        Format::Vmdk
    }
}
