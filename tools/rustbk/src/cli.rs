//! Command-line syntax (clap derive). Each command turns its arguments into a config.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use rustbk_backend::qos::QosLimits;
use rustbk_backend::worker::DataPath;
use rustbk_backend::xenbus::DEFAULT_FIXED_BUFFERS;
use rustbk_formats::CacheMode;

/// rustbk: a Xen block backend in Rust.
#[derive(Debug, Parser)]
#[command(name = "rustbk", version, about)]
pub struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve one guest's disks (or one disk): the worker process the daemon starts.
    Serve(ServeArgs),
    /// Watch xenstore and serve every disk rustbk claims, one worker process per guest.
    /// Settings come from /etc/rustbk/rustbk.toml (or --config) and then the command line.
    #[command(args_override_self = true)]
    Daemon(DaemonArgs),
    /// Components of the ring emulator.
    #[command(subcommand)]
    Emu(EmuCommand),
    /// Run a verifying workload on an emulated guest: xenstored, backend and guest processes.
    Demo(DemoArgs),
    /// Measure rustbk against fio (io_uring, O_DIRECT) on the same file in the same run; with
    /// `--null`, the backend's own CPU cost per request on a null disk.
    Bench(BenchArgs),
    /// Soak test: the daemon serving many emulated guests with verifying workloads while
    /// workers are killed, guests reboot and disks come and go; checks that nothing leaks.
    Soak(SoakArgs),
    /// Image tools with qemu-img's conventions: create, info, check, convert, compare, map, resize.
    Img(crate::img::ImgArgs),
    /// Thin pools in dm-thin's metadata format: pools, volumes, snapshots, and the metadata
    /// tools of thin-provisioning-tools (check, dump, restore).
    Thin(crate::thin::ThinArgs),
    /// Runtime control of the workers, in the manner of tap-ctl: list, stats, pause, unpause,
    /// close, Prometheus metrics.
    Ctl(crate::ctl::CtlArgs),
    /// XAPI SMAPIv3 plugins, as xapi-storage-script runs them: `smapi volume SR.create --json`
    /// with the call's arguments as JSON on stdin (see /usr/libexec/xapi-storage-script/).
    Smapi(crate::smapi::SmapiArgs),
    /// Write the manual pages (roff) of every command into a folder, for packaging.
    #[command(hide = true)]
    Man {
        /// The folder.
        #[arg(long)]
        out: PathBuf,
    },
}

/// Emulator components.
#[derive(Debug, Subcommand)]
pub enum EmuCommand {
    /// A xenstore daemon speaking the real wire protocol on a unix socket.
    Xenstored {
        /// Socket path; introduced domain N gets `<PATH>.d<N>`.
        #[arg(long)]
        socket: PathBuf,
    },
    /// An emulated guest: a blkfront-like frontend running a workload.
    Guest(GuestArgs),
}

/// I/O engine choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EngineArg {
    /// io_uring if the kernel allows it, else synchronous.
    Auto,
    /// io_uring.
    IoUring,
    /// Synchronous system calls.
    Sync,
}

/// Where guests are reached.
#[derive(Clone, Debug, Args)]
pub struct PlatformArgs {
    /// Serve emulated guests whose endpoints live in this folder (the ring emulator) instead of
    /// real Xen guests through /dev/xen/gntdev and /dev/xen/evtchn.
    #[arg(long)]
    pub emu_dir: Option<PathBuf>,
    /// The backend's own domain id.
    #[arg(long, default_value_t = 0)]
    pub backend_domid: u16,
    /// Backend kind under backend/ to serve (repeatable; default both vbd and vbd3). `vbd` is
    /// where xl's `phy` and `rustbk` disks go (and where Linux blkback looks); `vbd3` is where
    /// libxl 4.19+'s `backendtype=tap` disks and XAPI's `backend_type: vbd3` XenDisks go (and
    /// where blktap3's tapback looks). A disk is served only if it is claimed (--claim-*).
    /// `rustbk serve --devid` without --backend-path looks under the first kind.
    #[arg(
        long = "kind",
        value_name = "KIND",
        default_values_t = rustbk_backend::xenbus::DEFAULT_KINDS.map(String::from),
        value_parser = parse_kind
    )]
    pub kinds: Vec<String>,
    /// Folder of the per-guest lock files and the rings' request journals (default /run/rustbk,
    /// or the emulator folder).
    #[arg(long)]
    pub lock_dir: Option<PathBuf>,
    /// Claim a vbd whose backend `script` is NAME or a path ending in /NAME (repeatable;
    /// default rustbk, what xl's `script=rustbk` writes).
    #[arg(long = "claim-script", value_name = "NAME")]
    pub claim_scripts: Vec<String>,
    /// Claim a vbd whose backend `type` or `sm-data/type` is NAME (repeatable; default rustbk:
    /// what a libxl that knows `backendtype=rustbk` writes as `type`, and what rustbk's XAPI
    /// datapath plugin puts in its XenDisk's `extra`, which xenopsd writes under `sm-data/`).
    #[arg(long = "claim-type", value_name = "NAME")]
    pub claim_types: Vec<String>,
}

