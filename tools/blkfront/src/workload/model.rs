//! What a guest knows about its disk: the generation last written to every block.
//!
//! A [`DiskModel`] outlives one connection, so a guest that reboots (closes its frontend and
//! connects again) keeps verifying what it wrote before.

use super::Workload;
use crate::{Error, Frontend};

/// Generation of a block whose contents are unknown (a failed write, or a disk that was not
/// fresh): never verified until written again.
pub(super) const UNKNOWN: u32 = u32::MAX;

/// The generation of every block of the workload's region (0: never written, reads zeros).
#[derive(Clone, Debug)]
pub struct DiskModel {
    pub(super) gens: Vec<u32>,
}

impl DiskModel {
    /// A model of the region `w` uses on the disk `front` is connected to: every block zero if
    /// the workload says the disk is fresh, unknown otherwise. Empty without verify.
    pub fn for_workload(front: &Frontend, w: &Workload) -> Result<DiskModel, Error> {
        if !w.verify {
            return Ok(DiskModel { gens: Vec::new() });
        }
        let blocks = region_blocks(front, w)?;
        let first = if w.fresh { 0 } else { UNKNOWN };
        Ok(DiskModel {
            gens: vec![first; blocks],
        })
    }

    /// Blocks modelled.
    pub fn blocks(&self) -> usize {
        self.gens.len()
    }
}

/// The number of `w.block_size` blocks in the region of the disk `w` uses.
pub(super) fn region_blocks(front: &Frontend, w: &Workload) -> Result<usize, Error> {
    if w.block_size == 0 {
        return Err(Error::Config("block size 0".into()));
    }
    let disk_bytes = front.disk().sectors.saturating_mul(512);
    let region = w.region.unwrap_or(disk_bytes).min(disk_bytes);
    usize::try_from(region / w.block_size as u64)
        .map_err(|_| Error::Config("too many blocks".into()))
}
