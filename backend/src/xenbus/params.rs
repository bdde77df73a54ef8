//! The backend's `params` key: what to serve, and the disk's own options.
//!
//! `params` is `[KIND[,OPTION=VALUE]...:]TARGET`. xl writes the disk line's `target=` into it
//! verbatim (`target=` takes the rest of the line, commas included), so this is the one place
//! where a user of unpatched xl chooses something per disk.

use std::path::PathBuf;

use rustbk_formats::Format;

/// What a disk's `params` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Disk {
    /// An image file or block device in a format: raw unless `params` names another.
    Image {
        /// The format.
        format: Format,
        /// The path.
        path: PathBuf,
    },
    /// A null disk of a size: `null:SIZE` (no file; every request completes at once, reads
    /// return zeros).
    Null {
        /// Size in bytes.
        size: u64,
    },
    /// A volume of a thin pool: `thin:/path/to/pool:VOLUME` (an id or a name).
    Thin {
        /// The pool directory.
        pool: PathBuf,
        /// The volume's id or name.
        volume: String,
    },
}

/// Everything `params` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Params {
    /// What to serve.
    pub disk: Disk,
    /// `sector-size=512|4096`: the disk's logical sector size (else the daemon's
    /// `--sector-size`).
    pub sector_size: Option<u32>,
}

/// The options `params` may carry after its kind.
const OPTIONS: &str = "sector-size";

/// Parses `params`.
///
/// A plain path is raw, as xl's `phy` means: the format is never probed, because a guest can
/// write any header into a raw disk (QEMU's CVE-2008-2004). Another format is served only when
/// the toolstack names it with a prefix: `qcow2:/path`, `vmdk:/path`; `raw:/path` and tapdisk's `aio:/path`
/// are raw; `thin:/path/to/pool:VOLUME` is a thin volume; `null:SIZE` is a null disk (see
/// [`parse_null_size`]). The prefix (text before a `:` that comes before any `/`) may carry
/// options after the kind, separated by commas: `raw,sector-size=4096:/path`. tapdisk's
/// `vhd:/path` (what XenServer's tools write) and qemu's `vpc:/path` are VHD. An unknown kind
/// or option is refused.
///
/// libxl's `backendtype=tap` writes `aio:TARGET` for a raw disk whatever `target=` holds, so
/// `aio:` followed by a prefix of its own (`aio:qcow2:/path`, `aio:thin:/pool:vm1`,
/// `aio:null:8G`) is that inner `params`: a tap disk names rustbk's formats as a phy disk
/// does. Only one such level is read (the inner prefix is never another nesting).
pub(super) fn parse_params(params: &str) -> Result<Params, String> {
    parse_level(params, true)
}

fn parse_level(params: &str, outer: bool) -> Result<Params, String> {
    let params = params.trim();
    let Some(prefix) = rustbk_formats::protocol_of(std::path::Path::new(params)) else {
        let disk = image(Format::Raw, params)?;
        return Ok(Params {
            disk,
            sector_size: None,
        });
    };
    let rest = &params[prefix.len() + 1..];
    let mut items = prefix.split(',');
    let kind = items.next().unwrap_or_default();
    let sector_size = parse_options(items)?;
    let nested = rustbk_formats::protocol_of(std::path::Path::new(rest)).is_some();
    if outer && kind == "aio" && sector_size.is_none() && nested {
        return parse_level(rest, false);
    }
    let disk = match kind {
        "raw" | "aio" => image(Format::Raw, rest)?,
        "qcow2" => image(Format::Qcow2, rest)?,
        "vhd" | "vpc" => image(Format::Vpc, rest)?,
        "vmdk" => image(Format::Vmdk, rest)?,
        "thin" => parse_thin(rest)?,
        "null" => Disk::Null {
            size: parse_null_size(rest)?,
        },
        other => return Err(format!("unknown format prefix {other:?}")),
    };
    Ok(Params { disk, sector_size })
}

fn image(format: Format, path: &str) -> Result<Disk, String> {
    if path.is_empty() {
        return Err("no image path".to_owned());
    }
    let path = PathBuf::from(path);
    Ok(Disk::Image { format, path })
}

/// The `OPTION=VALUE` items after the kind; today only `sector-size`.
fn parse_options<'a>(items: impl Iterator<Item = &'a str>) -> Result<Option<u32>, String> {
    let mut sector_size = None;
    for item in items {
        let Some((key, value)) = item.split_once('=') else {
            return Err(format!(
                "option {item:?} has no value (options: {OPTIONS}=VALUE)"
            ));
        };
        match key {
            "sector-size" if sector_size.is_some() => {
                return Err("sector-size is given twice".to_owned());
            }
            "sector-size" => sector_size = Some(parse_sector_size(value)?),
            other => return Err(format!("unknown option {other:?} (options: {OPTIONS})")),
        }
    }
    Ok(sector_size)
}

/// The logical sector sizes blkif knows: 512 and 4096 (`4k`), as `--sector-size` takes them.
fn parse_sector_size(value: &str) -> Result<u32, String> {
    match value {
        "512" => Ok(512),
        "4096" | "4k" => Ok(4096),
        other => Err(format!("sector-size must be 512 or 4096, not {other:?}")),
    }
}

fn parse_thin(target: &str) -> Result<Disk, String> {
    let (pool, volume) = rustbk_thin::dir::parse_target(target).map_err(|e| e.to_string())?;
    Ok(Disk::Thin {
        pool: pool.path,
        volume,
    })
}

/// The size of a null disk: a number of bytes, or a number with a `K`, `M`, `G` or `T`
/// suffix (powers of 1024, either case), as `rustbk img create` takes it: `null:8G`. Whether
/// it is a whole number of sectors is checked when the disk is opened.
pub(super) fn parse_null_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, shift) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_lowercase() {
                'k' => 10,
                'm' => 20,
                'g' => 30,
                't' => 40,
                _ => return Err(format!("unknown size suffix in null size {text:?}")),
            };
            (&text[..i], shift)
        }
        _ => (text, 0),
    };
    let bad = || format!("null:SIZE needs a size like 8G or 1073741824, not {text:?}");
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("null size {text:?} is too large"))
}

#[cfg(test)]
#[path = "params_tests.rs"]
mod tests;
