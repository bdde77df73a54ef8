//! Geometry of an open image (cluster and table sizes) and the meaning of L1/L2 entries.

use crate::error::Error;

/// Bit 63 of L1/L2 entries: the refcount is exactly one (writes may go in place).
pub(crate) const COPIED: u64 = 1 << 63;
/// Bit 62 of L2 entries: the cluster is compressed.
pub(crate) const COMPRESSED: u64 = 1 << 62;
/// Bit 0 of standard L2 entries (version 3): the cluster reads as zeros.
pub(crate) const ZERO: u64 = 1;
/// Bits 9..=55: a host offset in L1 entries, refcount table entries and standard L2 entries.
pub(crate) const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Reserved bits of a standard L2 entry (1..=8 and 56..=61).
const L2_RESERVED: u64 = 0x3f00_0000_0000_01fe;
/// Reserved bits of an L1 entry (0..=8 and 56..=62).
const L1_RESERVED: u64 = 0x7f00_0000_0000_01ff;

/// A `u64` known to be small (bounded by the cluster size or a table cap) as `usize`.
pub(crate) fn small(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// Sizes derived from the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Virtual size in bytes.
    pub size: u64,
    /// 2 or 3.
    pub version: u32,
    /// log2 of the refcount width in bits.
    pub refcount_order: u32,
}

impl Layout {
    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Cluster size as usize (at most 2 MiB).
    pub fn cluster_usize(&self) -> usize {
        1 << self.cluster_bits
    }

    /// Entries in an L2 table.
    pub fn l2_entries(&self) -> u64 {
        1 << (self.cluster_bits - 3)
    }

    /// L1 index of guest cluster `gc`.
    pub fn l1_index(&self, gc: u64) -> u64 {
        gc >> (self.cluster_bits - 3)
    }

    /// Index within its L2 table of guest cluster `gc`.
    pub fn l2_index(&self, gc: u64) -> u64 {
        gc & (self.l2_entries() - 1)
    }

    /// Refcount entries in a refcount block.
    pub fn refblock_entries(&self) -> u64 {
        (self.cluster_size() * 8) >> self.refcount_order
    }

    /// Splits `[offset, offset + len)` into pieces within one guest cluster each:
    /// `(guest cluster, offset in cluster, length)`.
    pub fn split(&self, offset: u64, len: u64) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        let cs = self.cluster_size();
        let mut at = offset;
        let end = offset.saturating_add(len);
        std::iter::from_fn(move || {
            if at >= end {
                return None;
            }
            let inner = at & (cs - 1);
            let n = (cs - inner).min(end - at);
            let piece = (at >> self.cluster_bits, inner, n);
            at += n;
            Some(piece)
        })
    }
}

/// What a guest cluster maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mapping {
    /// Not allocated: backing file, or zeros.
    Unallocated,
    /// Reads as zeros; the host cluster (if any) is a preallocation owned by this entry.
    Zero {
        /// Preallocated host cluster.
        prealloc: Option<u64>,
    },
    /// A standard cluster at `host`.
    Data {
        /// Host offset of the cluster.
        host: u64,
        /// The COPIED flag: refcount known to be one.
        copied: bool,
    },
    /// A compressed cluster: `len` bytes at `host` (not aligned).
    Compressed {
        /// First byte of the compressed data.
        host: u64,
        /// Upper bound of the compressed data's length.
        len: u64,
    },
}

impl Mapping {
    /// Host clusters whose refcount this mapping holds a reference to: `(first, count)`.
    pub fn host_clusters(&self, layout: &Layout) -> Option<(u64, u64)> {
        let bits = layout.cluster_bits;
        match *self {
            Mapping::Unallocated | Mapping::Zero { prealloc: None } => None,
            Mapping::Zero {
                prealloc: Some(host),
            }
            | Mapping::Data { host, .. } => Some((host >> bits, 1)),
            Mapping::Compressed { host, len } => {
                let first = host >> bits;
                let last = (host + len - 1) >> bits;
                Some((first, last - first + 1))
            }
        }
    }
}

fn bad(what: String) -> Error {
    Error::InvalidImage(what)
}

/// Decodes an L2 entry.
pub(crate) fn decode_l2(entry: u64, layout: &Layout) -> Result<Mapping, Error> {
    if entry & COMPRESSED != 0 {
        return decode_compressed(entry, layout);
    }
    if entry & L2_RESERVED != 0 {
        return Err(bad(format!("L2 entry {entry:#x} has reserved bits set")));
    }
    let host = entry & OFFSET_MASK;
    let zero = entry & ZERO != 0;
    if zero && layout.version < 3 {
        return Err(bad(format!("zero flag in a version 2 image ({entry:#x})")));
    }
    if host & (layout.cluster_size() - 1) != 0 {
        return Err(bad(format!("L2 entry {entry:#x} not cluster-aligned")));
    }
    let copied = entry & COPIED != 0;
    Ok(match (zero, host) {
        (true, 0) => Mapping::Zero { prealloc: None },
        (true, host) => Mapping::Zero {
            prealloc: Some(host),
        },
        (false, 0) if copied => {
            return Err(bad("L2 entry with COPIED set and no offset".to_owned()));
        }
        (false, 0) => Mapping::Unallocated,
        (false, host) => Mapping::Data { host, copied },
    })
}

fn decode_compressed(entry: u64, layout: &Layout) -> Result<Mapping, Error> {
    if entry & COPIED != 0 {
        return Err(bad(format!(
            "compressed L2 entry {entry:#x} with COPIED set"
        )));
    }
    let x = 62 - (layout.cluster_bits - 8);
    let host = entry & ((1u64 << x) - 1);
    let sectors = (entry & !(COPIED | COMPRESSED)) >> x;
    let len = (sectors + 1) * 512 - (host & 511);
    if host == 0 {
        return Err(bad("compressed cluster at offset 0".to_owned()));
    }
    Ok(Mapping::Compressed { host, len })
}

/// A standard L2 entry for `host` (refcount one).
pub(crate) fn data_entry(host: u64) -> u64 {
    host | COPIED
}

/// The L2 table offset in an L1 entry (0: none).
pub(crate) fn decode_l1(entry: u64, layout: &Layout) -> Result<u64, Error> {
    if entry & L1_RESERVED != 0 {
        return Err(bad(format!("L1 entry {entry:#x} has reserved bits set")));
    }
    let offset = entry & OFFSET_MASK;
    if offset & (layout.cluster_size() - 1) != 0 {
        return Err(bad(format!("L1 entry {entry:#x} not cluster-aligned")));
    }
    Ok(offset)
}

/// The refcount block offset in a refcount table entry (0: none).
pub(crate) fn decode_reftable(entry: u64, layout: &Layout) -> Result<u64, Error> {
    if entry & !OFFSET_MASK != 0 || entry & (layout.cluster_size() - 1) != 0 {
        return Err(bad(format!(
            "refcount table entry {entry:#x} malformed or not cluster-aligned"
        )));
    }
    Ok(entry)
}
