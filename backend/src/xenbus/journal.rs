//! Where each ring's request journal lives: a file per ring (queue) in the daemon's lock
//! folder, so that a worker restarted after SIGKILL finds what the killed one consumed (see
//! `rustbk_ring::journal`).
//!
//! Every connect that follows InitWait starts a fresh journal, and only a worker that finds the
//! device Connected with a live frontend keeps it. A frontend publishes a new ring only after it
//! saw InitWait, so a kept journal belongs to the ring being reattached. A frontend that breaks
//! that rule can only have its own earlier requests, on its own disk and grants, served again:
//! nothing a guest could not ask for anyway.

use std::path::{Path, PathBuf};

use rustbk_grant::{FileMemory, file};
use rustbk_ring::journal_bytes;

use super::connect::FrontendRing;
use super::device::DeviceSpec;
use crate::Error;

/// The journal file of ring (queue) `queue` of the device.
pub(super) fn journal_path(dir: &Path, spec: &DeviceSpec, queue: u32) -> PathBuf {
    dir.join(format!("{}{queue}", journal_prefix(spec)))
}

fn journal_prefix(spec: &DeviceSpec) -> String {
    format!("journal-{}-{}-", spec.domid.0, spec.devid)
}

/// Maps the journal for the ring `fr`: as the previous worker left it when `reattach`, else
/// zeroed (a fresh ring has no request consumed yet).
pub(super) fn open_journal(
    dir: &Path,
    spec: &DeviceSpec,
    fr: &FrontendRing,
    reattach: bool,
) -> Result<FileMemory, Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::Journal {
        path: dir.to_owned(),
        source: e,
    })?;
    let path = journal_path(dir, spec, fr.queue);
    let len = journal_bytes(fr.abi, fr.order);
    let mem = if reattach {
        FileMemory::open(&path, len)?
    } else {
        FileMemory::create(&path, len)?
    };
    Ok(mem)
}

/// Removes the journals of every ring of the device once they are closed for good; failures
/// are only logged.
pub(super) fn remove_journals(dir: &Path, spec: &DeviceSpec) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = journal_prefix(spec);
    for entry in entries.flatten() {
        let name = entry.file_name();
        let queue = name.to_str().and_then(|n| n.strip_prefix(&prefix));
        if queue.is_none_or(|q| q.is_empty() || !q.bytes().all(|b| b.is_ascii_digit())) {
            continue;
        }
        let path = entry.path();
        if let Err(e) = file::remove(&path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove the request journal");
        }
    }
}
