//! `rustbk bench`: rustbk through the emulated guest against fio on the same file, or with
//! `--null` the backend's own CPU cost per request on a null disk.

mod compare;
mod cpu;
mod indirect;
mod null;
mod paths;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, bail, ensure};
use rustbk_blkfront::toolstack::VbdSpec;
use rustbk_blkfront::workload::Report;
use rustbk_formats::CacheMode;
use rustbk_ring::DomId;
use serde::Serialize;

use super::image::{UserImage, user_image};
use crate::cli::BenchArgs;
use crate::cluster::EmuCluster;
use crate::supervise::{self, WorkDir};

const GUEST: u16 = 1;
const XVDA: u32 = 51712;

/// The measurements: 4 KiB random reads at each of `depths` (`--depths`, 1 and 32 by
/// default), then random writes.
fn cases(depths: &[u32]) -> Vec<(&'static str, u32)> {
    ["randread", "randwrite"]
        .into_iter()
        .flat_map(|rw| depths.iter().map(move |&qd| (rw, qd)))
        .collect()
}

/// One row of the table.
#[derive(Clone, Debug, Serialize)]
struct Row {
    workload: String,
    qd: u32,
    rustbk_iops: f64,
    fio_iops: f64,
    ratio: f64,
    rustbk_p99_us: f64,
    fio_p99_us: f64,
}

/// Runs every case with rustbk and with fio, and prints the table. Every argument is checked
/// before any process starts; the work folder is kept (and named) when something fails.
pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let sector = u64::from(args.backend.sector_size);
    ensure!(
        args.size % sector == 0,
        "--size {} is not a multiple of --sector-size {sector}",
        args.size
    );
    if args.null {
        return run_null(&args);
    }
    if args.data_paths || args.indirect {
        supervise::handle_signals("bench")?;
        let work = WorkDir::create("rustbk-bench-", args.keep)?;
        let comparison = match args.data_paths {
            true => paths::comparison(&args.backend),
            false => indirect::comparison(&args.backend),
        };
        let result = compare::run_in(&args, work.path(), &comparison);
        return finish(work, result);
    }
    let user = match &args.image {
        Some(p) => Some(user_image(p, args.overwrite)?),
        None => None,
    };
    let fio_version = fio_version()?;
    supervise::handle_signals("bench")?;
    let work = WorkDir::create("rustbk-bench-", args.keep)?;
    let result = run_in(&args, user, work.path(), &fio_version);
    finish(work, result)
}

/// `--null`: no image and no fio, the backend alone.
fn run_null(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    supervise::handle_signals("bench")?;
    let work = WorkDir::create("rustbk-bench-", args.keep)?;
    let result = null::run_in(args, work.path());
    finish(work, result)
}

/// Removes the work folder, or keeps it and names it (always with `--keep`, and when the run
/// failed).
fn finish(work: WorkDir, result: anyhow::Result<()>) -> anyhow::Result<ExitCode> {
    let kept = work.finish(result.is_ok());
    match (&kept, result) {
        (Some(kept), Ok(())) => eprintln!("rustbk bench: work folder kept: {}", kept.display()),
        (Some(kept), Err(e)) => {
            return Err(e.context(format!("bench failed (logs kept in {})", kept.display())));
        }
        (None, result) => result?,
    }
    Ok(ExitCode::SUCCESS)
}

