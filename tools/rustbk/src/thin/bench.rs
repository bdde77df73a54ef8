//! `rustbk thin bench`: a thin volume against a raw file on the same file system, through the
//! emulated guest (4 KiB random, queue depth 32), and its allocating writes against rustbk's
//! qcow2 and `qemu-img bench`. Every round of every case is printed, with the medians.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, ensure};
use clap::Args;
use rustbk_blkfront::toolstack::VbdSpec;
use rustbk_ring::DomId;
use rustbk_thin::dir::{Devices, PoolDir, Preallocation};
use rustbk_thin::pool::{PoolOptions, VolumeSpec};
use serde::Serialize;

use super::bench_files::Files;
use super::bench_fs::Ceiling;
use super::{bench_meta, bench_snap};
use crate::cli::{parse_image_size, parse_runtime};
use crate::cluster::EmuCluster;
use crate::cmd::bench::{rustbk_case, write_image};
use crate::img::OutputArg;
use crate::supervise::{self, WorkDir};

const XVDA: u32 = 51712;
const QD: u32 = 32;
/// Size of the volumes and images that allocating writes go to: large enough that a run's
/// writes almost never land twice in one 64 KiB block.
const ALLOC_SIZE: u64 = 64 << 30;
const BLOCK: u64 = 64 << 10;
/// Size of the pool and volume of the first writes into a data file preallocated with zeros
/// (written anew every round, so it stays small), and the longest such run: at 20K IOPS
/// about 80% of a run's writes are first writes into a block.
const FULL_SIZE: u64 = 8 << 30;
const FULL_RUNTIME: f64 = 3.0;

/// `rustbk thin bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Size of the raw file and of the provisioned thin volume read and overwritten.
    #[arg(long, default_value = "1g", value_parser = parse_image_size)]
    pub size: u64,
    /// Seconds per run.
    #[arg(long, default_value_t = 10.0, value_parser = parse_runtime)]
    pub runtime: f64,
    /// Rounds; every case runs once per round, alternating with its peer.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
    /// Measure only this part (default: all of them).
    #[arg(long, value_enum)]
    pub only: Option<Part>,
    /// Keep the work folder.
    #[arg(long)]
    pub keep: bool,
    /// The workers of the first-write cases open their pool themselves (`serve
    /// --no-thin-service`) instead of going through a pool service: no socket round trip.
    #[arg(long)]
    pub no_thin_service: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputArg::Human)]
    pub output: OutputArg,
}

/// A part of the benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// The guest I/O cases.
    Io,
    /// Only the first-write cases (sparse and full data file) and their raw peer.
    FirstWrites,
    /// Only the reads and overwrites of provisioned blocks and their raw peer.
    Provisioned,
    /// Live snapshots through the pool service while the guest writes.
    Snapshots,
    /// Snapshot times, metadata space and check times without a guest.
    Metadata,
}

/// One case: rustbk's thin volume and its peer, every round.
#[derive(Debug, Serialize)]
pub struct Case {
    /// What is measured.
    pub case: String,
    /// The peer.
    pub peer: String,
    /// Thin volume IOPS, each round.
    pub thin_iops: Vec<f64>,
    /// Peer IOPS, each round.
    pub peer_iops: Vec<f64>,
    /// Median thin IOPS over median peer IOPS.
    pub ratio: f64,
}

/// Everything measured.
#[derive(Debug, Serialize)]
pub struct Results {
    /// The guest I/O cases.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub io: Vec<Case>,
    /// Milliseconds of each live snapshot of a 1 GiB volume taken through the pool service
    /// while the emulated guest writes into it, as the admin asking for it waits (pause,
    /// snapshot, commit).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub guest_snapshot_ms_1g: Vec<f64>,
    /// The same for a 1 TiB (sparse) volume.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub guest_snapshot_ms_1t: Vec<f64>,
    /// Milliseconds the 1 GiB volume's worker was held still by each snapshot, from the
    /// pause request to the resume: the guest's stall.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub guest_held_ms_1g: Vec<f64>,
    /// The same for the 1 TiB volume.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub guest_held_ms_1t: Vec<f64>,
    /// Snapshot times, metadata space and check times.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<bench_meta::MetaResults>,
    /// fio's first writes into preallocated space against its overwrites of the raw file:
    /// the file system's bound on the first-write ratio.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fs_ceiling: Option<Ceiling>,
    /// fio's reads and overwrites on the pool's data file and on the raw file: how alike the
    /// two files the provisioned cases compare are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<Files>,
}

