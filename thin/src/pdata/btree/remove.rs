//! Removal: shadow the path from the root down, topping up every child that holds only the
//! minimum before entering it (merging it with a sibling, or taking entries from one), so no
//! node but the root ever falls below a third full. A root left with one child is replaced by
//! that child.

use super::{Node, ValueRefs, lookup, read_node, shadow_node, too_deep, write_node};
use crate::error::Result;
use crate::pdata::tm::Tm;

/// Removes `key`. Returns the tree's new root and the value removed, if the key was there;
/// the caller drops the removed value's reference if it holds one.
pub fn remove(
    tm: &mut Tm,
    root: u64,
    value_size: usize,
    key: u64,
    refs: &mut dyn ValueRefs,
) -> Result<(u64, Option<Vec<u8>>)> {
    if lookup(tm, root, value_size, key)?.is_none() {
        return Ok((root, None));
    }
    let (root, mut node) = shadow_node(tm, root, value_size, refs)?;
    let mut at = root;
    for _ in 0..super::MAX_DEPTH {
        if node.leaf {
            let pos = node.keys.partition_point(|&k| k < key);
            let old = node.value(pos).to_vec();
            node.remove_at(pos);
            write_node(tm, at, &node)?;
            return Ok((collapse_root(tm, root, value_size)?, Some(old)));
        }
        let next = step_down(tm, &mut node, key, value_size, refs)?;
        write_node(tm, at, &node)?;
        (at, node) = next;
    }
    Err(too_deep(root))
}

/// Replaces a root that is an internal node with one child by that child.
fn collapse_root(tm: &mut Tm, mut root: u64, value_size: usize) -> Result<u64> {
    loop {
        let node = read_node(tm, root, value_size)?;
        if node.leaf || node.len() != 1 {
            return Ok(root);
        }
        let child = node.child(0);
        tm.dec(root)?;
        root = child;
    }
}

fn step_down(
    tm: &mut Tm,
    parent: &mut Node,
    key: u64,
    value_size: usize,
    refs: &mut dyn ValueRefs,
) -> Result<(u64, Node)> {
    let i = parent.lower_bound(key).unwrap_or(0);
    let (at, child) = shadow_node(tm, parent.child(i), value_size, refs)?;
    parent.set_child(i, at);
    if child.len() > child.min_entries() || parent.len() < 2 {
        return Ok((at, child));
    }
    let j = if i + 1 < parent.len() { i + 1 } else { i - 1 };
    let (sibling_at, sibling) = shadow_node(tm, parent.child(j), value_size, refs)?;
    parent.set_child(j, sibling_at);
    let pair = match i < j {
        true => Pair::new(i, (at, child), (sibling_at, sibling)),
        false => Pair::new(j, (sibling_at, sibling), (at, child)),
    };
    pair.rebalance(tm, parent, key)
}

/// Two neighbouring children of one parent, the left one at entry `index`.
struct Pair {
    index: usize,
    left: (u64, Node),
    right: (u64, Node),
}

impl Pair {
    fn new(index: usize, left: (u64, Node), right: (u64, Node)) -> Pair {
        Pair { index, left, right }
    }

    /// Merges or evens out the pair; returns the child `key` belongs in.
    fn rebalance(mut self, tm: &mut Tm, parent: &mut Node, key: u64) -> Result<(u64, Node)> {
        let total = self.left.1.len() + self.right.1.len();
        if total <= self.left.1.capacity() {
            self.left.1.append(&mut self.right.1);
            parent.remove_at(self.index + 1);
            tm.dec(self.right.0)?;
            write_node(tm, self.left.0, &self.left.1)?;
            return Ok(self.left);
        }
        self.even_out(total / 2);
        parent.keys[self.index + 1] = self.right.1.keys[0];
        write_node(tm, self.left.0, &self.left.1)?;
        write_node(tm, self.right.0, &self.right.1)?;
        Ok(match key >= self.right.1.keys[0] {
            true => self.right,
            false => self.left,
        })
    }

    /// Moves entries across so the left node holds `target` of them.
    fn even_out(&mut self, target: usize) {
        let (left, right) = (&mut self.left.1, &mut self.right.1);
        if left.len() < target {
            let rest = right.split_off(target - left.len());
            left.append(right);
            *right = rest;
        } else {
            let mut moved = left.split_off(target);
            moved.append(right);
            *right = moved;
        }
    }
}
