use super::ops::{self, Need};
use super::*;
use crate::perms::{Caller, Perm};

const D0: Caller = Caller::DOM0;

fn perms(list: &[&str]) -> Vec<Perm> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn store() -> Store {
    Store::new(Limits::default())
}

#[test]
fn write_creates_parents_and_read_returns_value() {
    let mut s = store();
    ops::write(&mut s.global(), &D0, "/a/b/c", b"v").unwrap();
    let mut g = s.global();
    assert_eq!(ops::read(&mut g, &D0, "/a/b/c").unwrap(), b"v");
    assert_eq!(ops::read(&mut g, &D0, "/a/b").unwrap(), b"");
    assert_eq!(ops::directory(&mut g, &D0, "/a").unwrap(), b"b\0");
    assert_eq!(ops::directory(&mut g, &D0, "/").unwrap(), b"tool\0a\0");
    assert_eq!(ops::read(&mut g, &D0, "/nope"), Err(Errno::Enoent));
}

#[test]
fn mkdir_keeps_existing_value() {
    let mut s = store();
    let mut g = s.global();
    ops::write(&mut g, &D0, "/a", b"keep").unwrap();
    ops::mkdir(&mut g, &D0, "/a").unwrap();
    ops::mkdir(&mut g, &D0, "/a/new/deep").unwrap();
    assert_eq!(ops::read(&mut g, &D0, "/a").unwrap(), b"keep");
    assert_eq!(ops::read(&mut g, &D0, "/a/new/deep").unwrap(), b"");
}

#[test]
fn rm_is_recursive_and_missing_node_needs_existing_parent() {
    let mut s = store();
    let mut g = s.global();
    ops::write(&mut g, &D0, "/a/b/c", b"1").unwrap();
    ops::write(&mut g, &D0, "/a/d", b"2").unwrap();
    ops::rm(&mut g, &D0, "/a/b").unwrap();
    assert_eq!(ops::read(&mut g, &D0, "/a/b/c"), Err(Errno::Enoent));
    assert_eq!(ops::directory(&mut g, &D0, "/a").unwrap(), b"d\0");
    // Missing node with existing parent: OK. Missing parent: ENOENT.
    assert_eq!(ops::rm(&mut g, &D0, "/a/zz"), Ok(()));
    assert_eq!(ops::rm(&mut g, &D0, "/x/y"), Err(Errno::Enoent));
    assert_eq!(ops::rm(&mut g, &D0, "/"), Err(Errno::Einval));
    drop(g);
    assert!(s.get("/a/b").is_none() && s.get("/a/b/c").is_none());
}

#[test]
fn rm_fires_root_non_exact_and_descendants_exact_children_first() {
    let mut s = store();
    let mut g = s.global();
    ops::write(&mut g, &D0, "/a/b", b"").unwrap();
    g.take_changes();
    ops::rm(&mut g, &D0, "/a").unwrap();
    let got: Vec<_> = g
        .take_changes()
        .into_iter()
        .map(|c| (c.path, c.exact))
        .collect();
    assert_eq!(got, vec![("/a/b".into(), true), ("/a".into(), false)]);
}

#[test]
fn guest_permissions_follow_acl_and_hide_existence() {
    let mut s = store();
    let g5 = Caller::guest(5);
    let mut g = s.global();
    ops::write(&mut g, &D0, "/secret", b"x").unwrap();
    assert_eq!(ops::read(&mut g, &g5, "/secret"), Err(Errno::Eacces));
    // Parent "/" is n0 too, so a missing node is also EACCES, not ENOENT.
    assert_eq!(ops::read(&mut g, &g5, "/missing"), Err(Errno::Eacces));
    ops::set_perms(&mut g, &D0, "/secret", &perms(&["n0", "r5"])).unwrap();
    assert_eq!(ops::read(&mut g, &g5, "/secret").unwrap(), b"x");
    assert_eq!(ops::write(&mut g, &g5, "/secret", b"y"), Err(Errno::Eacces));
    assert_eq!(
        ops::read(&mut g, &g5, "/secret/missing"),
        Err(Errno::Enoent)
    );
    assert_eq!(
        ops::check(&mut g, &Caller::guest(6), "/secret", Need::Read),
        Err(Errno::Eacces)
    );
}

#[test]
fn guest_owns_what_it_creates_and_cannot_give_it_away() {
    let mut s = store();
    let g5 = Caller::guest(5);
    let mut g = s.global();
    ops::mkdir(&mut g, &D0, "/local/domain/5").unwrap();
    ops::set_perms(&mut g, &D0, "/local/domain/5", &perms(&["n0", "b5"])).unwrap();
    ops::write(&mut g, &g5, "/local/domain/5/data/x", b"1").unwrap();
    assert_eq!(
        ops::get_perms(&mut g, &g5, "/local/domain/5/data/x").unwrap(),
        perms(&["n5", "b5"])
    );
    assert_eq!(
        ops::set_perms(&mut g, &g5, "/local/domain/5/data", &perms(&["n6"])),
        Err(Errno::Eperm)
    );
    ops::set_perms(&mut g, &g5, "/local/domain/5/data", &perms(&["n5", "r6"])).unwrap();
    // Not the owner of the home directory itself (dom0 is): EACCES.
    assert_eq!(
        ops::set_perms(&mut g, &g5, "/local/domain/5", &perms(&["n5"])),
        Err(Errno::Eacces)
    );
    drop(g);
    assert_eq!(s.owned(5), 2);
}

