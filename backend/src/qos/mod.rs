//! Quality of service: I/O limits per disk, in the manner of QEMU's throttling.
//!
//! * [`QosLimits`]: the six limits QEMU knows (`iops-total`, `iops-read`, `iops-write`,
//!   `bps-total`, `bps-read`, `bps-write`), each with a burst (`-max`, `-max-length`), and
//!   `iops-size`, by QEMU's names and with QEMU's checks.
//! * [`Throttle`]: the leaky buckets of one disk (see `bucket.rs` for the algorithm), shared
//!   by the disk's rings: a multi-queue disk has one limit, not one per queue.
//! * [`DiskQos`]: the limits of one disk as its rings see them, changed while it is served
//!   ([`DiskQos::set_limits`]: the `qos/` keys' watch, `rustbk ctl qos`).
//!
//! A disk without limits has no throttle at all: its rings never touch shared state for a
//! request. A ring of a limited disk asks the throttle before it starts each read, write or
//! discard; when over the limit it keeps that one request, stops taking requests off the ring
//! (they wait there, as in a busy disk) and sleeps until the throttle says the request may go.

mod bucket;
mod limits;
mod throttle;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

pub use limits::{BucketKind, BucketLimit, QosLimits, VALUE_MAX, key_names};
pub use throttle::{Cost, Throttle};

/// The limits of one disk, read by its ring workers and changed by the control plane.
///
/// Workers look at [`DiskQos::generation`] once per loop round (one load of a value written
/// only when the limits change) and take the new throttle when it moved.
#[derive(Debug)]
pub struct DiskQos {
    generation: Generation,
    current: Mutex<Current>,
}

/// The generation counter alone in its cache lines: every ring of the disk reads it each loop
/// round, so no other data that anything writes may share its line.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Generation(AtomicU64);

#[derive(Debug)]
struct Current {
    limits: QosLimits,
    throttle: Option<Arc<Throttle>>,
}

impl DiskQos {
    /// The QoS of a disk with `limits` (checked).
    pub fn new(limits: QosLimits) -> Result<Arc<DiskQos>, String> {
        limits.validate()?;
        Ok(Arc::new(DiskQos {
            generation: Generation::default(),
            current: Mutex::new(Current {
                throttle: new_throttle(&limits),
                limits,
            }),
        }))
    }

    /// Replaces the limits while the disk is served; every ring applies them before its next
    /// request. The buckets start empty, as QEMU's do after `block_set_io_throttle`. The
    /// reason if the limits are not valid (then nothing changes).
    ///
    /// This is what a control command (`rustbk ctl qos`) calls; the backend calls it when the
    /// disk's `qos/` keys change in xenstore, and at each connect, so limits set here last
    /// until the keys next change or the frontend reconnects. A ring holding back a request
    /// sleeps at most a second, so a new limit reaches it within a second at worst.
    pub fn set_limits(&self, limits: QosLimits) -> Result<(), String> {
        limits.validate()?;
        let mut cur = self.lock();
        cur.throttle = new_throttle(&limits);
        cur.limits = limits;
        // Under the lock: a worker that sees the new generation reads the new throttle.
        self.generation.0.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// The limits in force.
    pub fn limits(&self) -> QosLimits {
        self.lock().limits
    }

    /// A number that changes whenever the limits do.
    pub fn generation(&self) -> u64 {
        self.generation.0.load(Ordering::Acquire)
    }

    /// The throttle in force (`None`: unlimited) and the generation it belongs to.
    pub fn throttle(&self) -> (u64, Option<Arc<Throttle>>) {
        let cur = self.lock();
        (self.generation(), cur.throttle.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn new_throttle(limits: &QosLimits) -> Option<Arc<Throttle>> {
    (!limits.is_unlimited()).then(|| Arc::new(Throttle::new(limits, Instant::now())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unlimited_disk_has_no_throttle_and_a_change_moves_the_generation() {
        let qos = DiskQos::new(QosLimits::default()).unwrap();
        let (g0, t) = qos.throttle();
        assert!(t.is_none());
        let limited = QosLimits::parse_list("iops-total=100").unwrap();
        qos.set_limits(limited).unwrap();
        let (g1, t) = qos.throttle();
        assert_ne!(g0, g1);
        assert!(t.is_some());
        assert_eq!(qos.limits(), limited);
        qos.set_limits(QosLimits::default()).unwrap();
        assert!(qos.throttle().1.is_none());
    }

    #[test]
    fn invalid_limits_change_nothing() {
        let limited = QosLimits::parse_list("iops-total=100").unwrap();
        let qos = DiskQos::new(limited).unwrap();
        let g = qos.generation();
        let mut bad = limited;
        bad.set("iops-read", "5").unwrap();
        let err = qos.set_limits(bad).unwrap_err();
        assert!(err.contains("cannot be combined"), "{err}");
        assert_eq!((qos.generation(), qos.limits()), (g, limited));
        assert!(DiskQos::new(bad).is_err());
    }
}
