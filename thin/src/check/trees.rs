//! Walking every B-tree without trusting it: each node is counted once per reference and
//! walked once, whoever else shares it; a node met again on its own path is a cycle.

use super::{Area, Checker, describe};
use crate::meta::{DETAILS_SIZE, DeviceDetails, MAPPING_SIZE, Mapping};
use crate::pdata::Kind;
use crate::pdata::block::{self, get_u32, get_u64};
use crate::pdata::btree::{MAX_DEPTH, Node};
use crate::pdata::sm::IndexEntry;

/// Value size of the space maps' overflow count trees.
const COUNT_SIZE: usize = 4;
/// Value size of the data space map's index tree.
const INDEX_SIZE: usize = 16;

/// The trees of a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Tree {
    /// The top level of the mapping tree: device id to block tree root.
    Top,
    /// One device's block tree.
    Device(u64),
    /// The device details tree.
    Details,
    /// The data space map's index.
    DataIndex,
    /// A space map's overflow counts: 0 for data, 1 for metadata.
    Overflow(usize),
}

impl Tree {
    fn value_size(self) -> usize {
        match self {
            Tree::Top | Tree::Device(_) => MAPPING_SIZE,
            Tree::Details => DETAILS_SIZE,
            Tree::DataIndex => INDEX_SIZE,
            Tree::Overflow(_) => COUNT_SIZE,
        }
    }

    fn name(self) -> String {
        match self {
            Tree::Top => "the top-level mapping tree".into(),
            Tree::Device(id) => format!("the block tree of device {id}"),
            Tree::Details => "the device details tree".into(),
            Tree::DataIndex => "the data space map's index tree".into(),
            Tree::Overflow(0) => "the data space map's overflow tree".into(),
            Tree::Overflow(_) => "the metadata space map's overflow tree".into(),
        }
    }

    /// Trees whose nodes may be shared: the block trees of different devices.
    fn family(self) -> Tree {
        match self {
            Tree::Device(_) => Tree::Device(0),
            other => other,
        }
    }

    fn device(self) -> Option<u64> {
        match self {
            Tree::Device(id) => Some(id),
            _ => None,
        }
    }
}

/// What is known of a node.
pub(super) enum Seen {
    /// Being walked: met again below itself, it is a cycle.
    Walking,
    /// Walked: the tree family it belongs to, and its subtree.
    Done { family: Tree, subtree: Subtree },
}

/// A walked subtree: its entries, and its lowest and highest keys (none if it is empty or
/// could not be read), so a second parent can check them against its own range.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Subtree {
    entries: u64,
    keys: Option<(u64, u64)>,
}

impl Subtree {
    fn add(&mut self, other: Subtree) {
        self.entries = self.entries.saturating_add(other.entries);
        self.keys = match (self.keys, other.keys) {
            (Some((a, b)), Some((c, d))) => Some((a.min(c), b.max(d))),
            (one, other) => one.or(other),
        };
    }
}

/// Where a node sits: its depth and the key range its parent allows (end open, `None` for the
/// rightmost path).
#[derive(Clone)]
struct Place {
    depth: usize,
    start: u64,
    end: Option<u64>,
}

impl Checker {
    /// Walks the tree of kind `tree` at `root`, counting one reference to the root; returns
    /// the number of entries it holds.
    pub(super) fn walk(&mut self, tree: Tree, root: u64) -> u64 {
        let place = Place {
            depth: 0,
            start: 0,
            end: None,
        };
        self.walk_node(tree, root, place).entries
    }

    fn walk_node(&mut self, tree: Tree, location: u64, place: Place) -> Subtree {
        if !self.reference(location, &tree.name(), Area::Btree) || self.report.full() {
            return Subtree::default();
        }
        match self.nodes.get(&location) {
            Some(Seen::Walking) => {
                let message = format!("{} loops back to node {location} (a cycle)", tree.name());
                self.node_problem(tree, location, message);
                return Subtree::default();
            }
            Some(&Seen::Done { family, subtree }) => {
                if family != tree.family() {
                    let message = format!("node of {} is also in {}", family.name(), tree.name());
                    self.node_problem(tree, location, message);
                }
                if let Some(keys) = subtree.keys {
                    self.check_range(tree, location, keys, &place);
                }
                return subtree;
            }
            None => {}
        }
        if place.depth >= MAX_DEPTH {
            let message = format!("{} is deeper than {MAX_DEPTH} levels", tree.name());
            self.node_problem(tree, location, message);
            return Subtree::default();
        }
        self.nodes.insert(location, Seen::Walking);
        let subtree = match self.read_node(tree, location) {
            Some(node) => {
                self.check_shape(tree, location, &node, &place);
                self.walk_entries(tree, location, &node, &place)
            }
            None => Subtree::default(),
        };
        let family = tree.family();
        self.nodes.insert(location, Seen::Done { family, subtree });
        subtree
    }

