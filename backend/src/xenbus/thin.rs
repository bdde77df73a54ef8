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
