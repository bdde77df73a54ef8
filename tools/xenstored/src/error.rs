//! The crate's error type.

use std::path::PathBuf;

use crate::wire::Errno;

/// Errors of the xenstore server and client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A socket operation failed.
    #[error("Socket I/O failed")]
    Io(#[from] std::io::Error),
    /// Binding the listening socket failed.
    #[error("Cannot bind xenstore socket {path}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Another server already answers on the socket path.
    #[error("A xenstore server is already listening on {0}")]
    InUse(PathBuf),
    /// xenstored answered with an error (`ENOENT`, `EACCES`, `EAGAIN`, ...).
    #[error("xenstored replied {0}")]
    Xs(Errno),
    /// xenstored answered with an error name this crate does not know.
    #[error("xenstored replied unknown error {0:?}")]
    UnknownErrno(String),
    /// The peer broke the protocol (unexpected reply type, bad payload).
    #[error("Protocol violation: {0}")]
    Protocol(String),
    /// A request or value does not fit the protocol (payload > 4096 bytes).
    #[error("Request too large: {0} bytes")]
    TooLarge(usize),
    /// The connection to xenstored is gone.
    #[error("Connection to xenstored closed")]
    Disconnected,
    /// Waiting for a reply took longer than the configured timeout.
    #[error("Timed out waiting for xenstored")]
    Timeout,
}

impl Error {
    /// The xenstore error name, if xenstored replied with an error.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Error::Xs(e) => Some(*e),
            _ => None,
        }
    }

    /// Whether this is an `ENOENT` reply (node does not exist).
    pub fn is_not_found(&self) -> bool {
        self.errno() == Some(Errno::Enoent)
    }
}
