//! One worker per guest: an exclusive `flock` on `<dir>/guest-<domid>.lock` held by the process
//! serving the guest. The daemon checks it before starting a worker, so a restarted daemon never
//! starts a second worker for a guest that is still served.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use rustbk_ring::DomId;

/// The held lock of one guest; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct GuestLock {
    _lock: Flock<File>,
    path: PathBuf,
}

fn lock_path(dir: &Path, domid: DomId) -> PathBuf {
    dir.join(format!("guest-{}.lock", domid.0))
}

fn try_lock(dir: &Path, domid: DomId) -> std::io::Result<Option<(Flock<File>, PathBuf)>> {
    std::fs::create_dir_all(dir)?;
    let path = lock_path(dir, domid);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some((lock, path))),
        Err((_, Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(e.into()),
    }
}

impl GuestLock {
    /// Takes the guest's lock; `Ok(None)` if another process holds it.
    /// The lock file then holds the holder's pid.
    pub fn acquire(dir: &Path, domid: DomId) -> std::io::Result<Option<GuestLock>> {
        let Some((mut lock, path)) = try_lock(dir, domid)? else {
            return Ok(None);
        };
        lock.set_len(0)?;
        writeln!(*lock, "{}", std::process::id())?;
        Ok(Some(GuestLock { _lock: lock, path }))
    }

    /// The pid written by the process holding the guest's lock, if it is held.
    pub fn holder(dir: &Path, domid: DomId) -> std::io::Result<Option<u32>> {
        if !Self::is_held(dir, domid)? {
            return Ok(None);
        }
        let text = std::fs::read_to_string(lock_path(dir, domid))?;
        Ok(text.trim().parse().ok())
    }

    /// Whether some process holds the guest's lock right now.
    pub fn is_held(dir: &Path, domid: DomId) -> std::io::Result<bool> {
        Ok(try_lock(dir, domid)?.is_none())
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_acquire_fails_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = GuestLock::acquire(dir.path(), DomId(3))
            .unwrap()
            .expect("free");
        assert!(GuestLock::is_held(dir.path(), DomId(3)).unwrap());
        assert_eq!(
            GuestLock::holder(dir.path(), DomId(3)).unwrap(),
            Some(std::process::id())
        );
        assert!(GuestLock::acquire(dir.path(), DomId(3)).unwrap().is_none());
        assert!(!GuestLock::is_held(dir.path(), DomId(4)).unwrap());
        drop(first);
        assert!(!GuestLock::is_held(dir.path(), DomId(3)).unwrap());
    }
}
