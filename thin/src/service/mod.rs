//! The pool service: one process owns a pool's metadata and serves its volumes' ports over a
//! Unix stream socket, so workers in other processes ([`SocketPort`]) serve the volumes.
//!
//! One thread per connection (one connection per served volume); each connection drives a
//! [`crate::pool::LocalPort`] of the pool, which does every check, and gives back its unmapped
//! blocks when the connection ends, also when the worker was killed. See `thin/DESIGN.md`
//! ("The pool service").

mod admin;
mod client;
mod conn;
mod listen;
mod pipeline;
mod wire;

#[cfg(test)]
mod child;
#[cfg(test)]
mod replay;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_proc;

pub use admin::AdminClient;
pub use client::{DEFAULT_CALL_TIMEOUT, SocketPort, open_volume};

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::error::{Error, Result};
use crate::pool::{Pool, PoolOptions};

/// How long a reply or a pause request may wait for a worker to read: a worker that stops
/// reading loses its connection (and so cannot hold up a snapshot of its volume for ever).
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Most connections open at once (one thread each).
const MAX_CONNECTIONS: usize = 1024;
/// How often the accept loop and [`run_until`] look at their stop flags.
const POLL: Duration = Duration::from_millis(50);

/// A pool served on a socket. [`Service::stop`] closes every connection and commits.
pub struct Service {
    shared: Arc<Inner>,
    acceptor: Option<JoinHandle<()>>,
}

struct Inner {
    pool: Pool,
    socket: PathBuf,
    /// The user the service runs as: connections of others (but root) are refused.
    owner: u32,
    stop: AtomicBool,
    /// The open connections (a second handle of each, to shut it down) and their threads.
    conns: Mutex<Conns>,
}

#[derive(Default)]
struct Conns {
    next: u64,
    open: HashMap<u64, UnixStream>,
    threads: Vec<JoinHandle<()>>,
}

impl Service {
    /// Serves `pool` on a new socket at `socket` (mode 0600). A live socket there (a service
    /// answers) is refused with [`Error::Busy`]; a stale one is replaced.
    pub fn start(pool: Pool, socket: &Path) -> Result<Service> {
        let bound = listen::bind(socket)?;
        let listener = bound.listener;
        let shared = Arc::new(Inner {
            pool,
            owner: bound.owner,
            socket: socket.to_owned(),
            stop: AtomicBool::new(false),
            conns: Mutex::default(),
        });
        let inner = shared.clone();
        let acceptor = std::thread::Builder::new()
            .name("thin-service".into())
            .spawn(move || inner.accept_loop(&listener))
            .map_err(|e| Error::Service(format!("cannot start the service thread: {e}")))?;
        Ok(Service {
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// Connections open now (volume ports and admin channels).
    pub fn connections(&self) -> usize {
        self.shared.conns.lock().map_or(0, |c| c.open.len())
    }

    /// The pool served (to create volumes and snapshots in the service's process).
    pub fn pool(&self) -> &Pool {
        &self.shared.pool
    }

    /// Stops accepting, closes every connection (their ports give back their blocks), waits
    /// for the connection threads, removes the socket and commits the pool.
    pub fn stop(mut self) -> Result<()> {
        self.shutdown();
        self.shared.pool.commit()
    }

    /// Closes every connection at once and stops accepting, as the service's death would,
    /// without the final commit (crash tests; dropping the service then drops the pool).
    #[cfg(test)]
    pub(crate) fn close_connections(&mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let threads = match self.shared.conns.lock() {
            Ok(mut conns) => {
                for stream in conns.open.values() {
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                }
                std::mem::take(&mut conns.threads)
            }
            Err(_) => Vec::new(),
        };
        for thread in threads {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.shared.socket);
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if self.acceptor.is_some() {
            self.shutdown();
        }
    }
}

impl Inner {
    /// Accepts connections as soon as they arrive; looks at the stop flag at least every
    /// [`POLL`].
    fn accept_loop(self: &Arc<Inner>, listener: &UnixListener) {
        while !self.stop.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((stream, _)) => self.admit(stream),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => wait_readable(listener),
                Err(e) => {
                    tracing::warn!(error = %e, "accept on the pool socket failed");
                    std::thread::sleep(POLL);
                }
            }
        }
    }

    /// Starts a thread for a new connection from a process of our user (or root).
    fn admit(self: &Arc<Inner>, stream: UnixStream) {
        if let Err(why) = listen::check_peer(&stream, self.owner) {
            tracing::warn!(%why, "connection refused");
            return;
        }
        let Ok(mut conns) = self.conns.lock() else {
            return;
        };
        conns.threads.retain(|t| !t.is_finished());
        if conns.open.len() >= MAX_CONNECTIONS {
            tracing::warn!("{MAX_CONNECTIONS} connections open; refusing another");
            return;
        }
        let ready = stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_write_timeout(Some(SEND_TIMEOUT)));
        let (Ok(()), Ok(handle)) = (ready, stream.try_clone()) else {
            tracing::warn!("cannot set up a new connection");
            return;
        };
        let id = conns.next;
        conns.next += 1;
        conns.open.insert(id, handle);
        let inner = self.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("thin-conn-{id}"))
            .spawn(move || {
                conn::serve_connection(&inner.pool, stream);
                if let Ok(mut conns) = inner.conns.lock() {
                    conns.open.remove(&id);
                }
            });
        match spawned {
            Ok(thread) => conns.threads.push(thread),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a connection thread");
                conns.open.remove(&id);
            }
        }
    }
}

