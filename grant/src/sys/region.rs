use std::num::NonZeroUsize;
use std::os::fd::AsFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};

use nix::sys::mman::{MapFlags, ProtFlags, mmap, mmap_anonymous, munmap};

use crate::Error;

/// An mmap'ed region owned by this process, unmapped on drop.
///
/// The memory may be shared with another domain that writes it concurrently, so no Rust
/// reference to its bytes is ever formed: all access is by raw copies or atomics.
#[derive(Debug)]
pub(crate) struct Region {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the region is plain memory owned by this object; nothing in it is tied to a thread,
// and every access goes through raw copies or atomics.
unsafe impl Send for Region {}
// SAFETY: as above; concurrent access from several threads is by atomics or raw copies only.
unsafe impl Sync for Region {}

fn nonzero(len: usize) -> Result<NonZeroUsize, Error> {
    NonZeroUsize::new(len).ok_or(Error::BadMapSize(0))
}

impl Region {
    /// Reserves `len` bytes of address space with no access, to be filled by `map_fixed`.
    pub(crate) fn reserve(len: usize) -> Result<Region, Error> {
        let flags = MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE;
        // SAFETY: a fresh anonymous mapping at an address the kernel chooses cannot alias any
        // existing memory.
        let ptr = unsafe { mmap_anonymous(None, nonzero(len)?, ProtFlags::PROT_NONE, flags) }
            .map_err(Error::sys("mmap reserve"))?;
        Ok(Region {
            ptr: ptr.cast(),
            len,
        })
    }

    /// Maps `len` bytes of `fd` at `file_offset`, shared, at an address the kernel chooses.
    pub(crate) fn map_shared(
        fd: impl AsFd,
        file_offset: u64,
        len: usize,
        writable: bool,
    ) -> Result<Region, Error> {
        let off = libc::off_t::try_from(file_offset).map_err(|_| Error::BadMapSize(len))?;
        // SAFETY: a new shared mapping at an address the kernel chooses aliases no Rust object;
        // the result is owned by the returned Region and unmapped exactly once on drop.
        let ptr = unsafe {
            mmap(
                None,
                nonzero(len)?,
                prot(writable),
                MapFlags::MAP_SHARED,
                fd,
                off,
            )
        }
        .map_err(Error::sys("mmap shared"))?;
        Ok(Region {
            ptr: ptr.cast(),
            len,
        })
    }

    /// Replaces the page-aligned part `[offset, offset + len)` of this region with a shared
    /// mapping of `fd` at `file_offset`.
    pub(crate) fn map_fixed(
        &mut self,
        offset: usize,
        len: usize,
        fd: impl AsFd,
        file_offset: u64,
        writable: bool,
    ) -> Result<(), Error> {
        self.check(offset, len)?;
        let off = libc::off_t::try_from(file_offset).map_err(|_| Error::BadMapSize(len))?;
        let addr =
            NonZeroUsize::new(self.ptr.as_ptr() as usize + offset).ok_or(Error::BadMapSize(0))?;
        let flags = MapFlags::MAP_SHARED | MapFlags::MAP_FIXED;
        // SAFETY: the target range lies inside this region (checked above), which this object
        // owns exclusively, so MAP_FIXED replaces only our own reservation.
        unsafe { mmap(Some(addr), nonzero(len)?, prot(writable), flags, fd, off) }
            .map_err(Error::sys("mmap fixed"))?;
        Ok(())
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Fails unless `[offset, offset + len)` lies inside the region.
    pub(crate) fn check(&self, offset: usize, len: usize) -> Result<(), Error> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(Error::OutOfBounds {
                offset,
                len,
                size: self.len,
            }),
        }
    }

    /// Copies bytes out of the region into private memory.
    pub(crate) fn read(&self, offset: usize, out: &mut [u8]) -> Result<(), Error> {
        self.check(offset, out.len())?;
        // SAFETY: the source range is inside the mapping (checked), the destination is a
        // private buffer that cannot overlap it; the bytes may change under us, which only
        // means we copy whatever the other domain left there.
        unsafe {
            std::ptr::copy_nonoverlapping(self.as_ptr().add(offset), out.as_mut_ptr(), out.len())
        };
        Ok(())
    }

    /// Copies private bytes into the region (which must be mapped writable).
    pub(crate) fn write(&self, offset: usize, data: &[u8]) -> Result<(), Error> {
        self.check(offset, data.len())?;
        // SAFETY: the destination range is inside the mapping (checked) and the callers only
        // write regions they mapped writable; the source is private memory.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.as_ptr().add(offset), data.len())
        };
        Ok(())
    }

    /// The 16-bit word at `offset` (must be 2-aligned) as an atomic.
    pub(crate) fn atomic_u16(&self, offset: usize) -> Result<&AtomicU16, Error> {
        self.check_aligned(offset, 2)?;
        // SAFETY: in bounds and aligned (checked); AtomicU16 has the layout of u16 and all
        // accesses to shared words go through atomics.
        Ok(unsafe { &*self.as_ptr().add(offset).cast::<AtomicU16>() })
    }

    /// The 32-bit word at `offset` (must be 4-aligned) as an atomic.
    pub(crate) fn atomic_u32(&self, offset: usize) -> Result<&AtomicU32, Error> {
        self.check_aligned(offset, 4)?;
        // SAFETY: in bounds and aligned (checked); AtomicU32 has the layout of u32 and all
        // accesses to shared words go through atomics.
        Ok(unsafe { &*self.as_ptr().add(offset).cast::<AtomicU32>() })
    }

    fn check_aligned(&self, offset: usize, size: usize) -> Result<(), Error> {
        self.check(offset, size)?;
        if (self.as_ptr() as usize + offset) % size != 0 {
            return Err(Error::OutOfBounds {
                offset,
                len: size,
                size: self.len,
            });
        }
        Ok(())
    }

    /// Stores a 16-bit value with release ordering (used for grant flags).
    pub(crate) fn store_u16(&self, offset: usize, v: u16) -> Result<(), Error> {
        self.atomic_u16(offset)?.store(v, Ordering::Release);
        Ok(())
    }
}

fn prot(writable: bool) -> ProtFlags {
    if writable {
        ProtFlags::PROT_READ | ProtFlags::PROT_WRITE
    } else {
        ProtFlags::PROT_READ
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the region was mapped by this object with this length and is unmapped once;
        // no references into it outlive the object (none are ever formed).
        if let Err(e) = unsafe { munmap(self.ptr.cast(), self.len) } {
            tracing::error!(error = %e, len = self.len, "munmap failed");
        }
    }
}