/// Tunables of the backend.
#[derive(Clone, Debug, Args)]
pub struct BackendArgs {
    /// I/O engine.
    #[arg(long, value_enum, default_value_t = EngineArg::Auto)]
    pub engine: EngineArg,
    /// Cache mode of disks whose backend directory has no `cache-mode` key, QEMU's names:
    /// none (O_DIRECT), writeback (page cache), writethrough (page cache, O_DSYNC: every
    /// write durable when it completes), directsync (O_DIRECT and O_DSYNC) or unsafe (page
    /// cache, flushes do nothing: scratch disks only, a host crash may corrupt them). A flush
    /// is an fdatasync in every mode but unsafe.
    #[arg(long, value_name = "MODE", default_value_t = CacheMode::None)]
    pub cache: CacheMode,
    /// Same as `--cache writeback`.
    #[arg(long, conflicts_with = "cache")]
    pub buffered: bool,
    /// Do not offer persistent grants.
    #[arg(long)]
    pub no_persistent: bool,
    /// How disks whose backend directory has no `data-path` key reach the guest's data: map
    /// (map the granted pages and do I/O straight into them, keeping them mapped with
    /// persistent grants) or copy (grant-copy between the guest's pages and the worker's own
    /// bounce buffers, as tapdisk and QEMU's qdisk do; feature-persistent is not offered).
    #[arg(long, value_name = "PATH", default_value = "map", value_parser = parse_data_path)]
    pub data_path: DataPath,
    /// Register persistently mapped pages as the ring's io_uring fixed buffers and read or
    /// write one-page requests on them with READ_FIXED/WRITE_FIXED: on or off.
    #[arg(long, value_name = "on|off", default_value = on_off(DEFAULT_FIXED_BUFFERS),
          value_parser = parse_on_off, action = clap::ArgAction::Set)]
    pub fixed_buffers: bool,
    /// Open a thin pool in the worker itself (locking it: one served volume) when no pool
    /// service serves it, instead of starting `rustbk thin serve` for it.
    #[arg(long)]
    pub no_thin_service: bool,
    /// Most persistent grants each ring keeps mapped (Linux blkback's max_persistent_grants);
    /// when full, the least recently used 5% that no request holds are unmapped. Default: a
    /// full ring of the largest requests offered (data and indirect pages), at least 1056
    /// and at most 8192.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1 << 20))]
    pub max_persistent_grants: Option<u32>,
    /// Unmap persistent grants left unused this many seconds, checked at most once a second, so
    /// idle disks give their guest's grant table back (Linux blkback's
    /// persistent_grant_unused_seconds); 0 keeps them while the ring is connected.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub persistent_grant_unused_secs: u32,
    /// Largest ring page order offered (0..=4).
    #[arg(long, default_value_t = rustbk_ring::MAX_RING_PAGE_ORDER, value_parser = parse_ring_order)]
    pub max_ring_order: u32,
    /// Most rings (queues) a guest's disk may use (`multi-queue-max-queues`), each served by
    /// its own thread and io_uring (1..=256). Default: the number of cores.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub max_queues: Option<u32>,
    /// Indirect segments offered (0 disables indirect requests; at most 4096).
    #[arg(long, default_value_t = rustbk_ring::DEFAULT_MAX_INDIRECT_SEGMENTS,
          value_parser = clap::value_parser!(u32).range(0..=4096))]
    pub max_indirect_segments: u32,
    /// Most microseconds a ring worker busy-polls for work before sleeping (0 disables
    /// polling). The window adapts, as QEMU's event-loop polling does: it grows while waits
    /// end within this time, shrinks when they outlast it, and drops to zero when the worker
    /// loses its core while spinning (cores shared with the guests).
    #[arg(long, default_value_t = rustbk_backend::xenbus::DEFAULT_POLL_US)]
    pub poll_us: u32,
    /// Busy-poll even while the machine's runnable threads outnumber its CPUs (by default
    /// polling stops then, since a spinning worker takes a core the guests need): for hosts
    /// whose backend threads have cores of their own.
    #[arg(long)]
    pub poll_shared_cores: bool,
    /// Logical sector size announced to guests (512 or 4096) for disks whose `params` does not
    /// choose one (`raw,sector-size=4096:/path`).
    #[arg(long, default_value_t = 512, value_parser = parse_sector_size)]
    pub sector_size: u32,
    /// A folder where backing files named inside qcow2 images may lie, it and below
    /// (repeatable). Without it, only each image's own folder and below. Symlinks are resolved
    /// before the check; device nodes and protocol names (`nbd:`, `json:`) are always refused,
    /// and a backing file's format must be named in the image (it is never probed).
    #[arg(long = "backing-dir", value_name = "DIR")]
    pub backing_dirs: Vec<PathBuf>,
    /// A folder the images and thin pools named by a disk's `params` must lie in, it and below
    /// (repeatable; symlinks resolved). Without it, any path the toolstack names.
    #[arg(long = "image-dir", value_name = "DIR")]
    pub image_dirs: Vec<PathBuf>,
    /// I/O limits of disks whose backend directory has no `qos/` key: comma-separated
    /// KEY=VALUE with QEMU's throttle names, e.g. `iops-total=500,bps-total=52428800`. Keys:
    /// iops-total, iops-read, iops-write (requests/s), bps-total, bps-read, bps-write
    /// (bytes/s), each also as KEY-max (burst rate) and KEY-max-length (burst seconds), and
    /// iops-size (bytes a request counts as one for the iops limits). A total limit excludes
    /// its read and write limits. Default: none.
    #[arg(long, value_name = "LIST", value_parser = parse_qos)]
    pub qos: Option<QosLimits>,
}

