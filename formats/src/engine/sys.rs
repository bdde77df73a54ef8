//! System calls over raw I/O memory (the synchronous driver) and block-device ioctls.
//! One of the three modules allowed to use `unsafe`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use crate::buffer::IoVec;

use super::file::{DioAlign, EngineFile};
use super::prep::{LiveIovecs, Request};

const _: () = assert!(std::mem::size_of::<IoVec>() == std::mem::size_of::<libc::iovec>());
const _: () = assert!(std::mem::align_of::<IoVec>() == std::mem::align_of::<libc::iovec>());

nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
nix::ioctl_read_bad!(blksszget, libc::BLKSSZGET, libc::c_int);
nix::ioctl_read_bad!(blkpbszget, libc::BLKPBSZGET, libc::c_uint);
nix::ioctl_read_bad!(blkroget, nix::request_code_none!(0x12, 94), libc::c_int);
nix::ioctl_write_ptr_bad!(blkdiscard, nix::request_code_none!(0x12, 119), [u64; 2]);

/// Executes one request synchronously; returns bytes transferred or a negative errno.
pub(crate) fn execute(file: &EngineFile, req: &Request<'_>) -> i64 {
    match req {
        Request::Read {
            which,
            offset,
            iovs,
            ..
        } => preadv(file.fd(*which), *iovs, *offset),
        Request::Write {
            which,
            offset,
            iovs,
            ..
        } => pwritev(file.fd(*which), *iovs, *offset),
        Request::Sync => status(nix::unistd::fdatasync(
            file.fd(super::prep::Which::Buffered).as_raw_fd(),
        )),
        Request::Fallocate { mode, offset, len } => fallocate(file, *mode, *offset, *len),
        Request::BlkDiscard { offset, len } => status(
            blk_discard(file.fd(super::prep::Which::Buffered), *offset, *len).map_err(errno_of),
        ),
    }
}

fn status(r: nix::Result<()>) -> i64 {
    match r {
        Ok(()) => 0,
        Err(e) => -i64::from(e as i32),
    }
}

fn errno_of(e: io::Error) -> nix::errno::Errno {
    nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

fn fallocate(file: &EngineFile, mode: i32, offset: u64, len: u64) -> i64 {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return -i64::from(libc::EINVAL);
    };
    let flags = nix::fcntl::FallocateFlags::from_bits_retain(mode);
    let fd = file.fd(super::prep::Which::Buffered).as_raw_fd();
    status(nix::fcntl::fallocate(fd, flags, offset, len))
}

fn syscall_result(n: isize) -> i64 {
    if n < 0 {
        -i64::from(
            io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        )
    } else {
        n as i64
    }
}

fn preadv(fd: BorrowedFd<'_>, iovs: LiveIovecs<'_>, offset: u64) -> i64 {
    let (Ok(count), Ok(offset)) = (
        libc::c_int::try_from(iovs.as_slice().len()),
        libc::off_t::try_from(offset),
    ) else {
        return -i64::from(libc::EINVAL);
    };
    let ptr = iovs.as_slice().as_ptr().cast::<libc::iovec>();
    // IoVec has libc::iovec's layout (asserted above); LiveIovecs name memory kept alive and
    // writable by their Prepared op, which the caller borrows for this call.
    // SAFETY: so the kernel writes only live memory that no Rust reference covers.
    let n = unsafe { libc::preadv(fd.as_raw_fd(), ptr, count, offset) };
    syscall_result(n)
}

fn pwritev(fd: BorrowedFd<'_>, iovs: LiveIovecs<'_>, offset: u64) -> i64 {
    let (Ok(count), Ok(offset)) = (
        libc::c_int::try_from(iovs.as_slice().len()),
        libc::off_t::try_from(offset),
    ) else {
        return -i64::from(libc::EINVAL);
    };
    let ptr = iovs.as_slice().as_ptr().cast::<libc::iovec>();
    // SAFETY: as in preadv; the kernel only reads the memory.
    let n = unsafe { libc::pwritev(fd.as_raw_fd(), ptr, count, offset) };
    syscall_result(n)
}

