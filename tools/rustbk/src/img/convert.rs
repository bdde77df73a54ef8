//! `rustbk img convert`: copies the guest-visible bytes of an image into a new image. Ranges
//! the source's allocation map shows as zeros are never read, and read chunks that are all
//! zeros (per destination cluster, or 4 KiB for raw) are never written: the output is sparse.

use std::collections::{HashMap, VecDeque};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use rustbk_formats::buffer::gather;
use rustbk_formats::engine::Access;
use rustbk_formats::engine::lock::{LockMode, lock};
use rustbk_formats::qcow2::map::{Allocation, map_chain, raw_status};
use rustbk_formats::{CacheMode, Composite, Format, ImageQueue, SharedBuf, SharedBufs, qcow2};

use super::info::read_chain;
use super::pipe::{self, CHUNK, DEPTH};
use super::progress::Progress;
use super::{CacheArg, FormatArg, open_cached, read_access};
use rustbk_formats::vmdk::create::Subformat;

/// Bytes of a granule looked at before copying all of it for the zero test.
const PROBE: usize = 256;

/// Cache modes of the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SrcCacheArg {
    /// Through the page cache.
    Writeback,
    /// O_DIRECT (bypassing the page cache).
    None,
}

/// `rustbk img convert [-p] [-t CACHE] [-T CACHE] [-f FMT] -O FMT [-o OPTIONS] [-U] SRC DST`.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// Show progress on stderr.
    #[arg(short = 'p')]
    pub progress: bool,
    /// Format of SRC (probed when not given).
    #[arg(short = 'f', value_enum)]
    pub format: Option<FormatArg>,
    /// Format of DST.
    #[arg(short = 'O', value_enum, default_value_t = FormatArg::Raw)]
    pub output_format: FormatArg,
    /// Cache mode of DST: `unsafe` (qemu-img's default for convert: nothing synced, the data
    /// may still be in the page cache when the command returns), or one that flushes before
    /// the command returns: `writeback`, `none` (O_DIRECT), `writethrough` (O_DSYNC),
    /// `directsync` (O_DIRECT and O_DSYNC).
    #[arg(short = 't', value_enum, default_value_t = CacheArg::Unsafe)]
    pub cache: CacheArg,
    /// Cache mode of SRC: `writeback` (page cache) or `none` (O_DIRECT).
    #[arg(short = 'T', value_enum, default_value_t = SrcCacheArg::Writeback)]
    pub src_cache: SrcCacheArg,
    /// qcow2 options for DST: cluster_size=SIZE, compat=0.10|1.1, refcount_bits=N.
    #[arg(short = 'o')]
    pub options: Vec<String>,
    /// Read SRC even if another process writes it (the copy may be inconsistent), as
    /// qemu-img's `-U`.
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
    /// The source image.
    pub src: PathBuf,
    /// The new image (replaced if it exists, unless it is SRC, a file of SRC's backing
    /// chain, or in use by another process).
    pub dst: PathBuf,
}

/// Converts.
pub fn run(args: ConvertArgs) -> anyhow::Result<ExitCode> {
    let src_cache = match args.src_cache {
        SrcCacheArg::None => CacheMode::None,
        SrcCacheArg::Writeback => CacheMode::Writeback,
    };
    let access = read_access(args.force_share);
    let src = open_cached(&args.src, args.format.map(Into::into), access, src_cache)?;
    refuse_source_as_dst(&args)?;
    let size = src.geometry().size;
    if args.output_format == FormatArg::Vmdk
        && super::vmdk::subformat(&args.options)? == Subformat::StreamOptimized
    {
        return super::vmdk::convert_stream_optimized(&args.dst, &*src, args.progress);
    }
    let granularity = create_dst(&args, size)?;
    let dst = open_cached(
        &args.dst,
        Some(args.output_format.into()),
        Access::ReadWrite,
        args.cache.into(),
    )?;
    let ranges = data_ranges(&args, size)?;
    let total: u64 = ranges.iter().map(|r| r.1).sum();
    let mut copy = Copy::new(
        src.open_queue(pipe::QUEUE_DEPTH)?,
        dst.open_queue(pipe::QUEUE_DEPTH)?,
        granularity,
        Progress::new(args.progress, false),
    )?;
    copy.run(&ranges, total)?;
    if args.cache != CacheArg::Unsafe {
        pipe::flush(&mut *copy.dst)?;
    }
    copy.progress.finish();
    drop(copy);
    dst.sync_metadata()?;
    Ok(ExitCode::SUCCESS)
}

