//! An image's host file (regular file or block device) and what the engine knows about it.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::buffer::{BUF_ALIGN, IoVec};
use crate::cache::CacheMode;
use crate::error::Error;

use super::lock::{self, LockMode};
use super::prep::Which;
use super::record::WriteRecorder;
use super::sys;

/// The unit of the page cache.
const PAGE_SIZE: u32 = 4096;

/// What kind of host file backs an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file: size from metadata, discard punches holes.
    Regular,
    /// A block device: size from BLKGETSIZE64, discard is BLKDISCARD.
    BlockDevice,
}

/// O_DIRECT alignment requirements, in bytes (powers of two).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DioAlign {
    /// Alignment of buffer addresses.
    pub memory: u32,
    /// Alignment of file offsets and of every segment length.
    pub offset: u32,
}

/// Counters of how ops had to be adapted for O_DIRECT.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileStats {
    /// Ops whose memory went through an aligned bounce buffer.
    pub bounced: u64,
    /// Ops sent to the buffered descriptor because their offset or length was misaligned.
    pub buffered_fallbacks: u64,
    /// Reads and writes issued on an io_uring fixed buffer (`READ_FIXED`/`WRITE_FIXED`).
    pub fixed: u64,
}

/// How an image file is opened, and so which of QEMU's lock bytes it takes
/// (see [`lock`](super::lock)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read and write; nobody else may write or resize the file meanwhile.
    ReadWrite,
    /// Read only; nobody else may write or resize the file meanwhile.
    ReadOnly,
    /// Read only, sharing the file with writers (qemu-img's `-U`, `--force-share`).
    ForceShare,
    /// Read and write, sharing writing with other shared writers and nobody else: the data
    /// device of a thin pool, written by every worker serving one of its volumes. Their
    /// writes never overlap because one owner (the pool service) hands out the blocks; an
    /// exclusive writer or a reader that needs the contents to stay put is refused.
    SharedWrite,
}

impl Access {
    /// The access of a read-only or read-write open; `force_share` only applies to read-only
    /// ones (a writer never shares writing).
    pub fn new(read_only: bool, force_share: bool) -> Access {
        match (read_only, force_share) {
            (false, _) => Access::ReadWrite,
            (true, false) => Access::ReadOnly,
            (true, true) => Access::ForceShare,
        }
    }

    /// True unless the file is opened for writing.
    pub fn read_only(self) -> bool {
        matches!(self, Access::ReadOnly | Access::ForceShare)
    }
}

/// An open host file: a page-cached descriptor, optionally an O_DIRECT one on the same inode,
/// both opened with O_DSYNC in the cache modes that ask for it.
#[derive(Debug)]
pub struct EngineFile {
    path: PathBuf,
    cache: CacheMode,
    buffered: File,
    direct: Option<(File, DioAlign)>,
    kind: FileKind,
    read_only: bool,
    logical_block: u32,
    physical_block: u32,
    bounced: AtomicU64,
    fixed: AtomicU64,
    fallbacks: AtomicU64,
    recorder: Option<Arc<dyn WriteRecorder>>,
    /// A descriptor of its own holding the lock bytes: the others may be registered with an
    /// io_uring, which closes them asynchronously after the ring is dropped, and the locks
    /// must go away as soon as the file is dropped.
    _lock: Option<lock::Held>,
}

