//! A folder SR: one qcow2 file per volume, `KEY.qcow2`, with `KEY.json` beside it.
//!
//! Snapshot and clone freeze the volume's data: `KEY.qcow2` becomes a hidden base
//! `.base-UUID.qcow2`, and both the volume and the new snapshot (read-only) or clone
//! (writable) become empty overlays backed by it. A base is deleted when no file is backed by
//! it any more. A volume a running backend holds (its qcow2 writer lock) is neither
//! snapshotted, cloned, resized nor destroyed.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::fcntl::Flock;
use rustbk_formats::Format;
use rustbk_formats::engine::lock::{LockMode, lock};
use rustbk_formats::qcow2::{self, CreateOptions};

use super::error::{Result, SmapiError};
use super::idl::{Health, SrStat, Volume};
use super::meta::{self, LOCK_FILE, SR_FILE, SrMeta, VolumeMeta};
use super::sr::Sr;
use super::uri;
use crate::img::{FormatArg, ImageInfo};

const BASE_PREFIX: &str = ".base-";
const QCOW2: &str = "qcow2";

/// An SR that exists: its folder holds [`SR_FILE`].
pub struct FolderSr {
    folder: PathBuf,
    /// The SR's lock, held for the whole call.
    _lock: Flock<File>,
}

impl FolderSr {
    /// Makes the folder (if needed) an SR.
    pub fn create(folder: &Path, sr: SrMeta) -> Result<FolderSr> {
        std::fs::create_dir_all(folder)?;
        let lock = meta::lock_sr(folder)?;
        if folder.join(SR_FILE).exists() {
            return Err(SmapiError::Internal(format!(
                "{} is an SR already",
                folder.display()
            )));
        }
        meta::store(&folder.join(SR_FILE), &sr)?;
        Ok(FolderSr {
            folder: folder.to_owned(),
            _lock: lock,
        })
    }

    /// The SR in `folder`, named by `sr_uri`.
    pub fn open(folder: &Path, sr_uri: &str) -> Result<FolderSr> {
        Ok(FolderSr {
            _lock: meta::lock_existing(folder, sr_uri)?,
            folder: folder.to_owned(),
        })
    }

    fn uri(&self) -> String {
        uri::sr_uri("file", &self.folder)
    }

    fn sr_meta(&self) -> Result<SrMeta> {
        meta::load(&self.folder.join(SR_FILE))
    }

    fn image(&self, key: &str) -> PathBuf {
        self.folder.join(format!("{key}.{QCOW2}"))
    }

    fn meta_path(&self, key: &str) -> PathBuf {
        self.folder.join(format!("{key}.json"))
    }

    /// The keys of the SR's volumes, sorted.
    pub fn keys(&self) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        for entry in std::fs::read_dir(&self.folder)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(key) = name.strip_suffix(".json")
                && meta::valid_key(key)
                && self.image(key).is_file()
            {
                keys.push(key.to_owned());
            }
        }
        keys.sort();
        Ok(keys)
    }

    fn check_key(&self, key: &str) -> Result<()> {
        if meta::valid_key(key) && self.image(key).is_file() && self.meta_path(key).is_file() {
            Ok(())
        } else {
            Err(SmapiError::VolumeDoesNotExist(key.to_owned()))
        }
    }

    fn refuse_if_in_use(&self, key: &str) -> Result<()> {
        let path = self.image(key);
        let file = File::open(&path)?;
        lock(file, &path, LockMode::Writer)
            .map(drop)
            .map_err(|_| SmapiError::Internal(format!("volume {key} is in use")))
    }

    fn overlay(&self, path: &Path, base: &str) -> Result<()> {
        let opts = CreateOptions {
            backing_file: Some(PathBuf::from(base)),
            backing_format: Some(Format::Qcow2),
            ..CreateOptions::default()
        };
        qcow2::create(path, 0, &opts)
            .map_err(|e| SmapiError::Internal(format!("cannot create an overlay: {e}")))
    }

    fn files(&self, prefix_base: bool) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.folder)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name.ends_with(".qcow2") && name.starts_with(BASE_PREFIX) == prefix_base {
                out.push(name);
            }
        }
        Ok(out)
    }

    /// Deletes unreferenced bases until none is left (a base can back another base).
    fn collect_bases(&self) -> Result<()> {
        loop {
            let mut used = std::collections::HashSet::new();
            for name in self.files(false)?.into_iter().chain(self.files(true)?) {
                let info = ImageInfo::read(&self.folder.join(&name), Some(FormatArg::Qcow2), true)?;
                if let Some((stored, _, _)) = info.backing() {
                    used.insert(stored.to_string_lossy().into_owned());
                }
            }
            let unused: Vec<String> = self
                .files(true)?
                .into_iter()
                .filter(|b| !used.contains(b))
                .collect();
            if unused.is_empty() {
                return Ok(());
            }
            for base in unused {
                std::fs::remove_file(self.folder.join(base))?;
            }
        }
    }
}

impl Sr for FolderSr {
    /// SR.set_name / SR.set_description.
    fn update(&self, f: &mut dyn FnMut(&mut SrMeta)) -> Result<()> {
        let mut m = self.sr_meta()?;
        f(&mut m);
        meta::store(&self.folder.join(SR_FILE), &m)
    }

