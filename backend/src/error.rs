/// Errors of the backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A xenstore operation failed.
    #[error("Xenstore {op} {path} failed")]
    Xenstore {
        /// The operation.
        op: &'static str,
        /// The node.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A xenstore node holds a value we cannot use.
    #[error("Xenstore node {path} has a bad value {value:?}: {why}")]
    BadNode {
        /// The node.
        path: String,
        /// What it holds.
        value: String,
        /// What is wrong with it.
        why: String,
    },
    /// The image could not be opened or used.
    #[error("Image error")]
    Image(#[from] rustbk_formats::Error),
    /// The thin pool or volume could not be opened or used.
    #[error("Thin pool error")]
    Thin(#[from] rustbk_thin::Error),
    /// Mapping the ring or binding the event channel failed.
    #[error("Platform error")]
    Platform(#[from] rustbk_grant::Error),
    /// The ring could not be set up.
    #[error("Ring error")]
    Ring(#[from] rustbk_ring::Error),
    /// The folder of the request journals cannot be made.
    #[error("Cannot make the request journal folder {path}")]
    Journal {
        /// The folder.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The device a command was meant for is no longer served.
    #[error("The device is no longer served")]
    DeviceGone,
    /// Starting the worker thread failed.
    #[error("Cannot start the ring worker")]
    Spawn(#[source] std::io::Error),
}

impl Error {
    /// The errno that best describes this error, for the toolstack's `error` node.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Xenstore { source, .. }
            | Error::Spawn(source)
            | Error::Journal { source, .. } => source.raw_os_error().unwrap_or(nix::libc::EIO),
            Error::BadNode { .. } => nix::libc::EINVAL,
            Error::DeviceGone => nix::libc::ENODEV,
            Error::Image(e) => e.errno(),
            Error::Thin(e) => e.errno(),
            Error::Platform(_) | Error::Ring(_) => nix::libc::EIO,
        }
    }
}
