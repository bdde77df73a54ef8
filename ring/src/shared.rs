//! Access to memory shared with the other end: the only module of this crate
//! with `unsafe`.
//!
//! The other end may write the shared pages at any time, so no Rust reference
//! (`&[u8]`, `&u32`) is ever formed over them. Bytes are copied in and out with
//! volatile accesses; the ring indices are accessed as `AtomicU32`. Every access
//! is bounds-checked against [`SharedMemory::len`].

use std::cell::UnsafeCell;
use std::ptr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::error::Error;
use crate::types::PAGE_SIZE;

/// Memory shared with another party (a grant mapping, an emulated guest page).
///
/// # Safety
///
/// Implementors guarantee that `as_ptr()..as_ptr() + len()` stays mapped,
/// readable and writable, and does not move, while `self` lives; that
/// `as_ptr()` and `len()` return the same values every time; and that
/// `as_ptr()` is 8-byte aligned whenever `len()` is not 0. No Rust reference
/// may exist over that memory: the other side may write it at any time.
pub unsafe trait SharedMemory: Send {
    /// Start of the shared region.
    fn as_ptr(&self) -> *mut u8;
    /// Length of the shared region in bytes.
    fn len(&self) -> usize;
    /// Whether the region is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// SAFETY: the shared reference keeps `T` alive and in place for its whole
// lifetime, so `T`'s guarantees hold for the reference too; `T: Sync` makes
// the reference `Send`.
unsafe impl<T: SharedMemory + Sync + ?Sized> SharedMemory for &T {
    fn as_ptr(&self) -> *mut u8 {
        (**self).as_ptr()
    }
    fn len(&self) -> usize {
        (**self).len()
    }
}

// SAFETY: the box owns `T` and keeps it alive; `T`'s guarantees carry over.
unsafe impl<T: SharedMemory + ?Sized> SharedMemory for Box<T> {
    fn as_ptr(&self) -> *mut u8 {
        (**self).as_ptr()
    }
    fn len(&self) -> usize {
        (**self).len()
    }
}

/// Safe, bounds-checked, copy-based access to a [`SharedMemory`].
///
/// Implemented for every `SharedMemory`; it cannot be implemented elsewhere.
pub trait SharedMemoryExt: SharedMemory {
    /// Copies `dst.len()` bytes from `offset` with volatile reads.
    fn read_bytes(&self, offset: usize, dst: &mut [u8]) -> Result<(), Error>;
    /// Copies `src` to `offset` with volatile writes.
    fn write_bytes(&self, offset: usize, src: &[u8]) -> Result<(), Error>;
    /// Sets `len` bytes at `offset` to `byte` with volatile writes.
    fn fill_bytes(&self, offset: usize, len: usize, byte: u8) -> Result<(), Error>;
    /// Relaxed atomic load of the 4-byte-aligned `u32` at `offset`.
    fn load_u32(&self, offset: usize) -> Result<u32, Error>;
    /// Relaxed atomic store of the 4-byte-aligned `u32` at `offset`.
    fn store_u32(&self, offset: usize, value: u32) -> Result<(), Error>;
    /// Relaxed atomic load of the 8-byte-aligned `u64` at `offset`.
    fn load_u64(&self, offset: usize) -> Result<u64, Error>;
    /// Relaxed atomic store of the 8-byte-aligned `u64` at `offset`: one store, never torn.
    fn store_u64(&self, offset: usize, value: u64) -> Result<(), Error>;
}

/// Pointer to `offset..offset + len` inside `mem`, or an error if it leaves the region.
fn range_ptr<M: SharedMemory + ?Sized>(
    mem: &M,
    offset: usize,
    len: usize,
) -> Result<*mut u8, Error> {
    let size = mem.len();
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(mem.as_ptr().wrapping_add(offset)),
        _ => Err(Error::OutOfBounds { offset, len, size }),
    }
}

/// Pointer to the aligned `u32` at `offset`, checked for bounds and alignment.
fn atomic_ptr<M: SharedMemory + ?Sized>(mem: &M, offset: usize) -> Result<*mut u32, Error> {
    aligned_ptr(mem, offset, 4).map(|p| p.cast::<u32>())
}

/// Pointer to the aligned `u64` at `offset`, checked for bounds and alignment.
fn atomic64_ptr<M: SharedMemory + ?Sized>(mem: &M, offset: usize) -> Result<*mut u64, Error> {
    aligned_ptr(mem, offset, 8).map(|p| p.cast::<u64>())
}

/// Pointer to `size` bytes at `offset`, checked for bounds and `size`-alignment.
fn aligned_ptr<M: SharedMemory + ?Sized>(
    mem: &M,
    offset: usize,
    size: usize,
) -> Result<*mut u8, Error> {
    let p = range_ptr(mem, offset, size)?;
    if p.addr() % size != 0 {
        return Err(Error::UnalignedAtomic { offset });
    }
    Ok(p)
}

