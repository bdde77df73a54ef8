//! The whole contents of a newly provisioned block: the part being written, and around a
//! partial write the fill (zeros, the external origin's data, or the old block's data for a
//! copy-on-write).

use rustbk_formats::engine::FileKind;
use rustbk_formats::{AlignedBuf, Composite, IoBuffers, IoOp, SharedBuf, SharedBufs};

use super::Core;
use super::plan::Child;
use crate::error::{Error, Result};

static ZEROS: [u8; 65536] = [0; 65536];

/// Writes `len` zeros into `dst` from byte `skip` on (`dst` are buffers given for a read).
pub(crate) fn zero(dst: &dyn IoBuffers, skip: usize, len: usize) {
    let mut done = 0;
    while done < len {
        let count = (len - done).min(ZEROS.len());
        let Some(at) = skip.checked_add(done) else {
            return;
        };
        if rustbk_formats::buffer::scatter(dst, at, &ZEROS[..count]) == 0 {
            return;
        }
        done += count;
    }
}

/// Where the bytes of a new block around the written part come from.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Fill {
    /// Zeros (no origin, nothing mapped).
    Zeros,
    /// The old data block at this byte offset of the data device (copy-on-write).
    Old(u64),
    /// The external origin, the block starting at this byte offset of the volume.
    Origin(u64),
}

/// What goes into the written part of a new block.
pub(crate) enum Piece<'a> {
    /// Bytes `[skip, skip + len)` of the guest's buffers.
    Guest(&'a SharedBufs, usize),
    /// Zeros.
    Zeros,
}

/// Where a piece goes inside its block.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Span {
    /// Byte offset of the new block on the data device.
    pub phys: u64,
    /// First byte written inside the block.
    pub at: u64,
    /// Bytes written.
    pub len: u64,
    /// The new block is known to be a hole of the data file.
    pub hole: bool,
}

/// Pushes the ops that give the new block at `span.phys` its whole contents.
pub(crate) fn build(
    core: &mut Core,
    span: Span,
    piece: Piece<'_>,
    fill: Fill,
    kids: &mut Vec<Child>,
) -> Result<()> {
    let bs = core.info.block_size;
    let tail_at = span.at.checked_add(span.len).filter(|&t| t <= bs);
    let tail_at = tail_at.ok_or_else(|| Error::InvalidArgument("piece past its block".into()))?;
    if span.at == 0 && tail_at == bs {
        kids.push(piece_op(span.phys, bs, piece)?);
        return Ok(());
    }
    if let Fill::Zeros = fill {
        if span.hole || zero_in_place(core, span.phys, bs) {
            let op = match piece {
                Piece::Zeros => Child::Now(Ok(())),
                piece => piece_op(span.phys + span.at, span.len, piece)?,
            };
            kids.push(op);
            return Ok(());
        }
    }
    let head = read_fill(core, fill, 0, span.at)?;
    let tail = read_fill(core, fill, tail_at, bs - tail_at)?;
    let mut whole = Composite::new();
    whole.push_owned(head);
    push_piece(&mut whole, piece, span.len)?;
    whole.push_owned(tail);
    kids.push(Child::Io(IoOp::Write {
        offset: span.phys,
        bufs: Box::new(whole),
    }));
    Ok(())
}

/// Makes the block read as zeros: nothing to do if it is a hole of the data file (a block
/// never written since the file was made sparse, or punched out), else the file system's
/// zero-range; false if neither works (the caller writes zeros). On a block device the
/// zero-range would write the zeros synchronously on the ring's thread: the caller writes
/// them instead, with the guest's part, in one queued write.
fn zero_in_place(core: &Core, phys: u64, bs: u64) -> bool {
    if core.data.kind() != FileKind::Regular {
        return false;
    }
    if core.data.is_hole(phys, bs) {
        return true;
    }
    match core.data.allocate_zeroed(phys, bs) {
        Ok(done) => done,
        Err(e) => {
            tracing::debug!(error = %e, "zero range refused, writing zeros");
            false
        }
    }
}

fn piece_op(offset: u64, len: u64, piece: Piece<'_>) -> Result<Child> {
    Ok(Child::Io(match piece {
        Piece::Zeros => IoOp::WriteZeroes { offset, len },
        piece => {
            let mut bufs = Composite::new();
            push_piece(&mut bufs, piece, len)?;
            IoOp::Write {
                offset,
                bufs: Box::new(bufs),
            }
        }
    }))
}

fn push_piece(out: &mut Composite, piece: Piece<'_>, len: u64) -> Result<()> {
    let len = usize::try_from(len).map_err(|_| Error::InvalidArgument("piece length".into()))?;
    match piece {
        Piece::Guest(bufs, skip) => match out.push_shared(bufs, skip, len) {
            true => Ok(()),
            false => Err(Error::InvalidArgument("piece outside the buffers".into())),
        },
        Piece::Zeros => {
            out.push_owned(AlignedBuf::zeroed(len));
            Ok(())
        }
    }
}

/// `len` bytes of the fill at byte `at` of the block.
fn read_fill(core: &mut Core, fill: Fill, at: u64, len: u64) -> Result<AlignedBuf> {
    let count = usize::try_from(len).map_err(|_| Error::InvalidArgument("fill length".into()))?;
    let mut buf = AlignedBuf::zeroed(count);
    if count == 0 {
        return Ok(buf);
    }
    match fill {
        Fill::Zeros => {}
        Fill::Old(phys) => {
            let from = phys
                .checked_add(at)
                .ok_or_else(|| Error::corrupt("old block offset"))?;
            core.data.read_at(buf.as_mut_slice(), from)?;
        }
        Fill::Origin(start) => {
            let origin = core
                .origin
                .as_mut()
                .ok_or_else(|| Error::corrupt("origin fill without an origin"))?;
            let shared = SharedBuf::new(count);
            let from = start
                .checked_add(at)
                .ok_or_else(|| Error::InvalidArgument("origin offset".into()))?;
            origin.read(from, Box::new(shared.clone()), len)?;
            buf = AlignedBuf::from_slice(&shared.copy_out());
        }
    }
    Ok(buf)
}
