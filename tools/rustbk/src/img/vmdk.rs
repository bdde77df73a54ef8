//! VMDK in `rustbk img create` and `convert`: `-o subformat=...`, `-b PARENT`.

use std::path::Path;

use anyhow::{Context, bail};
use rustbk_formats::vmdk::create::{self, Parent, Subformat};

use super::create::CreateArgs;
use super::parse_options;

/// The `subformat=` of `-o` options (monolithicSparse when not given); other keys are refused.
pub fn subformat(options: &[String]) -> anyhow::Result<Subformat> {
    let mut sub = Subformat::MonolithicSparse;
    for (key, value) in parse_options(options)? {
        match key.as_str() {
            "subformat" => sub = Subformat::from_name(&value)?,
            other => bail!("Invalid option '{other}' for vmdk (supported: subformat)"),
        }
    }
    Ok(sub)
}

/// `rustbk img create -f vmdk [-o subformat=...] [-b PARENT] FILE [SIZE]`.
pub fn create_vmdk(args: &CreateArgs) -> anyhow::Result<()> {
    let sub = subformat(&args.options)?;
    let parent = match &args.backing {
        Some(name) => Some(parent_of(&args.file, name)?),
        None => None,
    };
    let size = match (args.size, &parent) {
        (Some(s), _) => s,
        (None, Some((_, size))) => *size,
        (None, None) => bail!("Image creation needs a size parameter"),
    };
    let fail = || format!("Could not create '{}'", args.file.display());
    if sub == Subformat::StreamOptimized {
        create::write_stream_optimized(&args.file, size, |_, _| Ok(false)).with_context(fail)?;
    } else {
        create::create(&args.file, size, sub, parent.as_ref().map(|(p, _)| p))
            .with_context(fail)?;
    }
    args.formatting(&format!("fmt=vmdk size={size} subformat={sub:?}"));
    Ok(())
}

/// The parent named `name` (relative to `file`'s folder): its hint, CID and size.
fn parent_of(file: &Path, name: &Path) -> anyhow::Result<(Parent, u64)> {
    let path = match file.parent() {
        Some(dir) if name.is_relative() => dir.join(name),
        _ => name.to_owned(),
    };
    let d = create::describe(&path)
        .with_context(|| format!("Could not open backing image '{}'", path.display()))?;
    let hint = name
        .to_str()
        .context("the parent's name is not UTF-8")?
        .to_owned();
    Ok((Parent { hint, cid: d.cid }, d.size()?))
}

/// Creates the empty destination of a `convert -O vmdk` (not streamOptimized).
pub fn create_for_convert(path: &Path, size: u64, sub: Subformat) -> anyhow::Result<()> {
    Ok(create::create(path, size.div_ceil(512) * 512, sub, None)?)
}

/// `convert -O vmdk -o subformat=streamOptimized`: the image is written whole, grain by grain,
/// from synchronous reads of `src`.
pub fn convert_stream_optimized(
    dst: &Path,
    src: &dyn rustbk_formats::BlockImage,
    progress: bool,
) -> anyhow::Result<std::process::ExitCode> {
    if std::fs::symlink_metadata(dst).is_ok_and(|m| m.is_file()) {
        std::fs::remove_file(dst).with_context(|| format!("Cannot replace '{}'", dst.display()))?;
    }
    let size = src.geometry().size;
    let mut q = src.open_queue(super::pipe::QUEUE_DEPTH)?;
    let mut shown = super::progress::Progress::new(progress, false);
    let mut read = |offset: u64, out: &mut [u8]| -> Result<bool, rustbk_formats::Error> {
        let bufs = super::pipe::read_all(&mut *q, &[(offset, out.len() as u64)])
            .map_err(|e| rustbk_formats::Error::InvalidArgument(format!("{e:#}")))?;
        let data = bufs.first().map(|b| b.copy_out()).unwrap_or_default();
        out.copy_from_slice(&data[..out.len()]);
        shown.update(offset + out.len() as u64, size);
        Ok(out.iter().any(|&b| b != 0))
    };
    create::write_stream_optimized(dst, size.div_ceil(512) * 512, &mut read)
        .with_context(|| format!("Could not create '{}'", dst.display()))?;
    shown.finish();
    Ok(std::process::ExitCode::SUCCESS)
}

/// `rustbk img check` of a VMDK: every grain directory, table and entry of the image and its
/// parents is read and checked (as `map` does); the first damage found is reported as a
/// corruption (exit 2). No repair.
pub fn check(args: &super::check::CheckArgs) -> anyhow::Result<std::process::ExitCode> {
    if args.repair.is_some() {
        eprintln!("rustbk: Repairing VMDK images is not supported");
        return Ok(std::process::ExitCode::from(1));
    }
    let (corruptions, message) =
        match rustbk_formats::vmdk::map::map_file(&args.file, args.force_share) {
            Ok(_) => (0, None),
            Err(e @ rustbk_formats::Error::InvalidImage(_)) => (1, Some(e.to_string())),
            Err(e) => {
                eprintln!("rustbk: Check of '{}' failed: {e}", args.file.display());
                return Ok(std::process::ExitCode::from(1));
            }
        };
    if let Some(m) = &message {
        eprintln!("ERROR: {m}");
    }
    match args.output {
        super::OutputArg::Json => {
            let v = serde_json::json!({
                "filename": args.file.display().to_string(),
                "format": "vmdk",
                "check-errors": 0,
                "corruptions": corruptions,
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        super::OutputArg::Human if corruptions == 0 => {
            println!("No errors were found on the image.")
        }
        super::OutputArg::Human => println!(
            "\n1 errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it."
        ),
    }
    Ok(std::process::ExitCode::from(if corruptions == 0 {
        0
    } else {
        2
    }))
}
