//! rustbk xenstored: a xenstore daemon emulator speaking the real wire
//! protocol (`xen/include/public/io/xs_wire.h`, Xen's
//! `docs/misc/xenstore.txt`), plus a small blocking client.
//!
//! Real clients work against it unchanged: Debian's `xenstore-*` tools and
//! the `xenstore-rs` crate, pointed at the socket with `XENSTORED_PATH`.
//!
//! # Semantics
//!
//! The server follows the C `xenstored`: `WRITE`/`MKDIR` create missing
//! parents, new nodes inherit their parent's permissions (a guest becomes
//! owner of what it creates), `RM` is recursive and succeeds for a missing
//! node whose parent exists, permission failures answer `EACCES` whenever
//! the caller may not see the parent either, transactions detect conflicts
//! per node generation of everything they read and fail with `EAGAIN`,
//! watches fire once on registration, for the node and its descendants, and
//! for transactions at commit. Errors are the errno *names* (`ENOENT\0`);
//! unknown message types get `ENOSYS`, privileged requests from guests
//! `EACCES`, a header announcing more than 4096 payload bytes closes the
//! connection. Guests are held to the C daemon's default quotas
//! ([`Limits`]).
//!
//! # Domains in the emulator
//!
//! There is no shared ring page: every connection on the main socket is
//! dom0 (privileged). When dom0 sends `INTRODUCE <N> <mfn> <port>`, the
//! server creates an extra listening socket **`<socket path>.d<N>`**; every
//! connection accepted there *is* domain N (unprivileged, permission
//! checked, relative paths resolve to `/local/domain/N`). This is how an
//! emulated guest frontend connects "as itself". `@introduceDomain` fires
//! on the first introduce. `RELEASE <N>` removes that socket, closes the
//! domain's connections (dropping their watches and transactions) and fires
//! `@releaseDomain`.
//!
//! ```no_run
//! use rustbk_xenstored::{Server, XsClient};
//! # fn main() -> Result<(), rustbk_xenstored::Error> {
//! let server = Server::bind("/tmp/xs.sock".as_ref())?.spawn()?;
//! let dom0 = XsClient::connect(server.socket_path())?;
//! dom0.introduce(5, 0, 1)?;
//! let guest = XsClient::connect(&server.domain_socket_path(5))?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod client;
pub mod error;
pub mod path;
pub mod perms;
pub mod server;
pub mod store;
pub mod wire;

pub use client::{WatchEvent, XsClient};
pub use error::Error;
pub use perms::{Access, Caller, Perm};
pub use server::{Server, ServerHandle};
pub use store::Limits;
pub use wire::Errno;
