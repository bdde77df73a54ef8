//! The pool core: a pool's metadata, its volumes' records and the ports of the volumes being
//! served, in one process. The pool service ([`crate::service`]) puts a socket in front of it;
//! the `rustbk thin` tools and the tests use it directly.
//!
//! Everything that changes the metadata runs under one lock ([`State`]). A metadata change
//! that fails half-way (the metadata device is full, an I/O error) throws the transaction
//! away: the pool goes back to its last commit and takes no more changes until it is opened
//! again, so a failure never reaches the disk.

mod ahead;
mod fresh;
mod gate;
mod port;
mod prealloc;
pub mod sidecar;
mod space;
mod volumes;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_commit;
#[cfg(test)]
mod tests_restore;

pub use port::LocalPort;
pub use sidecar::{Origin, VolumeRecord};
pub use volumes::{VolumeSpec, VolumeUsage, format_of};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustbk_formats::engine::Access;
use rustbk_formats::{CacheMode, EngineFile, WriteRecorder};

use crate::error::{Error, Result};
use crate::meta::{Geometry, Metadata};
use gate::CommitGate;
use port::PortControl;
pub(crate) use port::{Signal, Signaller};

/// What the pool does with a write that needs a block when the data device is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OnFull {
    /// Fail it with ENOSPC, once the other volumes asked for the blocks they hold in reserve
    /// answered (they are asked whenever the pool runs out; each answer is waited for at
    /// most 2 s).
    #[default]
    Fail,
    /// Hold it until space is added, freed by a commit or given back from another volume's
    /// reserve, for at most [`PoolOptions::full_timeout`]; then fail it with ENOSPC.
    Queue,
}

/// How a pool behaves.
#[derive(Clone, Debug)]
pub struct PoolOptions {
    /// Data device full: fail or queue.
    pub on_full: OnFull,
    /// How long a queued write waits for space.
    pub full_timeout: Duration,
    /// When the free data blocks fall below this, the pool logs a warning and runs
    /// `low_water_hook` once (again only after the free count rose above it).
    pub low_water_blocks: u64,
    /// A command run (without arguments, with `RUSTBK_POOL_METADATA` and
    /// `RUSTBK_POOL_FREE_BLOCKS` in its environment) when the low-water mark is crossed.
    pub low_water_hook: Option<PathBuf>,
    /// Punch a hole in the data device for every data block a discard frees, once the commit
    /// that frees it is durable.
    pub passdown: bool,
    /// How long a snapshot waits for the volume's ports to pause.
    pub pause_timeout: Duration,
    /// How the data device is opened (O_DIRECT, O_DSYNC; see [`CacheMode`]). The pool always
    /// syncs the data device before a commit, whatever the mode: `unsafe` opens it as
    /// `writeback` (a volume in `unsafe` mode skips its own flushes instead).
    pub cache: CacheMode,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            on_full: OnFull::Fail,
            full_timeout: Duration::from_secs(60),
            low_water_blocks: 0,
            low_water_hook: None,
            passdown: false,
            pause_timeout: Duration::from_secs(10),
            cache: CacheMode::None,
        }
    }
}

/// Space figures of a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PoolUsage {
    /// Data block size in bytes.
    pub block_size: u64,
    /// Data blocks the pool holds.
    pub data_blocks: u64,
    /// Data blocks free now.
    pub data_free: u64,
    /// Metadata blocks (4 KiB) the pool holds.
    pub metadata_blocks: u64,
    /// Metadata blocks free now.
    pub metadata_free: u64,
}

pub use fresh::FreshData;

/// How the data file of the pool whose metadata is at `metadata` was made, if the pool
/// keeps a mark of the blocks that read zeros because no one was handed them yet.
pub fn zero_mark(metadata: &Path) -> Result<Option<FreshData>> {
    Ok(fresh::Fresh::load(metadata)?.map(|f| f.data()))
}

/// Removes that mark, before metadata is written over by other means (a restore): its
/// mappings may point at blocks past the mark.
pub fn forget_zero_mark(metadata: &Path) -> Result<()> {
    fresh::remove(metadata)
}

