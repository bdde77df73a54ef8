//! The node database: a flat map from absolute path to node, with per-owner
//! node accounting, a global generation counter and transaction overlays.
//!
//! Operations ([`ops`]) are written once against the [`View`] trait and run
//! either on the global database ([`GlobalView`]) or inside a transaction
//! ([`TxnView`]), exactly like the C daemon's `access_node()` split.

pub mod ops;
mod txn;

#[cfg(test)]
mod tests;

use std::collections::HashMap;

use crate::perms::{Access, Perm};
use crate::wire::Errno;

pub use txn::{Txn, TxnView};

/// Generation recorded for a node that did not exist when read.
pub const NO_GENERATION: u64 = u64::MAX;

/// One xenstore node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Binary value (usually ASCII, no NUL).
    pub value: Vec<u8>,
    /// Child names in creation order.
    pub children: Vec<String>,
    /// Permissions; the first entry is the owner and default.
    pub perms: Vec<Perm>,
    /// Generation of the last modification.
    pub generation: u64,
}

impl Node {
    /// An empty node with the given permissions.
    pub fn empty(perms: Vec<Perm>) -> Node {
        Node {
            value: Vec::new(),
            children: Vec::new(),
            perms,
            generation: 0,
        }
    }

    /// Owner domain (first permission entry).
    pub fn owner(&self) -> u16 {
        self.perms.first().map_or(0, |p| p.domid)
    }

    /// Accounted size, as the C daemon's `calc_node_acc_size()`: header,
    /// 8 bytes per permission, value and NUL-terminated child names.
    pub fn acc_size(&self) -> usize {
        let children: usize = self.children.iter().map(|c| c.len() + 1).sum();
        16 + 8 * self.perms.len() + self.value.len() + children
    }

    /// Child names as NUL-terminated strings (`DIRECTORY` payload).
    pub fn children_bytes(&self) -> Vec<u8> {
        crate::wire::join_nul(&self.children)
    }
}

/// Quotas and hard bounds. Guest (unprivileged) quotas follow the C
/// daemon's defaults; privileged connections get generous bounds that only
/// protect the emulator's memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Nodes a guest domain may own.
    pub guest_nodes: usize,
    /// Watches per guest connection.
    pub guest_watches: usize,
    /// Open transactions per guest connection.
    pub guest_transactions: usize,
    /// Permission entries per node set by a guest.
    pub guest_perms: usize,
    /// Accounted node size a guest may write.
    pub guest_node_size: usize,
    /// Nodes a guest transaction may touch.
    pub guest_txn_nodes: usize,
    /// Nodes in the whole store.
    pub max_nodes: usize,
    /// Watches per privileged connection.
    pub conn_watches: usize,
    /// Open transactions per privileged connection.
    pub conn_transactions: usize,
    /// Nodes a privileged transaction may touch.
    pub txn_nodes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            guest_nodes: 1000,
            guest_watches: 128,
            guest_transactions: 10,
            guest_perms: 5,
            guest_node_size: 2048,
            guest_txn_nodes: 1024,
            max_nodes: 262_144,
            conn_watches: 65_536,
            conn_transactions: 1024,
            txn_nodes: 65_536,
        }
    }
}

/// A node change that may fire watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// Absolute path of the changed node (or `@special`).
    pub path: String,
    /// Fire only watches on exactly this path (removed descendants).
    pub exact: bool,
    /// Node permissions to check readability against; `None`: look up.
    pub perms: Option<Vec<Perm>>,
    /// Permissions before the change (`SET_PERMS`, transactions).
    pub old_perms: Option<Vec<Perm>>,
}

