//! Pacing: at most a given number of requests per second, without bursts after a stall.

use std::time::{Duration, Instant};

/// When the next request may go out.
#[derive(Debug)]
pub(super) struct Pacer {
    interval: Option<Duration>,
    next: Instant,
}

impl Pacer {
    /// A pacer for `rate` requests per second (no limit if `None` or 0).
    pub fn new(rate: Option<u32>, now: Instant) -> Pacer {
        let interval = rate.filter(|r| *r > 0).map(|r| Duration::from_secs(1) / r);
        Pacer {
            interval,
            next: now,
        }
    }

    /// Takes a turn if one is due at `now`.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let Some(interval) = self.interval else {
            return true;
        };
        if now < self.next {
            return false;
        }
        // A backlog older than a second is dropped: a paced workload never bursts to catch up.
        let oldest = now.checked_sub(Duration::from_secs(1)).unwrap_or(now);
        self.next = self.next.max(oldest);
        self.next += interval;
        true
    }

    /// Whether turns are limited at all.
    pub fn is_limited(&self) -> bool {
        self.interval.is_some()
    }

    /// How long until the next turn (zero without a limit or if one is due).
    pub fn wait(&self, now: Instant) -> Duration {
        match self.interval {
            Some(_) => self.next.saturating_duration_since(now),
            None => Duration::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paced_turns_follow_the_rate_and_do_not_burst_after_a_stall() {
        let t0 = Instant::now();
        let mut p = Pacer::new(Some(10), t0);
        assert!(p.try_take(t0));
        assert!(!p.try_take(t0 + Duration::from_millis(50)));
        assert_eq!(
            p.wait(t0 + Duration::from_millis(50)),
            Duration::from_millis(50)
        );
        assert!(p.try_take(t0 + Duration::from_millis(100)));
        // Ten seconds idle: at most a second's worth (10 turns) is due at once.
        let later = t0 + Duration::from_secs(10);
        let burst = (0..100).take_while(|_| p.try_take(later)).count();
        assert!((10..=11).contains(&burst), "{burst} turns at once");
    }

    #[test]
    fn unlimited_pacer_always_gives_a_turn() {
        let t0 = Instant::now();
        let mut p = Pacer::new(None, t0);
        assert!((0..1000).all(|_| p.try_take(t0)));
        assert_eq!(p.wait(t0), Duration::ZERO);
        assert!(!p.is_limited() && Pacer::new(Some(5), t0).is_limited());
    }
}
