//! `rustbk thin create-pool` and `grow`: pools as directories of a metadata and a data device.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, ensure};
use clap::{Args, ValueEnum};
use rustbk_thin::dir::{Devices, PoolDir, Preallocation};
use rustbk_thin::pool::PoolOptions;

use crate::cli::parse_size;
use crate::img::progress::Progress;

/// Metadata bytes per data block a new metadata file gets (dm-thin needs about 48, and
/// snapshots unshare tree nodes), plus a fixed part, within what the format can use.
const META_PER_BLOCK: u64 = 128;
const META_BASE: u64 = 4 << 20;
const META_MAX: u64 = 255 * 16320 * 4096;

/// `rustbk thin create-pool`.
#[derive(Debug, Args)]
pub struct CreatePoolArgs {
    /// The pool directory to make (missing or empty).
    pub pool: PathBuf,
    /// Size of a new data file (sparse), e.g. 100G.
    #[arg(long, value_parser = parse_size, required_unless_present = "data_dev")]
    pub size: Option<u64>,
    /// Data block size: a multiple of 64 KiB from 64 KiB to 1 GiB.
    #[arg(long, default_value = "64k", value_parser = parse_size)]
    pub block_size: u64,
    /// Size of a new metadata file (default: from the data size).
    #[arg(long, value_parser = parse_size, conflicts_with = "metadata_dev")]
    pub metadata_size: Option<u64>,
    /// An existing device or file for the metadata, linked from the pool directory.
    #[arg(long, requires = "data_dev")]
    pub metadata_dev: Option<PathBuf>,
    /// An existing device or file for the data, linked from the pool directory.
    #[arg(long, requires = "metadata_dev", conflicts_with = "size")]
    pub data_dev: Option<PathBuf>,
    /// How the new data file takes its space: `off` (sparse; the pool reserves space a
    /// window ahead of the blocks it hands out) or `full` (written with zeros now, as a
    /// logical volume would be; first writes into new blocks are then plain overwrites).
    #[arg(long, value_enum, default_value_t = PreallocArg::Off, conflicts_with = "data_dev")]
    pub preallocation: PreallocArg,
    /// Show progress on stderr while zeros are written (the default on a terminal).
    #[arg(short = 'p', long)]
    pub progress: bool,
}

/// `--preallocation` values, qemu-img's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PreallocArg {
    /// A sparse data file.
    Off,
    /// Every byte of the data file written with zeros.
    Full,
}

impl From<PreallocArg> for Preallocation {
    fn from(p: PreallocArg) -> Preallocation {
        match p {
            PreallocArg::Off => Preallocation::Off,
            PreallocArg::Full => Preallocation::Full,
        }
    }
}

/// Runs `rustbk thin create-pool`.
pub fn create(args: CreatePoolArgs) -> anyhow::Result<ExitCode> {
    let devices = match (&args.metadata_dev, &args.data_dev, args.size) {
        (Some(metadata), Some(data), _) => Devices::Existing {
            metadata: metadata.clone(),
            data: data.clone(),
        },
        (_, _, Some(data)) => {
            let blocks = data / args.block_size.max(1);
            let default = META_BASE.saturating_add(blocks.saturating_mul(META_PER_BLOCK));
            let metadata = args.metadata_size.unwrap_or(default.min(META_MAX));
            Devices::Files { metadata, data }
        }
        _ => anyhow::bail!("give --size, or --metadata-dev and --data-dev"),
    };
    let dir = PoolDir::new(&args.pool);
    let mut progress = Progress::new(args.progress, true);
    let pool = dir
        .create_with(
            &devices,
            args.block_size,
            PoolOptions::default(),
            args.preallocation.into(),
            &mut |done, all| progress.update(done, all),
        )
        .with_context(|| format!("Cannot create the pool {}", args.pool.display()))?;
    progress.finish();
    let usage = pool.usage()?;
    println!(
        "Created pool {}: {} data blocks of {} bytes, {} metadata blocks",
        args.pool.display(),
        usage.data_blocks,
        usage.block_size,
        usage.metadata_blocks
    );
    Ok(ExitCode::SUCCESS)
}

/// `rustbk thin grow`.
#[derive(Debug, Args)]
pub struct GrowArgs {
    /// The pool directory.
    pub pool: PathBuf,
    /// Grow the data file to this size first (a data device is grown by its own tools).
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Grow the metadata file to this size first.
    #[arg(long, value_parser = parse_size)]
    pub metadata_size: Option<u64>,
    /// Show progress on stderr while zeros are written into the grown part of a pool made
    /// with `--preallocation full` (the default on a terminal).
    #[arg(short = 'p', long)]
    pub progress: bool,
}

/// Runs `rustbk thin grow`: the pool takes in all of its (grown) devices, through its service
/// (online) when one serves it.
pub fn grow(args: GrowArgs) -> anyhow::Result<ExitCode> {
    let dir = PoolDir::new(&args.pool);
    if let Some(size) = args.metadata_size {
        grow_file(&dir.metadata(), size)?;
    }
    if let Some(size) = args.size {
        let mut progress = Progress::new(args.progress, true);
        dir.grow_data_file(size, &mut |done, all| progress.update(done, all))
            .with_context(|| format!("Cannot grow {}", dir.data().display()))?;
        progress.finish();
    }
    let mut pool = dir
        .handle(PoolOptions::default())
        .with_context(|| format!("Cannot open the pool {}", args.pool.display()))?;
    let (data, metadata) = pool.grow()?;
    println!(
        "Pool {}: {data} data blocks, {metadata} metadata blocks",
        args.pool.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn grow_file(path: &std::path::Path, size: u64) -> anyhow::Result<()> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("Cannot open {}", path.display()))?;
    let meta = file.metadata()?;
    ensure!(
        meta.is_file(),
        "{} is not a file: grow the device with its own tools",
        path.display()
    );
    ensure!(
        size >= meta.len(),
        "{} is {} bytes: a pool never shrinks",
        path.display(),
        meta.len()
    );
    file.set_len(size)?;
    Ok(())
}
