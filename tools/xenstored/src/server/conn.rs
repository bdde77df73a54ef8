//! One client connection: a reader thread that processes requests in order
//! and a writer thread that drains the connection's [`Outbox`].
//!
//! Replies and watch events are queued while the state lock is held (never
//! blocking on a socket), so a client that stops reading cannot stall the
//! daemon: its reader simply stops taking requests until the queue drains,
//! and watch events beyond [`EVENT_QUEUE_MAX`] are dropped.

use std::collections::VecDeque;
use std::io::{ErrorKind, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use tracing::{debug, trace};

use super::{Shared, dispatch};
use crate::perms::Caller;
use crate::wire::Message;

/// Queued bytes above which the reader stops taking new requests.
const REPLY_QUEUE_MAX: usize = 256 * 1024;
/// Queued bytes above which watch events for a connection are dropped.
pub(crate) const EVENT_QUEUE_MAX: usize = 4 * 1024 * 1024;

#[derive(Debug, Default)]
struct OutboxInner {
    queue: VecDeque<(bool, Vec<u8>)>,
    bytes: usize,
    closed: bool,
}

/// Outgoing messages of one connection.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    inner: Mutex<OutboxInner>,
    cv: Condvar,
}

impl Outbox {
    fn lock(&self) -> MutexGuard<'_, OutboxInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, is_event: bool, bytes: Vec<u8>) {
        let mut inner = self.lock();
        if inner.closed {
            return;
        }
        inner.bytes = inner.bytes.saturating_add(bytes.len());
        inner.queue.push_back((is_event, bytes));
        self.cv.notify_all();
    }

    /// Queues a reply.
    pub(crate) fn push_reply(&self, bytes: Vec<u8>) {
        self.push(false, bytes);
    }

    /// Queues a watch event unless an identical one is still pending (as the
    /// C daemon, except for `@special` events) or the queue is full.
    pub(crate) fn push_event(&self, bytes: Vec<u8>, special: bool) {
        {
            let inner = self.lock();
            if inner.bytes.saturating_add(bytes.len()) > EVENT_QUEUE_MAX {
                debug!("watch event dropped: connection queue full");
                return;
            }
            if !special && inner.queue.iter().any(|(ev, b)| *ev && *b == bytes) {
                return;
            }
        }
        self.push(true, bytes);
    }

    /// Next message to send; `None` once closed.
    fn pop(&self) -> Option<Vec<u8>> {
        let mut inner = self.lock();
        loop {
            if inner.closed {
                return None;
            }
            if let Some((_, bytes)) = inner.queue.pop_front() {
                inner.bytes = inner.bytes.saturating_sub(bytes.len());
                self.cv.notify_all();
                return Some(bytes);
            }
            inner = self.cv.wait(inner).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Waits until the queue is small enough to take another request;
    /// `false` if the connection was closed meanwhile.
    fn wait_for_room(&self) -> bool {
        let mut inner = self.lock();
        while !inner.closed && inner.bytes > REPLY_QUEUE_MAX {
            inner = self.cv.wait(inner).unwrap_or_else(PoisonError::into_inner);
        }
        !inner.closed
    }

    /// Drops everything queued and wakes both threads.
    pub(crate) fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.queue.clear();
        inner.bytes = 0;
        self.cv.notify_all();
    }
}

/// Serves one accepted connection until it closes.
pub(crate) fn serve(shared: &Arc<Shared>, stream: UnixStream, caller: Caller) {
    let Ok(control) = stream.try_clone() else {
        return;
    };
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let outbox = Arc::new(Outbox::default());
    let Some(id) = shared.register(caller, &outbox, control) else {
        return;
    };
    debug!(conn = id, domid = caller.domid, "connection opened");
    let writer_box = Arc::clone(&outbox);
    let writer = std::thread::Builder::new()
        .name(format!("xs-conn{id}-tx"))
        .spawn(move || write_loop(&writer_box, write_half));
    match writer {
        Ok(writer) => {
            read_loop(shared, id, &stream, &outbox);
            shared.unregister(id);
            outbox.close();
            let _ = stream.shutdown(Shutdown::Both);
            let _ = writer.join();
        }
        Err(_) => {
            shared.unregister(id);
            outbox.close();
        }
    }
    debug!(conn = id, "connection closed");
}

fn read_loop(shared: &Arc<Shared>, id: u64, mut stream: &UnixStream, outbox: &Outbox) {
    loop {
        let msg = match Message::read_from(&mut stream) {
            Ok(msg) => msg,
            Err(e) => {
                if e.kind() == ErrorKind::InvalidData {
                    debug!(conn = id, "dropping client: {e}");
                }
                return;
            }
        };
        trace!(
            conn = id,
            ty = msg.msg_type,
            req = msg.req_id,
            tx = msg.tx_id,
            "request"
        );
        if !outbox.wait_for_room() {
            return;
        }
        let mut state = shared.lock();
        if !dispatch::dispatch(shared, &mut state, id, &msg) {
            return;
        }
    }
}

fn write_loop(outbox: &Outbox, mut stream: UnixStream) {
    while let Some(bytes) = outbox.pop() {
        if stream.write_all(&bytes).is_err() {
            outbox.close();
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
    }
}
