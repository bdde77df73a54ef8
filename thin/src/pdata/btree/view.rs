//! A node read and changed in place in its block, with no copy: the insertion's fast path.
//!
//! [`View::parse`] checks the header and the key order as [`Node::decode`] does; the edits
//! keep the layout (keys, then `max_entries` value slots) and the entry count up to date.

use super::node::{HEADER, INTERNAL, LEAF, max_entries};
use crate::error::{Error, Result};
use crate::pdata::block::{BLOCK_SIZE, get_u32, get_u64, put_u32, put_u64};

/// What the header of a checked node says.
#[derive(Clone, Copy, Debug)]
pub struct View {
    pub leaf: bool,
    pub len: usize,
    pub max: usize,
    pub value_size: usize,
}

impl View {
    /// Checks the node at `location` (its checksum already checked); leaves must carry
    /// `value_size`-byte values.
    pub fn parse(b: &[u8; BLOCK_SIZE], location: u64, value_size: usize) -> Result<View> {
        let view = View::header(b, location, value_size)?;
        let mut keys = b[HEADER..HEADER + view.len * 8]
            .chunks_exact(8)
            .map(|k| u64::from_le_bytes([k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7]]));
        let mut last = None;
        if keys.any(|k| last.replace(k).is_some_and(|l| l >= k)) {
            return Err(Error::BadBlock {
                block: location,
                why: "node keys are out of order".into(),
            });
        }
        Ok(view)
    }

    /// Checks the header alone: for a node this transaction made or already checked with
    /// [`View::parse`] when it copied it, whose keys it keeps in order.
    pub fn header(b: &[u8; BLOCK_SIZE], location: u64, value_size: usize) -> Result<View> {
        let bad = |why: String| Error::BadBlock {
            block: location,
            why,
        };
        let leaf = match get_u32(b, 4) {
            INTERNAL => false,
            LEAF => true,
            _ => return Err(bad("B-tree node has unknown flags".into())),
        };
        let len = get_u32(b, 16) as usize;
        let max = get_u32(b, 20) as usize;
        let size = get_u32(b, 24) as usize;
        let expected = if leaf { value_size } else { 8 };
        if size != expected {
            return Err(bad(format!(
                "node holds {size}-byte values, expected {expected}"
            )));
        }
        if max != max_entries(size) || len > max {
            return Err(bad(format!("node holds {len} of {max} entries")));
        }
        if !leaf && len == 0 {
            return Err(bad("internal B-tree node has no entries".into()));
        }
        Ok(View {
            leaf,
            len,
            max,
            value_size: size,
        })
    }

    /// Whether the node has no room for another entry.
    pub fn full(&self) -> bool {
        self.len >= self.max
    }

    pub fn key(&self, b: &[u8; BLOCK_SIZE], i: usize) -> u64 {
        get_u64(b, HEADER + i * 8)
    }

    fn value_at(&self, i: usize) -> usize {
        HEADER + self.max * 8 + i * self.value_size
    }

    /// The value of entry `i`.
    pub fn value<'b>(&self, b: &'b [u8; BLOCK_SIZE], i: usize) -> &'b [u8] {
        let at = self.value_at(i);
        &b[at..at + self.value_size]
    }

    /// The child location of entry `i` of an internal node.
    pub fn child(&self, b: &[u8; BLOCK_SIZE], i: usize) -> u64 {
        get_u64(b, self.value_at(i))
    }

    /// Number of keys at or below `key`.
    fn keys_up_to(&self, b: &[u8; BLOCK_SIZE], key: u64, inclusive: bool) -> usize {
        let (mut lo, mut hi) = (0, self.len);
        while lo < hi {
            let mid = (lo + hi) / 2;
            let k = self.key(b, mid);
            match k < key || (inclusive && k == key) {
                true => lo = mid + 1,
                false => hi = mid,
            }
        }
        lo
    }

    /// Position of the last key at or below `key`, or `None` if every key is above it.
    pub fn lower_bound(&self, b: &[u8; BLOCK_SIZE], key: u64) -> Option<usize> {
        self.keys_up_to(b, key, true).checked_sub(1)
    }

    /// Sets key `i`.
    pub fn set_key(&self, b: &mut [u8; BLOCK_SIZE], i: usize, key: u64) {
        put_u64(b, HEADER + i * 8, key);
    }

    /// Sets the child location of entry `i` of an internal node.
    pub fn set_child(&self, b: &mut [u8; BLOCK_SIZE], i: usize, location: u64) {
        put_u64(b, self.value_at(i), location);
    }

    /// Stores `value` under `key` in a leaf that is not full; returns the value replaced.
    pub fn leaf_insert(
        &mut self,
        b: &mut [u8; BLOCK_SIZE],
        key: u64,
        value: &[u8],
    ) -> Result<Option<Vec<u8>>> {
        if !self.leaf || value.len() != self.value_size {
            return Err(Error::corrupt("in-place insertion into the wrong node"));
        }
        let pos = self.keys_up_to(b, key, false);
        let size = self.value_size;
        if pos < self.len && self.key(b, pos) == key {
            let at = self.value_at(pos);
            let old = b[at..at + size].to_vec();
            b[at..at + size].copy_from_slice(value);
            return Ok(Some(old));
        }
        if self.full() {
            return Err(Error::corrupt("in-place insertion into a full leaf"));
        }
        let keys = HEADER + pos * 8..HEADER + self.len * 8;
        b.copy_within(keys, HEADER + (pos + 1) * 8);
        let values = self.value_at(pos)..self.value_at(self.len);
        b.copy_within(values, self.value_at(pos + 1));
        self.set_key(b, pos, key);
        let at = self.value_at(pos);
        b[at..at + size].copy_from_slice(value);
        self.len += 1;
        put_u32(b, 16, u32::try_from(self.len).unwrap_or(u32::MAX));
        Ok(None)
    }
}
