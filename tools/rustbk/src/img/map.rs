//! `rustbk img map`: the allocation map of an image and its backing chain.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use rustbk_formats::qcow2::map::{MapEntry, map_chain};

use super::{FormatArg, OutputArg};

/// `rustbk img map [-f FMT] [--output=human|json] [-U] FILE`.
#[derive(Debug, Args)]
pub struct MapArgs {
    /// Format of FILE (probed when not given).
    #[arg(short = 'f', value_enum)]
    pub format: Option<FormatArg>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputArg::Human)]
    pub output: OutputArg,
    /// Open the image even if another process writes it (what is read may be inconsistent),
    /// as qemu-img's `-U`.
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
    /// The image.
    pub file: PathBuf,
}

/// Prints the map.
pub fn run(args: MapArgs) -> anyhow::Result<ExitCode> {
    let format = super::format_of(&args.file, args.format.map(Into::into))?;
    let entries = match format {
        rustbk_formats::Format::Vpc => {
            rustbk_formats::vhd::map::map_file(&args.file, args.force_share)?
        }
        rustbk_formats::Format::Vmdk => {
            rustbk_formats::vmdk::map::map_file(&args.file, args.force_share)?
        }
        _ => map_chain(&args.file, format, args.force_share)?,
    };
    match args.output {
        OutputArg::Json => print!("{}", json(&entries)),
        OutputArg::Human => print!("{}", human(&entries)),
    }
    Ok(ExitCode::SUCCESS)
}

/// qemu-img's JSON layout: one object per line inside one array, with the fields of qemu-img 8.2
/// and later (`compressed` included).
fn json(entries: &[MapEntry]) -> String {
    let lines: Vec<String> = entries
        .iter()
        .map(|e| {
            let offset = e.offset.map_or(String::new(), |o| format!(", \"offset\": {o}"));
            format!(
                "{{ \"start\": {}, \"length\": {}, \"depth\": {}, \"present\": {}, \"zero\": {}, \"data\": {}, \"compressed\": {}{offset}}}",
                e.start, e.length, e.depth, e.present, e.zero, e.data, e.compressed
            )
        })
        .collect();
    format!("[{}]\n", lines.join(",\n"))
}

fn hex(v: u64) -> String {
    if v == 0 {
        "0".to_owned()
    } else {
        format!("{v:#x}")
    }
}

/// qemu-img's table of the ranges stored as plain data.
fn human(entries: &[MapEntry]) -> String {
    let mut s = format!(
        "{:<16}{:<16}{:<16}{}\n",
        "Offset", "Length", "Mapped to", "File"
    );
    for e in entries {
        let Some(offset) = e.offset.filter(|_| e.data) else {
            continue;
        };
        s += &format!(
            "{:<16}{:<16}{:<16}{}\n",
            hex(e.start),
            hex(e.length),
            hex(offset),
            e.file.display()
        );
    }
    s
}