/// An open thin pool.
pub struct Pool {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    state: Mutex<State>,
    /// Signalled when data blocks become free (commit, grow, release).
    space: Condvar,
    gate: CommitGate,
    /// Serialises volume operations (and so the sidecar's writers).
    admin: Mutex<()>,
    opts: PoolOptions,
    data: Arc<EngineFile>,
    meta_path: PathBuf,
    data_path: PathBuf,
    /// Fault injection for the crash tests: commit without syncing the data device first, so
    /// a crash can leave committed mappings pointing at blocks whose data never landed.
    #[cfg(test)]
    pub(crate) skip_data_sync: std::sync::atomic::AtomicBool,
    /// Test hook: the next data sync waits for a message on this (see
    /// [`Pool::hold_next_data_sync`]).
    #[cfg(test)]
    pub(crate) held_sync: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

pub(crate) struct State {
    md: Metadata,
    meta_file: Arc<EngineFile>,
    volumes: BTreeMap<u64, VolumeRecord>,
    ports: HashMap<u64, PortEntry>,
    next_port: u64,
    low_water_fired: bool,
    failed: Option<String>,
    block_size: u64,
    /// Data blocks freed in this transaction, to be punched out of the data device once the
    /// commit no longer references them (before the commit, a crash falls back to metadata
    /// that may still map them, even in a volume deleted since).
    pass_down: Vec<u64>,
    prealloc: prealloc::Prealloc,
    /// Blocks never handed out since the data file was filled with zeros, if it was.
    fresh: Option<fresh::Fresh>,
    /// Writes the next superblock waits for (volume records written ahead).
    ahead: Vec<ahead::Ahead>,
}

pub(crate) struct PortEntry {
    volume: u64,
    provisioned: HashSet<u64>,
    control: Arc<PortControl>,
    /// When the pool, full, asked the port for its reserved blocks and got no answer yet.
    asked_back: Option<Instant>,
    /// The port left a give-back request unanswered past its wait: it is still asked, but no
    /// write waits for its answer again until it answers.
    silent: bool,
}

impl Pool {
    /// Formats a new pool on the metadata and data files or devices, which exist and have
    /// their sizes: the data device's size decides how many blocks of `block_size` bytes the
    /// pool holds. Writes an empty volume list next to the metadata.
    pub fn create(
        metadata: &Path,
        data: &Path,
        block_size: u64,
        opts: PoolOptions,
    ) -> Result<Pool> {
        Pool::create_recorded(metadata, data, block_size, opts, Recorders::default())
    }

    /// [`Pool::create`] on a data file the caller just made, sparse or filled with zeros
    /// and synced: the pool records that every data block reads zeros, so a first write of
    /// part of a block never zeroes around it nor asks whether it is a hole (see
    /// `pool/fresh.rs`).
    pub fn create_on_fresh_data(
        metadata: &Path,
        data: &Path,
        block_size: u64,
        opts: PoolOptions,
        made: FreshData,
    ) -> Result<Pool> {
        let pool = Pool::create(metadata, data, block_size, opts)?;
        fresh::Fresh::create(metadata, made)?;
        pool.shared.lock()?.fresh = fresh::Fresh::load(metadata)?;
        Ok(pool)
    }

    /// [`Pool::create`] with test recorders on the metadata and data files.
    pub(crate) fn create_recorded(
        metadata: &Path,
        data: &Path,
        block_size: u64,
        opts: PoolOptions,
        recorders: Recorders,
    ) -> Result<Pool> {
        let sectors = u32::try_from(block_size / 512)
            .ok()
            .filter(|_| block_size % 512 == 0)
            .ok_or_else(|| Error::InvalidArgument(format!("block size {block_size}")))?;
        let mut meta_file = EngineFile::open(
            metadata,
            Access::ReadWrite,
            rustbk_formats::CacheMode::Writeback,
        )?;
        if let Some(recorder) = recorders.metadata {
            meta_file.set_recorder(recorder);
        }
        let meta_file = Arc::new(meta_file);
        let data_file = open_data(data, &opts, recorders.data)?;
        let nr_data_blocks = data_file.size()? / block_size;
        let geometry = Geometry {
            data_block_size: sectors,
            nr_data_blocks,
        };
        let md = Metadata::create(meta_file.clone(), geometry)?;
        sidecar::store(&sidecar::path_for(metadata), &BTreeMap::new())?;
        fresh::remove(metadata)?;
        let files = Files {
            meta_file,
            data_file,
            meta_path: metadata,
            data_path: data,
        };
        Ok(Pool::assemble(md, files, BTreeMap::new(), opts))
    }

