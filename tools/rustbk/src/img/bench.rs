//! `rustbk img bench`: qemu-img bench on the shared I/O engine, without a guest or a ring.
//!
//! COUNT requests of BUFFER_SIZE bytes, DEPTH of them in flight on one [`ImageQueue`], the
//! first at OFFSET and each next one STEP_SIZE further, wrapping before the image end (qemu's
//! fixed rule: modulo `size - buffer_size`). The buffers are allocated once, one per slot, and
//! reused by every request of that slot. Only the I/O loop is timed, as in qemu-img; metadata
//! is written back after the clock stops. With `--flush-interval N` a write run flushes after
//! every N writes, after the writes in flight completed (or, with `--no-drain`, while they
//! run; one flush at a time, a later one issued when the one before completed).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::{Args, ValueEnum};
use rustbk_formats::engine::Access;
use rustbk_formats::{
    BlockImage, CacheMode, Completion, EngineKind, Format, ImageQueue, IoOp, OpenOptions, SharedBuf,
};
use serde_json::json;

use super::{CacheArg, FormatArg, OutputArg, format_name};
use crate::cli::parse_size;

/// `rustbk img bench [-c COUNT] [-d DEPTH] [-f FMT] [-n] [-o OFFSET] [-s BUFFER_SIZE]
/// [-S STEP_SIZE] [-t CACHE] [-i AIO] [-w] [--pattern=N] [--flush-interval=N [--no-drain]]
/// [-q] [-U] FILE`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Number of requests.
    #[arg(short = 'c', default_value_t = 75000)]
    pub count: u32,
    /// Requests in flight at once.
    #[arg(short = 'd', default_value_t = 64)]
    pub depth: u32,
    /// Format of FILE (probed when not given).
    #[arg(short = 'f', value_enum)]
    pub format: Option<FormatArg>,
    /// Use the native AIO backend (here: io_uring), like `-i native`.
    #[arg(short = 'n')]
    pub native: bool,
    /// Offset of the first request (k, M, G, T suffixes).
    #[arg(short = 'o', default_value = "0", value_parser = parse_size)]
    pub offset: u64,
    /// Bytes per request (k, M, G, T suffixes).
    #[arg(short = 's', default_value = "4k", value_parser = parse_size)]
    pub buffer_size: u64,
    /// Distance between the offsets of consecutive requests (default and 0: BUFFER_SIZE).
    #[arg(short = 'S', value_parser = parse_size)]
    pub step_size: Option<u64>,
    /// Cache mode: none (O_DIRECT), writeback (page cache), writethrough (page cache with
    /// O_DSYNC: each write durable when it completes), directsync (O_DIRECT and O_DSYNC),
    /// unsafe (page cache; no request flushes, so it runs as writeback).
    #[arg(short = 't', value_enum, default_value_t = CacheArg::Writeback)]
    pub cache: CacheArg,
    /// AIO backend: io_uring or native (the io_uring engine), threads (the synchronous engine).
    #[arg(short = 'i', value_enum)]
    pub aio: Option<AioArg>,
    /// Write instead of read.
    #[arg(short = 'w')]
    pub write: bool,
    /// Byte written by write requests (0..=255, 0x.. hex or 0.. octal too; default 0).
    #[arg(long, value_parser = parse_pattern)]
    pub pattern: Option<u8>,
    /// Flush after every N write requests (write runs only; the flushes are not counted).
    #[arg(long = "flush-interval")]
    pub flush_interval: Option<u32>,
    /// Flush while the writes before it are still in flight, instead of after they completed.
    #[arg(long = "no-drain")]
    pub no_drain: bool,
    /// Print nothing (human output only).
    #[arg(short = 'q')]
    pub quiet: bool,
    /// Read the image even if another process writes it, as qemu-img's `-U` (read runs only;
    /// a write run always refuses an image in use).
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
    /// Output format; JSON adds the time, IOPS and bandwidth.
    #[arg(long, value_enum, default_value_t = OutputArg::Human)]
    pub output: OutputArg,
    /// The image.
    pub file: PathBuf,
}

