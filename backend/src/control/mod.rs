//! Runtime control of a worker process, in the manner of `tap-ctl`.
//!
//! Every worker process listens on a Unix socket in the daemon's lock folder (the folder of
//! the per-guest lock files, `/run/rustbk` by default): `guest-<domid>.sock` for a worker that
//! serves a whole guest, `disk-<domid>-<devid>.sock` for one started for a single disk. The
//! socket is only reachable by its owner (mode 0600). `rustbk ctl` finds the workers by these
//! sockets.
//!
//! The protocol is one JSON object per line each way ([`Request`], [`Reply`]): a client sends
//! requests and reads one reply per request, in order.
//!
//! Each served device registers in the process's [`Registry`] and gets a [`DeviceControl`]:
//! its counters, the status `list` shows, and the commands (`pause`, `unpause`, `close`) its
//! state machine carries out.

mod metrics;
mod proto;
mod registry;
mod server;

pub use metrics::prometheus_text;
pub use proto::{DeviceReport, Reply, Request};
pub use registry::{Command, DeviceControl, DeviceStatus, Pending, Registry};
pub use server::{ControlSocket, disk_socket, guest_socket, serve, socket_paths};
