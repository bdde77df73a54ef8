//! Daemon state shared by all connections: the store, connections with
//! their watches and transactions, and introduced domains.

use std::collections::HashMap;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use super::Listener;
use super::conn::Outbox;
use crate::path::{is_child, parent};
use crate::perms::{Caller, rights};
use crate::store::{Change, Store, Txn};
use crate::wire::{Message, MsgType, PAYLOAD_MAX};

/// A registered watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Watch {
    /// Canonical watched path (or `@special`).
    pub path: String,
    /// Client token, echoed in events.
    pub token: Vec<u8>,
    /// Home prefix stripped from event paths of relative watches.
    pub prefix_len: usize,
}

impl Watch {
    /// The event path reported for `changed` (relative if the watch was).
    fn event_path<'a>(&self, changed: &'a str) -> &'a str {
        match (self.prefix_len, changed.get(self.prefix_len..)) {
            (0, _) | (_, None) => changed,
            (_, Some(rel)) => rel,
        }
    }
}

/// One client connection.
#[derive(Debug)]
pub(crate) struct Conn {
    /// Identity (target filled in from [`State::targets`] on use).
    pub caller: Caller,
    /// Registered watches, in registration order.
    pub watches: Vec<Watch>,
    /// Open transactions by id.
    pub txns: HashMap<u32, Txn>,
    /// Next transaction id to try.
    pub next_txn: u32,
    /// Outgoing queue.
    pub outbox: Arc<Outbox>,
    /// Socket handle used to force the connection closed.
    pub stream: UnixStream,
}

impl Conn {
    /// Closes the socket and drops queued output; the threads then exit.
    pub fn kill(&self) {
        self.outbox.close();
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// Everything behind the daemon's single lock.
#[derive(Debug)]
pub(crate) struct State {
    /// The node database.
    pub store: Store,
    /// Live connections.
    pub conns: HashMap<u64, Conn>,
    /// Introduced domains and their listening sockets.
    pub domains: HashMap<u16, Listener>,
    /// `SET_TARGET` relations: domain -> target.
    pub targets: HashMap<u16, u16>,
    /// Next connection id.
    pub next_conn: u64,
}

impl State {
    /// The effective caller of connection `id`.
    pub fn caller(&self, id: u64) -> Option<Caller> {
        let conn = self.conns.get(&id)?;
        let mut caller = conn.caller;
        if !caller.privileged {
            caller.target = self.targets.get(&caller.domid).copied();
        }
        Some(caller)
    }

    fn effective(&self, conn: &Conn) -> Caller {
        let mut caller = conn.caller;
        if !caller.privileged {
            caller.target = self.targets.get(&caller.domid).copied();
        }
        caller
    }

    /// Sends watch events for `changes` to every matching watch whose
    /// connection may see the node (C `fire_watches()`).
    pub fn fire(&self, changes: &[Change]) {
        for change in changes {
            for conn in self.conns.values() {
                if !self.watch_permitted(&self.effective(conn), change) {
                    continue;
                }
                for w in &conn.watches {
                    let hit = if change.exact {
                        w.path == change.path
                    } else {
                        is_child(&change.path, &w.path)
                    };
                    if hit {
                        send_event(conn, w.event_path(&change.path), &w.token, false);
                    }
                }
            }
        }
    }

    /// Fires `@introduceDomain` / `@releaseDomain` (exact matches only).
    pub fn fire_special(&self, name: &str) {
        let change = Change {
            path: name.to_owned(),
            exact: true,
            perms: None,
            old_perms: None,
        };
        for conn in self.conns.values() {
            if !self.watch_permitted(&self.effective(conn), &change) {
                continue;
            }
            for w in conn.watches.iter().filter(|w| w.path == name) {
                send_event(conn, name, &w.token, true);
            }
        }
    }

    /// A watcher must be able to read the node (before or after the
    /// change) or its parent.
    fn watch_permitted(&self, who: &Caller, change: &Change) -> bool {
        if who.privileged {
            return true;
        }
        if change
            .old_perms
            .as_deref()
            .is_some_and(|p| rights(who, p).read)
        {
            return true;
        }
        let perms = match &change.perms {
            Some(p) => Some(p.as_slice()),
            None => self.store.get(&change.path).map(|n| n.perms.as_slice()),
        };
        let Some(perms) = perms else {
            return false;
        };
        if rights(who, perms).read {
            return true;
        }
        self.store
            .get(parent(&change.path))
            .is_some_and(|n| rights(who, &n.perms).read)
    }

    /// Removes a connection with its watches and transactions.
    pub fn remove_conn(&mut self, id: u64) -> Option<Conn> {
        self.conns.remove(&id)
    }
}

/// Queues a `WATCH_EVENT` (`path\0token\0`, req_id and tx_id 0).
pub(crate) fn send_event(conn: &Conn, path: &str, token: &[u8], special: bool) {
    let mut payload = Vec::with_capacity(path.len() + token.len() + 2);
    payload.extend_from_slice(path.as_bytes());
    payload.push(0);
    payload.extend_from_slice(token);
    payload.push(0);
    if payload.len() > PAYLOAD_MAX {
        return;
    }
    if let Ok(bytes) = Message::new(MsgType::WatchEvent, 0, 0, payload).to_bytes() {
        conn.outbox.push_event(bytes, special);
    }
}
