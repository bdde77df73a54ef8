//! `rustbk thin restore`: pool metadata from thin_dump's XML, as thin_restore writes it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use rustbk_formats::engine::Access;
use rustbk_thin::{interchange, xml};

/// `rustbk thin restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The XML to read.
    #[arg(short, long)]
    pub input: PathBuf,
    /// The metadata file or device to write (a missing file is created, of `--size` bytes).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Size of a metadata file created by the restore, in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    pub size: u64,
}

/// Runs `rustbk thin restore`.
pub fn run(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let input = std::fs::File::open(&args.input)
        .with_context(|| format!("Cannot open {}", args.input.display()))?;
    let dump = xml::parse(std::io::BufReader::new(input))
        .with_context(|| format!("Cannot parse {}", args.input.display()))?;
    if !args.output.exists() {
        std::fs::File::create_new(&args.output)
            .and_then(|f| f.set_len(args.size))
            .with_context(|| format!("Cannot create {}", args.output.display()))?;
    }
    // The restored mappings may point anywhere: the blocks a pool there knew to read zeros
    // no longer do.
    rustbk_thin::pool::forget_zero_mark(&args.output)
        .with_context(|| format!("Cannot update the pool of {}", args.output.display()))?;
    let file = super::open_metadata(&args.output, Access::ReadWrite)?;
    interchange::restore(&dump, file)
        .with_context(|| format!("Cannot restore into {}", args.output.display()))?;
    Ok(ExitCode::SUCCESS)
}