#[test]
fn guest_node_quota_is_enforced() {
    let limits = Limits {
        guest_nodes: 3,
        ..Limits::default()
    };
    let mut s = Store::new(limits);
    let g5 = Caller::guest(5);
    let mut g = s.global();
    ops::mkdir(&mut g, &D0, "/local/domain/5").unwrap();
    ops::set_perms(&mut g, &D0, "/local/domain/5", &perms(&["n5"])).unwrap();
    ops::write(&mut g, &g5, "/local/domain/5/a/b", b"").unwrap();
    assert_eq!(
        ops::write(&mut g, &g5, "/local/domain/5/c/d", b""),
        Err(Errno::Enospc)
    );
    // Nothing half-created.
    assert_eq!(
        ops::read(&mut g, &g5, "/local/domain/5/c"),
        Err(Errno::Enoent)
    );
    ops::rm(&mut g, &g5, "/local/domain/5/a").unwrap();
    ops::write(&mut g, &g5, "/local/domain/5/c/d", b"").unwrap();
}

#[test]
fn transaction_sees_own_writes_and_commits() {
    let mut s = store();
    let mut t = Txn::new(100);
    ops::write(&mut s.txn_view(&mut t), &D0, "/t/x", b"1").unwrap();
    assert_eq!(
        ops::read(&mut s.txn_view(&mut t), &D0, "/t/x").unwrap(),
        b"1"
    );
    assert_eq!(ops::read(&mut s.global(), &D0, "/t/x"), Err(Errno::Enoent));
    let changes = s.commit(t).unwrap();
    assert!(changes.iter().any(|c| c.path == "/t/x" && !c.exact));
    assert_eq!(ops::read(&mut s.global(), &D0, "/t/x").unwrap(), b"1");
}

#[test]
fn conflicting_transaction_gets_eagain() {
    let mut s = store();
    ops::write(&mut s.global(), &D0, "/n", b"0").unwrap();
    let mut t1 = Txn::new(100);
    let mut t2 = Txn::new(100);
    for t in [&mut t1, &mut t2] {
        let v = ops::read(&mut s.txn_view(t), &D0, "/n").unwrap();
        let mut next = v.clone();
        next.push(b'+');
        ops::write(&mut s.txn_view(t), &D0, "/n", &next).unwrap();
    }
    s.commit(t1).unwrap();
    assert_eq!(s.commit(t2).err(), Some(Errno::Eagain));
    assert_eq!(ops::read(&mut s.global(), &D0, "/n").unwrap(), b"0+");
}

#[test]
fn unrelated_transactions_both_commit_and_blind_writes_do_not_conflict() {
    let mut s = store();
    ops::write(&mut s.global(), &D0, "/a", b"").unwrap();
    ops::write(&mut s.global(), &D0, "/b", b"").unwrap();
    let mut t1 = Txn::new(100);
    let mut t2 = Txn::new(100);
    ops::write(&mut s.txn_view(&mut t1), &D0, "/a", b"1").unwrap();
    ops::write(&mut s.txn_view(&mut t2), &D0, "/b", b"2").unwrap();
    s.commit(t1).unwrap();
    s.commit(t2).unwrap();
    // A node created under the same parent by a global write conflicts.
    let mut t3 = Txn::new(100);
    ops::write(&mut s.txn_view(&mut t3), &D0, "/a/x", b"").unwrap();
    ops::write(&mut s.global(), &D0, "/a/y", b"").unwrap();
    assert_eq!(s.commit(t3).err(), Some(Errno::Eagain));
}

#[test]
fn transaction_rm_applies_at_commit_and_node_limit_fails_it() {
    let mut s = store();
    ops::write(&mut s.global(), &D0, "/r/a/b", b"").unwrap();
    let mut t = Txn::new(100);
    ops::rm(&mut s.txn_view(&mut t), &D0, "/r/a").unwrap();
    assert!(s.get("/r/a/b").is_some());
    s.commit(t).unwrap();
    assert!(s.get("/r/a/b").is_none());
    assert_eq!(s.get("/r").unwrap().children, Vec::<String>::new());

    let mut small = Txn::new(2);
    assert_eq!(
        ops::write(&mut s.txn_view(&mut small), &D0, "/q/w/e", b""),
        Err(Errno::Enospc)
    );
    assert_eq!(s.commit(small).err(), Some(Errno::Enomem));
}

#[test]
fn directory_part_pages_through_children() {
    let mut s = store();
    let mut g = s.global();
    for i in 0..400 {
        ops::write(&mut g, &D0, &format!("/big/child-number-{i:04}"), b"").unwrap();
    }
    let full = ops::directory(&mut g, &D0, "/big").unwrap();
    let mut got = Vec::new();
    loop {
        let part = ops::directory_part(&mut g, &D0, "/big", got.len()).unwrap();
        assert!(part.len() <= crate::wire::PAYLOAD_MAX);
        let gen_end = part.iter().position(|&b| b == 0).unwrap();
        let body = &part[gen_end + 1..];
        if body == b"\0" {
            break;
        }
        let done = body.ends_with(b"\0\0");
        got.extend_from_slice(if done { &body[..body.len() - 1] } else { body });
        if done {
            break;
        }
    }
    assert_eq!(got, full);
    assert!(full.len() > crate::wire::PAYLOAD_MAX);
}

#[test]
fn initial_tree_matches_c_daemon() {
    let s = store();
    assert_eq!(s.get("/").unwrap().children, vec!["tool".to_owned()]);
    assert!(s.get("/tool/xenstored").is_some());
    assert_eq!(s.get("@releaseDomain").unwrap().perms, perms(&["n0"]));
    assert!(s.get("@introduceDomain").is_some());
}