/// Runs `rustbk thin bench`.
pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    supervise::handle_signals("thin bench")?;
    let work = WorkDir::create("rustbk-thin-bench-", args.keep)?;
    let result = measure(&args, work.path());
    let kept = work.finish(result.is_ok());
    let results = result.with_context(|| match &kept {
        Some(k) => format!("thin bench failed (logs kept in {})", k.display()),
        None => "thin bench failed".into(),
    })?;
    match args.output {
        OutputArg::Json => println!("{}", serde_json::to_string_pretty(&results)?),
        OutputArg::Human => print_human(&results),
    }
    Ok(ExitCode::SUCCESS)
}

fn measure(args: &BenchArgs, dir: &Path) -> anyhow::Result<Results> {
    let exe = std::env::current_exe()?;
    let mut cluster = EmuCluster::start_grouped(&exe, dir)?;
    let wants = |part: Part| args.only.is_none_or(|only| only == part);
    let mut results = Results {
        io: Vec::new(),
        guest_snapshot_ms_1g: Vec::new(),
        guest_snapshot_ms_1t: Vec::new(),
        guest_held_ms_1g: Vec::new(),
        guest_held_ms_1t: Vec::new(),
        metadata: None,
        fs_ceiling: None,
        files: None,
    };
    let mut ceiling = Ceiling::default();
    let mut files = Files::default();
    if wants(Part::Io) {
        results.io = io_cases(&mut cluster, args, dir, (&mut ceiling, &mut files))?;
    }
    if args.only == Some(Part::FirstWrites) {
        results.io = first_write_cases(&mut cluster, args, dir, &mut ceiling)?;
    }
    if args.only == Some(Part::Provisioned) {
        results.io = provisioned_cases(&mut cluster, args, dir, &mut files)?;
    }
    if !ceiling.written_iops.is_empty() {
        results.fs_ceiling = Some(ceiling);
    }
    if !files.raw_read_iops.is_empty() {
        results.files = Some(files);
    }
    if wants(Part::Snapshots) {
        let small = bench_snap::through_guest(&mut cluster, 6, 1 << 30)?;
        let large = bench_snap::through_guest(&mut cluster, 7, 1 << 40)?;
        (results.guest_snapshot_ms_1g, results.guest_held_ms_1g) = (small.total_ms, small.held_ms);
        (results.guest_snapshot_ms_1t, results.guest_held_ms_1t) = (large.total_ms, large.held_ms);
    }
    if wants(Part::Metadata) {
        results.metadata = Some(bench_meta::measure(&dir.join("meta"))?);
    }
    Ok(results)
}

/// The disks of the I/O cases, and the service of the provisioned volume's pool.
struct Disks {
    raw: VbdSpec,
    provisioned: VbdSpec,
    service: bench_snap::Service,
    /// The raw file, and the provisioned volume's pool's data file.
    files: (PathBuf, PathBuf),
}

impl Disks {
    /// Takes the thin disk away and stops its pool service, so that the pool's files are
    /// closed when the work folder goes.
    fn finish(mut self, cluster: &mut EmuCluster) -> anyhow::Result<()> {
        cluster.remove_disk(&self.provisioned)?;
        self.service.stop()
    }
}

fn disk(domid: u16, params: String) -> VbdSpec {
    VbdSpec::rustbk(DomId(domid), XVDA, params)
}

