//! `rustbk bench --data-paths`: the data paths side by side on the same machine in the same
//! run. Each variant is a disk of its own (its own raw image and backend process); in every
//! round each disk runs each case once, in turn, so slow phases of a noisy machine hit all of
//! them alike. Every run is printed, then the medians.

use std::io::Write;
use std::path::Path;

use rustbk_backend::worker::DataPath;
use rustbk_blkfront::toolstack::VbdSpec;
use rustbk_blkfront::workload::Report;
use rustbk_ring::DomId;
use serde::Serialize;

use super::{GUEST, XVDA, rustbk_case, write_image};
use crate::cli::{BackendArgs, BenchArgs};
use crate::cluster::EmuCluster;

/// The cases: 4 KiB random read and write at queue depth 32.
const CASES: [(&str, u32); 2] = [("randread", 32), ("randwrite", 32)];

/// One data path configuration.
struct Variant {
    name: &'static str,
    backend: BackendArgs,
}

/// The variants, each from the common backend flags.
fn variants(base: &BackendArgs) -> Vec<Variant> {
    let with = |f: &dyn Fn(&mut BackendArgs)| {
        let mut b = base.clone();
        f(&mut b);
        b
    };
    vec![
        Variant {
            name: "map, persistent",
            backend: with(&|b| {
                b.data_path = DataPath::Map;
                b.no_persistent = false;
                b.fixed_buffers = false;
            }),
        },
        Variant {
            name: "map, persistent, fixed",
            backend: with(&|b| {
                b.data_path = DataPath::Map;
                b.no_persistent = false;
                b.fixed_buffers = true;
            }),
        },
        Variant {
            name: "map per request",
            backend: with(&|b| {
                b.data_path = DataPath::Map;
                b.no_persistent = true;
            }),
        },
        Variant {
            name: "grant copy",
            backend: with(&|b| b.data_path = DataPath::Copy),
        },
    ]
}

/// One measurement.
#[derive(Clone, Debug, Serialize)]
struct Run {
    variant: String,
    workload: String,
    qd: u32,
    round: u32,
    iops: f64,
    p99_us: f64,
}

/// The medians of one variant and case.
#[derive(Clone, Debug, Serialize)]
struct Median {
    variant: String,
    workload: String,
    qd: u32,
    iops: f64,
    min_iops: f64,
    max_iops: f64,
    p99_us: f64,
}

#[derive(Debug, Serialize)]
struct PathsReport {
    size: u64,
    runtime: f64,
    rounds: u32,
    runs: Vec<Run>,
    medians: Vec<Median>,
}

/// Serves one disk per variant and measures them in turn.
pub(crate) fn run_in(args: &BenchArgs, dir: &Path) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let mut cluster = EmuCluster::start_grouped(&exe, dir)?;
    let variants = variants(&args.backend);
    let mut disks = Vec::new();
    for (i, v) in variants.iter().enumerate() {
        let domid = GUEST + u16::try_from(i)?;
        let image = write_image(&dir.join(format!("paths-{i}.img")), args.size)?;
        let spec = VbdSpec::rustbk(DomId(domid), XVDA, image.display().to_string());
        let flags = crate::cmd::platform::backend_args(&v.backend);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        cluster.add_disk(&spec, &flags)?;
        disks.push((domid, spec));
    }
    eprintln!(
        "rustbk bench --data-paths: {} variants, raw images of {} bytes, cache mode {}, {} s per \
         run, {} alternating rounds",
        variants.len(),
        args.size,
        args.backend.cache_mode(),
        args.runtime,
        args.rounds
    );
    let mut runs = Vec::new();
    for round in 1..=args.rounds {
        for (rw, qd) in CASES {
            for (v, (domid, _)) in variants.iter().zip(&disks) {
                let r = rustbk_case(&mut cluster, (*domid, XVDA), (rw, qd), args.runtime, 1)?;
                eprintln!(
                    "  round {round} {rw} qd{qd} {:<24} {:>9.0} IOPS  p99 {:>6.0}us",
                    v.name, r.iops, r.latency.p99_us
                );
                runs.push(run(v.name, (rw, qd), round, &r));
            }
        }
    }
    for (_, spec) in &disks {
        cluster.remove_disk(spec)?;
    }
    let medians = medians(&variants, &runs);
    let report = PathsReport {
        size: args.size,
        runtime: args.runtime,
        rounds: args.rounds,
        runs,
        medians,
    };
    print(&report, args.json)
}

fn run(variant: &str, (rw, qd): (&str, u32), round: u32, r: &Report) -> Run {
    Run {
        variant: variant.to_owned(),
        workload: format!("{rw} 4k"),
        qd,
        round,
        iops: r.iops,
        p99_us: r.latency.p99_us,
    }
}

/// The median, lowest and highest IOPS of each variant and case.
fn medians(variants: &[Variant], runs: &[Run]) -> Vec<Median> {
    let mut out = Vec::new();
    for (rw, qd) in CASES {
        let workload = format!("{rw} 4k");
        for v in variants {
            let mut mine: Vec<&Run> = runs
                .iter()
                .filter(|r| r.variant == v.name && r.workload == workload && r.qd == qd)
                .collect();
            if mine.is_empty() {
                continue;
            }
            mine.sort_by(|a, b| a.iops.total_cmp(&b.iops));
            let mid = mine[mine.len() / 2];
            out.push(Median {
                variant: v.name.to_owned(),
                workload: workload.clone(),
                qd,
                iops: mid.iops,
                min_iops: mine[0].iops,
                max_iops: mine[mine.len() - 1].iops,
                p99_us: mid.p99_us,
            });
        }
    }
    out
}

fn print(report: &PathsReport, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, report)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<14} {:>4} {:<24} {:>12} {:>12} {:>12} {:>10}",
        "workload", "qd", "data path", "median IOPS", "min", "max", "p99"
    )?;
    for m in &report.medians {
        writeln!(
            out,
            "{:<14} {:>4} {:<24} {:>12.0} {:>12.0} {:>12.0} {:>8.0}us",
            m.workload, m.qd, m.variant, m.iops, m.min_iops, m.max_iops, m.p99_us
        )?;
    }
    Ok(())
}
