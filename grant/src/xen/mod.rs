//! The real Xen platform: grants mapped through `/dev/xen/gntdev`, event channels bound through
//! `/dev/xen/evtchn` (Linux's `xen-gntdev` and `xen-evtchn` drivers, in dom0 or a driver domain).
//!
//! One gntdev descriptor per [`XenPlatform`] serves every guest; each mapping is one
//! `IOCTL_GNTDEV_MAP_GRANT_REF` plus one `mmap`, undone by `munmap` then
//! `IOCTL_GNTDEV_UNMAP_GRANT_REF`. Each bound event channel has its own evtchn descriptor, so
//! polling that descriptor means exactly that channel.

#![forbid(unsafe_code)]

mod copy;
mod evtchn;
mod gntdev;

use std::fs::{File, OpenOptions};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use crate::copy::{CopyBuf, CopySegment};
pub use gntdev::UnmapNotify;

use crate::{DomId, Error, GuestHandle, Platform};

/// Where Linux puts the grant-device node.
pub const GNTDEV_PATH: &str = "/dev/xen/gntdev";
/// Where Linux puts the event-channel device node.
pub const EVTCHN_PATH: &str = "/dev/xen/evtchn";
/// Most pages one map call may cover (a maximal indirect request, or a large ring).
pub const MAX_MAP_PAGES: usize = 4096;

/// Reaches guests through the real hypervisor.
#[derive(Clone, Debug)]
pub struct XenPlatform {
    local: DomId,
    gntdev: Arc<OwnedFd>,
    evtchn: Arc<PathBuf>,
}

impl XenPlatform {
    /// Opens `/dev/xen/gntdev` (and checks `/dev/xen/evtchn`) for a backend running as `local`.
    pub fn new(local: DomId) -> Result<XenPlatform, Error> {
        Self::with_devices(local, Path::new(GNTDEV_PATH), Path::new(EVTCHN_PATH))
    }

    /// Like [`XenPlatform::new`] with other device nodes (tests, unusual device layouts).
    pub fn with_devices(local: DomId, gntdev: &Path, evtchn: &Path) -> Result<XenPlatform, Error> {
        let gntdev_fd = open_device(gntdev, "xen-gntdev", false)?;
        if !evtchn.exists() {
            return Err(missing(evtchn, "xen-evtchn"));
        }
        tracing::debug!(local = local.0, gntdev = %gntdev.display(), "opened Xen platform");
        Ok(XenPlatform {
            local,
            gntdev: Arc::new(gntdev_fd.into()),
            evtchn: Arc::new(evtchn.to_path_buf()),
        })
    }
}

impl Platform for XenPlatform {
    fn local_domid(&self) -> DomId {
        self.local
    }

    fn attach(&self, domid: DomId) -> Result<Arc<dyn GuestHandle>, Error> {
        Ok(Arc::new(gntdev::XenGuest::new(
            domid,
            Arc::clone(&self.gntdev),
            Arc::clone(&self.evtchn),
        )))
    }
}

/// Every uapi structure size, field offset, flag and ioctl number this module uses, keyed by
/// the C expression over `<xen/gntdev.h>` / `<xen/evtchn.h>` that must have the same value.
#[doc(hidden)]
pub fn abi_facts() -> Vec<(&'static str, u64)> {
    crate::sys::abi_facts()
}

fn missing(path: &Path, driver: &'static str) -> Error {
    Error::DeviceMissing {
        path: path.display().to_string(),
        driver,
    }
}

/// Opens a device node read-write, close-on-exec (std's default), optionally non-blocking.
fn open_device(path: &Path, driver: &'static str, nonblock: bool) -> Result<File, Error> {
    let flags = if nonblock { libc::O_NONBLOCK } else { 0 };
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(flags | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => missing(path, driver),
            _ => Error::Io {
                what: format!("open {}", path.display()),
                source: e,
            },
        })
}

#[cfg(test)]
mod tests;