fn parse_data_path(s: &str) -> Result<DataPath, String> {
    s.parse()
}

/// The flag value of a switch.
pub const fn on_off(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("{other:?} is neither on nor off")),
    }
}

impl BackendArgs {
    /// The default cache mode of the disks: `--cache`, or `writeback` with `--buffered`.
    pub fn cache_mode(&self) -> CacheMode {
        match self.buffered {
            true => CacheMode::Writeback,
            false => self.cache,
        }
    }
}

/// `rustbk serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The guest's domain id.
    #[arg(long)]
    pub domid: u16,
    /// Serve only this virtual device (51712 = xvda), whether claimed or not. Without it, every
    /// disk of the guest that rustbk claims is served, including disks attached later.
    #[arg(long)]
    pub devid: Option<u32>,
    /// The backend directory of `--devid` (default /local/domain/<backend>/backend/vbd/<domid>/<devid>).
    #[arg(long, requires = "devid")]
    pub backend_path: Option<String>,
    /// Where guests are.
    #[command(flatten)]
    pub platform: PlatformArgs,
    /// Backend tunables.
    #[command(flatten)]
    pub backend: BackendArgs,
}

/// `rustbk daemon`.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// The configuration file (default /etc/rustbk/rustbk.toml, if it exists): each setting
    /// is one of these flags, and a flag given here wins.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Read no configuration file.
    #[arg(long, conflicts_with = "config")]
    pub no_config: bool,
    /// Where guests are.
    #[command(flatten)]
    pub platform: PlatformArgs,
    /// Backend tunables, passed to every worker.
    #[command(flatten)]
    pub backend: BackendArgs,
}

/// Access pattern, fio style.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RwArg {
    /// Sequential reads.
    Read,
    /// Sequential writes.
    Write,
    /// Sequential mixed.
    Rw,
    /// Random reads.
    Randread,
    /// Random writes.
    Randwrite,
    /// Random mixed.
    Randrw,
}

