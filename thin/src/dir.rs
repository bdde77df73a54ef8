//! A pool as its users name it: a directory holding `metadata` and `data` (files, or symlinks
//! to block devices), next to rustbk's volume records (`metadata.volumes.0` and `.1`). `params` of
//! a disk name a volume of it as `thin:/path/to/pool:VOLUME`, by id or by name.

mod full;
mod start;

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::pool::{FreshData, Pool, PoolOptions, PoolUsage, VolumeSpec, VolumeUsage};
use crate::service::AdminClient;

pub use full::{Preallocation, Progress};
pub use start::{AUTO_IDLE_EXIT, SERVICE_LOG};

/// File (or symlink to a device) of the metadata inside a pool directory.
pub const METADATA: &str = "metadata";
/// File (or symlink to a device) of the data inside a pool directory.
pub const DATA: &str = "data";
/// The pool service's socket inside a pool directory.
pub const SOCKET: &str = "service.sock";
/// How long the tools wait for the pool service to answer.
const ADMIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Where a pool directory's devices are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolDir {
    /// The directory.
    pub path: PathBuf,
}

/// How to make the devices of a new pool.
#[derive(Clone, Debug)]
pub enum Devices {
    /// New sparse files of these sizes in bytes.
    Files {
        /// Metadata size.
        metadata: u64,
        /// Data size.
        data: u64,
    },
    /// Existing devices or files, linked from the directory.
    Existing {
        /// The metadata device.
        metadata: PathBuf,
        /// The data device.
        data: PathBuf,
    },
}

impl PoolDir {
    /// The pool directory at `path`.
    pub fn new(path: impl Into<PathBuf>) -> PoolDir {
        PoolDir { path: path.into() }
    }

    /// The metadata file or device link.
    pub fn metadata(&self) -> PathBuf {
        self.path.join(METADATA)
    }

    /// The data file or device link.
    pub fn data(&self) -> PathBuf {
        self.path.join(DATA)
    }

    /// The pool service's socket.
    pub fn socket(&self) -> PathBuf {
        self.path.join(SOCKET)
    }

    /// Whether a pool service serves this pool (its socket accepts a connection).
    pub fn served(&self) -> bool {
        std::os::unix::net::UnixStream::connect(self.socket()).is_ok()
    }

    /// The pool for volume operations: through its service if one serves it, else opened in
    /// this process.
    pub fn handle(&self, opts: PoolOptions) -> Result<PoolHandle> {
        match self.served() {
            true => Ok(PoolHandle::Service(AdminClient::connect(
                &self.socket(),
                ADMIN_TIMEOUT,
            )?)),
            false => Ok(PoolHandle::Local(self.open(opts)?)),
        }
    }

    /// Makes a new pool: the directory (which must not exist or be empty), its devices and
    /// formatted metadata.
    pub fn create(&self, devices: &Devices, block_size: u64, opts: PoolOptions) -> Result<Pool> {
        self.make_empty_dir()?;
        let (meta_path, data_path) = (self.metadata(), self.data());
        match devices {
            Devices::Files { metadata, data } => {
                new_file(&meta_path, *metadata)?;
                new_file(&data_path, *data)?;
                // A new sparse file: every block reads zeros until it is handed out.
                let sparse = FreshData::Sparse;
                Pool::create_on_fresh_data(&meta_path, &data_path, block_size, opts, sparse)
            }
            Devices::Existing { metadata, data } => {
                std::os::unix::fs::symlink(absolute(metadata)?, &meta_path).map_err(Error::io)?;
                std::os::unix::fs::symlink(absolute(data)?, &data_path).map_err(Error::io)?;
                Pool::create(&meta_path, &data_path, block_size, opts)
            }
        }
    }

    /// Makes the directory, which must not exist or be empty.
    fn make_empty_dir(&self) -> Result<()> {
        std::fs::create_dir_all(&self.path).map_err(Error::io)?;
        if std::fs::read_dir(&self.path)
            .map_err(Error::io)?
            .next()
            .is_some()
        {
            return Err(Error::InvalidArgument(format!(
                "{} is not empty",
                self.path.display()
            )));
        }
        Ok(())
    }

    /// Opens the pool in this process.
    pub fn open(&self, opts: PoolOptions) -> Result<Pool> {
        if !self.metadata().exists() {
            return Err(Error::InvalidArgument(format!(
                "{} is not a thin pool (no {METADATA} in it)",
                self.path.display()
            )));
        }
        Pool::open(&self.metadata(), &self.data(), opts)
    }
}