/// qemu's AIO backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AioArg {
    /// A thread pool in qemu; the synchronous engine here.
    Threads,
    /// Linux AIO in qemu; io_uring here.
    Native,
    /// io_uring.
    #[value(name = "io_uring")]
    IoUring,
}

/// A validated benchmark.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BenchConfig {
    /// Requests to complete.
    pub count: u32,
    /// Requests in flight.
    pub depth: u32,
    /// Bytes per request.
    pub buffer_size: usize,
    /// Offset advance per request.
    pub step: u64,
    /// Offset of the first request.
    pub offset: u64,
    /// Write instead of read.
    pub write: bool,
    /// Fill byte of the buffers.
    pub pattern: u8,
    /// How the image is opened.
    pub cache: CacheMode,
    /// The engine.
    pub engine: EngineKind,
    /// Format, `None` to probe.
    pub format: Option<Format>,
    /// Share the image with writers (read runs only).
    pub force_share: bool,
    /// Flush after every this many writes.
    pub flush_interval: Option<u32>,
    /// Flush without waiting for the writes in flight.
    pub no_drain: bool,
}

/// qemu-img's limit on buffer and step sizes (`INT_MAX`).
const MAX_SIZE: u64 = i32::MAX as u64;

/// The most buffer memory a run allocates (DEPTH × BUFFER_SIZE), refused rather than aborting.
const MAX_BUFFERS: u64 = 8 << 30;

impl TryFrom<&BenchArgs> for BenchConfig {
    type Error = anyhow::Error;

    fn try_from(a: &BenchArgs) -> anyhow::Result<BenchConfig> {
        ensure!(a.depth >= 1, "Invalid queue depth specified");
        ensure!(
            (1..=MAX_SIZE).contains(&a.buffer_size),
            "Invalid buffer size specified"
        );
        let step = match a.step_size {
            None | Some(0) => a.buffer_size,
            Some(s) if s <= MAX_SIZE => s,
            Some(_) => bail!("Invalid step size specified"),
        };
        ensure!(
            a.flush_interval.is_none() || a.write,
            "--flush-interval is only available in write tests"
        );
        ensure!(
            !a.no_drain || a.flush_interval.is_some(),
            "--no-drain requires --flush-interval"
        );
        ensure!(
            a.flush_interval != Some(0),
            "Invalid flush interval specified"
        );
        let aio = if a.native {
            Some(AioArg::Native)
        } else {
            a.aio
        };
        Ok(BenchConfig {
            count: a.count,
            depth: a.depth,
            buffer_size: usize::try_from(a.buffer_size)?,
            step,
            offset: a.offset,
            write: a.write,
            pattern: a.pattern.unwrap_or(0),
            cache: a.cache.into(),
            engine: match aio {
                None => EngineKind::Auto,
                Some(AioArg::Threads) => EngineKind::Sync,
                Some(AioArg::Native | AioArg::IoUring) => EngineKind::IoUring,
            },
            format: a.format.map(Format::from),
            force_share: a.force_share,
            flush_interval: a.flush_interval,
            no_drain: a.no_drain,
        })
    }
}

impl BenchConfig {
    /// The access of the image: read-only unless writing, shared with writers with `-U`.
    fn access(&self) -> Access {
        match (self.write, self.force_share) {
            (true, _) => Access::ReadWrite,
            (false, share) => super::read_access(share),
        }
    }

    /// How the image is opened: read-only unless writing.
    pub fn open_options(&self) -> OpenOptions {
        OpenOptions {
            engine: self.engine,
            ..super::tool_options(self.access(), self.cache)
        }
    }

    /// qemu-img's first line.
    pub fn banner(&self) -> String {
        format!(
            "Sending {} {} requests, {} bytes each, {} in parallel (starting at offset {}, step size {})",
            self.count,
            if self.write { "write" } else { "read" },
            self.buffer_size,
            self.depth,
            self.offset,
            self.step
        )
    }
}

