//! Memory that I/O reads into or writes from.
//!
//! This module and the engine's `uring`/`sys` modules are the only places with `unsafe`: here the
//! aligned heap buffer and the copies between it and raw I/O memory (which may be guest memory,
//! so never viewed as `&[u8]`).

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ptr::NonNull;

/// Alignment of every [`AlignedBuf`] (enough for O_DIRECT on any device seen in practice).
pub const BUF_ALIGN: usize = 4096;

/// One segment of I/O memory. Same layout as `libc::iovec`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct IoVec {
    /// First byte of the segment.
    pub base: *mut u8,
    /// Length of the segment in bytes.
    pub len: usize,
}

// SAFETY: an IoVec is only an address and a length. It owns nothing, and every access to the
// memory it names is an unsafe operation justified by the `IoBuffers` contract of its owner.
unsafe impl Send for IoVec {}
// SAFETY: as above; sharing the address/length pair between threads accesses no memory.
unsafe impl Sync for IoVec {}

/// Memory an I/O reads into or writes from. The queue keeps it alive until the op completes,
/// then drops it.
///
/// # Safety
/// Every [`IoVec`] returned by `iovecs()` must stay valid (mapped; writable when the buffers are
/// used for a read) and must not move while `self` lives, and `iovecs()` must return the same
/// segments every time. The memory may be shared with a guest that changes it concurrently:
/// never form `&[u8]` over it.
pub unsafe trait IoBuffers: Send {
    /// The segments, in order.
    fn iovecs(&self) -> &[IoVec];

    /// The queue's fixed buffer (see [`ImageQueue::register_fixed`](crate::ImageQueue::register_fixed))
    /// these buffers lie in, if any: a hint. The queue checks that the segment really lies in
    /// what it registered at that slot before it uses the slot, and ignores it otherwise.
    fn fixed_slot(&self) -> Option<u32> {
        None
    }
}

/// A zero-initialised heap buffer aligned to [`BUF_ALIGN`] (bounce buffers, tests, metadata).
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    iov: [IoVec; 1],
}

// SAFETY: AlignedBuf uniquely owns its allocation, like `Box<[u8]>`.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out `&[u8]`, like `Box<[u8]>`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `len` zeroed bytes aligned to [`BUF_ALIGN`]. Aborts on allocation failure, like `Vec`.
    pub fn zeroed(len: usize) -> AlignedBuf {
        let layout = Self::layout(len);
        // SAFETY: the layout has a non-zero size (at least one byte).
        let raw = unsafe { alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout);
        };
        let iov = [IoVec {
            base: ptr.as_ptr(),
            len,
        }];
        AlignedBuf { ptr, len, iov }
    }

    /// A buffer holding a copy of `data`.
    pub fn from_slice(data: &[u8]) -> AlignedBuf {
        let mut buf = AlignedBuf::zeroed(data.len());
        buf.as_mut_slice().copy_from_slice(data);
        buf
    }

    fn layout(len: usize) -> Layout {
        match Layout::from_size_align(len.max(1), BUF_ALIGN) {
            Ok(layout) => layout,
            Err(_) => panic!("AlignedBuf of {len} bytes exceeds the address space"),
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if the buffer holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr points to `len` initialised bytes owned by self; the borrow of self keeps
        // them alive and the memory is private, so no one else writes it meanwhile.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in as_slice, and `&mut self` guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: ptr was allocated in `zeroed` with exactly this layout and is freed once.
        unsafe { dealloc(self.ptr.as_ptr(), Self::layout(self.len)) }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .finish()
    }
}

// SAFETY: the single IoVec names the buffer's own heap allocation, which is writable, never
// moves (moving the AlignedBuf moves only the pointer) and lives as long as self.
unsafe impl IoBuffers for AlignedBuf {
    fn iovecs(&self) -> &[IoVec] {
        &self.iov
    }
}

/// Buffers that lie in fixed buffer `slot` of the queue they are submitted to (a hint the
/// queue checks: see [`IoBuffers::fixed_slot`]).
#[derive(Debug)]
pub struct InFixedSlot<B> {
    inner: B,
    slot: u32,
}

impl<B: IoBuffers> InFixedSlot<B> {
    /// `inner`, said to lie in fixed buffer `slot`.
    pub fn new(inner: B, slot: u32) -> Self {
        InFixedSlot { inner, slot }
    }
}

