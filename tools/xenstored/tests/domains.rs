//! Introduced domains connect through `<socket>.d<N>` and are permission
//! checked as domain N.

mod common;

use common::{TestServer, ev, event, no_event};
use rustbk_xenstored::{Errno, Error, Perm};

fn perms(list: &[&str]) -> Vec<Perm> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn errno(r: Result<impl std::fmt::Debug, Error>) -> Errno {
    r.unwrap_err().errno().expect("an xenstore error reply")
}

#[test]
fn guest_reads_dom0_node_only_after_acl_grants_it() {
    let s = TestServer::start();
    let dom0 = s.dom0();
    let guest = s.guest(&dom0, 5);
    dom0.write("/secret", "s3cr3t").unwrap();
    assert_eq!(dom0.get_perms("/secret").unwrap(), perms(&["n0"]));
    assert_eq!(errno(guest.read("/secret")), Errno::Eacces);
    // Existence is hidden too: "/" is not readable by the guest.
    assert_eq!(errno(guest.read("/missing")), Errno::Eacces);

    dom0.set_perms("/secret", &perms(&["n0", "r5"])).unwrap();
    assert_eq!(guest.read("/secret").unwrap(), "s3cr3t");
    assert_eq!(errno(guest.write("/secret", "x")), Errno::Eacces);
    assert_eq!(
        errno(guest.set_perms("/secret", &perms(&["n5"]))),
        Errno::Eacces
    );
    // Another domain is still locked out.
    let other = s.guest(&dom0, 6);
    assert_eq!(errno(other.read("/secret")), Errno::Eacces);
}

#[test]
fn guest_writes_its_own_home_and_owns_new_nodes() {
    let s = TestServer::start();
    let dom0 = s.dom0();
    let guest = s.guest(&dom0, 5);
    guest.write("device/vbd/768/state", "1").unwrap();
    guest.write("/local/domain/5/name", "guest").unwrap();
    assert_eq!(
        dom0.read("/local/domain/5/device/vbd/768/state").unwrap(),
        "1"
    );
    assert_eq!(guest.read("name").unwrap(), "guest");
    assert_eq!(
        dom0.get_perms("/local/domain/5/device/vbd").unwrap(),
        perms(&["n5"])
    );
    assert_eq!(guest.directory("device/vbd").unwrap(), ["768"]);
    guest.rm("device").unwrap();
    assert_eq!(dom0.try_read("/local/domain/5/device").unwrap(), None);

    assert_eq!(errno(guest.write("/local/domain/6/x", "1")), Errno::Eacces);
    assert_eq!(errno(guest.write("/tool/x", "1")), Errno::Eacces);
    // Owner may share, but may not give a node away.
    guest.write("shared", "v").unwrap();
    guest.set_perms("shared", &perms(&["n5", "r6"])).unwrap();
    assert_eq!(
        errno(guest.set_perms("shared", &perms(&["n6"]))),
        Errno::Eperm
    );
}

#[test]
fn guest_may_not_use_privileged_requests() {
    let s = TestServer::start();
    let dom0 = s.dom0();
    let guest = s.guest(&dom0, 5);
    assert_eq!(errno(guest.introduce(9, 1, 1)), Errno::Eacces);
    assert_eq!(errno(guest.release(5)), Errno::Eacces);
    assert_eq!(errno(guest.is_domain_introduced(5)), Errno::Eacces);
    assert_eq!(guest.get_domain_path(5).unwrap(), "/local/domain/5");
    assert!(dom0.is_domain_introduced(5).unwrap());
    assert!(!dom0.is_domain_introduced(9).unwrap());
}

#[test]
fn guest_watch_uses_relative_paths_and_skips_unreadable_nodes() {
    let s = TestServer::start();
    let dom0 = s.dom0();
    let guest = s.guest(&dom0, 5);
    guest.watch("device", "rel").unwrap();
    assert_eq!(event(&guest), ev("device", "rel"));
    dom0.write("/local/domain/5/device/vbd", "x").unwrap();
    assert_eq!(event(&guest), ev("device/vbd", "rel"));

    dom0.write("/hidden/node", "1").unwrap();
    guest.watch("/hidden", "abs").unwrap();
    assert_eq!(event(&guest), ev("/hidden", "abs"));
    dom0.write("/hidden/node", "2").unwrap();
    no_event(&guest);
}

