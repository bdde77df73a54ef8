//! The blkfront-like frontend: xenbus handshake, ring, requests and responses.

use std::sync::Arc;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use rustbk_grant::emu::{EmuDomain, GuestPort, RamView};
use rustbk_ring::{Abi, DomId, FrontRing, GrantRef, PAGE_SIZE, Request, Response};
use rustbk_xenstored::{Errno, XsClient};

use crate::wait::wait_for;
use crate::{Error, FrameAlloc, SlotPool};

/// How the frontend connects.
#[derive(Clone, Debug)]
pub struct FrontendConfig {
    /// The guest's domain.
    pub domid: DomId,
    /// Virtual device number.
    pub devid: u32,
    /// Ring ABI.
    pub abi: Abi,
    /// Write the `protocol` key (a frontend that omits it is taken as x86_32).
    pub write_protocol: bool,
    /// Ring page order wanted (capped by the backend's `max-ring-page-order`).
    pub ring_order: u32,
    /// How long to wait for each backend state change.
    pub timeout: Duration,
    /// Ask for persistent grants (`feature-persistent`), as Linux blkfront does by default.
    pub persistent: bool,
    /// Rings (queues) wanted, capped by the backend's `multi-queue-max-queues` (absent: 1).
    /// More than one publishes `multi-queue-num-queues` and `queue-N/` keys, as blkfront does.
    pub queues: u32,
    /// How long to poll the response rings before sleeping, as a guest whose vCPU stays busy
    /// (or that polls, as Linux's blk-mq can): while it polls it does not ask the backend
    /// for a notification, so neither side makes a system call or a wake-up for a response
    /// that comes within it. Zero (the default) sleeps at once, as Linux blkfront does.
    pub spin: Duration,
    /// Changes to the published ring keys, applied last in the same transaction: a hostile
    /// frontend's keys (relative to the frontend directory).
    pub tamper: Vec<Tamper>,
}

/// One change a hostile frontend makes to the keys it publishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tamper {
    /// Writes the key (relative to the frontend directory) with this value.
    Write(String, String),
    /// Removes the key.
    Remove(String),
    /// Writes the value the frontend published under the first key to the second.
    Copy(String, String),
}

impl FrontendConfig {
    /// A 64-bit frontend for `domid`/`devid` with a one-page ring.
    pub fn new(domid: DomId, devid: u32) -> Self {
        FrontendConfig {
            domid,
            devid,
            abi: Abi::X86_64,
            write_protocol: true,
            ring_order: 0,
            timeout: Duration::from_secs(20),
            persistent: true,
            queues: 1,
            spin: Duration::ZERO,
            tamper: Vec::new(),
        }
    }
}

/// What the backend published about the disk.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DiskInfo {
    /// Size in 512-byte sectors.
    pub sectors: u64,
    /// Logical sector size.
    pub sector_size: u32,
    /// Physical sector size.
    pub physical_sector_size: u32,
    /// `info` bits (CDROM 1, REMOVABLE 2, READONLY 4).
    pub info: u32,
    /// `feature-flush-cache`.
    pub flush: bool,
    /// `feature-barrier`.
    pub barrier: bool,
    /// `feature-discard`.
    pub discard: bool,
    /// `feature-max-indirect-segments` (0: none).
    pub max_indirect_segments: u32,
    /// The ring page order in use.
    pub ring_order: u32,
    /// Both ends offered `feature-persistent`.
    pub persistent: bool,
    /// Rings (queues) in use.
    pub queues: u32,
}

/// One ring (queue) of the frontend.
struct Queue {
    ring: FrontRing<RamView>,
    /// First frame and page count of the ring.
    frames: (u32, u32),
    grefs: Vec<GrantRef>,
    port: Arc<GuestPort>,
}

/// A connected emulated frontend.
pub struct Frontend {
    dom: Arc<EmuDomain>,
    xs: XsClient,
    cfg: FrontendConfig,
    fe: String,
    be: String,
    backend_domid: DomId,
    frames: FrameAlloc,
    queues: Vec<Queue>,
    /// The queue `push`, `ring_mut`, `free_slots` and `notify` act on.
    current: usize,
    disk: DiskInfo,
    /// Buffer pools whose pages the backend still maps (persistent grants): revoked at close.
    retired: Vec<SlotPool>,
    sleeps: Sleeps,
}

