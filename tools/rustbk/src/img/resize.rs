//! `rustbk img resize`: grow an image to SIZE, or by `+SIZE`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use rustbk_formats::engine::lock::{LockMode, lock};

use super::FormatArg;
use super::info::ImageInfo;
use crate::cli::parse_size;

/// `rustbk img resize [-f FMT] FILE [+]SIZE`.
#[derive(Debug, Args)]
pub struct ResizeArgs {
    /// Format of FILE (probed when not given).
    #[arg(short = 'f', value_enum)]
    pub format: Option<FormatArg>,
    /// The image.
    pub file: PathBuf,
    /// New size, or `+SIZE` to grow by SIZE (k, M, G, T suffixes). Shrinking is refused.
    #[arg(allow_hyphen_values = true)]
    pub size: String,
}

/// Grows the image.
pub fn run(args: ResizeArgs) -> anyhow::Result<ExitCode> {
    let info = ImageInfo::read(&args.file, args.format, false)?;
    let old = info.virtual_size;
    let new = match args.size.strip_prefix('+') {
        Some(delta) => old
            .checked_add(parse_size(delta).map_err(anyhow::Error::msg)?)
            .context("size overflows")?,
        None if args.size.starts_with('-') => bail!("Shrinking images is not supported"),
        None => parse_size(&args.size).map_err(anyhow::Error::msg)?,
    };
    if new < old {
        bail!("Shrinking images is not supported ({old} to {new} bytes)");
    }
    if info.header.is_some() {
        rustbk_formats::qcow2::resize(&args.file, new)
            .with_context(|| format!("Cannot resize '{}'", args.file.display()))?;
    } else {
        let opened = || format!("Could not open '{}'", args.file.display());
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&args.file)
            .with_context(opened)?;
        let held = lock(file, &args.file, LockMode::Writer).with_context(opened)?;
        let file = held.file();
        file.set_len(new)?;
        file.sync_all()?;
    }
    println!("Image resized.");
    Ok(ExitCode::SUCCESS)
}
