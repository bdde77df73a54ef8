use rustbk_ring::{DomId, GrantRef, Port};

/// Errors of the platform layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The grant reference is outside the guest's grant table.
    #[error("Grant reference {0:?} is outside the grant table")]
    GrantOutOfRange(GrantRef),
    /// The grant entry is not in use (the guest did not grant it).
    #[error("Grant reference {0:?} is not valid")]
    GrantInvalid(GrantRef),
    /// The grant was made out to another domain.
    #[error("Grant reference {gref:?} is granted to domain {granted_to:?}, not to us")]
    GrantWrongDomain {
        /// The reference.
        gref: GrantRef,
        /// Who the guest granted it to.
        granted_to: DomId,
    },
    /// A read-only grant was asked for write access.
    #[error("Grant reference {0:?} is read-only")]
    GrantReadOnly(GrantRef),
    /// The grant cannot be revoked while the grantee has it mapped.
    #[error("Grant reference {0:?} is still mapped by the grantee")]
    GrantInUse(GrantRef),
    /// The granted frame is outside the guest's memory.
    #[error("Grant reference {gref:?} names frame {frame} outside guest memory")]
    FrameOutOfRange {
        /// The reference.
        gref: GrantRef,
        /// The frame it names.
        frame: u32,
    },
    /// A map of no pages, or of more pages than allowed.
    #[error("Cannot map {0} pages at once")]
    BadMapSize(usize),
    /// A byte range outside a mapping.
    #[error("Range {offset}+{len} is outside a mapping of {size} bytes")]
    OutOfBounds {
        /// Start of the range.
        offset: usize,
        /// Length of the range.
        len: usize,
        /// Size of the mapping.
        size: usize,
    },
    /// The event channel port is unknown to the guest.
    #[error("Event channel port {0:?} is not bound")]
    UnknownPort(Port),
    /// The guest's emulated hypervisor endpoint answered something malformed.
    #[error("Malformed message from the emulated platform: {0}")]
    Protocol(String),
    /// A Xen device node is missing (not dom0, or the driver is not loaded).
    #[error("{path} is missing: is this dom0 (or a driver domain) with {driver} loaded?")]
    DeviceMissing {
        /// The device node.
        path: String,
        /// The kernel driver that provides it.
        driver: &'static str,
    },
    /// Xen refused one segment of a grant copy.
    #[error("Grant copy segment {index} failed with Xen status {status}")]
    GrantCopy {
        /// Index of the segment in the batch.
        index: usize,
        /// The `GNTST_*` code (negative).
        status: i16,
    },
    /// A system call failed.
    #[error("{what} failed")]
    Sys {
        /// What was attempted.
        what: &'static str,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// Socket or file I/O failed.
    #[error("{what} failed")]
    Io {
        /// What was attempted.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn sys(what: &'static str) -> impl FnOnce(nix::Error) -> Error {
        move |source| Error::Sys { what, source }
    }

    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}
