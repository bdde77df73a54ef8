//! One module per command.

mod bench;
mod daemon;
mod demo;
mod guest;
mod platform;
mod serve;
mod soak;
mod workload;

use std::process::ExitCode;

use crate::cli::{Command, EmuCommand};

pub use workload::{describe, workload_from_args};

/// Runs a parsed command.
pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(args) => serve::run(args),
        Command::Daemon(args) => daemon::run(args),
        Command::Emu(EmuCommand::Xenstored { socket }) => {
            rustbk_xenstored::Server::bind(&socket)?.run()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Emu(EmuCommand::Guest(args)) => guest::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Soak(args) => soak::run(args),
        Command::Img(args) => crate::img::run(args),
    }
}
