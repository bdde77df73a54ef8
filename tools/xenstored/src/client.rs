//! A small blocking xenstore client over the unix socket.
//!
//! [`XsClient`] is `Send + Sync`: any thread may issue requests through
//! `&self`. A reader thread routes replies to their requester by `req_id`
//! and watch events to a channel read with [`XsClient::next_event`].

use std::collections::HashMap;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::Error;
use crate::perms::Perm;
use crate::wire::{Errno, Message, MsgType, PAYLOAD_MAX, join_nul, nul_strings, one_arg};

/// Default time to wait for a reply.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// A fired watch.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WatchEvent {
    /// Path of the changed node (relative if the watch path was).
    pub path: String,
    /// The token given to [`XsClient::watch`].
    pub token: String,
}

#[derive(Debug)]
struct Inner {
    writer: Mutex<UnixStream>,
    pending: Mutex<Pending>,
    next_req: AtomicU32,
}

#[derive(Debug, Default)]
struct Pending {
    waiters: HashMap<u32, SyncSender<Message>>,
    closed: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A connection to a xenstore daemon.
#[derive(Debug)]
pub struct XsClient {
    inner: Arc<Inner>,
    events: Mutex<Receiver<WatchEvent>>,
    reader: Mutex<Option<JoinHandle<()>>>,
    closed: Arc<AtomicBool>,
    timeout: Option<Duration>,
}

impl XsClient {
    /// Connects to the daemon socket (or an introduced domain's socket).
    pub fn connect(socket: &Path) -> Result<XsClient, Error> {
        let stream = UnixStream::connect(socket)?;
        let read_half = stream.try_clone()?;
        let inner = Arc::new(Inner {
            writer: Mutex::new(stream),
            pending: Mutex::new(Pending::default()),
            next_req: AtomicU32::new(1),
        });
        let (tx, rx) = mpsc::channel();
        let closed = Arc::new(AtomicBool::new(false));
        let (thread_inner, thread_closed) = (Arc::clone(&inner), Arc::clone(&closed));
        let reader = std::thread::Builder::new()
            .name("xs-client-rx".to_owned())
            .spawn(move || reader_loop(&thread_inner, read_half, &tx, &thread_closed))?;
        Ok(XsClient {
            inner,
            events: Mutex::new(rx),
            reader: Mutex::new(Some(reader)),
            closed,
            timeout: Some(DEFAULT_TIMEOUT),
        })
    }

    /// Sets how long a request waits for its reply (`None`: forever).
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> XsClient {
        self.timeout = timeout;
        self
    }

    /// Whether the connection has been closed by the daemon.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Sends one request and waits for its reply payload.
    pub fn request(&self, ty: MsgType, tx: u32, payload: Vec<u8>) -> Result<Vec<u8>, Error> {
        if payload.len() > PAYLOAD_MAX {
            return Err(Error::TooLarge(payload.len()));
        }
        let req_id = self.inner.next_req.fetch_add(1, Ordering::Relaxed);
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        {
            let mut pending = lock(&self.inner.pending);
            if pending.closed {
                return Err(Error::Disconnected);
            }
            pending.waiters.insert(req_id, reply_tx);
        }
        let msg = Message::new(ty, req_id, tx, payload);
        if let Err(e) = msg.write_to(&mut *lock(&self.inner.writer)) {
            lock(&self.inner.pending).waiters.remove(&req_id);
            return Err(Error::Io(e));
        }
        let reply = match self.timeout {
            Some(t) => reply_rx.recv_timeout(t).map_err(|e| match e {
                RecvTimeoutError::Timeout => Error::Timeout,
                RecvTimeoutError::Disconnected => Error::Disconnected,
            }),
            None => reply_rx.recv().map_err(|_| Error::Disconnected),
        };
        let reply = reply.inspect_err(|_| {
            lock(&self.inner.pending).waiters.remove(&req_id);
        })?;
        check_reply(ty, reply)
    }

    fn request_path(&self, ty: MsgType, tx: u32, path: &str) -> Result<Vec<u8>, Error> {
        self.request(ty, tx, join_nul(&[path]))
    }

    /// Reads a node's value as UTF-8 text.
    pub fn read(&self, path: &str) -> Result<String, Error> {
        self.read_tx(0, path)
    }

    /// Reads a node inside transaction `tx` (0: none).
    pub fn read_tx(&self, tx: u32, path: &str) -> Result<String, Error> {
        String::from_utf8(self.read_bytes_tx(tx, path)?)
            .map_err(|_| Error::Protocol(format!("Value of {path} is not UTF-8")))
    }

    /// Reads a node's raw value.
    pub fn read_bytes(&self, path: &str) -> Result<Vec<u8>, Error> {
        self.read_bytes_tx(0, path)
    }

