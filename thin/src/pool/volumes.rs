//! Volume operations: create, delete, resize, snapshot, list.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustbk_formats::{Format, OpenOptions};

use super::ahead::Ahead;
use super::port::PortControl;
use super::sidecar::{self, Origin, VolumeRecord};
use super::{Pool, State};
use crate::error::{Error, Result};
use crate::meta::Metadata;

/// What a new volume looks like.
#[derive(Clone, Debug, Default)]
pub struct VolumeSpec {
    /// Size in bytes: a whole number of 512-byte sectors.
    pub size: u64,
    /// A name for people.
    pub name: String,
    /// A read-only image unprovisioned blocks read from.
    pub origin: Option<Origin>,
}

/// A volume and the space it uses.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VolumeUsage {
    /// The thin device id.
    pub id: u64,
    /// rustbk's record of it.
    pub record: VolumeRecord,
    /// Blocks mapped (shared ones included).
    pub mapped_blocks: u64,
    /// Ports open on it.
    pub ports: usize,
}

/// The records of the pool's devices: those of the sidecar for devices that exist, and for
/// devices it does not know (or with no sidecar at all) a size from the highest mapped block.
pub(super) fn reconcile(
    md: &mut Metadata,
    records: Option<BTreeMap<u64, VolumeRecord>>,
) -> Result<BTreeMap<u64, VolumeRecord>> {
    let mut records = records.unwrap_or_default();
    let devices = md.devices();
    records.retain(|id, _| devices.contains(id));
    let block_size = u64::from(md.data_block_size()) * 512;
    for id in devices {
        if records.contains_key(&id) {
            continue;
        }
        let last = md.lookup_range(id, 0..u64::MAX)?.last().map(|(v, _)| *v);
        let size = last.map_or(0, |v| v.saturating_add(1).saturating_mul(block_size));
        let record = VolumeRecord {
            size,
            name: String::new(),
            origin: None,
        };
        records.insert(id, record);
    }
    Ok(records)
}

fn check_size(size: u64, block_size: u64) -> Result<()> {
    let blocks = size.div_ceil(block_size);
    if size == 0 || size % 512 != 0 || blocks > crate::meta::MAX_DATA_BLOCKS << 8 {
        return Err(Error::InvalidArgument(format!(
            "volume size {size}: a positive whole number of sectors, at most 2^48 blocks"
        )));
    }
    Ok(())
}

/// Opens the origin once, read-only, to refuse a missing or unreadable one at creation.
fn check_origin(origin: &Origin) -> Result<()> {
    let format = format_of(&origin.format)?;
    let opts = OpenOptions {
        read_only: true,
        force_share: true,
        require_whole_sectors: false,
        ..OpenOptions::default()
    };
    rustbk_formats::open_image(&origin.path, format, &opts)?;
    Ok(())
}

/// The format an origin record names.
pub fn format_of(name: &str) -> Result<Format> {
    match name {
        "raw" => Ok(Format::Raw),
        "qcow2" => Ok(Format::Qcow2),
        other => Err(Error::InvalidArgument(format!(
            "origin format {other:?}: raw or qcow2"
        ))),
    }
}

impl Pool {
    /// Creates volume `id`, empty (reading zeros or its origin).
    pub fn create_volume(&self, id: u64, spec: VolumeSpec) -> Result<()> {
        let _admin = self.admin()?;
        if let Some(origin) = &spec.origin {
            check_origin(origin)?;
        }
        check_size(spec.size, self.block_size()?)?;
        let record = VolumeRecord {
            size: spec.size,
            name: spec.name,
            origin: spec.origin,
        };
        let ahead = self.record_ahead(id, &record)?;
        self.publish(ahead, |st| {
            st.change_with_room(|md| md.create_thin(id))?;
            st.volumes.insert(id, record);
            Ok(())
        })?;
        self.commit()
    }

    /// Deletes volume `id`; the blocks no other volume shares are free after the commit.
    pub fn delete_volume(&self, id: u64) -> Result<()> {
        let _admin = self.admin()?;
        {
            let mut st = self.shared.lock()?;
            refuse_open_ports(&st, id)?;
            st.change_with_room(|md| md.delete_thin(id))?;
            st.volumes.remove(&id);
        }
        self.commit()?;
        self.store_records()
    }

    /// Sets the size of volume `id`. Shrinking unmaps the blocks past the new end and is
    /// refused while the volume is served; a served volume takes up a larger size when its
    /// [`ThinVolume`](crate::volume::ThinVolume) grows (the backend checks once a second).
    pub fn resize_volume(&self, id: u64, size: u64) -> Result<()> {
        let _admin = self.admin()?;
        {
            let mut st = self.shared.lock()?;
            check_size(size, st.block_size)?;
            let old = st.volumes.get(&id).ok_or(Error::NoSuchDevice(id))?.size;
            if size < old {
                refuse_open_ports(&st, id)?;
                let keep = size.div_ceil(st.block_size);
                let mapped = st.md.lookup_range(id, keep..u64::MAX)?;
                for (vblock, _) in mapped {
                    st.change_with_room(|md| md.remove(id, vblock))?;
                }
            }
            if let Some(record) = st.volumes.get_mut(&id) {
                record.size = size;
            }
        }
        self.commit()?;
        self.store_records()
    }