// SAFETY: the segments are those of `inner`, which this object owns, so they stay valid as
// long as `inner`'s contract says; the slot is only a hint the queue verifies.
unsafe impl<B: IoBuffers> IoBuffers for InFixedSlot<B> {
    fn iovecs(&self) -> &[IoVec] {
        self.inner.iovecs()
    }

    fn fixed_slot(&self) -> Option<u32> {
        Some(self.slot)
    }
}

/// Aligned memory shared between its owner and the I/O that uses it, like guest memory: a clone
/// goes into an [`IoOp`](crate::IoOp), the owner keeps another and copies bytes in and out
/// (never through `&[u8]`, since an op in flight may be writing it). The segments presented to
/// the I/O can be any ranges of the memory (multi-iovec and misaligned I/O).
#[derive(Clone)]
pub struct SharedBuf {
    inner: std::sync::Arc<SharedInner>,
}

struct SharedInner {
    mem: AlignedBuf,
    iovs: Vec<IoVec>,
}

impl SharedBuf {
    /// `len` zeroed bytes presented as one segment.
    pub fn new(len: usize) -> SharedBuf {
        SharedBuf::with_segments(len, &[(0, len)])
            .unwrap_or_else(|| unreachable!("one segment covering the buffer"))
    }

    /// `len` zeroed bytes presented as the segments `(start, length)`, in order; `None` if a
    /// segment does not lie within the memory.
    pub fn with_segments(len: usize, segments: &[(usize, usize)]) -> Option<SharedBuf> {
        let mem = AlignedBuf::zeroed(len);
        let base = mem.iov[0].base;
        let mut iovs = Vec::with_capacity(segments.len());
        for &(start, seg_len) in segments {
            if start.checked_add(seg_len)? > len {
                return None;
            }
            iovs.push(IoVec {
                base: base.wrapping_add(start),
                len: seg_len,
            });
        }
        Some(SharedBuf {
            inner: std::sync::Arc::new(SharedInner { mem, iovs }),
        })
    }

    /// Size of the memory in bytes.
    pub fn len(&self) -> usize {
        self.inner.mem.len
    }

    /// True if the memory holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole memory as bytes, when this is its only handle (no op in flight holds a
    /// clone any more); `None` otherwise.
    pub fn get_mut(&mut self) -> Option<&mut [u8]> {
        std::sync::Arc::get_mut(&mut self.inner).map(|inner| inner.mem.as_mut_slice())
    }

    /// A copy of the whole memory.
    pub fn copy_out(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.len()];
        // SAFETY: the source is the live allocation of `mem` (len bytes), kept alive by the Arc;
        // the destination is a fresh Vec of the same length. A raw copy forms no reference to
        // memory an op in flight may be writing.
        unsafe { std::ptr::copy(self.inner.mem.ptr.as_ptr(), out.as_mut_ptr(), out.len()) };
        out
    }

    /// Copies `data` into the memory at `offset`; returns false (copying nothing) if it does not fit.
    pub fn copy_in(&self, offset: usize, data: &[u8]) -> bool {
        if offset
            .checked_add(data.len())
            .is_none_or(|end| end > self.len())
        {
            return false;
        }
        // SAFETY: offset + data.len() <= len, so the destination lies in the live allocation
        // owned by `mem` (the pointer comes from the allocation, not from a shared reference).
        unsafe {
            std::ptr::copy(
                data.as_ptr(),
                self.inner.mem.ptr.as_ptr().add(offset),
                data.len(),
            )
        };
        true
    }
}

// SAFETY: every IoVec lies within `mem` (checked in with_segments); `mem` is writable heap
// memory that never moves and lives as long as any clone of the Arc, hence as long as self.
unsafe impl IoBuffers for SharedBuf {
    fn iovecs(&self) -> &[IoVec] {
        &self.inner.iovs
    }
}

impl std::fmt::Debug for SharedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedBuf")
            .field("len", &self.len())
            .field("segments", &self.inner.iovs.len())
            .finish()
    }
}

/// A caller's buffers shared by the pieces of one request split into several I/Os: every piece
/// holds a clone, so the memory stays alive until the last piece is dropped.
#[derive(Clone)]
pub struct SharedBufs {
    // The mutex is never locked: it only makes the `Send` buffers shareable between threads.
    _owner: std::sync::Arc<std::sync::Mutex<Box<dyn IoBuffers>>>,
    iovs: std::sync::Arc<[IoVec]>,
    len: usize,
}

