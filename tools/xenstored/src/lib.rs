//! rustbk xenstored: a xenstore daemon emulator and a blocking client.
#![forbid(unsafe_code)]

pub mod client;
pub mod error;
pub mod path;
pub mod server;
pub mod perms;
pub mod store;
pub mod wire;

pub use client::{WatchEvent, XsClient};
pub use error::Error;
pub use perms::{Access, Caller, Perm};
pub use store::Limits;
pub use server::{Server, ServerHandle};
pub use wire::Errno;