/// A pool opened in this process, or reached through its service.
pub enum PoolHandle {
    /// Opened here (no service runs).
    Local(Pool),
    /// Through the pool service's admin channel.
    Service(AdminClient),
}

impl PoolHandle {
    /// Creates volume `id`.
    pub fn create_volume(&mut self, id: u64, spec: VolumeSpec) -> Result<()> {
        match self {
            PoolHandle::Local(p) => p.create_volume(id, spec),
            PoolHandle::Service(a) => a.create_volume(id, spec),
        }
    }

    /// Deletes volume `id`.
    pub fn delete_volume(&mut self, id: u64) -> Result<()> {
        match self {
            PoolHandle::Local(p) => p.delete_volume(id),
            PoolHandle::Service(a) => a.delete_volume(id),
        }
    }

    /// Resizes volume `id`.
    pub fn resize_volume(&mut self, id: u64, size: u64) -> Result<()> {
        match self {
            PoolHandle::Local(p) => p.resize_volume(id, size),
            PoolHandle::Service(a) => a.resize_volume(id, size),
        }
    }

    /// Snapshots volume `origin` as `id` (live, if it is served).
    pub fn snapshot(&mut self, origin: u64, id: u64, name: &str) -> Result<()> {
        match self {
            PoolHandle::Local(p) => p.snapshot(origin, id, name),
            PoolHandle::Service(a) => a.snapshot(origin, id, name),
        }
    }

    /// Every volume with its usage.
    pub fn volumes(&mut self) -> Result<Vec<VolumeUsage>> {
        match self {
            PoolHandle::Local(p) => p.volumes(),
            PoolHandle::Service(a) => a.volumes(),
        }
    }

    /// Space figures.
    pub fn usage(&mut self) -> Result<PoolUsage> {
        match self {
            PoolHandle::Local(p) => p.usage(),
            PoolHandle::Service(a) => a.usage(),
        }
    }

    /// Takes in the grown devices (online, if the pool is served): the data and metadata
    /// blocks the pool has now.
    pub fn grow(&mut self) -> Result<(u64, u64)> {
        match self {
            PoolHandle::Local(p) => p.grow(),
            PoolHandle::Service(a) => a.grow(),
        }
    }
}

/// The id of the volume `name` of `pool`: a number is an id, anything else a volume name,
/// which must be unique.
pub fn resolve_volume(volumes: &[VolumeUsage], name: &str) -> Result<u64> {
    if let Ok(id) = name.parse::<u64>() {
        return match volumes.iter().any(|v| v.id == id) {
            true => Ok(id),
            false => Err(Error::NoSuchDevice(id)),
        };
    }
    let mut found = volumes.iter().filter(|v| v.record.name == name);
    match (found.next(), found.next()) {
        (Some(v), None) => Ok(v.id),
        (None, _) => Err(Error::InvalidArgument(format!(
            "no volume is named {name:?}"
        ))),
        (Some(_), Some(_)) => Err(Error::InvalidArgument(format!(
            "several volumes are named {name:?}: use the id"
        ))),
    }
}

/// The lowest id no volume has.
pub fn free_id(volumes: &[VolumeUsage]) -> u64 {
    let mut ids: Vec<u64> = volumes.iter().map(|v| v.id).collect();
    ids.sort_unstable();
    let mut next = 0;
    for id in ids {
        if id != next {
            break;
        }
        next += 1;
    }
    next
}

/// Splits a disk's `thin:` target, `/path/to/pool:VOLUME`, at its last colon.
pub fn parse_target(target: &str) -> Result<(PoolDir, String)> {
    let bad = |why: &str| Error::InvalidArgument(format!("thin volume {target:?}: {why}"));
    let (dir, volume) = target
        .rsplit_once(':')
        .ok_or_else(|| bad("expected POOL:VOLUME"))?;
    if dir.is_empty() || volume.is_empty() || volume.contains('/') {
        return Err(bad("expected POOL:VOLUME"));
    }
    Ok((PoolDir::new(dir), volume.to_owned()))
}

fn new_file(path: &Path, len: u64) -> Result<()> {
    let f = std::fs::File::create_new(path).map_err(Error::io)?;
    f.set_len(len).map_err(Error::io)
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(Error::io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_split_at_the_last_colon() {
        let (dir, vol) = parse_target("/srv/a:b/pool:vm1").unwrap();
        assert_eq!(
            (dir.path, vol.as_str()),
            (PathBuf::from("/srv/a:b/pool"), "vm1")
        );
        assert!(parse_target("/srv/pool").is_err());
        assert!(parse_target("/srv/pool:").is_err());
        assert!(parse_target(":3").is_err());
        assert!(parse_target("/srv/pool:a/b").is_err());
    }
}
