//! rustbk's own records of a pool's volumes, which dm-thin's metadata has no room for: size,
//! name and external origin. They live in `<metadata>.volumes.json`, replaced atomically
//! (written to a temporary file, synced, renamed over the old one, directory synced).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The largest sidecar file read (a hostile or damaged file is refused, not loaded).
const MAX_SIDECAR_BYTES: u64 = 64 << 20;

/// What rustbk records about one volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    /// Volume size in bytes.
    pub size: u64,
    /// A name for people; not unique.
    #[serde(default)]
    pub name: String,
    /// The read-only external origin under the volume, if any.
    #[serde(default)]
    pub origin: Option<Origin>,
}

/// A read-only image whose data an unprovisioned block of a volume reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The image file.
    pub path: PathBuf,
    /// Its format name: `raw` or `qcow2`.
    pub format: String,
}

#[derive(Serialize, Deserialize)]
struct SidecarFile {
    volumes: BTreeMap<u64, VolumeRecord>,
}

/// The sidecar's path for the metadata at `metadata`.
pub fn path_for(metadata: &Path) -> PathBuf {
    let mut name = metadata.as_os_str().to_owned();
    name.push(".volumes.json");
    PathBuf::from(name)
}

/// The records in `path`; none if the file does not exist (a pool made by other tools).
pub fn load(path: &Path) -> Result<Option<BTreeMap<u64, VolumeRecord>>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(e)),
    };
    let len = file.metadata().map_err(io_error)?.len();
    if len > MAX_SIDECAR_BYTES {
        return Err(Error::corrupt(format!(
            "{} is {len} bytes, more than a volume list can be",
            path.display()
        )));
    }
    let parsed: SidecarFile = serde_json::from_reader(std::io::BufReader::new(file))
        .map_err(|e| Error::corrupt(format!("{}: {e}", path.display())))?;
    Ok(Some(parsed.volumes))
}

/// Replaces `path` with `volumes`, atomically and durably.
pub fn store(path: &Path, volumes: &BTreeMap<u64, VolumeRecord>) -> Result<()> {
    let body = serde_json::to_vec_pretty(&SidecarFile {
        volumes: volumes.clone(),
    })
    .map_err(|e| Error::InvalidArgument(format!("volume records: {e}")))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = std::fs::File::create(&tmp).map_err(io_error)?;
    file.write_all(&body).map_err(io_error)?;
    file.sync_all().map_err(io_error)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io_error)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error)
}

fn io_error(e: std::io::Error) -> Error {
    Error::Io(rustbk_formats::Error::Io(e))
}
