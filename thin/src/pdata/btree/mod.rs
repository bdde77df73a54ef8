//! Copy-on-write B-trees of u64 keys and fixed-size values, as persistent-data lays them out.
//!
//! Every change shadows the path from the root down (see [`crate::pdata::tm`]), so a change
//! returns the tree's new root and the old tree stays intact until the commit frees it.
//! Values may point at things with reference counts of their own (data blocks, subtrees);
//! [`ValueRefs`] is told when a value is copied into a second node or dropped.

mod insert;
pub mod node;
mod remove;
#[cfg(test)]
pub(crate) mod tests;
mod view;
mod walk;

pub use insert::insert;
pub use node::Node;
pub use remove::remove;
pub use walk::{for_each, range, visit_nodes};

use super::block::Kind;
use super::tm::Tm;
use crate::error::{Error, Result};

/// Deepest tree accepted: a B-tree of 4 KiB nodes reaches far beyond 2^64 keys well before
/// this, so anything deeper is a cycle or damage.
pub const MAX_DEPTH: usize = 16;

/// What a tree's values reference, told when a value gains or loses a holder.
pub trait ValueRefs {
    /// `value` was copied into another node: what it references gains a holder.
    fn inc(&mut self, tm: &mut Tm, value: &[u8]) -> Result<()>;
    /// `value` was dropped: what it references loses a holder.
    fn dec(&mut self, tm: &mut Tm, value: &[u8]) -> Result<()>;
}

/// Values that reference nothing (device details, space map index entries, counts).
pub struct NoRefs;

impl ValueRefs for NoRefs {
    fn inc(&mut self, _: &mut Tm, _: &[u8]) -> Result<()> {
        Ok(())
    }

    fn dec(&mut self, _: &mut Tm, _: &[u8]) -> Result<()> {
        Ok(())
    }
}

/// Reads and decodes the node at `location`.
pub fn read_node(tm: &mut Tm, location: u64, value_size: usize) -> Result<Node> {
    let b = tm.read(location, Kind::Node)?;
    Node::decode(b, location, value_size)
}

/// Writes `node` to `location`, a block of this transaction.
pub fn write_node(tm: &mut Tm, location: u64, node: &Node) -> Result<()> {
    tm.write(location, Kind::Node, node.encode())
}

/// Writes `node` to a new block and returns its location.
pub fn new_node(tm: &mut Tm, node: &Node) -> Result<u64> {
    let location = tm.new_block()?;
    write_node(tm, location, node)?;
    Ok(location)
}

/// A new, empty tree of `value_size`-byte values; returns its root.
pub fn empty(tm: &mut Tm, value_size: usize) -> Result<u64> {
    new_node(tm, &Node::new(true, value_size))
}

/// Makes the node at `location` writable; returns its new location and contents. If it was
/// shared, everything it references gains a holder.
pub fn shadow_node(
    tm: &mut Tm,
    location: u64,
    value_size: usize,
    refs: &mut dyn ValueRefs,
) -> Result<(u64, Node)> {
    let (new, _) = shadow_at(tm, location, value_size, refs)?;
    Ok((new, read_node(tm, new, value_size)?))
}

/// Makes the node at `location` writable, as [`shadow_node`] does, without decoding it
/// unless it was shared. Returns its new location and whether it was copied there from a
/// committed block (the caller then checks it in full).
pub fn shadow_at(
    tm: &mut Tm,
    location: u64,
    value_size: usize,
    refs: &mut dyn ValueRefs,
) -> Result<(u64, bool)> {
    let (new, shared) = tm.shadow(location, Kind::Node)?;
    if shared {
        let node = read_node(tm, new, value_size)?;
        inc_children(tm, &node, refs)?;
    }
    Ok((new, new != location))
}

fn inc_children(tm: &mut Tm, node: &Node, refs: &mut dyn ValueRefs) -> Result<()> {
    for i in 0..node.len() {
        match node.leaf {
            true => refs.inc(tm, node.value(i))?,
            false => tm.inc(node.child(i))?,
        }
    }
    Ok(())
}

/// The value stored under `key`, if any.
pub fn lookup(tm: &mut Tm, root: u64, value_size: usize, key: u64) -> Result<Option<Vec<u8>>> {
    let mut location = root;
    for _ in 0..MAX_DEPTH {
        let b = tm.read(location, Kind::Node)?;
        let view = view::View::parse(b, location, value_size)?;
        let Some(i) = view.lower_bound(b, key) else {
            return Ok(None);
        };
        if view.leaf {
            return Ok((view.key(b, i) == key).then(|| view.value(b, i).to_vec()));
        }
        location = view.child(b, i);
    }
    Err(too_deep(root))
}

/// Drops one reference to the tree at `root`; the nodes no one else holds are freed, and
/// their values dropped.
pub fn delete(tm: &mut Tm, root: u64, value_size: usize, refs: &mut dyn ValueRefs) -> Result<()> {
    delete_at(tm, root, value_size, refs, 0)
}

fn delete_at(
    tm: &mut Tm,
    location: u64,
    value_size: usize,
    refs: &mut dyn ValueRefs,
    depth: usize,
) -> Result<()> {
    if depth >= MAX_DEPTH {
        return Err(too_deep(location));
    }
    if tm.count(location)? > 1 {
        return tm.dec(location).map(drop);
    }
    let node = read_node(tm, location, value_size)?;
    tm.dec(location)?;
    for i in 0..node.len() {
        match node.leaf {
            true => refs.dec(tm, node.value(i))?,
            false => delete_at(tm, node.child(i), value_size, refs, depth + 1)?,
        }
    }
    Ok(())
}

/// The error for a tree deeper than [`MAX_DEPTH`].
pub(crate) fn too_deep(root: u64) -> Error {
    Error::corrupt(format!(
        "B-tree at block {root} is deeper than {MAX_DEPTH} levels (a cycle?)"
    ))
}
