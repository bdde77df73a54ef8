//! `rustbk thin dump`: the metadata as thin_dump's XML.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use rustbk_formats::engine::Access;
use rustbk_thin::meta::Metadata;
use rustbk_thin::{interchange, xml};

/// `rustbk thin dump`.
#[derive(Debug, Args)]
pub struct DumpArgs {
    /// The pool's metadata file or device.
    pub metadata: PathBuf,
    /// Write the XML here instead of standard output.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

/// Runs `rustbk thin dump`.
pub fn run(args: DumpArgs) -> anyhow::Result<ExitCode> {
    let file = super::open_metadata(&args.metadata, Access::ForceShare)?;
    let mut md = Metadata::open(file, |_| u64::MAX).with_context(|| {
        format!(
            "Cannot read the pool metadata in {}",
            args.metadata.display()
        )
    })?;
    let dump = interchange::dump(&mut md)?;
    match &args.output {
        Some(path) => {
            let mut out = std::io::BufWriter::new(
                std::fs::File::create(path)
                    .with_context(|| format!("Cannot create {}", path.display()))?,
            );
            xml::write(&dump, &mut out)?;
            out.flush()?;
        }
        None => xml::write(&dump, std::io::stdout().lock())?,
    }
    Ok(ExitCode::SUCCESS)
}