fn run_in(
    args: &BenchArgs,
    user: Option<UserImage>,
    dir: &Path,
    fio_version: &str,
) -> anyhow::Result<()> {
    let image = match user.unwrap_or_else(|| UserImage::Missing(dir.join("bench.img"))) {
        UserImage::Existing(p) => p,
        UserImage::Missing(p) | UserImage::Empty(p) => write_image(&p, args.size)?,
    };
    let exe = std::env::current_exe()?;
    let params = served_params(&exe, &image, &args.format, dir)?;
    let mut cluster = EmuCluster::start_grouped(&exe, dir)?;
    let spec = VbdSpec::rustbk(DomId(GUEST), XVDA, params.clone());
    let backend_args = super::platform::backend_args(&args.backend);
    let backend_args: Vec<&str> = backend_args.iter().map(String::as_str).collect();
    cluster.add_disk(&spec, &backend_args)?;
    eprintln!(
        "rustbk bench: {fio_version} on {}, rustbk serving {params}, cache mode {}, {} guest queue(s) ({} s per run, median of {} alternating rounds)",
        image.display(),
        args.backend.cache_mode(),
        args.queues,
        args.runtime,
        args.rounds
    );
    if args.guest_spin_us > 0 || args.backend.poll_us > 0 {
        eprintln!(
            "  polling: the emulated guest {} µs before it sleeps (fio reaps by polling at qd1), the ring worker up to {} µs",
            args.guest_spin_us, args.backend.poll_us
        );
    }
    let mut rows = Vec::new();
    for (rw, qd) in cases(&args.depths) {
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for round in 1..=args.rounds {
            let fio = FioCase {
                image: &image,
                rw,
                qd,
                runtime: args.runtime,
                cache: args.backend.cache_mode(),
                poll: args.guest_spin_us > 0 && qd == 1,
            };
            let (o, t) = one_round(&mut cluster, args, &fio, round)?;
            let first = if rustbk_first(round) { "rustbk" } else { "fio" };
            eprintln!(
                "  {rw} qd{qd} round {round} ({first} first): rustbk {:.0} IOPS, fio {:.0} IOPS",
                o.iops, t.iops
            );
            ours.push(o);
            theirs.push(t);
        }
        rows.push(row(rw, qd, &mut ours, &mut theirs));
    }
    cluster.remove_disk(&spec)?;
    print_rows(&rows, args.json)
}

/// Whether rustbk runs before fio in `round` (counted from 1).
fn rustbk_first(round: u32) -> bool {
    round % 2 == 1
}

/// One round of one case: rustbk first in odd rounds and fio first in even ones, so that
/// what the first run leaves behind on this host (warm caches below the file, a disk
/// catching up on writes) falls on both alike over the rounds.
fn one_round(
    cluster: &mut EmuCluster,
    args: &BenchArgs,
    fio: &FioCase<'_>,
    round: u32,
) -> anyhow::Result<(Report, FioResult)> {
    let ours = |cluster: &mut EmuCluster| {
        polled_case(
            cluster,
            (GUEST, XVDA),
            (fio.rw, fio.qd),
            (args.runtime, args.queues),
            args.guest_spin_us,
        )
    };
    if rustbk_first(round) {
        let o = ours(cluster)?;
        Ok((o, fio_case(cluster, fio)?))
    } else {
        let t = fio_case(cluster, fio)?;
        Ok((ours(cluster)?, t))
    }
}

