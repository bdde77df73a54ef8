//! Adaptive busy-polling before a ring worker sleeps, in the manner of QEMU's event-loop
//! polling (`poll-max-ns`, grown and shrunk by how long the waits turn out to be).
//!
//! A sleep and the wake-up that ends it cost the worker several microseconds of scheduler
//! work, and the request or completion that ends the wait that much latency. When the waits
//! are short (a guest at queue depth 1 sends its next request right after it reads the
//! response), spinning for them is cheaper. The window starts at zero and:
//!
//! * stays as it is while waits end inside it;
//! * doubles (from [`START`], up to the configured most) when a wait ended after the window
//!   but within the most: polling a little longer would have caught it;
//! * halves (to zero below [`START`]) when a wait outlasted the most: the ring is idle or the
//!   device slow, and spinning only burns a core;
//! * drops to zero when a spin step took longer than [`PREEMPTED`]: the worker lost its core
//!   to another thread, so cores are shared and spinning takes time from the guest.
//!
//! And no polling at all while the machine's runnable threads (this one included) outnumber
//! its CPUs, sampled from `/proc/loadavg` at most every [`RECHECK`]: a spinning worker would
//! then take the core the guest (or another worker) needs to send what it waits for, and
//! every wait would grow longer for the spinning.
//!
//! Spinning reads shared memory only: the ring's `req_prod` and the io_uring completion ring.

use std::time::{Duration, Instant};

/// The first window after a wait that polling would have caught.
pub const START: Duration = Duration::from_micros(4);

/// A spin step this long means the worker was descheduled.
pub const PREEMPTED: Duration = Duration::from_micros(20);

/// How often the runnable threads are counted.
pub const RECHECK: Duration = Duration::from_millis(10);

/// The polling window of one ring.
#[derive(Debug, Clone, Copy)]
pub struct AdaptivePoll {
    window: Duration,
    most: Duration,
    cpus: usize,
    /// Poll even while cores are shared.
    shared_ok: bool,
    /// When the runnable threads were last counted, and whether they outnumbered the CPUs.
    checked: Option<(Instant, bool)>,
}

impl AdaptivePoll {
    /// A window that never grows past `most` (zero: no polling); `shared_ok` polls even
    /// while cores are shared.
    pub fn new(most: Duration, shared_ok: bool) -> AdaptivePoll {
        AdaptivePoll {
            window: Duration::ZERO,
            most,
            shared_ok,
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            checked: None,
        }
    }

    /// How long to spin before sleeping at `now`: zero while cores are shared.
    pub fn window(&mut self, now: Instant) -> Duration {
        if self.window.is_zero() || (!self.shared_ok && self.cores_shared(now)) {
            return Duration::ZERO;
        }
        self.window
    }

    fn cores_shared(&mut self, now: Instant) -> bool {
        match self.checked {
            Some((at, shared)) if now.saturating_duration_since(at) < RECHECK => shared,
            _ => {
                let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
                let shared = runnable(&text).is_some_and(|n| n > self.cpus);
                self.checked = Some((now, shared));
                shared
            }
        }
    }

    /// Adapts the window to a wait (spin and sleep) that lasted `waited`.
    pub fn waited(&mut self, waited: Duration) {
        if waited <= self.window {
            return;
        }
        if waited > self.most {
            self.window /= 2;
            if self.window < START {
                self.window = Duration::ZERO;
            }
            return;
        }
        self.window = (self.window * 2).max(START).min(self.most);
    }

    /// The worker lost its core while spinning: stop polling until waits call for it again.
    pub fn preempted(&mut self) {
        self.window = Duration::ZERO;
    }
}

/// The runnable threads `/proc/loadavg` counts (its fourth field, `RUNNING/TOTAL`).
fn runnable(loadavg: &str) -> Option<usize> {
    let field = loadavg.split_whitespace().nth(3)?;
    field.split('/').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn the_runnable_threads_are_the_fourth_field() {
        assert_eq!(runnable("3.16 3.37 3.25 2/93 11400\n"), Some(2));
        assert_eq!(runnable("0.00 0.01 0.05 17/1024 1"), Some(17));
        assert_eq!(runnable("garbage"), None);
    }

    #[test]
    fn short_waits_grow_the_window_up_to_the_most() {
        let mut p = AdaptivePoll::new(us(50), false);
        assert_eq!(p.window, Duration::ZERO);
        let mut seen = Vec::new();
        for _ in 0..6 {
            p.waited(us(45));
            seen.push(p.window);
        }
        assert_eq!(seen, [us(4), us(8), us(16), us(32), us(50), us(50)]);
    }

    #[test]
    fn waits_inside_the_window_keep_it() {
        let mut p = AdaptivePoll::new(us(50), false);
        p.waited(us(3));
        p.waited(us(3));
        assert_eq!(p.window, us(4));
        p.waited(us(5));
        assert_eq!(p.window, us(8));
        p.waited(us(7));
        assert_eq!(p.window, us(8));
    }

    #[test]
    fn long_waits_shrink_it_to_nothing() {
        let mut p = AdaptivePoll::new(us(50), false);
        for _ in 0..5 {
            p.waited(us(40));
        }
        assert_eq!(p.window, us(50));
        let mut seen = Vec::new();
        for _ in 0..5 {
            p.waited(us(500));
            seen.push(p.window);
        }
        assert_eq!(
            seen,
            [
                us(25),
                Duration::from_nanos(12_500),
                Duration::from_nanos(6_250),
                Duration::ZERO,
                Duration::ZERO
            ]
        );
    }

    #[test]
    fn no_most_means_no_polling_and_preemption_resets() {
        let mut p = AdaptivePoll::new(Duration::ZERO, false);
        p.waited(Duration::from_nanos(1));
        assert_eq!(p.window, Duration::ZERO);
        let mut p = AdaptivePoll::new(us(50), false);
        p.waited(us(10));
        p.waited(us(10));
        assert_eq!(p.window, us(8));
        p.preempted();
        assert_eq!(p.window, Duration::ZERO);
    }
}
