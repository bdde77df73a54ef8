//! eventfd: the emulated event channel's doorbell.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::eventfd::{EfdFlags, EventFd as NixEventFd};

use crate::Error;

/// A non-blocking eventfd used as a one-way doorbell.
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    /// A new eventfd, non-blocking and close-on-exec.
    pub fn new() -> Result<Self, Error> {
        let fd = NixEventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
            .map_err(Error::sys("eventfd"))?;
        Ok(EventFd(fd.into()))
    }

    /// Wraps a descriptor received from elsewhere (must be a non-blocking eventfd).
    pub fn from_owned(fd: OwnedFd) -> Self {
        EventFd(fd)
    }

    /// Rings the doorbell.
    pub fn signal(&self) -> Result<(), Error> {
        match nix::unistd::write(&self.0, &1u64.to_ne_bytes()) {
            Ok(_) | Err(Errno::EAGAIN) => Ok(()),
            Err(e) => Err(Error::Sys {
                what: "eventfd write",
                source: e,
            }),
        }
    }

    /// Clears the doorbell; true if it had rung.
    pub fn drain(&self) -> Result<bool, Error> {
        let mut buf = [0u8; 8];
        match nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(&self.0), &mut buf) {
            Ok(_) => Ok(true),
            Err(Errno::EAGAIN) => Ok(false),
            Err(e) => Err(Error::Sys {
                what: "eventfd read",
                source: e,
            }),
        }
    }

    /// Duplicates the descriptor (to send it to another process).
    pub fn try_clone(&self) -> Result<OwnedFd, Error> {
        self.0.try_clone().map_err(Error::io("dup eventfd"))
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}
