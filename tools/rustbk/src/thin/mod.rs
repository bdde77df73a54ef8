//! `rustbk thin`: thin pools in dm-thin's metadata format. The metadata tools (`check`, `dump`,
//! `restore`) follow thin-provisioning-tools' conventions and work on a metadata file or
//! device, like `thin_check`, `thin_dump` and `thin_restore`.

mod bench;
mod bench_files;
mod bench_fs;
mod bench_meta;
mod bench_snap;
mod check;
mod dump;
mod list;
mod pool;
mod restore;
mod serve;
mod volume;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use rustbk_formats::EngineFile;
use rustbk_formats::engine::Access;

pub use bench::BenchArgs;
pub use check::CheckArgs;
pub use dump::DumpArgs;
pub use list::ListArgs;
pub use pool::{CreatePoolArgs, GrowArgs};
pub use restore::RestoreArgs;
pub use serve::ServeArgs;
pub use volume::{CreateArgs, DeleteArgs, ResizeArgs, SnapshotArgs};

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
    /// Make a pool: a directory holding a metadata and a data file (or links to devices).
    CreatePool(CreatePoolArgs),
    /// Run the pool service: one process per pool, serving every worker of its volumes.
    Serve(ServeArgs),
    /// Take in a pool's grown data and metadata devices.
    Grow(GrowArgs),
    /// Create a volume (allocated on first write).
    Create(CreateArgs),
    /// Snapshot a volume (O(1), the volume may be in use).
    Snapshot(SnapshotArgs),
    /// Delete a volume; the blocks no other volume shares are freed.
    Delete(DeleteArgs),
    /// Change the size of a volume.
    Resize(ResizeArgs),
    /// Show a pool's space and its volumes.
    List(ListArgs),
    /// Check a pool's metadata: structure, checksums and reference counts (as thin_check).
    Check(CheckArgs),
    /// Print a pool's metadata as thin_dump's XML.
    Dump(DumpArgs),
    /// Measure thin volumes against a raw file, rustbk's qcow2 and qemu-img bench, and the
    /// metadata's snapshot time, size and check time.
    Bench(BenchArgs),
    /// Write pool metadata from thin_dump's XML, as thin_restore does.
    Restore(RestoreArgs),
}

/// Runs a thin subcommand.
pub fn run(args: ThinArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ThinCommand::CreatePool(a) => pool::create(a),
        ThinCommand::Serve(a) => serve::run(a),
        ThinCommand::Grow(a) => pool::grow(a),
        ThinCommand::Create(a) => volume::create(a),
        ThinCommand::Snapshot(a) => volume::snapshot(a),
        ThinCommand::Delete(a) => volume::delete(a),
        ThinCommand::Resize(a) => volume::resize(a),
        ThinCommand::List(a) => list::run(a),
        ThinCommand::Check(a) => check::run(a),
        ThinCommand::Dump(a) => dump::run(a),
        ThinCommand::Bench(a) => bench::run(a),
        ThinCommand::Restore(a) => restore::run(a),
    }
}

/// Opens a metadata file or device, shared with any other reader.
fn open_metadata(path: &Path, access: Access) -> anyhow::Result<Arc<EngineFile>> {
    let file = EngineFile::open(path, access, rustbk_formats::CacheMode::Writeback)
        .with_context(|| format!("Cannot open metadata {}", path.display()))?;
    Ok(Arc::new(file))
}