impl SharedBufs {
    /// Shares `bufs`; `None` if their total length overflows.
    pub fn new(bufs: Box<dyn IoBuffers>) -> Option<SharedBufs> {
        let len = total_len(bufs.iovecs())?;
        let iovs = bufs.iovecs().into();
        Some(SharedBufs {
            _owner: std::sync::Arc::new(std::sync::Mutex::new(bufs)),
            iovs,
            len,
        })
    }

    /// Total length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if the buffers hold no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl std::fmt::Debug for SharedBufs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedBufs")
            .field("len", &self.len)
            .finish()
    }
}

/// Segments assembled from ranges of [`SharedBufs`] and from owned [`AlignedBuf`]s, in order:
/// one I/O covering a caller's bytes plus bytes of our own (copy-on-write head and tail), or a
/// piece of a caller's request.
#[derive(Default)]
pub struct Composite {
    iovs: Vec<IoVec>,
    len: usize,
    shared: Vec<SharedBufs>,
    owned: Vec<AlignedBuf>,
}

impl Composite {
    /// No segments yet.
    pub fn new() -> Composite {
        Composite::default()
    }

    /// Appends bytes `[skip, skip + len)` of `src`; false (appending nothing) if out of range.
    pub fn push_shared(&mut self, src: &SharedBufs, skip: usize, len: usize) -> bool {
        if skip.checked_add(len).is_none_or(|end| end > src.len) {
            return false;
        }
        let start = self.iovs.len();
        for (iov, at, count) in pieces_of(&src.iovs, skip, len) {
            self.iovs.push(IoVec {
                base: iov.base.wrapping_add(at),
                len: count,
            });
        }
        if self.iovs.len() > start {
            self.shared.push(src.clone());
        }
        self.len += len;
        true
    }

    /// Appends all of `buf`, which this composite then owns.
    pub fn push_owned(&mut self, buf: AlignedBuf) {
        if buf.is_empty() {
            return;
        }
        self.iovs.extend_from_slice(buf.iovecs());
        self.len += buf.len();
        self.owned.push(buf);
    }

    /// Appends every segment of `other`, taking over what keeps them alive.
    pub fn append(&mut self, mut other: Composite) {
        self.iovs.append(&mut other.iovs);
        self.shared.append(&mut other.shared);
        self.owned.append(&mut other.owned);
        self.len += other.len;
    }

    /// Total length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if the composite holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl std::fmt::Debug for Composite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Composite")
            .field("len", &self.len)
            .field("segments", &self.iovs.len())
            .finish()
    }
}

// Every segment lies in a SharedBufs clone in `shared` (valid while its owner lives; the Arc
// keeps the owner alive) or in an AlignedBuf in `owned` (heap memory that never moves).
// SAFETY: so each segment stays valid and in place while self lives; segments are only appended.
unsafe impl IoBuffers for Composite {
    fn iovecs(&self) -> &[IoVec] {
        &self.iovs
    }
}

/// `(segment, start within segment, count)` for the bytes `[skip, skip + want)` of `iovs`.
fn pieces_of(
    iovs: &[IoVec],
    skip: usize,
    want: usize,
) -> impl Iterator<Item = (IoVec, usize, usize)> + '_ {
    let mut skip = skip;
    let mut want = want;
    iovs.iter().filter_map(move |iov| {
        if skip >= iov.len {
            skip -= iov.len;
            return None;
        }
        let start = skip;
        let count = (iov.len - start).min(want);
        skip = 0;
        want -= count;
        (count > 0).then_some((*iov, start, count))
    })
}

/// Total length of `iovs` in bytes, or `None` if it overflows.
pub fn total_len(iovs: &[IoVec]) -> Option<usize> {
    iovs.iter()
        .try_fold(0usize, |sum, iov| sum.checked_add(iov.len))
}

/// Yields `(segment, start within segment, count)` for each piece of `bufs` covering the bytes
/// `[skip, skip + want)`, stopping early if the buffers end first.
fn pieces(
    bufs: &dyn IoBuffers,
    skip: usize,
    want: usize,
) -> impl Iterator<Item = (IoVec, usize, usize)> + '_ {
    pieces_of(bufs.iovecs(), skip, want)
}

