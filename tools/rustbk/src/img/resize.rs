//! `rustbk img resize`: grow an image to SIZE, or by `+SIZE`.

use std::path::{Path, PathBuf};
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
    grow(&args.file, info.header.is_some(), new)?;
    println!("Image resized.");
    Ok(ExitCode::SUCCESS)
}

/// Grows the qcow2 (`is_qcow2`) or raw image at `path` to `new` bytes, taking the image's
/// writer lock; the new space reads as zeros (qcow2: unallocated).
pub(super) fn grow(path: &Path, is_qcow2: bool, new: u64) -> anyhow::Result<()> {
    if is_qcow2 {
        return rustbk_formats::qcow2::resize(path, new)
            .with_context(|| format!("Cannot resize '{}'", path.display()));
    }
    let opened = || format!("Could not open '{}'", path.display());
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(opened)?;
    let held = lock(file, path, LockMode::Writer).with_context(opened)?;
    let file = held.file();
    file.set_len(new)?;
    file.sync_all()?;
    Ok(())
}
