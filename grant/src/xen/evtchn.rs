//! Event channels through `/dev/xen/evtchn`, one descriptor per bound channel.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use nix::errno::Errno;

use super::open_device;
use crate::sys;
use crate::{DomId, Error, EventChannel, Port};

/// Size of one pending-port record read from (or written to) the device.
const PORT_BYTES: usize = 4;
/// How many pending records one read collects.
const READ_BATCH: usize = 16;

/// An interdomain channel bound on its own evtchn descriptor; unbound when dropped.
#[derive(Debug)]
pub(super) struct XenEventChannel {
    file: File,
    local: Port,
}

impl XenEventChannel {
    /// Binds the guest `domid`'s unbound port `remote` on a fresh evtchn descriptor.
    pub(super) fn bind(path: &Path, domid: DomId, remote: Port) -> Result<Self, Error> {
        let file = open_device(path, "xen-evtchn", true)?;
        let local = sys::evtchn_bind_interdomain(file.as_fd(), domid.0, remote.0)
            .map_err(Error::sys("evtchn bind interdomain"))?;
        tracing::debug!(
            domid = domid.0,
            remote = remote.0,
            local,
            "bound event channel"
        );
        Ok(XenEventChannel {
            file,
            local: Port(local),
        })
    }

    /// Reads pending records until none are left; true if there were any.
    fn drain(&self) -> Result<bool, Error> {
        let mut pending = false;
        let mut buf = [0u8; PORT_BYTES * READ_BATCH];
        loop {
            match nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(&self.file), &mut buf) {
                Ok(0) | Err(Errno::EAGAIN) => return Ok(pending),
                Ok(n) => {
                    pending = true;
                    if n < buf.len() {
                        return Ok(true);
                    }
                }
                Err(Errno::EINTR) => {}
                Err(e) => return Err(Error::sys("evtchn read")(e)),
            }
        }
    }
}

impl EventChannel for XenEventChannel {
    fn local_port(&self) -> Port {
        self.local
    }

    fn notify(&self) -> Result<(), Error> {
        sys::evtchn_notify(self.file.as_fd(), self.local.0).map_err(Error::sys("evtchn notify"))
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    fn ack(&self) -> Result<bool, Error> {
        if !self.drain()? {
            return Ok(false);
        }
        // Writing the port back unmasks it (the driver masks a port when it fires).
        nix::unistd::write(&self.file, &self.local.0.to_ne_bytes())
            .map_err(Error::sys("evtchn unmask"))?;
        Ok(true)
    }
}

impl Drop for XenEventChannel {
    fn drop(&mut self) {
        if let Err(e) = sys::evtchn_unbind(self.file.as_fd(), self.local.0) {
            tracing::error!(error = %e, port = self.local.0, "evtchn unbind failed");
        }
    }
}