/// Copies the first `dst.len()` bytes of `src` into `dst` (fewer if `src` is shorter); returns
/// how many bytes were copied.
pub fn gather(src: &dyn IoBuffers, dst: &mut [u8]) -> usize {
    let mut done = 0;
    for (iov, start, count) in pieces(src, 0, dst.len()) {
        let Some(out) = dst.get_mut(done..done + count) else {
            break;
        };
        // SAFETY: the IoBuffers contract makes iov.base..+iov.len valid for reads while `src`
        // is borrowed, and start + count <= iov.len. `out` is private memory of exactly
        // `count` bytes; a raw copy never forms a reference to the (possibly shared) source.
        unsafe { std::ptr::copy(iov.base.add(start), out.as_mut_ptr(), count) };
        done += count;
    }
    done
}

/// Copies `src` into the memory of `dst` starting at byte `skip` of `dst` (stopping where `dst`
/// ends); returns how many bytes were copied. `dst` must be buffers given for a read.
pub fn scatter(dst: &dyn IoBuffers, skip: usize, src: &[u8]) -> usize {
    let mut done = 0;
    for (iov, start, count) in pieces(dst, skip, src.len()) {
        let Some(from) = src.get(done..done + count) else {
            break;
        };
        // SAFETY: the IoBuffers contract makes the segment valid and writable (these buffers
        // belong to a read) while `dst` is borrowed, and start + count <= iov.len. Raw copy:
        // no reference to the destination is formed.
        unsafe { std::ptr::copy(from.as_ptr(), iov.base.add(start), count) };
        done += count;
    }
    done
}

/// Writes zeros to every byte of `dst` from byte `skip` on. `dst` must be buffers given for a read.
pub fn zero_from(dst: &dyn IoBuffers, skip: usize) {
    for (iov, start, count) in pieces(dst, skip, usize::MAX) {
        // SAFETY: as in scatter: valid, writable, start + count <= iov.len.
        unsafe { std::ptr::write_bytes(iov.base.add(start), 0, count) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three AlignedBufs presented as one multi-segment buffer.
    struct Split {
        _parts: Vec<AlignedBuf>,
        iovs: Vec<IoVec>,
    }

    // SAFETY: the iovecs name the heap memory of `_parts`, which lives and stays put as long as self.
    unsafe impl IoBuffers for Split {
        fn iovecs(&self) -> &[IoVec] {
            &self.iovs
        }
    }

    fn split(lens: &[usize]) -> Split {
        let parts: Vec<AlignedBuf> = lens.iter().map(|&l| AlignedBuf::zeroed(l)).collect();
        let iovs = parts.iter().map(|p| p.iovecs()[0]).collect();
        Split {
            _parts: parts,
            iovs,
        }
    }

    #[test]
    fn aligned_buf_is_aligned_zeroed_and_sized() {
        let buf = AlignedBuf::zeroed(1000);
        assert_eq!(buf.as_slice().as_ptr() as usize % BUF_ALIGN, 0);
        assert_eq!(buf.len(), 1000);
        assert!(buf.as_slice().iter().all(|&b| b == 0));
        assert!(AlignedBuf::zeroed(0).is_empty());
    }

    #[test]
    fn scatter_then_gather_round_trips_across_segments() {
        let bufs = split(&[3, 5, 4]);
        let data: Vec<u8> = (1..=12).collect();
        assert_eq!(scatter(&bufs, 0, &data), 12);
        let mut back = [0u8; 12];
        assert_eq!(gather(&bufs, &mut back), 12);
        assert_eq!(back.to_vec(), data);
    }

    #[test]
    fn scatter_with_skip_and_zero_from_touch_only_the_tail() {
        let bufs = split(&[3, 5, 4]);
        assert_eq!(scatter(&bufs, 0, &[9; 12]), 12);
        assert_eq!(scatter(&bufs, 4, &[7, 7]), 2);
        zero_from(&bufs, 10);
        let mut back = [0u8; 12];
        gather(&bufs, &mut back);
        assert_eq!(back, [9, 9, 9, 9, 7, 7, 9, 9, 9, 9, 0, 0]);
    }

    #[test]
    fn total_len_detects_overflow() {
        let iovs = [
            IoVec {
                base: std::ptr::null_mut(),
                len: usize::MAX,
            },
            IoVec {
                base: std::ptr::null_mut(),
                len: 1,
            },
        ];
        assert_eq!(total_len(&iovs), None);
        assert_eq!(total_len(&iovs[..1]), Some(usize::MAX));
    }
}
