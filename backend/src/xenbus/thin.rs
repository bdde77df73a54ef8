//! Serving a volume of a thin pool (`params` = `thin:/path/to/pool:VOLUME`).
//!
//! The worker opens the pool in its own process: one served volume per pool at a time, since
//! the metadata is locked by its opener. (Several guests on one pool need the pool service.)

use std::path::Path;
use std::sync::Arc;

use rustbk_formats::BlockImage;
use rustbk_thin::dir::{PoolDir, resolve_volume};
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
    let pool_opts = PoolOptions {
        direct: opts.direct,
        ..PoolOptions::default()
    };
    let opened = PoolDir::new(pool).open(pool_opts)?;
    let id = resolve_volume(&opened.volumes()?, volume)?;
    let volume_opts = VolumeOptions {
        engine: opts.engine,
        sector_size: opts.sector_size,
        read_only: info.read_only,
    };
    let image = ThinVolume::open_local(&opened, id, volume_opts)?;
    let size = image.geometry().size;
    tracing::info!(pool = %pool.display(), volume = id, size, read_only = info.read_only, "thin volume opened");
    Ok(Arc::new(image))
}