    /// Opens a pool. Its data device may have grown since: the pool then uses all of it. A
    /// pool with no volume list (made by thin_restore or LVM) sizes each volume by its
    /// highest mapped block; [`Pool::resize_volume`] records a size.
    pub fn open(metadata: &Path, data: &Path, opts: PoolOptions) -> Result<Pool> {
        let meta_file = Arc::new(EngineFile::open(
            metadata,
            Access::ReadWrite,
            rustbk_formats::CacheMode::Writeback,
        )?);
        let data_file = open_data(data, &opts, None)?;
        let data_size = data_file.size()?;
        let capacity = |sectors: u32| data_size / (u64::from(sectors) * 512).max(1);
        let mut md = Metadata::open(meta_file.clone(), capacity)?;
        let capacity = capacity(md.data_block_size());
        if capacity > md.data_refs().nr_blocks() {
            md.grow_data(capacity)?;
        }
        let records = sidecar::load(&sidecar::path_for(metadata))?;
        let volumes = volumes::reconcile(&mut md, records)?;
        let fresh = match fresh::Fresh::load(metadata)? {
            Some(mark) => mark.checked(md.data_refs(), metadata)?,
            None => None,
        };
        let files = Files {
            meta_file,
            data_file,
            meta_path: metadata,
            data_path: data,
        };
        let pool = Pool::assemble(md, files, volumes, opts);
        pool.shared.lock()?.fresh = fresh;
        Ok(pool)
    }

    fn assemble(
        md: Metadata,
        files: Files<'_>,
        volumes: BTreeMap<u64, VolumeRecord>,
        opts: PoolOptions,
    ) -> Pool {
        let block_size = u64::from(md.data_block_size()) * 512;
        let state = State {
            md,
            meta_file: files.meta_file,
            volumes,
            ports: HashMap::new(),
            next_port: 1,
            low_water_fired: false,
            failed: None,
            block_size,
            pass_down: Vec::new(),
            prealloc: prealloc::Prealloc::default(),
            fresh: None,
            ahead: Vec::new(),
        };
        Pool {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                space: Condvar::new(),
                gate: CommitGate::default(),
                admin: Mutex::new(()),
                opts,
                data: files.data_file,
                meta_path: files.meta_path.to_owned(),
                data_path: files.data_path.to_owned(),
                #[cfg(test)]
                skip_data_sync: std::sync::atomic::AtomicBool::new(false),
                #[cfg(test)]
                held_sync: Mutex::new(None),
            }),
        }
    }

    /// Data block size in bytes.
    pub fn block_size(&self) -> Result<u64> {
        Ok(self.shared.lock()?.block_size)
    }

    /// The data device, shared with the volumes served in this process.
    pub fn data_file(&self) -> Arc<EngineFile> {
        self.shared.data.clone()
    }

    /// Space figures.
    pub fn usage(&self) -> Result<PoolUsage> {
        let st = self.shared.lock()?;
        Ok(PoolUsage {
            block_size: st.block_size,
            data_blocks: st.md.data_refs().nr_blocks(),
            data_free: st.md.data_refs().nr_free(),
            metadata_blocks: st.md.metadata_refs().nr_blocks(),
            metadata_free: st.md.metadata_refs().nr_free(),
        })
    }

    /// Makes every mapping made so far durable (one commit for every caller waiting).
    pub fn commit(&self) -> Result<()> {
        self.shared.commit()
    }

    /// Commits finished since the pool was opened.
    pub fn commits(&self) -> u64 {
        self.shared.gate.finished()
    }

    /// Why the pool takes no more changes, if it does not.
    pub fn failed(&self) -> Result<Option<String>> {
        Ok(self.shared.lock()?.failed.clone())
    }

    /// Uses all of the data device after it grew; returns the pool's data blocks. Writes
    /// queued for space go on.
    pub fn grow_data(&self) -> Result<u64> {
        let mut st = self.shared.lock()?;
        let blocks = self.shared.data.size()? / st.block_size;
        if blocks > st.md.data_refs().nr_blocks() {
            st.change(|md| md.grow_data(blocks))?;
            self.shared.space_changed(&mut st);
        }
        Ok(st.md.data_refs().nr_blocks())
    }

    /// Uses all of both devices after they grew, and commits: the data and metadata blocks
    /// the pool has now.
    pub fn grow(&self) -> Result<(u64, u64)> {
        let data = self.grow_data()?;
        let metadata = self.grow_metadata()?;
        self.commit()?;
        Ok((data, metadata))
    }

    /// Uses all of the metadata device after it grew (up to what the format can address);
    /// returns the pool's metadata blocks.
    pub fn grow_metadata(&self) -> Result<u64> {
        let mut st = self.shared.lock()?;
        st.change(Metadata::grow_metadata)
    }

    /// Breaks the commit order on purpose (crash tests): commits no longer sync the data
    /// device before the metadata.
    #[cfg(test)]
    pub(crate) fn skip_data_sync_before_commit(&self) {
        use std::sync::atomic::Ordering;
        self.shared.skip_data_sync.store(true, Ordering::SeqCst);
    }

    /// Makes the next data sync (a commit's) wait until the returned sender sends or is
    /// dropped: a commit then stays in its unlocked step for as long as a test needs.
    #[cfg(test)]
    pub(crate) fn hold_next_data_sync(&self) -> std::sync::mpsc::Sender<()> {
        let (release, wait) = std::sync::mpsc::channel();
        if let Ok(mut held) = self.shared.held_sync.lock() {
            *held = Some(wait);
        }
        release
    }

    /// Opens a port on volume `id` for a data path in this process.
    pub fn open_port(&self, id: u64) -> Result<LocalPort> {
        LocalPort::open(self.shared.clone(), id)
    }
}

