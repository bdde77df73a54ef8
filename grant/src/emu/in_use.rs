//! Tracking which grants the backend has mapped, reflected in the entries' `GTF_reading` and
//! `GTF_writing` bits as Xen does, so the guest cannot revoke a grant that is still mapped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::table::set_in_use;
use crate::sys::Region;
use crate::{Access, GrantRef};

/// Mapping counts per grant reference of one guest.
pub(crate) struct InUse {
    table: Region,
    counts: Mutex<HashMap<u32, Counts>>,
}

#[derive(Clone, Copy, Default)]
struct Counts {
    maps: u32,
    writable: u32,
}

impl InUse {
    pub fn new(table: Region) -> Arc<InUse> {
        Arc::new(InUse {
            table,
            counts: Mutex::new(HashMap::new()),
        })
    }

    pub fn table(&self) -> &Region {
        &self.table
    }

    /// Records mappings of `refs`; the guard undoes it when dropped (after the unmap).
    pub fn acquire(self: &Arc<Self>, refs: &[GrantRef], access: Access) -> InUseGuard {
        let writable = access == Access::ReadWrite;
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        for gref in refs {
            let c = counts.entry(gref.0).or_default();
            c.maps += 1;
            c.writable += u32::from(writable);
            self.publish(*gref, *c);
        }
        InUseGuard {
            in_use: Arc::clone(self),
            refs: refs.to_vec(),
            writable,
        }
    }

    fn release(&self, refs: &[GrantRef], writable: bool) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        for gref in refs {
            let Some(c) = counts.get_mut(&gref.0) else {
                continue;
            };
            c.maps = c.maps.saturating_sub(1);
            c.writable = c.writable.saturating_sub(u32::from(writable));
            let now = *c;
            if now.maps == 0 {
                counts.remove(&gref.0);
            }
            self.publish(*gref, now);
        }
    }

    fn publish(&self, gref: GrantRef, c: Counts) {
        if let Err(e) = set_in_use(&self.table, gref, c.maps > 0, c.writable > 0) {
            tracing::warn!(error = %e, gref = gref.0, "cannot update grant in-use bits");
        }
    }
}

/// Held by a mapping; clears its in-use marks when dropped.
pub(crate) struct InUseGuard {
    in_use: Arc<InUse>,
    refs: Vec<GrantRef>,
    writable: bool,
}

impl Drop for InUseGuard {
    fn drop(&mut self) {
        self.in_use.release(&self.refs, self.writable);
    }
}