/// The offset after `offset` for an image of `size` bytes: `step` further, wrapped modulo
/// `size - buffer_size` (0 when the image is no larger than one buffer).
pub fn next_offset(offset: u64, step: u64, size: u64, buffer_size: u64) -> u64 {
    match size.checked_sub(buffer_size) {
        Some(room) if room > 0 => {
            let next = u128::from(offset) + u128::from(step);
            // The remainder is below `room`, a u64.
            u64::try_from(next % u128::from(room)).unwrap_or(0)
        }
        _ => 0,
    }
}

/// Parses `--pattern` like qemu-img (strtoul with base 0, at most 0xff).
pub fn parse_pattern(s: &str) -> Result<u8, String> {
    let s = s.trim();
    let parsed = if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16)
    } else if s.len() > 1 && s.starts_with('0') {
        u64::from_str_radix(&s[1..], 8)
    } else {
        s.parse::<u64>()
    };
    parsed
        .ok()
        .and_then(|v| u8::try_from(v).ok())
        .ok_or_else(|| "Invalid pattern byte specified".to_owned())
}

/// What a run measured.
#[derive(Clone, Copy, Debug)]
pub struct BenchResult {
    /// Time of the I/O loop.
    pub elapsed: Duration,
    /// Requests completed.
    pub requests: u64,
}

/// Runs `rustbk img bench`.
pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let cfg = BenchConfig::try_from(&args)?;
    let format = super::format_of(&args.file, cfg.format)?;
    let image = rustbk_formats::open_image(&args.file, format, &cfg.open_options())
        .with_context(|| format!("Could not open '{}'", args.file.display()))?;
    let human = args.output == OutputArg::Human && !args.quiet;
    if human {
        println!("{}", cfg.banner());
    }
    let result = bench(image.as_ref(), &cfg)?;
    if human {
        println!(
            "Run completed in {:.3} seconds.",
            result.elapsed.as_secs_f64()
        );
    }
    if cfg.write {
        image
            .sync_metadata()
            .context("Cannot write back the image metadata")?;
    }
    if args.output == OutputArg::Json {
        print_json(&args, &cfg, image.format(), &result)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs the benchmark on an open image.
pub fn bench(image: &dyn BlockImage, cfg: &BenchConfig) -> anyhow::Result<BenchResult> {
    let size = image.geometry().size;
    let len = u64::try_from(cfg.buffer_size)?;
    ensure!(
        cfg.offset.checked_add(len).is_some_and(|end| end <= size),
        "Failed request: offset {} + {} bytes is beyond the image end ({size} bytes)",
        cfg.offset,
        len
    );
    // More slots than requests would only allocate buffers that are never used.
    let slots = cfg.depth.min(cfg.count.max(1));
    ensure!(
        u64::from(slots)
            .checked_mul(len)
            .is_some_and(|total| total <= MAX_BUFFERS),
        "Cannot allocate {slots} buffers of {len} bytes (at most {MAX_BUFFERS} bytes in all)"
    );
    // A flush takes a place in the queue of its own.
    let depth = slots + u32::from(cfg.flush_interval.is_some());
    let queue = image
        .open_queue(depth)
        .context("Cannot open an I/O queue")?;
    let mut run = Run::new(queue, cfg, slots, size)?;
    let start = Instant::now();
    run.drive()?;
    Ok(BenchResult {
        elapsed: start.elapsed(),
        requests: u64::from(cfg.count),
    })
}

/// The state of one benchmark run.
struct Run<'a> {
    queue: Box<dyn ImageQueue>,
    cfg: &'a BenchConfig,
    size: u64,
    bufs: Vec<SharedBuf>,
    free: Vec<usize>,
    done: Vec<Completion>,
    next: u64,
    submitted: u32,
    completed: u32,
    /// Writes submitted since the last flush was due.
    since_flush: u32,
    /// A flush is due and not submitted yet.
    flush_due: bool,
    /// A flush is in flight.
    flushing: bool,
}

/// The tag of a flush (the slots' tags are their indices).
const FLUSH_TAG: u64 = u64::MAX;

