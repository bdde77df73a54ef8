//! The crates.io `xenstore-rs` client (blocking `XsUnix` and async
//! `XsTokio`) against the emulator.
//!
//! `xenstore-rs` finds the daemon through the process-wide `XENSTORED_PATH`
//! variable. Instead of mutating the environment of the test process, the
//! test starts the server and re-runs itself as a child process with the
//! variable set; the child does the client work.

mod common;

use std::io::ErrorKind;
use std::process::Command;
use std::time::Duration;

use common::TestServer;
use futures::StreamExt;
use xenstore_rs::tokio::XsTokio;
use xenstore_rs::unix::XsUnix;
use xenstore_rs::{AsyncWatch, AsyncXs, Xs};

const CHILD_FLAG: &str = "RUSTBK_XS_RS_CHILD";
const TEST_NAME: &str = "xenstore_rs_unix_and_tokio_clients_interoperate";

#[test]
fn xenstore_rs_unix_and_tokio_clients_interoperate() {
    if std::env::var_os(CHILD_FLAG).is_some() {
        unix_client_checks();
        tokio_client_checks();
        return;
    }
    let s = TestServer::start();
    let dom0 = s.dom0();
    dom0.write("/pre/existing", "from-rustbk").unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
        .env(CHILD_FLAG, "1")
        .env("XENSTORED_PATH", s.socket())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "child failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The child really ran its checks and talked to this server.
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));
    assert_eq!(dom0.read("/rs/unix/done").unwrap(), "yes");
    assert_eq!(dom0.read("/rs/tokio/done").unwrap(), "yes");
}

fn unix_client_checks() {
    let xs = XsUnix::new().unwrap();
    assert_eq!(&*xs.read("/pre/existing").unwrap(), "from-rustbk");
    xs.write("/rs/unix/a", "1").unwrap();
    xs.write("/rs/unix/b", "2").unwrap();
    assert_eq!(&*xs.read("/rs/unix/a").unwrap(), "1");
    let mut dir: Vec<String> = xs
        .directory("/rs/unix")
        .unwrap()
        .iter()
        .map(|s| s.to_string())
        .collect();
    dir.sort();
    assert_eq!(dir, ["a", "b"]);
    xs.rm("/rs/unix/a").unwrap();
    assert_eq!(
        xs.read("/rs/unix/a").unwrap_err().kind(),
        ErrorKind::NotFound
    );
    xs.write("/rs/unix/done", "yes").unwrap();
}

fn tokio_client_checks() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let xs = XsTokio::new().await.unwrap();
        xs.write("/rs/tokio/x", "10").await.unwrap();
        assert_eq!(&*xs.read("/rs/tokio/x").await.unwrap(), "10");
        let dir = xs.directory("/rs/tokio").await.unwrap();
        assert_eq!(dir.len(), 1);
        assert_eq!(&*dir[0], "x");

        let mut events = xs.watch("/rs/tokio/watched").await.unwrap();
        let wait = Duration::from_secs(5);
        let first = tokio::time::timeout(wait, events.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&*first, "/rs/tokio/watched");
        xs.write("/rs/tokio/watched/leaf", "v").await.unwrap();
        let second = tokio::time::timeout(wait, events.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&*second, "/rs/tokio/watched/leaf");

        xs.rm("/rs/tokio/x").await.unwrap();
        let err = xs.read("/rs/tokio/x").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        xs.write("/rs/tokio/done", "yes").await.unwrap();
    });
}
