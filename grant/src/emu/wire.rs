//! Messages between a backend and a guest's emulated hypervisor endpoint, with descriptors
//! passed as SCM_RIGHTS.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{ControlMessage, MsgFlags, recvmsg, sendmsg};

use crate::Error;

/// Backend → guest: hello, I am domain `a`; answer: RAM pages `a`, grant entries `b`, fds [ram, table].
pub(crate) const HELLO: u32 = 1;
/// Backend → guest: bind unbound port `a`; answer: fds [to_backend, to_guest].
pub(crate) const BIND: u32 = 2;

/// Status of an answer.
pub(crate) const OK: u32 = 0;

const MSG_LEN: usize = 24;
const MAX_FDS: usize = 2;

/// One fixed-size message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Msg {
    pub kind: u32,
    pub status: u32,
    pub a: u64,
    pub b: u64,
}

impl Msg {
    pub(crate) fn new(kind: u32, a: u64, b: u64) -> Self {
        Msg {
            kind,
            status: OK,
            a,
            b,
        }
    }

    pub(crate) fn error(kind: u32, errno: nix::errno::Errno) -> Self {
        Msg {
            kind,
            status: errno as u32,
            a: 0,
            b: 0,
        }
    }

    fn encode(&self) -> [u8; MSG_LEN] {
        let mut out = [0u8; MSG_LEN];
        out[0..4].copy_from_slice(&self.kind.to_le_bytes());
        out[4..8].copy_from_slice(&self.status.to_le_bytes());
        out[8..16].copy_from_slice(&self.a.to_le_bytes());
        out[16..24].copy_from_slice(&self.b.to_le_bytes());
        out
    }

    fn decode(b: &[u8; MSG_LEN]) -> Self {
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| u64::from(u32_at(i)) | (u64::from(u32_at(i + 4)) << 32);
        Msg {
            kind: u32_at(0),
            status: u32_at(4),
            a: u64_at(8),
            b: u64_at(16),
        }
    }
}

/// Sends `msg` with `fds` attached.
pub(crate) fn send(sock: &UnixStream, msg: &Msg, fds: &[RawFd]) -> Result<(), Error> {
    let bytes = msg.encode();
    let iov = [IoSlice::new(&bytes)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    let n = loop {
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other,
        }
    }
    .map_err(Error::sys("sendmsg"))?;
    if n != MSG_LEN {
        return Err(Error::Protocol(format!("short send of {n} bytes")));
    }
    Ok(())
}

/// Receives one message and the descriptors that came with it. `Ok(None)` on a closed peer.
pub(crate) fn recv(sock: &UnixStream) -> Result<Option<(Msg, Vec<OwnedFd>)>, Error> {
    let mut bytes = [0u8; MSG_LEN];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (len, fds) = {
        let mut iov = [IoSliceMut::new(&mut bytes)];
        // A signal (a timer, a profiler, libFuzzer's watchdog) must not fail the exchange.
        let msg = loop {
            match recvmsg::<()>(
                sock.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Err(nix::errno::Errno::EINTR) => continue,
                other => break other,
            }
        }
        .map_err(Error::sys("recvmsg"))?;
        (
            msg.bytes,
            crate::sys::owned_fds(msg.cmsgs().map_err(Error::sys("cmsgs"))?),
        )
    };
    if len == 0 {
        return Ok(None);
    }
    if len != MSG_LEN {
        return Err(Error::Protocol(format!("message of {len} bytes")));
    }
    Ok(Some((Msg::decode(&bytes), fds)))
}
