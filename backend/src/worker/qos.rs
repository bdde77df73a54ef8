//! The ring's side of its disk's limits (see [`crate::qos`]).
//!
//! Once per loop round the worker checks whether the disk's limits changed (one relaxed load
//! of a counter written only when they do); an unlimited disk has no throttle and nothing more
//! happens. A limited disk's ring asks the shared throttle before it starts each read, write
//! or discard. A request the limits hold back stays with the ring as its one held request; the
//! ring then takes nothing more off the shared ring and sleeps until the throttle's time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustbk_ring::{Request, RwOp, SECTOR_SIZE, Segment};

use crate::qos::{Cost, DiskQos, Throttle};

/// A request taken off the ring that the limits hold back, with its segments (copied out of
/// its indirect pages once).
#[derive(Debug)]
pub(super) struct Deferred {
    pub req: Request,
    pub segments: Vec<Segment>,
    /// When it left the ring: its latency counts the time it was held.
    pub since: Instant,
}

/// The limits as one ring sees them.
#[derive(Debug)]
pub(super) struct QosGate {
    disk: Arc<DiskQos>,
    seen: u64,
    throttle: Option<Arc<Throttle>>,
    /// When the held request may ask again.
    wake: Option<Instant>,
}

impl QosGate {
    pub fn new(disk: Arc<DiskQos>) -> QosGate {
        let (seen, throttle) = disk.throttle();
        QosGate {
            disk,
            seen,
            throttle,
            wake: None,
        }
    }

    /// Takes new limits if they changed since the last look.
    pub fn refresh(&mut self) {
        if self.disk.generation() == self.seen {
            return;
        }
        (self.seen, self.throttle) = self.disk.throttle();
        self.wake = None;
        tracing::debug!(limits = %self.disk.limits(), "ring took new QoS limits");
    }

    /// Whether `req` (with its `segments`) may start now. Requests the limits do not count
    /// (flushes, barriers without data) always may.
    pub fn admit(&mut self, req: &Request, segments: &[Segment]) -> bool {
        let Some(throttle) = &self.throttle else {
            return true;
        };
        let Some(cost) = cost_of(req, segments) else {
            return true;
        };
        let now = Instant::now();
        match throttle.admit(cost, now) {
            Ok(()) => {
                self.wake = None;
                true
            }
            Err(wait) => {
                self.wake = Some(now + wait);
                false
            }
        }
    }

    /// How long until the held request may ask again, rounded up to whole milliseconds (what
    /// a poll timeout can express) so the ring never wakes early and spins.
    pub fn sleep_limit(&self) -> Option<Duration> {
        let left = self.wake?.saturating_duration_since(Instant::now());
        Some(Duration::from_millis(
            u64::try_from(left.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX),
        ))
    }
}

/// What a request costs against the limits: reads and writes their bytes, a barrier or flush
/// with data as a write of it, a discard one write of no bytes (it moves no data). Flushes and
/// barriers without data are not limited.
pub(super) fn cost_of(req: &Request, segments: &[Segment]) -> Option<Cost> {
    let bytes = segments.iter().map(segment_bytes).sum();
    match req {
        Request::Discard { .. } => Some(Cost {
            write: true,
            bytes: 0,
        }),
        Request::Rw { op, .. } | Request::Indirect { op, .. } => match op {
            RwOp::Read => Some(Cost {
                write: false,
                bytes,
            }),
            RwOp::Write => Some(Cost { write: true, bytes }),
            RwOp::WriteBarrier | RwOp::Flush if segments.is_empty() => None,
            RwOp::WriteBarrier | RwOp::Flush => Some(Cost { write: true, bytes }),
        },
    }
}

/// Bytes of a validated segment (at most a page).
fn segment_bytes(s: &Segment) -> u64 {
    (u64::from(s.last_sect.saturating_sub(s.first_sect)) + 1) * SECTOR_SIZE
}

#[cfg(test)]
mod tests {
    use rustbk_ring::{GrantRef, Sector, Segments};

    use super::*;
    use crate::qos::QosLimits;

    fn rw(op: RwOp, segs: &[Segment]) -> Request {
        Request::Rw {
            id: 1,
            op,
            handle: 0,
            sector: Sector(0),
            segments: Segments::from_slice(segs).unwrap(),
        }
    }

    fn seg(first: u8, last: u8) -> Segment {
        Segment {
            gref: GrantRef(1),
            first_sect: first,
            last_sect: last,
        }
    }

    #[test]
    fn requests_cost_their_bytes_in_their_direction() {
        let segs = [seg(0, 7), seg(2, 3)];
        let cost = |op| cost_of(&rw(op, &segs), &segs);
        assert_eq!(
            cost(RwOp::Read),
            Some(Cost {
                write: false,
                bytes: 5120
            })
        );
        assert_eq!(
            cost(RwOp::Write),
            Some(Cost {
                write: true,
                bytes: 5120
            })
        );
        assert_eq!(
            cost(RwOp::Flush),
            Some(Cost {
                write: true,
                bytes: 5120
            })
        );
        assert_eq!(cost_of(&rw(RwOp::Flush, &[]), &[]), None);
        assert_eq!(cost_of(&rw(RwOp::WriteBarrier, &[]), &[]), None);
        let discard = Request::Discard {
            id: 2,
            secure: false,
            sector: Sector(0),
            nr_sectors: 1 << 30,
        };
        assert_eq!(
            cost_of(&discard, &[]),
            Some(Cost {
                write: true,
                bytes: 0
            })
        );
    }

    #[test]
    fn a_gate_follows_limit_changes_and_sleeps_in_whole_milliseconds() {
        let disk = DiskQos::new(QosLimits::default()).unwrap();
        let mut gate = QosGate::new(Arc::clone(&disk));
        let segs = [seg(0, 7)];
        let read = rw(RwOp::Read, &segs);
        assert!((0..1000).all(|_| gate.admit(&read, &segs)), "unlimited");
        assert_eq!(gate.sleep_limit(), None);
        disk.set_limits(QosLimits::parse_list("iops-read=10").unwrap())
            .unwrap();
        assert!(gate.admit(&read, &segs), "not seen before a refresh");
        gate.refresh();
        // Up to a tenth of a second's worth (one) may be in the bucket: two go at once.
        assert!(gate.admit(&read, &segs) && gate.admit(&read, &segs));
        assert!(!gate.admit(&read, &segs));
        let wait = gate.sleep_limit().expect("a wake-up time");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(200),
            "{wait:?}"
        );
        assert_eq!(wait.subsec_nanos() % 1_000_000, 0, "{wait:?}");
        let flush = rw(RwOp::Flush, &[]);
        assert!(gate.admit(&flush, &[]), "flushes are not limited");
        disk.set_limits(QosLimits::default()).unwrap();
        gate.refresh();
        assert!(gate.admit(&read, &segs));
        assert_eq!(gate.sleep_limit(), None);
    }
}
