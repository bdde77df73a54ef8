//! `rustbk img commit`: merges an image into its backing file (or into a base further down its
//! chain), as `qemu-img commit` and `vhd-util coalesce` do.
//!
//! The ranges the top image answers itself (and, with `-b`, every level above the base) come
//! from the chain's allocation map (`rustbk img map`): they are read through the top image, so
//! the top-most level wins, and written into the base through its format's normal,
//! crash-ordered write path; ranges stored as zeros there are written as zeros, so the base's
//! old data does not show through. The base is flushed before the command reports success.
//! Then a qcow2 top image is emptied as qemu-img empties it; VHD and VMDK children are kept
//! (see [`CommitArgs`]).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use rustbk_formats::engine::Access;
use rustbk_formats::engine::lock::{Held, LockMode, lock};
use rustbk_formats::qcow2::map::{MapEntry, map_chain};
use rustbk_formats::{CacheMode, Format, ImageQueue, IoOp};

use super::info::{ImageInfo, read_chain};
use super::pipe::{self, CHUNK, DEPTH};
use super::progress::Progress;
use super::{CacheArg, FormatArg, open_cached, read_access, tool_options};

/// `rustbk img commit [-f FMT] [-t CACHE] [-b BASE] [-d] [-p] [-q] FILE` (what it does: the
/// `Commit` variant of [`super::ImgCommand`], shown by `--help`).
#[derive(Debug, Args)]
pub struct CommitArgs {
    /// Format of FILE (probed when not given).
    #[arg(short = 'f', value_enum)]
    pub format: Option<FormatArg>,
    /// Cache mode of the base: `writeback` (default), `none` (O_DIRECT), `writethrough`,
    /// `directsync`; every mode but `unsafe` flushes the base before the command returns.
    #[arg(short = 't', value_enum, default_value_t = CacheArg::Writeback)]
    pub cache: CacheArg,
    /// The image to commit into: FILE's backing file (the default) or one further down its
    /// backing chain. Implies `-d`.
    #[arg(short = 'b')]
    pub base: Option<PathBuf>,
    /// Do not empty FILE after the commit (only qcow2 images are emptied; see above).
    #[arg(short = 'd')]
    pub keep: bool,
    /// Show progress on stderr.
    #[arg(short = 'p')]
    pub progress: bool,
    /// Print nothing but errors.
    #[arg(short = 'q')]
    pub quiet: bool,
    /// The image whose data is committed.
    pub file: PathBuf,
}

/// A range to copy into the base: `(start, length, reads as zeros)`.
type Range = (u64, u64, bool);