/// A written raw file and a fully provisioned thin volume of `size` bytes in `dir`, both
/// served. The two files lie on different parts of the disk beneath: see
/// [`super::bench_files`] for how alike they are.
fn serve_raw_and_provisioned(
    cluster: &mut EmuCluster,
    size: u64,
    dir: &Path,
) -> anyhow::Result<Disks> {
    let raw = write_image(&dir.join("raw.img"), size)?;
    let pool = PoolDir::new(dir.join("pool-a"));
    let provisioned = provisioned_volume(&pool.path, size)?;
    let disks = Disks {
        raw: disk(1, raw.display().to_string()),
        provisioned: disk(2, provisioned),
        service: bench_snap::Service::start(cluster, &pool)?,
        files: (raw, pool.data()),
    };
    cluster.add_disk(&disks.raw, &[])?;
    cluster.add_disk(&disks.provisioned, &[])?;
    Ok(disks)
}

fn io_cases(
    cluster: &mut EmuCluster,
    args: &BenchArgs,
    dir: &Path,
    (ceiling, files): (&mut Ceiling, &mut Files),
) -> anyhow::Result<Vec<Case>> {
    let disks = serve_raw_and_provisioned(cluster, args.size, dir)?;
    let (raw, data) = (&disks.files.0, &disks.files.1);
    let mut cases = new_cases();
    for round in 0..args.rounds {
        one_round(cluster, &disks, round, args, &mut cases)?;
        ceiling.measure(cluster, raw, args.runtime)?;
        files.measure(cluster, (data, raw), args.runtime)?;
    }
    disks.finish(cluster)?;
    set_ratios(&mut cases);
    Ok(cases)
}

/// Reads and overwrites of a fully provisioned volume alone, each round against the raw
/// file (each first in every other round).
fn provisioned_cases(
    cluster: &mut EmuCluster,
    args: &BenchArgs,
    dir: &Path,
    files: &mut Files,
) -> anyhow::Result<Vec<Case>> {
    let disks = serve_raw_and_provisioned(cluster, args.size, dir)?;
    let mut cases: Vec<Case> = new_cases().into_iter().take(2).collect();
    for round in 0..args.rounds {
        provisioned_round(cluster, &disks, (round, args.runtime), &mut cases)?;
        let (raw, data) = (&disks.files.0, &disks.files.1);
        files.measure(cluster, (data, raw), args.runtime)?;
        report_round(round, ["read", "overwrite"], &cases);
    }
    disks.finish(cluster)?;
    set_ratios(&mut cases);
    Ok(cases)
}

/// One round of reads and overwrites: `cases[0]` and `cases[1]`.
/// The volume goes first in even rounds and the raw file in odd ones: a run's writes can
/// leave the host's disk busy for the run after it.
fn provisioned_round(
    cluster: &mut EmuCluster,
    disks: &Disks,
    (round, t): (u32, f64),
    cases: &mut [Case],
) -> anyhow::Result<()> {
    let run = |c: &mut EmuCluster, spec: &VbdSpec, rw: &str| -> anyhow::Result<f64> {
        Ok(rustbk_case(c, (spec.domid.0, XVDA), (rw, QD), t, 1)?.iops)
    };
    for (case, rw) in cases.iter_mut().zip(["randread", "randwrite"]) {
        if round % 2 == 0 {
            case.thin_iops.push(run(cluster, &disks.provisioned, rw)?);
            case.peer_iops.push(run(cluster, &disks.raw, rw)?);
        } else {
            case.peer_iops.push(run(cluster, &disks.raw, rw)?);
            case.thin_iops.push(run(cluster, &disks.provisioned, rw)?);
        }
    }
    Ok(())
}

