//! The backend directory's keys: what the toolstack tells us and what we publish.

use std::path::PathBuf;

use rustbk_formats::{BlockImage, CacheMode, Format};

use super::Store;
use super::device::BackendOptions;
use crate::Error;

/// `info` bit: the disk is a CD-ROM.
pub const VDISK_CDROM: u32 = 1;
/// `info` bit: the disk is removable.
pub const VDISK_REMOVABLE: u32 = 2;
/// `info` bit: the disk is read-only.
pub const VDISK_READONLY: u32 = 4;

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

/// What the toolstack wrote in the backend directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct BackendInfo {
    /// The frontend's directory.
    pub frontend: String,
    /// `params` as the toolstack wrote it.
    pub params: String,
    /// What to serve, from `params`.
    pub disk: Disk,
    /// `mode` is `r`.
    pub read_only: bool,
    /// `discard-enable` is not `0`.
    pub discard_enable: bool,
    /// `device-type` is `cdrom`.
    pub cdrom: bool,
    /// `removable` is `1`.
    pub removable: bool,
    /// `cache-mode`, if the toolstack wrote one (else the daemon's `--cache` applies).
    pub cache: Option<CacheMode>,
}

fn bad(path: &str, value: &str, why: &str) -> Error {
    Error::BadNode {
        path: path.into(),
        value: value.into(),
        why: why.into(),
    }
}

async fn required(store: &Store, path: String) -> Result<String, Error> {
    store
        .read(&path)
        .await?
        .ok_or_else(|| bad(&path, "", "missing"))
}

/// Reads the backend directory `be`.
pub(super) async fn read_backend(store: &Store, be: &str) -> Result<BackendInfo, Error> {
    let frontend = required(store, format!("{be}/frontend")).await?;
    let params_key = format!("{be}/params");
    let params = required(store, params_key.clone()).await?;
    let disk = parse_params(&params).map_err(|why| bad(&params_key, &params, &why))?;
    let mode = store
        .read(&format!("{be}/mode"))
        .await?
        .unwrap_or_else(|| "w".into());
    let opt = |k: &'static str| async move { store.read(&format!("{be}/{k}")).await };
    Ok(BackendInfo {
        frontend,
        params,
        disk,
        read_only: !mode.starts_with('w'),
        discard_enable: opt("discard-enable").await?.is_none_or(|v| v.trim() != "0"),
        cdrom: opt("device-type")
            .await?
            .is_some_and(|v| v.trim() == "cdrom"),
        removable: opt("removable").await?.is_some_and(|v| v.trim() == "1"),
        cache: opt("cache-mode")
            .await?
            .map(|v| parse_cache_mode(&format!("{be}/cache-mode"), &v))
            .transpose()?,
    })
}

impl Disk {
    /// The format's name, as `rustbk ctl list` shows it.
    pub fn format_name(&self) -> &'static str {
        match self {
            Disk::Image {
                format: Format::Qcow2,
                ..
            } => "qcow2",
            Disk::Image { .. } => "raw",
            Disk::Null { .. } => "null",
            Disk::Thin { .. } => "thin",
        }
    }
}

/// The `cache-mode` key: one of QEMU's cache mode names.
fn parse_cache_mode(path: &str, value: &str) -> Result<CacheMode, Error> {
    value.parse().map_err(|_| {
        let why = "not a cache mode (none, writeback, writethrough, directsync or unsafe)";
        bad(path, value, why)
    })
}

