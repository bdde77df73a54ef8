//! The `rustbk` command.

#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = rustbk::cli::Cli::parse();
    rustbk::logging::init(cli.verbose);
    match rustbk::cmd::run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rustbk: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
