//! The guest side of the emulated platform: RAM, grant table, event channels, and the endpoint a
//! backend connects to (standing in for the hypervisor).

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use rustbk_ring::PAGE_SIZE;

use super::ram::{GuestRam, new_memfd};
use super::table::{ENTRY_SIZE, clear_entry, force_clear_entry, in_use, write_entry};
use super::wire::{self, BIND, HELLO, Msg};
use crate::sys::Region;
use crate::{DomId, Error, EventFd, GrantRef, Port};

/// First grant reference handed out (Xen reserves the first eight).
const FIRST_FREE_GREF: u32 = 8;

/// Sizes of an emulated guest.
#[derive(Clone, Copy, Debug)]
pub struct DomainConfig {
    /// The guest's domain id.
    pub domid: DomId,
    /// Pages of guest RAM.
    pub ram_pages: u32,
    /// Entries in the grant table.
    pub grant_entries: u32,
}

/// One guest's event channel port: the guest's side of the doorbells.
#[derive(Debug)]
pub struct GuestPort {
    port: Port,
    to_backend: EventFd,
    to_guest: EventFd,
}

impl GuestPort {
    /// The port number to publish in xenstore.
    pub fn port(&self) -> Port {
        self.port
    }

    /// Signals the backend.
    pub fn notify(&self) -> Result<(), Error> {
        self.to_backend.signal()
    }

    /// Readable when the backend signalled us.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.to_guest.as_fd()
    }

    /// Consumes a pending signal; true if there was one.
    pub fn ack(&self) -> Result<bool, Error> {
        self.to_guest.drain()
    }
}

struct Shared {
    domid: DomId,
    ram: Arc<GuestRam>,
    table_fd: OwnedFd,
    table: Region,
    entries: u32,
    ports: Mutex<HashMap<u32, Arc<GuestPort>>>,
}

/// An emulated guest domain serving its endpoint socket in a background thread.
pub struct EmuDomain {
    shared: Arc<Shared>,
    free_grefs: Mutex<Vec<u32>>,
    next_port: Mutex<u32>,
    path: PathBuf,
    listener: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

/// Where the endpoint of guest `domid` lives inside `dir`.
pub fn endpoint_path(dir: &Path, domid: DomId) -> PathBuf {
    dir.join(format!("dom{}.sock", domid.0))
}

impl EmuDomain {
    /// Creates the guest's memory and grant table and starts serving its endpoint in `dir`.
    pub fn create(dir: &Path, cfg: DomainConfig) -> Result<EmuDomain, Error> {
        let shared = Arc::new(new_shared(cfg)?);
        let path = endpoint_path(dir, cfg.domid);
        let _ = std::fs::remove_file(&path);
        let listener =
            UnixListener::bind(&path).map_err(Error::io(format!("bind {}", path.display())))?;
        let listener_fd = listener
            .as_fd()
            .try_clone_to_owned()
            .map_err(Error::io("dup listener"))?;
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("emu-dom{}", cfg.domid.0))
            .spawn(move || accept_loop(listener, thread_shared))
            .map_err(Error::io("spawn endpoint thread"))?;
        let grefs = (FIRST_FREE_GREF..cfg.grant_entries).rev().collect();
        Ok(EmuDomain {
            shared,
            free_grefs: Mutex::new(grefs),
            next_port: Mutex::new(1),
            path,
            listener: listener_fd,
            thread: Some(thread),
        })
    }

    /// The guest's domain id.
    pub fn domid(&self) -> DomId {
        self.shared.domid
    }

    /// The guest's RAM.
    pub fn ram(&self) -> &Arc<GuestRam> {
        &self.shared.ram
    }

    /// Grants domain `to` access to `frame`; returns the new reference.
    pub fn grant(&self, to: DomId, frame: u32, readonly: bool) -> Result<GrantRef, Error> {
        let gref = lock(&self.free_grefs).pop().ok_or(Error::BadMapSize(0))?;
        self.grant_at(GrantRef(gref), to, frame, readonly)?;
        Ok(GrantRef(gref))
    }

    /// Writes grant entry `gref` directly (any entry, any frame: hostile tests use this).
    pub fn grant_at(
        &self,
        gref: GrantRef,
        to: DomId,
        frame: u32,
        readonly: bool,
    ) -> Result<(), Error> {
        self.check_gref(gref)?;
        write_entry(&self.shared.table, gref, to, frame, readonly)
    }

    /// Whether the backend has `gref` mapped (its `GTF_reading`/`GTF_writing` bits).
    pub fn grant_in_use(&self, gref: GrantRef) -> Result<bool, Error> {
        self.check_gref(gref)?;
        in_use(&self.shared.table, gref)
    }

