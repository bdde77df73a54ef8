//! Newtypes shared by the whole project, so that domain ids, grant
//! references, event-channel ports and sectors are never mixed up.

use std::fmt;

/// Size of one Xen page, the unit of grants and ring pages.
pub const PAGE_SIZE: usize = 4096;

/// Largest ring page order the backend accepts (`max-ring-page-order`).
pub const MAX_RING_PAGE_ORDER: u32 = 4;

/// Size in bytes of one blkif sector; sector numbers on the ring always count these.
pub const SECTOR_SIZE: u64 = 512;

/// Number of 512-byte sectors in one page.
pub const SECTORS_PER_PAGE: u8 = 8;

/// A Xen domain id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct DomId(pub u16);

/// A grant reference, naming one page a guest shares with us.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct GrantRef(pub u32);

/// An event-channel port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Port(pub u32);

/// A disk position or length in 512-byte units, always (even with `sector-size` 4096).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Sector(pub u64);

impl Sector {
    /// Byte offset of this sector, or `None` if it does not fit in a `u64`.
    pub fn to_bytes(self) -> Option<u64> {
        self.0.checked_mul(SECTOR_SIZE)
    }
}

impl fmt::Display for DomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for GrantRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for Sector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sector_to_bytes_multiplies_by_512_and_detects_overflow() {
        assert_eq!(Sector(3).to_bytes(), Some(1536));
        assert_eq!(Sector(u64::MAX / 512 + 1).to_bytes(), None);
    }
}
