//! `rustbk bench --null`: the backend's own cost per request, on a null disk (`null:SIZE`, no
//! I/O) served to the emulated guest. For each case: the guest's IOPS, the ring worker
//! threads' CPU time per request and the IOPS one busy backend core would give.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use rustbk_blkfront::toolstack::VbdSpec;
use rustbk_blkfront::workload::Report;
use rustbk_ring::DomId;
use serde::Serialize;

use super::cpu::{Sampler, WorkerCpu, busy_window};
use super::{GUEST, XVDA, cases, print_report, rustbk_case};
use crate::cli::BenchArgs;
use crate::cluster::EmuCluster;

/// Queue counts measured, each when the backend offers that many (`multi-queue-max-queues`).
const QUEUE_COUNTS: [u32; 2] = [1, 2];

/// One measured case.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub(crate) struct NullRow {
    /// Queues (rings) of the disk.
    pub queues: u32,
    /// `randread 4k` or `randwrite 4k`.
    pub workload: String,
    /// Requests in flight.
    pub qd: u32,
    /// Requests per second the guest saw.
    pub iops: f64,
    /// Worker CPU time per request, in microseconds.
    pub worker_cpu_us_per_request: f64,
    /// Busy backend cores: worker CPU seconds per wall second.
    pub worker_cores: f64,
    /// IOPS per busy backend core: `iops / worker_cores`.
    pub iops_per_core: f64,
    /// Worker threads measured (one per queue).
    pub worker_threads: usize,
    /// 99th percentile latency the guest saw, in microseconds.
    pub p99_us: f64,
}

/// A queue count not measured, and why.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub(crate) struct NotMeasured {
    /// The queue count.
    pub queues: u32,
    /// Why not.
    pub why: String,
}

/// Everything `--null` prints.
#[derive(Debug, Serialize)]
struct NullReport {
    size: u64,
    runtime: f64,
    rounds: u32,
    rows: Vec<NullRow>,
    not_measured: Vec<NotMeasured>,
}

/// Serves `null:<size>` and measures every case at every queue count both sides support.
pub(crate) fn run_in(args: &BenchArgs, dir: &Path) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let mut cluster = EmuCluster::start_grouped(&exe, dir)?;
    let spec = VbdSpec::rustbk(DomId(GUEST), XVDA, format!("null:{}", args.size));
    let backend_args = super::super::platform::backend_args(&args.backend);
    let backend_args: Vec<&str> = backend_args.iter().map(String::as_str).collect();
    cluster.add_disk(&spec, &backend_args)?;
    let pid = cluster
        .backend_pid(&spec)
        .context("the backend process is not running")?;
    eprintln!(
        "rustbk bench --null: null disk of {} bytes, {} s per run, median of {} rounds; worker \
         CPU from /proc/{pid}/task/<tid>/schedstat",
        args.size, args.runtime, args.rounds
    );
    let mut report = NullReport {
        size: args.size,
        runtime: args.runtime,
        rounds: args.rounds,
        rows: Vec::new(),
        not_measured: Vec::new(),
    };
    for queues in QUEUE_COUNTS {
        // Read after the first runs: the backend has published its features by then.
        let offered = offered_queues(&cluster, &spec);
        if let Some(why) = why_not(queues, offered) {
            eprintln!("  {queues} queues: not measured: {why}");
            report.not_measured.push(NotMeasured { queues, why });
            continue;
        }
        for (rw, qd) in cases(&args.depths) {
            report
                .rows
                .push(measure(&mut cluster, pid, (queues, rw, qd), args)?);
        }
    }
    cluster.remove_disk(&spec)?;
    print(&report, args.json)
}

/// Queues the backend offers (`multi-queue-max-queues`; 1 when it does not say).
fn offered_queues(cluster: &EmuCluster, spec: &VbdSpec) -> u32 {
    let key = format!("{}/multi-queue-max-queues", spec.backend_path());
    cluster
        .toolstack()
        .and_then(|xs| Ok(xs.read(&key)?))
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1)
}

/// Why `queues` queues cannot be measured, if they cannot.
pub(crate) fn why_not(queues: u32, offered: u32) -> Option<String> {
    (queues > offered).then(|| {
        format!(
            "the backend offers {offered} queue(s) (multi-queue-max-queues; raise it with \
             --max-queues)"
        )
    })
}

