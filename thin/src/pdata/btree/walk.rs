//! Reading a whole tree, or a key range of it, in key order, checking its shape on the way:
//! bounded depth, and every child's keys inside the range its parent gives it.

use std::ops::Range;

use super::{MAX_DEPTH, Node, read_node, too_deep};
use crate::error::{Error, Result};
use crate::pdata::tm::Tm;

/// Calls `f` with every node of the tree, parents before children, with the node's location,
/// its depth and the key range its parent allows. `f` returns whether to enter the node's
/// children (false for a subtree already seen).
pub fn visit_nodes(
    tm: &mut Tm,
    root: u64,
    value_size: usize,
    f: &mut dyn FnMut(u64, &Node, usize) -> Result<bool>,
) -> Result<()> {
    visit(tm, root, value_size, 0, 0..u64::MAX, f)
}

fn visit(
    tm: &mut Tm,
    location: u64,
    value_size: usize,
    depth: usize,
    bounds: Range<u64>,
    f: &mut dyn FnMut(u64, &Node, usize) -> Result<bool>,
) -> Result<()> {
    if depth >= MAX_DEPTH {
        return Err(too_deep(location));
    }
    let node = read_node(tm, location, value_size)?;
    check_bounds(&node, location, depth, &bounds)?;
    if !f(location, &node, depth)? || node.leaf {
        return Ok(());
    }
    for i in 0..node.len() {
        let end = node.keys.get(i + 1).copied().unwrap_or(bounds.end);
        let child_bounds = node.keys[i]..end;
        visit(tm, node.child(i), value_size, depth + 1, child_bounds, f)?;
    }
    Ok(())
}

fn check_bounds(node: &Node, location: u64, depth: usize, bounds: &Range<u64>) -> Result<()> {
    if depth > 0 && node.is_empty() {
        return Err(Error::corrupt(format!("B-tree node {location} is empty")));
    }
    let first = node.keys.first().copied().unwrap_or(bounds.start);
    let last = node.keys.last().copied().unwrap_or(bounds.start);
    // The last bound is open, except for the rightmost path, which may hold u64::MAX itself.
    let past_end = last >= bounds.end && bounds.end != u64::MAX;
    if first < bounds.start || past_end {
        return Err(Error::corrupt(format!(
            "B-tree node {location} holds keys {first}..={last} outside its parent's range {}..{}",
            bounds.start, bounds.end
        )));
    }
    Ok(())
}

/// Calls `f` with every key and value of the tree, in key order.
pub fn for_each(
    tm: &mut Tm,
    root: u64,
    value_size: usize,
    f: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
) -> Result<()> {
    visit_nodes(tm, root, value_size, &mut |_, node, _| {
        if node.leaf {
            for i in 0..node.len() {
                f(node.keys[i], node.value(i))?;
            }
        }
        Ok(true)
    })
}

/// The entries whose keys lie in `keys`, in key order.
pub fn range(
    tm: &mut Tm,
    root: u64,
    value_size: usize,
    keys: Range<u64>,
) -> Result<Vec<(u64, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut walk = RangeWalk {
        value_size,
        keys,
        out: &mut out,
    };
    walk.collect(tm, root, 0, 0..u64::MAX)?;
    Ok(out)
}

struct RangeWalk<'a> {
    value_size: usize,
    keys: Range<u64>,
    out: &'a mut Vec<(u64, Vec<u8>)>,
}

impl RangeWalk<'_> {
    fn collect(
        &mut self,
        tm: &mut Tm,
        location: u64,
        depth: usize,
        bounds: Range<u64>,
    ) -> Result<()> {
        if depth >= MAX_DEPTH {
            return Err(too_deep(location));
        }
        let node = read_node(tm, location, self.value_size)?;
        check_bounds(&node, location, depth, &bounds)?;
        let keys = self.keys.clone();
        let first = node.lower_bound(keys.start).unwrap_or(0);
        for i in first..node.len() {
            if node.keys[i] >= keys.end {
                break;
            }
            if node.leaf {
                if node.keys[i] >= keys.start {
                    self.out.push((node.keys[i], node.value(i).to_vec()));
                }
            } else {
                let end = node.keys.get(i + 1).copied().unwrap_or(bounds.end);
                self.collect(tm, node.child(i), depth + 1, node.keys[i]..end)?;
            }
        }
        Ok(())
    }
}
