use std::os::fd::{FromRawFd, OwnedFd};

use nix::sys::socket::ControlMessageOwned;

/// Takes ownership of the descriptors passed in SCM_RIGHTS control messages.
pub(crate) fn owned_fds(cmsgs: impl Iterator<Item = ControlMessageOwned>) -> Vec<OwnedFd> {
    let mut out = Vec::new();
    for c in cmsgs {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for fd in fds {
                // SAFETY: SCM_RIGHTS descriptors were just installed in this process by the
                // kernel and belong to nobody else; each is wrapped exactly once.
                out.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    out
}
