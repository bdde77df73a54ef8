//! Database operations with the C daemon's permission, quota and error
//! semantics. Paths given here are already canonical (see
//! [`crate::path::canonicalize`]).

use super::{Change, Node, View};
use crate::path::{basename, child, parent};
use crate::perms::{Caller, Perm, Rights, rights};
use crate::wire::{Errno, PAYLOAD_MAX};

/// Access a request needs on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Read access.
    Read,
    /// Write access.
    Write,
    /// Write access as the owner (`SET_PERMS`).
    Owner,
}

impl Need {
    fn all_granted(self, r: Rights) -> bool {
        match self {
            Need::Read => r.read,
            Need::Write => r.write,
            Need::Owner => r.write && r.owner,
        }
    }

    fn any_granted(self, r: Rights) -> bool {
        match self {
            Need::Read => r.read,
            Need::Write => r.write,
            Need::Owner => r.write || r.owner,
        }
    }
}

/// Checks `need` on `path`. A missing or forbidden node yields `ENOENT` or
/// `EACCES`; as in C, `EACCES` replaces the answer whenever the nearest
/// existing ancestor does not grant the access either, so a guest learns
/// nothing about nodes it may not see.
pub fn check<V: View + ?Sized>(
    v: &mut V,
    who: &Caller,
    path: &str,
    need: Need,
) -> Result<(), Errno> {
    let err = match v.get(path)? {
        Some(node) if need.all_granted(rights(who, &node.perms)) => return Ok(()),
        Some(_) => Errno::Eacces,
        None => Errno::Enoent,
    };
    let mut name = path;
    loop {
        name = parent(name);
        if let Some(node) = v.get(name)? {
            let granted = need.any_granted(rights(who, &node.perms));
            return Err(if granted { err } else { Errno::Eacces });
        }
        if name == "/" {
            return Err(Errno::Eacces);
        }
    }
}

fn node<V: View + ?Sized>(v: &mut V, path: &str) -> Result<Node, Errno> {
    v.get(path)?.cloned().ok_or(Errno::Enoent)
}

fn check_size<V: View + ?Sized>(v: &V, who: &Caller, node: &Node) -> Result<(), Errno> {
    if !who.privileged && node.acc_size() > v.limits().guest_node_size {
        return Err(Errno::Enospc);
    }
    Ok(())
}

fn changed<V: View + ?Sized>(v: &mut V, path: &str, exact: bool, perms: &[Perm]) {
    v.changed(Change {
        path: path.to_owned(),
        exact,
        perms: Some(perms.to_vec()),
        old_perms: None,
    });
}

/// `READ`: the node's value.
pub fn read<V: View + ?Sized>(v: &mut V, who: &Caller, path: &str) -> Result<Vec<u8>, Errno> {
    check(v, who, path, Need::Read)?;
    Ok(node(v, path)?.value)
}

/// `WRITE`: sets the value, creating the node and missing parents.
pub fn write<V: View + ?Sized>(
    v: &mut V,
    who: &Caller,
    path: &str,
    value: &[u8],
) -> Result<(), Errno> {
    match check(v, who, path, Need::Write) {
        Ok(()) => {
            let mut n = node(v, path)?;
            n.value = value.to_vec();
            check_size(v, who, &n)?;
            let perms = n.perms.clone();
            v.put(path, n)?;
            changed(v, path, false, &perms);
            Ok(())
        }
        Err(Errno::Enoent) => create(v, who, path, value),
        Err(e) => Err(e),
    }
}

/// `MKDIR`: ensures the node exists; an existing node is left alone.
pub fn mkdir<V: View + ?Sized>(v: &mut V, who: &Caller, path: &str) -> Result<(), Errno> {
    match check(v, who, path, Need::Write) {
        Ok(()) => Ok(()),
        Err(Errno::Enoent) => create(v, who, path, &[]),
        Err(e) => Err(e),
    }
}

/// Creates `path` and its missing ancestors. New nodes inherit their
/// parent's permissions; a guest becomes the owner of what it creates.
fn create<V: View + ?Sized>(
    v: &mut V,
    who: &Caller,
    path: &str,
    value: &[u8],
) -> Result<(), Errno> {
    let mut missing = vec![path];
    let mut cur = parent(path);
    while v.get(cur)?.is_none() {
        if cur == "/" {
            return Err(Errno::Enoent);
        }
        missing.push(cur);
        cur = parent(cur);
    }
    check_node_quota(v, who, missing.len())?;
    let plan = plan_create(v, who, cur, &missing, value)?;
    let perms = plan
        .last()
        .map(|(_, n)| n.perms.clone())
        .unwrap_or_default();
    for (p, n) in plan {
        v.put(&p, n)?;
    }
    changed(v, path, false, &perms);
    Ok(())
}

fn check_node_quota<V: View + ?Sized>(v: &V, who: &Caller, new: usize) -> Result<(), Errno> {
    let over = if who.privileged {
        v.total().saturating_add(new) > v.limits().max_nodes
    } else {
        v.owned(who.domid).saturating_add(new) > v.limits().guest_nodes
    };
    if over { Err(Errno::Enospc) } else { Ok(()) }
}