/// Refuses a destination that is a directory, the source or a file of the source's backing
/// chain: replacing it would destroy what is being copied. Files are compared by device and
/// inode (block devices by device number), so no other name of the same file slips through
/// (`./X`, a symbolic or a hard link).
fn refuse_source_as_dst(args: &ConvertArgs) -> anyhow::Result<()> {
    let dst = match std::fs::metadata(&args.dst) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("Cannot stat '{}'", args.dst.display())),
    };
    if dst.is_dir() {
        bail!("Could not create '{}': Is a directory", args.dst.display());
    }
    let chain = read_chain(&args.src, args.format, args.force_share)?;
    for (level, info) in chain.iter().enumerate() {
        let meta = std::fs::metadata(&info.filename)
            .with_context(|| format!("Cannot stat '{}'", info.filename.display()))?;
        if same_file(&meta, &dst) {
            let role = if level == 0 {
                "the source image"
            } else {
                "a backing file of the source image"
            };
            bail!(
                "Could not create '{}': it is {role} ('{}'); converting onto it would destroy it",
                args.dst.display(),
                info.filename.display()
            );
        }
    }
    Ok(())
}

/// Whether two stats name one file: the same inode, or the same block device.
pub(super) fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    let block = |m: &std::fs::Metadata| m.file_type().is_block_device().then(|| m.rdev());
    (a.dev(), a.ino()) == (b.dev(), b.ino()) || block(a).is_some_and(|r| block(b) == Some(r))
}

/// Creates the destination; returns the zero-detection granularity. An existing destination
/// file is replaced only if no other process uses it: it is locked as a writer while it is
/// removed.
fn create_dst(args: &ConvertArgs, size: u64) -> anyhow::Result<u64> {
    if std::fs::symlink_metadata(&args.dst).is_ok_and(|m| m.is_file()) {
        let replace = || format!("Cannot replace '{}'", args.dst.display());
        let old = std::fs::File::open(&args.dst).with_context(replace)?;
        let _held = lock(old, &args.dst, LockMode::Writer).with_context(replace)?;
        std::fs::remove_file(&args.dst).with_context(replace)?;
    }
    let fail = || format!("Could not create '{}'", args.dst.display());
    match args.output_format {
        FormatArg::Raw => {
            if !args.options.is_empty() {
                bail!("raw images take no options");
            }
            rustbk_formats::create_raw(&args.dst, size).with_context(fail)?;
            Ok(4096)
        }
        FormatArg::Vmdk => {
            let sub = super::vmdk::subformat(&args.options)?;
            super::vmdk::create_for_convert(&args.dst, size, sub).with_context(fail)?;
            Ok(64 << 10)
        }
        FormatArg::Qcow2 => {
            let opts = super::create::options_from(&args.options)?;
            if opts.backing_file.is_some() {
                bail!("convert does not create backing files");
            }
            qcow2::create(&args.dst, size.div_ceil(512) * 512, &opts).with_context(fail)?;
            Ok(u64::from(opts.cluster_size))
        }
        FormatArg::Vpc => {
            let opts = super::vpc::options_from(&args.options)?;
            rustbk_formats::vhd::create(&args.dst, size.div_ceil(512) * 512, &opts)
                .with_context(fail)?;
            Ok(match opts.subformat {
                rustbk_formats::vhd::VhdSubformat::Fixed => 4096,
                rustbk_formats::vhd::VhdSubformat::Dynamic => u64::from(opts.block_size),
            })
        }
    }
}

/// The source ranges that may hold non-zero data (the rest reads as zeros).
fn data_ranges(args: &ConvertArgs, size: u64) -> anyhow::Result<Vec<(u64, u64)>> {
    let path = &args.src;
    let probed = super::format_of(path, args.format.map(Format::from))?;
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut add = |start: u64, len: u64| match out.last_mut() {
        Some(last) if last.0 + last.1 == start => last.1 += len,
        _ => out.push((start, len)),
    };
    if probed == Format::Qcow2 {
        for e in map_chain(path, Format::Qcow2, args.force_share)? {
            if e.data || !e.zero {
                add(e.start, e.length);
            }
        }
    } else if probed != Format::Raw {
        // No allocation map for this format: every byte is read, and zeros are not written.
        add(0, size);
    } else {
        let file = std::fs::File::open(path)?;
        for e in raw_status(&file, 0, size)? {
            if !matches!(e.allocation, Allocation::Zero { .. }) {
                add(e.start, e.length);
            }
        }
    }
    Ok(out)
}

/// The copy pipeline: reads on the source queue, writes of non-zero pieces on the destination.
/// Full-size chunk buffers are recycled once their read and writes completed.
struct Copy {
    src: Box<dyn ImageQueue>,
    dst: Box<dyn ImageQueue>,
    /// Reads in flight: tag -> (offset, buffer).
    reads: HashMap<u64, (u64, SharedBuf)>,
    /// Buffers whose writes are pending: tag -> (buffer, writes left).
    held: HashMap<u64, (SharedBuf, usize)>,
    /// Writes not yet submitted: (tag, offset, skip, len).
    backlog: VecDeque<(u64, u64, usize, usize)>,
    pool: Vec<SharedBuf>,
    scratch: Vec<u8>,
    zeros: Vec<u8>,
    granularity: u64,
    done: u64,
    progress: Progress,
}

