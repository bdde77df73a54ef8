//! The blocking client against the emulator: requests, watches, threads,
//! shutdown.

mod common;

use std::sync::Arc;

use common::{TestServer, ev, event, no_event};
use rustbk_xenstored::{Errno, Error, XsClient};

#[test]
fn client_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<XsClient>();
}

#[test]
fn basic_requests_round_trip() {
    let s = TestServer::start();
    let c = s.dom0();
    c.mkdir("/m/n").unwrap();
    c.write("/m/v", "value with spaces").unwrap();
    assert_eq!(c.directory("/m").unwrap(), ["n", "v"]);
    assert_eq!(c.read("/m/v").unwrap(), "value with spaces");
    assert_eq!(c.read("/m/n").unwrap(), "");
    let err = c.read("/m/x").unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert_eq!(c.try_read("/m/x").unwrap(), None);
    c.rm("/m").unwrap();
    assert_eq!(c.try_read("/m/v").unwrap(), None);
    assert_eq!(c.get_domain_path(3).unwrap(), "/local/domain/3");
    assert!(c.is_domain_introduced(0).unwrap());
    // Relative paths of dom0 sockets resolve to /local/domain/0.
    c.write("rel", "1").unwrap();
    assert_eq!(c.read("/local/domain/0/rel").unwrap(), "1");
    let too_big = "x".repeat(5000);
    assert!(matches!(c.write("/big", &too_big), Err(Error::TooLarge(_))));
}

#[test]
fn watches_fire_initially_for_children_and_removals() {
    let s = TestServer::start();
    let (w, c) = (s.dom0(), s.dom0());
    c.write("/tree/a/b", "1").unwrap();
    w.watch("/tree/a", "tok").unwrap();
    assert_eq!(event(&w), ev("/tree/a", "tok"));
    c.write("/tree/a/b", "2").unwrap();
    assert_eq!(event(&w), ev("/tree/a/b", "tok"));
    c.write("/tree/other", "x").unwrap();
    no_event(&w);
    // Removing a parent reports the watched path itself.
    c.rm("/tree").unwrap();
    assert_eq!(event(&w), ev("/tree/a", "tok"));
    no_event(&w);

    assert_eq!(
        w.watch("/tree/a", "tok").unwrap_err().errno(),
        Some(Errno::Eexist)
    );
    w.unwatch("/tree/a", "tok").unwrap();
    c.write("/tree/a", "again").unwrap();
    no_event(&w);
    assert_eq!(
        w.unwatch("/tree/a", "tok").unwrap_err().errno(),
        Some(Errno::Enoent)
    );
}

#[test]
fn permission_changes_fire_watches() {
    let s = TestServer::start();
    let (w, c) = (s.dom0(), s.dom0());
    c.write("/pp", "").unwrap();
    w.watch("/pp", "p").unwrap();
    assert_eq!(event(&w), ev("/pp", "p"));
    c.set_perms("/pp", &["b3".parse().unwrap()]).unwrap();
    assert_eq!(event(&w), ev("/pp", "p"));
}

#[test]
fn one_client_serves_many_threads() {
    let s = TestServer::start();
    let c = Arc::new(s.dom0());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let c = Arc::clone(&c);
            std::thread::spawn(move || {
                for i in 0..50 {
                    let path = format!("/mt/{t}/{i}");
                    c.write(&path, &format!("{t}-{i}")).unwrap();
                    assert_eq!(c.read(&path).unwrap(), format!("{t}-{i}"));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(c.directory("/mt").unwrap().len(), 8);
}

#[test]
fn many_connections_come_and_go() {
    let s = TestServer::start();
    let clients: Vec<_> = (0..64).map(|_| s.dom0()).collect();
    for (i, c) in clients.iter().enumerate() {
        c.write(&format!("/conns/{i}"), "x").unwrap();
    }
    drop(clients);
    assert_eq!(s.dom0().directory("/conns").unwrap().len(), 64);
}

#[test]
fn shutdown_disconnects_clients_and_removes_socket() {
    let s = TestServer::start();
    let c = s.dom0();
    c.write("/x", "1").unwrap();
    let path = s.socket();
    let common::TestServer { handle, dir } = s;
    handle.shutdown();
    assert!(!path.exists());
    assert!(c.read("/x").is_err());
    drop(dir);
}
