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

/// What the frontend published for one of its rings (queues).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct FrontendRing {
    /// The queue this ring is (0 with a single ring).
    pub queue: u32,
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

/// Reads every ring the frontend published: `multi-queue-num-queues` (absent means 1), then
/// the flat `ring-ref`/`ring-refN` and `event-channel` of a single ring, or those under
/// `queue-0/` .. `queue-<N-1>/` of N rings; `ring-page-order`, `protocol` and
/// `feature-persistent` are shared by every ring (Xen's `blkif.h`, Linux's `connect_ring`).
pub(super) async fn read_frontend_rings(
    store: &Store,
    fe: &str,
    opts: &BackendOptions,
) -> Result<Vec<FrontendRing>, Error> {
    let order_key = format!("{fe}/ring-page-order");
    let order = read_number(store, &order_key).await?;
    if let Some(o) = order.filter(|o| *o > opts.max_ring_order) {
        return Err(bad(
            &order_key,
            &o.to_string(),
            format!("above max-ring-page-order {}", opts.max_ring_order),
        ));
    }
    let queues = read_num_queues(store, fe, opts.max_queues.max(1)).await?;
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
    let mut rings = Vec::new();
    for queue in 0..queues {
        let dir = match queues {
            1 => fe.to_owned(),
            _ => format!("{fe}/queue-{queue}"),
        };
        let (refs, port) = read_ring_keys(store, &dir, order).await?;
        rings.push(FrontendRing {
            queue,
            refs,
            order: order.unwrap_or(0),
            port,
            abi,
            persistent,
        });
    }
    check_distinct(fe, &rings)?;
    Ok(rings)
}

/// `multi-queue-num-queues`: 1 when absent, else 1 ..= what the backend offered.
async fn read_num_queues(store: &Store, fe: &str, max: u32) -> Result<u32, Error> {
    let key = format!("{fe}/multi-queue-num-queues");
    match read_number(store, &key).await? {
        None => Ok(1),
        Some(0) => Err(bad(&key, "0", "a device needs at least one queue")),
        Some(q) if q > max => Err(bad(
            &key,
            &q.to_string(),
            format!("above multi-queue-max-queues {max}"),
        )),
        Some(q) => Ok(q),
    }
}

/// One ring's grant references (`ring-ref`, or `ring-ref0..` with a page order) and event
/// channel, under `dir`.
async fn read_ring_keys(
    store: &Store,
    dir: &str,
    order: Option<u32>,
) -> Result<(Vec<GrantRef>, Port), Error> {
    let refs = match order {
        None => vec![GrantRef(
            read_required(store, &format!("{dir}/ring-ref")).await?,
        )],
        Some(o) => {
            let mut refs = Vec::with_capacity(1 << o);
            for i in 0..(1u32 << o) {
                refs.push(GrantRef(
                    read_required(store, &format!("{dir}/ring-ref{i}")).await?,
                ));
            }
            refs
        }
    };
    let port = Port(read_required(store, &format!("{dir}/event-channel")).await?);
    Ok((refs, port))
}

/// Refuses rings that share a grant reference or an event channel: two workers would serve
/// the same page or the same port.
fn check_distinct(fe: &str, rings: &[FrontendRing]) -> Result<(), Error> {
    let mut refs = std::collections::HashSet::new();
    let mut ports = std::collections::HashSet::new();
    for r in rings {
        let dir = match rings.len() {
            1 => fe.to_owned(),
            _ => format!("{fe}/queue-{}", r.queue),
        };
        if let Some((i, g)) = r.refs.iter().enumerate().find(|(_, g)| !refs.insert(g.0)) {
            let key = match r.refs.len() {
                1 => format!("{dir}/ring-ref"),
                _ => format!("{dir}/ring-ref{i}"),
            };
            let why = "grant reference used by more than one ring page";
            return Err(bad(&key, &g.0.to_string(), why));
        }
        if !ports.insert(r.port.0) {
            let why = "event channel used by more than one queue";
            return Err(bad(
                &format!("{dir}/event-channel"),
                &r.port.0.to_string(),
                why,
            ));
        }
    }
    Ok(())
}

/// Maps the ring, binds the event channel and opens an image queue for it; the ring records
/// what it consumes in `journal`. A ring taken over from a killed worker (`reattach`) gets one
/// notification at once: that worker may have died between publishing responses and
/// notifying, and a frontend that asked for an event before then would otherwise wait for it
/// forever (the published index alone never crosses its `rsp_event` again).
pub(super) fn attach_ring(
    platform: &dyn Platform,
    domid: DomId,
    fr: &FrontendRing,
    image: &dyn BlockImage,
    journal: FileMemory,
    reattach: bool,
) -> Result<RingResources, Error> {
    let guest = platform.attach(domid)?;
    let pages = guest.map_grants(&fr.refs, Access::ReadWrite)?.into_ring()?;
    // Start where the published responses end: 0 on a freshly initialised ring, and after a
    // backend restart the requests that were never answered are served again, those the killed
    // backend had consumed from the journal (their ring slots may hold unpublished responses).
    let start = pages.load_u32(SRING_RSP_PROD)?;
    let ring = BackRing::attach_journaled(pages, fr.abi, fr.order, start, Box::new(journal))?;
    let evtchn = guest.bind_event_channel(fr.port)?;
    if reattach {
        // A spurious event costs the frontend one look at the ring; a lost one hangs it.
        evtchn.notify()?;
    }
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