/// A workload, fio style.
#[derive(Clone, Debug, Args)]
pub struct WorkloadArgs {
    /// Access pattern.
    #[arg(long, value_enum, default_value_t = RwArg::Randrw)]
    pub rw: RwArg,
    /// Percentage of reads for mixed patterns (0..=100).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub rwmix_read: u8,
    /// Block size: a multiple of 512 (and of the sector size) up to 4 MiB; k/m suffixes allowed.
    #[arg(long, default_value = "4k", value_parser = parse_block_size)]
    pub bs: u64,
    /// Requests in flight (1..=512; a ring of order 4 holds 512).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=512))]
    pub qd: u32,
    /// Seconds to run (more than 0, at most a day).
    #[arg(long, default_value_t = 5.0, value_parser = parse_seconds)]
    pub duration: f64,
    /// Do not write patterns and check reads.
    #[arg(long)]
    pub no_verify: bool,
    /// Send a flush after every N writes (N >= 1).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub flush_every: Option<u64>,
    /// Seed of the random choices.
    #[arg(long, default_value_t = 0x5eed)]
    pub seed: u64,
}

/// Frontend ABI as it is announced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProtocolArg {
    /// `x86_64-abi`.
    X86_64,
    /// `x86_32-abi`.
    X86_32,
    /// No `protocol` key (the backend assumes x86_32).
    None,
}

/// `rustbk emu guest`.
#[derive(Debug, Args)]
pub struct GuestArgs {
    /// Folder of the emulated platform.
    #[arg(long)]
    pub emu_dir: PathBuf,
    /// The guest's own xenstore socket (`<xenstored socket>.d<domid>`).
    #[arg(long)]
    pub xenstore: PathBuf,
    /// The guest's domain id.
    #[arg(long)]
    pub domid: u16,
    /// The virtual device number.
    #[arg(long, default_value_t = 51712)]
    pub devid: u32,
    /// Ring page order wanted (0..=4).
    #[arg(long, default_value_t = 0, value_parser = parse_ring_order)]
    pub ring_order: u32,
    /// Ring ABI.
    #[arg(long, value_enum, default_value_t = ProtocolArg::X86_64)]
    pub protocol: ProtocolArg,
    /// Do not ask for persistent grants.
    #[arg(long)]
    pub no_persistent: bool,
    /// Rings (queues) wanted, capped by what the backend offers; requests take them in turn.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub queues: u32,
    /// Poll the response rings this long before sleeping (and ask for no notification
    /// meanwhile), as a guest whose vCPU stays busy; 0 sleeps at once, as Linux blkfront.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub spin_us: u32,
    /// The disk was all zeros before this run (unwritten blocks are checked to read zeros).
    #[arg(long)]
    pub fresh: bool,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// The workload.
    #[command(flatten)]
    pub workload: WorkloadArgs,
}

/// `rustbk demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Image to serve and write to. A missing or empty file becomes a new raw image of
    /// `--size`; an existing non-empty file (or a block device) is refused unless `--overwrite`
    /// is given. Without `--image`, a new raw image in the work folder.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Let the workload write over the existing contents of `--image`.
    #[arg(long, requires = "image")]
    pub overwrite: bool,
    /// Format of `--image`, named to the backend as a toolstack names it (`qcow2:`, `vhd:`,
    /// `vmdk:`; never probed). Anything but raw needs an existing image (made with `rustbk img
    /// create` or qemu-img) and `--overwrite`; `--size` is then the image's own.
    #[arg(long, value_enum, default_value_t = crate::img::FormatArg::Raw, requires = "image")]
    pub format: crate::img::FormatArg,
    /// Serve a volume of a new thin pool in the work folder instead of a raw image (the pool
    /// holds `--size` of data; the volume is `--size` large and starts unprovisioned).
    #[arg(long, conflicts_with = "image")]
    pub thin: bool,
    /// Size of a new image (a multiple of the sector size).
    #[arg(long, default_value = "1g", value_parser = parse_image_size)]
    pub size: u64,
    /// Ring page order the guest asks for (0..=4).
    #[arg(long, default_value_t = 0, value_parser = parse_ring_order)]
    pub ring_order: u32,
    /// Ring ABI of the guest.
    #[arg(long, value_enum, default_value_t = ProtocolArg::X86_64)]
    pub protocol: ProtocolArg,
    /// Rings (queues) the guest asks for (capped by `--max-queues`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub queues: u32,
    /// Keep the work folder (logs, sockets, image) instead of deleting it.
    #[arg(long)]
    pub keep: bool,
    /// Backend tunables.
    #[command(flatten)]
    pub backend: BackendArgs,
    /// The workload.
    #[command(flatten)]
    pub workload: WorkloadArgs,
}