    /// SR.stat: the stored properties and the file system's space.
    fn stat(&self) -> Result<SrStat> {
        let m = self.sr_meta()?;
        let fs = nix::sys::statvfs::statvfs(&self.folder).map_err(std::io::Error::from)?;
        let frag = fs.fragment_size();
        let bytes = |n: u64| i64::try_from(n.saturating_mul(frag)).unwrap_or(i64::MAX);
        Ok(SrStat {
            sr: self.uri(),
            name: m.name,
            uuid: m.uuid,
            description: m.description,
            free_space: bytes(fs.blocks_available()),
            total_space: bytes(fs.blocks()),
            datasources: Vec::new(),
            clustered: false,
            health: Health::Healthy(String::new()),
        })
    }

    /// Volume.stat.
    fn volume(&self, key: &str) -> Result<Volume> {
        self.check_key(key)?;
        let m: VolumeMeta = meta::load(&self.meta_path(key))?;
        let path = self.image(key);
        let info = ImageInfo::read(&path, Some(FormatArg::Qcow2), true)?;
        let size = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        Ok(Volume {
            key: key.to_owned(),
            uuid: Some(key.to_owned()),
            name: m.name,
            description: m.description,
            read_write: m.read_write,
            sharable: m.sharable,
            virtual_size: size(info.virtual_size),
            physical_utilisation: size(info.actual_size),
            uri: vec![uri::data_uri(&format!("{QCOW2}:{}", path.display()))],
            keys: m.keys,
        })
    }

    /// SR.ls.
    fn volumes(&self) -> Result<Vec<Volume>> {
        self.keys()?.iter().map(|k| self.volume(k)).collect()
    }

    /// Volume.create: an empty qcow2 file of at least `size` bytes (rounded up to 512).
    fn create_volume(&self, m: VolumeMeta, size: i64) -> Result<Volume> {
        let size = u64::try_from(size)
            .map_err(|_| SmapiError::Internal(format!("negative size {size}")))?;
        let size = size.div_ceil(512).saturating_mul(512);
        let key = meta::new_uuid()?;
        qcow2::create(&self.image(&key), size, &CreateOptions::default())
            .map_err(|e| SmapiError::Internal(format!("cannot create the volume: {e}")))?;
        meta::store(&self.meta_path(&key), &m)?;
        self.volume(&key)
    }

    /// Volume.set_name, set_description, set, unset.
    fn update_volume(&self, key: &str, f: &mut dyn FnMut(&mut VolumeMeta)) -> Result<()> {
        self.check_key(key)?;
        let mut m: VolumeMeta = meta::load(&self.meta_path(key))?;
        f(&mut m);
        meta::store(&self.meta_path(key), &m)
    }

    /// Volume.resize: grows the volume to at least `size` bytes; never shrinks.
    fn resize(&self, key: &str, size: i64) -> Result<()> {
        self.check_key(key)?;
        self.refuse_if_in_use(key)?;
        let size = u64::try_from(size)
            .map_err(|_| SmapiError::Internal(format!("negative size {size}")))?;
        let size = size.div_ceil(512).saturating_mul(512);
        let info = ImageInfo::read(&self.image(key), Some(FormatArg::Qcow2), false)?;
        if size <= info.virtual_size {
            return Ok(());
        }
        qcow2::resize(&self.image(key), size)
            .map_err(|e| SmapiError::Internal(format!("cannot resize {key}: {e}")))
    }

    /// Volume.snapshot (`writable` false) and Volume.clone (true).
    fn snapshot(&self, key: &str, writable: bool) -> Result<Volume> {
        self.check_key(key)?;
        self.refuse_if_in_use(key)?;
        let base = format!("{BASE_PREFIX}{}.{QCOW2}", meta::new_uuid()?);
        let image = self.image(key);
        std::fs::rename(&image, self.folder.join(&base))?;
        if let Err(e) = self.overlay(&image, &base) {
            std::fs::rename(self.folder.join(&base), &image)?;
            return Err(e);
        }
        let new_key = meta::new_uuid()?;
        self.overlay(&self.image(&new_key), &base)?;
        let mut m: VolumeMeta = meta::load(&self.meta_path(key))?;
        m.read_write = writable;
        m.keys.clear();
        meta::store(&self.meta_path(&new_key), &m)?;
        self.volume(&new_key)
    }

    /// Volume.destroy: the volume's files, then every base nothing is backed by.
    fn destroy_volume(&self, key: &str) -> Result<()> {
        self.check_key(key)?;
        self.refuse_if_in_use(key)?;
        std::fs::remove_file(self.image(key))?;
        std::fs::remove_file(self.meta_path(key))?;
        self.collect_bases()
    }

    /// SR.destroy: every volume and base, the SR's file, and the folder if it is then empty.
    fn destroy(&self) -> Result<()> {
        let keys = self.keys()?;
        for key in &keys {
            self.refuse_if_in_use(key)?;
        }
        for key in &keys {
            std::fs::remove_file(self.image(key))?;
            std::fs::remove_file(self.meta_path(key))?;
        }
        self.collect_bases()?;
        std::fs::remove_file(self.folder.join(SR_FILE))?;
        std::fs::remove_file(self.folder.join(LOCK_FILE))?;
        let _ = std::fs::remove_dir(&self.folder);
        Ok(())
    }
}
