//! `rustbk img create`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use rustbk_formats::Format;
use rustbk_formats::engine::Access;
use rustbk_formats::qcow2::{self, Compat, CreateOptions};

use super::{FormatArg, parse_options};
use crate::cli::parse_size;

/// `rustbk img create [-q] [-f FMT] [-b BACKING -F FMT [-u]] [-o OPTIONS] FILE [SIZE]`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Format of the new image.
    #[arg(short = 'f', value_enum, default_value_t = FormatArg::Raw)]
    pub format: FormatArg,
    /// Backing file (qcow2), or parent (vpc: a differencing disk; vmdk: a sparse child);
    /// relative names are relative to FILE's folder.
    #[arg(short = 'b')]
    pub backing: Option<PathBuf>,
    /// Format of the backing file (required with a backing file, as qemu-img requires it).
    #[arg(short = 'F', value_enum)]
    pub backing_format: Option<FormatArg>,
    /// Do not open the backing file to check it (the size must then be given).
    #[arg(short = 'u')]
    pub unsafe_backing: bool,
    /// Format options: qcow2: cluster_size=SIZE, compat=0.10|1.1, refcount_bits=N,
    /// backing_file=NAME, backing_fmt=FMT; vpc: subformat=dynamic|fixed, block_size=SIZE;
    /// vmdk: subformat=monolithicSparse|monolithicFlat|twoGbMaxExtentSparse|
    /// twoGbMaxExtentFlat|streamOptimized.
    #[arg(short = 'o')]
    pub options: Vec<String>,
    /// The new image (must not exist).
    pub file: PathBuf,
    /// Virtual size (k, M, G, T suffixes); may be left out with a backing file.
    #[arg(value_parser = parse_size)]
    pub size: Option<u64>,
    /// Print nothing but errors (no `Formatting ...` line).
    #[arg(short = 'q')]
    pub quiet: bool,
}

impl CreateArgs {
    /// Prints qemu-img's `Formatting 'FILE', fmt=...` line with `details`, unless `-q`.
    pub fn formatting(&self, details: &str) {
        if !self.quiet {
            println!("Formatting '{}', {details}", self.file.display());
        }
    }
}

/// Creates the image.
pub fn run(args: CreateArgs) -> anyhow::Result<ExitCode> {
    let size = args.size.unwrap_or(0);
    match args.format {
        FormatArg::Raw => {
            if args.backing.is_some() || !args.options.is_empty() {
                bail!("raw images take no backing file and no options");
            }
            if args.size.is_none() {
                bail!("Image creation needs a size parameter");
            }
            rustbk_formats::create_raw(&args.file, size)
                .with_context(|| format!("Could not create '{}'", args.file.display()))?;
            args.formatting(&format!("fmt=raw size={size}"));
        }
        FormatArg::Qcow2 => create_qcow2(&args)?,
        FormatArg::Vpc => super::vpc::create(&args)?,
        FormatArg::Vmdk => super::vmdk::create_vmdk(&args)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn create_qcow2(args: &CreateArgs) -> anyhow::Result<()> {
    let opts = qcow2_options(args)?;
    let backing_size = match &opts.backing_file {
        Some(name) => check_backing(args, name, opts.backing_format)?,
        None => None,
    };
    let Some(size) = args.size.or(backing_size) else {
        bail!("Image creation needs a size parameter");
    };
    qcow2::create(&args.file, size, &opts)
        .with_context(|| format!("Could not create '{}'", args.file.display()))?;
    args.formatting(&format!(
        "fmt=qcow2 cluster_size={} compat={} refcount_bits={} size={size}",
        opts.cluster_size,
        compat_name(opts.compat),
        opts.refcount_bits
    ));
    Ok(())
}

/// Refuses a backing file without a format, with a protocol name, or (unless `-u`) that cannot
/// be opened, before anything is created; the messages are qemu-img's. Returns the backing
/// image's size (rounded up to 512 bytes) when it was opened.
fn check_backing(
    args: &CreateArgs,
    name: &Path,
    format: Option<Format>,
) -> anyhow::Result<Option<u64>> {
    let file = args.file.display();
    let no_format = "Backing file specified without backing format";
    if let Some(protocol) = rustbk_formats::protocol_of(name) {
        bail!(
            "{file}: Could not open '{}': protocol '{protocol}' is not supported",
            name.display()
        );
    }
    if args.unsafe_backing {
        return match format {
            Some(_) => Ok(None),
            None => bail!("{file}: {no_format}"),
        };
    }
    let path = match args.file.parent() {
        Some(dir) if name.is_relative() => dir.join(name),
        _ => name.to_owned(),
    };
    let image = super::open(&path, format, Access::ReadOnly).map_err(|e| {
        anyhow::anyhow!(
            "{file}: Could not open '{}': {}\nCould not open backing image.",
            path.display(),
            e.root_cause()
        )
    })?;
    if format.is_none() {
        let detected = super::format_name(image.format());
        bail!("{file}: {no_format}\nDetected format of {detected}.");
    }
    Ok(Some(image.geometry().size.div_ceil(512) * 512))
}

/// The qcow2 creation options of `-b`, `-F` and `-o`.
pub fn qcow2_options(args: &CreateArgs) -> anyhow::Result<CreateOptions> {
    let mut opts = options_from(&args.options)?;
    if let Some(b) = &args.backing {
        opts.backing_file = Some(b.clone());
    }
    if let Some(f) = args.backing_format {
        opts.backing_format = Some(f.into());
    }
    Ok(opts)
}

/// qcow2 creation options from `-o` strings.
pub fn options_from(options: &[String]) -> anyhow::Result<CreateOptions> {
    let mut opts = CreateOptions::default();
    for (key, value) in parse_options(options)? {
        match key.as_str() {
            "cluster_size" => {
                let cs = parse_size(&value).map_err(anyhow::Error::msg)?;
                opts.cluster_size =
                    u32::try_from(cs).with_context(|| format!("cluster_size {value}"))?;
            }
            "compat" => {
                opts.compat = match value.as_str() {
                    "0.10" | "v2" => Compat::V0_10,
                    "1.1" | "v3" => Compat::V1_1,
                    other => bail!("Invalid compat version '{other}' (0.10 or 1.1)"),
                }
            }
            "refcount_bits" => {
                opts.refcount_bits = value
                    .parse()
                    .with_context(|| format!("refcount_bits {value}"))?;
            }
            "backing_file" => opts.backing_file = Some(PathBuf::from(value)),
            "backing_fmt" => {
                opts.backing_format = Some(match value.as_str() {
                    "raw" => Format::Raw,
                    "qcow2" => Format::Qcow2,
                    other => bail!("Unsupported backing format '{other}'"),
                })
            }
            other => bail!("Invalid parameter '{other}' for qcow2"),
        }
    }
    Ok(opts)
}

fn compat_name(c: Compat) -> &'static str {
    match c {
        Compat::V0_10 => "0.10",
        Compat::V1_1 => "1.1",
    }
}
