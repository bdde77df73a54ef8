//! `rustbk img`: image tools following qemu-img's conventions (`create`, `info`, `check`,
//! `convert`, `compare`, `map`, `resize`, `commit`, `rebase`, `bench`), one module per subcommand, all on the formats
//! crate and its shared I/O engine.

mod bench;
mod check;
mod commit;
mod compare;
mod convert;
mod create;
mod info;
pub(crate) use info::ImageInfo;
mod map;
mod pipe;
pub(crate) mod progress;
mod rebase;
mod rebase_copy;
mod resize;
mod vmdk;
mod vpc;
mod vpc_check;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use rustbk_formats::engine::Access;
use rustbk_formats::{BackingPolicy, BlockImage, CacheMode, Format, OpenOptions};

pub use bench::BenchArgs;
pub use check::CheckArgs;
pub use commit::CommitArgs;
pub use compare::CompareArgs;
pub use convert::ConvertArgs;
pub use create::CreateArgs;
pub use info::InfoArgs;
pub use map::MapArgs;
pub use rebase::RebaseArgs;
pub use resize::ResizeArgs;

/// `rustbk img`.
#[derive(Debug, Args)]
pub struct ImgArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ImgCommand,
}

/// The image subcommands.
#[derive(Debug, Subcommand)]
pub enum ImgCommand {
    /// Create a new image.
    Create(CreateArgs),
    /// Show an image's format, sizes and options.
    Info(InfoArgs),
    /// Check a qcow2, VHD (vpc) or VMDK image's metadata, optionally repairing it (qcow2 and
    /// VHD).
    Check(CheckArgs),
    /// Copy an image into a new image, possibly of another format.
    Convert(ConvertArgs),
    /// Compare the guest-visible contents of two images.
    Compare(CompareArgs),
    /// Show where the data of an image and its backing chain lives.
    Map(MapArgs),
    /// Grow an image.
    Resize(ResizeArgs),
    /// Merge an image into its backing file (qemu-img commit, vhd-util coalesce).
    ///
    /// Copies what FILE holds itself into its backing file, or with `-b BASE` what every image
    /// above BASE holds into BASE (the top-most image wins); ranges stored as zeros are
    /// written as zeros, so the base's old data does not show through. The base is opened
    /// read-write in the format its child names (never probed), written through rustbk's
    /// normal write path, which orders its metadata updates for crash safety, and flushed. A
    /// base smaller than FILE is grown first when it is qcow2 or raw; a smaller VHD or VMDK
    /// base is refused. Only chains whose images above the base share FILE's format are
    /// committed.
    ///
    /// Afterwards, per format of FILE:
    ///
    /// qcow2: FILE is emptied, as qemu-img empties it (every cluster unmapped and released, so
    /// it reads its backing file again, and the freed clusters punched out of the file; without
    /// internal snapshots the file is then cut down to its header, refcount structures and L1
    /// table), once the base is flushed; not with `-d`, nor with `-b` (which implies `-d`).
    ///
    /// vpc (VHD) and vmdk: FILE keeps its data, as `vhd-util coalesce` keeps the child, and a
    /// note says so; it reads as before and its data now equals the base's there.
    ///
    /// vmdk: also, a base takes a new CID with its first write; the image right above it is given
    /// that CID as its `parentCID`, so that it stays readable.
    ///
    /// A crash during the copy leaves the base consistent (each range old or committed) and
    /// FILE as it was: run the commit again. A crash while a qcow2 FILE is emptied leaves it
    /// reading the same (each cluster its own, equal to the base's, or unmapped; at worst
    /// leaked clusters, which `check -r leaks` gives back). A crash between a VMDK base's first
    /// write and its child's new `parentCID` leaves the child refused by the CID check, with an
    /// error naming both CIDs and the relink command (`rustbk img rebase -u -b BASE -F vmdk
    /// CHILD`; sound, because the base changed only where the child holds its own data). With
    /// `-b` the images between FILE and BASE are not changed; as with qemu-img, they no longer
    /// show their former contents once BASE changed under them. Prints `Image committed.`;
    /// any failure exits 1.
    Commit(CommitArgs),
    /// Change the backing file (qcow2) or parent (vpc, vmdk) of an image (qemu-img rebase;
    /// with -u, vhd-util modify -p).
    ///
    /// Safe mode (the default) keeps FILE's content: wherever FILE does not hold its own data
    /// and its old backing chain reads differently from the new backing file, the old chain's
    /// data is copied into FILE through rustbk's normal write path; FILE is flushed; only then
    /// is the reference rewritten, and made durable. With -u only the reference is rewritten:
    /// FILE then reads the new backing file wherever it does not hold its own data (for a
    /// backing file with the same content, such as a copy or a moved file).
    ///
    /// What is rewritten: qcow2: the backing file name and the backing format header extension
    /// (they must fit in the header cluster). vpc: the parent locators (MacX, W2ku with the
    /// absolute path, W2ru with the relative name, in the space the image reserved for them),
    /// the parent's unique id, time stamp and name in the dynamic header, and its checksum.
    /// vmdk: parentFileNameHint and parentCID (the new parent's CID).
    ///
    /// BACKING is relative to FILE's folder unless absolute; protocol names are refused, and
    /// the new backing file must open (except for a qcow2 FILE with -u and -F). -b "" rebases
    /// onto nothing (qcow2, vmdk: in safe mode all of the old chain's data is copied in); a
    /// differencing VHD cannot lose its parent. To relink a VMDK child refused because its
    /// parentCID is not its parent's CID (a commit interrupted before it relinked the child):
    /// rustbk img rebase -u -b PARENT -F vmdk CHILD. A crash during the copy leaves FILE
    /// reading as before over its old backing file; run the rebase again. Any failure exits 1.
    Rebase(RebaseArgs),
    /// Measure the I/O engine on an image like qemu-img bench (no guest, no ring).
    Bench(BenchArgs),
}

