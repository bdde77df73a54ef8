//! VHD (qemu's `vpc`) in the image tool: `create -f vpc` and `convert -O vpc` options.

use anyhow::{Context, bail};
use rustbk_formats::vhd::{self, VhdCreateOptions, VhdSubformat};

use super::create::CreateArgs;
use super::{FormatArg, parse_options};
use crate::cli::parse_size;

/// VHD creation options from `-o` strings (qemu-img's `subformat=dynamic|fixed`, and
/// `block_size=SIZE` for dynamic disks).
pub fn options_from(options: &[String]) -> anyhow::Result<VhdCreateOptions> {
    let mut opts = VhdCreateOptions::default();
    for (key, value) in parse_options(options)? {
        match key.as_str() {
            "subformat" => {
                opts.subformat = match value.as_str() {
                    "dynamic" => VhdSubformat::Dynamic,
                    "fixed" => VhdSubformat::Fixed,
                    other => bail!("Invalid subformat '{other}' for vpc (dynamic or fixed)"),
                }
            }
            "block_size" => {
                let bs = parse_size(&value).map_err(anyhow::Error::msg)?;
                opts.block_size =
                    u32::try_from(bs).with_context(|| format!("block_size {value}"))?;
            }
            // qemu-img's own option: sizes are always taken from current_size here.
            "force_size" => {}
            other => bail!("Invalid parameter '{other}' for vpc"),
        }
    }
    Ok(opts)
}

/// `rustbk img create -f vpc [-o ...] [-b PARENT -F vpc] FILE [SIZE]`.
pub fn create(args: &CreateArgs) -> anyhow::Result<()> {
    let mut opts = options_from(&args.options)?;
    if let Some(parent) = &args.backing {
        if args.backing_format != Some(FormatArg::Vpc) {
            bail!(
                "{}: the parent of a differencing VHD is a VHD: give -F vpc",
                args.file.display()
            );
        }
        opts.parent = Some(parent.clone());
    }
    if opts.parent.is_none() && args.size.is_none() {
        bail!("Image creation needs a size parameter");
    }
    let size = args.size.unwrap_or(0);
    vhd::create(&args.file, size, &opts)
        .with_context(|| format!("Could not create '{}'", args.file.display()))?;
    let size = vhd::describe(&args.file, true)?.virtual_size;
    let subformat = match (&opts.parent, opts.subformat) {
        (Some(_), _) => "differencing",
        (None, VhdSubformat::Fixed) => "fixed",
        (None, VhdSubformat::Dynamic) => "dynamic",
    };
    args.formatting(&format!(
        "fmt=vpc size={size} subformat={subformat} block_size={}",
        opts.block_size
    ));
    Ok(())
}
