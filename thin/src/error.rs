//! The crate's error type.

/// Everything that can go wrong with a thin pool.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing the metadata or data device failed.
    #[error("I/O on the pool failed")]
    Io(#[from] rustbk_formats::Error),
    /// A metadata block fails its checksum, names another location, or has the wrong type.
    #[error("Metadata block {block}: {why}")]
    BadBlock {
        /// The block's location on the metadata device.
        block: u64,
        /// What is wrong with it.
        why: String,
    },
    /// The metadata is structurally inconsistent (hostile or damaged pool).
    #[error("Invalid pool metadata: {0}")]
    Corrupt(String),
    /// The metadata uses a version or feature this implementation does not know.
    #[error("Unsupported pool metadata: {0}")]
    Unsupported(String),
    /// The metadata device has no free block left.
    #[error("Metadata space exhausted ({0} blocks)")]
    MetadataFull(u64),
    /// The data device has no free block left.
    #[error("Data space exhausted ({0} blocks)")]
    DataFull(u64),
    /// No thin device has this id.
    #[error("Thin device {0} does not exist")]
    NoSuchDevice(u64),
    /// A thin device with this id exists already.
    #[error("Thin device {0} already exists")]
    DeviceExists(u64),
    /// An argument (size, block size, id) is not acceptable.
    #[error("Invalid argument: {0}")]
    InvalidArgument(String),
    /// A metadata change failed half-way; the pool went back to its last commit and takes no
    /// more changes until it is reopened.
    #[error("The pool takes no more changes: {0}")]
    PoolFailed(String),
    /// A volume did not answer a pause request in time, or is busy otherwise.
    #[error("Busy: {0}")]
    Busy(String),
    /// The pool service failed the request, broke the protocol, did not answer in time or
    /// went away.
    #[error("Pool service: {0}")]
    Service(String),
}

impl Error {
    /// A [`Error::Corrupt`] from anything printable.
    pub(crate) fn corrupt(why: impl Into<String>) -> Error {
        Error::Corrupt(why.into())
    }

    /// An [`Error::Io`] from a file operation's error.
    pub(crate) fn io(e: std::io::Error) -> Error {
        Error::Io(rustbk_formats::Error::Io(e))
    }
}

impl Error {
    /// The errno a guest sees for this error.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Io(e) => e.errno(),
            Error::MetadataFull(_) | Error::DataFull(_) => libc::ENOSPC,
            Error::InvalidArgument(_) => libc::EINVAL,
            Error::NoSuchDevice(_) => libc::ENODEV,
            Error::DeviceExists(_) => libc::EEXIST,
            Error::Busy(_) => libc::EBUSY,
            _ => libc::EIO,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
