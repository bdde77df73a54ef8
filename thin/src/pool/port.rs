//! [`LocalPort`]: a volume's port to a pool in the same process, the pause handshake a
//! snapshot of a live volume uses, and the pool's request for a volume's reserved blocks.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rustbk_formats::EngineFile;

use super::{PortEntry, Shared};
use crate::error::{Error, Result};
use crate::meta::Mapping;
use crate::port::{Handout, NewMapping, PoolPort, VolumeInfo};

/// Most blocks one `provision` hands out.
const MAX_PROVISION: usize = 1024;
/// Most virtual blocks one `lookup` answers.
const MAX_LOOKUP: u64 = 1 << 16;

/// What the pool asks of a port's data path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Signal {
    /// Pause (a snapshot of the volume).
    Pause,
    /// Give the reserved blocks back (the pool is full).
    GiveBack,
}

/// Tells the data path about a request (wakes it, or sends it a frame).
pub(crate) type Signaller = Box<dyn Fn(Signal) + Send + Sync>;

/// The pause handshake between the pool (snapshot) and one port's data path, and the pool's
/// request for the port's reserved blocks.
#[derive(Default)]
pub(crate) struct PortControl {
    requested: AtomicBool,
    give_back: AtomicBool,
    acked: Mutex<bool>,
    changed: Condvar,
    signaller: Mutex<Option<Signaller>>,
}

impl PortControl {
    /// Asks the data path to pause and wakes it.
    pub(crate) fn request_pause(&self) {
        self.requested.store(true, Ordering::SeqCst);
        self.signal(Signal::Pause);
    }

    /// Asks the data path for its reserved blocks and wakes it.
    pub(crate) fn request_give_back(&self) {
        self.give_back.store(true, Ordering::SeqCst);
        self.signal(Signal::GiveBack);
    }

    fn signal(&self, signal: Signal) {
        if let Ok(signaller) = self.signaller.lock() {
            if let Some(tell) = signaller.as_ref() {
                tell(signal);
            }
        }
    }

    /// Waits until the data path said it is quiet; false on timeout.
    pub(crate) fn wait_paused(&self, deadline: Instant) -> bool {
        let Ok(mut acked) = self.acked.lock() else {
            return false;
        };
        while !*acked {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            acked = match self.changed.wait_timeout(acked, left) {
                Ok((a, _)) => a,
                Err(_) => return false,
            };
        }
        true
    }

    /// Lets the data path go on.
    pub(crate) fn resume(&self) {
        let acked = self.acked.lock();
        self.requested.store(false, Ordering::SeqCst);
        drop(acked);
        self.changed.notify_all();
    }

    /// A closed port is quiet for good.
    fn closed(&self) {
        if let Ok(mut acked) = self.acked.lock() {
            *acked = true;
        }
        self.changed.notify_all();
    }

    /// The data path's side: says it is quiet and waits for the resume.
    fn pause_here(&self) -> Result<()> {
        let mut acked = self.acked.lock().map_err(|_| poisoned())?;
        *acked = true;
        self.changed.notify_all();
        while self.requested.load(Ordering::SeqCst) {
            acked = self
                .changed
                .wait_timeout(acked, Duration::from_millis(100))
                .map_err(|_| poisoned())?
                .0;
        }
        *acked = false;
        Ok(())
    }
}

fn poisoned() -> Error {
    Error::PoolFailed("a pool operation panicked".into())
}

/// A port on one volume of a pool in this process. Blocks it was handed and did not map go
/// back to the pool when it is dropped.
pub struct LocalPort {
    shared: Arc<Shared>,
    port: u64,
    volume: u64,
    control: Arc<PortControl>,
}

impl LocalPort {
    pub(super) fn open(shared: Arc<Shared>, volume: u64) -> Result<LocalPort> {
        let control = Arc::new(PortControl::default());
        let port = {
            let mut st = shared.lock()?;
            if !st.volumes.contains_key(&volume) {
                return Err(Error::NoSuchDevice(volume));
            }
            let port = st.next_port;
            st.next_port += 1;
            let entry = PortEntry {
                volume,
                provisioned: HashSet::new(),
                control: control.clone(),
                asked_back: None,
                silent: false,
            };
            st.ports.insert(port, entry);
            port
        };
        Ok(LocalPort {
            shared,
            port,
            volume,
            control,
        })
    }

    /// Sets what tells the data path about the pool's requests (the pool service sends them
    /// as frames); [`PoolPort::set_waker`] only wakes it.
    pub(crate) fn set_signaller(&mut self, signaller: Signaller) {
        if let Ok(mut slot) = self.control.signaller.lock() {
            *slot = Some(signaller);
        }
    }

    /// Hands out up to `count` blocks ahead of need, at once: when none is free the answer
    /// is empty (no wait for space, no give-back request to the other ports). The pool
    /// service answers a worker's `provision_ahead` with it.
    pub(crate) fn provision_ahead(&mut self, count: usize) -> Result<Handout> {
        check_provision(count)?;
        self.shared.provision_ahead(self.port, count)
    }

    /// The data device the volume's blocks live on.
    pub fn data_file(&self) -> Arc<EngineFile> {
        self.shared.data.clone()
    }

