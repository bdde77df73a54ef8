//! A thin layer over the `xenstore-rs` tokio client that speaks this crate's errors.

use std::io::ErrorKind;

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use xenstore_rs::tokio::XsTokio;
use xenstore_rs::{AsyncWatch, AsyncXs};

use crate::Error;

/// Changes under a watched node, coalesced.
///
/// `xenstore-rs` 0.8 hands watch events to a channel of 8 and its connection task waits when
/// that channel is full, so a transaction touching many nodes stalls every reply on the
/// connection until the watcher reads, which it cannot do while it waits for a reply. A
/// forwarding task drains the events at once into an unbounded channel to break that cycle.
pub struct Watch {
    rx: mpsc::UnboundedReceiver<Box<str>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Watch {
    /// Starts draining `stream` into `tx` at once: a stream left unread while another watch
    /// is registered on the same connection could fill and stall that registration. The
    /// watch ends (`next` gives `None`) when every stream has ended and `tx` is dropped.
    fn forward(
        &mut self,
        tx: mpsc::UnboundedSender<Box<str>>,
        mut stream: Pin<Box<dyn Stream<Item = Box<str>> + Send>>,
    ) {
        self.tasks.push(tokio::spawn(async move {
            while let Some(path) = stream.next().await {
                if tx.send(path).is_err() {
                    break;
                }
            }
        }));
    }

    /// Waits for a change; returns one changed path and drops the others already queued (the
    /// caller re-reads what it needs). `None` when the connection is gone.
    pub async fn next(&mut self) -> Option<Box<str>> {
        let first = self.rx.recv().await?;
        while self.rx.try_recv().is_ok() {}
        Some(first)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Watch")
    }
}

/// The xenstore daemon's socket and where that path came from.
fn socket_path(from_env: Option<String>) -> (String, &'static str) {
    match from_env {
        Some(path) => (path, "set by XENSTORED_PATH"),
        None => (
            DEFAULT_SOCKET.to_owned(),
            "the default; XENSTORED_PATH is unset",
        ),
    }
}

const DEFAULT_SOCKET: &str = "/run/xenstored/socket";
const XENBUS_DEVICE: &str = "/dev/xen/xenbus";

/// The error of a failed connect. `xenstore-rs` tries the socket, then the xenbus device, and
/// reports only the device's error; the socket is tried again here for its own. The device's
/// error is the one reported only where there is no socket at all but a device that failed.
async fn unreachable(device: std::io::Error) -> Error {
    let (path, origin) = socket_path(std::env::var("XENSTORED_PATH").ok());
    let socket = match tokio::net::UnixStream::connect(&path).await {
        Ok(_) => std::io::Error::other("the socket accepted a second attempt"),
        Err(e) => e,
    };
    if socket.kind() == ErrorKind::NotFound && device.kind() != ErrorKind::NotFound {
        return xs_err("connect", XENBUS_DEVICE)(device);
    }
    xs_err("connect", &format!("{path} ({origin})"))(socket)
}

/// The xenstore connection of the backend (real xenstored or the emulator's).
#[derive(Clone, Debug)]
pub struct Store(XsTokio);

fn xs_err(op: &'static str, path: &str) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Xenstore { op, path, source }
}

impl Store {
    /// Connects to the socket named by `XENSTORED_PATH` (default `/run/xenstored/socket`), or
    /// to the xenbus device. Must run inside a tokio runtime.
    pub async fn connect() -> Result<Store, Error> {
        match XsTokio::new().await {
            Ok(xs) => Ok(Store(xs)),
            Err(device) => Err(unreachable(device).await),
        }
    }

    /// Reads a node; `None` if it does not exist.
    pub async fn read(&self, path: &str) -> Result<Option<String>, Error> {
        match self.0.read(path).await {
            Ok(v) => Ok(Some(v.into_string())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(xs_err("read", path)(e)),
        }
    }

    /// Writes a node.
    pub async fn write(&self, path: &str, value: &str) -> Result<(), Error> {
        self.0
            .write(path, value)
            .await
            .map_err(xs_err("write", path))
    }

    /// Removes a node and its children.
    pub async fn rm(&self, path: &str) -> Result<(), Error> {
        self.0.rm(path).await.map_err(xs_err("rm", path))
    }

    /// Lists a directory; empty if it does not exist.
    pub async fn directory(&self, path: &str) -> Result<Vec<String>, Error> {
        match self.0.directory(path).await {
            Ok(v) => Ok(v.into_iter().map(String::from).collect()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(xs_err("directory", path)(e)),
        }
    }

    /// Writes every `(path, value)` in one transaction (on a connection of its own, see the
    /// `txn` module): a watcher of any of them reads all the new values or none.
    pub async fn write_all(&self, writes: Vec<(String, String)>) -> Result<(), Error> {
        let first = writes.first().map(|(p, _)| p.clone()).unwrap_or_default();
        let done = tokio::task::spawn_blocking(move || super::txn::write_all(&writes))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|r| r);
        done.map_err(xs_err("transaction", &first))
    }

    /// Watches a node and its children; the stream yields changed paths.
    pub async fn watch(&self, path: &str) -> Result<Watch, Error> {
        self.watch_all(&[path.to_owned()]).await
    }

    /// Watches several nodes (and their children) as one: a change under any of them wakes
    /// the watcher.
    pub async fn watch_all(&self, paths: &[String]) -> Result<Watch, Error> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut watch = Watch {
            rx,
            tasks: Vec::new(),
        };
        for path in paths {
            let stream = self.0.watch(path).await.map_err(xs_err("watch", path))?;
            watch.forward(tx.clone(), Box::pin(stream));
        }
        Ok(watch)
    }
}
