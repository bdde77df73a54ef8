//! Insertion: shadow the path from the root down, splitting every full node before entering
//! it, so a split never has to climb back up.
//!
//! Nodes are read and changed in place in their blocks ([`View`]); only a split decodes the
//! nodes it rearranges. Inside a transaction the path is already shadowed, so most inserts
//! change the leaf alone.

use super::view::View;
use super::{MAX_DEPTH, Node, ValueRefs, new_node, read_node, shadow_at, too_deep, write_node};
use crate::error::Result;
use crate::pdata::block::Kind;
use crate::pdata::tm::Tm;

/// Stores `value` under `key`. Returns the tree's new root and the value replaced, if any;
/// the caller drops the replaced value's reference if it holds one.
pub fn insert(
    tm: &mut Tm,
    root: u64,
    key: u64,
    value: &[u8],
    refs: &mut dyn ValueRefs,
) -> Result<(u64, Option<Vec<u8>>)> {
    let value_size = value.len();
    let (root, copied) = shadow_at(tm, root, value_size, refs)?;
    if view_of(tm, root, value_size, copied)?.full() {
        let node = read_node(tm, root, value_size)?;
        split_beneath(tm, root, node)?;
    }
    let mut at = root;
    for _ in 0..MAX_DEPTH {
        let b = tm.read(at, Kind::Node)?;
        // Every node of the path was checked when this transaction copied it.
        let mut view = View::header(b, at, value_size)?;
        if view.leaf {
            let b = tm.block_mut(at, Kind::Node)?;
            return Ok((root, view.leaf_insert(b, key, value)?));
        }
        let (i, lowered) = match view.lower_bound(b, key) {
            Some(i) => (i, false),
            None => (0, true),
        };
        let step = Step {
            parent: at,
            view,
            i,
            lowered,
            child: view.child(b, i),
        };
        at = step_down(tm, step, key, value_size, refs)?;
    }
    Err(too_deep(root))
}

/// The node at `location`; its keys are checked too if it was just `copied` from a
/// committed block.
fn view_of(tm: &mut Tm, location: u64, value_size: usize, copied: bool) -> Result<View> {
    let b = tm.read(location, Kind::Node)?;
    match copied {
        true => View::parse(b, location, value_size),
        false => View::header(b, location, value_size),
    }
}

/// Moves the full root's entries into two new children, keeping the root where it is.
fn split_beneath(tm: &mut Tm, root: u64, mut node: Node) -> Result<Node> {
    let right = node.split_off(node.len() / 2);
    let left_at = new_node(tm, &node)?;
    let right_at = new_node(tm, &right)?;
    let mut parent = Node::new(false, 8);
    parent.insert_at(0, node.keys[0], &left_at.to_le_bytes());
    parent.insert_at(1, right.keys[0], &right_at.to_le_bytes());
    write_node(tm, root, &parent)?;
    Ok(parent)
}

/// The descent from an internal node: entry `i` leads to `child`; `lowered` if `key` is
/// below every key of the node (its first key becomes `key`).
struct Step {
    parent: u64,
    view: View,
    i: usize,
    lowered: bool,
    child: u64,
}

/// Shadows the child `key` belongs in, splits it if it is full, and returns where the
/// descent goes on. The parent is not full, so it takes the split's new entry.
fn step_down(
    tm: &mut Tm,
    step: Step,
    key: u64,
    value_size: usize,
    refs: &mut dyn ValueRefs,
) -> Result<u64> {
    let Step {
        parent,
        view,
        i,
        lowered,
        child,
    } = step;
    let (at, copied) = shadow_at(tm, child, value_size, refs)?;
    if lowered || at != child {
        let b = tm.block_mut(parent, Kind::Node)?;
        if lowered {
            view.set_key(b, 0, key);
        }
        view.set_child(b, i, at);
    }
    if !view_of(tm, at, value_size, copied)?.full() {
        return Ok(at);
    }
    let mut node = read_node(tm, at, value_size)?;
    let right = node.split_off(node.len() / 2);
    let right_key = right.keys[0];
    write_node(tm, at, &node)?;
    let right_at = new_node(tm, &right)?;
    let mut up = read_node(tm, parent, value_size)?;
    up.insert_at(i + 1, right_key, &right_at.to_le_bytes());
    write_node(tm, parent, &up)?;
    Ok(match key >= right_key {
        true => right_at,
        false => at,
    })
}
