//! The engines' notifier: an eventfd readable while completions wait, rung and cleared only
//! once somebody asked for it.
//!
//! A ring worker serving a raw image sleeps in `io_uring_enter` and never looks at the
//! eventfd. Reading it on every reap and writing it for every op finished without I/O would
//! cost it two system calls per request at queue depth 1 for nothing (an eventfd write and
//! read cost about 0.9 µs together on the 2-core development VM). So, as the null image does,
//! the eventfd is left alone until [`Notifier::arm`] hands it out: from then on it follows the
//! [`crate::image::ImageQueue`] contract, readable while completions wait, until `reap`.
//!
//! The io_uring rings keep the eventfd registered from the start, so the kernel signals it for
//! every completion either way; a count nobody reads only grows. Arming clears it once.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::eventfd::{EfdFlags, EventFd};

/// One eventfd, shared by the engines of one format queue (VMDK extents).
#[derive(Debug)]
pub(crate) struct Notifier {
    fd: EventFd,
    /// Somebody may be polling `fd`. Engines sharing a notifier live on one thread; the
    /// atomic only makes the flag shareable through the `Arc`.
    armed: AtomicBool,
}

impl Notifier {
    /// A new, unarmed notifier.
    pub(crate) fn new() -> std::io::Result<Notifier> {
        let fd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        Ok(Notifier {
            fd,
            armed: AtomicBool::new(false),
        })
    }

    /// The eventfd, to register with a ring (this does not arm it).
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Arms the notifier and hands out its eventfd. The first time, the count the kernel
    /// left while nobody watched is cleared, and then `pending` (asked after the clear, so a
    /// completion in between is not missed) makes the eventfd readable if completions may
    /// already wait.
    pub(crate) fn arm(&self, pending: impl FnOnce() -> bool) -> BorrowedFd<'_> {
        if !self.armed.swap(true, Ordering::Relaxed) {
            let _ = self.fd.read();
            if pending() {
                self.ring();
            }
        }
        self.fd.as_fd()
    }

    /// Whether somebody may be polling the eventfd.
    pub(crate) fn is_armed(&self) -> bool {
        self.armed.load(Ordering::Relaxed)
    }

    /// Makes the eventfd readable, if armed.
    pub(crate) fn ring(&self) {
        if !self.is_armed() {
            return;
        }
        if let Err(e) = self.fd.write(1) {
            tracing::error!(error = %e, "cannot signal the completion eventfd");
        }
    }

    /// Clears the eventfd, if armed, so a completion arriving after this makes it readable
    /// again.
    pub(crate) fn clear(&self) {
        if self.is_armed() {
            let _ = self.fd.read();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

    fn readable(n: &Notifier) -> bool {
        let mut fds = [PollFd::new(n.fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::ZERO).expect("poll") == 1
    }

    #[test]
    fn an_unarmed_notifier_is_never_written_or_read() {
        let n = Notifier::new().expect("eventfd");
        n.ring();
        assert!(!readable(&n), "rung before it was armed");
        n.fd.write(1).expect("write");
        n.clear();
        assert!(readable(&n), "cleared before it was armed");
    }

    #[test]
    fn armed_it_is_readable_from_ring_to_clear() {
        let n = Notifier::new().expect("eventfd");
        n.fd.write(1).expect("write");
        n.arm(|| false);
        assert!(!readable(&n), "the count from before arming is left");
        n.ring();
        n.ring();
        assert!(readable(&n));
        n.clear();
        assert!(!readable(&n));
    }

    #[test]
    fn arming_with_completions_waiting_makes_it_readable_once() {
        let n = Notifier::new().expect("eventfd");
        n.arm(|| true);
        assert!(readable(&n));
        n.clear();
        n.arm(|| true);
        assert!(!readable(&n), "a second arm rang it again");
    }
}
