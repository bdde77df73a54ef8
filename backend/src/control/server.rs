//! The control socket: accepts clients and answers their requests line by line.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rustbk_ring::DomId;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::proto::{Reply, Request};
use super::registry::{Answer, Command, Registry};

/// Longest request line a client may send.
const MAX_LINE: usize = 4096;

/// The socket of the worker serving every disk of guest `domid`.
pub fn guest_socket(dir: &Path, domid: DomId) -> PathBuf {
    dir.join(format!("guest-{}.sock", domid.0))
}

/// The socket of a worker started for disk `devid` of guest `domid` alone.
pub fn disk_socket(dir: &Path, domid: DomId, devid: u32) -> PathBuf {
    dir.join(format!("disk-{}-{devid}.sock", domid.0))
}

/// Every worker socket in `dir`, sorted (a socket whose worker died refuses connections).
pub fn socket_paths(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            (name.starts_with("guest-") || name.starts_with("disk-")) && name.ends_with(".sock")
        })
        .collect();
    out.sort();
    Ok(out)
}

/// A bound control socket; its file is removed when this is dropped.
#[derive(Debug)]
pub struct ControlSocket {
    listener: Option<UnixListener>,
    path: PathBuf,
}

impl ControlSocket {
    /// Binds `path`, replacing a socket file a dead worker left (the caller holds whatever
    /// makes it the only worker for this path), readable and writable by its owner only.
    pub fn bind(path: &Path) -> std::io::Result<ControlSocket> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        match std::fs::remove_file(path) {
            Ok(()) => tracing::debug!(path = %path.display(), "removed a stale control socket"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(ControlSocket {
            listener: Some(listener),
            path: path.to_owned(),
        })
    }

    /// The socket file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.listener.take();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Answers clients of `socket` until the future is dropped.
pub async fn serve(socket: &mut ControlSocket, registry: Registry) {
    let Some(listener) = socket.listener.as_ref() else {
        return;
    };
    tracing::info!(path = %socket.path.display(), "control socket listening");
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(client(stream, registry.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Serves one client: a reply line per request line, until it hangs up or sends a line that
/// is too long.
async fn client(stream: UnixStream, registry: Registry) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut line = String::new();
    loop {
        line.clear();
        let (reply, go_on) = match read_line(&mut lines, &mut line).await {
            Ok(0) => return,
            Ok(_) => (answer(&registry, line.trim()).await, true),
            Err(message) => (Reply::Error { message }, false),
        };
        let mut text = serde_json::to_string(&reply).unwrap_or_else(|e| {
            format!(r#"{{"result":"error","message":"cannot encode the reply: {e}"}}"#)
        });
        text.push('\n');
        if write.write_all(text.as_bytes()).await.is_err() || !go_on {
            return;
        }
    }
}

/// Reads one line of at most [`MAX_LINE`] bytes; `Ok(0)` at the end.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    from: &mut R,
    line: &mut String,
) -> Result<usize, String> {
    let mut limited = tokio::io::AsyncReadExt::take(from, MAX_LINE as u64);
    let n = limited
        .read_line(line)
        .await
        .map_err(|e| format!("cannot read the request: {e}"))?;
    if n == MAX_LINE && !line.ends_with('\n') {
        return Err(format!("request longer than {MAX_LINE} bytes"));
    }
    Ok(n)
}

/// The reply to one request line.
async fn answer(registry: &Registry, line: &str) -> Reply {
    let request: Request = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => {
            return Reply::Error {
                message: format!("bad request: {e}"),
            };
        }
    };
    tracing::debug!(?request, "control request");
    let done = |r: Result<Answer, String>| match r {
        Ok(Answer::Done) => Reply::Done,
        Ok(Answer::Resized(r)) => Reply::Resized(r),
        Err(message) => Reply::Error { message },
    };
    match request {
        Request::List => Reply::Devices {
            devices: registry.reports(None, false),
        },
        Request::Stats { devid } => {
            let devices = registry.reports(devid, true);
            match (devid, devices.is_empty()) {
                (Some(d), true) => Reply::Error {
                    message: format!("no device {d} in this worker"),
                },
                _ => Reply::Devices { devices },
            }
        }
        Request::Pause { devid } => done(registry.command(devid, Command::Pause).await),
        Request::Unpause { devid } => done(registry.command(devid, Command::Unpause).await),
        Request::Close { devid } => done(registry.command(devid, Command::Close).await),
        Request::Qos { devid, limits } => match crate::qos::QosLimits::parse_list(&limits) {
            Ok(l) => done(registry.command(devid, Command::Qos(l)).await),
            Err(message) => Reply::Error { message },
        },
        Request::Resize { devid, size } => {
            done(registry.command(devid, Command::Resize(size)).await)
        }
    }
}
