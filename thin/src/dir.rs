//! A pool as its users name it: a directory holding `metadata` and `data` (files, or symlinks
//! to block devices), next to rustbk's volume records (`metadata.volumes.json`). `params` of
//! a disk name a volume of it as `thin:/path/to/pool:VOLUME`, by id or by name.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::pool::{Pool, PoolOptions, VolumeUsage};

/// File (or symlink to a device) of the metadata inside a pool directory.
pub const METADATA: &str = "metadata";
/// File (or symlink to a device) of the data inside a pool directory.
pub const DATA: &str = "data";

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

    /// Makes a new pool: the directory (which must not exist or be empty), its devices and
    /// formatted metadata.
    pub fn create(&self, devices: &Devices, block_size: u64, opts: PoolOptions) -> Result<Pool> {
        std::fs::create_dir_all(&self.path).map_err(io)?;
        if std::fs::read_dir(&self.path).map_err(io)?.next().is_some() {
            return Err(Error::InvalidArgument(format!(
                "{} is not empty",
                self.path.display()
            )));
        }
        match devices {
            Devices::Files { metadata, data } => {
                new_file(&self.metadata(), *metadata)?;
                new_file(&self.data(), *data)?;
            }
            Devices::Existing { metadata, data } => {
                std::os::unix::fs::symlink(absolute(metadata)?, self.metadata()).map_err(io)?;
                std::os::unix::fs::symlink(absolute(data)?, self.data()).map_err(io)?;
            }
        }
        Pool::create(&self.metadata(), &self.data(), block_size, opts)
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
    let f = std::fs::File::create_new(path).map_err(io)?;
    f.set_len(len).map_err(io)
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(io)
}

fn io(e: std::io::Error) -> Error {
    Error::Io(rustbk_formats::Error::Io(e))
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