/// The two first-write cases alone, each round against the raw file.
fn first_write_cases(
    cluster: &mut EmuCluster,
    args: &BenchArgs,
    dir: &Path,
    ceiling: &mut Ceiling,
) -> anyhow::Result<Vec<Case>> {
    let raw_path = write_image(&dir.join("raw.img"), args.size)?;
    let raw = disk(1, raw_path.display().to_string());
    cluster.add_disk(&raw, &[])?;
    let mut cases: Vec<Case> = new_cases().into_iter().skip(2).take(2).collect();
    let t = args.runtime;
    for round in 0..args.rounds {
        let runs = [
            (Preallocation::Off, t),
            (Preallocation::Full, t.min(FULL_RUNTIME)),
        ];
        for (case, (prealloc, t)) in cases.iter_mut().zip(runs) {
            case.thin_iops.push(fresh_thin_writes(
                cluster,
                (round, t),
                prealloc,
                args.no_thin_service,
            )?);
            let peer = rustbk_case(cluster, (raw.domid.0, XVDA), ("randwrite", QD), t, 1)?;
            case.peer_iops.push(peer.iops);
        }
        ceiling.measure(cluster, &raw_path, t)?;
        report_round(round, ["first", "full"], &cases);
    }
    set_ratios(&mut cases);
    Ok(cases)
}

/// Prints what the first two cases measured in round `round` (thin/peer IOPS).
fn report_round(round: u32, names: [&str; 2], cases: &[Case]) {
    let r = round as usize;
    let iops = |c: &Case| (c.thin_iops[r], c.peer_iops[r]);
    let ((a, b), (c, d)) = (iops(&cases[0]), iops(&cases[1]));
    let [x, y] = names;
    eprintln!(
        "  round {}: {x} {a:.0}/{b:.0}, {y} {c:.0}/{d:.0}",
        round + 1
    );
}

/// Sets each case's ratio: median thin IOPS over median peer IOPS.
fn set_ratios(cases: &mut [Case]) {
    for case in cases {
        case.ratio = median(&case.thin_iops) / median(&case.peer_iops).max(f64::MIN_POSITIVE);
    }
}

fn new_cases() -> Vec<Case> {
    let case = |case: &str, peer: &str| Case {
        case: case.into(),
        peer: peer.into(),
        thin_iops: Vec::new(),
        peer_iops: Vec::new(),
        ratio: 0.0,
    };
    vec![
        case("randread 4k qd32, provisioned blocks", "raw file"),
        case("randwrite 4k qd32, overwrites", "raw file"),
        case("randwrite 4k qd32, first writes", "raw file"),
        case("first writes, full data file", "raw file"),
        case(
            "randwrite 4k qd32, allocating",
            "rustbk qcow2 (64 KiB clusters)",
        ),
        case("allocating 4k writes qd32", "qemu-img bench on qcow2"),
    ]
}

fn one_round(
    cluster: &mut EmuCluster,
    disks: &Disks,
    round: u32,
    args: &BenchArgs,
    cases: &mut [Case],
) -> anyhow::Result<()> {
    let t = args.runtime;
    let run = |c: &mut EmuCluster, spec: &VbdSpec, rw: &str| -> anyhow::Result<f64> {
        Ok(rustbk_case(c, (spec.domid.0, XVDA), (rw, QD), t, 1)?.iops)
    };
    provisioned_round(cluster, disks, (round, t), cases)?;
    let first = fresh_thin_writes(
        cluster,
        (round, t),
        Preallocation::Off,
        args.no_thin_service,
    )?;
    cases[2].thin_iops.push(first);
    cases[2]
        .peer_iops
        .push(run(cluster, &disks.raw, "randwrite")?);
    let full_t = t.min(FULL_RUNTIME);
    cases[3].thin_iops.push(fresh_thin_writes(
        cluster,
        (round, full_t),
        Preallocation::Full,
        args.no_thin_service,
    )?);
    cases[3].peer_iops.push(
        rustbk_case(
            cluster,
            (disks.raw.domid.0, XVDA),
            ("randwrite", QD),
            full_t,
            1,
        )?
        .iops,
    );
    cases[4].thin_iops.push(first);
    cases[4]
        .peer_iops
        .push(fresh_qcow2_writes(cluster, round, t)?);
    cases[5].thin_iops.push(first);
    cases[5]
        .peer_iops
        .push(qemu_img_bench(cluster.dir(), round, t)?);
    eprintln!(
        "  round {}: read {:.0}/{:.0}, overwrite {:.0}/{:.0}, first {:.0}/{:.0}, full {:.0}/{:.0}, qcow2 {:.0}, qemu-img {:.0}",
        round + 1,
        cases[0].thin_iops[round as usize],
        cases[0].peer_iops[round as usize],
        cases[1].thin_iops[round as usize],
        cases[1].peer_iops[round as usize],
        first,
        cases[2].peer_iops[round as usize],
        cases[3].thin_iops[round as usize],
        cases[3].peer_iops[round as usize],
        cases[4].peer_iops[round as usize],
        cases[5].peer_iops[round as usize],
    );
    Ok(())
}