/// Waits until a connection is pending on `listener`, or [`POLL`] passed.
fn wait_readable(listener: &UnixListener) {
    let ms = u16::try_from(POLL.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
    if let Err(e) = poll(&mut fds, PollTimeout::from(ms)) {
        if e != nix::errno::Errno::EINTR {
            tracing::warn!(error = %e, "poll on the pool socket failed");
            std::thread::sleep(POLL);
        }
    }
}

/// Opens the pool, serves it on `socket` until SIGTERM or SIGINT, then stops cleanly (every
/// connection closed, the socket removed, a final commit). Call it before starting other
/// threads: it blocks both signals in the calling thread, and the threads it starts inherit
/// that.
pub fn run(
    metadata: &Path,
    data: &Path,
    socket: &Path,
    opts: PoolOptions,
    idle_exit: Option<Duration>,
) -> Result<()> {
    run_until(
        metadata,
        data,
        socket,
        opts,
        (&AtomicBool::new(false), idle_exit),
    )
}

/// [`run`], also stopping when `stop` is set, or once no connection was open for `idle`.
pub fn run_until(
    metadata: &Path,
    data: &Path,
    socket: &Path,
    opts: PoolOptions,
    (stop, idle): (&AtomicBool, Option<Duration>),
) -> Result<()> {
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    let sys = |e: nix::Error| Error::Service(format!("signal handling: {e}"));
    signals.thread_block().map_err(sys)?;
    let fd = SignalFd::with_flags(&signals, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(sys)?;
    let service = Service::start(Pool::open(metadata, data, opts)?, socket)?;
    tracing::info!(socket = %socket.display(), "pool service started");
    let mut idle_since = None;
    while !stop.load(Ordering::SeqCst) {
        match fd.read_signal() {
            Ok(Some(sig)) => {
                tracing::info!(signal = sig.ssi_signo, "pool service stopping");
                break;
            }
            Ok(None) => std::thread::sleep(POLL),
            Err(e) => return Err(sys(e)),
        }
        if let Some(idle) = idle {
            idle_since = match service.connections() {
                0 => Some(idle_since.unwrap_or_else(Instant::now)),
                _ => None,
            };
            if idle_since.is_some_and(|since: Instant| since.elapsed() >= idle) {
                tracing::info!(
                    idle_secs = idle.as_secs(),
                    "no connection for a while: pool service stopping"
                );
                break;
            }
        }
    }
    service.stop()
}
