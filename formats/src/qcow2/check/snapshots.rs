//! The internal snapshot table: where each snapshot's L1 table is, and how long the table is.

use crate::error::Error;

use super::super::header::Header;
use super::super::metaio::{MetaIo, MetaKind};

/// Most internal snapshots accepted (QEMU's limit).
pub(super) const MAX_SNAPSHOTS: u32 = 65536;
/// Largest snapshot table accepted, in bytes (QEMU's limit).
const MAX_TABLE_BYTES: u64 = 64 << 20;
/// Length of the fixed part of a snapshot table entry.
const ENTRY_HEAD: usize = 40;

/// One snapshot's L1 table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct SnapshotL1 {
    /// Offset of the L1 table.
    pub offset: u64,
    /// Entries of the L1 table.
    pub entries: u32,
}

/// The snapshot table: the L1 table of every snapshot and the table's length in bytes.
pub(super) fn read(io: &dyn MetaIo, h: &Header) -> Result<(Vec<SnapshotL1>, u64), Error> {
    if h.nb_snapshots == 0 {
        return Ok((Vec::new(), 0));
    }
    if h.nb_snapshots > MAX_SNAPSHOTS {
        return Err(Error::InvalidImage(format!(
            "{} internal snapshots (at most {MAX_SNAPSHOTS})",
            h.nb_snapshots
        )));
    }
    let mut at = h.snapshots_offset;
    let mut l1s = Vec::new();
    for _ in 0..h.nb_snapshots {
        let mut head = [0u8; ENTRY_HEAD];
        io.read_exact(MetaKind::Header, at, &mut head)?;
        let be32 = |i: usize| u32::from_be_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
        let be16 = |i: usize| u64::from(u16::from_be_bytes([head[i], head[i + 1]]));
        let mut offset = [0u8; 8];
        offset.copy_from_slice(&head[..8]);
        l1s.push(SnapshotL1 {
            offset: u64::from_be_bytes(offset),
            entries: be32(8),
        });
        let extra = u64::from(be32(36));
        let len = ENTRY_HEAD as u64 + extra + be16(12) + be16(14);
        at = at
            .checked_add(len.div_ceil(8) * 8)
            .filter(|&end| end - h.snapshots_offset <= MAX_TABLE_BYTES)
            .ok_or_else(|| Error::InvalidImage("snapshot table too large".to_owned()))?;
    }
    Ok((l1s, at - h.snapshots_offset))
}
