//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use rustbk_xenstored::{Server, ServerHandle, WatchEvent, XsClient};

/// A running server in a private temporary directory.
pub struct TestServer {
    pub handle: ServerHandle,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub fn start() -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let handle = Server::bind(&dir.path().join("xs.sock"))
            .unwrap()
            .spawn()
            .unwrap();
        TestServer { handle, dir }
    }

    pub fn socket(&self) -> PathBuf {
        self.handle.socket_path().to_owned()
    }

    pub fn dom0(&self) -> XsClient {
        XsClient::connect(self.handle.socket_path()).unwrap()
    }

    /// Introduces `domid` with a home directory it owns, as libxl does,
    /// and connects as that domain.
    pub fn guest(&self, dom0: &XsClient, domid: u16) -> XsClient {
        let home = format!("/local/domain/{domid}");
        dom0.mkdir(&home).unwrap();
        dom0.set_perms(&home, &[format!("n{domid}").parse().unwrap()])
            .unwrap();
        dom0.introduce(domid, 0x1234, 7).unwrap();
        XsClient::connect(&self.handle.domain_socket_path(domid)).unwrap()
    }
}

/// Waits for the next event, failing the test after 5 s.
pub fn event(client: &XsClient) -> WatchEvent {
    client
        .next_event(Duration::from_secs(5))
        .unwrap()
        .expect("watch event within 5 s")
}

/// Asserts no event arrives within 200 ms.
pub fn no_event(client: &XsClient) {
    let got = client.next_event(Duration::from_millis(200)).unwrap();
    assert_eq!(got, None, "unexpected watch event");
}

pub fn ev(path: &str, token: &str) -> WatchEvent {
    WatchEvent {
        path: path.to_owned(),
        token: token.to_owned(),
    }
}
