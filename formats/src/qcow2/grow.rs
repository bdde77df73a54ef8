//! Growing a qcow2 image: offline (`rustbk img resize`) or while it is served.

use super::Qcow2Image;
use super::header::{self, MAX_L1_BYTES};
use super::layout::small;
use super::meta::Meta;
use super::metaio::MetaKind;
use crate::error::Error;
use crate::size::check_growth;

impl Qcow2Image {
    /// Grows the image to `new_size` bytes while its queues may be serving it (see
    /// [`BlockImage::grow`](crate::BlockImage::grow)): the metadata first (a larger L1 table
    /// if needed, then the header's size, both durable), then the size the queues check.
    ///
    /// Refused when the backing file is larger than the image: its data would show through in
    /// the new area, which a guest expects to read as zeros.
    pub(super) fn grow_served(&self, new_size: u64) -> Result<(), Error> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        let old = self.size.get();
        check_growth(old, new_size, self.geometry.logical_sector_size)?;
        if new_size > header::MAX_SIZE {
            return Err(Error::InvalidArgument(format!(
                "a qcow2 image holds at most {} bytes, not {new_size}",
                header::MAX_SIZE
            )));
        }
        if let Some(backing) = &self.backing {
            let below = backing.geometry().size;
            if below > old && new_size > old {
                return Err(Error::UnsupportedFeature(format!(
                    "growing an image whose backing file ({below} bytes) is larger than it \
                     ({old} bytes): the backing data would appear in the new area"
                )));
            }
        }
        grow_metadata(self, new_size)?;
        self.size.set(new_size);
        tracing::debug!(path = %self.file.path().display(), old, new = new_size, "qcow2 image grown");
        Ok(())
    }
}

/// Writes back the image's metadata, grows its L1 table if `new_size` needs more entries, and
/// writes the new size into the header, each step durable before the next.
pub(super) fn grow_metadata(image: &Qcow2Image, new_size: u64) -> Result<(), Error> {
    let mut meta = image.lock_idle()?;
    meta.write_back()?;
    let cs = meta.layout().cluster_size();
    let needed = new_size.div_ceil(cs * (cs / 8));
    if needed > meta.l1.len() as u64 {
        grow_l1(&mut meta, needed)?;
    }
    meta.io.write(
        MetaKind::Header,
        header::SIZE_OFFSET,
        &new_size.to_be_bytes(),
    )?;
    meta.io.sync()?;
    meta.layout.size = new_size;
    Ok(())
}

/// Writes a copy of the L1 table with `entries` entries at the end of the file and switches the
/// header to it; the old table's clusters are freed afterwards.
fn grow_l1(meta: &mut Meta, entries: u64) -> Result<(), Error> {
    if entries * 8 > MAX_L1_BYTES {
        return Err(Error::InvalidArgument(format!(
            "an L1 table of {entries} entries is too large"
        )));
    }
    let cs = meta.layout().cluster_size();
    let clusters = (entries * 8).div_ceil(cs);
    meta.free_hint = meta.file_size.div_ceil(cs);
    let first = meta.alloc_cluster()?;
    for i in 1..clusters {
        if meta.alloc_cluster()? != first + i * cs {
            return Err(Error::UnsupportedFeature(
                "growing the L1 table across a new refcount block".to_owned(),
            ));
        }
    }
    let mut table = vec![0u8; small(clusters * cs)];
    for (i, &e) in meta.l1.iter().enumerate() {
        super::meta::put64(&mut table, i * 8, e);
    }
    meta.io.write(MetaKind::L1, first, &table)?;
    meta.flush_refcounts()?;
    meta.io.sync()?;
    let mut fields = [0u8; 12];
    fields[..4].copy_from_slice(&u32::try_from(entries).unwrap_or(0).to_be_bytes());
    fields[4..].copy_from_slice(&first.to_be_bytes());
    meta.io
        .write(MetaKind::Header, header::L1_FIELDS_OFFSET, &fields)?;
    meta.io.sync()?;
    let old_offset = meta.l1_offset;
    let old_clusters = (meta.l1.len() as u64 * 8).div_ceil(cs);
    meta.l1.resize(small(entries), 0);
    meta.l1_offset = first;
    meta.set_reserved(u32::try_from(entries).unwrap_or(0));
    if old_clusters > 0 {
        meta.decrement(old_offset / cs, old_clusters)?;
    }
    meta.flush_refcounts()?;
    Ok(())
}
