//! The unused end of a file grown ahead by a session that never closed it.
//!
//! A session grows the file a chunk ahead of its new clusters ([`Meta::grow_ahead`]) and cuts
//! what it did not use when the image closes. After a crash the tail stays: clusters no
//! refcount claims, which may hold data written into clusters whose mapping never became
//! durable. Left there, those clusters are reused one by one, each zeroed first. Cut off at
//! the next read-write open instead, the file ends with its last used cluster again and the
//! clusters past it are fresh (holes that read zeros).

use super::meta::{Meta, grow_chunk_clusters};
use crate::error::Error;

impl Meta {
    /// Cuts off the clusters at the end of the file that no refcount claims, looking back at
    /// most one growth chunk (all a crashed session leaves). Called only on a read-write
    /// open, which holds the image's write lock: no other user can be writing there.
    pub(super) fn cut_unused_tail(&mut self) -> Result<(), Error> {
        let bits = self.layout.cluster_bits;
        let cluster_size = self.layout.cluster_size();
        if self.file_size % cluster_size != 0 {
            return Ok(());
        }
        let end = self.file_size >> bits;
        let floor = end.saturating_sub(grow_chunk_clusters(bits)).max(1);
        let mut keep = end;
        while keep > floor && !self.is_reserved(keep - 1) && self.refcount(keep - 1)? == 0 {
            keep -= 1;
        }
        let size = keep << bits;
        if size >= self.file_size {
            return Ok(());
        }
        self.io.cut_to(size)?;
        tracing::info!(
            bytes = self.file_size - size,
            "cut the unused end a session that did not close left in the qcow2 file"
        );
        self.file_size = size;
        self.grown_to = size;
        self.fresh_from = keep;
        Ok(())
    }
}
