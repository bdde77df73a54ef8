//! Serving a volume of a thin pool (`params` = `thin:/path/to/pool:VOLUME`).
//!
//! When the pool service (`rustbk thin serve`) serves the pool, the worker connects to it, so
//! any number of guests' workers serve volumes of one pool. When none does, the worker starts
//! one (`BackendOptions::thin_service`; it stops after a minute with no connection), or, with
//! no executable to start, opens the pool itself, which locks it: one served volume at a time.

use std::path::Path;
use std::sync::Arc;

use rustbk_formats::BlockImage;
use rustbk_thin::dir::{PoolDir, PoolHandle, resolve_volume};
use rustbk_thin::pool::PoolOptions;
use rustbk_thin::volume::{ThinVolume, VolumeOptions};

use super::device::BackendOptions;
use super::keys::BackendInfo;
use crate::Error;

/// Opens volume `volume` (an id or a name) of the pool in directory `pool`.
pub(super) fn open(
    pool: &Path,
    volume: &str,
    info: &BackendInfo,
    opts: &BackendOptions,
) -> Result<Arc<dyn BlockImage>, Error> {
    let cache = info.cache.unwrap_or(opts.cache);
    let pool_opts = PoolOptions {
        cache,
        ..PoolOptions::default()
    };
    let dir = PoolDir::new(pool);
    if let Some(exe) = &opts.thin_service {
        dir.start_service(exe)?;
    }
    let volume_opts = VolumeOptions {
        engine: opts.engine,
        sector_size: info.sector_size(opts),
        read_only: info.read_only,
        cache,
        ..VolumeOptions::default()
    };
    let image = match dir.handle(pool_opts)? {
        PoolHandle::Service(mut admin) => {
            let id = resolve_volume(&admin.volumes()?, volume)?;
            tracing::info!(volume = id, "thin volume served through the pool service");
            rustbk_thin::service::open_volume(&dir.socket(), id, volume_opts)?
        }
        PoolHandle::Local(opened) => {
            let id = resolve_volume(&opened.volumes()?, volume)?;
            ThinVolume::open_local(&opened, id, volume_opts)?
        }
    };
    let size = image.geometry().size;
    tracing::info!(pool = %pool.display(), volume, size, read_only = info.read_only, %cache, "thin volume opened");
    Ok(Arc::new(image))
}

/// Grows volume `volume` of the pool in directory `pool` to `size` bytes in the pool (the
/// pool's own volume resize, as `rustbk thin resize` does), for an online resize of the served
/// volume; a volume the pool already holds at that size or larger is left alone. Needs the
/// pool service: a worker that opened the pool itself holds it locked.
pub(super) fn grow_volume(pool: &Path, volume: &str, size: u64) -> Result<(), Error> {
    let mut handle = PoolDir::new(pool).handle(PoolOptions::default())?;
    let volumes = handle.volumes()?;
    let id = resolve_volume(&volumes, volume)?;
    let now = volumes.iter().find(|v| v.id == id).map(|v| v.record.size);
    if now.is_some_and(|now| now < size) {
        handle.resize_volume(id, size)?;
        tracing::info!(pool = %pool.display(), volume = id, size, "thin volume grown in its pool");
    }
    Ok(())
}