/// How often [`Frontend::poll_responses`] slept waiting for the backend's notification, and
/// how many of those sleeps a notification ended (the others ran out of time).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sleeps {
    /// Sleeps begun.
    pub slept: u64,
    /// Sleeps ended by a notification on some ring.
    pub woken: u64,
}

/// What a closed frontend gives back, to connect again.
pub struct Closed {
    /// The guest domain.
    pub dom: Arc<EmuDomain>,
    /// The guest's xenstore connection.
    pub xs: XsClient,
    /// The frame allocator (ring frames freed).
    pub frames: FrameAlloc,
}

/// The token of the watch a connected frontend keeps on the backend's `state`.
const BACKEND_STATE_TOKEN: &str = "blkfront:backend-state";

fn num<T: std::str::FromStr + Default>(xs: &XsClient, path: &str) -> Result<T, Error> {
    Ok(xs
        .try_read(path)?
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_default())
}

fn state_in(states: &'static [&'static str]) -> impl FnMut(Option<&str>) -> bool {
    move |v| v.is_some_and(|v| states.contains(&v.trim()))
}

impl Frontend {
    /// Performs the blkfront handshake for `cfg` and returns the connected frontend.
    pub fn connect(
        dom: Arc<EmuDomain>,
        xs: XsClient,
        mut frames: FrameAlloc,
        cfg: FrontendConfig,
    ) -> Result<Frontend, Error> {
        let fe = format!("/local/domain/{}/device/vbd/{}", cfg.domid.0, cfg.devid);
        let be = xs.read(&format!("{fe}/backend"))?;
        let backend_domid = DomId(num(&xs, &format!("{fe}/backend-id"))?);
        xs.write(&format!("{fe}/state"), "1")?;
        wait_for(&xs, &format!("{be}/state"), cfg.timeout, state_in(&["2"]))?;
        let order = cfg
            .ring_order
            .min(num(&xs, &format!("{be}/max-ring-page-order"))?);
        let offered = num::<u32>(&xs, &format!("{be}/multi-queue-max-queues"))?.max(1);
        let nqueues = cfg.queues.clamp(1, offered);
        let mut queues = Vec::new();
        for _ in 0..nqueues {
            queues.push(Queue::new(
                &dom,
                &mut frames,
                backend_domid,
                cfg.abi,
                order,
            )?);
        }
        publish_rings(&xs, &fe, &cfg, order, &queues)?;
        let st = wait_for(
            &xs,
            &format!("{be}/state"),
            cfg.timeout,
            state_in(&["4", "5", "6"]),
        )?;
        if st.as_deref() != Some("4") {
            return Err(Error::Protocol(format!(
                "backend went to state {st:?} instead of Connected"
            )));
        }
        let mut disk = read_disk(&xs, &be, order)?;
        disk.persistent = disk.persistent && cfg.persistent;
        disk.queues = nqueues;
        xs.write(&format!("{fe}/state"), "4")?;
        // As blkfront's xenbus driver watches the other end's state for as long as it is bound.
        xs.watch(&format!("{be}/state"), BACKEND_STATE_TOKEN)?;
        Ok(Frontend {
            dom,
            xs,
            cfg,
            fe,
            be,
            backend_domid,
            frames,
            queues,
            current: 0,
            disk,
            retired: Vec::new(),
            sleeps: Sleeps::default(),
        })
    }

    /// The disk as the backend described it.
    pub fn disk(&self) -> &DiskInfo {
        &self.disk
    }

    /// The guest domain.
    pub fn domain(&self) -> &Arc<EmuDomain> {
        &self.dom
    }

    /// The backend's domain.
    pub fn backend_domid(&self) -> DomId {
        self.backend_domid
    }

    /// The guest's frame allocator.
    pub fn frames_mut(&mut self) -> &mut FrameAlloc {
        &mut self.frames
    }

    /// The ring of the current queue, for tests that write raw entries or indices.
    pub fn ring_mut(&mut self) -> &mut FrontRing<RamView> {
        &mut self.queues[self.current].ring
    }

    /// Rings (queues) in use.
    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// Makes queue `q` the one `push`, `ring_mut`, `free_slots` and `notify` act on.
    pub fn select_queue(&mut self, q: usize) -> Result<(), Error> {
        if q >= self.queues.len() {
            return Err(Error::Config(format!("queue {q} of {}", self.queues.len())));
        }
        self.current = q;
        Ok(())
    }

    /// The backend's directory.
    pub fn backend_path(&self) -> &str {
        &self.be
    }

