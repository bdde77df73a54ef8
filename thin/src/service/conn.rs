//! One worker's connection to the pool service: a [`LocalPort`] of the pool driven by the
//! frames the worker sends. The port does every check; when the connection ends, however it
//! ends, the port is dropped and gives back the blocks it was handed and did not map.

use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use super::wire::{self, FrameError, MAX_BATCH, MAX_LOOKUP, Reply, Request, WireError};
use crate::error::Error;
use crate::pool::{LocalPort, Pool, Signal, Signaller};
use crate::port::{Handout, PoolPort};

/// The sending half of a connection: replies and the pool's requests are whole frames.
type Sender = Arc<Mutex<UnixStream>>;

/// Serves one connection until the worker closes it, breaks the protocol or the service
/// shuts it down. The first frame says what it is: a volume's port (`open`) or `admin`.
pub(super) fn serve_connection(pool: &Pool, mut stream: UnixStream) {
    match wire::read_frame::<Request>(&mut stream) {
        Ok(Some(Request::Open { protocol, .. } | Request::Admin { protocol }))
            if wire::refusal(protocol).is_some() =>
        {
            refuse(&mut stream, protocol);
        }
        Ok(Some(Request::Open { volume, .. })) => serve_volume(pool, volume, &mut stream),
        Ok(Some(Request::Admin { .. })) => super::admin::serve_admin(pool, &mut stream),
        Ok(None) => {}
        Ok(Some(other)) => {
            tracing::warn!(request = ?other, "a connection must start with open or admin");
        }
        Err(e) => tracing::warn!(error = %e, "bad first frame; closing the connection"),
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// Answers the first frame of a client of another protocol version with the reason, before
/// the connection is closed.
fn refuse(stream: &mut UnixStream, protocol: u32) {
    let Some(why) = wire::refusal(protocol) else {
        return;
    };
    tracing::warn!(
        protocol,
        ours = wire::PROTOCOL,
        "refused a client of another rustbk version"
    );
    let _ = wire::write_frame(stream, &failed(&why));
}

fn serve_volume(pool: &Pool, volume: u64, reader: &mut UnixStream) {
    let sender: Sender = match reader.try_clone() {
        Ok(s) => Arc::new(Mutex::new(s)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot use a new connection");
            return;
        }
    };
    let Some(mut port) = open(pool, volume, &sender) else {
        return;
    };
    let Ok(closer) = reader.try_clone().map(Arc::new) else {
        tracing::warn!("cannot use a new connection");
        return;
    };
    port.set_signaller(signaller(sender.clone(), closer));
    run(&mut port, reader, &sender);
}

/// Sends the pool's requests (pause, give back) to the worker as frames. Each from a thread
/// of its own: the snapshot asking for a pause must not wait behind a reply stuck on a worker
/// that stopped reading. If the request cannot be sent either, the connection is shut down at
/// once (not after a second send timeout): the closed port counts as paused, and its blocks
/// go back to the pool.
fn signaller(sender: Sender, closer: Arc<UnixStream>) -> Signaller {
    Box::new(move |signal| {
        let (sender, closer) = (sender.clone(), closer.clone());
        let frame = match signal {
            Signal::Pause => Reply::PauseRequest,
            Signal::GiveBack => Reply::GiveBackRequest,
        };
        let sent = std::thread::Builder::new()
            .name("thin-signal".into())
            .spawn(move || {
                if send(&sender, &frame).is_err() {
                    tracing::warn!(?frame, "cannot send a request to a worker; closing it");
                    let _ = closer.shutdown(std::net::Shutdown::Both);
                }
            });
        if let Err(e) = sent {
            tracing::warn!(error = %e, ?signal, "cannot start a thread to send a worker a request");
        }
    })
}

/// Opens the port on `volume` and answers with its info.
fn open(pool: &Pool, volume: u64, sender: &Sender) -> Option<LocalPort> {
    let opened = pool.open_port(volume).and_then(|mut port| {
        let info = port.info()?;
        Ok((port, info))
    });
    match opened {
        Ok((port, info)) => {
            let reply = Reply::Info { info: info.into() };
            send(sender, &reply).ok().map(|()| port)
        }
        Err(e) => {
            let _ = send(sender, &failed(&e));
            None
        }
    }
}

fn run(port: &mut LocalPort, stream: &mut UnixStream, sender: &Sender) {
    // Buffered: one `recv` takes a frame's length and body, or several frames at once.
    let mut reader = std::io::BufReader::new(stream);
    loop {
        let request = match wire::read_frame::<Request>(&mut reader) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "bad frame from a worker; closing its connection");
                return;
            }
        };
        let (reply, cut) = match handle(port, request) {
            Ok(reply) => (reply, false),
            Err(e) => {
                let cut = matches!(e, Error::InvalidArgument(_));
                if cut {
                    tracing::warn!(error = %e, "a worker broke the port's contract; closing its connection");
                }
                (failed(&e), cut)
            }
        };
        if send(sender, &reply).is_err() || cut {
            return;
        }
    }
}

fn blocks(handout: Handout) -> Reply {
    Reply::Blocks {
        blocks: handout.blocks,
        zeroed: handout.zeroed,
    }
}

/// Runs one request on the port.
fn handle(port: &mut LocalPort, request: Request) -> crate::Result<Reply> {
    Ok(match request {
        Request::Open { .. } | Request::Admin { .. } => {
            return Err(Error::InvalidArgument("the volume is open already".into()));
        }
        Request::Info => Reply::Info {
            info: port.info()?.into(),
        },
        Request::Lookup { start, end } => {
            check_range(start, end)?;
            let found = port.lookup(start..end)?;
            Reply::Mappings {
                mappings: wire::mappings_to(found),
            }
        }
        Request::Provision { count } => blocks(port.provision_zeroed(count)?),
        Request::ProvisionAhead { count } => blocks(port.provision_ahead(count)?),
        Request::Map { mappings } => {
            check_batch(mappings.len())?;
            port.map(&wire::new_mappings(&mappings))?;
            Reply::Done
        }
        Request::Unmap { start, end } => {
            check_range(start, end)?;
            Reply::Blocks {
                blocks: port.unmap(start..end)?,
                zeroed: Vec::new(),
            }
        }
        Request::Release { blocks } => {
            check_batch(blocks.len())?;
            port.release(&blocks)?;
            Reply::Done
        }
        Request::Commit => {
            port.commit()?;
            Reply::Done
        }
        Request::Paused => Reply::Resumed {
            info: port.paused()?.into(),
        },
    })
}

/// A lookup or unmap covers at most [`MAX_LOOKUP`] blocks, so its reply fits in a frame.
fn check_range(start: u64, end: u64) -> crate::Result<()> {
    if end.saturating_sub(start) > MAX_LOOKUP {
        return Err(Error::InvalidArgument(format!(
            "{start}..{end}: at most {MAX_LOOKUP} blocks a frame"
        )));
    }
    Ok(())
}

fn check_batch(len: usize) -> crate::Result<()> {
    if len > MAX_BATCH {
        return Err(Error::InvalidArgument(format!(
            "{len} entries in a frame: at most {MAX_BATCH}"
        )));
    }
    Ok(())
}

fn failed(e: &Error) -> Reply {
    Reply::Failed {
        error: WireError::from(e),
    }
}

fn send(sender: &Sender, reply: &Reply) -> Result<(), FrameError> {
    let mut stream = sender
        .lock()
        .map_err(|_| FrameError::Io(std::io::Error::other("sender poisoned")))?;
    wire::write_frame(&mut *stream, reply)
}