/// Access to nodes for the operations in [`ops`].
pub trait View {
    /// Reads a node (recorded for conflict detection in transactions).
    fn get(&mut self, path: &str) -> Result<Option<&Node>, Errno>;
    /// Creates or replaces a node, bumping its generation.
    fn put(&mut self, path: &str, node: Node) -> Result<(), Errno>;
    /// Removes a single node (children are the caller's business).
    fn delete(&mut self, path: &str) -> Result<(), Errno>;
    /// Records a change for watches (fired now, or at commit).
    fn changed(&mut self, change: Change);
    /// Nodes owned by `domid`, including uncommitted ones.
    fn owned(&self, domid: u16) -> usize;
    /// Nodes in the store, including uncommitted ones.
    fn total(&self) -> usize;
    /// The configured limits.
    fn limits(&self) -> &Limits;
}

/// The database.
#[derive(Debug)]
pub struct Store {
    nodes: HashMap<String, Node>,
    owned: HashMap<u16, usize>,
    generation: u64,
    limits: Limits,
}

impl Store {
    /// A fresh store with the C daemon's initial nodes: `/`, `/tool`,
    /// `/tool/xenstored` and the special `@releaseDomain` and
    /// `@introduceDomain`, all owned by dom0 with perms `n0`.
    pub fn new(limits: Limits) -> Store {
        let mut store = Store {
            nodes: HashMap::new(),
            owned: HashMap::new(),
            generation: 0,
            limits,
        };
        let perms = vec![Perm::new(Access::None, 0)];
        let mut root = Node::empty(perms.clone());
        root.children.push("tool".to_owned());
        let mut tool = Node::empty(perms.clone());
        tool.children.push("xenstored".to_owned());
        store.set("/", Some(root));
        store.set("/tool", Some(tool));
        for path in ["/tool/xenstored", "@releaseDomain", "@introduceDomain"] {
            store.set(path, Some(Node::empty(perms.clone())));
        }
        store
    }

    /// Reads a node of the committed database.
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    /// Number of committed nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the store is empty (never: the root always exists).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Committed nodes owned by `domid`.
    pub fn owned(&self, domid: u16) -> usize {
        self.owned.get(&domid).copied().unwrap_or(0)
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// A view on the committed database.
    pub fn global(&mut self) -> GlobalView<'_> {
        GlobalView {
            store: self,
            changes: Vec::new(),
        }
    }

    /// Next generation number.
    fn next_generation(generation: &mut u64) -> u64 {
        *generation = generation.wrapping_add(1);
        if *generation == NO_GENERATION {
            *generation = 1;
        }
        *generation
    }

    /// Stores or removes a node with a fresh generation, keeping per-owner
    /// accounting right.
    fn set(&mut self, path: &str, node: Option<Node>) {
        let old_owner = self.nodes.get(path).map(Node::owner);
        if let Some(owner) = old_owner {
            let count = self.owned.entry(owner).or_insert(0);
            *count = count.saturating_sub(1);
        }
        match node {
            Some(mut node) => {
                *self.owned.entry(node.owner()).or_insert(0) += 1;
                node.generation = Self::next_generation(&mut self.generation);
                self.nodes.insert(path.to_owned(), node);
            }
            None => {
                self.nodes.remove(path);
            }
        }
    }
}

/// Operations applied directly to the committed database.
#[derive(Debug)]
pub struct GlobalView<'a> {
    store: &'a mut Store,
    changes: Vec<Change>,
}

impl GlobalView<'_> {
    /// The watch-relevant changes made through this view.
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }
}

impl View for GlobalView<'_> {
    fn get(&mut self, path: &str) -> Result<Option<&Node>, Errno> {
        Ok(self.store.nodes.get(path))
    }

    fn put(&mut self, path: &str, node: Node) -> Result<(), Errno> {
        self.store.set(path, Some(node));
        Ok(())
    }

    fn delete(&mut self, path: &str) -> Result<(), Errno> {
        self.store.set(path, None);
        Ok(())
    }

    fn changed(&mut self, change: Change) {
        self.changes.push(change);
    }

    fn owned(&self, domid: u16) -> usize {
        self.store.owned(domid)
    }

    fn total(&self) -> usize {
        self.store.nodes.len()
    }

    fn limits(&self) -> &Limits {
        &self.store.limits
    }
}
