//! A thin-pool SR: the volumes of a rustbk thin pool (`rustbk thin`), keyed by their thin ids.
//! Snapshots and clones are thin snapshots, which the pool takes while a volume is served
//! (it pauses the volume's ports). The SR's and the volumes' SMAPI properties live in the
//! pool's folder beside its devices, as in a folder SR.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::fcntl::Flock;

use rustbk_thin::dir::{Devices, PoolDir, PoolHandle, free_id};
use rustbk_thin::pool::{PoolOptions, VolumeSpec, VolumeUsage};

use super::error::{Result, SmapiError};
use super::idl::{Health, SrStat, Volume};
use super::meta::{self, LOCK_FILE, SR_FILE, SrMeta, VolumeMeta};
use super::sr::Sr;
use super::uri;

/// Data block size of pools SR.create makes.
const BLOCK_SIZE: u64 = 64 << 10;
/// Metadata bytes of a new pool: a base plus a share per data block, as `rustbk thin
/// create-pool` sizes it by default.
const META_BASE: u64 = 4 << 20;
const META_PER_BLOCK: u64 = 128;

/// An SR over the pool in a folder.
pub struct ThinSr {
    dir: PathBuf,
    /// The SR's lock, held for the whole call.
    _lock: Flock<File>,
}

fn thin_err(e: rustbk_thin::Error) -> SmapiError {
    SmapiError::Internal(e.to_string())
}