impl EngineFile {
    /// Opens `path` and takes QEMU's lock bytes for `access`, failing with
    /// [`Error::Locked`] if another open of the file conflicts. A read-write open of a
    /// read-only file system or a read-only block device yields a read-only file. `cache`
    /// chooses the descriptors: an O_DIRECT one is added when the mode asks for it and the
    /// file system has one; writable descriptors get O_DSYNC in `writethrough` and
    /// `directsync`; in `unsafe`, [`datasync`](Self::datasync) does nothing.
    pub fn open(path: &Path, access: Access, cache: CacheMode) -> Result<EngineFile, Error> {
        let err = |source| Error::Open {
            path: path.to_owned(),
            source,
        };
        let (buffered, mut read_only) = match open_buffered(path, access.read_only(), cache.dsync())
        {
            Err(e) if e.raw_os_error() == Some(libc::EISDIR) => {
                return Err(Error::NotAnImage(path.to_owned()));
            }
            opened => opened.map_err(err)?,
        };
        let meta = buffered.metadata().map_err(err)?;
        let kind = if meta.file_type().is_block_device() {
            FileKind::BlockDevice
        } else if meta.is_file() {
            FileKind::Regular
        } else {
            return Err(Error::NotAnImage(path.to_owned()));
        };
        let (logical_block, physical_block) = match kind {
            FileKind::BlockDevice => {
                read_only |= sys::blk_read_only(buffered.as_fd()).map_err(err)?;
                let logical = sys::blk_logical_block_size(buffered.as_fd()).map_err(err)?;
                let physical = sys::blk_physical_block_size(buffered.as_fd()).map_err(err)?;
                (logical, physical.max(logical))
            }
            FileKind::Regular => (512, 512),
        };
        let mode = match access {
            Access::ForceShare => LockMode::SharedReader,
            Access::SharedWrite if !read_only => LockMode::SharedWriter,
            _ if read_only => LockMode::Reader,
            _ => LockMode::Writer,
        };
        let held = lock::lock(open_lock(path, &meta).map_err(err)?, path, mode)?;
        let mut file = EngineFile {
            path: path.to_owned(),
            cache,
            buffered,
            direct: None,
            kind,
            read_only,
            logical_block,
            physical_block,
            bounced: AtomicU64::new(0),
            fixed: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            recorder: None,
            _lock: Some(held),
        };
        if cache.direct() {
            file.direct = file.open_direct(&meta).map_err(err)?;
        }
        Ok(file)
    }

    fn open_direct(&self, meta: &std::fs::Metadata) -> io::Result<Option<(File, DioAlign)>> {
        let mut options = std::fs::OpenOptions::new();
        options
            .read(true)
            .write(!self.read_only)
            .custom_flags(libc::O_DIRECT | dsync_flag(self.cache.dsync() && !self.read_only));
        let direct = match options.open(&self.path) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!(path = %self.path.display(), "O_DIRECT not supported here, using the page cache");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let again = direct.metadata()?;
        if (again.dev(), again.ino()) != (meta.dev(), meta.ino()) {
            return Err(io::Error::other("file replaced while opening"));
        }
        let align = sys::dio_align(direct.as_fd()).unwrap_or(match self.kind {
            FileKind::BlockDevice => DioAlign {
                memory: self.logical_block,
                offset: self.logical_block,
            },
            FileKind::Regular => DioAlign {
                memory: 512,
                offset: 512,
            },
        });
        let usable = |a: u32| a.is_power_of_two() && a as usize <= BUF_ALIGN;
        if !usable(align.memory) || !usable(align.offset) {
            tracing::warn!(path = %self.path.display(), ?align, "unusable O_DIRECT alignment, using the page cache");
            return Ok(None);
        }
        tracing::debug!(path = %self.path.display(), ?align, "O_DIRECT enabled");
        Ok(Some((direct, align)))
    }

    /// Drops the O_DIRECT descriptor: every op goes through the page cache from now on.
    pub fn disable_direct(&mut self) {
        self.direct = None;
    }

    /// Sends through O_DIRECT only the ops that cover whole pages (offset and length
    /// multiples of 4 KiB), the others through the page cache. For files whose metadata is
    /// written through the page cache and whose data may share a page with it (a VMDK grain
    /// may start at any sector): an O_DIRECT write into a page that is dirty in the cache can
    /// lose one of the two writes. Data in whole pages never shares one with metadata.
    pub fn direct_in_whole_pages(&mut self) {
        if let Some((_, align)) = self.direct.as_mut() {
            align.offset = align.offset.max(PAGE_SIZE);
        }
    }

    /// The cache mode the file was opened in.
    pub fn cache(&self) -> CacheMode {
        self.cache
    }

    /// The path the file was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the open file lives, as the kernel reports it for the descriptor (symlinks
    /// resolved, whatever happened to the path it was opened by).
    pub(crate) fn real_path(&self) -> Result<PathBuf, Error> {
        let link = PathBuf::from(format!("/proc/self/fd/{}", self.buffered.as_raw_fd()));
        std::fs::read_link(&link).map_err(|source| Error::Open { path: link, source })
    }

    /// Regular file or block device.
    pub fn kind(&self) -> FileKind {
        self.kind
    }

    /// True if modifying ops are refused.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The O_DIRECT alignment, or `None` if I/O goes through the page cache.
    pub fn dio_align(&self) -> Option<DioAlign> {
        self.direct.as_ref().map(|(_, align)| *align)
    }

