//! Where each ring's request journal lives: a file in the daemon's lock folder, so that a worker
//! restarted after SIGKILL finds what the killed one consumed (see `rustbk_ring::journal`).
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

/// The journal file of the device's ring (rustbk offers one ring per device: ring 0).
pub(super) fn journal_path(dir: &Path, spec: &DeviceSpec) -> PathBuf {
    dir.join(format!("journal-{}-{}-0", spec.domid.0, spec.devid))
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
    let path = journal_path(dir, spec);
    let len = journal_bytes(fr.abi, fr.order);
    let mem = if reattach {
        FileMemory::open(&path, len)?
    } else {
        FileMemory::create(&path, len)?
    };
    Ok(mem)
}

/// Removes the device's journal once its ring is closed for good; a failure is only logged.
pub(super) fn remove_journal(dir: &Path, spec: &DeviceSpec) {
    let path = journal_path(dir, spec);
    if let Err(e) = file::remove(&path) {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove the request journal");
    }
}