/// The `params` rustbk serves: the raw image itself, or a fully allocated copy of it in
/// `format`, made in `dir` by `rustbk img convert` and dropped from the page cache.
fn served_params(exe: &Path, image: &Path, format: &str, dir: &Path) -> anyhow::Result<String> {
    if format == "raw" {
        return Ok(image.display().to_string());
    }
    let copy = dir.join(format!("bench.{format}"));
    // `rustbk img` names VHD as qemu-img does; a toolstack's `params` say `vhd:`.
    let output_format = if format == "vhd" { "vpc" } else { format };
    let out = Command::new(exe)
        .args(["img", "convert", "-f", "raw", "-O", output_format])
        .args([image, &copy])
        .output()
        .context("cannot run rustbk img convert")?;
    ensure!(
        out.status.success(),
        "rustbk img convert to {format} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    drop_cached(&copy)?;
    Ok(format!("{format}:{}", copy.display()))
}

/// Writes `path`'s dirty pages and drops its pages from the page cache.
fn drop_cached(path: &Path) -> anyhow::Result<()> {
    let f = File::open(path)?;
    f.sync_all()?;
    let advice = nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED;
    nix::fcntl::posix_fadvise(std::os::fd::AsRawFd::as_raw_fd(&f), 0, 0, advice)?;
    Ok(())
}

/// The row of one case: medians over the rounds.
fn row(rw: &str, qd: u32, ours: &mut [Report], theirs: &mut [FioResult]) -> Row {
    ours.sort_by(|a, b| a.iops.total_cmp(&b.iops));
    theirs.sort_by(|a, b| a.iops.total_cmp(&b.iops));
    let (o, t) = (&ours[ours.len() / 2], &theirs[theirs.len() / 2]);
    Row {
        workload: format!("{rw} 4k"),
        qd,
        rustbk_iops: o.iops,
        fio_iops: t.iops,
        ratio: if t.iops > 0.0 { o.iops / t.iops } else { 0.0 },
        rustbk_p99_us: o.latency.p99_us,
        fio_p99_us: t.p99_us,
    }
}

fn fio_version() -> anyhow::Result<String> {
    let out = Command::new("fio")
        .arg("--version")
        .output()
        .context("fio is not installed (apt-get install fio)")?;
    ensure!(out.status.success(), "fio --version failed");
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A raw image written end to end, so reads hit real blocks, not holes.
pub(crate) fn write_image(path: &Path, size: u64) -> anyhow::Result<PathBuf> {
    let mut f = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let chunk: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8 | 1).collect();
    let mut left = size;
    while left > 0 {
        let n = usize::try_from(left).map_or(chunk.len(), |l| l.min(chunk.len()));
        f.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    // Out of the page cache: O_DIRECT on cached pages costs extra and would skew the baseline.
    drop_cached(path)?;
    Ok(path.to_owned())
}

/// One 4 KiB run of the emulated guest `(domid, devid)` with pattern `rw` at depth `qd`, over
/// `queues` rings.
pub(crate) fn rustbk_case(
    cluster: &mut EmuCluster,
    disk: (u16, u32),
    case: (&str, u32),
    runtime: f64,
    queues: u32,
) -> anyhow::Result<Report> {
    polled_case(cluster, disk, case, (runtime, queues), 0)
}

/// One run of the emulated guest `(domid, devid)` with pattern `rw` at depth `qd` in blocks
/// of `bs` bytes, over one ring.
pub(crate) fn sized_case(
    cluster: &mut EmuCluster,
    disk: (u16, u32),
    (rw, qd, bs): (&str, u32, usize),
    runtime: f64,
) -> anyhow::Result<Report> {
    guest_case(cluster, disk, (rw, qd, bs), (runtime, 1), 0)
}

/// [`rustbk_case`] with a guest that polls its responses for up to `spin_us` before it
/// sleeps.
fn polled_case(
    cluster: &mut EmuCluster,
    disk: (u16, u32),
    (rw, qd): (&str, u32),
    (runtime, queues): (f64, u32),
    spin_us: u32,
) -> anyhow::Result<Report> {
    guest_case(cluster, disk, (rw, qd, 4096), (runtime, queues), spin_us)
}

fn guest_case(
    cluster: &mut EmuCluster,
    (domid, devid): (u16, u32),
    (rw, qd, bs): (&str, u32, usize),
    (runtime, queues): (f64, u32),
    spin_us: u32,
) -> anyhow::Result<Report> {
    let mut cmd = cluster.guest_command(domid, devid);
    cmd.args(["--json", "--no-verify"])
        .arg(format!("--ring-order={}", ring_order_for(qd)))
        .arg(format!("--bs={bs}"))
        .arg(format!("--spin-us={spin_us}"))
        .arg(format!("--queues={queues}"))
        .arg(format!("--rw={rw}"))
        .arg(format!("--qd={qd}"))
        .arg(format!("--duration={runtime}"));
    let (out, log) = run_logged(cluster, cmd, "guest")?;
    ensure!(
        out.status.success(),
        "the emulated guest failed running {rw} qd{qd} ({}); last lines of {}:\n{}",
        out.status,
        log.display(),
        supervise::log_tail(&log, supervise::TAIL_LINES)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Runs `cmd` with its stdout and stderr in `<name>.out` and `<name>.log` of the work folder,
/// watching the cluster meanwhile; its status and stdout, and the path of its log.
/// The smallest ring page order whose ring holds `qd` requests (32 slots a page on the 64-bit
/// ABI): the emulated guest keeps no more in flight than its rings hold.
fn ring_order_for(qd: u32) -> u32 {
    (0..=rustbk_ring::MAX_RING_PAGE_ORDER)
        .find(|&order| 32u32 << order >= qd)
        .unwrap_or(rustbk_ring::MAX_RING_PAGE_ORDER)
}

pub(crate) fn run_logged(
    cluster: &mut EmuCluster,
    mut cmd: Command,
    name: &str,
) -> anyhow::Result<(std::process::Output, PathBuf)> {
    let (out_path, log_path) = (
        cluster.dir().join(format!("{name}.out")),
        cluster.dir().join(format!("{name}.log")),
    );
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(File::create(&out_path)?)
        .stderr(File::create(&log_path)?)
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    let status = supervise::wait_child(cluster, &mut child)?;
    let stdout = std::fs::read(&out_path)?;
    let output = std::process::Output {
        status,
        stdout,
        stderr: Vec::new(),
    };
    Ok((output, log_path))
}

/// What fio measured.
pub(crate) struct FioResult {
    pub(crate) iops: f64,
    p99_us: f64,
}

/// One fio run.
pub(crate) struct FioCase<'a> {
    pub(crate) image: &'a Path,
    pub(crate) rw: &'a str,
    pub(crate) qd: u32,
    pub(crate) runtime: f64,
    /// fio opens the file as the backend does: O_DIRECT and O_DSYNC as the mode says.
    pub(crate) cache: CacheMode,
    /// fio polls for completions instead of sleeping, as the emulated guest does with
    /// `--guest-spin-us`.
    pub(crate) poll: bool,
}

/// fio's options for the descriptors of cache mode `cache` (fio never flushes here, so
/// `unsafe` and `writeback` are alike).
fn fio_cache_args(cache: CacheMode) -> [String; 2] {
    let sync = if cache.dsync() { "dsync" } else { "none" };
    [
        format!("--direct={}", u8::from(cache.direct())),
        format!("--sync={sync}"),
    ]
}

pub(crate) fn fio_case(cluster: &mut EmuCluster, case: &FioCase<'_>) -> anyhow::Result<FioResult> {
    let (image, rw, qd, runtime) = (case.image, case.rw, case.qd, case.runtime);
    let mut cmd = cluster.command("fio");
    cmd.args([
        "--name=rustbk-peer",
        "--ioengine=io_uring",
        "--bs=4k",
        "--time_based",
    ])
    .args(fio_cache_args(case.cache))
    .arg(format!("--filename={}", image.display()))
    .arg(format!("--rw={rw}"))
    .arg(format!("--iodepth={qd}"))
    .arg(format!("--runtime={runtime}s"))
    .arg("--output-format=json");
    if case.poll {
        cmd.arg("--iodepth_batch_complete_min=0");
    }
    let (out, log) = run_logged(cluster, cmd, "fio")?;
    if !out.status.success() {
        bail!(
            "fio failed ({}); last lines of {}:\n{}",
            out.status,
            log.display(),
            supervise::log_tail(&log, supervise::TAIL_LINES)
        );
    }
    parse_fio(
        &out.stdout,
        if rw.contains("read") { "read" } else { "write" },
    )
}

fn parse_fio(json: &[u8], dir: &str) -> anyhow::Result<FioResult> {
    let v: serde_json::Value = serde_json::from_slice(json).context("fio printed no JSON")?;
    let job = &v["jobs"][0][dir];
    let iops = job["iops"].as_f64().context("fio JSON has no iops")?;
    let p99_ns = job["clat_ns"]["percentile"]["99.000000"]
        .as_f64()
        .unwrap_or(0.0);
    Ok(FioResult {
        iops,
        p99_us: p99_ns / 1000.0,
    })
}

/// Prints `report` as JSON with `json`, else the table `table` writes.
pub(crate) fn print_report<T: Serialize + ?Sized>(
    report: &T,
    json: bool,
    table: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, report)?;
        writeln!(out)?;
    } else {
        table(&mut out)?;
    }
    Ok(())
}

fn print_rows(rows: &[Row], json: bool) -> anyhow::Result<()> {
    print_report(rows, json, |out| table_of_rows(out, rows))
}

fn table_of_rows(out: &mut dyn Write, rows: &[Row]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<14} {:>4} {:>12} {:>12} {:>12} {:>12} {:>12}",
        "workload", "qd", "rustbk IOPS", "fio IOPS", "rustbk/fio", "rustbk p99", "fio p99"
    )?;
    for r in rows {
        writeln!(
            out,
            "{:<14} {:>4} {:>12.0} {:>12.0} {:>12.2} {:>10.0}us {:>10.0}us",
            r.workload, r.qd, r.rustbk_iops, r.fio_iops, r.ratio, r.rustbk_p99_us, r.fio_p99_us
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{cases, fio_cache_args, parse_fio, ring_order_for};
    use crate::cli::BenchArgs;
    use clap::Parser;
    use rustbk_formats::CacheMode;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn depths(args: &[&str]) -> Result<Vec<u32>, clap::Error> {
        let argv = std::iter::once("bench").chain(args.iter().copied());
        Cli::try_parse_from(argv).map(|c| c.bench.depths)
    }

    #[test]
    fn depths_default_to_1_and_32_and_are_measured_reads_first() {
        assert_eq!(depths(&[]).unwrap(), vec![1, 32]);
        let given = depths(&["--depths", "1,4,32"]).unwrap();
        let expected = [
            ("randread", 1),
            ("randread", 4),
            ("randread", 32),
            ("randwrite", 1),
            ("randwrite", 4),
            ("randwrite", 32),
        ];
        assert_eq!(cases(&given), expected);
        assert!(depths(&["--depths", "0"]).is_err(), "depth 0");
        assert!(
            depths(&["--depths", "4,513"]).is_err(),
            "past a ring of order 4"
        );
        assert!(
            depths(&["--data-paths", "--depths", "4"]).is_err(),
            "data paths are compared at depth 32"
        );
        assert_eq!(depths(&["--null", "--depths", "2"]).unwrap(), vec![2]);
    }

    #[test]
    fn the_guest_asks_for_a_ring_that_holds_the_depth() {
        let orders: Vec<u32> = [1, 32, 33, 64, 65, 256, 512].map(ring_order_for).to_vec();
        assert_eq!(orders, [0, 0, 1, 1, 2, 3, 4]);
    }

    #[test]
    fn fio_opens_the_file_as_the_cache_mode_says() {
        assert_eq!(
            fio_cache_args(CacheMode::None),
            ["--direct=1", "--sync=none"]
        );
        assert_eq!(
            fio_cache_args(CacheMode::Writeback),
            ["--direct=0", "--sync=none"]
        );
        assert_eq!(
            fio_cache_args(CacheMode::Writethrough),
            ["--direct=0", "--sync=dsync"]
        );
        assert_eq!(
            fio_cache_args(CacheMode::DirectSync),
            ["--direct=1", "--sync=dsync"]
        );
        assert_eq!(
            fio_cache_args(CacheMode::Unsafe),
            ["--direct=0", "--sync=none"]
        );
    }

    #[test]
    fn fio_json_is_parsed_for_the_right_direction() {
        let json = br#"{"jobs":[{"read":{"iops":1234.5,"clat_ns":{"percentile":{"99.000000":56000}}},"write":{"iops":0}}]}"#;
        let r = parse_fio(json, "read").unwrap();
        assert_eq!(r.iops, 1234.5);
        assert_eq!(r.p99_us, 56.0);
        assert!(parse_fio(b"not json", "read").is_err());
    }
}