fn size_of(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn sectors(size: i64) -> Result<u64> {
    let size =
        u64::try_from(size).map_err(|_| SmapiError::Internal(format!("negative size {size}")))?;
    Ok(size.div_ceil(512).saturating_mul(512))
}

impl ThinSr {
    /// Makes the pool at `dir` an SR, first making a pool of `size` data bytes if there is
    /// none.
    pub fn create(dir: &Path, m: SrMeta, size: Option<u64>) -> Result<ThinSr> {
        let pool = PoolDir::new(dir);
        if !pool.metadata().exists() {
            let data = size.ok_or_else(|| {
                SmapiError::Internal(format!("no pool in {}: give a size", dir.display()))
            })?;
            let metadata = META_BASE.saturating_add((data / BLOCK_SIZE) * META_PER_BLOCK);
            let devices = Devices::Files { metadata, data };
            pool.create(&devices, BLOCK_SIZE, PoolOptions::default())
                .map_err(thin_err)?;
        }
        let lock = meta::lock_sr(dir)?;
        if dir.join(SR_FILE).exists() {
            return Err(SmapiError::Internal(format!(
                "{} is an SR already",
                dir.display()
            )));
        }
        meta::store(&dir.join(SR_FILE), &m)?;
        Ok(ThinSr {
            dir: dir.to_owned(),
            _lock: lock,
        })
    }

    /// The SR in the pool folder `dir`, named by `sr_uri`.
    pub fn open(dir: &Path, sr_uri: &str) -> Result<ThinSr> {
        if !PoolDir::new(dir).metadata().exists() {
            return Err(SmapiError::SrDoesNotExist(sr_uri.to_owned()));
        }
        Ok(ThinSr {
            _lock: meta::lock_existing(dir, sr_uri)?,
            dir: dir.to_owned(),
        })
    }

    fn pool(&self) -> Result<PoolHandle> {
        PoolDir::new(&self.dir)
            .handle(PoolOptions::default())
            .map_err(thin_err)
    }

    fn meta_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// The volume's usage, or Volume_does_not_exist.
    fn find(pool: &mut PoolHandle, key: &str) -> Result<VolumeUsage> {
        let missing = || SmapiError::VolumeDoesNotExist(key.to_owned());
        let id: u64 = key.parse().map_err(|_| missing())?;
        let volumes = pool.volumes().map_err(thin_err)?;
        volumes.into_iter().find(|v| v.id == id).ok_or_else(missing)
    }

    fn meta_of(&self, usage: &VolumeUsage) -> Result<VolumeMeta> {
        let path = self.meta_path(usage.id);
        if path.is_file() {
            return meta::load(&path);
        }
        // A volume made with `rustbk thin create`: its pool name, writable.
        Ok(VolumeMeta {
            name: usage.record.name.clone(),
            read_write: true,
            ..VolumeMeta::default()
        })
    }

    fn describe(&self, usage: &VolumeUsage, block_size: u64) -> Result<Volume> {
        let m = self.meta_of(usage)?;
        let params = format!("thin:{}:{}", self.dir.display(), usage.id);
        Ok(Volume {
            key: usage.id.to_string(),
            uuid: None,
            name: m.name,
            description: m.description,
            read_write: m.read_write,
            sharable: m.sharable,
            virtual_size: size_of(usage.record.size),
            physical_utilisation: size_of(usage.mapped_blocks.saturating_mul(block_size)),
            uri: vec![uri::data_uri(&params)],
            keys: m.keys,
        })
    }

    /// Deletes a volume and its properties (the caller holds the SR's lock).
    fn delete(&self, key: &str) -> Result<()> {
        let mut pool = self.pool()?;
        let usage = Self::find(&mut pool, key)?;
        pool.delete_volume(usage.id).map_err(thin_err)?;
        match std::fs::remove_file(self.meta_path(usage.id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    fn volume_in(&self, pool: &mut PoolHandle, key: &str) -> Result<Volume> {
        let usage = Self::find(pool, key)?;
        let block_size = pool.usage().map_err(thin_err)?.block_size;
        self.describe(&usage, block_size)
    }
}

impl Sr for ThinSr {
    fn stat(&self) -> Result<SrStat> {
        let m: SrMeta = meta::load(&self.dir.join(SR_FILE))?;
        let u = self.pool()?.usage().map_err(thin_err)?;
        Ok(SrStat {
            sr: uri::sr_uri("thin", &self.dir),
            name: m.name,
            uuid: m.uuid,
            description: m.description,
            free_space: size_of(u.data_free.saturating_mul(u.block_size)),
            total_space: size_of(u.data_blocks.saturating_mul(u.block_size)),
            datasources: Vec::new(),
            clustered: false,
            health: Health::Healthy(String::new()),
        })
    }

    fn update(&self, f: &mut dyn FnMut(&mut SrMeta)) -> Result<()> {
        let path = self.dir.join(SR_FILE);
        let mut m: SrMeta = meta::load(&path)?;
        f(&mut m);
        meta::store(&path, &m)
    }

    fn volumes(&self) -> Result<Vec<Volume>> {
        let mut pool = self.pool()?;
        let block_size = pool.usage().map_err(thin_err)?.block_size;
        let volumes = pool.volumes().map_err(thin_err)?;
        volumes
            .iter()
            .map(|u| self.describe(u, block_size))
            .collect()
    }

    fn volume(&self, key: &str) -> Result<Volume> {
        self.volume_in(&mut self.pool()?, key)
    }

    fn create_volume(&self, m: VolumeMeta, size: i64) -> Result<Volume> {
        let mut pool = self.pool()?;
        let id = free_id(&pool.volumes().map_err(thin_err)?);
        let spec = VolumeSpec {
            size: sectors(size)?,
            name: m.name.clone(),
            origin: None,
        };
        pool.create_volume(id, spec).map_err(thin_err)?;
        meta::store(&self.meta_path(id), &m)?;
        self.volume_in(&mut pool, &id.to_string())
    }

    fn update_volume(&self, key: &str, f: &mut dyn FnMut(&mut VolumeMeta)) -> Result<()> {
        let usage = Self::find(&mut self.pool()?, key)?;
        let mut m = self.meta_of(&usage)?;
        f(&mut m);
        meta::store(&self.meta_path(usage.id), &m)
    }

    fn resize(&self, key: &str, size: i64) -> Result<()> {
        let mut pool = self.pool()?;
        let usage = Self::find(&mut pool, key)?;
        let size = sectors(size)?;
        if size <= usage.record.size {
            return Ok(());
        }
        pool.resize_volume(usage.id, size).map_err(thin_err)
    }

    fn snapshot(&self, key: &str, writable: bool) -> Result<Volume> {
        let mut pool = self.pool()?;
        let usage = Self::find(&mut pool, key)?;
        let mut m = self.meta_of(&usage)?;
        let id = free_id(&pool.volumes().map_err(thin_err)?);
        pool.snapshot(usage.id, id, &m.name).map_err(thin_err)?;
        m.read_write = writable;
        m.keys.clear();
        meta::store(&self.meta_path(id), &m)?;
        self.volume_in(&mut pool, &id.to_string())
    }

    fn destroy_volume(&self, key: &str) -> Result<()> {
        self.delete(key)
    }

    /// Deletes every volume of the pool and the SR's file; the pool itself stays.
    fn destroy(&self) -> Result<()> {
        let volumes = self.pool()?.volumes().map_err(thin_err)?;
        for usage in volumes {
            self.delete(&usage.id.to_string())?;
        }
        std::fs::remove_file(self.dir.join(SR_FILE))?;
        std::fs::remove_file(self.dir.join(LOCK_FILE))?;
        Ok(())
    }
}
