//! The `rustbk` command.

#![forbid(unsafe_code)]

use clap::Parser;

/// Exit code of every failure, argument errors included, as qemu-img uses it.
const FAILURE: u8 = 1;

fn main() -> std::process::ExitCode {
    let cli = match rustbk::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return argument_error(&e),
    };
    rustbk::logging::init(cli.verbose);
    match rustbk::cmd::run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rustbk: {e:#}");
            std::process::ExitCode::from(FAILURE)
        }
    }
}

/// Prints clap's message; `--help` and `--version` exit 0, argument errors exit 1 (clap's own
/// code would be 2, which qemu-img never uses for them).
fn argument_error(e: &clap::Error) -> std::process::ExitCode {
    let _ = e.print();
    if e.use_stderr() {
        std::process::ExitCode::from(FAILURE)
    } else {
        std::process::ExitCode::SUCCESS
    }
}
