//! The backend side of the emulated platform.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use rustbk_ring::PAGE_SIZE;

use super::copy::Copier;
use super::guest::endpoint_path;
use super::in_use::InUse;
use super::ram::check_sealed;
use super::table::{ENTRY_SIZE, TableReader};
use super::wire::{self, BIND, HELLO, Msg, OK};
use crate::sys::Region;
use crate::{
    Access, CopySegment, DomId, Error, EventChannel, EventFd, GrantMapping, GrantRef, GuestHandle,
    Platform, Port,
};

/// Most pages one map call may cover (a maximal indirect request).
pub const MAX_MAP_PAGES: usize = 4096;

/// Reaches emulated guests through their endpoint sockets in `dir`.
#[derive(Clone, Debug)]
pub struct EmuPlatform {
    dir: PathBuf,
    local: DomId,
}

impl EmuPlatform {
    /// A platform for a backend running as domain `local`, finding guests in `dir`.
    pub fn new(dir: impl Into<PathBuf>, local: DomId) -> Self {
        EmuPlatform {
            dir: dir.into(),
            local,
        }
    }
}

impl Platform for EmuPlatform {
    fn local_domid(&self) -> DomId {
        self.local
    }

    fn attach(&self, domid: DomId) -> Result<Arc<dyn GuestHandle>, Error> {
        let path = endpoint_path(&self.dir, domid);
        let conn =
            UnixStream::connect(&path).map_err(Error::io(format!("connect {}", path.display())))?;
        wire::send(&conn, &Msg::new(HELLO, u64::from(self.local.0), 0), &[])?;
        let (reply, fds) = expect_reply(&conn, HELLO, 2)?;
        let mut fds = fds.into_iter();
        let (ram_fd, table_fd) = (next_fd(&mut fds)?, next_fd(&mut fds)?);
        check_sealed(&ram_fd, "RAM")?;
        check_sealed(&table_fd, "grant table")?;
        let ram_pages = sized(&ram_fd, reply.a, PAGE_SIZE as u64)?;
        let entries = sized(&table_fd, reply.b, ENTRY_SIZE as u64)?;
        let table_len = (entries as usize * ENTRY_SIZE).div_ceil(PAGE_SIZE).max(1) * PAGE_SIZE;
        let table = Region::map_shared(&table_fd, 0, table_len, true)?;
        tracing::debug!(
            domid = domid.0,
            ram_pages,
            entries,
            "attached to emulated guest"
        );
        Ok(Arc::new(EmuGuest {
            domid,
            local: self.local,
            conn: Mutex::new(conn),
            ram_fd,
            in_use: InUse::new(table),
            entries,
            ram_pages,
        }))
    }
}

fn next_fd(fds: &mut impl Iterator<Item = OwnedFd>) -> Result<OwnedFd, Error> {
    fds.next()
        .ok_or_else(|| Error::Protocol("missing descriptor".into()))
}

/// Checks a count the guest claims against the real size of the memfd behind it.
fn sized(fd: &OwnedFd, count: u64, unit: u64) -> Result<u32, Error> {
    let st = nix::sys::stat::fstat(fd.as_raw_fd()).map_err(Error::sys("fstat"))?;
    let real = u64::try_from(st.st_size).unwrap_or(0);
    let claimed = count
        .checked_mul(unit)
        .ok_or_else(|| Error::Protocol("size overflow".into()))?;
    if claimed > real {
        return Err(Error::Protocol(format!(
            "guest claims {claimed} bytes, memfd has {real}"
        )));
    }
    u32::try_from(count).map_err(|_| Error::Protocol("count too large".into()))
}

fn expect_reply(conn: &UnixStream, kind: u32, nfds: usize) -> Result<(Msg, Vec<OwnedFd>), Error> {
    let (reply, fds) =
        wire::recv(conn)?.ok_or_else(|| Error::Protocol("endpoint closed".into()))?;
    if reply.kind != kind {
        return Err(Error::Protocol(format!(
            "reply kind {} to request {kind}",
            reply.kind
        )));
    }
    if reply.status != OK {
        let errno = nix::errno::Errno::from_raw(i32::try_from(reply.status).unwrap_or(libc::EIO));
        return Err(Error::Sys {
            what: "emulated hypercall",
            source: errno,
        });
    }
    if fds.len() != nfds {
        return Err(Error::Protocol(format!(
            "{} descriptors, expected {nfds}",
            fds.len()
        )));
    }
    Ok((reply, fds))
}