/// `rustbk bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Image to measure on; rustbk and fio write to it. A missing or empty file becomes a new,
    /// fully written raw image of `--size`; an existing non-empty file (or a block device) is
    /// refused unless `--overwrite` is given. Without `--image`, a new image in the work folder.
    #[arg(long, conflicts_with = "null")]
    pub image: Option<PathBuf>,
    /// Serve a null disk of `--size` (`params` = `null:SIZE`: no I/O, reads return zeros) and
    /// measure the backend itself with 1 and 2 queues: IOPS, the ring worker threads' CPU time
    /// per request (from /proc/<pid>/task/<tid>/schedstat) and IOPS per busy backend core. No
    /// fio run.
    #[arg(long)]
    pub null: bool,
    /// Compare the data paths instead of measuring against fio: one disk (its own raw image of
    /// `--size`) per data path, served by its own backend: map with persistent grants and
    /// fixed buffers off, the same with fixed buffers on, map per request (no persistent
    /// grants) and grant copy; 4 KiB random read and write at queue depth 32, the disks taking
    /// turns in every round. Every run is printed, then the medians.
    #[arg(long, conflicts_with_all = ["null", "image"])]
    pub data_paths: bool,
    /// Compare 1 MiB sequential reads and writes with indirect requests (256 segments: one
    /// request a block) against without them (the emulated guest splits each block into 44
    /// KiB requests, as Linux blkfront does): one disk each, its own raw image of `--size`
    /// and its own backend, taking turns in every round. Every run is printed, then the
    /// medians.
    #[arg(long, conflicts_with_all = ["null", "image", "data_paths"])]
    pub indirect: bool,
    /// Let the benchmark write over the existing contents of `--image`.
    #[arg(long, requires = "image")]
    pub overwrite: bool,
    /// Format rustbk serves the disk in: `raw` serves the image itself; `qcow2`, `vhd` (a
    /// dynamic VHD) and `vmdk` (monolithic sparse) serve a fully allocated copy of it in that
    /// format (made in the work folder with `rustbk img convert`), so the table shows what the
    /// format costs against fio on the raw image.
    #[arg(long, default_value = "raw", value_parser = ["raw", "qcow2", "vhd", "vmdk"],
          conflicts_with_all = ["null", "data_paths", "indirect"])]
    pub format: String,
    /// Size of a new image (a multiple of the sector size).
    #[arg(long, default_value = "1g", value_parser = parse_image_size)]
    pub size: u64,
    /// Seconds per measurement (at least 1, at most a day).
    #[arg(long, default_value_t = 10.0, value_parser = parse_runtime)]
    pub runtime: f64,
    /// Measurements per case; rustbk runs first in odd rounds and fio in even ones. The table
    /// shows medians (1..=100).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
    /// Queue depths to measure, comma-separated (each 1..=512): 4 KiB random reads at every
    /// depth, then random writes at every depth (with `--null` too, for each queue count).
    #[arg(long, value_delimiter = ',', default_values_t = [1u32, 32],
          value_parser = clap::value_parser!(u32).range(1..=512),
          conflicts_with_all = ["data_paths", "indirect"])]
    pub depths: Vec<u32>,
    /// Rings (queues) the emulated guest uses, its requests taking them in turn (capped by
    /// `--max-queues`; fio always runs one job). Not with `--null`, which measures 1 and 2.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256),
          conflicts_with = "null")]
    pub queues: u32,
    /// The emulated guest polls its responses this long before it sleeps, and fio then reaps
    /// by polling at queue depth 1 (`--iodepth_batch_complete_min=0`): the client polls on
    /// both sides or on neither. At depth 32 fio keeps its default, which is faster there.
    /// Pair it with `--poll-us` for the ring worker's own polling.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1_000_000),
          conflicts_with = "null")]
    pub guest_spin_us: u32,
    /// Keep the work folder (logs, sockets, image) instead of deleting it.
    #[arg(long)]
    pub keep: bool,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
    /// Backend tunables.
    #[command(flatten)]
    pub backend: BackendArgs,
}