impl Copy {
    fn new(
        src: Box<dyn ImageQueue>,
        dst: Box<dyn ImageQueue>,
        granularity: u64,
        progress: Progress,
    ) -> anyhow::Result<Copy> {
        Ok(Copy {
            src,
            dst,
            reads: HashMap::new(),
            held: HashMap::new(),
            backlog: VecDeque::new(),
            pool: Vec::new(),
            scratch: Vec::new(),
            zeros: vec![0u8; usize::try_from(granularity)?],
            granularity,
            done: 0,
            progress,
        })
    }

    fn run(&mut self, ranges: &[(u64, u64)], total: u64) -> anyhow::Result<()> {
        let mut todo = ranges
            .iter()
            .flat_map(|&(s, l)| pipe::chunks(s, l, CHUNK))
            .peekable();
        let mut tag = 0u64;
        loop {
            while self.reads.len() < DEPTH && self.reads.len() + self.held.len() < 2 * DEPTH {
                let Some((offset, len)) = todo.next() else {
                    break;
                };
                tag += 1;
                let buf = self.buffer(len)?;
                pipe::read_into(&mut *self.src, offset, &buf, tag)?;
                self.reads.insert(tag, (offset, buf));
            }
            self.collect_reads()?;
            self.start_writes()?;
            for t in pipe::reap(&mut *self.dst, "write")? {
                self.wrote(t);
            }
            self.progress.update(self.done, total);
            if todo.peek().is_none() && self.reads.is_empty() && self.held.is_empty() {
                return Ok(());
            }
            pipe::wait_any(&mut [&mut *self.src, &mut *self.dst])?;
        }
    }

    /// A buffer for a read of `len` bytes (a recycled one for full chunks).
    fn buffer(&mut self, len: u64) -> anyhow::Result<SharedBuf> {
        if len == CHUNK {
            if let Some(buf) = self.pool.pop() {
                return Ok(buf);
            }
        }
        Ok(SharedBuf::new(usize::try_from(len)?))
    }

    fn recycle(&mut self, buf: SharedBuf) {
        if buf.len() as u64 == CHUNK {
            self.pool.push(buf);
        }
    }

    fn wrote(&mut self, tag: u64) {
        let Some(entry) = self.held.get_mut(&tag) else {
            return;
        };
        entry.1 -= 1;
        if entry.1 == 0 {
            if let Some((buf, _)) = self.held.remove(&tag) {
                self.recycle(buf);
            }
        }
    }

    fn collect_reads(&mut self) -> anyhow::Result<()> {
        for tag in pipe::reap(&mut *self.src, "read")? {
            let Some((offset, buf)) = self.reads.remove(&tag) else {
                continue;
            };
            self.done += buf.len() as u64;
            let runs = self.nonzero_runs(offset, &buf)?;
            if runs.is_empty() {
                self.recycle(buf);
                continue;
            }
            for &(skip, len) in &runs {
                self.backlog
                    .push_back((tag, offset + skip as u64, skip, len));
            }
            self.held.insert(tag, (buf, runs.len()));
        }
        Ok(())
    }

    /// Runs of `buf` (read at `offset`) holding non-zero granules: `(skip, len)`.
    fn nonzero_runs(
        &mut self,
        offset: u64,
        buf: &SharedBuf,
    ) -> anyhow::Result<Vec<(usize, usize)>> {
        let shared = SharedBufs::new(Box::new(buf.clone())).context("buffer too large")?;
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for (at, n) in pipe::chunks(offset, buf.len() as u64, self.granularity) {
            let skip = usize::try_from(at - offset)?;
            let n = usize::try_from(n)?;
            if self.is_zero(&shared, skip, n) {
                continue;
            }
            match runs.last_mut() {
                Some(last) if last.0 + last.1 == skip => last.1 += n,
                _ => runs.push((skip, n)),
            }
        }
        Ok(runs)
    }

    /// True if bytes `[skip, skip + n)` of `shared` are all zero. A short probe first: data
    /// granules are told apart without copying them whole.
    fn is_zero(&mut self, shared: &SharedBufs, skip: usize, n: usize) -> bool {
        for len in [n.min(PROBE), n] {
            let mut piece = Composite::new();
            if !piece.push_shared(shared, skip, len) {
                return false;
            }
            self.scratch.resize(len, 0);
            gather(&piece, &mut self.scratch);
            if self.zeros.get(..len) != Some(&self.scratch[..]) {
                return false;
            }
        }
        true
    }

    fn start_writes(&mut self) -> anyhow::Result<()> {
        while self.dst.in_flight() < DEPTH {
            let Some((tag, offset, skip, len)) = self.backlog.pop_front() else {
                break;
            };
            let Some((buf, _)) = self.held.get(&tag) else {
                continue;
            };
            pipe::write(&mut *self.dst, offset, buf, (skip, len), tag)?;
        }
        Ok(())
    }
}