/// An attached emulated guest.
struct EmuGuest {
    domid: DomId,
    local: DomId,
    conn: Mutex<UnixStream>,
    ram_fd: OwnedFd,
    in_use: Arc<InUse>,
    entries: u32,
    ram_pages: u32,
}

impl EmuGuest {
    /// Reads the guest's grant entries as the hypervisor would for this backend.
    fn reader(&self) -> TableReader<'_> {
        TableReader {
            table: self.in_use.table(),
            entries: self.entries,
            ram_pages: self.ram_pages,
            grantee: self.local,
        }
    }
}

impl GuestHandle for EmuGuest {
    fn domid(&self) -> DomId {
        self.domid
    }

    fn map_grants(&self, refs: &[GrantRef], access: Access) -> Result<GrantMapping, Error> {
        if refs.is_empty() || refs.len() > MAX_MAP_PAGES {
            return Err(Error::BadMapSize(refs.len()));
        }
        let reader = self.reader();
        let mut region = Region::reserve(refs.len() * PAGE_SIZE)?;
        let writable = access == Access::ReadWrite;
        let mut grants = Vec::with_capacity(refs.len());
        for (i, gref) in refs.iter().enumerate() {
            let grant = reader.check(*gref, access)?;
            let file_offset = u64::from(grant.frame) * PAGE_SIZE as u64;
            region.map_fixed(
                i * PAGE_SIZE,
                PAGE_SIZE,
                &self.ram_fd,
                file_offset,
                writable,
            )?;
            grants.push(grant);
        }
        let guard = self.in_use.acquire(refs, access);
        // Xen checks an entry and marks it mapped in one step; here the marks come second, so
        // check again: a guest that revoked or moved a grant in between gets no mapping (and
        // from now on its revocation fails, as under Xen).
        for (gref, grant) in refs.iter().zip(&grants) {
            if reader.check(*gref, access)? != *grant {
                return Err(Error::GrantInvalid(*gref));
            }
        }
        Ok(GrantMapping::new(region, access, Some(Box::new(guard))))
    }

    fn copy_grants(&self, segments: &mut [CopySegment<'_>]) -> Result<(), Error> {
        let copier = Copier {
            reader: self.reader(),
            in_use: &self.in_use,
            ram_fd: &self.ram_fd,
        };
        copier.copy(segments)
    }

    fn bind_event_channel(&self, remote: Port) -> Result<Box<dyn EventChannel>, Error> {
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        wire::send(&conn, &Msg::new(BIND, u64::from(remote.0), 0), &[])?;
        let (_, fds) = expect_reply(&conn, BIND, 2).map_err(|e| match e {
            Error::Sys {
                source: nix::errno::Errno::ENOENT,
                ..
            } => Error::UnknownPort(remote),
            other => other,
        })?;
        let mut fds = fds.into_iter();
        let incoming = EventFd::from_owned(next_fd(&mut fds)?);
        let outgoing = EventFd::from_owned(next_fd(&mut fds)?);
        Ok(Box::new(EmuEventChannel {
            port: remote,
            incoming,
            outgoing,
        }))
    }
}

/// A bound emulated event channel: one eventfd each way.
#[derive(Debug)]
struct EmuEventChannel {
    port: Port,
    incoming: EventFd,
    outgoing: EventFd,
}

impl EventChannel for EmuEventChannel {
    fn local_port(&self) -> Port {
        self.port
    }

    fn notify(&self) -> Result<(), Error> {
        self.outgoing.signal()
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.incoming.as_fd()
    }

    fn ack(&self) -> Result<bool, Error> {
        self.incoming.drain()
    }
}