/// Reads into `buf` at `offset` only what the page cache holds, without waiting for the
/// device (`preadv2` with `RWF_NOWAIT`): `None` if that would block (EAGAIN), else how many
/// bytes were read (fewer than asked at the end of the file or of what is cached).
pub(crate) fn pread_cached(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    offset: u64,
) -> io::Result<Option<usize>> {
    let offset =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: the one iovec names `buf`, which this call borrows mutably, so the kernel
    // writes only memory no other reference covers, and at most `buf.len()` bytes of it.
    let n = unsafe { libc::preadv2(fd.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
    match usize::try_from(n) {
        Ok(got) => Ok(Some(got)),
        Err(_) => match io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::EAGAIN) => Ok(None),
            // Kernels or file systems without RWF_NOWAIT for buffered reads.
            e if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(None),
            e => Err(e),
        },
    }
}

/// Size of a block device in bytes.
pub(crate) fn blk_size(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut size = 0u64;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points to a live local.
    unsafe { blkgetsize64(fd.as_raw_fd(), &mut size) }?;
    Ok(size)
}

/// Logical block size of a block device.
pub(crate) fn blk_logical_block_size(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer, which points to a live local.
    unsafe { blksszget(fd.as_raw_fd(), &mut size) }?;
    u32::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Physical block size of a block device.
pub(crate) fn blk_physical_block_size(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut size: libc::c_uint = 0;
    // SAFETY: BLKPBSZGET writes one unsigned int through the pointer, which points to a live local.
    unsafe { blkpbszget(fd.as_raw_fd(), &mut size) }?;
    Ok(size)
}

/// True if the block device is read-only.
pub(crate) fn blk_read_only(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut ro: libc::c_int = 0;
    // SAFETY: BLKROGET writes one int through the pointer, which points to a live local.
    unsafe { blkroget(fd.as_raw_fd(), &mut ro) }?;
    Ok(ro != 0)
}

/// Discards `len` bytes at `offset` of a block device.
pub(crate) fn blk_discard(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    let range = [offset, len];
    // SAFETY: BLKDISCARD reads two u64 through the pointer, which points to a live local array.
    unsafe { blkdiscard(fd.as_raw_fd(), &range) }?;
    Ok(())
}

/// O_DIRECT alignment reported by statx(STATX_DIOALIGN), if the kernel and file system report it.
pub(crate) fn dio_align(fd: BorrowedFd<'_>) -> Option<DioAlign> {
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    let flags = libc::AT_EMPTY_PATH | libc::AT_STATX_SYNC_AS_STAT;
    // SAFETY: the path is a NUL-terminated empty string (AT_EMPTY_PATH: stat `fd` itself) and
    // the kernel writes at most one struct statx into the buffer, which is that large.
    let rc = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags,
            libc::STATX_DIOALIGN,
            stx.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return None;
    }
    // SAFETY: the buffer was zero-initialised and every field of statx is an integer, so any
    // bit pattern (partly filled by the kernel or not) is a valid value.
    let stx = unsafe { stx.assume_init() };
    if stx.stx_mask & libc::STATX_DIOALIGN == 0
        || stx.stx_dio_mem_align == 0
        || stx.stx_dio_offset_align == 0
    {
        return None;
    }
    Some(DioAlign {
        memory: stx.stx_dio_mem_align,
        offset: stx.stx_dio_offset_align,
    })
}

/// One page of a file, mapped private and writable (a write would copy it, never reach the
/// file): file-backed memory to ask the kernel about, unmapped on drop.
pub(crate) struct FilePage {
    addr: std::ptr::NonNull<libc::c_void>,
    len: usize,
}

impl FilePage {
    /// The first page of `file` (past the file's end the kernel cannot pin it).
    pub(crate) fn map(file: BorrowedFd<'_>) -> io::Result<FilePage> {
        let len = 4096;
        // SAFETY: a new mapping at an address the kernel chooses overlaps no memory of ours;
        // `file` is open, and a private mapping never writes to it.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        match std::ptr::NonNull::new(addr).filter(|_| addr != libc::MAP_FAILED) {
            Some(addr) => Ok(FilePage { addr, len }),
            None => Err(io::Error::last_os_error()),
        }
    }

    /// The page as one iovec.
    pub(crate) fn iovec(&self) -> libc::iovec {
        libc::iovec {
            iov_base: self.addr.as_ptr(),
            iov_len: self.len,
        }
    }
}

impl Drop for FilePage {
    fn drop(&mut self) {
        // SAFETY: `addr..addr + len` is the mapping `map` made, and nothing of ours points
        // into it past this owner.
        if unsafe { libc::munmap(self.addr.as_ptr(), self.len) } != 0 {
            tracing::warn!(error = %io::Error::last_os_error(), "cannot unmap a probe page");
        }
    }
}
