//! The operations every kind of SR offers, and the choice of kind by the SR uri's scheme:
//! `file:///FOLDER` is a folder of qcow2 files, `thin:///POOL` a rustbk thin pool.

use std::path::PathBuf;

use super::error::{Result, SmapiError};
use super::folder::FolderSr;
use super::idl::{SrStat, Volume};
use super::meta::{SrMeta, VolumeMeta};
use super::thin::ThinSr;
use super::uri;

/// An SR that exists.
pub trait Sr {
    /// SR.stat.
    fn stat(&self) -> Result<SrStat>;
    /// SR.set_name, SR.set_description.
    fn update(&self, f: &mut dyn FnMut(&mut SrMeta)) -> Result<()>;
    /// SR.ls.
    fn volumes(&self) -> Result<Vec<Volume>>;
    /// Volume.stat.
    fn volume(&self, key: &str) -> Result<Volume>;
    /// Volume.create: at least `size` bytes.
    fn create_volume(&self, m: VolumeMeta, size: i64) -> Result<Volume>;
    /// Volume.set_name, set_description, set, unset.
    fn update_volume(&self, key: &str, f: &mut dyn FnMut(&mut VolumeMeta)) -> Result<()>;
    /// Volume.resize: grow to at least `size` bytes, never shrink.
    fn resize(&self, key: &str, size: i64) -> Result<()>;
    /// Volume.snapshot (`writable` false) and Volume.clone (true).
    fn snapshot(&self, key: &str, writable: bool) -> Result<Volume>;
    /// Volume.destroy.
    fn destroy_volume(&self, key: &str) -> Result<()>;
    /// SR.destroy: every volume, and the SR's own files.
    fn destroy(&self) -> Result<()>;
}

/// The kind and path an SR uri names.
pub enum Location {
    /// `file:///FOLDER`.
    Folder(PathBuf),
    /// `thin:///POOL`.
    Thin(PathBuf),
}

/// Parses an SR uri.
pub fn locate(sr_uri: &str) -> Result<Location> {
    match sr_uri.split_once("://") {
        Some(("file", _)) => Ok(Location::Folder(uri::sr_path(sr_uri, "file")?)),
        Some(("thin", _)) => Ok(Location::Thin(uri::sr_path(sr_uri, "thin")?)),
        _ => Err(SmapiError::SrDoesNotExist(format!(
            "{sr_uri} (expected file:///FOLDER or thin:///POOL)"
        ))),
    }
}

/// The SR at `sr_uri`.
pub fn open(sr_uri: &str) -> Result<Box<dyn Sr>> {
    Ok(match locate(sr_uri)? {
        Location::Folder(p) => Box::new(FolderSr::open(&p, sr_uri)?),
        Location::Thin(p) => Box::new(ThinSr::open(&p, sr_uri)?),
    })
}

/// SR.create: `size` makes a new thin pool of that many data bytes when `POOL` has none.
pub fn create(sr_uri: &str, m: SrMeta, size: Option<u64>) -> Result<()> {
    match locate(sr_uri)? {
        Location::Folder(p) => FolderSr::create(&p, m).map(drop),
        Location::Thin(p) => ThinSr::create(&p, m, size).map(drop),
    }
}
