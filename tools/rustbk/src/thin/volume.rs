//! `rustbk thin create | snapshot | delete | resize`: the volumes of a pool.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, ValueEnum};
use rustbk_thin::dir::{PoolDir, PoolHandle, free_id, resolve_volume};
use rustbk_thin::pool::{Origin, PoolOptions, VolumeSpec};

use crate::cli::parse_image_size;

/// Formats an external origin may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OriginFormat {
    /// Raw disk bytes.
    Raw,
    /// QEMU copy-on-write version 2.
    Qcow2,
}

/// `rustbk thin create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The pool directory.
    pub pool: PathBuf,
    /// Volume size, e.g. 20G.
    #[arg(long, value_parser = parse_image_size)]
    pub size: u64,
    /// A name for the volume (`thin:POOL:NAME` then finds it).
    #[arg(long, default_value = "")]
    pub name: String,
    /// The thin device id (default: the lowest free one).
    #[arg(long)]
    pub id: Option<u64>,
    /// A read-only image the volume's unwritten blocks read from.
    #[arg(long, requires = "origin_format")]
    pub origin: Option<PathBuf>,
    /// The format of `--origin` (never probed).
    #[arg(long, value_enum, requires = "origin")]
    pub origin_format: Option<OriginFormat>,
}

/// `rustbk thin snapshot`.
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// The pool directory.
    pub pool: PathBuf,
    /// The volume to snapshot: an id or a name.
    pub origin: String,
    /// A name for the snapshot.
    #[arg(long, default_value = "")]
    pub name: String,
    /// The snapshot's thin device id (default: the lowest free one).
    #[arg(long)]
    pub id: Option<u64>,
}

/// `rustbk thin delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The pool directory.
    pub pool: PathBuf,
    /// The volume: an id or a name.
    pub volume: String,
}

/// `rustbk thin resize`.
#[derive(Debug, Args)]
pub struct ResizeArgs {
    /// The pool directory.
    pub pool: PathBuf,
    /// The volume: an id or a name.
    pub volume: String,
    /// The new size, e.g. 40G (shrinking unmaps the blocks past the new end).
    #[arg(value_parser = parse_image_size)]
    pub size: u64,
}

/// The pool: through its service when one serves it (the only way while it does), else
/// opened here.
fn open(pool: &PathBuf) -> anyhow::Result<PoolHandle> {
    PoolDir::new(pool)
        .handle(PoolOptions::default())
        .with_context(|| format!("Cannot open the pool {}", pool.display()))
}

/// Runs `rustbk thin create`; prints the new volume's id.
pub fn create(args: CreateArgs) -> anyhow::Result<ExitCode> {
    let mut pool = open(&args.pool)?;
    let id = args.id.unwrap_or(free_id(&pool.volumes()?));
    let origin = match (args.origin, args.origin_format) {
        (Some(path), Some(format)) => Some(Origin {
            path: std::path::absolute(&path)?,
            format: format!("{format:?}").to_lowercase(),
        }),
        _ => None,
    };
    let spec = VolumeSpec {
        size: args.size,
        name: args.name,
        origin,
    };
    pool.create_volume(id, spec)
        .with_context(|| format!("Cannot create volume {id}"))?;
    println!("{id}");
    Ok(ExitCode::SUCCESS)
}

/// Runs `rustbk thin snapshot`; prints the snapshot's id.
pub fn snapshot(args: SnapshotArgs) -> anyhow::Result<ExitCode> {
    let mut pool = open(&args.pool)?;
    let volumes = pool.volumes()?;
    let origin = resolve_volume(&volumes, &args.origin)?;
    let id = args.id.unwrap_or(free_id(&volumes));
    pool.snapshot(origin, id, &args.name)
        .with_context(|| format!("Cannot snapshot volume {origin}"))?;
    println!("{id}");
    Ok(ExitCode::SUCCESS)
}

/// Runs `rustbk thin delete`.
pub fn delete(args: DeleteArgs) -> anyhow::Result<ExitCode> {
    let mut pool = open(&args.pool)?;
    let id = resolve_volume(&pool.volumes()?, &args.volume)?;
    pool.delete_volume(id)
        .with_context(|| format!("Cannot delete volume {id}"))?;
    Ok(ExitCode::SUCCESS)
}

/// Runs `rustbk thin resize`.
pub fn resize(args: ResizeArgs) -> anyhow::Result<ExitCode> {
    let mut pool = open(&args.pool)?;
    let id = resolve_volume(&pool.volumes()?, &args.volume)?;
    pool.resize_volume(id, args.size)
        .with_context(|| format!("Cannot resize volume {id}"))?;
    Ok(ExitCode::SUCCESS)
}