    /// Logical block size of a block device (512 for regular files).
    pub fn logical_block_size(&self) -> u32 {
        self.logical_block
    }

    /// Physical block size of a block device (512 for regular files).
    pub fn physical_block_size(&self) -> u32 {
        self.physical_block
    }

    /// The current size in bytes.
    pub fn size(&self) -> Result<u64, Error> {
        match self.kind {
            FileKind::Regular => Ok(self.buffered.metadata()?.len()),
            FileKind::BlockDevice => Ok(sys::blk_size(self.buffered.as_fd())?),
        }
    }

    /// Grows or shrinks a regular file to `len` bytes and makes the new length durable (new
    /// bytes read as zeros). Refused on read-only files and on block devices, whose size is
    /// theirs to change.
    pub fn set_len(&self, len: u64) -> Result<(), Error> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        if self.kind == FileKind::BlockDevice {
            return Err(Error::InvalidArgument(format!(
                "{} is a block device: grow the device itself",
                self.path.display()
            )));
        }
        self.buffered.set_len(len)?;
        self.buffered.sync_all()?;
        if let Some(recorder) = &self.recorder {
            recorder.truncated(len);
        }
        Ok(())
    }

    /// Reads up to `buf.len()` bytes from offset 0 through the page cache (format probing).
    pub fn read_head(&self, buf: &mut [u8]) -> Result<usize, Error> {
        let mut got = 0;
        while let Some(rest) = buf.get_mut(got..).filter(|r| !r.is_empty()) {
            match self.buffered.read_at(rest, got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(got)
    }

    /// Reads up to `buf.len()` bytes at `offset` through the page cache (format metadata);
    /// returns how many bytes were read (fewer only at end of file).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize, Error> {
        let mut got = 0;
        while let Some(rest) = buf.get_mut(got..).filter(|r| !r.is_empty()) {
            let at = offset
                .checked_add(got as u64)
                .ok_or_else(|| Error::from_errno(libc::EINVAL))?;
            match self.buffered.read_at(rest, at) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(got)
    }

    /// Reads what the page cache holds of `buf.len()` bytes at `offset`, without waiting for
    /// the device; `None` if it would have to (see [`super::sys::pread_cached`]).
    pub fn read_cached_at(&self, buf: &mut [u8], offset: u64) -> Result<Option<usize>, Error> {
        Ok(super::sys::pread_cached(
            self.buffered.as_fd(),
            buf,
            offset,
        )?)
    }

    /// Writes all of `data` at `offset` through the page cache (format metadata).
    pub fn write_all_at(&self, data: &[u8], offset: u64) -> Result<(), Error> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        self.buffered.write_all_at(data, offset)?;
        if let Some(recorder) = &self.recorder {
            recorder.written(offset, data);
        }
        Ok(())
    }

    /// Makes `[offset, offset + len)` read as zeros with the file system's zero-range
    /// fallocate, growing the file if the range ends past it (the blocks are reserved, so
    /// later writes into them neither extend the file nor allocate). Returns false if the
    /// file system cannot do that (the caller writes zeros instead).
    pub fn allocate_zeroed(&self, offset: u64, len: u64) -> Result<bool, Error> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        let (Ok(start), Ok(count)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(Error::InvalidArgument(format!("zero range {offset}+{len}")));
        };
        let mode = nix::fcntl::FallocateFlags::FALLOC_FL_ZERO_RANGE;
        match nix::fcntl::fallocate(self.buffered.as_raw_fd(), mode, start, count) {
            Ok(()) => {}
            Err(nix::errno::Errno::EOPNOTSUPP) => return Ok(false),
            Err(e) => return Err(io::Error::from(e).into()),
        }
        if let Some(recorder) = &self.recorder {
            recorder.zeroed(offset, len);
        }
        Ok(true)
    }

    /// Reserves the file system's blocks under `[offset, offset + len)` of a regular file
    /// without changing what it reads or its size (fallocate with KEEP_SIZE: holes become
    /// unwritten extents, which read as zeros). Later writes there then need no block
    /// allocation on the write path. Returns false where that does not apply: block devices,
    /// file systems without fallocate.
    pub fn preallocate(&self, offset: u64, len: u64) -> Result<bool, Error> {
        let mode = nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE;
        self.reserve_blocks(mode, offset, len)
    }

    /// Grows a regular file to `offset + len` bytes with the file system's blocks under the
    /// new part reserved (fallocate without flags: holes become unwritten extents, which read
    /// as zeros; data already there is left as it is). Direct writes there are then neither
    /// extending nor allocating, so they run in parallel. Returns false where that does not
    /// apply: block devices, file systems without fallocate. The new length is not synced:
    /// an fdatasync after a write into it makes it durable.
    pub fn allocate_to(&self, offset: u64, len: u64) -> Result<bool, Error> {
        self.reserve_blocks(nix::fcntl::FallocateFlags::empty(), offset, len)
    }

    /// fallocate `mode` on a regular file; false on other files and where it is refused.
    fn reserve_blocks(
        &self,
        mode: nix::fcntl::FallocateFlags,
        offset: u64,
        len: u64,
    ) -> Result<bool, Error> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        if self.kind != FileKind::Regular || len == 0 {
            return Ok(false);
        }
        let (Ok(start), Ok(count)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(Error::InvalidArgument(format!(
                "reserve blocks at {offset}+{len}"
            )));
        };
        match nix::fcntl::fallocate(self.buffered.as_raw_fd(), mode, start, count) {
            Ok(()) => Ok(true),
            Err(nix::errno::Errno::EOPNOTSUPP) => Ok(false),
            Err(e) => Err(io::Error::from(e).into()),
        }
    }

    /// Whether `[offset, offset + len)` is a hole of a regular file (it reads as zeros and
    /// holds no data), from `lseek(SEEK_DATA)`. False whenever that cannot be told: block
    /// devices, file systems without SEEK_DATA, errors.
    pub fn is_hole(&self, offset: u64, len: u64) -> bool {
        let Some(end) = offset.checked_add(len) else {
            return false;
        };
        self.next_data(offset).is_some_and(|next| next >= end)
    }

    /// Where the first byte of data at or after `offset` is, from `lseek(SEEK_DATA)`:
    /// everything before it reads as zeros. `u64::MAX` if there is none; `None` whenever
    /// that cannot be told (block devices, file systems without SEEK_DATA, errors).
    pub fn next_data(&self, offset: u64) -> Option<u64> {
        let start = i64::try_from(offset).ok()?;
        if self.kind != FileKind::Regular {
            return None;
        }
        let whence = nix::unistd::Whence::SeekData;
        match nix::unistd::lseek(self.buffered.as_raw_fd(), start, whence) {
            Ok(next) => u64::try_from(next).ok(),
            // No data at or after `offset`: the rest of the file is a hole (or past its end).
            Err(nix::errno::Errno::ENXIO) => Some(u64::MAX),
            Err(_) => None,
        }
    }

    /// fdatasync on the file; nothing at all in [`CacheMode::Unsafe`] (then nothing is
    /// durable, and the recorder is not told of a sync).
    pub fn datasync(&self) -> Result<(), Error> {
        if !self.cache.syncs() {
            return Ok(());
        }
        let mark = self.recorder.as_ref().map(|r| r.sync_begin());
        self.buffered.sync_data()?;
        if let (Some(recorder), Some(mark)) = (&self.recorder, mark) {
            recorder.synced(mark);
        }
        Ok(())
    }

    /// Installs a test hook that is told every completed write, zeroing and fdatasync on this
    /// file (see [`WriteRecorder`]). Install it before the file is shared.
    pub fn set_recorder(&mut self, recorder: Arc<dyn WriteRecorder>) {
        self.recorder = Some(recorder);
    }

    /// The installed recorder, if any.
    pub(crate) fn recorder(&self) -> Option<&dyn WriteRecorder> {
        self.recorder.as_deref()
    }

    /// How ops were adapted for O_DIRECT so far.
    pub fn stats(&self) -> FileStats {
        FileStats {
            bounced: self.bounced.load(Ordering::Relaxed),
            buffered_fallbacks: self.fallbacks.load(Ordering::Relaxed),
            fixed: self.fixed.load(Ordering::Relaxed),
        }
    }

    /// The O_DIRECT descriptor and its alignment, if the file has one.
    pub(crate) fn direct_descriptor(&self) -> Option<(&File, DioAlign)> {
        self.direct.as_ref().map(|(f, a)| (f, *a))
    }

    /// The descriptor for `which` (the buffered one if there is no O_DIRECT descriptor).
    pub(crate) fn fd(&self, which: Which) -> BorrowedFd<'_> {
        match (which, &self.direct) {
            (Which::Direct, Some((direct, _))) => direct.as_fd(),
            _ => self.buffered.as_fd(),
        }
    }

    /// O_DIRECT if the range is aligned for it, else the page cache.
    pub(crate) fn choose(&self, offset: u64, len: usize) -> Which {
        let Some(align) = self.dio_align() else {
            return Which::Buffered;
        };
        let mask = u64::from(align.offset) - 1;
        if offset & mask == 0 && (len as u64) & mask == 0 {
            Which::Direct
        } else {
            self.fallbacks.fetch_add(1, Ordering::Relaxed);
            Which::Buffered
        }
    }

    /// True if one segment can be used for O_DIRECT as it is.
    pub(crate) fn dio_memory_ok(&self, iov: &IoVec) -> bool {
        let Some(align) = self.dio_align() else {
            return true;
        };
        let memory = align.memory as usize;
        let offset = align.offset as usize;
        (iov.base as usize) % memory == 0 && iov.len % offset == 0
    }

    /// O_DIRECT offset alignment, 1 without O_DIRECT.
    pub(crate) fn dio_offset_align(&self) -> usize {
        self.dio_align().map_or(1, |a| a.offset as usize)
    }

    pub(crate) fn note_bounce(&self) {
        self.bounced.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn note_fixed(&self) {
        self.fixed.fetch_add(1, Ordering::Relaxed);
    }
}

