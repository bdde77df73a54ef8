//! The daemon: listening sockets, connection threads and shutdown.

mod conn;
mod dispatch;
mod domain;
mod state;

use std::collections::HashMap;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use tracing::{info, warn};

use crate::error::Error;
use crate::perms::Caller;
use crate::store::{Limits, Store};
use conn::Outbox;
use state::{Conn, State};

/// State shared by every thread of one server.
#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<State>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    socket_path: PathBuf,
    stopping: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn track(&self, handle: JoinHandle<()>) {
        let mut threads = self.threads.lock().unwrap_or_else(PoisonError::into_inner);
        threads.retain(|t| !t.is_finished());
        threads.push(handle);
    }

    /// Adds a connection; `None` while shutting down.
    fn register(&self, caller: Caller, outbox: &Arc<Outbox>, stream: UnixStream) -> Option<u64> {
        let mut st = self.lock();
        if self.stopping.load(Ordering::SeqCst) {
            return None;
        }
        // A domain connection accepted just before its RELEASE is refused.
        if !caller.privileged && !st.domains.contains_key(&caller.domid) {
            return None;
        }
        st.next_conn = st.next_conn.wrapping_add(1);
        let id = st.next_conn;
        let conn = Conn {
            caller,
            watches: Vec::new(),
            txns: HashMap::new(),
            next_txn: 1,
            outbox: Arc::clone(outbox),
            stream,
        };
        st.conns.insert(id, conn);
        Some(id)
    }

    fn unregister(&self, id: u64) {
        self.lock().remove_conn(id);
    }

    /// Path of the listening socket for domain `domid`.
    fn domain_socket(&self, domid: u16) -> PathBuf {
        let mut name = self.socket_path.clone().into_os_string();
        name.push(format!(".d{domid}"));
        PathBuf::from(name)
    }
}

/// A listening socket and its accept thread.
#[derive(Debug)]
pub(crate) struct Listener {
    path: PathBuf,
    stop: Arc<AtomicBool>,
}

impl Listener {
    /// Starts accepting on `listener`; every connection acts as `caller`.
    fn start(
        shared: &Arc<Shared>,
        path: PathBuf,
        listener: UnixListener,
        caller: Caller,
    ) -> Result<Listener, Error> {
        let stop = Arc::new(AtomicBool::new(false));
        let (thread_shared, thread_stop) = (Arc::clone(shared), Arc::clone(&stop));
        let handle = std::thread::Builder::new()
            .name(format!("xs-accept-d{}", caller.domid))
            .spawn(move || accept_loop(&thread_shared, &listener, &thread_stop, caller))?;
        shared.track(handle);
        Ok(Listener { path, stop })
    }

    /// Stops accepting and removes the socket file.
    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocked accept().
        let _ = UnixStream::connect(&self.path);
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: &UnixListener, stop: &AtomicBool, caller: Caller) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                warn!("accept failed: {e}");
                std::thread::sleep(std::time::Duration::from_millis(50));
                continue;
            }
        };
        let conn_shared = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name("xs-conn".to_owned())
            .spawn(move || conn::serve(&conn_shared, stream, caller));
        match spawned {
            Ok(handle) => shared.track(handle),
            Err(e) => warn!("cannot start connection thread: {e}"),
        }
    }
}

/// Binds a listening socket, removing a stale socket file first.
fn bind_socket(path: &Path) -> Result<UnixListener, Error> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(Error::InUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(|source| Error::Bind {
            path: path.to_owned(),
            source,
        })?;
    }
    UnixListener::bind(path).map_err(|source| Error::Bind {
        path: path.to_owned(),
        source,
    })
}

/// A xenstore daemon emulator bound to a unix socket.
///
/// Connections on the main socket are dom0 (privileged). `INTRODUCE` of
/// domain N by dom0 creates `<socket>.d<N>`; see the crate documentation.
#[derive(Debug)]
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
    limits: Limits,
}

impl Server {
    /// Creates the listening socket (a stale socket file is removed).
    pub fn bind(socket: &Path) -> Result<Server, Error> {
        let listener = bind_socket(socket)?;
        Ok(Server {
            listener,
            path: socket.to_owned(),
            limits: Limits::default(),
        })
    }

    /// Replaces the quotas and bounds (defaults: [`Limits::default`]).
    pub fn with_limits(mut self, limits: Limits) -> Server {
        self.limits = limits;
        self
    }

    /// The socket path.
    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// Starts serving in background threads.
    pub fn spawn(self) -> Result<ServerHandle, Error> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                store: Store::new(self.limits),
                conns: HashMap::new(),
                domains: HashMap::new(),
                targets: HashMap::new(),
                next_conn: 0,
            }),
            threads: Mutex::new(Vec::new()),
            socket_path: self.path.clone(),
            stopping: AtomicBool::new(false),
        });
        let main = Listener::start(&shared, self.path.clone(), self.listener, Caller::DOM0)?;
        info!(socket = %self.path.display(), "xenstored emulator listening");
        Ok(ServerHandle {
            shared,
            main,
            path: self.path,
            stopped: false,
        })
    }

    /// Serves until the process ends.
    pub fn run(self) -> Result<(), Error> {
        let handle = self.spawn()?;
        loop {
            std::thread::park();
            if handle.shared.stopping.load(Ordering::SeqCst) {
                return Ok(());
            }
        }
    }
}

/// A running server; [`ServerHandle::shutdown`] (or drop) stops it.
#[derive(Debug)]
pub struct ServerHandle {
    shared: Arc<Shared>,
    main: Listener,
    path: PathBuf,
    stopped: bool,
}

impl ServerHandle {
    /// The main (dom0) socket path.
    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// The socket domain `domid` connects to once introduced.
    pub fn domain_socket_path(&self, domid: u16) -> PathBuf {
        self.shared.domain_socket(domid)
    }

    /// Stops all listeners, closes every connection and joins all threads.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.main.stop();
        {
            let mut st = self.shared.lock();
            for (_, listener) in st.domains.drain() {
                listener.stop();
            }
            for conn in st.conns.values() {
                conn.kill();
            }
        }
        loop {
            let batch: Vec<_> = {
                let mut threads = self
                    .shared
                    .threads
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                threads.drain(..).collect()
            };
            if batch.is_empty() {
                break;
            }
            for t in batch {
                let _ = t.join();
            }
        }
        info!(socket = %self.path.display(), "xenstored emulator stopped");
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}
