//! `rustbk img check`: exit 0 clean, 1 check not completed, 2 corruptions, 3 leaks only,
//! 63 for formats without checks (raw), like qemu-img. qcow2 here, VHD in `vpc_check`, VMDK
//! in `vmdk`.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use rustbk_formats::qcow2::check::{CheckReport, Repair, check_with_progress};
use rustbk_formats::qcow2::header::MAGIC;
use serde_json::json;

use super::progress::Progress;
use super::{FormatArg, OutputArg};

/// What `-r` repairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RepairArg {
    /// Leaked clusters only (VHD: a leak at the end of the file).
    Leaks,
    /// Leaks and corruptions.
    All,
}

/// `rustbk img check [-f FMT] [-r leaks|all] [--output=human|json] [-p] [-U] FILE`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Format of FILE (probed when not given).
    #[arg(short = 'f', value_enum)]
    pub format: Option<FormatArg>,
    /// Repair leaks, or everything that can be repaired safely.
    #[arg(short = 'r', value_enum)]
    pub repair: Option<RepairArg>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputArg::Human)]
    pub output: OutputArg,
    /// Show progress on stderr (also shown when stderr is a terminal).
    #[arg(short = 'p')]
    pub progress: bool,
    /// Check the image even if another process writes it (not with `-r`), as qemu-img's `-U`.
    #[arg(short = 'U', long = "force-share", conflicts_with = "repair")]
    pub force_share: bool,
    /// The image.
    pub file: PathBuf,
}

/// Checks the image.
pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let probed = match args.format {
        Some(_) => None,
        None => rustbk_formats::probe_format(&args.file).ok(),
    };
    let is = |arg, format| args.format == Some(arg) || probed == Some(format);
    if is(FormatArg::Vmdk, rustbk_formats::Format::Vmdk) {
        return super::vmdk::check(&args);
    }
    if is(FormatArg::Vpc, rustbk_formats::Format::Vpc) {
        return super::vpc_check::run(&args);
    }
    if !is_qcow2(&args)? {
        eprintln!("rustbk: This image format does not support checks");
        return Ok(ExitCode::from(63));
    }
    let repair = match args.repair {
        None => Repair::None,
        Some(RepairArg::Leaks) => Repair::Leaks,
        Some(RepairArg::All) => Repair::All,
    };
    let mut progress = Progress::new(args.progress, args.output == OutputArg::Human);
    let result = check_with_progress(&args.file, repair, args.force_share, &mut |d, t| {
        progress.update(d, t)
    });
    progress.finish();
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rustbk: Check of '{}' failed: {e}", args.file.display());
            return Ok(ExitCode::from(1));
        }
    };
    for m in &report.messages {
        eprintln!("{m}");
    }
    if report.messages_dropped > 0 {
        eprintln!("... and {} more messages", report.messages_dropped);
    }
    match args.output {
        OutputArg::Json => println!(
            "{}",
            serde_json::to_string_pretty(&to_json(&args, &report))?
        ),
        OutputArg::Human => print!("{}", human(&report)),
    }
    Ok(ExitCode::from(exit_code(&report)))
}

fn is_qcow2(args: &CheckArgs) -> anyhow::Result<bool> {
    match args.format {
        Some(f) => Ok(f == FormatArg::Qcow2),
        None => {
            let file = std::fs::File::open(&args.file)
                .map_err(|e| anyhow::anyhow!("Could not open '{}': {e}", args.file.display()))?;
            let mut head = [0u8; 4];
            let got = file.read_at(&mut head, 0)?;
            Ok(head[..got] == MAGIC)
        }
    }
}

/// qemu-img's exit status for a finished check.
pub fn exit_code(r: &CheckReport) -> u8 {
    Counts::of(r).exit_code()
}