/// A read-only descriptor of the file `meta` describes, for its lock bytes.
fn open_lock(path: &Path, meta: &std::fs::Metadata) -> io::Result<File> {
    let file = File::open(path)?;
    let again = file.metadata()?;
    if (again.dev(), again.ino()) != (meta.dev(), meta.ino()) {
        return Err(io::Error::other("file replaced while opening"));
    }
    Ok(file)
}

/// Creates `path` for writing; it must not exist. A directory in the way is reported as
/// such (EISDIR) rather than as an existing file.
pub(crate) fn create_new(path: &Path) -> Result<File, Error> {
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path);
    created.map_err(|source| {
        let source = match source.raw_os_error() {
            Some(libc::EEXIST) if path.is_dir() => io::Error::from_raw_os_error(libc::EISDIR),
            _ => source,
        };
        Error::Open {
            path: path.to_owned(),
            source,
        }
    })
}

/// O_DSYNC if `on`, else no flag.
fn dsync_flag(on: bool) -> i32 {
    if on { libc::O_DSYNC } else { 0 }
}

/// Opens the page-cached descriptor, with O_DSYNC if `dsync` and it is writable.
fn open_buffered(path: &Path, read_only: bool, dsync: bool) -> io::Result<(File, bool)> {
    let open = |ro: bool| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(!ro)
            .custom_flags(dsync_flag(dsync && !ro))
            .open(path)
    };
    match open(read_only) {
        Ok(f) => Ok((f, read_only)),
        Err(e) if !read_only && e.raw_os_error() == Some(libc::EROFS) => {
            tracing::info!(path = %path.display(), "read-only file system, opening the image read-only");
            Ok((open(true)?, true))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
impl EngineFile {
    /// Wraps any open file (e.g. a FIFO, to withhold completions) as a buffered regular file.
    pub(crate) fn wrap_for_test(buffered: File, path: &Path) -> EngineFile {
        EngineFile {
            path: path.to_owned(),
            cache: CacheMode::Writeback,
            buffered,
            direct: None,
            kind: FileKind::Regular,
            read_only: false,
            logical_block: 512,
            physical_block: 512,
            bounced: AtomicU64::new(0),
            fixed: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            recorder: None,
            _lock: None,
        }
    }
}

#[cfg(test)]
mod hole_tests {
    use super::*;

    #[test]
    fn a_hole_is_told_from_written_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sparse");
        std::fs::File::create(&path)
            .expect("create")
            .set_len(4 << 20)
            .expect("size");
        let file = EngineFile::open(&path, Access::ReadWrite, CacheMode::Writeback).expect("open");
        assert!(file.is_hole(1 << 20, 1 << 20));
        file.write_all_at(&[1; 4096], (1 << 20) + 8192)
            .expect("write");
        assert!(!file.is_hole(1 << 20, 1 << 20), "written data in the range");
        assert!(file.is_hole(2 << 20, 1 << 20), "the range after it");
        assert!(!file.is_hole(u64::MAX, 1), "an offset past any file");
    }
}