    /// [`XsClient::read_bytes`] inside transaction `tx`.
    pub fn read_bytes_tx(&self, tx: u32, path: &str) -> Result<Vec<u8>, Error> {
        self.request_path(MsgType::Read, tx, path)
    }

    /// Reads a node; `None` if it does not exist.
    pub fn try_read(&self, path: &str) -> Result<Option<String>, Error> {
        self.try_read_tx(0, path)
    }

    /// [`XsClient::try_read`] inside transaction `tx`.
    pub fn try_read_tx(&self, tx: u32, path: &str) -> Result<Option<String>, Error> {
        match self.read_tx(tx, path) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes a value, creating missing parents.
    pub fn write(&self, path: &str, value: &str) -> Result<(), Error> {
        self.write_bytes_tx(0, path, value.as_bytes())
    }

    /// [`XsClient::write`] inside transaction `tx`.
    pub fn write_tx(&self, tx: u32, path: &str, value: &str) -> Result<(), Error> {
        self.write_bytes_tx(tx, path, value.as_bytes())
    }

    /// Writes a raw value inside transaction `tx` (0: none).
    pub fn write_bytes_tx(&self, tx: u32, path: &str, value: &[u8]) -> Result<(), Error> {
        let mut payload = join_nul(&[path]);
        payload.extend_from_slice(value);
        self.request(MsgType::Write, tx, payload).map(drop)
    }

    /// Creates a node (and parents) if missing.
    pub fn mkdir(&self, path: &str) -> Result<(), Error> {
        self.mkdir_tx(0, path)
    }

    /// [`XsClient::mkdir`] inside transaction `tx`.
    pub fn mkdir_tx(&self, tx: u32, path: &str) -> Result<(), Error> {
        self.request_path(MsgType::Mkdir, tx, path).map(drop)
    }

    /// Removes a node and its subtree.
    pub fn rm(&self, path: &str) -> Result<(), Error> {
        self.rm_tx(0, path)
    }

    /// [`XsClient::rm`] inside transaction `tx`.
    pub fn rm_tx(&self, tx: u32, path: &str) -> Result<(), Error> {
        self.request_path(MsgType::Rm, tx, path).map(drop)
    }

    /// Lists child names.
    pub fn directory(&self, path: &str) -> Result<Vec<String>, Error> {
        self.directory_tx(0, path)
    }

    /// [`XsClient::directory`] inside transaction `tx`.
    pub fn directory_tx(&self, tx: u32, path: &str) -> Result<Vec<String>, Error> {
        let reply = self.request_path(MsgType::Directory, tx, path)?;
        Ok(strings(&reply))
    }

    /// Reads a node's permissions.
    pub fn get_perms(&self, path: &str) -> Result<Vec<Perm>, Error> {
        self.get_perms_tx(0, path)
    }

    /// [`XsClient::get_perms`] inside transaction `tx`.
    pub fn get_perms_tx(&self, tx: u32, path: &str) -> Result<Vec<Perm>, Error> {
        let reply = self.request_path(MsgType::GetPerms, tx, path)?;
        nul_strings(&reply)
            .into_iter()
            .map(|s| {
                Perm::parse(s).ok_or_else(|| Error::Protocol("Bad permission in reply".to_owned()))
            })
            .collect()
    }

    /// Sets a node's permissions (first entry: owner and default).
    pub fn set_perms(&self, path: &str, perms: &[Perm]) -> Result<(), Error> {
        self.set_perms_tx(0, path, perms)
    }

    /// [`XsClient::set_perms`] inside transaction `tx`.
    pub fn set_perms_tx(&self, tx: u32, path: &str, perms: &[Perm]) -> Result<(), Error> {
        let mut parts = vec![path.to_owned()];
        parts.extend(perms.iter().map(Perm::to_string));
        self.request(MsgType::SetPerms, tx, join_nul(&parts))
            .map(drop)
    }

    /// Starts a transaction and returns its id.
    pub fn transaction_start(&self) -> Result<u32, Error> {
        let reply = self.request(MsgType::TransactionStart, 0, vec![0])?;
        one_arg(&reply)
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::Protocol("Bad transaction id".to_owned()))
    }

    /// Commits (`true`) or aborts a transaction; a conflicting commit fails
    /// with `Error::Xs(Errno::Eagain)`.
    pub fn transaction_end(&self, tx: u32, commit: bool) -> Result<(), Error> {
        let arg = if commit { "T" } else { "F" };
        self.request(MsgType::TransactionEnd, tx, join_nul(&[arg]))
            .map(drop)
    }