impl<T: SharedMemory + ?Sized> SharedMemoryExt for T {
    fn read_bytes(&self, offset: usize, dst: &mut [u8]) -> Result<(), Error> {
        let src = range_ptr(self, offset, dst.len())?;
        // SAFETY: `range_ptr` checked that `src..src + dst.len()` lies inside
        // the region, which the `SharedMemory` contract keeps mapped and readable.
        unsafe { volatile_copy_in(src, dst) };
        Ok(())
    }

    fn write_bytes(&self, offset: usize, src: &[u8]) -> Result<(), Error> {
        let dst = range_ptr(self, offset, src.len())?;
        // SAFETY: `range_ptr` checked that `dst..dst + src.len()` lies inside
        // the region, which the `SharedMemory` contract keeps mapped and writable.
        unsafe { volatile_copy_out(src, dst) };
        Ok(())
    }

    fn fill_bytes(&self, offset: usize, len: usize, byte: u8) -> Result<(), Error> {
        let dst = range_ptr(self, offset, len)?;
        for i in 0..len {
            // SAFETY: `i < len` and `range_ptr` checked `dst..dst + len` is
            // inside the mapped, writable region.
            unsafe { ptr::write_volatile(dst.add(i), byte) };
        }
        Ok(())
    }

    fn load_u32(&self, offset: usize) -> Result<u32, Error> {
        let p = atomic_ptr(self, offset)?;
        // SAFETY: `p` is 4-byte aligned and inside the region, which stays
        // mapped while `self` is borrowed; the atomic lives only for this call.
        let a = unsafe { AtomicU32::from_ptr(p) };
        Ok(a.load(Ordering::Relaxed))
    }

    fn store_u32(&self, offset: usize, value: u32) -> Result<(), Error> {
        let p = atomic_ptr(self, offset)?;
        // SAFETY: as in `load_u32`: aligned, in bounds, mapped and writable.
        let a = unsafe { AtomicU32::from_ptr(p) };
        a.store(value, Ordering::Relaxed);
        Ok(())
    }

    fn load_u64(&self, offset: usize) -> Result<u64, Error> {
        let p = atomic64_ptr(self, offset)?;
        // SAFETY: `p` is 8-byte aligned and inside the region, which stays
        // mapped while `self` is borrowed; the atomic lives only for this call.
        let a = unsafe { AtomicU64::from_ptr(p) };
        Ok(a.load(Ordering::Relaxed))
    }

    fn store_u64(&self, offset: usize, value: u64) -> Result<(), Error> {
        let p = atomic64_ptr(self, offset)?;
        // SAFETY: as in `load_u64`: aligned, in bounds, mapped and writable.
        let a = unsafe { AtomicU64::from_ptr(p) };
        a.store(value, Ordering::Relaxed);
        Ok(())
    }
}

/// Copies `dst.len()` bytes from `src` with volatile reads, 8 bytes at a time
/// where `src` is aligned.
///
/// # Safety
///
/// `src..src + dst.len()` must be valid for reads.
unsafe fn volatile_copy_in(src: *const u8, dst: &mut [u8]) {
    let n = dst.len();
    let mut i = 0;
    while i < n && (src.addr() + i) % 8 != 0 {
        // SAFETY: `i < n`, inside the range the caller vouched for.
        dst[i] = unsafe { ptr::read_volatile(src.add(i)) };
        i += 1;
    }
    while n - i >= 8 {
        // SAFETY: `src + i` is 8-aligned and `i + 8 <= n`, inside the range.
        let word = unsafe { ptr::read_volatile(src.add(i).cast::<u64>()) };
        dst[i..i + 8].copy_from_slice(&word.to_ne_bytes());
        i += 8;
    }
    while i < n {
        // SAFETY: `i < n`, inside the range the caller vouched for.
        dst[i] = unsafe { ptr::read_volatile(src.add(i)) };
        i += 1;
    }
}

/// Copies `src` to `dst` with volatile writes, 8 bytes at a time where `dst`
/// is aligned.
///
/// # Safety
///
/// `dst..dst + src.len()` must be valid for writes.
unsafe fn volatile_copy_out(src: &[u8], dst: *mut u8) {
    let n = src.len();
    let mut i = 0;
    while i < n && (dst.addr() + i) % 8 != 0 {
        // SAFETY: `i < n`, inside the range the caller vouched for.
        unsafe { ptr::write_volatile(dst.add(i), src[i]) };
        i += 1;
    }
    while n - i >= 8 {
        let mut word = [0u8; 8];
        word.copy_from_slice(&src[i..i + 8]);
        // SAFETY: `dst + i` is 8-aligned and `i + 8 <= n`, inside the range.
        unsafe { ptr::write_volatile(dst.add(i).cast::<u64>(), u64::from_ne_bytes(word)) };
        i += 8;
    }
    while i < n {
        // SAFETY: `i < n`, inside the range the caller vouched for.
        unsafe { ptr::write_volatile(dst.add(i), src[i]) };
        i += 1;
    }
}

/// One page-aligned page of [`HeapMemory`].
#[repr(C, align(4096))]
struct Page(UnsafeCell<[u8; PAGE_SIZE]>);

