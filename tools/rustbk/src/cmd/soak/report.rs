//! What the soak prints: the plan at the start, the summary at the end (text or JSON).

use std::io::Write;
use std::path::Path;

use serde::Serialize;

use super::guest::Tally;
use super::sample::Sample;
use super::schedule::Schedule;
use super::verdict::{Bounds, Check};
use super::{Config, MAX_HOT};
use crate::img::OutputArg;

/// Faults as they were injected.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Counts {
    /// Workers killed.
    pub kills: u64,
    /// Planned kills that found no worker (it was being restarted).
    pub kills_skipped: u64,
    /// Planned hot attaches skipped (that guest's previous one still running, or
    /// `MAX_HOT` attached already).
    pub hotplugs_skipped: u64,
    /// Kills that failed.
    pub notes: Vec<String>,
}

/// The end result.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// The seed: the same seed replays the same workloads and schedule.
    pub seed: u64,
    /// Guests.
    pub guests: u16,
    /// Seconds run.
    pub duration_s: f64,
    /// Faults injected.
    pub faults: Counts,
    /// What the guests did, failures included.
    pub io: Tally,
    /// The windows and allowances of the resource checks.
    pub bounds: Bounds,
    /// One line per series.
    pub checks: Vec<Check>,
    /// Every sample.
    pub samples: Vec<Sample>,
    /// No error, no mismatch, no failure, every check within its bound.
    pub pass: bool,
}

impl Summary {
    /// The summary of a finished run.
    pub fn new(
        cfg: &Config,
        faults: Counts,
        io: Tally,
        bounds: Bounds,
        checks: Vec<Check>,
        samples: Vec<Sample>,
    ) -> Summary {
        let pass = io.errors == 0
            && io.mismatches == 0
            && io.failures.is_empty()
            && faults.notes.is_empty()
            && checks.iter().all(|c| c.ok);
        Summary {
            seed: cfg.seed,
            guests: cfg.rates.guests,
            duration_s: cfg.rates.duration.as_secs_f64(),
            faults,
            io,
            bounds,
            checks,
            samples,
            pass,
        }
    }

    /// Prints the summary on stdout.
    pub fn print(&self, output: OutputArg) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        if output == OutputArg::Json {
            serde_json::to_writer_pretty(&mut out, self)?;
            writeln!(out)?;
            return Ok(());
        }
        self.print_text(&mut out)?;
        Ok(())
    }

    fn print_text(&self, out: &mut impl Write) -> std::io::Result<()> {
        let io = &self.io;
        writeln!(
            out,
            "rustbk soak: seed {}, {} guests, {:.0} s",
            self.seed, self.guests, self.duration_s
        )?;
        writeln!(
            out,
            "  io          {} reads, {} writes, {} flushes",
            io.reads, io.writes, io.flushes
        )?;
        writeln!(
            out,
            "  verify      {} errors, {} mismatches",
            io.errors, io.mismatches
        )?;
        let f = &self.faults;
        writeln!(
            out,
            "  faults      {} workers killed ({} found restarting), {} reboots, {} hot attach/detach cycles ({} skipped)",
            f.kills, f.kills_skipped, io.reboots, io.hotplugs, f.hotplugs_skipped
        )?;
        for note in io.failures.iter().chain(&f.notes) {
            writeln!(out, "  FAILURE     {note}")?;
        }
        let b = &self.bounds;
        writeln!(
            out,
            "  resources   {} samples; reference window {:.0}-{:.0} s, checked after",
            self.samples.len(),
            b.warmup_s,
            b.reference_end_s
        )?;
        writeln!(
            out,
            "    {:<32} {:>10} {:>10} {:>10}",
            "series", "reference", "max after", "limit"
        )?;
        for c in &self.checks {
            let flag = if c.ok { "ok" } else { "GREW" };
            writeln!(
                out,
                "    {:<32} {:>10} {:>10} {:>10}  {flag}",
                c.series, c.reference, c.max_after, c.limit
            )?;
        }
        writeln!(
            out,
            "  result      {}",
            if self.pass { "PASS" } else { "FAIL" }
        )
    }
}

/// Prints what is about to run (on stderr, so stdout stays the summary).
pub fn print_plan(cfg: &Config, s: &Schedule, dir: &Path) {
    let r = &cfg.rates;
    eprintln!(
        "rustbk soak: seed {}, {} guests for {:.0} s (work folder {})",
        cfg.seed,
        r.guests,
        r.duration.as_secs_f64(),
        dir.display()
    );
    eprintln!(
        "  each guest: {} MiB disk, 4 KiB random 50 % reads, qd {}, {} IOPS, a flush every {} writes, verify",
        cfg.size >> 20,
        cfg.load.qd,
        cfg.load.rate,
        cfg.load.flush_every
    );
    eprintln!(
        "  planned: {} worker kills, {} reboots, {} hot attaches (at most {MAX_HOT} at once); a sample every {:.1} s",
        s.kill_count(),
        s.reboot_count(),
        s.hotplug_count(),
        cfg.sample_every.as_secs_f64()
    );
}

/// Lines of the daemon's log shown for each guest that failed.
const LOG_LINES_SHOWN: usize = 40;

/// Prints, to stderr, the last lines the daemon and its workers logged about each guest named
/// in `failures` ("guest N: ..."), so a failure in CI comes with what the backend saw.
pub fn print_guest_logs(log: &str, failures: &[String]) {
    let mut domids: Vec<u16> = failures.iter().filter_map(|f| failed_domid(f)).collect();
    domids.sort_unstable();
    domids.dedup();
    for domid in domids {
        let tag = format!("domid={domid} ");
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(&tag)).collect();
        let shown = &lines[lines.len().saturating_sub(LOG_LINES_SHOWN)..];
        eprintln!(
            "rustbk soak: the last {} log lines of domid {domid}:",
            shown.len()
        );
        for line in shown {
            eprintln!("  {line}");
        }
    }
}

/// The domid of a failure line that starts with "guest N".
fn failed_domid(failure: &str) -> Option<u16> {
    let rest = failure.strip_prefix("guest ")?;
    let end = rest.find(|c: char| !c.is_ascii_digit())?;
    rest[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::failed_domid;

    #[test]
    fn failure_lines_name_their_guest() {
        assert_eq!(
            failed_domid("guest 31: workload (after 0 reboots): x"),
            Some(31)
        );
        assert_eq!(failed_domid("guest 7 hot attach: add xvdb"), Some(7));
        assert_eq!(failed_domid("kill of guest 3: gone"), None);
    }
}
