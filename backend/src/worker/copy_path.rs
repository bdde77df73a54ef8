//! The grant-copy data path: the guest's pages are never mapped. A write's data is copied
//! from the guest into a bounce buffer the worker owns, then written; a read goes into a bounce
//! buffer and is copied to the guest when it completes. Each request's segments are copied in
//! one grant-copy call (one `IOCTL_GNTDEV_GRANT_COPY` under Xen).

use rustbk_formats::{IoBuffers, SharedBuf};
use rustbk_grant::{CopyBuf, CopySegment, Error, GuestHandle};
use rustbk_ring::{GrantRef, HeapMemory, PAGE_SIZE, Segment, SharedMemoryExt};

use super::dispatch::{ReqData, span_of};
use super::ring_loop::RingWorker;
use crate::Stats;

/// Most bounce buffers a ring keeps for reuse.
const POOL_MAX: usize = 256;

/// A request's bounce buffer, kept with its in-flight operation.
pub(super) struct Bounce {
    buf: SharedBuf,
    /// For a read: the segments the data is copied to when it completes.
    to_guest: Option<Vec<Segment>>,
}

/// Bounce buffers of finished requests, for reuse (a 4 KiB workload allocates none).
#[derive(Default)]
pub(super) struct BouncePool {
    free: Vec<SharedBuf>,
}

impl BouncePool {
    /// A buffer of exactly `len` bytes (one segment), reused if one is free.
    fn take(&mut self, len: usize) -> SharedBuf {
        match self.free.iter().rposition(|b| b.len() == len) {
            Some(i) => self.free.swap_remove(i),
            None => SharedBuf::new(len),
        }
    }

    fn give(&mut self, buf: SharedBuf) {
        if self.free.len() < POOL_MAX {
            self.free.push(buf);
        }
    }
}

impl RingWorker<'_> {
    /// A bounce buffer for `segments`; for a write (`to_guest` false) it holds their data.
    pub(super) fn bounce_data(
        &mut self,
        segments: &[Segment],
        to_guest: bool,
    ) -> Result<ReqData, Error> {
        let len = segments.iter().map(|s| span_of(s).len).sum();
        let mut buf = self.bounces.take(len);
        if !to_guest {
            let bytes = buf.get_mut().ok_or_else(busy)?;
            copy(&*self.guest, segments, Side::FromGuest(bytes))?;
        }
        Stats::add(&self.stats.grant_copy_requests, 1);
        let bufs: Box<dyn IoBuffers> = Box::new(buf.clone());
        let bounce = Bounce {
            buf,
            to_guest: to_guest.then(|| segments.to_vec()),
        };
        Ok(ReqData {
            bufs,
            bytes: len as u64,
            bounce: Some(bounce),
        })
    }

    /// Keeps the bounce buffer of the operation `tag` until it completes.
    pub(super) fn hold_bounce(&mut self, tag: u64, bounce: Bounce) {
        let Ok(i) = usize::try_from(tag) else { return };
        if self.in_flight_bounces.len() <= i {
            self.in_flight_bounces.resize_with(i + 1, || None);
        }
        self.in_flight_bounces[i] = Some(bounce);
    }

    /// Finishes the bounce buffer of the completed operation `tag`: copies a successful read to
    /// the guest. The status to answer with (`ok` false stays false).
    pub(super) fn finish_bounce(&mut self, tag: u64, ok: bool) -> bool {
        let held = usize::try_from(tag)
            .ok()
            .and_then(|i| self.in_flight_bounces.get_mut(i))
            .and_then(Option::take);
        let Some(Bounce { mut buf, to_guest }) = held else {
            return ok;
        };
        let mut result = ok;
        if let (true, Some(segments)) = (ok, &to_guest) {
            result = match copy_out(&*self.guest, segments, &mut buf) {
                Ok(()) => true,
                Err(e) => {
                    self.note_refused(&e);
                    false
                }
            };
        }
        self.bounces.give(buf);
        result
    }
}

/// Copies a completed read's bounce buffer into the guest's pages.
fn copy_out(
    guest: &dyn GuestHandle,
    segments: &[Segment],
    buf: &mut SharedBuf,
) -> Result<(), Error> {
    match buf.get_mut() {
        Some(bytes) => copy(guest, segments, Side::ToGuest(bytes)),
        // The image queue still holds a clone (it should not once the op completed).
        None => copy(guest, segments, Side::ToGuest(&buf.copy_out())),
    }
}

/// Grant-copies whole pages (indirect segment pages) into private memory, in one call.
pub(super) fn copy_pages(
    guest: &dyn GuestHandle,
    refs: &[GrantRef],
) -> Result<Vec<HeapMemory>, Error> {
    let mut bytes = vec![0u8; refs.len() * PAGE_SIZE];
    let mut ops: Vec<CopySegment<'_>> = refs
        .iter()
        .zip(bytes.chunks_mut(PAGE_SIZE))
        .map(|(gref, page)| CopySegment {
            gref: *gref,
            offset: 0,
            buf: CopyBuf::FromGuest(page),
        })
        .collect();
    guest.copy_grants(&mut ops)?;
    drop(ops);
    bytes
        .chunks(PAGE_SIZE)
        .map(|page| {
            let copy = HeapMemory::new(1);
            copy.write_bytes(0, page)
                .map(|()| copy)
                .map_err(|_| Error::BadMapSize(refs.len()))
        })
        .collect()
}

fn busy() -> Error {
    Error::Protocol("bounce buffer still in use".into())
}

/// The worker's side of one request's copy.
enum Side<'a> {
    FromGuest(&'a mut [u8]),
    ToGuest(&'a [u8]),
}

/// One grant copy for every segment, laid end to end in `side`.
fn copy(guest: &dyn GuestHandle, segments: &[Segment], side: Side<'_>) -> Result<(), Error> {
    let mut ops = Vec::with_capacity(segments.len());
    match side {
        Side::FromGuest(mut rest) => {
            for s in segments {
                let span = span_of(s);
                let whole = std::mem::take(&mut rest);
                let (here, tail) = whole.split_at_mut(span.len.min(whole.len()));
                rest = tail;
                ops.push(segment(s, span.offset, CopyBuf::FromGuest(here))?);
            }
        }
        Side::ToGuest(mut rest) => {
            for s in segments {
                let span = span_of(s);
                let (here, tail) = rest.split_at(span.len.min(rest.len()));
                rest = tail;
                ops.push(segment(s, span.offset, CopyBuf::ToGuest(here))?);
            }
        }
    }
    guest.copy_grants(&mut ops)
}

fn segment<'a>(s: &Segment, offset: usize, buf: CopyBuf<'a>) -> Result<CopySegment<'a>, Error> {
    let offset = u16::try_from(offset).map_err(|_| Error::OutOfBounds {
        offset,
        len: buf.len(),
        size: rustbk_ring::PAGE_SIZE,
    })?;
    Ok(CopySegment {
        gref: s.gref,
        offset,
        buf,
    })
}
