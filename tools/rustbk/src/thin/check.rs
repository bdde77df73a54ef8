//! `rustbk thin check`: the pool metadata's structure, checksums and reference counts, as
//! thin_check checks them (exit 0 when clean, 1 when not).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use rustbk_thin::check::{CheckOptions, check_path};

use crate::img::OutputArg;

/// `rustbk thin check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The pool's metadata file or device.
    pub metadata: PathBuf,
    /// Leaked blocks (counted as used, referenced by nothing) do not fail the check.
    #[arg(long)]
    pub ignore_non_fatal_errors: bool,
    /// Problems reported before the check stops looking.
    #[arg(long, default_value_t = 1000)]
    pub max_problems: usize,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputArg::Human)]
    pub output: OutputArg,
}

/// Runs `rustbk thin check`.
pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let opts = CheckOptions {
        max_problems: args.max_problems,
    };
    let report = check_path(&args.metadata, &opts)
        .with_context(|| format!("Cannot check {}", args.metadata.display()))?;
    match args.output {
        OutputArg::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        OutputArg::Human => println!("{report}"),
    }
    let ok = report.is_clean() || (args.ignore_non_fatal_errors && report.only_leaks());
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
