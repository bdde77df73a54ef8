//! `rustbk demo`: the whole emulated path on a fresh machine.

use std::path::PathBuf;
use std::process::{ExitCode, Stdio};

use anyhow::{Context, ensure};
use rustbk_blkfront::toolstack::VbdSpec;
use rustbk_blkfront::workload::Report;
use rustbk_ring::DomId;

use super::describe;
use crate::cli::{DemoArgs, ProtocolArg};
use crate::cluster::EmuCluster;

const GUEST: u16 = 1;
const XVDA: u32 = 51712;

/// Runs the demo and prints its results.
pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let tmp = tempfile::Builder::new().prefix("rustbk-demo-").tempdir()?;
    let dir = tmp.path().to_owned();
    let (image, fresh) = prepare_image(&args, &dir)?;
    let exe = std::env::current_exe().context("cannot find the rustbk executable")?;
    let mut cluster = EmuCluster::start(&exe, &dir)?;
    let spec = VbdSpec::rustbk(DomId(GUEST), XVDA, image.display().to_string());
    let backend_args = super::platform::backend_args(&args.backend);
    let backend_args: Vec<&str> = backend_args.iter().map(String::as_str).collect();
    cluster.add_disk(&spec, &backend_args)?;
    println!(
        "rustbk demo: {} on {}",
        describe(&args.workload),
        image.display()
    );
    println!(
        "  processes: xenstored {}, backend {}, guest {GUEST} (logs in {})",
        cluster.xenstored_pid(),
        cluster.backend_pid(&spec).unwrap_or(0),
        dir.display()
    );
    let report = run_guest(&cluster, &args, fresh).with_context(|| {
        format!(
            "the guest failed; backend log: {}",
            cluster.backend_log(&spec).display()
        )
    })?;
    cluster.remove_disk(&spec)?;
    print_summary(&report);
    if args.keep {
        println!("  work folder kept: {}", tmp.keep().display());
    }
    Ok(if report.mismatches == 0 && report.errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn prepare_image(args: &DemoArgs, dir: &std::path::Path) -> anyhow::Result<(PathBuf, bool)> {
    if let Some(p) = &args.image {
        ensure!(p.exists(), "image {} does not exist", p.display());
        return Ok((p.clone(), false));
    }
    let p = dir.join("disk.img");
    rustbk_formats::create_raw(&p, args.size)?;
    Ok((p, true))
}

fn run_guest(cluster: &EmuCluster, args: &DemoArgs, fresh: bool) -> anyhow::Result<Report> {
    let mut cmd = cluster.guest_command(GUEST, XVDA);
    let w = &args.workload;
    cmd.args(["--json", "--ring-order", &args.ring_order.to_string()])
        .args(["--protocol", protocol_name(args.protocol)])
        .args([
            "--rw",
            &format!("{:?}", w.rw).to_lowercase(),
            "--rwmix-read",
            &w.rwmix_read.to_string(),
        ])
        .args([
            "--bs",
            &w.bs.to_string(),
            "--qd",
            &w.qd.to_string(),
            "--duration",
            &w.duration.to_string(),
        ])
        .args(["--seed", &w.seed.to_string()]);
    if let Some(n) = w.flush_every {
        cmd.args(["--flush-every", &n.to_string()]);
    }
    if w.no_verify {
        cmd.arg("--no-verify");
    }
    if fresh {
        cmd.arg("--fresh");
    }
    let out = cmd.stdin(Stdio::null()).stderr(Stdio::inherit()).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let report: Report =
        serde_json::from_str(text.trim()).with_context(|| format!("guest printed {text:?}"))?;
    Ok(report)
}

fn protocol_name(p: ProtocolArg) -> &'static str {
    match p {
        ProtocolArg::X86_64 => "x86-64",
        ProtocolArg::X86_32 => "x86-32",
        ProtocolArg::None => "none",
    }
}

fn print_summary(r: &Report) {
    let mib = |b: f64| b / (1024.0 * 1024.0);
    println!(
        "  IOPS        {:.0} ({} reads, {} writes, {} flushes in {:.1} s)",
        r.iops, r.reads, r.writes, r.flushes, r.seconds
    );
    println!("  bandwidth   {:.1} MiB/s", mib(r.bandwidth));
    let l = &r.latency;
    println!(
        "  latency     p50 {:.0} us  p99 {:.0} us  p99.9 {:.0} us  max {:.0} us",
        l.p50_us, l.p99_us, l.p999_us, l.max_us
    );
    println!(
        "  verify      {} mismatches, {} errors",
        r.mismatches, r.errors
    );
}