/// Builds every node to write (existing parent first) and checks sizes,
/// so nothing is written if any check fails.
fn plan_create<V: View + ?Sized>(
    v: &mut V,
    who: &Caller,
    existing: &str,
    missing: &[&str],
    value: &[u8],
) -> Result<Vec<(String, Node)>, Errno> {
    let mut plan = Vec::with_capacity(missing.len() + 1);
    let mut cur_path = existing.to_owned();
    let mut cur = node(v, existing)?;
    for name in missing.iter().rev() {
        cur.children.push(basename(name).to_owned());
        check_size(v, who, &cur)?;
        let mut perms = cur.perms.clone();
        if let (false, Some(first)) = (who.privileged, perms.first_mut()) {
            first.domid = who.domid;
        }
        let next = Node::empty(perms);
        plan.push((std::mem::replace(&mut cur_path, (*name).to_owned()), cur));
        cur = next;
    }
    cur.value = value.to_vec();
    check_size(v, who, &cur)?;
    plan.push((cur_path, cur));
    Ok(plan)
}

/// `RM`: removes the node and everything below it. A missing node is fine
/// if its parent exists; removing `/` is `EINVAL`.
pub fn rm<V: View + ?Sized>(v: &mut V, who: &Caller, path: &str) -> Result<(), Errno> {
    match check(v, who, path, Need::Write) {
        Ok(()) => {}
        Err(Errno::Enoent) => {
            return match v.get(parent(path))? {
                Some(_) => Ok(()),
                None => Err(Errno::Enoent),
            };
        }
        Err(e) => return Err(e),
    }
    if path == "/" {
        return Err(Errno::Einval);
    }
    for p in subtree_post_order(v, path)? {
        let perms = node(v, &p)?.perms;
        v.delete(&p)?;
        changed(v, &p, p != path, &perms);
    }
    let parent_path = parent(path);
    let mut parent_node = node(v, parent_path).map_err(|_| Errno::Einval)?;
    let name = basename(path);
    parent_node.children.retain(|c| c != name);
    v.put(parent_path, parent_node)
}

/// All paths of the subtree at `root`, children before their parent.
fn subtree_post_order<V: View + ?Sized>(v: &mut V, root: &str) -> Result<Vec<String>, Errno> {
    let mut pre = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(p) = stack.pop() {
        if let Some(n) = v.get(&p)? {
            stack.extend(n.children.iter().map(|c| child(&p, c)));
            pre.push(p);
        }
    }
    pre.reverse();
    Ok(pre)
}

/// `DIRECTORY`: child names, each NUL-terminated.
pub fn directory<V: View + ?Sized>(v: &mut V, who: &Caller, path: &str) -> Result<Vec<u8>, Errno> {
    check(v, who, path, Need::Read)?;
    Ok(node(v, path)?.children_bytes())
}

/// `DIRECTORY_PART`: `<generation>\0` then as many whole child names from
/// byte `offset` as fit, plus a final extra NUL once the list is complete.
pub fn directory_part<V: View + ?Sized>(
    v: &mut V,
    who: &Caller,
    path: &str,
    offset: usize,
) -> Result<Vec<u8>, Errno> {
    check(v, who, path, Need::Read)?;
    let n = node(v, path)?;
    let children = n.children_bytes();
    let mut out = format!("{}", n.generation).into_bytes();
    out.push(0);
    let Some(rest) = children.get(offset..).filter(|r| !r.is_empty()) else {
        out.push(0);
        return Ok(out);
    };
    let max = PAYLOAD_MAX.saturating_sub(out.len() + 1);
    let mut len = 0;
    for name in rest.split_inclusive(|&b| b == 0) {
        if len + name.len() > max {
            break;
        }
        len += name.len();
    }
    out.extend_from_slice(&rest[..len]);
    if len == rest.len() {
        out.push(0);
    }
    Ok(out)
}

/// `GET_PERMS`: the permission list.
pub fn get_perms<V: View + ?Sized>(
    v: &mut V,
    who: &Caller,
    path: &str,
) -> Result<Vec<Perm>, Errno> {
    check(v, who, path, Need::Read)?;
    Ok(node(v, path)?.perms)
}

/// `SET_PERMS`: replaces the permission list; owner or privileged only, and
/// a guest may not give the node away (`EPERM`).
pub fn set_perms<V: View + ?Sized>(
    v: &mut V,
    who: &Caller,
    path: &str,
    perms: &[Perm],
) -> Result<(), Errno> {
    let first = perms.first().ok_or(Errno::Einval)?;
    if !who.privileged && perms.len() > v.limits().guest_perms {
        return Err(Errno::Enospc);
    }
    check(v, who, path, Need::Owner)?;
    let mut n = node(v, path)?;
    if !who.privileged && first.domid != n.owner() {
        return Err(Errno::Eperm);
    }
    let old = std::mem::replace(&mut n.perms, perms.to_vec());
    check_size(v, who, &n)?;
    v.put(path, n)?;
    v.changed(Change {
        path: path.to_owned(),
        exact: false,
        perms: Some(perms.to_vec()),
        old_perms: Some(old),
    });
    Ok(())
}
