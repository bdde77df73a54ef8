//! A volume whose pool service went away (see `thin/DESIGN.md`, "When the service restarts").
//!
//! - New ops wait for the service to come back, for at most [`VolumeOptions::hold`]
//!   (`super::VolumeOptions`); a ticker thread wakes the volume's queues while it is away, so
//!   that they try to reconnect and then go on. Ops in flight when it went away fail.
//! - Mappings made after the service's last commit are gone with it, and so are the writes
//!   in their blocks, which the guest saw complete. They were not flushed, so losing them is
//!   allowed, but the guest must learn of it before it trusts a later flush: the first
//!   flush after the reconnect fails (EIO), as a write-back error is reported once.

use std::sync::{Mutex, Weak};

use super::{Bells, Core, RECONNECT_EVERY, lock, ring_all};
use crate::error::{Error, Result};

/// Counts of the volume's mapping changes, to tell whether a lost service took some with it.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    /// Mapping changes (maps, unmaps) sent to the pool so far.
    made: u64,
    /// Changes the guest learnt the fate of: a flush covering them completed or failed.
    settled: u64,
    /// A service that went away took changes with it: the next flush fails.
    lost: bool,
    /// A ticker thread wakes the queues while the port is failed.
    ticking: bool,
}

impl Changes {
    /// A mapping change was sent (whether or not the pool made it).
    pub(crate) fn made(&mut self) {
        self.made = self.made.saturating_add(1);
    }

    /// Whether changes were made that no flush settled yet.
    pub(crate) fn unsettled(&self) -> bool {
        self.made > self.settled
    }

    /// What a flush starting now covers: the changes made so far.
    pub(crate) fn mark(&self) -> u64 {
        self.made
    }

    /// A commit that started after `mark` ended with `result`; the flush's result. A
    /// flush after a lost service fails once. A failed flush tells the guest that the
    /// changes it covers may be lost, so they count as settled too.
    pub(crate) fn committed(&mut self, mark: u64, result: Result<()>) -> Result<()> {
        self.settled = self.settled.max(mark);
        result?;
        if std::mem::take(&mut self.lost) {
            return Err(Error::Service(
                "writes made since the last flush were lost with the pool service".into(),
            ));
        }
        Ok(())
    }

    /// A flush failed before it reached the pool: the guest knows the changes made so far
    /// may be lost.
    pub(crate) fn flush_failed(&mut self) {
        self.settled = self.made;
    }

    /// The volume goes on with a new port: whatever the old one did not commit is lost.
    pub(crate) fn new_port(&mut self, volume: u64) {
        if self.made > self.settled {
            tracing::warn!(
                volume,
                "the pool service went away with mappings made since the last flush: the next flush fails"
            );
            self.lost = true;
            self.settled = self.made;
        }
    }
}

/// Starts a thread that rings the volume's queues every half [`RECONNECT_EVERY`] while its
/// port is failed, unless one runs; it ends when the port works again or the volume is gone.
pub(crate) fn start_ticker(core: &mut Core, weak: Weak<Mutex<Core>>, bells: Bells) {
    if core.changes.ticking {
        return;
    }
    core.changes.ticking = true;
    let spawned = std::thread::Builder::new()
        .name("thin-outage".into())
        .spawn(move || tick(&weak, &bells));
    if let Err(e) = spawned {
        core.changes.ticking = false;
        tracing::error!(error = %e, "cannot start the thread that waits for the pool service");
    }
}

fn tick(weak: &Weak<Mutex<Core>>, bells: &Bells) {
    loop {
        std::thread::sleep(RECONNECT_EVERY / 2);
        let Some(core) = weak.upgrade() else { return };
        let Ok(mut core) = lock(&core) else { return };
        if !core.port.failed() {
            core.changes.ticking = false;
            return;
        }
        drop(core);
        ring_all(bells);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_change_fails_the_next_flush_once() {
        let mut c = Changes::default();
        c.made();
        let mark = c.mark();
        c.committed(mark, Ok(())).unwrap();
        c.new_port(1);
        assert!(!c.lost, "everything was committed");
        c.made();
        c.new_port(1);
        let mark = c.mark();
        assert!(c.committed(mark, Ok(())).is_err(), "the lost change");
        assert!(c.committed(mark, Ok(())).is_ok(), "reported once");
    }

    #[test]
    fn a_change_made_after_the_flush_began_is_not_covered_by_it() {
        let mut c = Changes::default();
        let mark = c.mark();
        c.made();
        c.committed(mark, Ok(())).unwrap();
        c.new_port(1);
        assert!(c.lost);
    }

    #[test]
    fn a_failed_flush_reports_the_changes_it_covers() {
        let mut c = Changes::default();
        c.made();
        let mark = c.mark();
        let e = c.committed(mark, Err(Error::Service("gone".into())));
        assert!(matches!(e, Err(Error::Service(_))));
        c.new_port(1);
        assert!(!c.lost, "the guest saw that flush fail");
        c.made();
        c.new_port(1);
        assert!(c.lost, "a change after it");
    }
}
