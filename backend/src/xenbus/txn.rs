//! Writing several nodes in one xenstore transaction.
//!
//! `xenstore-rs` 0.8 has no transactions, so this speaks the few messages a transaction needs
//! (Xen's `docs/misc/xenstore.txt`: TRANSACTION_START, WRITE, TRANSACTION_END) on a connection
//! of its own, opened as `xenstore-rs` opens one: the socket named by `XENSTORED_PATH`
//! (default `/run/xenstored/socket`), else the xenbus device. Blocking: run it off the async
//! threads.

use std::io::{self, Read, Write};

const TRANSACTION_START: u32 = 6;
const TRANSACTION_END: u32 = 7;
const WRITE: u32 = 11;
const ERROR: u32 = 16;
const HEADER_LEN: usize = 16;
/// Largest payload xenstored accepts (`XENSTORE_PAYLOAD_MAX`).
const PAYLOAD_MAX: usize = 4096;
/// Commits retried after a conflict (`EAGAIN`), as Linux retries its transactions.
const ATTEMPTS: usize = 16;

/// One connection: the socket or the xenbus device.
trait Conn: Read + Write {}
impl<T: Read + Write> Conn for T {}

fn open() -> io::Result<Box<dyn Conn>> {
    let path = std::env::var("XENSTORED_PATH").unwrap_or_else(|_| "/run/xenstored/socket".into());
    match std::os::unix::net::UnixStream::connect(&path) {
        Ok(s) => Ok(Box::new(s)),
        Err(socket) => {
            let device = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/xen/xenbus");
            device
                .map(|f| Box::new(f) as Box<dyn Conn>)
                .map_err(|_| socket)
        }
    }
}

/// Sends one request and returns the reply's payload; an ERROR reply becomes an error whose
/// message is xenstored's (`EAGAIN`, `EACCES`, ...).
fn request(conn: &mut dyn Conn, kind: u32, tx: u32, payload: &[u8]) -> io::Result<Vec<u8>> {
    if payload.len() > PAYLOAD_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "payload too long",
        ));
    }
    let mut msg = Vec::with_capacity(HEADER_LEN + payload.len());
    for word in [kind, 0, tx, u32::try_from(payload.len()).unwrap_or(0)] {
        msg.extend_from_slice(&word.to_le_bytes());
    }
    msg.extend_from_slice(payload);
    conn.write_all(&msg)?;
    let mut head = [0u8; HEADER_LEN];
    conn.read_exact(&mut head)?;
    let word = |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    let len = usize::try_from(word(12)).unwrap_or(usize::MAX);
    if len > PAYLOAD_MAX {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "reply too long"));
    }
    let mut reply = vec![0u8; len];
    conn.read_exact(&mut reply)?;
    match word(0) {
        ERROR => Err(xs_error(&reply)),
        k if k == kind => Ok(reply),
        k => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("reply of type {k} to a request of type {kind}"),
        )),
    }
}

fn xs_error(reply: &[u8]) -> io::Error {
    let name = String::from_utf8_lossy(reply.split(|b| *b == 0).next().unwrap_or_default());
    let kind = match name.as_ref() {
        "EAGAIN" => io::ErrorKind::WouldBlock,
        "ENOENT" => io::ErrorKind::NotFound,
        "EACCES" => io::ErrorKind::PermissionDenied,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, format!("xenstored says {name}"))
}

/// One attempt: start, write every node, commit. A failed write aborts.
fn attempt(conn: &mut dyn Conn, writes: &[(String, String)]) -> io::Result<()> {
    let id = request(conn, TRANSACTION_START, 0, b"\0")?;
    let tx = std::str::from_utf8(id.split(|b| *b == 0).next().unwrap_or_default())
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad transaction id"))?;
    for (path, value) in writes {
        let mut payload = Vec::with_capacity(path.len() + 1 + value.len());
        payload.extend_from_slice(path.as_bytes());
        payload.push(0);
        payload.extend_from_slice(value.as_bytes());
        if let Err(e) = request(conn, WRITE, tx, &payload) {
            let _ = request(conn, TRANSACTION_END, tx, b"F\0");
            return Err(e);
        }
    }
    request(conn, TRANSACTION_END, tx, b"T\0").map(drop)
}

/// Writes every `(path, value)` in one transaction: another reader sees all of them or none.
/// A commit that conflicts with another writer is tried again.
pub(super) fn write_all(writes: &[(String, String)]) -> io::Result<()> {
    write_all_on(&mut *open()?, writes)
}

/// [`write_all`] on an open connection.
fn write_all_on(conn: &mut dyn Conn, writes: &[(String, String)]) -> io::Result<()> {
    let mut last = None;
    for _ in 0..ATTEMPTS {
        match attempt(conn, writes) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => last = Some(e),
            other => return other,
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("transaction never committed")))
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    use rustbk_xenstored::{Server, XsClient};

    use super::*;

    #[test]
    fn every_node_is_written_in_one_transaction_that_fires_watches() {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::bind(&dir.path().join("xs.sock"))
            .unwrap()
            .spawn()
            .unwrap();
        let xs = XsClient::connect(server.socket_path()).unwrap();
        xs.write("/be/state", "4").unwrap();
        xs.watch("/be/state", "t").unwrap();
        while xs.next_event(Duration::from_millis(200)).unwrap().is_some() {}
        let mut conn = UnixStream::connect(server.socket_path()).unwrap();
        let writes = [
            ("/be/sectors".to_owned(), "65536".to_owned()),
            ("/be/state".to_owned(), "4".to_owned()),
        ];
        write_all_on(&mut conn, &writes).unwrap();
        assert_eq!(xs.read("/be/sectors").unwrap(), "65536");
        assert_eq!(xs.read("/be/state").unwrap(), "4");
        let ev = xs.next_event(Duration::from_secs(5)).unwrap();
        assert_eq!(
            ev.map(|e| e.path),
            Some("/be/state".to_owned()),
            "rewrite fires"
        );
    }

    #[test]
    fn a_refused_write_aborts_the_transaction_with_xenstoreds_reason() {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::bind(&dir.path().join("xs.sock"))
            .unwrap()
            .spawn()
            .unwrap();
        let xs = XsClient::connect(server.socket_path()).unwrap();
        let mut conn = UnixStream::connect(server.socket_path()).unwrap();
        let writes = [
            ("/be/sectors".to_owned(), "1".to_owned()),
            ("/be/bad!node".to_owned(), "x".to_owned()),
        ];
        let err = write_all_on(&mut conn, &writes).unwrap_err();
        assert!(err.to_string().starts_with("xenstored says E"), "{err}");
        assert_eq!(xs.try_read("/be/sectors").unwrap(), None, "aborted");
    }
}
