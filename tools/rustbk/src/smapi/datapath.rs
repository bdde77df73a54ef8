//! The datapath plugin `rustbk`: Datapath.* for `rustbk:PARAMS` volume URIs. Attach hands the
//! toolstack a XenDisk whose `params` is the backend's `params`; rustbk's daemon serves the
//! vbd the toolstack then writes.
//!
//! xenopsd turns the XenDisk into a vbd under `backend/<backend_type>` with an empty `params`,
//! the XenDisk's params as `qemu-params` and its `extra` map under `sm-data/`
//! (`params_of_backend` in xen-api's `xenops_server_xen.ml`). rustbk's daemon reads
//! `qemu-params` when `params` is empty and claims the vbd by `sm-data/type`.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{Result, SmapiError};
use super::idl::{Backend, Implementation, XenDisk};
use super::uri::{DATA_SCHEME, data_params};
use super::{args, query};

/// The xenstore backend folder the XenDisk names: tapdisk3's kind, `vbd3`, which Linux blkback
/// never probes (it would claim a `backend/vbd` node); rustbk's daemon watches it.
pub const BACKEND_TYPE: &str = "vbd3";

/// The XenDisk's `extra`: xenopsd writes it as `sm-data/type`, the key rustbk's daemon claims
/// the vbd by (its default `--claim-type`); tapback ignores `sm-data`.
pub const CLAIM_TYPE: (&str, &str) = ("type", "rustbk");

#[derive(Deserialize)]
struct Open {
    uri: String,
    persistent: bool,
}

#[derive(Deserialize)]
struct UriDomain {
    uri: String,
    /// Required by the IDL; rustbk needs nothing from it.
    #[serde(rename = "domain")]
    _domain: String,
}

#[derive(Deserialize)]
struct Uri {
    uri: String,
}

/// Runs one call; `method` is the script name (`Datapath.attach`, ...).
pub fn call(method: &str, input: Value) -> Result<Value> {
    match method {
        "Plugin.Query" | "Plugin.query" => Ok(serde_json::to_value(query(
            DATA_SCHEME,
            "rustbk datapath",
            "Serves rustbk: volumes (qcow2 files, thin volumes) to Xen guests with rustbk",
            &[],
            &[],
        ))?),
        "Plugin.ls" => Ok(json!([])),
        "Plugin.diagnostics" => Ok(json!(format!(
            "{DATA_SCHEME} datapath plugin of rustbk {}",
            env!("CARGO_PKG_VERSION")
        ))),
        "Datapath.open" => {
            let a: Open = args(input)?;
            checked_params(&a.uri)?;
            if !a.persistent {
                return Err(SmapiError::Unimplemented("non-persistent disks".into()));
            }
            Ok(Value::Null)
        }
        "Datapath.attach" => {
            let a: UriDomain = args(input)?;
            Ok(serde_json::to_value(attach(&a.uri)?)?)
        }
        "Datapath.activate" => {
            let a: UriDomain = args(input)?;
            checked_params(&a.uri).map(|_| Value::Null)
        }
        "Datapath.deactivate" | "Datapath.detach" => {
            args::<UriDomain>(input)?;
            Ok(Value::Null)
        }
        "Datapath.close" => {
            data_params(&args::<Uri>(input)?.uri)?;
            Ok(Value::Null)
        }
        other => Err(SmapiError::Unimplemented(other.to_owned())),
    }
}

/// The backend params of a volume URI, checked the way the backend will parse them, and
/// naming an image (or thin pool) that exists.
fn checked_params(uri: &str) -> Result<String> {
    let params = data_params(uri)?;
    let path = match params.split_once(':') {
        Some(("qcow2" | "raw" | "aio", path)) => path.to_owned(),
        Some(("thin", target)) => target
            .rsplit_once(':')
            .map(|(p, _)| p)
            .unwrap_or(target)
            .to_owned(),
        _ => {
            return Err(SmapiError::Internal(format!(
                "unsupported params {params:?}"
            )));
        }
    };
    if !std::path::Path::new(&path).exists() {
        return Err(SmapiError::VolumeDoesNotExist(uri.to_owned()));
    }
    Ok(params)
}

fn attach(uri: &str) -> Result<Backend> {
    let (key, value) = CLAIM_TYPE;
    let disk = XenDisk {
        params: tapdisk_style(&checked_params(uri)?),
        extra: BTreeMap::from([(key.to_owned(), value.to_owned())]),
        backend_type: BACKEND_TYPE.to_owned(),
    };
    Ok(Backend {
        implementations: vec![Implementation::XenDisk(disk)],
    })
}

/// `params` with tapdisk's prefix where tapdisk has one for the same thing: `raw:` is
/// tapdisk's `aio:`. tapdisk has no qcow2 (its `qcow` is version 1) and no thin volumes, so
/// `qcow2:` and `thin:` stay rustbk's.
fn tapdisk_style(params: &str) -> String {
    match params.strip_prefix("raw:") {
        Some(path) => format!("aio:{path}"),
        None => params.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::tapdisk_style;

    #[test]
    fn raw_params_take_tapdisks_aio_prefix_and_the_others_stay() {
        assert_eq!(tapdisk_style("raw:/srv/a.img"), "aio:/srv/a.img");
        assert_eq!(tapdisk_style("aio:/srv/a.img"), "aio:/srv/a.img");
        assert_eq!(tapdisk_style("qcow2:/srv/a.qcow2"), "qcow2:/srv/a.qcow2");
        assert_eq!(tapdisk_style("thin:/srv/pool:7"), "thin:/srv/pool:7");
    }
}
