//! What a folder SR stores beside its qcow2 files: `.rustbk-sr.json` (the SR's uuid, name and
//! description) and `KEY.json` per volume (name, description, flags and the caller's keys).
//! Files are replaced by rename, so a reader sees the old or the new one whole.

use std::collections::BTreeMap;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::{Result, SmapiError};

/// The SR's own file in its folder.
pub const SR_FILE: &str = ".rustbk-sr.json";

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
