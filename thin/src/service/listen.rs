//! The service's socket: created with mode 0600, never replacing a live one, and open to
//! processes of the service's own user (and root) only.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use crate::error::{Error, Result};

/// The bound socket and the user it belongs to (the service's own).
pub(super) struct Bound {
    pub listener: UnixListener,
    pub owner: u32,
}

/// Binds the service's socket at `path`: a socket a service answers on is refused, a stale
/// one (nobody answers) removed, anything else at the path refused. The socket is bound under
/// a temporary name, made 0600 and renamed into place, so it is never reachable with a wider
/// mode.
pub(super) fn bind(path: &Path) -> Result<Bound> {
    clear_stale(path)?;
    let temp = temp_name(path)?;
    let _ = std::fs::remove_file(&temp);
    let err = |what: &str, e: std::io::Error| {
        Error::Service(format!("{what} socket {}: {e}", path.display()))
    };
    let listener = UnixListener::bind(&temp).map_err(|e| err("cannot bind", e))?;
    let ready = std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| listener.set_nonblocking(true))
        .and_then(|()| std::fs::symlink_metadata(&temp))
        .and_then(|meta| std::fs::rename(&temp, path).map(|()| meta.uid()));
    match ready {
        Ok(owner) => Ok(Bound { listener, owner }),
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            Err(err("cannot set up", e))
        }
    }
}

fn clear_stale(path: &Path) -> Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::Service(format!("{}: {e}", path.display()))),
    };
    if !meta.file_type().is_socket() {
        return Err(Error::InvalidArgument(format!(
            "{} exists and is not a socket",
            path.display()
        )));
    }
    if UnixStream::connect(path).is_ok() {
        return Err(Error::Busy(format!(
            "a pool service answers on {}",
            path.display()
        )));
    }
    tracing::info!(socket = %path.display(), "removing a stale socket");
    std::fs::remove_file(path).map_err(|e| Error::Service(format!("{}: {e}", path.display())))
}

fn temp_name(path: &Path) -> Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::InvalidArgument(format!("socket path {}", path.display())))?;
    let mut temp = name.to_os_string();
    temp.push(format!(".{}.tmp", std::process::id()));
    Ok(path.with_file_name(temp))
}

/// Refuses a peer that is neither root nor `owner` (the service's user).
pub(super) fn check_peer(stream: &UnixStream, owner: u32) -> std::result::Result<(), String> {
    let creds = getsockopt(stream, PeerCredentials).map_err(|e| e.to_string())?;
    if creds.uid() == 0 || creds.uid() == owner {
        return Ok(());
    }
    Err(format!("peer uid {} (pid {})", creds.uid(), creds.pid()))
}
