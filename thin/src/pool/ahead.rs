//! Writes that must be durable before the next superblock, done while the commit prepares:
//! a volume record written ahead of the device it describes runs on its own thread, and the
//! commit that publishes the device waits for it just before it writes the superblock.

use std::thread::JoinHandle;

use crate::error::{Error, Result};

/// A write running on its own thread that the next commit point waits for.
pub(crate) struct Ahead {
    what: &'static str,
    handle: JoinHandle<Result<()>>,
}

impl Ahead {
    /// Starts `write` on a thread of its own; `what` names it in errors.
    pub(crate) fn spawn(
        what: &'static str,
        write: impl FnOnce() -> Result<()> + Send + 'static,
    ) -> Result<Ahead> {
        let handle = std::thread::Builder::new()
            .name("thin-ahead".into())
            .spawn(write)
            .map_err(|e| Error::Io(rustbk_formats::Error::Io(e)))?;
        Ok(Ahead { what, handle })
    }

    /// Waits for the write and returns its result.
    pub(crate) fn wait(self) -> Result<()> {
        match self.handle.join() {
            Ok(result) => result,
            Err(_) => Err(Error::PoolFailed(format!("{} panicked", self.what))),
        }
    }
}

/// Waits for every write in `ahead`; the first error, if any, after all of them ended.
pub(crate) fn wait_all(ahead: Vec<Ahead>) -> Result<()> {
    let mut first = Ok(());
    for a in ahead {
        let result = a.wait();
        if first.is_ok() {
            first = result;
        }
    }
    first
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use super::*;

    #[test]
    fn every_write_ends_before_wait_all_returns_and_the_first_error_comes_back() {
        let ended = Arc::new(AtomicU32::new(0));
        let slow = |ended: Arc<AtomicU32>, fail: bool| {
            move || {
                std::thread::sleep(Duration::from_millis(30));
                ended.fetch_add(1, Ordering::SeqCst);
                if fail {
                    Err(Error::InvalidArgument("record".into()))
                } else {
                    Ok(())
                }
            }
        };
        let ahead = vec![
            Ahead::spawn("first", slow(ended.clone(), true)).unwrap(),
            Ahead::spawn("second", slow(ended.clone(), false)).unwrap(),
        ];
        let result = wait_all(ahead);
        assert!(
            matches!(result, Err(Error::InvalidArgument(_))),
            "{result:?}"
        );
        assert_eq!(ended.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_panicking_write_is_an_error() {
        let ahead = Ahead::spawn("record", || panic!("on purpose")).unwrap();
        assert!(matches!(ahead.wait(), Err(Error::PoolFailed(_))));
    }
}
