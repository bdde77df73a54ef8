//! Volume operations on a served pool: while the service holds the metadata, the `rustbk
//! thin` tools ask it over an admin connection (first frame `admin`) to create, delete,
//! resize and snapshot volumes and to report usage. A snapshot of a served volume pauses its
//! workers through their own connections, as in one process.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::wire::{self, AdminRequest, Reply, Request, WireError};
use crate::error::{Error, Result};
use crate::pool::{Pool, PoolUsage, VolumeSpec, VolumeUsage};

/// Serves an admin connection: every request is answered, a failed one with its error; a
/// malformed frame closes the connection.
pub(super) fn serve_admin(pool: &Pool, stream: &mut UnixStream) {
    loop {
        let request = match wire::read_frame::<AdminRequest>(stream) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "bad admin frame; closing the connection");
                return;
            }
        };
        let reply = run(pool, request).unwrap_or_else(|e| Reply::Failed {
            error: WireError::from(&e),
        });
        if wire::write_frame(stream, &reply).is_err() {
            return;
        }
    }
}

fn run(pool: &Pool, request: AdminRequest) -> Result<Reply> {
    match request {
        AdminRequest::CreateVolume {
            id,
            size,
            name,
            origin,
        } => pool.create_volume(id, VolumeSpec { size, name, origin })?,
        AdminRequest::DeleteVolume { id } => pool.delete_volume(id)?,
        AdminRequest::ResizeVolume { id, size } => pool.resize_volume(id, size)?,
        AdminRequest::Snapshot { origin, id, name } => {
            let held = pool.snapshot_timed(origin, id, &name)?;
            let held_us = u64::try_from(held.as_micros()).unwrap_or(u64::MAX);
            return Ok(Reply::Snapshot { held_us });
        }
        AdminRequest::Usage => {
            return Ok(Reply::Usage {
                usage: pool.usage()?,
            });
        }
        AdminRequest::Volumes => {
            return Ok(Reply::Volumes {
                volumes: pool.volumes()?,
            });
        }
        AdminRequest::Commit => pool.commit()?,
        AdminRequest::Grow => {
            let (data_blocks, metadata_blocks) = pool.grow()?;
            return Ok(Reply::Grown {
                data_blocks,
                metadata_blocks,
            });
        }
    }
    Ok(Reply::Done)
}

/// An admin connection to a pool service.
pub struct AdminClient {
    stream: UnixStream,
}

impl AdminClient {
    /// Connects to the service at `socket`; every call waits at most `timeout` for its
    /// answer (a snapshot waits for the volume's workers to pause: give it more than the
    /// pool's pause timeout).
    pub fn connect(socket: &Path, timeout: Duration) -> Result<AdminClient> {
        let err = |e: std::io::Error| {
            Error::Service(format!("cannot connect to {}: {e}", socket.display()))
        };
        let mut stream = UnixStream::connect(socket).map_err(err)?;
        stream.set_read_timeout(Some(timeout)).map_err(err)?;
        stream.set_write_timeout(Some(timeout)).map_err(err)?;
        let first = Request::Admin {
            protocol: wire::PROTOCOL,
        };
        wire::write_frame(&mut stream, &first).map_err(|e| Error::Service(e.to_string()))?;
        Ok(AdminClient { stream })
    }

    fn call(&mut self, request: &AdminRequest) -> Result<Reply> {
        let lost = |e: wire::FrameError| Error::Service(format!("admin connection: {e}"));
        wire::write_frame(&mut self.stream, request).map_err(lost)?;
        match wire::read_frame::<Reply>(&mut self.stream).map_err(lost)? {
            Some(Reply::Failed { error }) => Err(error.into()),
            Some(reply) => Ok(reply),
            None => Err(Error::Service(
                "the pool service closed the connection".into(),
            )),
        }
    }

    fn done(&mut self, request: &AdminRequest) -> Result<()> {
        match self.call(request)? {
            Reply::Done => Ok(()),
            other => Err(Error::Service(format!("unexpected reply {other:?}"))),
        }
    }

    /// Creates volume `id`.
    pub fn create_volume(&mut self, id: u64, spec: VolumeSpec) -> Result<()> {
        let VolumeSpec { size, name, origin } = spec;
        self.done(&AdminRequest::CreateVolume {
            id,
            size,
            name,
            origin,
        })
    }

    /// Deletes volume `id` (refused while it is served).
    pub fn delete_volume(&mut self, id: u64) -> Result<()> {
        self.done(&AdminRequest::DeleteVolume { id })
    }

    /// Resizes volume `id`.
    pub fn resize_volume(&mut self, id: u64, size: u64) -> Result<()> {
        self.done(&AdminRequest::ResizeVolume { id, size })
    }

    /// Snapshots volume `origin` as `id`, pausing its workers.
    pub fn snapshot(&mut self, origin: u64, id: u64, name: &str) -> Result<()> {
        self.snapshot_timed(origin, id, name).map(drop)
    }

    /// [`AdminClient::snapshot`], also telling how long the origin's workers were held
    /// still (not told by a service from before it told that).
    pub fn snapshot_timed(&mut self, origin: u64, id: u64, name: &str) -> Result<Option<Duration>> {
        let name = name.to_owned();
        match self.call(&AdminRequest::Snapshot { origin, id, name })? {
            Reply::Done => Ok(None),
            Reply::Snapshot { held_us } => Ok(Some(Duration::from_micros(held_us))),
            other => Err(Error::Service(format!("unexpected reply {other:?}"))),
        }
    }

    /// Commits the pool.
    pub fn commit(&mut self) -> Result<()> {
        self.done(&AdminRequest::Commit)
    }

    /// The pool's space figures.
    pub fn usage(&mut self) -> Result<PoolUsage> {
        match self.call(&AdminRequest::Usage)? {
            Reply::Usage { usage } => Ok(usage),
            other => Err(Error::Service(format!("unexpected reply {other:?}"))),
        }
    }

    /// Lets the pool take in its grown devices ([`Pool::grow`]).
    pub fn grow(&mut self) -> Result<(u64, u64)> {
        match self.call(&AdminRequest::Grow)? {
            Reply::Grown {
                data_blocks,
                metadata_blocks,
            } => Ok((data_blocks, metadata_blocks)),
            other => Err(Error::Service(format!("unexpected reply {other:?}"))),
        }
    }

    /// Every volume with its usage.
    pub fn volumes(&mut self) -> Result<Vec<VolumeUsage>> {
        match self.call(&AdminRequest::Volumes)? {
            Reply::Volumes { volumes } => Ok(volumes),
            other => Err(Error::Service(format!("unexpected reply {other:?}"))),
        }
    }
}
