//! The fault schedule of a soak run, drawn from a seed: when each guest reboots, when a
//! worker is killed, when a second disk is hot-attached to a guest and for how long.

use std::time::Duration;

use rustbk_blkfront::rng::Rng;

/// `mean` scaled by a factor drawn uniformly from 0.5..1.5.
fn around(rng: &mut Rng, mean: Duration) -> Duration {
    let permille = 500 + rng.below(1001);
    mean.mul_f64(permille as f64 / 1000.0)
}

/// What the schedule does and how often (all means; the actual gaps vary ±50 %).
#[derive(Clone, Debug)]
pub struct Rates {
    /// Number of guests.
    pub guests: u16,
    /// Length of the run.
    pub duration: Duration,
    /// Mean time between two reboots of one guest.
    pub reboot_every: Duration,
    /// Mean time between two worker kills (over all guests).
    pub kill_every: Duration,
    /// Mean time between two hot attaches (over all guests).
    pub hotplug_every: Duration,
    /// Mean time a hot-attached disk stays.
    pub hotplug_hold: Duration,
}

/// A fault the soak injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL the worker serving guest `index` (0-based).
    Kill { guest: u16 },
    /// Hot-attach a second disk to guest `index`, use it for `hold`, detach it.
    HotAttach { guest: u16, hold: Duration },
}

/// Every planned event, times from the start of the run.
#[derive(Clone, Debug, Default)]
pub struct Schedule {
    /// Reboot times of each guest, increasing.
    pub reboots: Vec<Vec<Duration>>,
    /// Kills and hot attaches, by time.
    pub faults: Vec<(Duration, Fault)>,
}

/// Nothing is planned this close to the end: every fault gets time to settle.
pub const QUIET_END: Duration = Duration::from_secs(10);

/// A kill of the same guest within this long is moved to another guest, far from the
/// daemon's restart limit (5 a minute).
pub const KILL_SPACING: Duration = Duration::from_secs(30);

impl Schedule {
    /// The schedule of `rates` drawn from `seed`.
    pub fn draw(rates: &Rates, seed: u64) -> Schedule {
        let mut rng = Rng::new(seed);
        let end = rates.duration.saturating_sub(QUIET_END);
        let reboots = (0..rates.guests)
            .map(|_| times(&mut rng, rates.reboot_every, end))
            .collect();
        let mut faults = kills(&mut rng, rates, end);
        for t in times(&mut rng, rates.hotplug_every, end) {
            let guest = pick(&mut rng, rates.guests);
            let hold = around(&mut rng, rates.hotplug_hold);
            faults.push((t, Fault::HotAttach { guest, hold }));
        }
        faults.sort_by_key(|(t, _)| *t);
        Schedule { reboots, faults }
    }

    /// Planned kills.
    pub fn kill_count(&self) -> usize {
        let is_kill = |f: &&(Duration, Fault)| matches!(f.1, Fault::Kill { .. });
        self.faults.iter().filter(is_kill).count()
    }

    /// Planned hot attaches.
    pub fn hotplug_count(&self) -> usize {
        self.faults.len() - self.kill_count()
    }

    /// Planned reboots.
    pub fn reboot_count(&self) -> usize {
        self.reboots.iter().map(Vec::len).sum()
    }
}

/// Times spaced `mean` ±50 % apart from a random phase, before `end`.
fn times(rng: &mut Rng, mean: Duration, end: Duration) -> Vec<Duration> {
    let mut out = Vec::new();
    if mean.is_zero() {
        return out;
    }
    let mut t = around(rng, mean);
    while t < end {
        out.push(t);
        t += around(rng, mean);
    }
    out
}

fn pick(rng: &mut Rng, guests: u16) -> u16 {
    u16::try_from(rng.below(u64::from(guests))).unwrap_or(0)
}

/// Kill times, each on a guest not killed within [`KILL_SPACING`].
fn kills(rng: &mut Rng, rates: &Rates, end: Duration) -> Vec<(Duration, Fault)> {
    let mut last: Vec<Option<Duration>> = vec![None; usize::from(rates.guests)];
    let mut out = Vec::new();
    for t in times(rng, rates.kill_every, end) {
        let free =
            |g: &u16| last[usize::from(*g)].is_none_or(|l| t.saturating_sub(l) >= KILL_SPACING);
        let first = pick(rng, rates.guests);
        let guest = (0..rates.guests)
            .map(|i| (first + i) % rates.guests)
            .find(free);
        if let Some(guest) = guest {
            last[usize::from(guest)] = Some(t);
            out.push((t, Fault::Kill { guest }));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rates() -> Rates {
        Rates {
            guests: 4,
            duration: Duration::from_secs(600),
            reboot_every: Duration::from_secs(40),
            kill_every: Duration::from_secs(3),
            hotplug_every: Duration::from_secs(8),
            hotplug_hold: Duration::from_secs(5),
        }
    }

    #[test]
    fn the_same_seed_draws_the_same_schedule_and_another_seed_another() {
        let (a, b, c) = (
            Schedule::draw(&rates(), 7),
            Schedule::draw(&rates(), 7),
            Schedule::draw(&rates(), 8),
        );
        assert_eq!(a.faults, b.faults);
        assert_eq!(a.reboots, b.reboots);
        assert_ne!(a.faults, c.faults);
    }

    #[test]
    fn faults_stay_inside_the_run_and_kills_of_one_guest_are_spaced() {
        let r = rates();
        let s = Schedule::draw(&r, 42);
        let end = r.duration - QUIET_END;
        assert!(s.faults.iter().all(|(t, _)| *t < end));
        assert!(s.reboots.iter().flatten().all(|t| *t < end));
        assert_eq!(s.reboots.len(), 4);
        // 4 guests, a kill every 3 s wanted, 30 s apart per guest: at most one every 7.5 s.
        assert!(
            s.kill_count() > 40 && s.kill_count() <= 80,
            "{}",
            s.kill_count()
        );
        for g in 0..r.guests {
            let ts: Vec<Duration> = s
                .faults
                .iter()
                .filter(|(_, f)| *f == Fault::Kill { guest: g })
                .map(|(t, _)| *t)
                .collect();
            assert!(ts.windows(2).all(|w| w[1] - w[0] >= KILL_SPACING), "{ts:?}");
        }
        assert!(s.hotplug_count() > 40, "{}", s.hotplug_count());
    }
}