impl<'a> Run<'a> {
    fn new(
        queue: Box<dyn ImageQueue>,
        cfg: &'a BenchConfig,
        slots: u32,
        size: u64,
    ) -> anyhow::Result<Run<'a>> {
        let slots = usize::try_from(slots)?;
        let fill = vec![cfg.pattern; cfg.buffer_size];
        let bufs: Vec<SharedBuf> = (0..slots)
            .map(|_| {
                let buf = SharedBuf::new(cfg.buffer_size);
                buf.copy_in(0, &fill);
                buf
            })
            .collect();
        Ok(Run {
            queue,
            cfg,
            size,
            bufs,
            free: (0..slots).rev().collect(),
            done: Vec::with_capacity(slots),
            next: cfg.offset,
            submitted: 0,
            completed: 0,
            since_flush: 0,
            flush_due: false,
            flushing: false,
        })
    }

    /// Keeps the queue full until every request has completed.
    fn drive(&mut self) -> anyhow::Result<()> {
        while self.completed < self.cfg.count || self.flushing {
            self.flush_if_due()?;
            self.fill()?;
            self.queue.wait(None).context("Failed request")?;
            self.reap()?;
        }
        Ok(())
    }

    /// Submits the flush that is due, once the one before completed and, unless `--no-drain`,
    /// every write in flight too.
    fn flush_if_due(&mut self) -> anyhow::Result<()> {
        let in_flight = self.submitted - self.completed;
        let drained = self.cfg.no_drain || in_flight == 0;
        if !self.flush_due || self.flushing || !drained {
            return Ok(());
        }
        self.queue
            .submit(IoOp::Flush, FLUSH_TAG)
            .context("Failed flush")?;
        self.flush_due = false;
        self.flushing = true;
        Ok(())
    }

    /// Submits requests into every free slot (none from when a flush is due until it completed,
    /// unless `--no-drain`).
    fn fill(&mut self) -> anyhow::Result<()> {
        while self.submitted < self.cfg.count {
            if (self.flush_due || self.flushing) && !self.cfg.no_drain {
                break;
            }
            let Some(slot) = self.free.pop() else {
                break;
            };
            let bufs = Box::new(self.bufs[slot].clone());
            let offset = self.next;
            let op = if self.cfg.write {
                IoOp::Write { offset, bufs }
            } else {
                IoOp::Read { offset, bufs }
            };
            self.queue
                .submit(op, u64::try_from(slot)?)
                .context("Failed request")?;
            self.submitted += 1;
            self.count_for_flush();
            let len = u64::try_from(self.cfg.buffer_size)?;
            self.next = next_offset(offset, self.cfg.step, self.size, len);
        }
        Ok(())
    }

    /// Makes a flush due after every `--flush-interval` writes.
    fn count_for_flush(&mut self) {
        let Some(interval) = self.cfg.flush_interval else {
            return;
        };
        self.since_flush += 1;
        if self.since_flush >= interval {
            self.since_flush = 0;
            self.flush_due = true;
        }
    }

    /// Frees the slots of finished requests; fails on the first failed one.
    fn reap(&mut self) -> anyhow::Result<()> {
        self.queue.reap(&mut self.done);
        for c in self.done.drain(..) {
            if let Err(e) = c.result {
                return Err(anyhow::Error::new(e).context("Failed request"));
            }
            if c.tag == FLUSH_TAG {
                self.flushing = false;
                continue;
            }
            self.free.push(usize::try_from(c.tag)?);
            self.completed += 1;
        }
        Ok(())
    }
}

