//! What a qcow2 image should read back after a sequence of writes, write-zeroes and discards:
//! its bytes, and per cluster whether the image stores data of its own (a partial discard
//! zeroes only those; elsewhere a discard is a hint that changes nothing).

use crate::qcow2::layout::small;

/// The expected guest view of one image.
pub(super) struct Model {
    /// The guest bytes.
    pub bytes: Vec<u8>,
    /// What the backing chain shows where this image stores nothing (zeros without one).
    below: Vec<u8>,
    /// Per cluster: the image stores data of its own.
    own: Vec<bool>,
    cluster: u64,
    /// Version 2 with a backing file: a discarded whole cluster shows the backing file again.
    v2_backing: bool,
    backing: bool,
}

impl Model {
    /// A fresh image (nothing stored) over a chain that reads as `below`.
    pub fn new(below: Vec<u8>, cluster: u64, v2: bool, backing: bool) -> Model {
        let clusters = small((below.len() as u64).div_ceil(cluster));
        Model {
            bytes: below.clone(),
            below,
            own: vec![false; clusters],
            cluster,
            v2_backing: v2 && backing,
            backing,
        }
    }

    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let at = small(offset);
        self.bytes[at..at + data.len()].copy_from_slice(data);
        for (gc, ..) in self.pieces(offset, data.len() as u64) {
            self.own[gc] = true;
        }
    }

    pub fn write_zeroes(&mut self, offset: u64, len: u64) {
        for (gc, at, n, whole) in self.pieces(offset, len) {
            self.bytes[at..at + n].fill(0);
            // Whole clusters become zero or unallocated, except on version 2 images with a
            // backing file, which have to store the zeros.
            self.own[gc] = !whole || self.v2_backing;
        }
    }

    pub fn discard(&mut self, offset: u64, len: u64) {
        for (gc, at, n, whole) in self.pieces(offset, len) {
            if whole && self.v2_backing {
                self.bytes[at..at + n].copy_from_slice(&self.below[at..at + n]);
            } else if whole || self.own[gc] || !self.backing {
                self.bytes[at..at + n].fill(0);
            }
            if whole {
                self.own[gc] = false;
            }
        }
    }

    /// The cluster pieces of `[offset, offset + len)`: cluster index, first byte, length, and
    /// whether the piece is a whole cluster (or the image's whole last cluster).
    fn pieces(&self, offset: u64, len: u64) -> Vec<(usize, usize, usize, bool)> {
        let (cs, size, end) = (self.cluster, self.size(), offset + len);
        let mut out = Vec::new();
        let mut at = offset;
        while at < end {
            let next = ((at / cs + 1) * cs).min(end);
            let whole = at % cs == 0 && (next - at == cs || next == size);
            out.push((small(at / cs), small(at), small(next - at), whole));
            at = next;
        }
        out
    }
}
