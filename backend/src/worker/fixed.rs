//! Persistently mapped pages as io_uring fixed buffers: a page that enters the persistent
//! grant cache is registered in the image queue's fixed buffer table (the kernel pins it once,
//! not for every I/O), and a one-segment request on it is read or written with
//! `READ_FIXED`/`WRITE_FIXED`. A page leaving the cache is unregistered first; the registration
//! holds the mapping, so the page is unmapped only after the kernel let go of it.

use std::sync::Arc;

use rustbk_grant::{Direction, GrantMapping, GrantRef, GuestBuf, PageSpan};
use rustbk_ring::PAGE_SIZE;

use super::persistent::GrantCache;
use super::ring_loop::RingWorker;
use crate::xenbus::error_chain;

/// Most slots a ring's table has (the kernel's limit is 16384).
const MAX_SLOTS: usize = 16384;

impl RingWorker<'_> {
    /// Sets up the fixed buffer table for the persistent cache, if asked for and possible.
    pub(super) fn enable_fixed_buffers(&mut self) {
        let Some(cache) = self.persistent.as_mut() else {
            return;
        };
        if !self.cfg.fixed_buffers {
            return;
        }
        let slots = u32::try_from(self.cfg.persistent_grants.min(MAX_SLOTS)).unwrap_or(0);
        match self.queue.enable_fixed_buffers(slots) {
            Ok(true) => {
                cache.enable_fixed(slots);
                tracing::info!(
                    slots,
                    "persistent grants registered as io_uring fixed buffers"
                );
            }
            Ok(false) => tracing::info!("this image queue has no io_uring fixed buffers"),
            Err(e) => tracing::warn!(
                error = %error_chain(&e),
                "cannot set up io_uring fixed buffers: this ring serves without them"
            ),
        }
    }

    /// Registers the freshly kept page of `gref` at `slot`; true if it is registered. If the
    /// kernel refuses, the page stays kept without, and the ring stops registering pages (said
    /// once, at warn: an administrator asked for fixed buffers and this ring serves without).
    pub(super) fn register_page(
        &mut self,
        cache: &mut GrantCache,
        gref: GrantRef,
        slot: u32,
        mapping: &Arc<GrantMapping>,
    ) -> bool {
        let whole = PageSpan {
            page: 0,
            offset: 0,
            len: PAGE_SIZE,
        };
        let registered =
            GuestBuf::from_parts(std::iter::once((mapping, whole)), Direction::ToGuest)
                .map_err(|e| error_chain(&e))
                .and_then(|buf| {
                    self.queue
                        .register_fixed(slot, Box::new(buf))
                        .map_err(|e| error_chain(&e))
                });
        match registered {
            Ok(true) => return true,
            Ok(false) => cache.not_registered(gref),
            Err(e) => {
                if cache.refuse_fixed(gref) {
                    tracing::warn!(
                        error = %e,
                        slot,
                        "the kernel refused a kept page as an io_uring fixed buffer: this ring \
                         registers no more pages"
                    );
                }
            }
        }
        false
    }

    /// Unregisters the pages that left the cache; each slot is free again afterwards. A slot
    /// the kernel would not let go of stays out of use (its page stays mapped, held by the
    /// registration, until the queue is dropped).
    pub(super) fn unregister_released(&mut self, cache: &mut GrantCache) {
        let Some(released) = cache.take_released() else {
            return;
        };
        for slot in released {
            match self.queue.unregister_fixed(slot) {
                Ok(()) => cache.slot_freed(slot),
                Err(e) => tracing::warn!(error = %e, slot, "cannot unregister a fixed buffer"),
            }
        }
    }
}