    fn volume_blocks(&self, st: &super::State) -> Result<u64> {
        let record = st
            .volumes
            .get(&self.volume)
            .ok_or(Error::NoSuchDevice(self.volume))?;
        Ok(record.size.div_ceil(st.block_size))
    }
}

impl PoolPort for LocalPort {
    fn info(&mut self) -> Result<VolumeInfo> {
        let st = self.shared.lock()?;
        let record = st
            .volumes
            .get(&self.volume)
            .ok_or(Error::NoSuchDevice(self.volume))?;
        let details = st.md.details(self.volume)?;
        Ok(VolumeInfo {
            id: self.volume,
            block_size: st.block_size,
            size: record.size,
            snapshotted_time: details.snapshotted_time,
            time: st.md.superblock().time,
            data_path: self.shared.data_path.clone(),
            origin: record
                .origin
                .as_ref()
                .map(|o| (o.path.clone(), o.format.clone())),
        })
    }

    fn lookup(&mut self, vblocks: Range<u64>) -> Result<Vec<(u64, Mapping)>> {
        if vblocks.end.saturating_sub(vblocks.start) > MAX_LOOKUP {
            return Err(Error::InvalidArgument(format!(
                "lookup of {vblocks:?}: at most {MAX_LOOKUP} blocks at a time"
            )));
        }
        let mut st = self.shared.lock()?;
        st.md.lookup_range(self.volume, vblocks)
    }

    fn provision_zeroed(&mut self, count: usize) -> Result<Handout> {
        check_provision(count)?;
        self.shared.provision(self.port, count)
    }

    fn map(&mut self, mappings: &[NewMapping]) -> Result<()> {
        let mut st = self.shared.lock()?;
        let end = self.volume_blocks(&st)?;
        let port = self.port;
        let volume = self.volume;
        for m in mappings {
            let ours = st
                .ports
                .get(&port)
                .is_some_and(|p| p.provisioned.contains(&m.block));
            if !ours || m.vblock >= end {
                return Err(Error::InvalidArgument(format!(
                    "mapping {} -> {}: not a block of this port or past the volume end",
                    m.vblock, m.block
                )));
            }
            st.change_with_room(|md| md.insert(volume, m.vblock, m.block))?;
            if let Some(p) = st.ports.get_mut(&port) {
                p.provisioned.remove(&m.block);
            }
        }
        Ok(())
    }

    fn unmap(&mut self, vblocks: Range<u64>) -> Result<Vec<u64>> {
        let mut st = self.shared.lock()?;
        let end = self.volume_blocks(&st)?;
        if vblocks.end > end {
            return Err(Error::InvalidArgument(format!(
                "unmap of {vblocks:?}: the volume has {end} blocks"
            )));
        }
        let volume = self.volume;
        let mapped = st.md.lookup_range(volume, vblocks)?;
        let mut freed = Vec::new();
        for (vblock, mapping) in mapped {
            st.change_with_room(|md| md.remove(volume, vblock))?;
            if st.md.data_count(mapping.block)? == 0 {
                freed.push(mapping.block);
            }
        }
        if self.shared.opts.passdown {
            st.pass_down.extend(freed.iter().copied());
        }
        Ok(freed)
    }

    fn release(&mut self, blocks: &[u64]) -> Result<()> {
        let mut st = self.shared.lock()?;
        // Any release answers a give-back request.
        if let Some(entry) = st.ports.get_mut(&self.port) {
            entry.asked_back = None;
            entry.silent = false;
        }
        for &b in blocks {
            let held = st
                .ports
                .get_mut(&self.port)
                .is_some_and(|p| p.provisioned.remove(&b));
            if !held {
                return Err(Error::InvalidArgument(format!(
                    "block {b} was not handed to this port"
                )));
            }
            if st.failed.is_none() {
                st.md.release_data(b)?;
            }
        }
        self.shared.space_changed(&mut st);
        Ok(())
    }

    fn commit(&mut self) -> Result<()> {
        self.shared.commit()
    }

    fn pause_requested(&self) -> bool {
        self.control.requested.load(Ordering::SeqCst)
    }

    fn paused(&mut self) -> Result<VolumeInfo> {
        self.control.pause_here()?;
        self.info()
    }

    fn give_back_requested(&mut self) -> bool {
        // A load first: this is asked on every pump, and a request is rare.
        self.control.give_back.load(Ordering::SeqCst)
            && self.control.give_back.swap(false, Ordering::SeqCst)
    }

    fn set_waker(&mut self, waker: Box<dyn Fn() + Send + Sync>) {
        self.set_signaller(Box::new(move |_| waker()));
    }
}

impl Drop for LocalPort {
    fn drop(&mut self) {
        let Ok(mut st) = self.shared.lock() else {
            return;
        };
        let Some(entry) = st.ports.remove(&self.port) else {
            return;
        };
        entry.control.closed();
        if st.failed.is_some() {
            return;
        }
        for b in entry.provisioned {
            if let Err(e) = st.md.release_data(b) {
                tracing::error!(block = b, error = %e, "cannot give back a provisioned block");
            }
        }
        self.shared.space_changed(&mut st);
    }
}

fn check_provision(count: usize) -> Result<()> {
    match count == 0 || count > MAX_PROVISION {
        true => Err(Error::InvalidArgument(format!(
            "provision of {count} blocks: 1..={MAX_PROVISION}"
        ))),
        false => Ok(()),
    }
}
