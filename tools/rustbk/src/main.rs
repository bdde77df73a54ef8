//! The `rustbk` command.

#![forbid(unsafe_code)]

use clap::Parser;
use rustbk::config;

/// Exit code of every failure, argument errors included, as qemu-img uses it.
const FAILURE: u8 = 1;

fn main() -> std::process::ExitCode {
    let cli = match rustbk::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return argument_error(&e),
    };
    let cli = match with_daemon_config(cli) {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("rustbk: {e:#}");
            return std::process::ExitCode::from(FAILURE);
        }
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

/// For `rustbk daemon`: the command line again, with the configuration file's settings before
/// the flags given on it.
fn with_daemon_config(cli: rustbk::cli::Cli) -> anyhow::Result<rustbk::cli::Cli> {
    let rustbk::cli::Command::Daemon(args) = &cli.command else {
        return Ok(cli);
    };
    let Some(path) = config::daemon_config_path(args.config.as_deref(), args.no_config) else {
        return Ok(cli);
    };
    let file = config::Config::load(&path)?;
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    rustbk::cli::Cli::try_parse_from(config::daemon_argv(&argv, &file))
        .map_err(|e| anyhow::anyhow!("in the configuration {}: {e}", path.display()))
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
