//! One module per command.

pub(crate) mod bench;
mod daemon;
mod demo;
mod guest;
mod image;
mod man;
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
        Command::Demo(args) => supervised(demo::run(args)),
        Command::Bench(args) => supervised(bench::run(args)),
        Command::Soak(args) => soak::run(args),
        Command::Img(args) => crate::img::run(args),
        Command::Thin(args) => crate::thin::run(args),
        Command::Ctl(args) => crate::ctl::run(args),
        Command::Smapi(args) => crate::smapi::run(args),
        Command::Man { out } => man::run(&out),
    }
}

/// The result of `demo` or `bench`, unless a signal is being handled: then the signal thread
/// reports and exits, and this thread waits for it.
fn supervised(result: anyhow::Result<ExitCode>) -> anyhow::Result<ExitCode> {
    crate::supervise::park_if_stopping();
    result
}