    /// The xenstore connection.
    pub fn xs(&self) -> &XsClient {
        &self.xs
    }

    /// Queues a request on the current queue's ring (not yet visible to the backend).
    pub fn push(&mut self, req: &Request) -> Result<(), Error> {
        self.push_to(self.current, req)
    }

    /// Queues a request on ring `q` (not yet visible to the backend).
    pub fn push_to(&mut self, q: usize, req: &Request) -> Result<(), Error> {
        let queue = self
            .queues
            .get_mut(q)
            .ok_or_else(|| Error::Config(format!("no queue {q}")))?;
        queue.ring.push_request(req).map_err(Error::from)
    }

    /// Publishes queued requests of every ring and notifies the backend of those where it
    /// asked for it.
    pub fn kick(&mut self) -> Result<(), Error> {
        (0..self.queues.len()).try_for_each(|q| self.kick_queue(q))
    }

    /// Publishes queued requests of ring `q` and notifies the backend if it asked for it.
    pub fn kick_queue(&mut self, q: usize) -> Result<(), Error> {
        let queue = self
            .queues
            .get_mut(q)
            .ok_or_else(|| Error::Config(format!("no queue {q}")))?;
        if queue.ring.push_requests_and_check_notify() {
            queue.port.notify()?;
        }
        Ok(())
    }

    /// Signals the backend on the current queue unconditionally (hostile tests that bypass the
    /// ring's rules).
    pub fn notify(&self) -> Result<(), Error> {
        self.queues[self.current].port.notify().map_err(Error::from)
    }

    /// Free request slots on the current queue's ring.
    pub fn free_slots(&self) -> u32 {
        self.free_slots_of(self.current)
    }

    /// Free request slots on ring `q` (0 for a queue that does not exist).
    pub fn free_slots_of(&self, q: usize) -> u32 {
        self.queues.get(q).map_or(0, |q| q.ring.free_slots())
    }

    /// How often this connection slept for responses, and was woken by a notification.
    pub fn sleeps(&self) -> Sleeps {
        self.sleeps
    }

    /// Changes how long [`Self::poll_responses`] polls before it sleeps
    /// ([`FrontendConfig::spin`]).
    pub fn set_spin(&mut self, spin: Duration) {
        self.cfg.spin = spin;
    }

    /// Collects responses of every ring into `out`, waiting up to `timeout` for the first one.
    pub fn poll_responses(
        &mut self,
        out: &mut Vec<Response>,
        timeout: Duration,
    ) -> Result<(), Error> {
        let now = std::time::Instant::now();
        let deadline = now + timeout;
        let spin_until = deadline.min(now + self.cfg.spin);
        loop {
            self.pop_responses(out)?;
            if !out.is_empty() {
                return Ok(());
            }
            if std::time::Instant::now() < spin_until {
                std::hint::spin_loop();
                continue;
            }
            let mut more = false;
            for q in &mut self.queues {
                more |= q.ring.final_check_for_responses();
            }
            if more {
                continue;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            self.sleep(left)?;
        }
    }

    /// Takes every published response off every ring.
    fn pop_responses(&mut self, out: &mut Vec<Response>) -> Result<(), Error> {
        for q in &mut self.queues {
            while let Some(r) = q.ring.try_pop_response()? {
                out.push(r);
            }
        }
        Ok(())
    }

    fn sleep(&mut self, left: Duration) -> Result<(), Error> {
        self.sleeps.slept += 1;
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds: Vec<PollFd<'_>> = self
            .queues
            .iter()
            .map(|q| PollFd::new(q.port.fd(), PollFlags::POLLIN))
            .collect();
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                return Err(Error::Platform(rustbk_grant::Error::Sys {
                    what: "poll",
                    source: e,
                }));
            }
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        if ready.contains(&true) {
            self.sleeps.woken += 1;
        }
        for (q, ready) in self.queues.iter().zip(ready) {
            if ready {
                q.port.ack()?;
            }
        }
        Ok(())
    }

