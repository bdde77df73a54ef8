//! Growing a served volume: taking up the size the pool gave it (`rustbk thin resize`).

use std::sync::atomic::Ordering;

use rustbk_formats::Error as ImageError;

use super::{ThinVolume, lock, to_formats};

impl ThinVolume {
    /// Serves `new_size` bytes once the pool's volume holds that many (see
    /// [`BlockImage::grow`](rustbk_formats::BlockImage::grow)): the pool is asked for the
    /// volume's size, the mapping cache and the queues' size grow. The pool is not changed
    /// here: grow the volume there first (`rustbk thin resize`, or the pool service's resize).
    ///
    /// Refused: a smaller size ([`ImageError::Shrink`]), a size the pool's volume does not
    /// have, and a volume whose external origin is larger than it (the origin's data would
    /// appear in the new area).
    pub(super) fn take_up(&self, new_size: u64) -> Result<(), ImageError> {
        let old = self.size.load(Ordering::Acquire);
        if new_size < old {
            return Err(ImageError::Shrink {
                from: old,
                to: new_size,
            });
        }
        let sector = u64::from(self.geometry.logical_sector_size.max(1));
        if new_size % sector != 0 {
            return Err(ImageError::InvalidArgument(format!(
                "cannot grow to {new_size} bytes: not a whole number of {sector}-byte sectors"
            )));
        }
        let mut core = lock(&self.core).map_err(to_formats)?;
        if let Some(origin) = core
            .origin
            .as_ref()
            .filter(|o| o.size > old && new_size > old)
        {
            return Err(ImageError::UnsupportedFeature(format!(
                "growing a volume whose external origin ({} bytes) is larger than it ({old} \
                 bytes): the origin's data would appear in the new area",
                origin.size
            )));
        }
        let info = core.port.info().map_err(to_formats)?;
        if info.size < new_size {
            return Err(ImageError::InvalidArgument(format!(
                "thin volume {} is {} bytes in its pool, not {new_size}: grow it there first \
                 (rustbk thin resize)",
                info.id, info.size
            )));
        }
        core.cache.grow(info.size.div_ceil(info.block_size));
        core.info.size = info.size;
        drop(core);
        self.size.fetch_max(new_size, Ordering::AcqRel);
        Ok(())
    }

    /// The volume's size in its pool now.
    pub(super) fn pool_size(&self) -> crate::Result<u64> {
        lock(&self.core)?.port.info().map(|info| info.size)
    }
}