/// What `params` names.
///
/// A plain path is raw, as xl's `phy` means: the format is never probed, because a guest can
/// write any header into a raw disk (QEMU's CVE-2008-2004). Another format is served only when
/// the toolstack names it with a prefix: `qcow2:/path`; `raw:/path` and tapdisk's `aio:/path`
/// are raw; `thin:/path/to/pool:VOLUME` is a thin volume; `null:SIZE` is a null disk (see
/// [`parse_null_size`]). An unknown prefix (text before a `:` that comes before any `/`) is
/// refused.
pub(super) fn parse_params(params: &str) -> Result<Disk, String> {
    let params = params.trim();
    let (format, path) = match rustbk_formats::protocol_of(std::path::Path::new(params)) {
        None => (Format::Raw, params),
        Some(prefix) => {
            let rest = &params[prefix.len() + 1..];
            match prefix.as_str() {
                "raw" | "aio" => (Format::Raw, rest),
                "qcow2" => (Format::Qcow2, rest),
                "thin" => return parse_thin(rest),
                "null" => return parse_null_size(rest).map(|size| Disk::Null { size }),
                other => return Err(format!("unknown format prefix {other:?}")),
            }
        }
    };
    if path.is_empty() {
        return Err("no image path".to_owned());
    }
    let path = PathBuf::from(path);
    Ok(Disk::Image { format, path })
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

/// Whether discard is offered to the frontend.
pub(super) fn discard_offered(image: &dyn BlockImage, info: &BackendInfo) -> bool {
    let f = image.features();
    f.discard && info.discard_enable && !info.read_only && !f.read_only
}

/// Publishes the feature keys read by the frontend before it connects.
pub(super) async fn publish_features(
    store: &Store,
    be: &str,
    image: &dyn BlockImage,
    info: &BackendInfo,
    opts: &BackendOptions,
) -> Result<(), Error> {
    let flush = if image.features().flush { "1" } else { "0" };
    let discard = discard_offered(image, info);
    let granularity = image.geometry().physical_sector_size.max(512).to_string();
    let keys: Vec<(&str, String)> = vec![
        ("feature-flush-cache", flush.into()),
        ("feature-barrier", flush.into()),
        ("feature-discard", u8::from(discard).to_string()),
        ("discard-granularity", granularity),
        ("discard-alignment", "0".into()),
        ("discard-secure", "0".into()),
        (
            "feature-max-indirect-segments",
            opts.max_indirect_segments.to_string(),
        ),
        ("max-ring-page-order", opts.max_ring_order.to_string()),
        ("multi-queue-max-queues", opts.max_queues.max(1).to_string()),
        ("feature-persistent", u8::from(opts.persistent).to_string()),
    ];
    for (k, v) in keys {
        store.write(&format!("{be}/{k}"), &v).await?;
    }
    Ok(())
}

/// The `info` bits of the disk.
pub(super) fn vdisk_info(image: &dyn BlockImage, info: &BackendInfo) -> u32 {
    let mut bits = 0;
    if info.read_only || image.features().read_only {
        bits |= VDISK_READONLY;
    }
    if info.cdrom {
        bits |= VDISK_CDROM;
    }
    if info.removable {
        bits |= VDISK_REMOVABLE;
    }
    bits
}

/// Publishes the disk's size and sector sizes (read by the frontend when we are Connected).
pub(super) async fn publish_disk(
    store: &Store,
    be: &str,
    image: &dyn BlockImage,
    info: &BackendInfo,
) -> Result<(), Error> {
    let g = image.geometry();
    let keys = [
        ("sectors", (g.size / 512).to_string()),
        ("info", vdisk_info(image, info).to_string()),
        ("sector-size", g.logical_sector_size.to_string()),
        ("physical-sector-size", g.physical_sector_size.to_string()),
    ];
    for (k, v) in keys {
        store.write(&format!("{be}/{k}"), &v).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_params_are_raw_and_other_formats_need_a_prefix() {
        let ok = |format, p: &str| {
            let path = PathBuf::from(p);
            Ok(Disk::Image { format, path })
        };
        assert_eq!(parse_params("/a/b.img"), ok(Format::Raw, "/a/b.img"));
        assert_eq!(parse_params("/a/b.qcow2"), ok(Format::Raw, "/a/b.qcow2"));
        assert_eq!(parse_params("/a:b/c.img"), ok(Format::Raw, "/a:b/c.img"));
        assert_eq!(parse_params("raw:/a"), ok(Format::Raw, "/a"));
        assert_eq!(parse_params("aio:/a"), ok(Format::Raw, "/a"));
        assert_eq!(parse_params("qcow2:/b"), ok(Format::Qcow2, "/b"));
        assert_eq!(parse_params("qcow2:/b:c"), ok(Format::Qcow2, "/b:c"));
        assert!(parse_params("vhd:/a").is_err());
        assert!(parse_params("json:{}").is_err());
        assert!(parse_params("  ").is_err());
        assert!(parse_params("raw:").is_err());
    }

    #[test]
    fn cache_mode_takes_qemus_names_and_refuses_anything_else() {
        let key = "/be/cache-mode";
        assert_eq!(parse_cache_mode(key, "none").ok(), Some(CacheMode::None));
        assert_eq!(
            parse_cache_mode(key, "directsync\n").ok(),
            Some(CacheMode::DirectSync)
        );
        let err = parse_cache_mode(key, "fast").expect_err("fast is no mode");
        let text = err.to_string();
        assert!(text.contains(key) && text.contains("\"fast\""), "{text}");
        assert!(text.contains("writethrough"), "{text}");
        assert_eq!(err.errno(), nix::libc::EINVAL);
    }

    #[test]
    fn null_params_give_a_size_in_bytes_or_with_a_binary_suffix() {
        let null = |size: u64| Ok(Disk::Null { size });
        assert_eq!(parse_params("null:8G"), null(8 << 30));
        assert_eq!(parse_params("null:512m"), null(512 << 20));
        assert_eq!(parse_params("null:4k"), null(4096));
        assert_eq!(parse_params("null:2T"), null(2 << 40));
        assert_eq!(parse_params("null:1048576"), null(1 << 20));
        assert_eq!(parse_params(" null:1G\n"), null(1 << 30));
        for bad in [
            "null:",
            "null:G",
            "null:8X",
            "null:-1",
            "null:1.5G",
            "null:8 G",
            "null:/a",
            "null:99999999999T",
        ] {
            assert!(parse_params(bad).is_err(), "{bad}");
        }
        // A path with a colon after a slash stays a raw path, never a null disk.
        assert_eq!(
            parse_params("/srv/null:8G"),
            Ok(Disk::Image {
                format: Format::Raw,
                path: PathBuf::from("/srv/null:8G")
            })
        );
    }

    #[test]
    fn thin_params_name_a_pool_directory_and_a_volume() {
        let thin = |pool: &str, volume: &str| {
            let (pool, volume) = (PathBuf::from(pool), volume.to_owned());
            Ok(Disk::Thin { pool, volume })
        };
        assert_eq!(parse_params("thin:/srv/pool:7"), thin("/srv/pool", "7"));
        assert_eq!(parse_params("thin:/a:b/pool:vm1"), thin("/a:b/pool", "vm1"));
        assert!(parse_params("thin:/srv/pool").is_err());
        assert!(parse_params("thin:/srv/pool:").is_err());
    }
}