    /// Runs `f` in a transaction, retrying on `EAGAIN` up to `attempts`
    /// times. An error from `f` aborts the transaction.
    pub fn transaction<T>(
        &self,
        attempts: usize,
        mut f: impl FnMut(u32) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut last = Error::Xs(Errno::Eagain);
        for _ in 0..attempts {
            let tx = self.transaction_start()?;
            let value = match f(tx) {
                Ok(v) => v,
                Err(e) => {
                    let _ = self.transaction_end(tx, false);
                    return Err(e);
                }
            };
            match self.transaction_end(tx, true) {
                Ok(()) => return Ok(value),
                Err(e) if e.errno() == Some(Errno::Eagain) => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// Introduces a domain (dom0 only). In the emulator this opens the
    /// domain's socket `<socket>.d<domid>`.
    pub fn introduce(&self, domid: u16, mfn: u64, port: u32) -> Result<(), Error> {
        let parts = [domid.to_string(), mfn.to_string(), port.to_string()];
        self.request(MsgType::Introduce, 0, join_nul(&parts))
            .map(drop)
    }

    /// Releases an introduced domain (dom0 only).
    pub fn release(&self, domid: u16) -> Result<(), Error> {
        self.request_path(MsgType::Release, 0, &domid.to_string())
            .map(drop)
    }

    /// Whether a domain is introduced (dom0 only).
    pub fn is_domain_introduced(&self, domid: u16) -> Result<bool, Error> {
        let reply = self.request_path(MsgType::IsDomainIntroduced, 0, &domid.to_string())?;
        Ok(one_arg(&reply) == Some(b"T"))
    }

    /// A domain's home path, `/local/domain/<domid>`.
    pub fn get_domain_path(&self, domid: u16) -> Result<String, Error> {
        let reply = self.request_path(MsgType::GetDomainPath, 0, &domid.to_string())?;
        Ok(strings(&reply).into_iter().next().unwrap_or_default())
    }

    /// Registers a watch; an initial event for `path` follows at once.
    /// Events queue up in the client until read with
    /// [`XsClient::next_event`], so a watcher must keep consuming them.
    pub fn watch(&self, path: &str, token: &str) -> Result<(), Error> {
        self.request(MsgType::Watch, 0, join_nul(&[path, token]))
            .map(drop)
    }

    /// Removes a watch.
    pub fn unwatch(&self, path: &str, token: &str) -> Result<(), Error> {
        self.request(MsgType::Unwatch, 0, join_nul(&[path, token]))
            .map(drop)
    }

    /// Drops all watches and transactions of this connection.
    pub fn reset_watches(&self) -> Result<(), Error> {
        self.request(MsgType::ResetWatches, 0, vec![0]).map(drop)
    }

    /// Waits up to `timeout` for the next watch event (`Ok(None)` on
    /// timeout, `Err(Disconnected)` once the connection is gone and all
    /// events were consumed).
    pub fn next_event(&self, timeout: Duration) -> Result<Option<WatchEvent>, Error> {
        match lock(&self.events).recv_timeout(timeout) {
            Ok(ev) => Ok(Some(ev)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(Error::Disconnected),
        }
    }

    /// The next already-received watch event, if any.
    pub fn try_next_event(&self) -> Option<WatchEvent> {
        lock(&self.events).try_recv().ok()
    }
}

impl Drop for XsClient {
    fn drop(&mut self) {
        let _ = lock(&self.inner.writer).shutdown(Shutdown::Both);
        if let Some(reader) = lock(&self.reader).take() {
            let _ = reader.join();
        }
    }
}

fn strings(payload: &[u8]) -> Vec<String> {
    nul_strings(payload)
        .into_iter()
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn check_reply(ty: MsgType, reply: Message) -> Result<Vec<u8>, Error> {
    if reply.msg_type == MsgType::Error.to_u32() {
        let name = one_arg(&reply.payload).unwrap_or(&reply.payload);
        let name = String::from_utf8_lossy(name).into_owned();
        return Err(Errno::from_name(&name).map_or(Error::UnknownErrno(name), Error::Xs));
    }
    if reply.msg_type != ty.to_u32() {
        return Err(Error::Protocol(format!(
            "Reply type {} to request {ty:?}",
            reply.msg_type
        )));
    }
    Ok(reply.payload)
}

fn reader_loop(
    inner: &Inner,
    mut stream: UnixStream,
    events: &Sender<WatchEvent>,
    closed: &AtomicBool,
) {
    while let Ok(msg) = Message::read_from(&mut stream) {
        if msg.kind() == Some(MsgType::WatchEvent) {
            let parts = strings(&msg.payload);
            if let [path, token, ..] = parts.as_slice() {
                let _ = events.send(WatchEvent {
                    path: path.clone(),
                    token: token.clone(),
                });
            }
            continue;
        }
        let waiter = lock(&inner.pending).waiters.remove(&msg.req_id);
        if let Some(waiter) = waiter {
            let _ = waiter.try_send(msg);
        }
    }
    let mut pending = lock(&inner.pending);
    pending.closed = true;
    pending.waiters.clear();
    closed.store(true, Ordering::SeqCst);
}
