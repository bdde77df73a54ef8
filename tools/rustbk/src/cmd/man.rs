//! `rustbk man --out DIR`: manual pages generated from the command-line definitions, one per
//! command and subcommand (`rustbk.1`, `rustbk-daemon.1`, `rustbk-thin-create.1`, ...), for
//! the package.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::CommandFactory;

/// Writes every page into `out` (made if missing); prints how many.
pub fn run(out: &Path) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot make {}", out.display()))?;
    let mut cmd = crate::cli::Cli::command();
    cmd.build();
    let written = write_pages(&cmd, "rustbk", out)?;
    println!("{written} manual pages in {}", out.display());
    Ok(ExitCode::SUCCESS)
}

/// The page of `cmd` as `name`, then its subcommands' (hidden ones left out); how many.
fn write_pages(cmd: &clap::Command, name: &str, out: &Path) -> anyhow::Result<usize> {
    let page = cmd
        .clone()
        .name(name.to_owned())
        .bin_name(name.replace('-', " "));
    let path = out.join(format!("{name}.1"));
    let mut buf = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut buf)
        .with_context(|| format!("cannot render {name}"))?;
    std::fs::write(&path, buf).with_context(|| format!("cannot write {}", path.display()))?;
    let mut n = 1;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        n += write_pages(sub, &format!("{name}-{}", sub.get_name()), out)?;
    }
    Ok(n)
}
