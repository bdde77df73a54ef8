//! `rustbk img check` of a VHD: footers, dynamic header, BAT, blocks, leaks and parent
//! locators (see `rustbk_formats::vhd::check`); `-r leaks` gives back a leak at the end of
//! the file, `-r all` also restores a damaged footer from its copy (or the reverse) and a
//! wrong header checksum. Exit codes as qemu-img's: 0, 1 not completed, 2, 3.

use std::process::ExitCode;

use rustbk_formats::BackingPolicy;
use rustbk_formats::qcow2::check::Repair;
use rustbk_formats::vhd::check::{FindingKind, VhdCheckOptions, VhdCheckReport, check};
use rustbk_formats::vhd::footer::DiskType;
use serde_json::json;

use super::OutputArg;
use super::check::{CheckArgs, Counts, RepairArg};

/// Checks (and repairs) the VHD of `args`. A differencing disk's parent is looked for in
/// the image's own folder only.
pub fn run(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let opts = VhdCheckOptions {
        repair: match args.repair {
            None => Repair::None,
            Some(RepairArg::Leaks) => Repair::Leaks,
            Some(RepairArg::All) => Repair::All,
        },
        force_share: args.force_share,
        backing: BackingPolicy::default(),
        recorder: None,
    };
    let report = match check(&args.file, &opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rustbk: Check of '{}' failed: {e}", args.file.display());
            return Ok(ExitCode::from(1));
        }
    };
    for line in &report.repairs {
        eprintln!("{line}");
    }
    for f in &report.findings {
        eprintln!("{}: {}", label(f.kind), f.message);
    }
    if report.findings_dropped > 0 {
        eprintln!("... and {} more messages", report.findings_dropped);
    }
    match args.output {
        OutputArg::Json => println!("{}", serde_json::to_string_pretty(&to_json(args, &report))?),
        OutputArg::Human => print!("{}", human(&report)),
    }
    Ok(ExitCode::from(counts(&report).exit_code()))
}

fn label(kind: FindingKind) -> &'static str {
    match kind {
        FindingKind::Corruption => "ERROR",
        FindingKind::Leak => "Leak",
        FindingKind::Warning => "Warning",
    }
}

/// The counts qemu-img's summary and exit status are made of.
fn counts(r: &VhdCheckReport) -> Counts {
    Counts {
        corruptions: r.corruptions,
        leaks: r.leaks,
        check_errors: r.check_errors,
        corruptions_fixed: r.corruptions_fixed,
        leaks_fixed: r.leaks_fixed,
        leak_unit: "leaked ranges",
        leak_detail: format!(" ({} bytes)", r.leaked_bytes),
    }
}

fn disk_type(t: Option<DiskType>) -> &'static str {
    match t {
        Some(DiskType::Fixed) => "fixed",
        Some(DiskType::Dynamic) => "dynamic",
        Some(DiskType::Differencing) => "differencing",
        None => "unknown",
    }
}

/// qemu-img's fields (optional ones only when not zero), plus the disk type, leaked bytes,
/// the parent's name and every finding and repair.
fn to_json(args: &CheckArgs, r: &VhdCheckReport) -> serde_json::Value {
    let mut v = json!({
        "filename": args.file.display().to_string(),
        "format": "vpc",
        "check-errors": r.check_errors,
        "subformat": disk_type(r.disk_type),
    });
    let optional = [
        ("corruptions", r.corruptions),
        ("leaks", r.leaks),
        ("leaked-bytes", r.leaked_bytes),
        ("corruptions-fixed", r.corruptions_fixed),
        ("leaks-fixed", r.leaks_fixed),
        ("image-end-offset", r.image_end_offset),
        ("total-clusters", r.total_blocks),
        ("allocated-clusters", r.allocated_blocks),
        ("fragmented-clusters", r.fragmented_blocks),
    ];
    for (key, value) in optional {
        if value != 0 {
            v[key] = json!(value);
        }
    }
    if let Some(name) = &r.backing_filename {
        v["backing-filename"] = json!(name);
    }
    let findings: Vec<_> = r
        .findings
        .iter()
        .map(|f| json!({ "kind": kind_name(f.kind), "message": f.message }))
        .collect();
    if !findings.is_empty() {
        v["problems"] = json!(findings);
    }
    if !r.repairs.is_empty() {
        v["repairs"] = json!(r.repairs);
    }
    v
}

fn kind_name(kind: FindingKind) -> &'static str {
    match kind {
        FindingKind::Corruption => "corruption",
        FindingKind::Leak => "leak",
        FindingKind::Warning => "warning",
    }
}

fn human(r: &VhdCheckReport) -> String {
    let mut s = counts(r).summary();
    if r.total_blocks > 0 {
        let pct = |n: u64, of: u64| {
            if of == 0 {
                0.0
            } else {
                n as f64 * 100.0 / of as f64
            }
        };
        s += &format!(
            "{}/{} = {:.2}% allocated, {:.2}% fragmented blocks\n",
            r.allocated_blocks,
            r.total_blocks,
            pct(r.allocated_blocks, r.total_blocks),
            pct(r.fragmented_blocks, r.allocated_blocks)
        );
    }
    if r.image_end_offset > 0 {
        s += &format!("Image end offset: {}\n", r.image_end_offset);
    }
    s
}
