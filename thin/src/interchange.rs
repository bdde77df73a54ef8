//! Pool metadata to and from thin_dump's XML model: `rustbk thin dump` and `restore`.

use std::sync::Arc;

use rustbk_formats::EngineFile;

use crate::error::{Error, Result};
use crate::meta::{DeviceDetails, Geometry, Mapping, Metadata};
use crate::xml::{DeviceDump, Dump, MappingRun, SuperblockInfo};

/// The whole pool as thin_dump describes it: superblock fields and every device's mappings in
/// maximal runs.
pub fn dump(md: &mut Metadata) -> Result<Dump> {
    let sb = md.superblock().clone();
    let nr_data_blocks = md.data_refs().nr_blocks();
    let mut devices = Vec::new();
    for id in md.devices() {
        let details = md.details(id)?;
        let mappings = md.mappings(id)?;
        devices.push(DeviceDump {
            dev_id: device_id(id)?,
            mapped_blocks: details.mapped_blocks,
            transaction: details.transaction_id,
            creation_time: details.creation_time,
            snap_time: details.snapshotted_time,
            mappings: runs(&mappings),
        });
    }
    Ok(Dump {
        superblock: SuperblockInfo {
            uuid: String::new(),
            time: sb.time,
            transaction: sb.transaction_id,
            flags: sb.flags,
            version: sb.version,
            data_block_size: sb.data_block_size,
            nr_data_blocks,
            metadata_snap: (sb.held_root != 0).then_some(sb.held_root),
        },
        devices,
    })
}

fn device_id(id: u64) -> Result<u32> {
    u32::try_from(id).map_err(|_| Error::corrupt(format!("device id {id} exceeds 32 bits")))
}

/// Merges consecutive mappings (next virtual block, next data block, same time) into runs.
fn runs(mappings: &[(u64, Mapping)]) -> Vec<MappingRun> {
    let mut out: Vec<MappingRun> = Vec::new();
    for &(vblock, m) in mappings {
        if let Some(last) = out.last_mut() {
            let continues = last.origin_begin + last.length == vblock
                && last.data_begin + last.length == m.block
                && last.time == m.time;
            if continues {
                last.length += 1;
                continue;
            }
        }
        out.push(MappingRun {
            origin_begin: vblock,
            data_begin: m.block,
            length: 1,
            time: m.time,
        });
    }
    out
}

/// Formats `file` as a pool holding exactly what `dump` describes, and commits. Devices share
/// data blocks as the dump says, but no tree nodes (as thin_restore builds them).
pub fn restore(dump: &Dump, file: Arc<EngineFile>) -> Result<Metadata> {
    let sb = &dump.superblock;
    let geometry = Geometry {
        data_block_size: sb.data_block_size,
        nr_data_blocks: sb.nr_data_blocks,
    };
    let mut md = Metadata::create(file, geometry)?;
    md.restore_superblock(sb.time, sb.transaction, sb.flags)?;
    if sb.metadata_snap.is_some() {
        tracing::warn!("the dump names a metadata snapshot; it is not restored");
    }
    for device in &dump.devices {
        restore_device(&mut md, device)?;
    }
    md.commit()?;
    Ok(md)
}

fn restore_device(md: &mut Metadata, device: &DeviceDump) -> Result<()> {
    let id = u64::from(device.dev_id);
    md.create_thin(id)?;
    for run in &device.mappings {
        for i in 0..run.length {
            let (Some(vblock), Some(block)) = (
                run.origin_begin.checked_add(i),
                run.data_begin.checked_add(i),
            ) else {
                return Err(Error::InvalidArgument(format!(
                    "a run of device {id} overflows"
                )));
            };
            md.restore_mapping(
                id,
                vblock,
                Mapping {
                    block,
                    time: run.time,
                },
            )?;
        }
    }
    md.restore_details(
        id,
        DeviceDetails {
            mapped_blocks: device.mapped_blocks,
            transaction_id: device.transaction,
            creation_time: device.creation_time,
            snapshotted_time: device.snap_time,
        },
    )
}
