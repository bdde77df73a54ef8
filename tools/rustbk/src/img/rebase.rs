//! `rustbk img rebase`: changes the backing file (qcow2) or parent (differencing VHD, VMDK)
//! an image names, as `qemu-img rebase` does; `-u` is `vhd-util modify -p`'s job.
//!
//! Safe mode (the default) keeps the image's content: every range the image does not answer
//! itself, and where its old backing chain and the new one read differently, is read through
//! the old chain and written into the image through its format's normal, crash-ordered write
//! path (see [`copy`](super::rebase_copy)). Unsafe mode (`-u`) only rewrites the reference.
//!
//! Order, for crash safety: (1) the data is copied into the image, flushed and its metadata
//! synced; (2) only then is the reference rewritten, in one write of the header (qcow2), of
//! the locators then the dynamic header (VHD) or of the descriptor (VMDK), and made durable
//! with fdatasync. A crash during (1) leaves the image reading as before over its old backing
//! file (the copied ranges equal what the old chain read there): run the rebase again. A crash
//! during (2) leaves the old or the new reference (VHD: see `rustbk_formats::vhd::reparent`),
//! either of which reads the image's content.
//!
//! The new name obeys `create -b`'s rules: protocol names (`nbd:`, `json:`) are refused, a
//! relative name is relative to the image's folder, and the backing file must open (in unsafe
//! mode a qcow2 image with `-F` names it without opening it, as qemu-img does).

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use rustbk_formats::Format;

use super::{CacheArg, FormatArg, format_name};

/// `rustbk img rebase [-f FMT] [-F BACKING_FMT] -b BACKING [-u] [-t CACHE] [-p] [-q] FILE`
/// (what it does: the `Rebase` variant of [`super::ImgCommand`], shown by `--help`).
#[derive(Debug, Args)]
pub struct RebaseArgs {
    /// Format of FILE (probed when not given): qcow2, vpc or vmdk.
    #[arg(short = 'f', value_enum)]
    pub format: Option<FormatArg>,
    /// Format of the new backing file (qcow2: raw or qcow2, probed when not given; vpc and
    /// vmdk: the parent is of FILE's format).
    #[arg(short = 'F', value_enum)]
    pub backing_format: Option<FormatArg>,
    /// The new backing file, relative to FILE's folder unless absolute; "" for none (qcow2
    /// and vmdk; a differencing VHD cannot lose its parent).
    #[arg(short = 'b')]
    pub backing: String,
    /// Unsafe: only rewrite the reference; FILE then reads the new backing file's data
    /// wherever it does not hold its own.
    #[arg(short = 'u')]
    pub unsafe_rebase: bool,
    /// Cache mode of FILE while data is copied into it (safe mode).
    #[arg(short = 't', value_enum, default_value_t = CacheArg::Writeback)]
    pub cache: CacheArg,
    /// Show progress on stderr (safe mode).
    #[arg(short = 'p')]
    pub progress: bool,
    /// Print nothing but errors.
    #[arg(short = 'q')]
    pub quiet: bool,
    /// The image to rebase.
    pub file: PathBuf,
}

/// The new backing file.
#[derive(Debug)]
pub struct Target {
    /// The name as it will be stored.
    pub name: PathBuf,
    /// Where it is (relative names resolved against FILE's folder).
    pub path: PathBuf,
    /// Its format.
    pub format: Format,
}