/// Runs an image subcommand; the exit code follows qemu-img's for each subcommand.
pub fn run(args: ImgArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ImgCommand::Create(a) => create::run(a),
        ImgCommand::Info(a) => info::run(a),
        ImgCommand::Check(a) => check::run(a),
        ImgCommand::Convert(a) => convert::run(a),
        ImgCommand::Compare(a) => compare::run(a),
        ImgCommand::Map(a) => map::run(a),
        ImgCommand::Resize(a) => resize::run(a),
        ImgCommand::Commit(a) => commit::run(a),
        ImgCommand::Rebase(a) => rebase::run(a),
        ImgCommand::Bench(a) => bench::run(a),
    }
}

/// Image formats, named as qemu-img names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// Raw disk bytes.
    Raw,
    /// QEMU copy-on-write version 2.
    Qcow2,
    /// VHD (Virtual PC / Hyper-V / XenServer): fixed, dynamic and differencing disks.
    Vpc,
    /// VMware's virtual disk.
    Vmdk,
}

impl From<FormatArg> for Format {
    fn from(f: FormatArg) -> Format {
        match f {
            FormatArg::Raw => Format::Raw,
            FormatArg::Qcow2 => Format::Qcow2,
            FormatArg::Vpc => Format::Vpc,
            FormatArg::Vmdk => Format::Vmdk,
        }
    }
}

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, ValueEnum)]
pub enum OutputArg {
    /// For people.
    #[default]
    Human,
    /// JSON with qemu-img's field names.
    Json,
}

/// The name qemu-img uses for a format.
pub fn format_name(f: Format) -> &'static str {
    match f {
        Format::Qcow2 => "qcow2",
        Format::Vpc => "vpc",
        Format::Vmdk => "vmdk",
        Format::Null => "null",
        _ => "raw",
    }
}

/// The format of the image at `path`: `format` if given, else probed from its first bytes
/// (only the image tool probes; the backend is always told the format).
pub fn format_of(path: &Path, format: Option<Format>) -> anyhow::Result<Format> {
    match format {
        Some(format) => Ok(format),
        None => rustbk_formats::probe_format(path)
            .with_context(|| format!("Could not open '{}'", path.display())),
    }
}

/// qemu-img's `-t CACHE` modes (see [`CacheMode`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CacheArg {
    /// O_DIRECT; flushes are fdatasyncs.
    None,
    /// The page cache; flushes are fdatasyncs.
    Writeback,
    /// The page cache with O_DSYNC: every write durable when it completes.
    Writethrough,
    /// O_DIRECT with O_DSYNC.
    Directsync,
    /// The page cache; flushes and syncs do nothing.
    Unsafe,
}

impl From<CacheArg> for CacheMode {
    fn from(c: CacheArg) -> CacheMode {
        match c {
            CacheArg::None => CacheMode::None,
            CacheArg::Writeback => CacheMode::Writeback,
            CacheArg::Writethrough => CacheMode::Writethrough,
            CacheArg::Directsync => CacheMode::DirectSync,
            CacheArg::Unsafe => CacheMode::Unsafe,
        }
    }
}

/// How the image tool opens images: backing files are followed wherever they are and probed
/// when their format is not named, as qemu-img does (the administrator runs it).
pub fn tool_options(access: Access, cache: CacheMode) -> OpenOptions {
    OpenOptions {
        read_only: access.read_only(),
        force_share: access == Access::ForceShare,
        cache,
        backing: BackingPolicy::Follow,
        // Like qemu-img, the image tools read files of any size.
        require_whole_sectors: false,
        ..OpenOptions::default()
    }
}

/// Opens an image (format probed unless given) through the shared engine, page cache on.
pub fn open(
    path: &Path,
    format: Option<Format>,
    access: Access,
) -> anyhow::Result<Arc<dyn BlockImage>> {
    open_cached(path, format, access, CacheMode::Writeback)
}

/// Opens an image in cache mode `cache`.
pub fn open_cached(
    path: &Path,
    format: Option<Format>,
    access: Access,
    cache: CacheMode,
) -> anyhow::Result<Arc<dyn BlockImage>> {
    let format = format_of(path, format)?;
    rustbk_formats::open_image(path, format, &tool_options(access, cache))
        .with_context(|| format!("Could not open '{}'", path.display()))
}

/// The access of a read-only command: `-U` shares the image with writers, as in qemu-img.
pub fn read_access(force_share: bool) -> Access {
    Access::new(true, force_share)
}

/// Parses qemu-img's `-o key=value,key=value` options (several `-o` accumulate).
pub fn parse_options(opts: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for item in opts.iter().flat_map(|o| o.split(',')) {
        if item.is_empty() {
            continue;
        }
        let Some((k, v)) = item.split_once('=') else {
            bail!("Invalid option '{item}': expected key=value");
        };
        out.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    Ok(out)
}