/// `rustbk soak`. Event intervals left unset take the profile's values (`--short` or not).
#[derive(Debug, Args)]
pub struct SoakArgs {
    /// Emulated guests, each with its own disk and its own worker process.
    #[arg(long, default_value_t = 32)]
    pub guests: u16,
    /// How long to run: seconds, or a number with an s, m or h suffix.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub duration: std::time::Duration,
    /// The CI setting: 90 seconds with faults more often.
    #[arg(long, conflicts_with = "duration")]
    pub short: bool,
    /// Seed of the workloads and the fault schedule (default: from the clock; always printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Size of each guest's disk.
    #[arg(long, default_value = "64m", value_parser = parse_size)]
    pub size: u64,
    /// Requests in flight per disk.
    #[arg(long, default_value_t = 4)]
    pub qd: u32,
    /// Requests per second per disk.
    #[arg(long, default_value_t = 50)]
    pub rate: u32,
    /// A flush after every N writes.
    #[arg(long, default_value_t = 16)]
    pub flush_every: u64,
    /// Mean seconds between two worker kills (over all guests).
    #[arg(long)]
    pub kill_every: Option<f64>,
    /// Mean seconds between two reboots of one guest.
    #[arg(long)]
    pub reboot_every: Option<f64>,
    /// Mean seconds between two hot attaches (over all guests).
    #[arg(long)]
    pub hotplug_every: Option<f64>,
    /// Mean seconds a hot-attached disk stays.
    #[arg(long)]
    pub hotplug_hold: Option<f64>,
    /// Seconds between two resource samples.
    #[arg(long)]
    pub sample_every: Option<f64>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = crate::img::OutputArg::Human)]
    pub output: crate::img::OutputArg,
    /// Keep the work folder (logs, images) instead of deleting it.
    #[arg(long)]
    pub keep: bool,
    /// Backend tunables, passed to the daemon's workers.
    #[command(flatten)]
    pub backend: BackendArgs,
}

/// Parses `90`, `90s`, `10m`, `1h`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], c.to_ascii_lowercase()),
        _ => (s, 's'),
    };
    let mult = match unit {
        's' => 1.0,
        'm' => 60.0,
        'h' => 3600.0,
        _ => return Err(format!("unknown time unit in {s:?}")),
    };
    let n: f64 = num.parse().map_err(|_| format!("not a duration: {s:?}"))?;
    std::time::Duration::try_from_secs_f64(n * mult).map_err(|_| format!("bad duration: {s:?}"))
}

/// I/O limits: `KEY=VALUE,...` with QEMU's throttle names, checked as QEMU does; `none`.
pub fn parse_qos(s: &str) -> Result<QosLimits, String> {
    QosLimits::parse_list(s)
}

/// Accepts the two logical sector sizes blkif knows: 512 and 4096.
pub fn parse_sector_size(s: &str) -> Result<u32, String> {
    match s.trim() {
        "512" => Ok(512),
        "4096" | "4k" => Ok(4096),
        other => Err(format!("sector size must be 512 or 4096, not {other:?}")),
    }
}

/// A ring page order: 0..=4.
pub fn parse_ring_order(s: &str) -> Result<u32, String> {
    let max = rustbk_ring::MAX_RING_PAGE_ORDER;
    match s.trim().parse::<u32>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(format!("ring order must be 0..={max}, not {s:?}")),
    }
}

/// Largest request a workload sends.
pub const MAX_BLOCK_SIZE: u64 = 4 << 20;

/// A workload block size: a multiple of 512 up to 4 MiB.
pub fn parse_block_size(s: &str) -> Result<u64, String> {
    let n = parse_size(s)?;
    if n == 0 || n % 512 != 0 || n > MAX_BLOCK_SIZE {
        return Err(format!(
            "block size must be a multiple of 512 up to 4m, not {s:?}"
        ));
    }
    Ok(n)
}