/// Commits; any failure exits 1, as qemu-img's.
pub fn run(args: CommitArgs) -> anyhow::Result<ExitCode> {
    let top_format = super::format_of(&args.file, args.format.map(Into::into))?;
    let chain = read_chain(&args.file, Some(arg_of(top_format)), false)?;
    let depth = base_depth(&args, &chain)?;
    let base_format = base_format(&chain, depth)?;
    same_format_above(&chain, depth)?;
    grow_base(&chain, depth, base_format)?;
    copy_into_base(&args, &chain, (depth, base_format), top_format)?;
    if base_format == Format::Vmdk {
        relink_vmdk(&chain[depth - 1].filename, &chain[depth].filename)?;
    }
    let empty = !args.keep && args.base.is_none();
    if empty && top_format == Format::Qcow2 {
        rustbk_formats::qcow2::empty::make_empty(&args.file).with_context(|| {
            format!(
                "The base was committed, but '{}' could not be emptied (its data equals the \
                 base's; it may be kept, or emptied with another commit)",
                args.file.display()
            )
        })?;
    }
    if !args.quiet {
        println!("Image committed.");
        if empty && top_format != Format::Qcow2 {
            println!("{}", kept_note(&args.file));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Copies the ranges answered above the base into the base (level `depth` of `chain`, of
/// format `base_format`), flushes it and syncs its metadata. The images above the base are
/// locked against writers meanwhile.
fn copy_into_base(
    args: &CommitArgs,
    chain: &[ImageInfo],
    (depth, base_format): (usize, Format),
    top_format: Format,
) -> anyhow::Result<()> {
    let _held = hold_readers(&chain[..depth])?;
    let base_path = &chain[depth].filename;
    let base = rustbk_formats::open_image(
        base_path,
        base_format,
        &tool_options(Access::ReadWrite, args.cache.into()),
    )
    .with_context(|| format!("Could not open the base '{}'", base_path.display()))?;
    let top = open_cached(
        &args.file,
        Some(top_format),
        read_access(true),
        CacheMode::Writeback,
    )?;
    let ranges = ranges(&args.file, top_format, depth)?;
    let mut job = Job {
        top: top.open_queue(pipe::QUEUE_DEPTH)?,
        base: base.open_queue(pipe::QUEUE_DEPTH)?,
        zeroes: base.features().write_zeroes,
        progress: Progress::new(args.progress && !args.quiet, false),
    };
    job.copy(&ranges)?;
    pipe::flush(&mut *job.base)?;
    job.progress.finish();
    drop(job);
    base.sync_metadata()?;
    Ok(())
}

/// A VMDK base took a new CID with its first write: the image right above it names that CID
/// as its `parentCID`, or no reader would accept it as the base's child any more. Done after
/// the base is durable; a crash in between leaves the base committed and the child refused
/// by its parentCID check, whose error names both CIDs and the relink command
/// (`rustbk img rebase -u -b BASE -F vmdk CHILD`). That relink is sound: commit writes into
/// the base only ranges the child holds itself, so the child reads the same over the old and
/// the new base. The window cannot be closed: the two CIDs live in two files, which no single
/// write changes together (relinking the child first only moves the window before the base's
/// CID change).
fn relink_vmdk(child: &Path, base: &Path) -> anyhow::Result<()> {
    let cid = rustbk_formats::vmdk::create::describe(base)
        .with_context(|| format!("Could not open the base '{}'", base.display()))?
        .cid;
    rustbk_formats::vmdk::relink::set_parent_cid(child, cid).with_context(|| {
        format!(
            "The base was committed, but '{}' could not take its new CID {cid:08x} as its \
             parentCID",
            child.display()
        )
    })
}

/// The note printed when a VHD or VMDK child is kept.
fn kept_note(file: &Path) -> String {
    format!(
        "Note: '{}' still holds its data (as with vhd-util coalesce, the child is kept as it \
         is); it now matches its backing file there.",
        file.display()
    )
}

/// The chain level (1: the backing file) that is the base.
fn base_depth(args: &CommitArgs, chain: &[ImageInfo]) -> anyhow::Result<usize> {
    if chain.len() < 2 {
        bail!(
            "Cannot commit '{}': it has no backing file to commit into",
            args.file.display()
        );
    }
    let Some(base) = &args.base else {
        return Ok(1);
    };
    let wanted = std::fs::metadata(base)
        .with_context(|| format!("Could not open the base '{}'", base.display()))?;
    for (level, info) in chain.iter().enumerate() {
        let meta = std::fs::metadata(&info.filename)
            .with_context(|| format!("Cannot stat '{}'", info.filename.display()))?;
        if !super::convert::same_file(&meta, &wanted) {
            continue;
        }
        if level == 0 {
            bail!(
                "Cannot commit '{}' into itself: the base must be below it in its backing chain",
                args.file.display()
            );
        }
        return Ok(level);
    }
    bail!(
        "'{}' is not in the backing chain of '{}'",
        base.display(),
        args.file.display()
    )
}

/// The base's format, as the image above it names it (never probed: a guest may have written
/// any header into a raw base).
fn base_format(chain: &[ImageInfo], depth: usize) -> anyhow::Result<Format> {
    let child = &chain[depth - 1];
    let Some((name, _, named)) = child.backing() else {
        bail!("'{}' has no backing file", child.filename.display());
    };
    match named.as_deref() {
        Some("raw") => Ok(Format::Raw),
        Some("qcow2") => Ok(Format::Qcow2),
        Some("vpc") => Ok(Format::Vpc),
        Some("vmdk") => Ok(Format::Vmdk),
        Some(other) => bail!(
            "'{}' names the unsupported format '{other}' for its backing file",
            child.filename.display()
        ),
        None => bail!(
            "'{}' names no format for its backing file '{}'; commit writes a base only in the \
             format its child names (set one with `qemu-img rebase -u -b {} -F raw|qcow2 {}`)",
            child.filename.display(),
            name.display(),
            name.display(),
            child.filename.display()
        ),
    }
}

/// Refuses chains whose images above the base are not all of one format: the allocation map
/// of each format follows only its own kind of backing file.
fn same_format_above(chain: &[ImageInfo], depth: usize) -> anyhow::Result<()> {
    let top = chain[0].format_name();
    for info in &chain[1..depth] {
        if info.format_name() != top {
            bail!(
                "Cannot commit across '{}' ({}) in a chain of {top} images: commit through \
                 images of one format only",
                info.filename.display(),
                info.format_name()
            );
        }
    }
    Ok(())
}

/// Locks the images above the base against writers (a running guest) for the whole commit;
/// they are then read sharing these locks.
fn hold_readers(levels: &[ImageInfo]) -> anyhow::Result<Vec<Held>> {
    levels
        .iter()
        .map(|info| {
            let path = &info.filename;
            let opened = || format!("Could not open '{}'", path.display());
            let file = File::open(path).with_context(opened)?;
            lock(file, path, LockMode::Reader).with_context(opened)
        })
        .collect()
}

/// Grows a qcow2 or raw base to the top image's size; refuses other smaller bases.
fn grow_base(chain: &[ImageInfo], depth: usize, format: Format) -> anyhow::Result<()> {
    let (top, base) = (&chain[0], &chain[depth]);
    if top.virtual_size <= base.virtual_size {
        return Ok(());
    }
    match format {
        Format::Qcow2 | Format::Raw => {
            super::resize::grow(&base.filename, format == Format::Qcow2, top.virtual_size)
        }
        _ => bail!(
            "The base '{}' ({} bytes) is smaller than '{}' ({} bytes), and {} images are not \
             grown; grow the base first",
            base.filename.display(),
            base.virtual_size,
            top.filename.display(),
            top.virtual_size,
            super::format_name(format)
        ),
    }
}

/// The ranges answered above the base (chain depth below `depth`), adjacent ones of one kind
/// merged.
fn ranges(file: &Path, format: Format, depth: usize) -> anyhow::Result<Vec<Range>> {
    let entries: Vec<MapEntry> = match format {
        Format::Vpc => rustbk_formats::vhd::map::map_file(file, true)?,
        Format::Vmdk => rustbk_formats::vmdk::map::map_file(file, true)?,
        _ => map_chain(file, format, true)?,
    };
    let mut out: Vec<Range> = Vec::new();
    for e in entries.iter().filter(|e| (e.depth as usize) < depth) {
        let zero = e.zero && !e.data;
        match out.last_mut() {
            Some(last) if last.0 + last.1 == e.start && last.2 == zero => last.1 += e.length,
            _ => out.push((e.start, e.length, zero)),
        }
    }
    Ok(out)
}

fn arg_of(format: Format) -> FormatArg {
    match format {
        Format::Qcow2 => FormatArg::Qcow2,
        Format::Vpc => FormatArg::Vpc,
        Format::Vmdk => FormatArg::Vmdk,
        _ => FormatArg::Raw,
    }
}

/// The copy from the top image's queue into the base's.
struct Job {
    top: Box<dyn ImageQueue>,
    base: Box<dyn ImageQueue>,
    /// The base takes write-zeroes ops (else zeros are read from the top and written).
    zeroes: bool,
    progress: Progress,
}

impl Job {
    /// Copies `ranges`, [`DEPTH`] chunks at a time.
    fn copy(&mut self, ranges: &[Range]) -> anyhow::Result<()> {
        let total: u64 = ranges.iter().map(|r| r.1).sum();
        let pieces: Vec<Range> = ranges
            .iter()
            .flat_map(|&(s, l, z)| pipe::chunks(s, l, CHUNK).map(move |(a, n)| (a, n, z)))
            .collect();
        let mut done = 0u64;
        for window in pieces.chunks(DEPTH) {
            self.copy_window(window)?;
            done += window.iter().map(|p| p.1).sum::<u64>();
            self.progress.update(done, total);
        }
        Ok(())
    }

    /// Reads the data pieces of `window` from the top, then writes them (and the zero pieces)
    /// into the base and waits for every write.
    fn copy_window(&mut self, window: &[Range]) -> anyhow::Result<()> {
        let (zeros, data): (Vec<Range>, Vec<Range>) =
            window.iter().partition(|p| p.2 && self.zeroes);
        let reads: Vec<(u64, u64)> = data.iter().map(|p| (p.0, p.1)).collect();
        let bufs = pipe::read_all(&mut *self.top, &reads)?;
        let mut tag = 0u64;
        for (&(offset, len), buf) in reads.iter().zip(&bufs) {
            pipe::write(
                &mut *self.base,
                offset,
                buf,
                (0, usize::try_from(len)?),
                tag,
            )?;
            tag += 1;
        }
        for &(offset, len, _) in &zeros {
            let op = IoOp::WriteZeroes { offset, len };
            self.base
                .submit(op, tag)
                .context("Cannot queue a write of zeros")?;
            tag += 1;
        }
        while self.base.in_flight() > 0 {
            self.base
                .wait(Some(std::time::Duration::from_millis(100)))?;
            pipe::reap(&mut *self.base, "write into the base")?;
        }
        Ok(())
    }
}
