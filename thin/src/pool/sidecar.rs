//! rustbk's own records of a pool's volumes, which dm-thin's metadata has no room for: size,
//! name and external origin, as JSON. They live in two slot files next to the metadata,
//! written in turn (see [`slots`]), so that replacing them costs one fdatasync.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub(crate) mod slots;

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

/// The base path of the records of the metadata at `metadata`: `<metadata>.volumes`, whose
/// two slots are `<base>.0` and `<base>.1` (see [`slots`]).
pub fn path_for(metadata: &Path) -> PathBuf {
    let mut name = metadata.as_os_str().to_owned();
    name.push(".volumes");
    PathBuf::from(name)
}

/// The records kept at `base`; none if there are none (a pool made by other tools). Records
/// of an older rustbk, a single `<base>.json`, are read when no slot exists.
pub fn load(base: &Path) -> Result<Option<BTreeMap<u64, VolumeRecord>>> {
    let slots = slots::load(base).map_err(Error::io)?;
    let body = match (slots.best, read_legacy(&legacy_path(base))?) {
        (Some(body), _) | (None, Some(body)) => body,
        (None, None) if slots.damaged => {
            return Err(Error::corrupt(format!(
                "{}: no slot holds valid volume records",
                base.display()
            )));
        }
        (None, None) => return Ok(None),
    };
    let parsed: SidecarFile = serde_json::from_slice(&body)
        .map_err(|e| Error::corrupt(format!("{}: {e}", base.display())))?;
    Ok(Some(parsed.volumes))
}

/// Makes `volumes` the records at `base`, durably, in the older of the two slots.
pub fn store(base: &Path, volumes: &BTreeMap<u64, VolumeRecord>) -> Result<()> {
    let body = serde_json::to_vec(&SidecarFile {
        volumes: volumes.clone(),
    })
    .map_err(|e| Error::InvalidArgument(format!("volume records: {e}")))?;
    if body.len() as u64 > MAX_SIDECAR_BYTES {
        return Err(Error::InvalidArgument(format!(
            "volume records of {} bytes",
            body.len()
        )));
    }
    slots::store(base, &body).map_err(Error::io)?;
    // An older rustbk's file is stale from now on (the slots are read first anyway).
    match std::fs::remove_file(legacy_path(base)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(e)),
        _ => Ok(()),
    }
}

/// Removes the records at `base` (both slots and an older rustbk's file), as if the pool had
/// been made by other tools.
pub fn remove(base: &Path) -> Result<()> {
    let mut paths = slots::paths(base).to_vec();
    paths.push(legacy_path(base));
    for path in paths {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(e)),
            _ => {}
        }
    }
    Ok(())
}

fn legacy_path(base: &Path) -> PathBuf {
    let mut name = base.as_os_str().to_owned();
    name.push(".json");
    PathBuf::from(name)
}

fn read_legacy(path: &Path) -> Result<Option<Vec<u8>>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(e)),
    };
    let len = file.metadata().map_err(Error::io)?.len();
    if len > MAX_SIDECAR_BYTES {
        return Err(Error::corrupt(format!(
            "{} is {len} bytes, more than a volume list can be",
            path.display()
        )));
    }
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut std::io::BufReader::new(file), &mut body).map_err(Error::io)?;
    Ok(Some(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_rustbks_records_are_read_and_replaced_by_the_slots() {
        let dir = tempfile::tempdir().unwrap();
        let base = path_for(&dir.path().join("metadata"));
        std::fs::write(
            legacy_path(&base),
            br#"{"volumes": {"3": {"size": 4096, "name": "old"}}}"#,
        )
        .unwrap();
        let loaded = load(&base).unwrap().unwrap();
        assert_eq!(loaded[&3].name, "old");
        let mut records = loaded.clone();
        records.get_mut(&3).unwrap().size = 8192;
        store(&base, &records).unwrap();
        assert!(!legacy_path(&base).exists());
        assert_eq!(load(&base).unwrap().unwrap()[&3].size, 8192);
    }

    #[test]
    fn records_only_in_damaged_slots_are_an_error_not_an_empty_list() {
        let dir = tempfile::tempdir().unwrap();
        let base = path_for(&dir.path().join("metadata"));
        assert!(load(&base).unwrap().is_none(), "nothing there: no records");
        std::fs::write(&slots::paths(&base)[0], b"RBKVOLS1 and then garbage...").unwrap();
        let e = load(&base).unwrap_err();
        assert!(e.to_string().contains("no slot"), "{e}");
    }
}