    /// Snapshots volume `origin` as volume `id`, live: the origin's ports pause (their
    /// writes in flight finish), the snapshot is made, and they resume knowing that their
    /// mapped blocks are now shared; then the snapshot is committed while they run (their
    /// copies-on-write go into the next transaction).
    pub fn snapshot(&self, origin: u64, id: u64, name: &str) -> Result<()> {
        self.snapshot_timed(origin, id, name).map(drop)
    }

    /// [`Pool::snapshot`]; how long the origin was held still, from the pause request to
    /// the resume.
    pub fn snapshot_timed(&self, origin: u64, id: u64, name: &str) -> Result<Duration> {
        let _admin = self.admin()?;
        let start = Instant::now();
        let mut record = self.shared.lock()?.volumes.get(&origin).cloned();
        let record = record.as_mut().ok_or(Error::NoSuchDevice(origin))?;
        record.name = name.to_owned();
        let ahead = self.record_ahead(id, record)?;
        let asked = Instant::now();
        let controls = match self.pause_volume(origin) {
            Ok(controls) => controls,
            Err(e) => {
                self.take_back(ahead);
                return Err(e);
            }
        };
        let paused = asked.elapsed();
        let made = self.publish(ahead, |st| {
            st.change_with_room(|md| md.create_snapshot(id, origin))?;
            st.volumes.insert(id, record.clone());
            Ok(())
        });
        for control in &controls {
            control.resume();
        }
        let held = asked.elapsed();
        made?;
        self.commit()?;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        tracing::info!(
            origin,
            snapshot = id,
            pause_ms = ms(paused),
            held_ms = ms(held),
            total_ms = ms(start.elapsed()),
            "live snapshot taken"
        );
        Ok(held)
    }

    /// Starts writing the volume records with `id`'s new record in them, to be durable
    /// before the device exists in a commit: a crash between the two leaves a record with no
    /// device, which the next open drops (the other way round, a device would lose its size
    /// and name). The write runs while the caller pauses the volume and the commit writes
    /// the new metadata blocks; hand it to [`Pool::publish`] or [`Pool::take_back`].
    fn record_ahead(&self, id: u64, record: &VolumeRecord) -> Result<Ahead> {
        let mut records = self.shared.lock()?.volumes.clone();
        if records.contains_key(&id) {
            return Err(Error::DeviceExists(id));
        }
        records.insert(id, record.clone());
        let path = sidecar::path_for(&self.shared.meta_path);
        Ahead::spawn("a volume record", move || sidecar::store(&path, &records))
    }

    /// Makes the metadata change that needs the record written `ahead`, under the pool's
    /// lock; the next superblock waits for the record. A change that fails takes the
    /// record back.
    fn publish(&self, ahead: Ahead, change: impl FnOnce(&mut State) -> Result<()>) -> Result<()> {
        let mut st = self.shared.lock()?;
        match change(&mut st) {
            Ok(()) => {
                st.ahead.push(ahead);
                Ok(())
            }
            Err(e) => {
                drop(st);
                self.take_back(ahead);
                Err(e)
            }
        }
    }

    /// Takes back a record written ahead for a device that was not made, once its write
    /// ended.
    fn take_back(&self, ahead: Ahead) {
        if let Err(e) = ahead.wait().and_then(|()| self.store_records()) {
            tracing::warn!(error = %e, "cannot take back a volume record written ahead");
        }
    }

    fn pause_volume(&self, origin: u64) -> Result<Vec<Arc<PortControl>>> {
        let controls: Vec<Arc<PortControl>> = {
            let st = self.shared.lock()?;
            if !st.volumes.contains_key(&origin) {
                return Err(Error::NoSuchDevice(origin));
            }
            let ports = st.ports.values().filter(|p| p.volume == origin);
            ports.map(|p| p.control.clone()).collect()
        };
        for control in &controls {
            control.request_pause();
        }
        let deadline = Instant::now()
            .checked_add(self.shared.opts.pause_timeout)
            .unwrap_or_else(Instant::now);
        if controls.iter().all(|c| c.wait_paused(deadline)) {
            return Ok(controls);
        }
        for control in &controls {
            control.resume();
        }
        Err(Error::Busy(format!(
            "volume {origin} did not pause within {:?}",
            self.shared.opts.pause_timeout
        )))
    }

    /// Every volume with its usage.
    pub fn volumes(&self) -> Result<Vec<VolumeUsage>> {
        let st = self.shared.lock()?;
        let mut out = Vec::with_capacity(st.volumes.len());
        for (&id, record) in &st.volumes {
            let details = st.md.details(id)?;
            out.push(VolumeUsage {
                id,
                record: record.clone(),
                mapped_blocks: details.mapped_blocks,
                ports: st.ports.values().filter(|p| p.volume == id).count(),
            });
        }
        Ok(out)
    }

    fn admin(&self) -> Result<std::sync::MutexGuard<'_, ()>> {
        self.shared
            .admin
            .lock()
            .map_err(|_| Error::PoolFailed("a volume operation panicked".into()))
    }

    fn store_records(&self) -> Result<()> {
        let records = self.shared.lock()?.volumes.clone();
        sidecar::store(&sidecar::path_for(&self.shared.meta_path), &records)
    }
}

fn refuse_open_ports(st: &State, id: u64) -> Result<()> {
    if !st.volumes.contains_key(&id) {
        return Err(Error::NoSuchDevice(id));
    }
    let open = st.ports.values().filter(|p| p.volume == id).count();
    if open > 0 {
        return Err(Error::Busy(format!("volume {id} has {open} open ports")));
    }
    Ok(())
}