    fn walk_entries(&mut self, tree: Tree, location: u64, node: &Node, place: &Place) -> Subtree {
        if node.leaf {
            self.leaf(tree, location, node);
            return Subtree {
                entries: node.len() as u64,
                keys: node.keys.first().copied().zip(node.keys.last().copied()),
            };
        }
        let mut subtree = Subtree::default();
        for i in 0..node.len() {
            let child = Place {
                depth: place.depth + 1,
                start: node.keys[i],
                end: node.keys.get(i + 1).copied().or(place.end),
            };
            subtree.add(self.walk_node(tree, node.child(i), child));
        }
        subtree
    }

    fn node_problem(&mut self, tree: Tree, location: u64, message: String) {
        self.problem(Area::Btree, Some(location), tree.device(), message);
    }

    fn read_node(&mut self, tree: Tree, location: u64) -> Option<Node> {
        let decoded = self.dev.read_raw(location).and_then(|b| {
            block::verify(&b, Kind::Node, location)?;
            Node::decode(&b, location, tree.value_size())
        });
        match decoded {
            Ok(node) => Some(node),
            Err(e) => {
                let message = format!("{}: {}", tree.name(), describe(e));
                self.node_problem(tree, location, message);
                None
            }
        }
    }

    fn check_shape(&mut self, tree: Tree, location: u64, node: &Node, place: &Place) {
        let name = tree.name();
        if place.depth > 0 && node.len() < node.min_entries().max(1) {
            let message = format!(
                "{name}: node holds {} entries, fewer than the {} a non-root node needs",
                node.len(),
                node.min_entries().max(1)
            );
            self.node_problem(tree, location, message);
        }
        if let (Some(&first), Some(&last)) = (node.keys.first(), node.keys.last()) {
            self.check_range(tree, location, (first, last), place);
        }
    }

    /// Checks that the keys `first..=last` lie inside the range the parent gives.
    fn check_range(&mut self, tree: Tree, location: u64, (first, last): (u64, u64), place: &Place) {
        let after_end = place.end.is_some_and(|end| last >= end);
        if first < place.start || after_end {
            let end = place.end.map_or("the end".into(), |e| e.to_string());
            let message = format!(
                "{}: keys {first}..={last} lie outside the parent's range {}..{end}",
                tree.name(),
                place.start
            );
            self.node_problem(tree, location, message);
        }
    }

    /// Takes in the entries of a leaf (walked once, however many parents share it).
    fn leaf(&mut self, tree: Tree, location: u64, node: &Node) {
        for i in 0..node.len() {
            let (key, value) = (node.keys[i], node.value(i));
            match tree {
                Tree::Top => {
                    self.top.insert(key, get_u64(value, 0));
                }
                Tree::Device(id) => self.mapping(id, location, key, Mapping::decode(value)),
                Tree::Details => {
                    self.details.insert(key, DeviceDetails::decode(value));
                }
                Tree::DataIndex => self.data_index.push((key, IndexEntry::decode(value))),
                Tree::Overflow(which) => {
                    let slot = &mut self.overflow[which.min(1)];
                    slot.insert(key, get_u32(value, 0));
                }
            }
        }
    }

    fn mapping(&mut self, id: u64, location: u64, vblock: u64, m: Mapping) {
        let nr_data = self.sb.data_sm.nr_blocks;
        if m.block >= nr_data {
            let message = format!(
                "block {vblock} maps to data block {}, past the end ({nr_data} blocks)",
                m.block
            );
            self.problem(Area::Mappings, Some(location), Some(id), message);
        } else {
            self.data_refs.push(m.block);
        }
        if m.time > self.sb.time {
            let message = format!(
                "block {vblock} is stamped with time {}, after the pool's time {}",
                m.time, self.sb.time
            );
            self.problem(Area::Mappings, Some(location), Some(id), message);
        }
    }
}
