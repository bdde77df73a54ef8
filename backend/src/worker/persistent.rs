//! Persistent grants (`feature-persistent`): pages the frontend reuses for every request stay
//! mapped for the life of the ring, so most requests need no map or unmap at all.

use std::collections::HashMap;
use std::sync::Arc;

use rustbk_grant::{Access, GrantMapping, GrantRef, GuestHandle};

/// Persistent mappings of one ring, at most `max` of them.
pub(super) struct GrantCache {
    map: HashMap<GrantRef, Arc<GrantMapping>>,
    max: usize,
}

impl GrantCache {
    /// A cache holding at most `max` pages (Linux blkback keeps 1056 per ring by default).
    pub fn new(max: usize) -> Self {
        GrantCache {
            map: HashMap::new(),
            max,
        }
    }

    /// The persistent mapping of `gref`, mapping it now if there is room. `Ok(None)` when the
    /// cache is full or the grant cannot be mapped writable (a read-only grant): the caller
    /// then maps it for this request only.
    pub fn get(&mut self, guest: &dyn GuestHandle, gref: GrantRef) -> Option<Arc<GrantMapping>> {
        if let Some(m) = self.map.get(&gref) {
            return Some(Arc::clone(m));
        }
        if self.map.len() >= self.max {
            return None;
        }
        let mapping = Arc::new(guest.map_grants(&[gref], Access::ReadWrite).ok()?);
        self.map.insert(gref, Arc::clone(&mapping));
        Some(mapping)
    }

    /// Number of pages kept mapped.
    pub fn len(&self) -> usize {
        self.map.len()
    }
}
