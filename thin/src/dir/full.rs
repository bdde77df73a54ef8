//! Pools whose data file takes all of its space from the file system up front, filled with
//! zeros (`rustbk thin create-pool --preallocation full`), as a data device on a logical
//! volume has it. A first write into a never-used block is then an overwrite: nothing to
//! zero around it, no unwritten extent for the file system to convert (see `pool/fresh.rs`).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};

use super::{Devices, PoolDir, new_file};
use crate::error::{Error, Result};
use crate::pool::{FreshData, Pool, PoolOptions};

/// How a new data file takes its space from the file system (qemu-img's names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Preallocation {
    /// Sparse: the pool reserves space a window ahead of the blocks it hands out.
    #[default]
    Off,
    /// Every byte written with zeros when the file is made or grown.
    Full,
}

/// Called with (bytes done, bytes in all) while zeros are written.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// Bytes written at a time.
const CHUNK: usize = 4 << 20;

impl PoolDir {
    /// [`PoolDir::create`], with the data file's space taken as `prealloc` says. `Full`
    /// needs new files (an existing device is refused: the pool cannot know what it holds).
    pub fn create_with(
        &self,
        devices: &Devices,
        block_size: u64,
        opts: PoolOptions,
        prealloc: Preallocation,
        progress: Progress<'_>,
    ) -> Result<Pool> {
        let (metadata, data) = match (prealloc, devices) {
            (Preallocation::Off, _) => return self.create(devices, block_size, opts),
            (Preallocation::Full, Devices::Files { metadata, data }) => (*metadata, *data),
            (Preallocation::Full, Devices::Existing { .. }) => {
                return Err(Error::InvalidArgument(
                    "full preallocation makes a new data file; an existing device keeps its own"
                        .into(),
                ));
            }
        };
        self.make_empty_dir()?;
        new_file(&self.metadata(), metadata)?;
        new_file(&self.data(), 0)?;
        fill_zeros(&self.data(), data, progress)?;
        let filled = FreshData::Filled;
        Pool::create_on_fresh_data(&self.metadata(), &self.data(), block_size, opts, filled)
    }

    /// Grows the data file to `size` bytes (a file, never a device; never shrinks). A pool
    /// made with full preallocation gets the new part written with zeros too.
    pub fn grow_data_file(&self, size: u64, progress: Progress<'_>) -> Result<()> {
        let path = self.data();
        let meta = std::fs::metadata(&path).map_err(Error::io)?;
        if !meta.is_file() {
            return Err(Error::InvalidArgument(format!(
                "{} is not a file: grow the device with its own tools",
                path.display()
            )));
        }
        if size < meta.len() {
            return Err(Error::InvalidArgument(format!(
                "{} is {} bytes: a pool never shrinks",
                path.display(),
                meta.len()
            )));
        }
        match crate::pool::zero_mark(&self.metadata())? {
            Some(FreshData::Filled) => fill_zeros(&path, size, progress),
            Some(FreshData::Sparse) | None => {
                let file = std::fs::OpenOptions::new().write(true).open(&path);
                file.and_then(|f| f.set_len(size)).map_err(Error::io)
            }
        }
    }
}

/// Writes zeros into `path` from its end up to `size` bytes, syncs it, and drops the zeros
/// from the page cache. Served with O_DIRECT, a write over a cached page must first evict it:
/// io_uring cannot do that without blocking and hands every such write to a worker thread
/// (perf showed one busy in the page cache during first writes into a pool just filled).
fn fill_zeros(path: &Path, size: u64, progress: Progress<'_>) -> Result<()> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(Error::io)?;
    let start = file.metadata().map_err(Error::io)?.len();
    let zeros = vec![0u8; CHUNK];
    let mut at = start;
    while at < size {
        let len = usize::try_from(size - at).map_or(CHUNK, |left| left.min(CHUNK));
        file.write_all_at(&zeros[..len], at).map_err(Error::io)?;
        at += len as u64;
        progress(at - start, size - start);
    }
    file.sync_all().map_err(Error::io)?;
    let written = i64::try_from(size.saturating_sub(start)).unwrap_or(0);
    let start = i64::try_from(start).unwrap_or(i64::MAX);
    let dontneed = PosixFadviseAdvice::POSIX_FADV_DONTNEED;
    if let Err(e) = posix_fadvise(file.as_raw_fd(), start, written, dontneed) {
        tracing::debug!(error = %e, "cannot drop the zeros from the page cache");
    }
    sync_parent(path)
}

