//! `rustbk demo`: the whole emulated path on a fresh machine.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};

use anyhow::{Context, bail, ensure};
use rustbk_blkfront::toolstack::VbdSpec;
use rustbk_blkfront::workload::Report;
use rustbk_ring::DomId;

use super::describe;
use super::image::{UserImage, user_image};
use crate::cli::{DemoArgs, ProtocolArg};
use crate::cluster::EmuCluster;
use crate::supervise::{self, WorkDir};

const GUEST: u16 = 1;
const XVDA: u32 = 51712;

/// Runs the demo and prints its results. Every argument is checked before any process starts;
/// the work folder is kept (and named) when something fails.
pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    validate(&args)?;
    let image = match &args.image {
        Some(p) => Some(user_image(p, args.overwrite)?),
        None => None,
    };
    if args.format != crate::img::FormatArg::Raw && !matches!(image, Some(UserImage::Existing(_))) {
        bail!(
            "--format {:?} serves an existing image: make it first (rustbk img create) and add \
             --overwrite",
            args.format
        );
    }
    supervise::handle_signals("demo")?;
    let work = WorkDir::create("rustbk-demo-", args.keep)?;
    let result = run_in(&args, image, work.path());
    let success = matches!(result, Ok(true));
    let kept = work.finish(success);
    if let (Some(kept), Ok(_)) = (&kept, &result) {
        println!("  work folder kept: {}", kept.display());
    }
    let ok = result.with_context(|| match &kept {
        Some(kept) => format!("demo failed (logs kept in {})", kept.display()),
        None => "demo failed".to_owned(),
    })?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The checks that need more than one argument (each one alone is checked by clap).
fn validate(args: &DemoArgs) -> anyhow::Result<()> {
    let (w, sector) = (&args.workload, u64::from(args.backend.sector_size));
    ensure!(
        w.bs % sector == 0,
        "--bs {} is not a multiple of --sector-size {sector}",
        w.bs
    );
    ensure!(
        args.size % sector == 0,
        "--size {} is not a multiple of --sector-size {sector}",
        args.size
    );
    ensure!(
        args.size / w.bs >= u64::from(w.qd),
        "--size {} holds fewer than --qd {} blocks of --bs {}",
        args.size,
        w.qd,
        w.bs
    );
    Ok(())
}

/// Starts the processes, runs the guest; whether the workload found no mismatch or error.
fn run_in(args: &DemoArgs, user: Option<UserImage>, dir: &Path) -> anyhow::Result<bool> {
    let (params, fresh) = match args.thin {
        true => (thin_volume(args, dir)?, true),
        false => {
            let (image, fresh) = prepare_image(args, user, dir)?;
            (params_of(args.format, &image)?, fresh)
        }
    };
    let exe = std::env::current_exe().context("cannot find the rustbk executable")?;
    let mut cluster = EmuCluster::start_grouped(&exe, dir)?;
    let spec = VbdSpec::rustbk(DomId(GUEST), XVDA, params.clone());
    let backend_args = super::platform::backend_args(&args.backend);
    let backend_args: Vec<&str> = backend_args.iter().map(String::as_str).collect();
    cluster.add_disk(&spec, &backend_args)?;
    println!("rustbk demo: {} on {params}", describe(&args.workload));
    println!(
        "  processes: xenstored {}, backend {}, guest {GUEST} (logs in {})",
        cluster.xenstored_pid(),
        cluster.backend_pid(&spec).unwrap_or(0),
        dir.display()
    );
    let report = run_guest(&mut cluster, args, fresh)?;
    cluster.remove_disk(&spec)?;
    print_summary(&report);
    Ok(report.mismatches == 0 && report.errors == 0)
}

/// A new thin pool in the work folder holding `--size` of data, with an empty volume of
/// `--size`; returns the disk's `params`.
fn thin_volume(args: &DemoArgs, dir: &Path) -> anyhow::Result<String> {
    let pool_dir = rustbk_thin::dir::PoolDir::new(dir.join("pool"));
    let devices = rustbk_thin::dir::Devices::Files {
        metadata: 64 << 20,
        data: args.size,
    };
    let opts = rustbk_thin::pool::PoolOptions::default();
    let pool = pool_dir.create(&devices, 64 << 10, opts)?;
    let spec = rustbk_thin::pool::VolumeSpec {
        size: args.size,
        name: "demo".into(),
        origin: None,
    };
    pool.create_volume(0, spec)?;
    Ok(format!("thin:{}:0", pool_dir.path.display()))
}

/// The image to serve and whether it is all zeros.
/// The `params` naming `image` in `format` (a plain path is raw).
fn params_of(format: crate::img::FormatArg, image: &Path) -> anyhow::Result<String> {
    use crate::img::FormatArg;
    let prefix = match format {
        FormatArg::Raw => return Ok(image.display().to_string()),
        FormatArg::Qcow2 => "qcow2",
        FormatArg::Vpc => "vhd",
        FormatArg::Vmdk => "vmdk",
    };
    Ok(format!("{prefix}:{}", image.display()))
}

fn prepare_image(
    args: &DemoArgs,
    user: Option<UserImage>,
    dir: &Path,
) -> anyhow::Result<(PathBuf, bool)> {
    let user = user.unwrap_or_else(|| UserImage::Missing(dir.join("disk.img")));
    user.prepare_sparse(args.size)
}

fn run_guest(cluster: &mut EmuCluster, args: &DemoArgs, fresh: bool) -> anyhow::Result<Report> {
    let mut cmd = cluster.guest_command(GUEST, XVDA);
    let w = &args.workload;
    let rw = format!("{:?}", w.rw).to_lowercase();
    cmd.arg("--json")
        .arg(format!("--ring-order={}", args.ring_order))
        .arg(format!("--queues={}", args.queues))
        .arg(format!("--protocol={}", protocol_name(args.protocol)))
        .arg(format!("--rw={rw}"))
        .arg(format!("--rwmix-read={}", w.rwmix_read))
        .arg(format!("--bs={}", w.bs))
        .arg(format!("--qd={}", w.qd))
        .arg(format!("--duration={}", w.duration))
        .arg(format!("--seed={}", w.seed));
    if let Some(n) = w.flush_every {
        cmd.arg(format!("--flush-every={n}"));
    }
    if w.no_verify {
        cmd.arg("--no-verify");
    }
    if fresh {
        cmd.arg("--fresh");
    }
    let out_path = cluster.dir().join(format!("guest-{GUEST}.json"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(File::create(&out_path)?)
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start the emulated guest")?;
    let status = supervise::wait_child(cluster, &mut child)?;
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    if let Ok(report) = serde_json::from_str::<Report>(text.trim()) {
        return Ok(report);
    }
    let spec = VbdSpec::rustbk(DomId(GUEST), XVDA, String::new());
    let log = cluster.backend_log(&spec);
    bail!(
        "the emulated guest (pid {}) failed ({status}); its messages are above; last lines of \
         the backend's log {}:\n{}",
        child.id(),
        log.display(),
        supervise::log_tail(&log, supervise::TAIL_LINES)
    )
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