/// The size of a new image: at least 512 bytes, a multiple of 512.
pub fn parse_image_size(s: &str) -> Result<u64, String> {
    let n = parse_size(s)?;
    if n == 0 || n % 512 != 0 || i64::try_from(n).is_err() {
        return Err(format!(
            "image size must be a non-zero multiple of 512, not {s:?}"
        ));
    }
    Ok(n)
}

/// Longest run accepted: a day.
const MAX_SECONDS: f64 = 86_400.0;

/// A duration in seconds: more than 0, at most a day.
pub fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(x) if x > 0.0 && x <= MAX_SECONDS => Ok(x),
        _ => Err(format!(
            "must be a number of seconds above 0 and at most {MAX_SECONDS}, not {s:?}"
        )),
    }
}

/// A measurement time in seconds: at least 1, at most a day.
pub fn parse_runtime(s: &str) -> Result<f64, String> {
    match parse_seconds(s) {
        Ok(x) if x >= 1.0 => Ok(x),
        _ => Err(format!(
            "must be a number of seconds from 1 to {MAX_SECONDS}, not {s:?}"
        )),
    }
}

/// Parses `4096`, `4k`, `1M`, `2g` (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_lowercase() {
                'k' => 1u64 << 10,
                'm' => 1 << 20,
                'g' => 1 << 30,
                't' => 1 << 40,
                _ => return Err(format!("unknown size suffix in {s:?}")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("not a size: {s:?}"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("size too large: {s:?}"))
}

/// A backend kind: one xenstore path element (letters, digits, `-`, `_`).
fn parse_kind(text: &str) -> Result<String, String> {
    let ok = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(text.to_owned())
    } else {
        Err(format!("{text:?} is not a backend kind (like vbd or vbd3)"))
    }
}

#[cfg(test)]
mod tests {
    use super::{
        parse_block_size, parse_duration, parse_image_size, parse_ring_order, parse_runtime,
        parse_seconds, parse_size,
    };
    use std::time::Duration;

    #[derive(Debug, clap::Parser)]
    struct Platform {
        #[command(flatten)]
        platform: super::PlatformArgs,
    }

    fn kinds(args: &[&str]) -> Result<Vec<String>, clap::Error> {
        use clap::Parser;
        let argv = std::iter::once("daemon").chain(args.iter().copied());
        Platform::try_parse_from(argv).map(|p| p.platform.kinds)
    }

    #[test]
    fn both_vbd_kinds_are_watched_by_default_and_kind_flags_replace_them() {
        assert_eq!(kinds(&[]).unwrap(), ["vbd", "vbd3"]);
        assert_eq!(kinds(&["--kind", "vbd3"]).unwrap(), ["vbd3"]);
        assert_eq!(
            kinds(&["--kind", "vbd", "--kind", "qdisk"]).unwrap(),
            ["vbd", "qdisk"]
        );
        for bad in ["", "vbd/../x", "vbd3 "] {
            assert!(kinds(&["--kind", bad]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn workload_values_out_of_range_are_refused() {
        assert_eq!(parse_seconds("2.5"), Ok(2.5));
        for bad in ["-1", "0", "nan", "inf", "86401", "x"] {
            assert!(parse_seconds(bad).is_err(), "{bad}");
        }
        assert!(parse_runtime("0.5").is_err());
        assert_eq!(parse_block_size("4k"), Ok(4096));
        for bad in ["0", "1000", "8m"] {
            assert!(parse_block_size(bad).is_err(), "{bad}");
        }
        assert!(parse_image_size("0").is_err() && parse_image_size("1000").is_err());
        assert_eq!(parse_ring_order("4"), Ok(4));
        assert!(parse_ring_order("5").is_err());
    }

    #[test]
    fn durations_accept_units_and_reject_garbage() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("10d").is_err());
        assert!(parse_duration("-5").is_err());
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn sizes_accept_suffixes_and_reject_garbage() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert!(parse_size("12q").is_err());
        assert!(parse_size("k").is_err());
        assert!(parse_size("99999999999t").is_err());
    }
}
