//! The emulated grant table: an array of Xen's v1 grant entries in shared memory.
//!
//! Entry layout (`grant_entry_v1`): `flags: u16` at 0, `domid: u16` at 2, `frame: u32` at 4.

use std::sync::atomic::Ordering;

use crate::sys::Region;
use crate::{Access, DomId, Error, GrantRef};

/// Bytes per grant entry.
pub const ENTRY_SIZE: usize = 8;
/// The grant is in use: `domid` may map `frame`.
pub const GTF_PERMIT_ACCESS: u16 = 1;
/// The grantee may only read the frame.
pub const GTF_READONLY: u16 = 1 << 2;
/// Set while the grantee has the frame mapped (Xen's hypervisor sets it; here the backend).
pub const GTF_READING: u16 = 1 << 3;
/// Set while the grantee has the frame mapped writable.
pub const GTF_WRITING: u16 = 1 << 4;
const IN_USE: u16 = GTF_READING | GTF_WRITING;

/// A validated grant: the guest frame to map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Grant {
    pub frame: u32,
}

/// Reads grant entries on behalf of the grantee, checking them as the hypervisor would.
pub(crate) struct TableReader<'a> {
    pub table: &'a Region,
    pub entries: u32,
    pub ram_pages: u32,
    pub grantee: DomId,
}

impl TableReader<'_> {
    /// Checks that `gref` is granted to us with `access`, and returns the frame.
    pub fn check(&self, gref: GrantRef, access: Access) -> Result<Grant, Error> {
        if gref.0 >= self.entries {
            return Err(Error::GrantOutOfRange(gref));
        }
        let base = gref.0 as usize * ENTRY_SIZE;
        let flags = self.table.atomic_u16(base)?.load(Ordering::Acquire);
        if flags & GTF_PERMIT_ACCESS == 0 {
            return Err(Error::GrantInvalid(gref));
        }
        let domid = DomId(self.table.atomic_u16(base + 2)?.load(Ordering::Relaxed));
        if domid != self.grantee {
            return Err(Error::GrantWrongDomain {
                gref,
                granted_to: domid,
            });
        }
        if access == Access::ReadWrite && flags & GTF_READONLY != 0 {
            return Err(Error::GrantReadOnly(gref));
        }
        let frame = self.table.atomic_u32(base + 4)?.load(Ordering::Relaxed);
        if frame >= self.ram_pages {
            return Err(Error::FrameOutOfRange { gref, frame });
        }
        Ok(Grant { frame })
    }
}

/// Writes an entry the way a guest does: domid and frame first, then flags with release order.
pub(crate) fn write_entry(
    table: &Region,
    gref: GrantRef,
    to: DomId,
    frame: u32,
    readonly: bool,
) -> Result<(), Error> {
    let base = gref.0 as usize * ENTRY_SIZE;
    table.store_u16(base, 0)?;
    table.atomic_u16(base + 2)?.store(to.0, Ordering::Relaxed);
    table.atomic_u32(base + 4)?.store(frame, Ordering::Relaxed);
    let flags = GTF_PERMIT_ACCESS | if readonly { GTF_READONLY } else { 0 };
    table.store_u16(base, flags)
}

/// Revokes an entry, as `gnttab_end_foreign_access_ref` does: fails while the grantee still
/// has the frame mapped.
pub(crate) fn clear_entry(table: &Region, gref: GrantRef) -> Result<(), Error> {
    let flags = table.atomic_u16(gref.0 as usize * ENTRY_SIZE)?;
    let mut cur = flags.load(Ordering::Acquire);
    loop {
        if cur & GTF_PERMIT_ACCESS == 0 {
            return Err(Error::GrantInvalid(gref));
        }
        if cur & IN_USE != 0 {
            return Err(Error::GrantInUse(gref));
        }
        match flags.compare_exchange(cur, 0, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Ok(()),
            Err(now) => cur = now,
        }
    }
}

/// Zeroes an entry's flags whatever they hold (a guest scribbling over its own table).
pub(crate) fn force_clear_entry(table: &Region, gref: GrantRef) -> Result<(), Error> {
    table.store_u16(gref.0 as usize * ENTRY_SIZE, 0)
}

/// Whether the grantee has `gref` mapped.
pub(crate) fn in_use(table: &Region, gref: GrantRef) -> Result<bool, Error> {
    let flags = table
        .atomic_u16(gref.0 as usize * ENTRY_SIZE)?
        .load(Ordering::Acquire);
    Ok(flags & IN_USE != 0)
}

/// Sets or clears the in-use bits of `gref` (the grantee's side).
pub(crate) fn set_in_use(
    table: &Region,
    gref: GrantRef,
    reading: bool,
    writing: bool,
) -> Result<(), Error> {
    let flags = table.atomic_u16(gref.0 as usize * ENTRY_SIZE)?;
    let want = if reading { GTF_READING } else { 0 } | if writing { GTF_WRITING } else { 0 };
    flags.fetch_and(!(IN_USE & !want), Ordering::AcqRel);
    flags.fetch_or(want, Ordering::AcqRel);
    Ok(())
}