/// What every format's check summary counts, printed and turned into an exit status the way
/// qemu-img does.
pub struct Counts {
    /// Corruptions left.
    pub corruptions: u64,
    /// Leaks left.
    pub leaks: u64,
    /// Parts that could not be checked.
    pub check_errors: u64,
    /// Corruptions repaired.
    pub corruptions_fixed: u64,
    /// Leaks repaired.
    pub leaks_fixed: u64,
    /// What a leak is ("leaked clusters", "leaked ranges").
    pub leak_unit: &'static str,
    /// Said after the number of leaks left (e.g. their bytes).
    pub leak_detail: String,
}

impl Counts {
    fn of(r: &CheckReport) -> Counts {
        Counts {
            corruptions: r.corruptions,
            leaks: r.leaks,
            check_errors: r.check_errors,
            corruptions_fixed: r.corruptions_fixed,
            leaks_fixed: r.leaks_fixed,
            leak_unit: "leaked clusters",
            leak_detail: String::new(),
        }
    }

    /// qemu-img's exit status: 1 not completed, 2 corruptions, 3 leaks only, 0 clean.
    pub fn exit_code(&self) -> u8 {
        if self.check_errors > 0 {
            1
        } else if self.corruptions > 0 {
            2
        } else if self.leaks > 0 {
            3
        } else {
            0
        }
    }

    /// qemu-img's summary lines: what was repaired, then what is left.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        if self.leaks_fixed > 0 || self.corruptions_fixed > 0 {
            s += &format!(
                "The following inconsistencies were found and repaired:\n\n    {} {}\n    {} \
                 corruptions\n\nDouble checking the fixed image now...\n",
                self.leaks_fixed, self.leak_unit, self.corruptions_fixed
            );
        }
        if self.corruptions == 0 && self.leaks == 0 && self.check_errors == 0 {
            s += "No errors were found on the image.\n";
        }
        if self.corruptions > 0 {
            s += &format!(
                "\n{} errors were found on the image.\nData may be corrupted, or further writes \
                 to the image may corrupt it.\n",
                self.corruptions
            );
        }
        if self.leaks > 0 {
            s += &format!(
                "\n{} {}{} were found on the image.\nThis means waste of disk space, but no harm \
                 to data.\n",
                self.leaks, self.leak_unit, self.leak_detail
            );
        }
        if self.check_errors > 0 {
            s += &format!(
                "\n{} internal errors have occurred during the check.\n",
                self.check_errors
            );
        }
        s
    }
}

fn to_json(args: &CheckArgs, r: &CheckReport) -> serde_json::Value {
    let mut v = json!({
        "filename": args.file.display().to_string(),
        "format": "qcow2",
        "check-errors": r.check_errors,
    });
    let optional = [
        ("corruptions", r.corruptions),
        ("leaks", r.leaks),
        ("corruptions-fixed", r.corruptions_fixed),
        ("leaks-fixed", r.leaks_fixed),
        ("image-end-offset", r.image_end_offset),
        ("total-clusters", r.total_clusters),
        ("allocated-clusters", r.allocated_clusters),
        ("fragmented-clusters", r.fragmented_clusters),
        ("compressed-clusters", r.compressed_clusters),
    ];
    for (key, value) in optional {
        if value != 0 {
            v[key] = json!(value);
        }
    }
    v
}

fn human(r: &CheckReport) -> String {
    let mut s = Counts::of(r).summary();
    if r.total_clusters > 0 && r.allocated_clusters > 0 {
        let pct = |n: u64, of: u64| n as f64 * 100.0 / of as f64;
        s += &format!(
            "{}/{} = {:.2}% allocated, {:.2}% fragmented, {:.2}% compressed clusters\n",
            r.allocated_clusters,
            r.total_clusters,
            pct(r.allocated_clusters, r.total_clusters),
            pct(r.fragmented_clusters, r.allocated_clusters),
            pct(r.compressed_clusters, r.allocated_clusters)
        );
    }
    if r.image_end_offset > 0 {
        s += &format!("Image end offset: {}\n", r.image_end_offset);
    }
    s
}