/// A pool whose volume 0 of `size` is written end to end (every block provisioned).
fn provisioned_volume(path: &Path, size: u64) -> anyhow::Result<String> {
    let dir = PoolDir::new(path);
    let devices = Devices::Files {
        metadata: 64 << 20,
        data: size,
    };
    let pool = dir.create(&devices, BLOCK, PoolOptions::default())?;
    let spec = VolumeSpec {
        size,
        ..VolumeSpec::default()
    };
    pool.create_volume(0, spec)?;
    bench_meta::fill_volume(&pool, 0, size)?;
    Ok(format!("thin:{}:0", path.display()))
}

/// Random writes to a new, unprovisioned volume of a new pool, removed afterwards (every
/// first write takes a whole block of the file system). With `Preallocation::Full` the
/// pool is [`FULL_SIZE`] on a data file written with zeros first (not timed).
fn fresh_thin_writes(
    cluster: &mut EmuCluster,
    (round, runtime): (u32, f64),
    prealloc: Preallocation,
    local: bool,
) -> anyhow::Result<f64> {
    let pool = PoolDir::new(cluster.dir().join(format!("pool-b{round}")));
    let size = match prealloc {
        Preallocation::Off => ALLOC_SIZE,
        Preallocation::Full => FULL_SIZE,
    };
    let devices = Devices::Files {
        metadata: 256 << 20,
        data: size,
    };
    let spec = VolumeSpec {
        size,
        ..VolumeSpec::default()
    };
    pool.create_with(
        &devices,
        BLOCK,
        PoolOptions::default(),
        prealloc,
        &mut |_, _| {},
    )?
    .create_volume(0, spec)?;
    let spec = disk(3, format!("thin:{}:0", pool.path.display()));
    let (args, mut service): (&[&str], _) = match local {
        true => (&["--no-thin-service"], None),
        false => (&[], Some(bench_snap::Service::start(cluster, &pool)?)),
    };
    let iops = fresh_disk_run(cluster, &spec, runtime, args)?;
    if let Some(service) = service.as_mut() {
        service.stop()?;
    }
    std::fs::remove_dir_all(&pool.path)?;
    Ok(iops)
}

/// Random writes to a new, empty qcow2 image.
fn fresh_qcow2_writes(cluster: &mut EmuCluster, round: u32, runtime: f64) -> anyhow::Result<f64> {
    let path = cluster.dir().join(format!("alloc-{round}.qcow2"));
    let opts = rustbk_formats::qcow2::CreateOptions::default();
    rustbk_formats::qcow2::create(&path, ALLOC_SIZE, &opts)?;
    let spec = disk(4, format!("qcow2:{}", path.display()));
    let iops = fresh_disk_run(cluster, &spec, runtime, &[])?;
    std::fs::remove_file(&path)?;
    Ok(iops)
}

fn fresh_disk_run(
    cluster: &mut EmuCluster,
    spec: &VbdSpec,
    runtime: f64,
    args: &[&str],
) -> anyhow::Result<f64> {
    cluster.add_disk(spec, args)?;
    let report = rustbk_case(cluster, (spec.domid.0, XVDA), ("randwrite", QD), runtime, 1)?;
    cluster.remove_disk(spec)?;
    Ok(report.iops)
}

