/// Errors of the emulated frontend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Xenstore failed.
    #[error("Xenstore error")]
    Xenstore(#[from] rustbk_xenstored::Error),
    /// The emulated platform failed.
    #[error("Platform error")]
    Platform(#[from] rustbk_grant::Error),
    /// The ring failed.
    #[error("Ring error")]
    Ring(#[from] rustbk_ring::Error),
    /// Waiting for the backend took too long.
    #[error("Timed out waiting for {0}")]
    Timeout(String),
    /// The backend did something the protocol does not allow.
    #[error("Backend protocol violation: {0}")]
    Protocol(String),
    /// Guest RAM is exhausted.
    #[error("Out of guest RAM pages")]
    OutOfFrames,
    /// A bad workload or configuration.
    #[error("Invalid configuration: {0}")]
    Config(String),
}