    /// Handles the backend state changes seen so far (waiting up to `timeout` for the first),
    /// as Linux blkfront's watch on the backend's `state` does once connected: the backend
    /// found Connected again (blkback re-announcing itself after an online resize) makes it
    /// re-read `sectors` and take that as the disk's capacity (`blkfront_connect`,
    /// `set_capacity`). Returns the new capacity in 512-byte sectors if it changed. A
    /// `sectors` written without the `state` rewrite goes unnoticed, as in Linux.
    pub fn check_backend(&mut self, timeout: Duration) -> Result<Option<u64>, Error> {
        let mut changed = None;
        let mut wait = timeout;
        while let Some(ev) = self.xs.next_event(wait)? {
            wait = Duration::ZERO;
            if ev.token != BACKEND_STATE_TOKEN || self.backend_state()? != 4 {
                continue;
            }
            let sectors: u64 = num(&self.xs, &format!("{}/sectors", self.be))?;
            if sectors != self.disk.sectors {
                tracing::info!(old = self.disk.sectors, new = sectors, "setting capacity");
                self.disk.sectors = sectors;
                changed = Some(sectors);
            }
        }
        Ok(changed)
    }

    /// Handles backend state changes (see [`check_backend`](Self::check_backend)) until the
    /// disk's capacity is `sectors` (512-byte units), or fails after `timeout`.
    pub fn wait_for_capacity(&mut self, sectors: u64, timeout: Duration) -> Result<(), Error> {
        let deadline = std::time::Instant::now() + timeout;
        while self.disk.sectors != sectors {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout(format!(
                    "capacity {sectors} sectors (still {})",
                    self.disk.sectors
                )));
            }
            self.check_backend(left.min(Duration::from_millis(200)))?;
        }
        Ok(())
    }

    /// The backend's current state number (0 if unreadable).
    pub fn backend_state(&self) -> Result<u8, Error> {
        num(&self.xs, &format!("{}/state", self.be))
    }

    /// Closes the device as blkfront does (Closing, wait, Closed, wait) and frees the ring.
    ///
    /// The toolstack may remove both directories as soon as the backend is Closed (a device
    /// being unplugged): a directory that is gone counts as closed.
    pub fn close(self) -> Result<Closed, Error> {
        let state = format!("{}/state", self.be);
        let closing = |v: Option<&str>| v.is_none_or(|v| matches!(v.trim(), "5" | "6"));
        let closed = |v: Option<&str>| v.is_none_or(|v| v.trim() == "6");
        gone_is_ok(
            self.xs
                .write(&format!("{}/state", self.fe), "5")
                .map_err(Error::from),
        )?;
        gone_is_ok(wait_for(&self.xs, &state, self.cfg.timeout, closing).map(drop))?;
        gone_is_ok(
            self.xs
                .write(&format!("{}/state", self.fe), "6")
                .map_err(Error::from),
        )?;
        gone_is_ok(wait_for(&self.xs, &state, self.cfg.timeout, closed).map(drop))?;
        Ok(self.release())
    }

    /// Gives back a buffer pool: revoked now, or at close if the backend still maps its pages.
    pub fn retire(&mut self, pool: SlotPool) {
        if let Err(pool) = pool.release(&self.dom, &mut self.frames) {
            self.retired.push(pool);
        }
    }

    /// Frees the ring's grants, port and frames without any handshake.
    pub fn release(mut self) -> Closed {
        let _ = self
            .xs
            .unwatch(&format!("{}/state", self.be), BACKEND_STATE_TOKEN);
        for pool in std::mem::take(&mut self.retired) {
            if pool.release(&self.dom, &mut self.frames).is_err() {
                tracing::warn!("buffer grants still mapped after close; leaking them");
            }
        }
        for q in std::mem::take(&mut self.queues) {
            for g in &q.grefs {
                let _ = self.dom.end_grant(*g);
            }
            self.dom.close_port(q.port.port());
            self.frames.free(q.frames.0, q.frames.1);
        }
        Closed {
            dom: self.dom,
            xs: self.xs,
            frames: self.frames,
        }
    }
}

/// Treats "the node is gone" (ENOENT, or EACCES once the parent a guest could see is removed)
/// as success.
fn gone_is_ok(r: Result<(), Error>) -> Result<(), Error> {
    match r {
        Err(Error::Xenstore(e)) if matches!(e.errno(), Some(Errno::Enoent | Errno::Eacces)) => {
            Ok(())
        }
        other => other,
    }
}

