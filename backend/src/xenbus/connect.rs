//! Connecting to a frontend: reading its ring details, mapping the ring, binding the port.

use std::sync::Arc;

use rustbk_formats::BlockImage;
use rustbk_grant::{Access, FileMemory, GrantRef, Platform, Port};
use rustbk_ring::abi::SRING_RSP_PROD;
use rustbk_ring::{Abi, BackRing, DiskLimits, DomId, SharedMemoryExt};

use super::Store;
use super::device::BackendOptions;
use crate::Error;
use crate::worker::RingResources;

/// What the frontend published for its ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct FrontendRing {
    pub refs: Vec<GrantRef>,
    pub order: u32,
    pub port: Port,
    pub abi: Abi,
    pub persistent: bool,
}

fn bad(path: &str, value: &str, why: impl Into<String>) -> Error {
    Error::BadNode {
        path: path.into(),
        value: value.into(),
        why: why.into(),
    }
}

async fn read_number(store: &Store, path: &str) -> Result<Option<u32>, Error> {
    match store.read(path).await? {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| bad(path, &v, "not a number")),
    }
}

async fn read_required(store: &Store, path: &str) -> Result<u32, Error> {
    read_number(store, path)
        .await?
        .ok_or_else(|| bad(path, "", "missing"))
}

/// Reads `ring-ref`/`ring-refN`, `ring-page-order`, `event-channel` and `protocol`.
pub(super) async fn read_frontend_ring(
    store: &Store,
    fe: &str,
    opts: &BackendOptions,
) -> Result<FrontendRing, Error> {
    let order_key = format!("{fe}/ring-page-order");
    let order = read_number(store, &order_key).await?;
    if let Some(o) = order.filter(|o| *o > opts.max_ring_order) {
        return Err(bad(
            &order_key,
            &o.to_string(),
            format!("above max-ring-page-order {}", opts.max_ring_order),
        ));
    }
    let queues_key = format!("{fe}/multi-queue-num-queues");
    if let Some(q) = read_number(store, &queues_key).await?.filter(|q| *q != 1) {
        return Err(bad(
            &queues_key,
            &q.to_string(),
            "multi-queue was not offered",
        ));
    }
    let refs = match order {
        None => vec![GrantRef(
            read_required(store, &format!("{fe}/ring-ref")).await?,
        )],
        Some(o) => {
            let mut refs = Vec::with_capacity(1 << o);
            for i in 0..(1u32 << o) {
                refs.push(GrantRef(
                    read_required(store, &format!("{fe}/ring-ref{i}")).await?,
                ));
            }
            refs
        }
    };
    let port = Port(read_required(store, &format!("{fe}/event-channel")).await?);
    let protocol_key = format!("{fe}/protocol");
    let protocol = store.read(&protocol_key).await?;
    let abi = Abi::from_protocol(protocol.as_deref()).map_err(|e| {
        bad(
            &protocol_key,
            protocol.as_deref().unwrap_or(""),
            e.to_string(),
        )
    })?;
    let persistent = read_number(store, &format!("{fe}/feature-persistent"))
        .await?
        .unwrap_or(0)
        == 1;
    Ok(FrontendRing {
        refs,
        order: order.unwrap_or(0),
        port,
        abi,
        persistent,
    })
}

/// Maps the ring, binds the event channel and opens an image queue for it; the ring records
/// what it consumes in `journal`.
pub(super) fn attach_ring(
    platform: &dyn Platform,
    domid: DomId,
    fr: &FrontendRing,
    image: &dyn BlockImage,
    journal: FileMemory,
) -> Result<RingResources, Error> {
    let guest = platform.attach(domid)?;
    let pages = guest.map_grants(&fr.refs, Access::ReadWrite)?.into_ring()?;
    // Start where the published responses end: 0 on a freshly initialised ring, and after a
    // backend restart the requests that were never answered are served again, those the killed
    // backend had consumed from the journal (their ring slots may hold unpublished responses).
    let start = pages.load_u32(SRING_RSP_PROD)?;
    let ring = BackRing::attach_journaled(pages, fr.abi, fr.order, start, Box::new(journal))?;
    let evtchn = guest.bind_event_channel(fr.port)?;
    let queue = image.open_queue(ring.size())?;
    Ok(RingResources {
        ring,
        evtchn,
        guest: Arc::clone(&guest),
        queue,
    })
}

/// The limits requests are checked against.
pub(super) fn disk_limits(
    image: &dyn BlockImage,
    read_only: bool,
    discard: bool,
    opts: &BackendOptions,
) -> DiskLimits {
    let g = image.geometry();
    DiskLimits {
        sectors: g.size / 512,
        sector_size: g.logical_sector_size,
        read_only: read_only || image.features().read_only,
        discard,
        max_indirect_segments: opts.max_indirect_segments,
    }
}