#[test]
fn introduce_and_release_fire_special_watches_and_close_the_domain() {
    let s = TestServer::start();
    let dom0 = s.dom0();
    dom0.watch("@introduceDomain", "intro").unwrap();
    dom0.watch("@releaseDomain", "rel").unwrap();
    assert_eq!(event(&dom0), ev("@introduceDomain", "intro"));
    assert_eq!(event(&dom0), ev("@releaseDomain", "rel"));

    let guest = s.guest(&dom0, 7);
    assert_eq!(event(&dom0), ev("@introduceDomain", "intro"));
    guest.watch("x", "tok").unwrap();
    assert_eq!(event(&guest), ev("x", "tok"));
    let sock = s.handle.domain_socket_path(7);
    assert!(sock.exists());

    dom0.release(7).unwrap();
    assert_eq!(event(&dom0), ev("@releaseDomain", "rel"));
    assert!(!sock.exists());
    assert!(guest.read("x").is_err());
    assert!(!dom0.is_domain_introduced(7).unwrap());
    assert_eq!(errno(dom0.release(7)), Errno::Enoent);
    assert_eq!(errno(dom0.release(0)), Errno::Einval);
    // The domain may be introduced again and reconnect.
    dom0.introduce(7, 1, 1).unwrap();
    let again = rustbk_xenstored::XsClient::connect(&sock).unwrap();
    assert_eq!(again.read("x").unwrap_err().errno(), Some(Errno::Enoent));
}

#[test]
fn guest_transaction_and_watch_quotas_are_enforced() {
    let s = TestServer::start();
    let dom0 = s.dom0();
    let guest = s.guest(&dom0, 5);
    let limits = rustbk_xenstored::Limits::default();
    for _ in 0..limits.guest_transactions {
        guest.transaction_start().unwrap();
    }
    assert_eq!(errno(guest.transaction_start()), Errno::Enospc);
    for i in 0..limits.guest_watches {
        guest.watch(&format!("w{i}"), "t").unwrap();
    }
    assert_eq!(errno(guest.watch("one-too-many", "t")), Errno::E2big);
    guest.reset_watches().unwrap();
    guest.watch("fresh", "t").unwrap();
    guest.transaction_start().unwrap();
}

#[test]
fn guest_node_quota_stops_huge_trees() {
    let s = TestServer::start();
    let dom0 = s.dom0();
    let guest = s.guest(&dom0, 5);
    let quota = rustbk_xenstored::Limits::default().guest_nodes;
    // The home directory is owned by the guest already; spread the nodes
    // over sub-directories so no single node hits the node-size quota.
    let mut created = 1;
    for d in 0..20 {
        guest.mkdir(&format!("d{d}")).unwrap();
        created += 1;
    }
    let mut i = 0;
    let err = loop {
        match guest.write(&format!("d{}/n{i}", i % 20), "") {
            Ok(()) => created += 1,
            Err(e) => break e,
        }
        i += 1;
        assert!(i <= quota, "quota not enforced");
    };
    assert_eq!(err.errno(), Some(Errno::Enospc));
    assert_eq!(created, quota);
    let listed: usize = (0..20)
        .map(|d| {
            dom0.directory(&format!("/local/domain/5/d{d}"))
                .unwrap()
                .len()
        })
        .sum();
    assert_eq!(1 + 20 + listed, quota);
}

#[test]
fn guest_node_size_quota_bounds_values_and_wide_directories() {
    let s = TestServer::start();
    let dom0 = s.dom0();
    let guest = s.guest(&dom0, 5);
    assert_eq!(errno(guest.write("big", &"v".repeat(3000))), Errno::Enospc);
    guest.write("ok", &"v".repeat(1000)).unwrap();
    let mut i = 0;
    let err = loop {
        if let Err(e) = guest.write(&format!("wide/entry{i}"), "") {
            break e;
        }
        i += 1;
        assert!(i < 1000, "node size quota not enforced");
    };
    assert_eq!(err.errno(), Some(Errno::Enospc));
    // dom0 is not bound by guest quotas.
    dom0.write("/local/domain/5/wide/dom0-entry", "").unwrap();
}