impl Queue {
    /// A zeroed ring of `1 << order` granted pages and an unbound port.
    fn new(
        dom: &EmuDomain,
        frames: &mut FrameAlloc,
        backend: DomId,
        abi: Abi,
        order: u32,
    ) -> Result<Queue, Error> {
        let pages = 1u32 << order;
        let first = frames.alloc(pages)?;
        dom.ram().write(
            u64::from(first) * PAGE_SIZE as u64,
            &vec![0u8; pages as usize * PAGE_SIZE],
        )?;
        let grefs = (first..first + pages)
            .map(|f| dom.grant(backend, f, false))
            .collect::<Result<Vec<_>, _>>()?;
        let ring = FrontRing::init(dom.ram().pages_view(first, pages)?, abi, order)?;
        let port = dom.alloc_unbound()?;
        Ok(Queue {
            ring,
            frames: (first, pages),
            grefs,
            port,
        })
    }
}

/// Publishes the rings as blkfront does: the flat `ring-ref*`/`event-channel` keys for one
/// ring, `multi-queue-num-queues` and `queue-N/` keys for several; then Initialised.
fn publish_rings(
    xs: &XsClient,
    fe: &str,
    cfg: &FrontendConfig,
    order: u32,
    queues: &[Queue],
) -> Result<(), Error> {
    xs.transaction(8, |tx| {
        remove_ring_keys(xs, tx, fe)?;
        if order > 0 {
            xs.write_tx(tx, &format!("{fe}/ring-page-order"), &order.to_string())?;
        }
        if queues.len() > 1 {
            let n = queues.len().to_string();
            xs.write_tx(tx, &format!("{fe}/multi-queue-num-queues"), &n)?;
        }
        for (i, q) in queues.iter().enumerate() {
            let dir = match queues.len() {
                1 => fe.to_owned(),
                _ => format!("{fe}/queue-{i}"),
            };
            if order == 0 {
                xs.write_tx(tx, &format!("{dir}/ring-ref"), &q.grefs[0].0.to_string())?;
            }
            for (j, g) in q.grefs.iter().enumerate().filter(|_| order > 0) {
                xs.write_tx(tx, &format!("{dir}/ring-ref{j}"), &g.0.to_string())?;
            }
            let port = q.port.port().0.to_string();
            xs.write_tx(tx, &format!("{dir}/event-channel"), &port)?;
        }
        xs.write_tx(
            tx,
            &format!("{fe}/feature-persistent"),
            if cfg.persistent { "1" } else { "0" },
        )?;
        if cfg.write_protocol {
            xs.write_tx(tx, &format!("{fe}/protocol"), cfg.abi.protocol_name())?;
        }
        for t in &cfg.tamper {
            match t {
                Tamper::Write(k, v) => xs.write_tx(tx, &format!("{fe}/{k}"), v)?,
                Tamper::Remove(k) => xs.rm_tx(tx, &format!("{fe}/{k}"))?,
                Tamper::Copy(from, to) => {
                    let v = xs.read_tx(tx, &format!("{fe}/{from}"))?;
                    xs.write_tx(tx, &format!("{fe}/{to}"), &v)?;
                }
            }
        }
        xs.write_tx(tx, &format!("{fe}/state"), "3")
    })?;
    Ok(())
}

/// Removes the ring keys an earlier connection of this device published (its ring order and
/// queue count may differ), so the backend reads only the ones written next.
fn remove_ring_keys(xs: &XsClient, tx: u32, fe: &str) -> Result<(), rustbk_xenstored::Error> {
    let ring_key = |k: &str| {
        ["ring-page-order", "multi-queue-num-queues", "event-channel"].contains(&k)
            || k.starts_with("ring-ref")
            || k.starts_with("queue-")
    };
    for key in xs.directory_tx(tx, fe)?.iter().filter(|k| ring_key(k)) {
        xs.rm_tx(tx, &format!("{fe}/{key}"))?;
    }
    Ok(())
}

fn read_disk(xs: &XsClient, be: &str, ring_order: u32) -> Result<DiskInfo, Error> {
    let k = |key: &str| format!("{be}/{key}");
    let flag = |key: &str| -> Result<bool, Error> { Ok(num::<u32>(xs, &k(key))? == 1) };
    Ok(DiskInfo {
        sectors: num(xs, &k("sectors"))?,
        sector_size: num(xs, &k("sector-size"))?,
        physical_sector_size: num(xs, &k("physical-sector-size"))?,
        info: num(xs, &k("info"))?,
        flush: flag("feature-flush-cache")?,
        barrier: flag("feature-barrier")?,
        discard: flag("feature-discard")?,
        max_indirect_segments: num(xs, &k("feature-max-indirect-segments"))?,
        ring_order,
        persistent: flag("feature-persistent")?,
        queues: 1,
    })
}
