//! Backend configurations side by side on the same machine in the same run (`rustbk bench
//! --data-paths`, `--indirect`). Each variant is a disk of its own (its own raw image and
//! backend process). In every round each disk runs each case once, in turn, and each round
//! starts with the next variant, so slow phases of a noisy machine hit all of them alike.
//! Every run is printed, then the medians.

use std::io::Write;
use std::path::Path;

use rustbk_blkfront::toolstack::VbdSpec;
use rustbk_blkfront::workload::Report;
use rustbk_ring::DomId;
use serde::Serialize;

use super::{GUEST, XVDA, print_report, sized_case, write_image};
use crate::cli::{BackendArgs, BenchArgs};
use crate::cluster::EmuCluster;

/// One backend configuration.
pub(super) struct Variant {
    pub name: &'static str,
    pub backend: BackendArgs,
}

/// One workload of the emulated guest.
#[derive(Clone, Copy)]
pub(super) struct Case {
    pub rw: &'static str,
    pub qd: u32,
    pub bs: usize,
}

/// What is compared, and how it is introduced.
pub(super) struct Comparison {
    pub title: &'static str,
    pub variants: Vec<Variant>,
    pub cases: Vec<Case>,
}

/// A variant made from the common backend flags by `f`.
pub(super) fn variant(
    name: &'static str,
    base: &BackendArgs,
    f: impl Fn(&mut BackendArgs),
) -> Variant {
    let mut backend = base.clone();
    f(&mut backend);
    Variant { name, backend }
}

/// One measurement.
#[derive(Clone, Debug, Serialize)]
struct Run {
    variant: String,
    workload: String,
    qd: u32,
    round: u32,
    iops: f64,
    mib_s: f64,
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
    mib_s: f64,
    p99_us: f64,
}

#[derive(Debug, Serialize)]
struct CompareReport {
    size: u64,
    runtime: f64,
    rounds: u32,
    runs: Vec<Run>,
    medians: Vec<Median>,
}

/// Serves one disk per variant and measures them in turn.
pub(super) fn run_in(args: &BenchArgs, dir: &Path, cmp: &Comparison) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let mut cluster = EmuCluster::start_grouped(&exe, dir)?;
    let mut disks = Vec::new();
    for (i, v) in cmp.variants.iter().enumerate() {
        let domid = GUEST + u16::try_from(i)?;
        let image = write_image(&dir.join(format!("variant-{i}.img")), args.size)?;
        let spec = VbdSpec::rustbk(DomId(domid), XVDA, image.display().to_string());
        let flags = crate::cmd::platform::backend_args(&v.backend);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        cluster.add_disk(&spec, &flags)?;
        disks.push((domid, spec));
    }
    eprintln!(
        "rustbk bench {}: {} variants, raw images of {} bytes, cache mode {}, {} s per run, {} \
         alternating rounds",
        cmp.title,
        cmp.variants.len(),
        args.size,
        args.backend.cache_mode(),
        args.runtime,
        args.rounds
    );
    let mut runs = Vec::new();
    for round in 1..=args.rounds {
        for case in &cmp.cases {
            // Each round starts with the next variant, so none always runs first.
            let mut order: Vec<_> = cmp.variants.iter().zip(&disks).collect();
            let first = usize::try_from(round - 1).map_or(0, |r| r % order.len().max(1));
            order.rotate_left(first);
            for (v, (domid, _)) in order {
                let guest = (case.rw, case.qd, case.bs);
                let r = sized_case(&mut cluster, (*domid, XVDA), guest, args.runtime)?;
                let run = run(v.name, case, round, &r);
                eprintln!(
                    "  round {round} {} qd{} {:<28} {:>9.0} IOPS {:>8.0} MiB/s  p99 {:>6.0}us",
                    run.workload, case.qd, v.name, r.iops, run.mib_s, r.latency.p99_us
                );
                runs.push(run);
            }
        }
    }
    for (_, spec) in &disks {
        cluster.remove_disk(spec)?;
    }
    let medians = medians(cmp, &runs);
    let report = CompareReport {
        size: args.size,
        runtime: args.runtime,
        rounds: args.rounds,
        runs,
        medians,
    };
    print(&report, args.json)
}

/// How a workload is named in the table: `randread 4k`, `read 1m`.
fn workload_name(case: &Case) -> String {
    let bs = match case.bs {
        b if b % (1 << 20) == 0 => format!("{}m", b >> 20),
        b if b % 1024 == 0 => format!("{}k", b >> 10),
        b => b.to_string(),
    };
    format!("{} {bs}", case.rw)
}

fn run(variant: &str, case: &Case, round: u32, r: &Report) -> Run {
    Run {
        variant: variant.to_owned(),
        workload: workload_name(case),
        qd: case.qd,
        round,
        iops: r.iops,
        mib_s: r.iops * case.bs as f64 / f64::from(1 << 20),
        p99_us: r.latency.p99_us,
    }
}

/// The median, lowest and highest IOPS of each variant and case.
fn medians(cmp: &Comparison, runs: &[Run]) -> Vec<Median> {
    let mut out = Vec::new();
    for case in &cmp.cases {
        let workload = workload_name(case);
        for v in &cmp.variants {
            let mut mine: Vec<&Run> = runs
                .iter()
                .filter(|r| r.variant == v.name && r.workload == workload && r.qd == case.qd)
                .collect();
            if mine.is_empty() {
                continue;
            }
            mine.sort_by(|a, b| a.iops.total_cmp(&b.iops));
            let mid = mine[mine.len() / 2];
            out.push(Median {
                variant: v.name.to_owned(),
                workload: workload.clone(),
                qd: case.qd,
                iops: mid.iops,
                min_iops: mine[0].iops,
                max_iops: mine[mine.len() - 1].iops,
                mib_s: mid.mib_s,
                p99_us: mid.p99_us,
            });
        }
    }
    out
}

fn print(report: &CompareReport, json: bool) -> anyhow::Result<()> {
    print_report(report, json, |out| table(out, report))
}

fn table(out: &mut dyn Write, report: &CompareReport) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<14} {:>4} {:<28} {:>12} {:>10} {:>10} {:>10} {:>10}",
        "workload", "qd", "variant", "median IOPS", "min", "max", "MiB/s", "p99"
    )?;
    for m in &report.medians {
        writeln!(
            out,
            "{:<14} {:>4} {:<28} {:>12.0} {:>10.0} {:>10.0} {:>10.0} {:>8.0}us",
            m.workload, m.qd, m.variant, m.iops, m.min_iops, m.max_iops, m.mib_s, m.p99_us
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Case, workload_name};

    #[test]
    fn workloads_are_named_by_pattern_and_block_size() {
        let case = |bs| Case {
            rw: "read",
            qd: 8,
            bs,
        };
        assert_eq!(workload_name(&case(1 << 20)), "read 1m");
        assert_eq!(workload_name(&case(4096)), "read 4k");
        assert_eq!(workload_name(&case(45056)), "read 44k");
        assert_eq!(workload_name(&case(1536)), "read 1536");
    }
}
