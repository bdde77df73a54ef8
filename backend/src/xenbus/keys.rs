//! The backend directory's keys: what the toolstack tells us and what we publish.

use rustbk_formats::{BlockImage, CacheMode, Format, Geometry};

use super::Store;
use super::device::BackendOptions;
pub(super) use super::params::Disk;
use super::params::{Params, parse_params};
use crate::Error;
use crate::worker::DataPath;

/// `info` bit: the disk is a CD-ROM.
pub const VDISK_CDROM: u32 = 1;
/// `info` bit: the disk is removable.
pub const VDISK_REMOVABLE: u32 = 2;
/// `info` bit: the disk is read-only.
pub const VDISK_READONLY: u32 = 4;

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
    /// `data-path` (`map` or `copy`), if the toolstack wrote one (else `--data-path` applies).
    pub data_path: Option<DataPath>,
    /// The logical sector size `params` chose (`raw,sector-size=4096:/path`), if any.
    pub sector_size: Option<u32>,
}

impl BackendInfo {
    /// The disk's logical sector size: its own, else the daemon's `--sector-size`.
    pub fn sector_size(&self, opts: &BackendOptions) -> u32 {
        self.sector_size.unwrap_or(opts.sector_size)
    }
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

/// The key naming the disk and its value: `params`, or, when that is empty or missing,
/// `qemu-params`. xenopsd, given a SMAPIv3 XenDisk and no BlockDevice or File, writes an
/// empty `params` and the XenDisk's params under `qemu-params` (`params_of_backend` in
/// xen-api's `xenops_server_xen.ml`).
async fn read_params(store: &Store, be: &str) -> Result<(String, String), Error> {
    let params_key = format!("{be}/params");
    if let Some(params) = store.read(&params_key).await?
        && !params.trim().is_empty()
    {
        return Ok((params_key, params));
    }
    let qemu_key = format!("{be}/qemu-params");
    match store.read(&qemu_key).await? {
        Some(params) if !params.trim().is_empty() => Ok((qemu_key, params)),
        _ => Err(bad(&params_key, "", "missing (and no qemu-params)")),
    }
}

/// Reads the backend directory `be`.
pub(super) async fn read_backend(store: &Store, be: &str) -> Result<BackendInfo, Error> {
    let frontend = required(store, format!("{be}/frontend")).await?;
    let (params_key, params) = read_params(store, be).await?;
    let Params { disk, sector_size } =
        parse_params(&params).map_err(|why| bad(&params_key, &params, &why))?;
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
        data_path: opt("data-path")
            .await?
            .map(|v| {
                v.parse()
                    .map_err(|why: String| bad(&format!("{be}/data-path"), &v, &why))
            })
            .transpose()?,
        sector_size,
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

/// The data path of a disk: its `data-path` key, else the backend's default.
pub(super) fn data_path(info: &BackendInfo, opts: &BackendOptions) -> DataPath {
    info.data_path.unwrap_or(opts.data_path)
}

/// Whether `feature-persistent` is offered: not when copying, as QEMU's qdisk does (nothing
/// is mapped, so there is nothing to keep mapped).
pub(super) fn persistent_offered(info: &BackendInfo, opts: &BackendOptions) -> bool {
    opts.persistent && data_path(info, opts) == DataPath::Map
}

/// The `cache-mode` key: one of QEMU's cache mode names.
fn parse_cache_mode(path: &str, value: &str) -> Result<CacheMode, Error> {
    value.parse().map_err(|_| {
        let why = "not a cache mode (none, writeback, writethrough, directsync or unsafe)";
        bad(path, value, why)
    })
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
    let granularity = image.discard_granularity().max(512).to_string();
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
        (
            "feature-persistent",
            u8::from(persistent_offered(info, opts)).to_string(),
        ),
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

/// `physical-sector-size`: the image's, unless the disk is not a whole number of those (blkif.h:
/// `sectors` * 512 must be a multiple of it), then the logical sector size.
pub(super) fn physical_sector_size(g: &Geometry) -> u32 {
    let physical = g.physical_sector_size.max(g.logical_sector_size);
    match g.size % u64::from(physical.max(1)) {
        0 => physical,
        _ => g.logical_sector_size,
    }
}

/// Publishes the disk's size and sector sizes (read by the frontend when we are Connected).
///
/// As blkif.h says since Xen 4.20 ("reconcile protocol specification with in-use
/// implementations"): `sectors` counts 512-byte units whatever `sector-size` is, and
/// `sector-size` only tells the frontend how to align its requests; rustbk neither offers nor
/// reads the deprecated `feature-large-sector-size`.
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
        ("physical-sector-size", physical_sector_size(&g).to_string()),
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
    fn physical_sector_size_divides_the_disk_or_falls_back_to_the_logical_one() {
        let g = |size, logical_sector_size, physical_sector_size| Geometry {
            size,
            logical_sector_size,
            physical_sector_size,
        };
        assert_eq!(physical_sector_size(&g(1 << 20, 512, 512)), 512);
        assert_eq!(physical_sector_size(&g(1 << 20, 512, 4096)), 4096);
        assert_eq!(physical_sector_size(&g(1 << 20, 4096, 4096)), 4096);
        assert_eq!(physical_sector_size(&g((1 << 20) + 512, 512, 4096)), 512);
        // Never below the logical sector size.
        assert_eq!(physical_sector_size(&g(1 << 20, 4096, 512)), 4096);
    }
}
