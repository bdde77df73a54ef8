//! The size of an image that may grow while it is served.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::Error;

/// An image's size in bytes, shared by the image and every queue it opened, so that once an
/// image has grown ([`BlockImage::grow`](crate::BlockImage::grow)) its queues take ops up to
/// the new end at once. It only ever grows.
#[derive(Clone, Debug)]
pub(crate) struct SharedSize(Arc<AtomicU64>);

impl SharedSize {
    /// A size of `bytes`.
    pub fn new(bytes: u64) -> SharedSize {
        SharedSize(Arc::new(AtomicU64::new(bytes)))
    }

    /// The size now.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// Raises the size to `bytes` (called once the storage holds that many bytes).
    pub fn set(&self, bytes: u64) {
        self.0.fetch_max(bytes, Ordering::AcqRel);
    }
}

/// Checks that an image of `old` bytes in `sector`-byte sectors may grow to `new` bytes: a
/// whole number of sectors, not smaller (a served disk never shrinks: the guest may have data
/// past the new end), and within an `i64` as a file's size must be.
pub(crate) fn check_growth(old: u64, new: u64, sector: u32) -> Result<(), Error> {
    if new < old {
        return Err(Error::Shrink { from: old, to: new });
    }
    let sector = u64::from(sector.max(1));
    if new % sector != 0 || i64::try_from(new).is_err() {
        return Err(Error::InvalidArgument(format!(
            "cannot grow to {new} bytes: not a whole number of {sector}-byte sectors (at most {} \
             bytes)",
            i64::MAX
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_must_not_shrink_and_must_be_whole_sectors() {
        assert!(check_growth(4096, 8192, 4096).is_ok());
        assert!(check_growth(4096, 4096, 512).is_ok());
        assert!(matches!(
            check_growth(8192, 4096, 512),
            Err(Error::Shrink {
                from: 8192,
                to: 4096
            })
        ));
        assert!(check_growth(4096, 4096 + 512, 4096).is_err());
        assert!(check_growth(4096, u64::MAX - 511, 512).is_err());
    }

    #[test]
    fn a_shared_size_is_seen_by_every_clone_and_never_drops() {
        let a = SharedSize::new(10);
        let b = a.clone();
        a.set(20);
        assert_eq!(b.get(), 20);
        b.set(15);
        assert_eq!(a.get(), 20);
    }
}
