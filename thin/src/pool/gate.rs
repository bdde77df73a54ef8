//! Group commit: callers that ask for a commit while one runs wait for the next one, which
//! one of them runs for all.

use std::sync::{Condvar, Mutex};

use crate::error::{Error, Result};

#[derive(Default)]
struct Counts {
    /// Commits started so far.
    started: u64,
    /// Commits finished so far.
    finished: u64,
    running: bool,
    /// The error of the last finished commit, if it failed.
    last_error: Option<String>,
}

/// Serialises commits and lets one commit answer every request made before it started.
#[derive(Default)]
pub struct CommitGate {
    counts: Mutex<Counts>,
    done: Condvar,
}

impl CommitGate {
    /// Returns once a commit that started after this call finished; `run` is called to do a
    /// commit when no running commit will cover this request. The result is that commit's.
    pub fn commit(&self, run: impl FnOnce() -> Result<()>) -> Result<()> {
        let mut counts = self.lock()?;
        let target = counts.started + 1;
        let mut run = Some(run);
        while counts.finished < target {
            if counts.running {
                counts = self.done.wait(counts).map_err(|_| poisoned())?;
                continue;
            }
            let Some(run) = run.take() else {
                return Err(poisoned());
            };
            counts.running = true;
            counts.started += 1;
            let mine = counts.started;
            drop(counts);
            let result = run();
            counts = self.lock()?;
            counts.running = false;
            counts.finished = mine;
            counts.last_error = result.as_ref().err().map(ToString::to_string);
            self.done.notify_all();
            return result;
        }
        match &counts.last_error {
            None => Ok(()),
            Some(e) => Err(Error::PoolFailed(format!("the group commit failed: {e}"))),
        }
    }

    /// Commits finished so far.
    pub fn finished(&self) -> u64 {
        self.counts.lock().map(|c| c.finished).unwrap_or(0)
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Counts>> {
        self.counts.lock().map_err(|_| poisoned())
    }
}

fn poisoned() -> Error {
    Error::PoolFailed("a commit panicked".into())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use super::*;

    #[test]
    fn requests_made_during_a_commit_share_the_next_one() {
        let gate = Arc::new(CommitGate::default());
        let runs = Arc::new(AtomicU64::new(0));
        let slow = |runs: Arc<AtomicU64>| {
            move || {
                runs.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(200));
                Ok(())
            }
        };
        let first = {
            let (gate, runs) = (gate.clone(), runs.clone());
            std::thread::spawn(move || gate.commit(slow(runs)))
        };
        std::thread::sleep(Duration::from_millis(50));
        let waiters: Vec<_> = (0..6)
            .map(|_| {
                let (gate, runs) = (gate.clone(), runs.clone());
                std::thread::spawn(move || gate.commit(slow(runs)))
            })
            .collect();
        first.join().unwrap().unwrap();
        for w in waiters {
            w.join().unwrap().unwrap();
        }
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "one commit for the six waiters"
        );
        assert_eq!(gate.finished(), 2);
    }

    #[test]
    fn a_failed_commit_fails_its_waiters() {
        let gate = CommitGate::default();
        let failed = gate.commit(|| Err(Error::MetadataFull(64)));
        assert!(matches!(failed, Err(Error::MetadataFull(64))));
        gate.commit(|| Ok(())).unwrap();
    }
}
