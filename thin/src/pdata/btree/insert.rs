//! Insertion: shadow the path from the root down, splitting every full node before entering
//! it, so a split never has to climb back up.

use super::{Node, ValueRefs, new_node, shadow_node, write_node};
use crate::error::Result;
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
    let (root, mut node) = shadow_node(tm, root, value_size, refs)?;
    if node.len() >= node.capacity() {
        node = split_beneath(tm, root, node)?;
    }
    let mut at = root;
    loop {
        if node.leaf {
            let old = insert_into_leaf(&mut node, key, value);
            write_node(tm, at, &node)?;
            return Ok((root, old));
        }
        let next = step_down(tm, &mut node, key, value_size, refs)?;
        write_node(tm, at, &node)?;
        (at, node) = next;
    }
}

fn insert_into_leaf(node: &mut Node, key: u64, value: &[u8]) -> Option<Vec<u8>> {
    let pos = node.keys.partition_point(|&k| k < key);
    if node.keys.get(pos) == Some(&key) {
        let old = node.value(pos).to_vec();
        node.set_value(pos, value);
        return Some(old);
    }
    node.insert_at(pos, key, value);
    None
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

/// Shadows the child of `parent` that `key` belongs in, splits it if it is full, and returns
/// it (with its location) for the descent.
fn step_down(
    tm: &mut Tm,
    parent: &mut Node,
    key: u64,
    value_size: usize,
    refs: &mut dyn ValueRefs,
) -> Result<(u64, Node)> {
    let i = match parent.lower_bound(key) {
        Some(i) => i,
        None => {
            parent.keys[0] = key;
            0
        }
    };
    let (at, mut child) = shadow_node(tm, parent.child(i), value_size, refs)?;
    parent.set_child(i, at);
    if child.len() < child.capacity() {
        return Ok((at, child));
    }
    let right = child.split_off(child.len() / 2);
    let right_key = right.keys[0];
    write_node(tm, at, &child)?;
    let right_at = new_node(tm, &right)?;
    parent.insert_at(i + 1, right_key, &right_at.to_le_bytes());
    Ok(match key >= right_key {
        true => (right_at, right),
        false => (at, child),
    })
}
