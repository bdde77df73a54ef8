//! One B-tree node: a 32-byte header, `max_entries` keys, then `max_entries` values.
//!
//! Header: checksum u32, flags u32 (1 internal, 2 leaf), location u64, nr_entries u32,
//! max_entries u32, value_size u32, padding u32. Internal nodes hold child locations (8-byte
//! values) keyed by the lowest key of each child's subtree; `max_entries` is the largest
//! multiple of three that fits, and every node but the root holds at least a third of it.

use crate::error::{Error, Result};
use crate::pdata::block::{self, BLOCK_SIZE, Block, get_u32, get_u64, put_u32, put_u64};

pub(super) const HEADER: usize = 32;
pub(super) const INTERNAL: u32 = 1;
pub(super) const LEAF: u32 = 2;

/// The largest multiple of three entries with `value_size`-byte values that fits a block.
pub fn max_entries(value_size: usize) -> usize {
    (BLOCK_SIZE - HEADER) / (8 + value_size) / 3 * 3
}

/// A decoded node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// True for leaves, false for internal nodes.
    pub leaf: bool,
    /// Bytes per value: 8 in internal nodes (child locations).
    pub value_size: usize,
    /// Keys in increasing order.
    pub keys: Vec<u64>,
    /// `keys.len() * value_size` bytes of values.
    pub values: Vec<u8>,
}

impl Node {
    /// An empty node.
    pub fn new(leaf: bool, value_size: usize) -> Node {
        Node {
            leaf,
            value_size: if leaf { value_size } else { 8 },
            keys: Vec::new(),
            values: Vec::new(),
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True if no entry is held.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Entries this node can hold.
    pub fn capacity(&self) -> usize {
        max_entries(self.value_size)
    }

    /// Fewest entries a non-root node may hold.
    pub fn min_entries(&self) -> usize {
        self.capacity() / 3
    }

    /// The value of entry `i`.
    pub fn value(&self, i: usize) -> &[u8] {
        &self.values[i * self.value_size..(i + 1) * self.value_size]
    }

    /// The child location of entry `i` of an internal node.
    pub fn child(&self, i: usize) -> u64 {
        get_u64(self.value(i), 0)
    }

    /// Sets the child location of entry `i` of an internal node.
    pub fn set_child(&mut self, i: usize, location: u64) {
        put_u64(&mut self.values[i * 8..i * 8 + 8], 0, location);
    }

    /// Replaces the value of entry `i`.
    pub fn set_value(&mut self, i: usize, value: &[u8]) {
        let size = self.value_size;
        self.values[i * size..(i + 1) * size].copy_from_slice(value);
    }

    /// Inserts an entry at position `i`.
    pub fn insert_at(&mut self, i: usize, key: u64, value: &[u8]) {
        self.keys.insert(i, key);
        let at = i * self.value_size;
        self.values.splice(at..at, value.iter().copied());
    }

    /// Removes entry `i`.
    pub fn remove_at(&mut self, i: usize) {
        self.keys.remove(i);
        let at = i * self.value_size;
        self.values.drain(at..at + self.value_size);
    }

    /// Moves the entries from `i` on into a new node of the same kind.
    pub fn split_off(&mut self, i: usize) -> Node {
        Node {
            leaf: self.leaf,
            value_size: self.value_size,
            keys: self.keys.split_off(i),
            values: self.values.split_off(i * self.value_size),
        }
    }

    /// Appends every entry of `other`.
    pub fn append(&mut self, other: &mut Node) {
        self.keys.append(&mut other.keys);
        self.values.append(&mut other.values);
    }

    /// Position of the last key at or below `key`, or `None` if every key is above it.
    pub fn lower_bound(&self, key: u64) -> Option<usize> {
        self.keys.partition_point(|&k| k <= key).checked_sub(1)
    }

    /// Decodes the node at `location` from `b` (already checksum-checked). Leaves must carry
    /// `value_size`-byte values.
    pub fn decode(b: &[u8; BLOCK_SIZE], location: u64, value_size: usize) -> Result<Node> {
        let bad = |why: &str| Error::BadBlock {
            block: location,
            why: why.to_owned(),
        };
        let leaf = match get_u32(b, 4) {
            INTERNAL => false,
            LEAF => true,
            _ => return Err(bad("B-tree node has unknown flags")),
        };
        let nr = get_u32(b, 16) as usize;
        let max = get_u32(b, 20) as usize;
        let size = get_u32(b, 24) as usize;
        let expected = if leaf { value_size } else { 8 };
        if size != expected {
            return Err(bad(&format!(
                "node holds {size}-byte values, expected {expected}"
            )));
        }
        if max != max_entries(size) || nr > max {
            return Err(bad(&format!("node holds {nr} of {max} entries")));
        }
        if !leaf && nr == 0 {
            // Only a leaf may be empty (the root of an empty tree).
            return Err(bad("internal B-tree node has no entries"));
        }
        let keys: Vec<u64> = (0..nr).map(|i| get_u64(b, HEADER + i * 8)).collect();
        if keys.windows(2).any(|w| w[0] >= w[1]) {
            return Err(bad("node keys are out of order"));
        }
        let at = HEADER + max * 8;
        let values = b[at..at + nr * size].to_vec();
        Ok(Node {
            leaf,
            value_size: size,
            keys,
            values,
        })
    }

    /// The node as a block, to be sealed at its location.
    pub fn encode(&self) -> Block {
        let mut b = block::zeroed();
        let max = self.capacity();
        put_u32(&mut b[..], 4, if self.leaf { LEAF } else { INTERNAL });
        put_u32(&mut b[..], 16, small(self.len()));
        put_u32(&mut b[..], 20, small(max));
        put_u32(&mut b[..], 24, small(self.value_size));
        for (i, &k) in self.keys.iter().enumerate() {
            put_u64(&mut b[..], HEADER + i * 8, k);
        }
        let at = HEADER + max * 8;
        b[at..at + self.values.len()].copy_from_slice(&self.values);
        b
    }
}

/// A count that fits a node header (every count in a 4 KiB node does).
fn small(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
