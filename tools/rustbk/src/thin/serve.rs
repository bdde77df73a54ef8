//! `rustbk thin serve`: the pool service, one process per pool. Workers serving the pool's
//! volumes connect to its socket (`POOL/service.sock`), and so do the `rustbk thin` commands
//! while it runs.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, ValueEnum};
use rustbk_thin::dir::PoolDir;
use rustbk_thin::pool::{OnFull, PoolOptions};

/// What a write that needs a block does when the pool is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnFullArg {
    /// Fail it (ENOSPC to the guest).
    Error,
    /// Hold it until space is added, for at most `--full-timeout` seconds.
    Queue,
}

/// `rustbk thin serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The pool directory.
    pub pool: PathBuf,
    /// Full pool: fail writes that need a block, or queue them.
    #[arg(long, value_enum, default_value_t = OnFullArg::Error)]
    pub on_full: OnFullArg,
    /// Seconds a queued write waits for space.
    #[arg(long, default_value_t = 60)]
    pub full_timeout: u64,
    /// Free data blocks below which a warning is logged and `--low-water-hook` runs.
    #[arg(long, default_value_t = 0)]
    pub low_water_blocks: u64,
    /// A command run once when the free data blocks fall below `--low-water-blocks`.
    #[arg(long)]
    pub low_water_hook: Option<PathBuf>,
    /// Punch the blocks a discard frees out of the data device (after the commit).
    #[arg(long)]
    pub passdown: bool,
    /// Stop once no worker or command was connected for this many seconds (a service a
    /// backend worker started by itself stops so; default: run until SIGTERM).
    #[arg(long, value_name = "SECS")]
    pub idle_exit: Option<u64>,
}

/// Runs the pool service until SIGTERM or SIGINT.
pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let dir = PoolDir::new(&args.pool);
    let opts = PoolOptions {
        on_full: match args.on_full {
            OnFullArg::Error => OnFull::Fail,
            OnFullArg::Queue => OnFull::Queue,
        },
        full_timeout: std::time::Duration::from_secs(args.full_timeout),
        low_water_blocks: args.low_water_blocks,
        low_water_hook: args.low_water_hook,
        passdown: args.passdown,
        ..PoolOptions::default()
    };
    let idle = args.idle_exit.map(std::time::Duration::from_secs);
    rustbk_thin::service::run(&dir.metadata(), &dir.data(), &dir.socket(), opts, idle)
        .with_context(|| format!("Pool service of {} failed", args.pool.display()))?;
    Ok(ExitCode::SUCCESS)
}