    /// Revokes a grant and returns its reference to the free list. Fails with
    /// [`Error::GrantInUse`] while the backend has it mapped, and with
    /// [`Error::GrantInvalid`] if it was not granted.
    pub fn end_grant(&self, gref: GrantRef) -> Result<(), Error> {
        self.check_gref(gref)?;
        clear_entry(&self.shared.table, gref)?;
        if gref.0 >= FIRST_FREE_GREF {
            lock(&self.free_grefs).push(gref.0);
        }
        Ok(())
    }

    /// Clears grant entry `gref` even while the backend has it mapped, as a guest ignoring the
    /// protocol can (the entries are its own memory). As under Xen, this does not take back a
    /// mapping the backend holds: only maps made afterwards fail.
    pub fn revoke_forcibly(&self, gref: GrantRef) -> Result<(), Error> {
        self.check_gref(gref)?;
        force_clear_entry(&self.shared.table, gref)
    }

    fn check_gref(&self, gref: GrantRef) -> Result<(), Error> {
        if gref.0 >= self.shared.entries {
            return Err(Error::GrantOutOfRange(gref));
        }
        Ok(())
    }

    /// Allocates an unbound port that a backend can bind.
    pub fn alloc_unbound(&self) -> Result<Arc<GuestPort>, Error> {
        let mut next = lock(&self.next_port);
        let port = Port(*next);
        *next += 1;
        let gp = Arc::new(GuestPort {
            port,
            to_backend: EventFd::new()?,
            to_guest: EventFd::new()?,
        });
        lock(&self.shared.ports).insert(port.0, Arc::clone(&gp));
        Ok(gp)
    }

    /// Closes a port: later binds of it fail.
    pub fn close_port(&self, port: Port) {
        lock(&self.shared.ports).remove(&port.0);
    }
}

fn new_shared(cfg: DomainConfig) -> Result<Shared, Error> {
    let table_pages = (cfg.grant_entries as usize * ENTRY_SIZE).div_ceil(PAGE_SIZE);
    let table_pages =
        u32::try_from(table_pages.max(1)).map_err(|_| Error::BadMapSize(table_pages))?;
    let table_fd = new_memfd(c"rustbk-grant-table", table_pages)?;
    let table = Region::map_shared(&table_fd, 0, table_pages as usize * PAGE_SIZE, true)?;
    Ok(Shared {
        domid: cfg.domid,
        ram: Arc::new(GuestRam::create(cfg.ram_pages)?),
        table_fd,
        table,
        entries: cfg.grant_entries,
        ports: Mutex::new(HashMap::new()),
    })
}

impl Drop for EmuDomain {
    fn drop(&mut self) {
        // Shutting a listening socket down makes the blocked accept() return with an error.
        let _ =
            nix::sys::socket::shutdown(self.listener.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        let _ = std::fs::remove_file(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn accept_loop(listener: UnixListener, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { break };
        let shared = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("emu-endpoint".into())
            .spawn(move || serve_backend(&conn, &shared));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot serve a backend connection");
        }
    }
}

fn serve_backend(conn: &UnixStream, shared: &Shared) {
    loop {
        let msg = match wire::recv(conn) {
            Ok(Some((msg, _fds))) => msg,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "backend connection ended");
                return;
            }
        };
        if let Err(e) = answer(conn, shared, &msg) {
            tracing::debug!(error = %e, "cannot answer backend");
            return;
        }
    }
}

fn answer(conn: &UnixStream, shared: &Shared, msg: &Msg) -> Result<(), Error> {
    match msg.kind {
        HELLO => {
            let reply = Msg::new(
                HELLO,
                u64::from(shared.ram.pages()),
                u64::from(shared.entries),
            );
            let fds = [shared.ram.fd().as_raw_fd(), shared.table_fd.as_raw_fd()];
            wire::send(conn, &reply, &fds)
        }
        BIND => {
            let port = u32::try_from(msg.a)
                .ok()
                .and_then(|p| lock(&shared.ports).get(&p).cloned());
            match port {
                Some(p) => {
                    let fds = [
                        p.to_backend.as_fd().as_raw_fd(),
                        p.to_guest.as_fd().as_raw_fd(),
                    ];
                    wire::send(conn, &Msg::new(BIND, msg.a, 0), &fds)
                }
                None => wire::send(conn, &Msg::error(BIND, nix::errno::Errno::ENOENT), &[]),
            }
        }
        other => wire::send(conn, &Msg::error(other, nix::errno::Errno::EINVAL), &[]),
    }
}
