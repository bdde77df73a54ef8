//! One crash: the devices as the crash left them, rustbk's check and thin_check, then every
//! volume read back and compared with what the model allows.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use rustbk_formats::{BlockImage, EngineKind};

use super::log::{Crash, crash_images};
use super::record::{BS, Recording, Volume};
use super::rng::Rng;
use crate::check::{CheckOptions, check_path};
use crate::peers::{Peer, thin_check};
use crate::pool::{Pool, PoolOptions};
use crate::volume::{ThinVolume, VolumeOptions};

/// Bytes read from a volume at a time.
const READ_BYTES: usize = 256 << 10;

/// What the crashes checked so far covered.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Totals {
    /// Crashes checked.
    pub crashes: usize,
    /// Events after the last sync of their device left out or torn.
    pub lost_events: usize,
    /// Volumes read back and compared with the model (snapshots included).
    pub volumes: usize,
    /// Of them, snapshots.
    pub snapshots: usize,
    /// Units that had to show a generation written and flushed (or snapshotted).
    pub required_units: usize,
}

/// Checks the pool after `crash`; with `both`, thin_check 1.1 too.
pub(super) fn check_crash(
    rec: &Recording,
    crash: Crash,
    rng: &mut Rng,
    (both, totals): (bool, &mut Totals),
) -> Result<(), String> {
    let dir = rec.dir.path().join("crashed");
    std::fs::create_dir_all(&dir).unwrap();
    let (meta, data) = (dir.join("meta"), dir.join("data"));
    let ([meta_image, data_image], lost) = crash_images(&rec.events, rec.sizes(), crash, rng);
    totals.lost_events += lost;
    std::fs::write(&meta, meta_image).unwrap();
    write_sparse(&data, &data_image);
    crate::pool::sidecar::store(&crate::pool::sidecar::path_for(&meta), &rec.sidecar).unwrap();
    checks(&meta, both)?;
    let opts = PoolOptions {
        cache: rustbk_formats::CacheMode::Writeback,
        ..PoolOptions::default()
    };
    let pool =
        Pool::open(&meta, &data, opts).map_err(|e| format!("the pool does not open: {e}"))?;
    let present: Vec<u64> = pool.volumes().unwrap().iter().map(|v| v.id).collect();
    for (id, volume) in &rec.volumes {
        let (expect, required) = match volume {
            Volume::Served(model) => (model.expect_at(crash.cut), true),
            Volume::Snapshot {
                expect,
                returned_at,
            } => (expect.clone(), *returned_at <= crash.cut),
        };
        match (present.contains(id), required) {
            (false, true) => return Err(format!("volume {id} is gone")),
            (false, false) => {}
            (true, _) => {
                let disk = read_volume(&pool, *id)?;
                expect
                    .verify(&disk)
                    .map_err(|e| format!("volume {id}: {e}"))?;
                totals.volumes += 1;
                totals.snapshots += usize::from(matches!(volume, Volume::Snapshot { .. }));
                totals.required_units += expect.required_units();
            }
        }
    }
    Ok(())
}

/// rustbk's check (whose recount finds leaked blocks), then thin_check 0.9 and maybe 1.1.
fn checks(meta: &Path, both: bool) -> Result<(), String> {
    let report = check_path(meta, &CheckOptions::default()).map_err(|e| e.to_string())?;
    if !report.is_clean() {
        return Err(format!("rustbk thin check: {report}"));
    }
    let peers = if both {
        &Peer::ALL[..]
    } else {
        &Peer::ALL[..1]
    };
    for &peer in peers {
        thin_check(peer, meta)?;
    }
    Ok(())
}

/// The whole contents of volume `id`.
fn read_volume(pool: &Pool, id: u64) -> Result<Vec<u8>, String> {
    let opts = VolumeOptions {
        engine: EngineKind::Sync,
        ..VolumeOptions::default()
    };
    let vol = ThinVolume::open_local(pool, id, opts).map_err(|e| format!("volume {id}: {e}"))?;
    let size = usize::try_from(vol.geometry().size).unwrap();
    let mut q = vol.open_queue(4).unwrap();
    let mut out = Vec::with_capacity(size);
    for offset in (0..size).step_by(READ_BYTES) {
        let len = READ_BYTES.min(size - offset);
        let read = rustbk_formats::suite::read_at(q.as_mut(), offset as u64, len);
        out.extend(read.map_err(|e| format!("volume {id}: read at {offset}: {e}"))?);
    }
    Ok(out)
}

/// Writes `image` to `path`, leaving its zero blocks as holes.
fn write_sparse(path: &Path, image: &[u8]) {
    let mut file = std::fs::File::create(path).unwrap();
    file.set_len(image.len() as u64).unwrap();
    let bs = usize::try_from(BS).unwrap();
    for (i, block) in image.chunks(bs).enumerate() {
        if block.iter().any(|b| *b != 0) {
            file.seek(SeekFrom::Start((i * bs) as u64)).unwrap();
            file.write_all(block).unwrap();
        }
    }
}
