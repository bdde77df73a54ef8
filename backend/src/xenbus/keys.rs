//! The backend directory's keys: what the toolstack tells us and what we publish.

use std::path::PathBuf;

use rustbk_formats::{BlockImage, Format};

use super::Store;
use super::device::BackendOptions;
use crate::Error;

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
    /// The image path.
    pub path: PathBuf,
    /// The image format, if `params` named one (`raw:/path`).
    pub format: Option<Format>,
    /// `mode` is `r`.
    pub read_only: bool,
    /// `discard-enable` is not `0`.
    pub discard_enable: bool,
    /// `device-type` is `cdrom`.
    pub cdrom: bool,
    /// `removable` is `1`.
    pub removable: bool,
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
    let (format, path) =
        parse_params(&params).ok_or_else(|| bad(&params_key, &params, "no image path"))?;
    let mode = store
        .read(&format!("{be}/mode"))
        .await?
        .unwrap_or_else(|| "w".into());
    let opt = |k: &'static str| async move { store.read(&format!("{be}/{k}")).await };
    Ok(BackendInfo {
        frontend,
        path,
        format,
        read_only: !mode.starts_with('w'),
        discard_enable: opt("discard-enable").await?.is_none_or(|v| v.trim() != "0"),
        cdrom: opt("device-type")
            .await?
            .is_some_and(|v| v.trim() == "cdrom"),
        removable: opt("removable").await?.is_some_and(|v| v.trim() == "1"),
    })
}

/// Splits `params` into an optional format prefix and the image path.
///
/// Accepts `/path` (format probed from the header), `raw:/path`, tapdisk's `aio:/path`, and
/// `qcow2:/path`.
pub(super) fn parse_params(params: &str) -> Option<(Option<Format>, PathBuf)> {
    let params = params.trim();
    let (format, path) = match params.split_once(':') {
        Some(("raw" | "aio", rest)) => (Some(Format::Raw), rest),
        Some(("qcow2", rest)) => (Some(Format::Qcow2), rest),
        _ => (None, params),
    };
    (!path.is_empty()).then(|| (format, PathBuf::from(path)))
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
    fn params_accept_plain_paths_and_format_prefixes() {
        assert_eq!(
            parse_params("/a/b.img"),
            Some((None, PathBuf::from("/a/b.img")))
        );
        assert_eq!(
            parse_params("raw:/a"),
            Some((Some(Format::Raw), PathBuf::from("/a")))
        );
        assert_eq!(
            parse_params("aio:/a"),
            Some((Some(Format::Raw), PathBuf::from("/a")))
        );
        assert_eq!(
            parse_params("qcow2:/b"),
            Some((Some(Format::Qcow2), PathBuf::from("/b")))
        );
        assert_eq!(parse_params("  "), None);
        assert_eq!(parse_params("raw:"), None);
    }
}