// SAFETY: the bytes of a `Page` are only reached through raw pointers from
// `HeapMemory::as_ptr`, by volatile or atomic accesses in this module, never
// through references, exactly like a page shared with another domain.
unsafe impl Sync for Page {}

/// Zeroed, page-aligned heap memory standing in for shared pages in tests,
/// fuzzing and emulation. Clones share the same pages.
#[derive(Clone)]
pub struct HeapMemory {
    pages: Arc<[Page]>,
    len: usize,
}

impl HeapMemory {
    /// Allocates `pages` zeroed pages.
    pub fn new(pages: usize) -> HeapMemory {
        Self::with_len(pages.saturating_mul(PAGE_SIZE))
    }

    /// Allocates a zeroed region of exactly `len` bytes (backed by whole pages).
    pub fn with_len(len: usize) -> HeapMemory {
        let pages = (0..len.div_ceil(PAGE_SIZE))
            .map(|_| Page(UnsafeCell::new([0; PAGE_SIZE])))
            .collect();
        HeapMemory { pages, len }
    }
}

impl std::fmt::Debug for HeapMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeapMemory")
            .field("len", &self.len)
            .finish()
    }
}

// The `Arc` keeps the 4096-aligned pages alive and in place while any clone lives; `len` is
// fixed and within them; the pointer comes from the `UnsafeCell`s and no reference is formed.
// SAFETY: so the SharedMemory contract holds.
unsafe impl SharedMemory for HeapMemory {
    fn as_ptr(&self) -> *mut u8 {
        UnsafeCell::raw_get(self.pages.as_ptr().cast::<UnsafeCell<[u8; PAGE_SIZE]>>()).cast::<u8>()
    }

    fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_at_unaligned_offsets() {
        let m = HeapMemory::new(2);
        let data: Vec<u8> = (0..=255u8).cycle().take(300).collect();
        for off in [0usize, 1, 3, 7, 8, 4090] {
            m.write_bytes(off, &data).unwrap();
            let mut back = vec![0u8; data.len()];
            m.read_bytes(off, &mut back).unwrap();
            assert_eq!(back, data, "offset {off}");
        }
    }

    #[test]
    fn out_of_bounds_accesses_are_refused() {
        let m = HeapMemory::new(1);
        let mut buf = [0u8; 8];
        assert!(matches!(
            m.read_bytes(4089, &mut buf),
            Err(Error::OutOfBounds { .. })
        ));
        assert!(matches!(
            m.write_bytes(usize::MAX, &buf),
            Err(Error::OutOfBounds { .. })
        ));
        assert!(matches!(
            m.fill_bytes(4000, 97, 0),
            Err(Error::OutOfBounds { .. })
        ));
        assert!(matches!(m.load_u32(4093), Err(Error::OutOfBounds { .. })));
        assert!(m.read_bytes(4088, &mut buf).is_ok());
    }

    #[test]
    fn atomics_need_alignment_and_see_byte_writes() {
        let m = HeapMemory::new(1);
        m.write_bytes(8, &0xdead_beef_u32.to_le_bytes()).unwrap();
        assert_eq!(m.load_u32(8), Ok(0xdead_beef));
        assert_eq!(m.load_u32(6), Err(Error::UnalignedAtomic { offset: 6 }));
        m.store_u32(12, 7).unwrap();
        let mut b = [0u8; 4];
        m.read_bytes(12, &mut b).unwrap();
        assert_eq!(u32::from_le_bytes(b), 7);
    }

    #[test]
    fn u64_atomics_need_eight_byte_alignment() {
        let m = HeapMemory::new(1);
        m.store_u64(16, 0x0123_4567_89ab_cdef).unwrap();
        assert_eq!(m.load_u64(16), Ok(0x0123_4567_89ab_cdef));
        let mut b = [0u8; 8];
        m.read_bytes(16, &mut b).unwrap();
        assert_eq!(u64::from_ne_bytes(b), 0x0123_4567_89ab_cdef);
        assert_eq!(m.load_u64(12), Err(Error::UnalignedAtomic { offset: 12 }));
        assert_eq!(
            m.store_u64(4092, 1),
            Err(Error::OutOfBounds {
                offset: 4092,
                len: 8,
                size: 4096
            })
        );
    }

    #[test]
    fn clones_share_pages_and_memory_is_page_aligned() {
        let a = HeapMemory::new(3);
        let b = a.clone();
        a.fill_bytes(5000, 10, 0xab).unwrap();
        let mut buf = [0u8; 10];
        b.read_bytes(5000, &mut buf).unwrap();
        assert_eq!(buf, [0xab; 10]);
        assert_eq!(a.as_ptr().addr() % PAGE_SIZE, 0);
        assert_eq!(a.len(), 3 * PAGE_SIZE);
    }

    #[test]
    fn with_len_reports_exact_length() {
        let m = HeapMemory::with_len(10);
        assert_eq!(m.len(), 10);
        let mut buf = [0u8; 11];
        assert!(m.read_bytes(0, &mut buf).is_err());
        assert!(m.read_bytes(0, &mut buf[..10]).is_ok());
    }
}
