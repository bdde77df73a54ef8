//! Transactions over the wire: isolation, commit-time watches, conflicts.

mod common;

use std::sync::Arc;

use common::{TestServer, ev, event, no_event};
use rustbk_xenstored::{Errno, XsClient};

#[test]
fn second_read_modify_write_commit_gets_eagain() {
    let s = TestServer::start();
    let (a, b) = (s.dom0(), s.dom0());
    a.write("/counter", "0").unwrap();
    let ta = a.transaction_start().unwrap();
    let tb = b.transaction_start().unwrap();
    let va: u32 = a.read_tx(ta, "/counter").unwrap().parse().unwrap();
    let vb: u32 = b.read_tx(tb, "/counter").unwrap().parse().unwrap();
    a.write_tx(ta, "/counter", &(va + 1).to_string()).unwrap();
    b.write_tx(tb, "/counter", &(vb + 10).to_string()).unwrap();
    a.transaction_end(ta, true).unwrap();
    let err = b.transaction_end(tb, true).unwrap_err();
    assert_eq!(err.errno(), Some(Errno::Eagain));
    assert_eq!(a.read("/counter").unwrap(), "1");
    // The failed transaction is gone.
    assert_eq!(
        b.transaction_end(tb, true).unwrap_err().errno(),
        Some(Errno::Enoent)
    );
}

#[test]
fn transaction_is_isolated_and_fires_watches_at_commit() {
    let s = TestServer::start();
    let (w, c) = (s.dom0(), s.dom0());
    w.watch("/iso", "t").unwrap();
    assert_eq!(event(&w), ev("/iso", "t"));
    let tx = c.transaction_start().unwrap();
    c.write_tx(tx, "/iso/a", "1").unwrap();
    assert_eq!(c.read_tx(tx, "/iso/a").unwrap(), "1");
    assert_eq!(c.directory_tx(tx, "/iso").unwrap(), ["a"]);
    assert_eq!(w.try_read("/iso/a").unwrap(), None);
    no_event(&w);
    c.transaction_end(tx, true).unwrap();
    assert_eq!(event(&w), ev("/iso/a", "t"));
    no_event(&w);
    assert_eq!(w.read("/iso/a").unwrap(), "1");
}

#[test]
fn aborted_transaction_changes_nothing() {
    let s = TestServer::start();
    let c = s.dom0();
    let tx = c.transaction_start().unwrap();
    c.write_tx(tx, "/gone", "1").unwrap();
    c.transaction_end(tx, false).unwrap();
    assert_eq!(c.try_read("/gone").unwrap(), None);
}

#[test]
fn unknown_transaction_id_is_enoent() {
    let s = TestServer::start();
    let c = s.dom0();
    assert_eq!(
        c.read_tx(4242, "/tool").unwrap_err().errno(),
        Some(Errno::Enoent)
    );
    assert_eq!(
        c.transaction_end(0, true).unwrap_err().errno(),
        Some(Errno::Enoent)
    );
    // Transaction ids are per connection.
    let tx = c.transaction_start().unwrap();
    let other = s.dom0();
    assert_eq!(
        other.read_tx(tx, "/tool").unwrap_err().errno(),
        Some(Errno::Enoent)
    );
}

#[test]
fn concurrent_retrying_increments_are_never_lost() {
    let s = TestServer::start();
    let shared = Arc::new(s.dom0());
    shared.write("/inc", "0").unwrap();
    let workers: Vec<_> = (0..4)
        .map(|i| {
            // Two workers share one client, two have their own.
            let client = if i % 2 == 0 {
                Arc::clone(&shared)
            } else {
                Arc::new(XsClient::connect(&s.socket()).unwrap())
            };
            std::thread::spawn(move || {
                for _ in 0..25 {
                    client
                        .transaction(1000, |tx| {
                            let v: u32 = client.read_tx(tx, "/inc")?.parse().unwrap();
                            client.write_tx(tx, "/inc", &(v + 1).to_string())
                        })
                        .unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(shared.read("/inc").unwrap(), "100");
}