/// Makes the new file's name durable too.
fn sync_parent(path: &Path) -> Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(Error::io)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn a_full_pool_has_every_byte_allocated_and_grows_the_same_way() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = PoolDir::new(tmp.path().join("pool"));
        let devices = Devices::Files {
            metadata: 4 << 20,
            data: 8 << 20,
        };
        let mut seen = Vec::new();
        let pool = dir
            .create_with(
                &devices,
                64 << 10,
                PoolOptions::default(),
                Preallocation::Full,
                &mut |done, all| seen.push((done, all)),
            )
            .unwrap();
        assert_eq!(
            seen.last(),
            Some(&(8 << 20, 8 << 20)),
            "progress ends at 100%"
        );
        drop(pool);
        let allocated = |p: &Path| std::fs::metadata(p).unwrap().blocks() * 512;
        assert!(allocated(&dir.data()) >= 8 << 20, "every byte is allocated");
        assert_eq!(
            cached_bytes(&dir.data()),
            0,
            "the zeros left the page cache"
        );
        dir.grow_data_file(12 << 20, &mut |_, _| {}).unwrap();
        assert!(allocated(&dir.data()) >= 12 << 20, "the grown part too");
        assert_eq!(cached_bytes(&dir.data()), 0, "the grown part's zeros too");
        assert!(dir.grow_data_file(4 << 20, &mut |_, _| {}).is_err());
    }

    /// Bytes of `path` in the page cache, as util-linux's `fincore` counts them.
    fn cached_bytes(path: &Path) -> u64 {
        let out = std::process::Command::new("fincore")
            .args(["--bytes", "--noheadings", "--output", "RES"])
            .arg(path)
            .output()
            .expect("fincore (util-linux) is needed");
        assert!(out.status.success(), "fincore failed: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim().parse().expect("fincore prints a byte count")
    }

    #[test]
    fn full_preallocation_refuses_an_existing_device() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = PoolDir::new(tmp.path().join("pool"));
        let devices = Devices::Existing {
            metadata: tmp.path().join("m"),
            data: tmp.path().join("d"),
        };
        let made = dir.create_with(
            &devices,
            64 << 10,
            PoolOptions::default(),
            Preallocation::Full,
            &mut |_, _| {},
        );
        let Err(e) = made else {
            panic!("a pool was made on an existing device with full preallocation");
        };
        assert!(e.to_string().contains("existing device"), "{e}");
    }

    #[test]
    fn a_new_sparse_pool_hands_out_blocks_that_read_zeros_and_grows_sparse() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = PoolDir::new(tmp.path().join("pool"));
        let devices = Devices::Files {
            metadata: 4 << 20,
            data: 8 << 20,
        };
        let pool = dir
            .create(&devices, 64 << 10, PoolOptions::default())
            .unwrap();
        let mark = crate::pool::zero_mark(&dir.metadata()).unwrap();
        assert_eq!(mark, Some(FreshData::Sparse), "a new sparse data file");
        let spec = crate::pool::VolumeSpec {
            size: 1 << 20,
            ..Default::default()
        };
        pool.create_volume(1, spec).unwrap();
        let mut port = pool.open_port(1).unwrap();
        let got = crate::port::PoolPort::provision_zeroed(&mut port, 4).unwrap();
        assert_eq!(got.zeroed, got.blocks, "no block of a new file was written");
        drop(port);
        drop(pool);
        dir.grow_data_file(64 << 20, &mut |_, _| {}).unwrap();
        let allocated = std::fs::metadata(dir.data()).unwrap().blocks() * 512;
        // The pool reserved its first window (all 8 MiB) as unwritten extents; the 56 MiB
        // added hold nothing.
        assert!(allocated <= 8 << 20, "{allocated} bytes: it grew sparse");
        let mark = crate::pool::zero_mark(&dir.metadata()).unwrap();
        assert_eq!(mark, Some(FreshData::Sparse));
    }

    #[test]
    fn a_pool_on_an_existing_file_knows_no_block_that_reads_zeros() {
        let tmp = tempfile::tempdir().unwrap();
        let (m, d) = (tmp.path().join("m"), tmp.path().join("d"));
        std::fs::write(&m, vec![0u8; 4 << 20]).unwrap();
        // Whatever the file held before stays there: nothing reads zeros for sure.
        std::fs::write(&d, vec![0xa5u8; 1 << 20]).unwrap();
        let dir = PoolDir::new(tmp.path().join("pool"));
        let devices = Devices::Existing {
            metadata: m,
            data: d,
        };
        let pool = dir
            .create(&devices, 64 << 10, PoolOptions::default())
            .unwrap();
        assert_eq!(crate::pool::zero_mark(&dir.metadata()).unwrap(), None);
        let spec = crate::pool::VolumeSpec {
            size: 1 << 20,
            ..Default::default()
        };
        pool.create_volume(1, spec).unwrap();
        let mut port = pool.open_port(1).unwrap();
        let got = crate::port::PoolPort::provision_zeroed(&mut port, 4).unwrap();
        assert!(got.zeroed.is_empty(), "{:?} taken for zeros", got.zeroed);
    }
}