fn print_json(
    args: &BenchArgs,
    cfg: &BenchConfig,
    format: Format,
    r: &BenchResult,
) -> anyhow::Result<()> {
    let secs = r.elapsed.as_secs_f64();
    let per_sec = |n: f64| if secs > 0.0 { n / secs } else { 0.0 };
    let requests = r.requests as f64;
    let v = json!({
        "filename": args.file.display().to_string(),
        "format": format_name(format),
        "write": cfg.write,
        "count": cfg.count,
        "depth": cfg.depth,
        "buffer-size": cfg.buffer_size,
        "step-size": cfg.step,
        "offset": cfg.offset,
        "flush-interval": cfg.flush_interval,
        "no-drain": cfg.no_drain,
        "direct": cfg.cache.direct(),
        "cache": cfg.cache.name(),
        "seconds": secs,
        "iops": per_sec(requests),
        "bytes-per-second": per_sec(requests * cfg.buffer_size as f64),
    });
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn config(args: &[&str]) -> anyhow::Result<BenchConfig> {
        let cli = Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))?;
        BenchConfig::try_from(&cli.bench)
    }

    #[test]
    fn defaults_follow_qemu_img() {
        let c = config(&["disk.img"]).unwrap();
        assert_eq!((c.count, c.depth, c.buffer_size), (75000, 64, 4096));
        assert_eq!((c.step, c.offset, c.pattern), (4096, 0, 0));
        assert!(!c.write);
        assert_eq!(c.cache, CacheMode::Writeback);
        assert_eq!(c.engine, EngineKind::Auto);
        assert!(c.open_options().read_only);
        assert_eq!(
            c.banner(),
            "Sending 75000 read requests, 4096 bytes each, 64 in parallel \
             (starting at offset 0, step size 4096)"
        );
    }

    #[test]
    fn flags_map_to_engine_cache_and_write_mode() {
        let c = config(&[
            "-f",
            "qcow2",
            "-t",
            "none",
            "-i",
            "io_uring",
            "-d",
            "32",
            "-c",
            "200000",
            "-s",
            "64k",
            "-S",
            "1M",
            "-o",
            "8k",
            "-w",
            "--pattern=0xab",
            "disk.qcow2",
        ])
        .unwrap();
        assert_eq!((c.count, c.depth, c.buffer_size), (200000, 32, 65536));
        assert_eq!((c.step, c.offset, c.pattern), (1 << 20, 8192, 0xab));
        assert!(c.write);
        assert_eq!(c.cache, CacheMode::None);
        assert_eq!(c.engine, EngineKind::IoUring);
        assert_eq!(c.format, Some(Format::Qcow2));
        assert!(!c.open_options().read_only);
        assert_eq!(
            config(&["-i", "threads", "f"]).unwrap().engine,
            EngineKind::Sync
        );
        assert_eq!(config(&["-n", "f"]).unwrap().engine, EngineKind::IoUring);
        assert_eq!(config(&["-S", "0", "-s", "8k", "f"]).unwrap().step, 8192);
        for mode in CacheMode::ALL {
            let c = config(&["-t", mode.name(), "f"]).unwrap();
            assert_eq!(c.cache, mode);
        }
    }

    /// Counts the fdatasyncs of an image file.
    #[derive(Debug, Default)]
    struct Syncs(std::sync::atomic::AtomicU64);

    impl rustbk_formats::WriteRecorder for Syncs {
        fn written(&self, _: u64, _: &[u8]) {}
        fn zeroed(&self, _: u64, _: u64) {}
        fn sync_begin(&self) -> u64 {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        }
        fn synced(&self, _: u64) {}
    }

    #[test]
    fn a_write_run_flushes_after_every_interval_drained_or_not() {
        for (no_drain, flushes) in [(false, 3..=3), (true, 1..=3)] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("disk.raw");
            rustbk_formats::create_raw(&path, 1 << 20).unwrap();
            let mut args = vec!["-w", "-c", "16", "-d", "4", "--flush-interval=4", "x"];
            if no_drain {
                args.insert(0, "--no-drain");
            }
            let cfg = config(&args).unwrap();
            assert_eq!((cfg.flush_interval, cfg.no_drain), (Some(4), no_drain));
            let syncs = std::sync::Arc::new(Syncs::default());
            let opts = OpenOptions {
                recorder: Some(syncs.clone()),
                ..cfg.open_options()
            };
            let image = rustbk_formats::open_image(&path, Format::Raw, &opts).unwrap();
            assert_eq!(bench(image.as_ref(), &cfg).unwrap().requests, 16);
            let n = syncs.0.load(std::sync::atomic::Ordering::Relaxed);
            assert!(flushes.contains(&n), "no_drain {no_drain}: {n} flushes");
        }
        assert!(
            config(&["--flush-interval=4", "x"]).is_err(),
            "write runs only"
        );
        assert!(config(&["-w", "--no-drain", "x"]).is_err());
        assert!(config(&["-w", "--flush-interval=0", "x"]).is_err());
    }

    #[test]
    fn invalid_values_are_refused() {
        assert!(config(&["-d", "0", "f"]).is_err());
        assert!(config(&["-s", "0", "f"]).is_err());
        assert!(config(&["-s", "4g", "f"]).is_err());
        assert!(config(&["-S", "4g", "f"]).is_err());
        assert!(config(&["--pattern=256", "f"]).is_err());
        assert!(config(&["-t", "writearound", "f"]).is_err());
        assert!(config(&["-i", "posix", "f"]).is_err());
    }

    #[test]
    fn runs_past_the_end_or_needing_too_much_buffer_memory_fail_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.raw");
        rustbk_formats::create_raw(&path, 2 << 30).unwrap();
        let image =
            rustbk_formats::open_image(&path, Format::Raw, &OpenOptions::default()).unwrap();
        let past = config(&["-o", "2047m", "-s", "2m", "f"]).unwrap();
        let err = bench(image.as_ref(), &past).map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("beyond the image end"), "{err}");
        let huge = config(&["-d", "64", "-c", "64", "-s", "1g", "f"]).unwrap();
        let err = bench(image.as_ref(), &huge).map(|_| ()).unwrap_err();
        assert!(
            err.to_string().contains("Cannot allocate 64 buffers"),
            "{err}"
        );
    }

    #[test]
    fn pattern_parses_like_strtoul_base_zero() {
        assert_eq!(parse_pattern("171"), Ok(171));
        assert_eq!(parse_pattern("0xAB"), Ok(0xab));
        assert_eq!(parse_pattern("017"), Ok(0o17));
        assert_eq!(parse_pattern("0"), Ok(0));
        assert!(parse_pattern("0x100").is_err());
        assert!(parse_pattern("x").is_err());
    }

    #[test]
    fn offsets_wrap_before_the_image_end() {
        assert_eq!(next_offset(0, 4096, 1 << 20, 4096), 4096);
        // The last start that fits is never reached: qemu wraps modulo size - buffer_size.
        assert_eq!(next_offset((1 << 20) - 8192, 4096, 1 << 20, 4096), 0);
        assert_eq!(
            next_offset(4096, 3 << 20, 1 << 20, 4096),
            (4096 + (3 << 20)) % ((1 << 20) - 4096)
        );
        assert_eq!(next_offset(0, 4096, 4096, 4096), 0);
        // No overflow near the top of the range: (2^64 - 2 + 2^64 - 1) mod (2^64 - 2) = 1.
        assert_eq!(next_offset(u64::MAX - 1, u64::MAX, u64::MAX, 1), 1);
    }

    #[test]
    fn a_run_writes_the_pattern_to_every_stepped_block() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.raw");
        rustbk_formats::create_raw(&path, 64 << 10).unwrap();
        let cfg = config(&[
            "-w",
            "-c",
            "8",
            "-d",
            "4",
            "-S",
            "8k",
            "--pattern=7",
            "-f",
            "raw",
            "x",
        ])
        .unwrap();
        let image = rustbk_formats::open_image(&path, Format::Raw, &cfg.open_options()).unwrap();
        let r = bench(image.as_ref(), &cfg).unwrap();
        assert_eq!(r.requests, 8);
        drop(image);
        let bytes = std::fs::read(&path).unwrap();
        for (i, block) in bytes.chunks(4096).enumerate() {
            let want = if i % 2 == 0 { 7 } else { 0 };
            assert!(block.iter().all(|&b| b == want), "block {i}");
        }
    }
}
