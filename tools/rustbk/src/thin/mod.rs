//! `rustbk thin`: thin pools in dm-thin's metadata format. The metadata tools (`check`, `dump`,
//! `restore`) follow thin-provisioning-tools' conventions and work on a metadata file or
//! device, like `thin_check`, `thin_dump` and `thin_restore`.

mod dump;
mod restore;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use rustbk_formats::EngineFile;
use rustbk_formats::engine::Access;

pub use dump::DumpArgs;
pub use restore::RestoreArgs;

/// `rustbk thin`.
#[derive(Debug, Args)]
pub struct ThinArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ThinCommand,
}

/// The thin subcommands.
#[derive(Debug, Subcommand)]
pub enum ThinCommand {
    /// Print a pool's metadata as thin_dump's XML.
    Dump(DumpArgs),
    /// Write pool metadata from thin_dump's XML, as thin_restore does.
    Restore(RestoreArgs),
}

/// Runs a thin subcommand.
pub fn run(args: ThinArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ThinCommand::Dump(a) => dump::run(a),
        ThinCommand::Restore(a) => restore::run(a),
    }
}

/// Opens a metadata file or device, shared with any other reader.
fn open_metadata(path: &Path, access: Access) -> anyhow::Result<Arc<EngineFile>> {
    let file = EngineFile::open(path, access, false)
        .with_context(|| format!("Cannot open metadata {}", path.display()))?;
    Ok(Arc::new(file))
}