/// `qemu-img bench` writing 4 KiB into a new 64 KiB cluster each time, at depth 32, with
/// O_DIRECT and Linux AIO, for about `runtime` seconds.
fn qemu_img_bench(dir: &Path, round: u32, runtime: f64) -> anyhow::Result<f64> {
    let path: PathBuf = dir.join(format!("qemu-{round}.qcow2"));
    let created = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&path)
        .arg(ALLOC_SIZE.to_string())
        .status()
        .context("qemu-img is not installed (scripts/setup.sh installs it)")?;
    ensure!(created.success(), "qemu-img create failed");
    // About four writes a millisecond: qemu-img bench runs by count, not by time.
    let millis = std::time::Duration::from_secs_f64(runtime).as_millis();
    let count = u64::try_from(millis.saturating_mul(4))
        .unwrap_or(u64::MAX)
        .max(1000);
    let start = std::time::Instant::now();
    let out = Command::new("qemu-img")
        .args([
            "bench", "-f", "qcow2", "-w", "-t", "none", "-i", "native", "-s", "4096",
        ])
        .args([
            "-S",
            &BLOCK.to_string(),
            "-d",
            &QD.to_string(),
            "-c",
            &count.to_string(),
        ])
        .arg(&path)
        .output()?;
    let seconds = start.elapsed().as_secs_f64();
    ensure!(
        out.status.success(),
        "qemu-img bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_file(&path)?;
    let reported = parse_qemu_seconds(&String::from_utf8_lossy(&out.stdout)).unwrap_or(seconds);
    Ok(count as f64 / reported)
}

/// The seconds in qemu-img bench's "Run completed in N seconds." line.
fn parse_qemu_seconds(out: &str) -> Option<f64> {
    let line = out.lines().find(|l| l.starts_with("Run completed in"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

pub(super) fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(0.0)
}

fn print_human(r: &Results) {
    if !r.io.is_empty() {
        print_io(&r.io);
    }
    if let Some(ceiling) = &r.fs_ceiling {
        ceiling.print_human();
    }
    if let Some(files) = &r.files {
        files.print_human();
    }
    if !r.guest_snapshot_ms_1g.is_empty() {
        println!(
            "live snapshot through the pool service, guest writing, 1 GiB volume (ms): {}",
            bench_meta::ms_list(&r.guest_snapshot_ms_1g)
        );
        println!(
            "live snapshot through the pool service, guest writing, 1 TiB volume (ms): {}",
            bench_meta::ms_list(&r.guest_snapshot_ms_1t)
        );
        println!(
            "  of which the guest's worker was held still, 1 GiB volume (ms): {}",
            bench_meta::ms_list(&r.guest_held_ms_1g)
        );
        println!(
            "  of which the guest's worker was held still, 1 TiB volume (ms): {}",
            bench_meta::ms_list(&r.guest_held_ms_1t)
        );
    }
    if let Some(metadata) = &r.metadata {
        bench_meta::print_human(metadata);
    }
}

fn print_io(io: &[Case]) {
    println!(
        "{:<40} {:<32} {:>8}  rounds (thin / peer IOPS)",
        "case", "peer", "ratio"
    );
    for c in io {
        print_row(&c.case, &c.peer, c.ratio, (&c.thin_iops, &c.peer_iops));
    }
}

/// One row of the I/O table: the case, its peer, the ratio and every round's IOPS.
pub(super) fn print_row(case: &str, peer: &str, ratio: f64, (ours, theirs): (&[f64], &[f64])) {
    let rounds: Vec<String> = (ours.iter())
        .zip(theirs)
        .map(|(t, p)| format!("{t:.0}/{p:.0}"))
        .collect();
    println!("{case:<40} {peer:<32} {ratio:>7.2}x  {}", rounds.join("  "));
}
