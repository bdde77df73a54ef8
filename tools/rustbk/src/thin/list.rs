//! `rustbk thin list`: a pool's space and its volumes.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use rustbk_thin::dir::PoolDir;
use rustbk_thin::pool::PoolOptions;
use serde::Serialize;

use crate::img::OutputArg;

/// `rustbk thin list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// The pool directory.
    pub pool: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputArg::Human)]
    pub output: OutputArg,
}

#[derive(Serialize)]
struct Listing {
    block_size: u64,
    data_blocks: u64,
    data_free: u64,
    metadata_blocks: u64,
    metadata_free: u64,
    volumes: Vec<Volume>,
}

#[derive(Serialize)]
struct Volume {
    id: u64,
    name: String,
    size: u64,
    mapped_blocks: u64,
    mapped_bytes: u64,
    origin: Option<String>,
}

/// Runs `rustbk thin list`.
pub fn run(args: ListArgs) -> anyhow::Result<ExitCode> {
    let mut pool = PoolDir::new(&args.pool)
        .handle(PoolOptions::default())
        .with_context(|| format!("Cannot open the pool {}", args.pool.display()))?;
    let usage = pool.usage()?;
    let volumes = pool.volumes()?.into_iter().map(|v| Volume {
        id: v.id,
        name: v.record.name,
        size: v.record.size,
        mapped_blocks: v.mapped_blocks,
        mapped_bytes: v.mapped_blocks.saturating_mul(usage.block_size),
        origin: v
            .record
            .origin
            .map(|o| format!("{}:{}", o.format, o.path.display())),
    });
    let listing = Listing {
        block_size: usage.block_size,
        data_blocks: usage.data_blocks,
        data_free: usage.data_free,
        metadata_blocks: usage.metadata_blocks,
        metadata_free: usage.metadata_free,
        volumes: volumes.collect(),
    };
    match args.output {
        OutputArg::Json => println!("{}", serde_json::to_string_pretty(&listing)?),
        OutputArg::Human => print_human(&listing),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_human(l: &Listing) {
    let used = l.data_blocks - l.data_free;
    println!(
        "data: {used} of {} blocks of {} bytes used; metadata: {} of {} blocks used",
        l.data_blocks,
        l.block_size,
        l.metadata_blocks - l.metadata_free,
        l.metadata_blocks
    );
    println!(
        "{:>6}  {:<16} {:>16} {:>16}  ORIGIN",
        "ID", "NAME", "SIZE", "MAPPED"
    );
    for v in &l.volumes {
        let origin = v.origin.as_deref().unwrap_or("-");
        println!(
            "{:>6}  {:<16} {:>16} {:>16}  {origin}",
            v.id, v.name, v.size, v.mapped_bytes
        );
    }
}