/// Rebases; any failure exits 1 and leaves FILE's reference as it was.
pub fn run(args: RebaseArgs) -> anyhow::Result<ExitCode> {
    let format = super::format_of(&args.file, args.format.map(Into::into))?;
    let target = target(&args, format)?;
    if !args.unsafe_rebase {
        super::rebase_copy::copy(&args, format, target.as_ref())?;
    }
    rewrite(&args.file, format, target.as_ref()).with_context(|| {
        format!(
            "Could not change the backing file of '{}' to '{}'",
            args.file.display(),
            args.backing
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The new backing file of `args` for an image of `format`, checked.
fn target(args: &RebaseArgs, format: Format) -> anyhow::Result<Option<Target>> {
    let file = args.file.display();
    if !matches!(format, Format::Qcow2 | Format::Vpc | Format::Vmdk) {
        bail!(
            "'{file}' is a {} image: only qcow2, vpc and vmdk images have a backing file",
            format_name(format)
        );
    }
    let name = &PathBuf::from(&args.backing);
    if args.backing.is_empty() {
        if format == Format::Vpc {
            bail!(
                "Cannot rebase '{file}' onto nothing: a differencing VHD cannot lose its \
                 parent (a VHD without one is a dynamic disk, which reads its unwritten sectors \
                 as zeros); make a standalone copy with `rustbk img convert -O vpc {file} NEW`"
            );
        }
        return Ok(None);
    }
    if let Some(protocol) = rustbk_formats::protocol_of(name) {
        bail!(
            "{file}: Could not open '{}': protocol '{protocol}' is not supported",
            name.display()
        );
    }
    let path = match args.file.parent() {
        Some(dir) if name.is_relative() => dir.join(name),
        _ => name.clone(),
    };
    let named = backing_format(args, format)?;
    let opens = !args.unsafe_rebase || format != Format::Qcow2 || named.is_none();
    let format = if opens {
        open_new(args, &path, named)?
    } else {
        named.unwrap_or(Format::Raw)
    };
    Ok(Some(Target {
        name: name.clone(),
        path,
        format,
    }))
}

/// The backing format `-F` names, checked against what an image of `format` can name.
fn backing_format(args: &RebaseArgs, format: Format) -> anyhow::Result<Option<Format>> {
    let named: Option<Format> = args.backing_format.map(Into::into);
    let ok = match format {
        Format::Qcow2 => matches!(named, None | Some(Format::Raw | Format::Qcow2)),
        _ => named.is_none_or(|f| f == format),
    };
    if !ok {
        let allowed = match format {
            Format::Qcow2 => "raw or qcow2",
            other => format_name(other),
        };
        bail!(
            "{}: a {} image cannot name a backing file of format '{}' (-F {allowed})",
            args.file.display(),
            format_name(format),
            named.map_or("", format_name)
        );
    }
    Ok(match format {
        Format::Qcow2 => named,
        other => Some(other),
    })
}

/// Opens the new backing file (its format probed unless named) to check it: it must open,
/// and FILE must not be in its chain. Returns its format.
fn open_new(args: &RebaseArgs, path: &Path, named: Option<Format>) -> anyhow::Result<Format> {
    let image = super::open(path, named, super::read_access(false)).map_err(|e| {
        anyhow::anyhow!(
            "{}: Could not open new backing file '{}': {}",
            args.file.display(),
            path.display(),
            e.root_cause()
        )
    })?;
    let chain = super::info::read_chain(path, Some(arg_of(image.format())), true)?;
    let own = std::fs::metadata(&args.file)
        .with_context(|| format!("Cannot stat '{}'", args.file.display()))?;
    for info in &chain {
        let meta = std::fs::metadata(&info.filename)
            .with_context(|| format!("Cannot stat '{}'", info.filename.display()))?;
        if super::convert::same_file(&meta, &own) {
            bail!(
                "Cannot rebase '{}' onto '{}': '{}' is that image itself, and the backing chain \
                 would loop",
                args.file.display(),
                path.display(),
                info.filename.display()
            );
        }
    }
    Ok(image.format())
}

/// Writes the new reference into FILE (the last step; durable when it returns).
fn rewrite(file: &Path, format: Format, target: Option<&Target>) -> anyhow::Result<()> {
    match (format, target) {
        (Format::Qcow2, t) => {
            let backing = t.map(|t| (t.name.as_os_str().as_bytes(), Some(format_name(t.format))));
            rustbk_formats::qcow2::rebase::set_backing(file, backing)?;
        }
        (Format::Vpc, Some(t)) => rustbk_formats::vhd::reparent::set_parent(file, &t.name)?,
        (Format::Vmdk, Some(t)) => {
            let cid = rustbk_formats::vmdk::create::describe(&t.path)
                .with_context(|| format!("Could not open '{}'", t.path.display()))?
                .cid;
            let hint = t
                .name
                .to_str()
                .context("the new parent's name is not UTF-8")?;
            rustbk_formats::vmdk::relink::set_parent(file, Some((hint, cid)))?;
        }
        (Format::Vmdk, None) => rustbk_formats::vmdk::relink::set_parent(file, None)?,
        _ => bail!("'{}' cannot be rebased", file.display()),
    }
    Ok(())
}

/// The format argument of `format`.
pub(super) fn arg_of(format: Format) -> FormatArg {
    match format {
        Format::Qcow2 => FormatArg::Qcow2,
        Format::Vpc => FormatArg::Vpc,
        Format::Vmdk => FormatArg::Vmdk,
        _ => FormatArg::Raw,
    }
}
