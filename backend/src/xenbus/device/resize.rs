//! Online resize: growing the served disk and announcing it as Linux blkback does
//! (`xen_vbd_resize`: `sectors` and `state` rewritten in one transaction).

use std::sync::Arc;

use rustbk_formats::BlockImage;

use super::Device;
use crate::Error;
use crate::control::Resized;
use crate::xenbus::XenbusState;
use crate::xenbus::keys::Disk;

/// How often the image's storage is checked for a size its owner changed (Linux blkback checks
/// its device's size each time its thread wakes).
pub(super) const SIZE_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl Device {
    /// Takes up a size the image's storage got underneath (a raw file extended with `truncate
    /// -s`, a block device that grew, a thin volume grown in its pool). A storage that shrank is
    /// refused: the disk keeps its size. A refusal or a failure is logged once per size seen.
    pub(super) async fn check_storage_size(&mut self) -> Result<(), Error> {
        let Some(storage) = storage_size(&self.image).await else {
            return Ok(());
        };
        let g = self.image.geometry();
        let whole = storage - storage % u64::from(g.logical_sector_size.max(1));
        if whole == g.size || self.refused_size == Some(storage) {
            return Ok(());
        }
        if whole < g.size {
            self.refused_size = Some(storage);
            tracing::error!(
                old = g.size,
                storage,
                "the image shrank underneath the served disk; refusing to shrink it: the guest \
                 keeps its size, and its I/O past the file's end fails"
            );
            return Ok(());
        }
        match self.grow_to(whole).await {
            Ok(_) => Ok(()),
            Err(e @ Error::Xenstore { .. }) => Err(e),
            Err(e) => {
                // Logged once for this size: the check runs every second.
                self.refused_size = Some(storage);
                let error = super::error_chain(&e);
                tracing::error!(%error, new = whole, "cannot take up the image's new size");
                Ok(())
            }
        }
    }

    /// Grows the disk to `new_size` bytes and announces it (see
    /// [`Command::Resize`](crate::control::Command::Resize)).
    pub(super) async fn grow_to(&mut self, new_size: u64) -> Result<Resized, Error> {
        let old = self.image.geometry().size;
        let image: Arc<dyn BlockImage> = Arc::clone(&self.image);
        let thin = match &self.info.disk {
            Disk::Thin { pool, volume } if new_size > old => Some((pool.clone(), volume.clone())),
            _ => None,
        };
        tokio::task::spawn_blocking(move || {
            if let Some((pool, volume)) = thin {
                crate::xenbus::thin::grow_volume(&pool, &volume, new_size)?;
            }
            image.grow(new_size).map_err(Error::from)
        })
        .await
        .map_err(|e| Error::Spawn(std::io::Error::other(e.to_string())))??;
        let new = self.image.geometry().size;
        if new == old {
            return Ok(Resized {
                old,
                new,
                announced: false,
            });
        }
        self.refused_size = None;
        // The workers first: the guest may send requests past the old end as soon as it
        // reads the announcement.
        self.sectors.set(new / 512);
        // A paused device's frontend is connected too (its rings are only released).
        let connected = !self.workers.is_empty() || self.paused;
        let announced = self.state == XenbusState::Connected && connected;
        if announced {
            self.announce_size(new).await?;
        }
        let (domid, devid) = (self.spec.domid.0, self.spec.devid);
        tracing::info!(domid, devid, old, new, announced, "disk resized online");
        Ok(Resized {
            old,
            new,
            announced,
        })
    }

    /// Writes the new `sectors` (512-byte units, whatever the sector size) and rewrites
    /// `state` as Connected in one transaction: blkfront's watch on our state fires, finds us
    /// Connected while it is connected, re-reads `sectors` and sets its capacity.
    async fn announce_size(&self, bytes: u64) -> Result<(), Error> {
        let be = &self.spec.backend_path;
        let writes = vec![
            (format!("{be}/sectors"), (bytes / 512).to_string()),
            (
                format!("{be}/state"),
                XenbusState::Connected.number().to_string(),
            ),
        ];
        self.store.write_all(writes).await
    }
}

/// The size of the image's storage, if it can change underneath (see
/// [`BlockImage::storage_size`]); asked off the async thread, as a thin volume asks its pool
/// service, which may be slow to answer. `None` also when it cannot be read (logged).
async fn storage_size(image: &Arc<dyn BlockImage>) -> Option<u64> {
    let image = Arc::clone(image);
    let asked = tokio::task::spawn_blocking(move || image.storage_size()).await;
    let size = asked
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    size.unwrap_or_else(|e| {
        tracing::debug!(error = %e, "cannot read the image's size");
        None
    })
}
