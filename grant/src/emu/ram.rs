//! Emulated guest RAM: a memfd the guest maps whole and a backend maps page by page.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use std::sync::Arc;

use nix::sys::memfd::{MemFdCreateFlag, memfd_create};
use rustbk_ring::{PAGE_SIZE, SharedMemory};

use crate::Error;
use crate::sys::Region;

/// The name of every guest RAM memfd: a backend's grant mappings are the mappings of this file
/// in its `/proc/PID/maps` (`/memfd:rustbk-guest-ram (deleted)`), one page per mapped grant.
pub const GUEST_RAM_MEMFD: &std::ffi::CStr = c"rustbk-guest-ram";

/// A memfd of `pages` pages, created with `name`, its size set and sealed: under Xen a guest
/// cannot make a frame the backend has mapped go away, and a backend touching a shrunk memfd
/// would die of SIGBUS, so the size can never change again (checked by [`check_sealed`]).
pub(crate) fn new_memfd(name: &std::ffi::CStr, pages: u32) -> Result<OwnedFd, Error> {
    let flags = MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING;
    let fd = memfd_create(name, flags).map_err(Error::sys("memfd_create"))?;
    let len = u64::from(pages) * PAGE_SIZE as u64;
    let len = libc::off_t::try_from(len).map_err(|_| Error::BadMapSize(pages as usize))?;
    nix::unistd::ftruncate(&fd, len).map_err(Error::sys("ftruncate memfd"))?;
    let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
    fcntl(fd.as_raw_fd(), FcntlArg::F_ADD_SEALS(seals)).map_err(Error::sys("seal memfd"))?;
    Ok(fd)
}

/// Refuses a guest's memfd whose size may still change (the backend maps it and must not be
/// able to fault on it).
pub(crate) fn check_sealed(fd: &OwnedFd, what: &str) -> Result<(), Error> {
    let seals = fcntl(fd.as_raw_fd(), FcntlArg::F_GET_SEALS).map_err(Error::sys("get seals"))?;
    let needed = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_SEAL;
    if SealFlag::from_bits_truncate(seals).contains(needed) {
        return Ok(());
    }
    Err(Error::Protocol(format!(
        "the guest's {what} may still shrink (seals {seals:#x})"
    )))
}

/// The guest's own view of its RAM.
#[derive(Debug)]
pub struct GuestRam {
    fd: OwnedFd,
    region: Region,
    pages: u32,
}

impl GuestRam {
    pub(crate) fn create(pages: u32) -> Result<GuestRam, Error> {
        let fd = new_memfd(GUEST_RAM_MEMFD, pages)?;
        let region = Region::map_shared(&fd, 0, pages as usize * PAGE_SIZE, true)?;
        Ok(GuestRam { fd, region, pages })
    }

    /// Number of pages.
    pub fn pages(&self) -> u32 {
        self.pages
    }

    /// Copies bytes out of guest physical address `addr`.
    pub fn read(&self, addr: u64, out: &mut [u8]) -> Result<(), Error> {
        self.region.read(to_offset(addr)?, out)
    }

    /// Copies bytes into guest physical address `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<(), Error> {
        self.region.write(to_offset(addr)?, data)
    }

    /// A view of `count` pages starting at `frame`, usable as shared-ring memory.
    pub fn pages_view(self: &Arc<Self>, frame: u32, count: u32) -> Result<RamView, Error> {
        let offset = frame as usize * PAGE_SIZE;
        let len = count as usize * PAGE_SIZE;
        self.region.check(offset, len)?;
        Ok(RamView {
            ram: Arc::clone(self),
            offset,
            len,
        })
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn to_offset(addr: u64) -> Result<usize, Error> {
    usize::try_from(addr).map_err(|_| Error::BadMapSize(0))
}

/// A page range of guest RAM seen by the guest itself (its ring pages).
#[derive(Debug)]
pub struct RamView {
    ram: Arc<GuestRam>,
    offset: usize,
    len: usize,
}

#[allow(unsafe_code)]
// SAFETY: the range lies inside the RAM mapping (checked in `pages_view`), which stays mapped
// read-write and in place while the Arc<GuestRam> held here lives.
unsafe impl SharedMemory for RamView {
    fn as_ptr(&self) -> *mut u8 {
        self.ram.region.as_ptr().wrapping_add(self.offset)
    }

    fn len(&self) -> usize {
        self.len
    }
}