/// A pool closed cleanly (its last handle and port gone) commits what is left, as dm-thin
/// does when a pool is suspended or removed.
impl Drop for Shared {
    fn drop(&mut self) {
        if let Err(e) = self.commit() {
            tracing::warn!(pool = %self.meta_path.display(), error = %e, "final commit failed");
        }
    }
}

#[cfg(test)]
impl Pool {
    /// Tests: holds the pool's lock (every metadata change, and so every answer of the
    /// service that needs one, waits) for `hold`.
    pub(crate) fn hold_lock(&self, hold: std::time::Duration) {
        let held = self.shared.lock().expect("pool lock");
        std::thread::sleep(hold);
        drop(held);
    }
}

impl Shared {
    pub(crate) fn lock(&self) -> Result<MutexGuard<'_, State>> {
        self.state
            .lock()
            .map_err(|_| Error::PoolFailed("a pool operation panicked".into()))
    }
}

impl State {
    /// Runs a metadata change. Errors found before anything changed come back as they are;
    /// any other error throws the transaction away and fails the pool.
    pub(crate) fn change<T>(&mut self, f: impl FnOnce(&mut Metadata) -> Result<T>) -> Result<T> {
        if let Some(why) = &self.failed {
            return Err(Error::PoolFailed(why.clone()));
        }
        match f(&mut self.md) {
            Ok(v) => Ok(v),
            Err(
                e @ (Error::InvalidArgument(_)
                | Error::NoSuchDevice(_)
                | Error::DeviceExists(_)
                | Error::DataFull(_)),
            ) => Err(e),
            Err(e) => {
                self.abort(&e);
                Err(e)
            }
        }
    }

    /// Runs a metadata change that may need new metadata blocks: refused with
    /// [`Error::MetadataFull`], before anything changes, when the metadata device would not
    /// have room for it and the commit after it.
    pub(crate) fn change_with_room<T>(
        &mut self,
        f: impl FnOnce(&mut Metadata) -> Result<T>,
    ) -> Result<T> {
        space::check_metadata_room(&self.md)?;
        self.change(f)
    }

    /// Throws the running transaction away: the metadata as of the last commit is read back
    /// and the pool takes no more changes.
    fn abort(&mut self, why: &Error) {
        tracing::error!(error = %why, "pool metadata change failed: back to the last commit, no more changes");
        let capacity = self.md.data_refs().nr_blocks();
        match Metadata::open(self.meta_file.clone(), |_| capacity) {
            Ok(md) => self.md = md,
            Err(e) => tracing::error!(error = %e, "cannot read the last commit back"),
        }
        self.failed = Some(why.to_string());
    }
}

/// Test hooks told every write and sync of the pool's own files (crash tests).
#[derive(Default)]
pub(crate) struct Recorders {
    pub metadata: Option<Arc<dyn WriteRecorder>>,
    pub data: Option<Arc<dyn WriteRecorder>>,
}

/// The open files of a pool and their paths.
struct Files<'a> {
    meta_file: Arc<EngineFile>,
    data_file: Arc<EngineFile>,
    meta_path: &'a Path,
    data_path: &'a Path,
}

/// Opens the data device as a shared writer: the workers serving the pool's volumes in other
/// processes write it too (the metadata's exclusive lock keeps a second pool away, and the
/// pool hands every block to one writer at a time); QEMU and other exclusive users are refused.
fn open_data(
    path: &Path,
    opts: &PoolOptions,
    recorder: Option<Arc<dyn WriteRecorder>>,
) -> Result<Arc<EngineFile>> {
    let cache = opts.cache.always_syncing();
    let mut file = EngineFile::open(path, Access::SharedWrite, cache)?;
    if let Some(recorder) = recorder {
        file.set_recorder(recorder);
    }
    if file.read_only() {
        return Err(Error::InvalidArgument(format!(
            "data device {} is read-only",
            path.display()
        )));
    }
    Ok(Arc::new(file))
}
