//! Errors of the plugins, named as the IDL's exceptions (`Control.exns`, `Common.exnt`), and
//! the object a failing plugin prints for xapi-storage-script.

use serde_json::{Value, json};

/// A failed call. The variant names are the IDL's exception names.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SmapiError {
    /// The SR is not attached (or its uri names no SR).
    #[error("Sr_not_attached: {0}")]
    SrNotAttached(String),
    /// No SR at this uri.
    #[error("SR_does_not_exist: {0}")]
    SrDoesNotExist(String),
    /// No such volume in the SR.
    #[error("Volume_does_not_exist: {0}")]
    VolumeDoesNotExist(String),
    /// Not implemented by this plugin.
    #[error("Unimplemented: {0}")]
    Unimplemented(String),
    /// Anything else: bad arguments, I/O errors, a volume in use.
    #[error("Internal_error: {0}")]
    Internal(String),
}

/// The `code` of every error, as xapi's Python helper (`xapi.handle_exception`) prints it.
pub const CODE: &str = "SR_BACKEND_FAILURE";

impl SmapiError {
    /// The IDL exception name.
    pub fn name(&self) -> &'static str {
        match self {
            SmapiError::SrNotAttached(_) => "Sr_not_attached",
            SmapiError::SrDoesNotExist(_) => "SR_does_not_exist",
            SmapiError::VolumeDoesNotExist(_) => "Volume_does_not_exist",
            SmapiError::Unimplemented(_) => "Unimplemented",
            SmapiError::Internal(_) => "Internal_error",
        }
    }

    fn argument(&self) -> &str {
        match self {
            SmapiError::SrNotAttached(a)
            | SmapiError::SrDoesNotExist(a)
            | SmapiError::VolumeDoesNotExist(a)
            | SmapiError::Unimplemented(a)
            | SmapiError::Internal(a) => a,
        }
    }

    /// What the plugin prints on stdout before exiting non-zero: xapi-storage-script's
    /// `Types.error` (`{code, params, backtrace: {error, files, lines}}`), with `params` the
    /// exception name and its argument.
    pub fn to_json(&self) -> Value {
        json!({
            "code": CODE,
            "params": [self.name(), self.argument()],
            "backtrace": {"error": self.to_string(), "files": [], "lines": []},
        })
    }
}

impl From<std::io::Error> for SmapiError {
    fn from(e: std::io::Error) -> Self {
        SmapiError::Internal(e.to_string())
    }
}

impl From<anyhow::Error> for SmapiError {
    fn from(e: anyhow::Error) -> Self {
        SmapiError::Internal(format!("{e:#}"))
    }
}

impl From<serde_json::Error> for SmapiError {
    fn from(e: serde_json::Error) -> Self {
        SmapiError::Internal(format!("bad JSON: {e}"))
    }
}

/// The result of a call.
pub type Result<T> = std::result::Result<T, SmapiError>;