/// The median round (by IOPS) of one case.
fn measure(
    cluster: &mut EmuCluster,
    pid: u32,
    (queues, rw, qd): (u32, &str, u32),
    args: &BenchArgs,
) -> anyhow::Result<NullRow> {
    let name = rustbk_backend::worker::disk_thread_prefix(DomId(GUEST), XVDA);
    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        let sampler = Sampler::start(pid, &name)?;
        let report = rustbk_case(cluster, (GUEST, XVDA), (rw, qd), args.runtime, queues);
        let samples = sampler.finish();
        let report = report?;
        let cpu = busy_window(&samples).with_context(|| {
            format!(
                "no worker thread named {name}* was seen in the backend (pid {pid}) long enough"
            )
        })?;
        let row = null_row((queues, rw, qd), &report, &cpu);
        eprintln!(
            "  {queues} queue(s) {rw} qd{qd} round {round}: {:.0} IOPS, {:.2} us worker CPU per \
             request, {:.0} IOPS per core",
            row.iops, row.worker_cpu_us_per_request, row.iops_per_core
        );
        rounds.push(row);
    }
    rounds.sort_by(|a, b| a.iops.total_cmp(&b.iops));
    let median = rounds.len() / 2;
    Ok(rounds.swap_remove(median))
}

/// The row of one run.
pub(crate) fn null_row((queues, rw, qd): (u32, &str, u32), r: &Report, cpu: &WorkerCpu) -> NullRow {
    let cores = cpu.cores();
    let ratio = |num: f64, den: f64| if den > 0.0 { num / den } else { 0.0 };
    NullRow {
        queues,
        workload: format!("{rw} 4k"),
        qd,
        iops: r.iops,
        worker_cpu_us_per_request: ratio(cores * 1e6, r.iops),
        worker_cores: cores,
        iops_per_core: ratio(r.iops, cores),
        worker_threads: cpu.threads,
        p99_us: r.latency.p99_us,
    }
}

fn print(report: &NullReport, json: bool) -> anyhow::Result<()> {
    print_report(report, json, |out| table(out, report))
}

fn table(out: &mut dyn Write, report: &NullReport) -> std::io::Result<()> {
    writeln!(
        out,
        "{:>6} {:<14} {:>4} {:>10} {:>14} {:>12} {:>11} {:>9}",
        "queues", "workload", "qd", "IOPS", "worker us/req", "worker cores", "IOPS/core", "p99"
    )?;
    for r in &report.rows {
        writeln!(
            out,
            "{:>6} {:<14} {:>4} {:>10.0} {:>14.3} {:>12.3} {:>11.0} {:>7.0}us",
            r.queues,
            r.workload,
            r.qd,
            r.iops,
            r.worker_cpu_us_per_request,
            r.worker_cores,
            r.iops_per_core,
            r.p99_us
        )?;
    }
    for n in &report.not_measured {
        writeln!(out, "{} queues: not measured: {}", n.queues, n.why)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustbk_blkfront::workload::LatencySummary;

    #[test]
    fn two_queues_need_a_backend_offering_two() {
        assert_eq!(why_not(1, 1), None);
        let why = why_not(2, 1).expect("backend offers one");
        assert!(
            why.contains("offers 1 queue") && why.contains("--max-queues"),
            "{why}"
        );
        assert_eq!(why_not(2, 2), None);
        assert_eq!(why_not(2, 4), None);
    }

    #[test]
    fn rows_divide_cpu_time_by_requests() {
        let report = Report {
            reads: 200_000,
            seconds: 2.0,
            iops: 100_000.0,
            latency: LatencySummary {
                p99_us: 20.0,
                ..LatencySummary::default()
            },
            ..Report::default()
        };
        let cpu = WorkerCpu {
            cpu_seconds: 0.5,
            wall_seconds: 1.0,
            threads: 1,
        };
        let row = null_row((1, "randread", 32), &report, &cpu);
        assert!((row.worker_cores - 0.5).abs() < 1e-9);
        assert!((row.worker_cpu_us_per_request - 5.0).abs() < 1e-9);
        assert!((row.iops_per_core - 200_000.0).abs() < 1e-6);
        assert_eq!((row.queues, row.qd, row.worker_threads), (1, 32, 1));
        assert_eq!(row.workload, "randread 4k");
    }
}
