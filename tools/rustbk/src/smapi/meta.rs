//! What a folder SR stores beside its qcow2 files: `.rustbk-sr.json` (the SR's uuid, name and
//! description) and `KEY.json` per volume (name, description, flags and the caller's keys).
//! Files are replaced by rename, so a reader sees the old or the new one whole.

use std::collections::BTreeMap;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::{Result, SmapiError};

/// The SR's own file in its folder.
pub const SR_FILE: &str = ".rustbk-sr.json";

/// The file whose lock serialises the calls on an SR: xapi-storage-script may run several
/// plugin processes at once, and a snapshot moves files other calls read.
pub const LOCK_FILE: &str = ".rustbk-sr.lock";

/// Waits for and takes the SR's exclusive lock, held until the returned value is dropped.
pub fn lock_sr(dir: &Path) -> Result<Flock<std::fs::File>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))?;
    Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| SmapiError::Internal(format!("cannot lock the SR: {e}")))
}

/// The SR's stored properties.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SrMeta {
    /// The uuid SR.create was given.
    pub uuid: Option<String>,
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
}

/// A volume's stored properties.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VolumeMeta {
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// False for snapshots.
    pub read_write: bool,
    /// As Volume.create was asked.
    pub sharable: bool,
    /// The caller's key/value pairs (Volume.set).
    #[serde(default)]
    pub keys: BTreeMap<String, String>,
}

/// Reads a JSON file.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read(path)
        .map_err(|e| SmapiError::Internal(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_slice(&text)
        .map_err(|e| SmapiError::Internal(format!("bad metadata in {}: {e}", path.display())))
}

/// Writes a JSON file through a temporary file and a rename.
pub fn store<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let text = serde_json::to_vec_pretty(value)?;
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// A fresh random uuid from the kernel, used as a volume key.
pub fn new_uuid() -> Result<String> {
    let text = std::fs::read_to_string("/proc/sys/kernel/random/uuid")?;
    Ok(text.trim().to_owned())
}

/// Whether `key` could be a volume key of a folder SR: a uuid's characters only, so a key can
/// never name a path outside the folder.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= 64 && key.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// The lock of the SR in `dir`, taken only if the SR exists before and after the wait (an
/// SR.destroy may have run meanwhile).
pub fn lock_existing(dir: &Path, sr_uri: &str) -> Result<Flock<std::fs::File>> {
    let missing = || SmapiError::SrDoesNotExist(sr_uri.to_owned());
    if !dir.join(SR_FILE).is_file() {
        return Err(missing());
    }
    let lock = lock_sr(dir)?;
    match dir.join(SR_FILE).is_file() {
        true => Ok(lock),
        false => Err(missing()),
    }
}
