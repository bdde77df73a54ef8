//! Transactions: a lazy copy-on-access overlay over the committed database.
//!
//! Like the C daemon, every node a transaction touches is recorded the first
//! time it is accessed. If that first access was a read, the node's
//! generation (or [`NO_GENERATION`] if it did not exist) is remembered and
//! checked at commit: any difference means an intervening change and the
//! commit fails with `EAGAIN`. Nodes first accessed by a write are not
//! checked. A transaction sees its own writes; watches fire at commit.

use std::collections::HashMap;

use super::{Change, Limits, NO_GENERATION, Node, Store, View};
use crate::perms::Perm;
use crate::wire::Errno;

#[derive(Clone, Debug)]
struct Entry {
    node: Option<Node>,
    read_generation: Option<u64>,
    modified: bool,
    orig_perms: Option<Vec<Perm>>,
    fire: Option<bool>,
}

/// An open transaction.
#[derive(Debug)]
pub struct Txn {
    entries: HashMap<String, Entry>,
    order: Vec<String>,
    max_entries: usize,
    failed: bool,
    owned_delta: HashMap<u16, isize>,
    total_delta: isize,
}

impl Txn {
    /// A new transaction touching at most `max_entries` nodes.
    pub fn new(max_entries: usize) -> Txn {
        Txn {
            entries: HashMap::new(),
            order: Vec::new(),
            max_entries,
            failed: false,
            owned_delta: HashMap::new(),
            total_delta: 0,
        }
    }

    /// Number of nodes accessed so far.
    pub fn accessed(&self) -> usize {
        self.entries.len()
    }

    fn account(&mut self, node: Option<&Node>, sign: isize) {
        if let Some(node) = node {
            *self.owned_delta.entry(node.owner()).or_insert(0) += sign;
            self.total_delta += sign;
        }
    }
}

/// Operations applied inside a transaction.
#[derive(Debug)]
pub struct TxnView<'a> {
    nodes: &'a HashMap<String, Node>,
    owned: &'a HashMap<u16, usize>,
    generation: &'a mut u64,
    limits: &'a Limits,
    txn: &'a mut Txn,
}

impl Store {
    /// A view through `txn` onto this store.
    pub fn txn_view<'a>(&'a mut self, txn: &'a mut Txn) -> TxnView<'a> {
        TxnView {
            nodes: &self.nodes,
            owned: &self.owned,
            generation: &mut self.generation,
            limits: &self.limits,
            txn,
        }
    }

    /// Ends `txn` by committing it: `EAGAIN` on conflict, `ENOMEM` if an
    /// operation inside it failed half-way (as the C daemon). On success the
    /// changes whose watches must fire are returned.
    pub fn commit(&mut self, mut txn: Txn) -> Result<Vec<Change>, Errno> {
        if txn.failed {
            return Err(Errno::Enomem);
        }
        for (path, entry) in &txn.entries {
            if let Some(read) = entry.read_generation {
                let now = self.nodes.get(path).map_or(NO_GENERATION, |n| n.generation);
                if now != read {
                    return Err(Errno::Eagain);
                }
            }
        }
        let mut changes = Vec::new();
        for path in std::mem::take(&mut txn.order) {
            let Some(entry) = txn.entries.remove(&path) else {
                continue;
            };
            if entry.modified {
                self.set(&path, entry.node);
            }
            if let Some(exact) = entry.fire {
                changes.push(Change {
                    path,
                    exact,
                    perms: None,
                    old_perms: entry.orig_perms,
                });
            }
        }
        Ok(changes)
    }
}

impl TxnView<'_> {
    /// Records the first access to `path`; `read` says whether it was a read.
    fn touch(&mut self, path: &str, read: bool) -> Result<&mut Entry, Errno> {
        if !self.txn.entries.contains_key(path) {
            if self.txn.entries.len() >= self.txn.max_entries {
                self.txn.failed = true;
                return Err(Errno::Enospc);
            }
            let global = self.nodes.get(path);
            let entry = Entry {
                node: global.cloned(),
                read_generation: read.then(|| global.map_or(NO_GENERATION, |n| n.generation)),
                modified: false,
                orig_perms: global.map(|n| n.perms.clone()),
                fire: None,
            };
            self.txn.entries.insert(path.to_owned(), entry);
            self.txn.order.push(path.to_owned());
        }
        self.txn.entries.get_mut(path).ok_or(Errno::Eio)
    }

    fn replace(&mut self, path: &str, node: Option<Node>) -> Result<(), Errno> {
        let old = self.touch(path, false)?.node.take();
        self.txn.account(old.as_ref(), -1);
        self.txn.account(node.as_ref(), 1);
        let entry = self.touch(path, false)?;
        entry.node = node;
        entry.modified = true;
        Ok(())
    }
}

impl View for TxnView<'_> {
    fn get(&mut self, path: &str) -> Result<Option<&Node>, Errno> {
        Ok(self.touch(path, true)?.node.as_ref())
    }

    fn put(&mut self, path: &str, mut node: Node) -> Result<(), Errno> {
        node.generation = Store::next_generation(self.generation);
        self.replace(path, Some(node))
    }

    fn delete(&mut self, path: &str) -> Result<(), Errno> {
        self.replace(path, None)
    }

    fn changed(&mut self, change: Change) {
        match self.txn.entries.get_mut(&change.path) {
            Some(entry) => {
                // A non-exact event replaces an exact one, not the reverse.
                entry.fire = Some(entry.fire.map_or(change.exact, |prev| prev && change.exact));
            }
            None => self.txn.failed = true,
        }
    }

    fn owned(&self, domid: u16) -> usize {
        let base = self.owned.get(&domid).copied().unwrap_or(0);
        let delta = self.txn.owned_delta.get(&domid).copied().unwrap_or(0);
        base.saturating_add_signed(delta)
    }

    fn total(&self) -> usize {
        self.nodes.len().saturating_add_signed(self.txn.total_delta)
    }

    fn limits(&self) -> &Limits {
        self.limits
    }
}
