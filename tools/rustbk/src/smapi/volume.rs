//! The volume plugin: Plugin.*, SR.* and Volume.* over a folder of qcow2 files
//! (`file:///FOLDER`) or a rustbk thin pool (`thin:///POOL`).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{Result, SmapiError};
use super::idl::QueryResult;
use super::meta::{SrMeta, VolumeMeta};
use super::sr;
use super::{args, query};

/// The SR type in the XenAPI, and the plugin folder `volume/org.xen.xapi.storage.rustbk`.
pub const PLUGIN: &str = "rustbk";

#[derive(Deserialize)]
struct SrCreate {
    uuid: String,
    configuration: BTreeMap<String, String>,
    name: String,
    description: String,
}

#[derive(Deserialize)]
struct Configuration {
    configuration: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Sr {
    sr: String,
}

#[derive(Deserialize)]
struct SrRename {
    sr: String,
    #[serde(alias = "new_description")]
    new_name: String,
}

#[derive(Deserialize)]
struct VolumeCreate {
    sr: String,
    name: String,
    description: String,
    size: i64,
    sharable: bool,
}

#[derive(Deserialize)]
struct Key {
    sr: String,
    key: String,
}

#[derive(Deserialize)]
struct KeyText {
    sr: String,
    key: String,
    #[serde(alias = "new_description")]
    new_name: String,
}

#[derive(Deserialize)]
struct KeyValue {
    sr: String,
    key: String,
    k: String,
    v: Option<String>,
}

#[derive(Deserialize)]
struct Resize {
    sr: String,
    key: String,
    new_size: i64,
}

/// Runs one call; `method` is the script name (`SR.create`, `Volume.stat`, ...).
pub fn call(method: &str, input: Value) -> Result<Value> {
    match method {
        "Plugin.Query" | "Plugin.query" => Ok(serde_json::to_value(plugin_query())?),
        "Plugin.ls" => Ok(json!([])),
        "Plugin.diagnostics" => Ok(json!(diagnostics())),
        m if m.starts_with("SR.") => sr_call(&m[3..], input),
        m if m.starts_with("Volume.") => volume_call(&m[7..], input),
        other => Err(SmapiError::Unimplemented(other.to_owned())),
    }
}

fn plugin_query() -> QueryResult {
    let features = [
        "SR_ATTACH",
        "SR_DETACH",
        "SR_CREATE",
        "SR_DELETE",
        "SR_UPDATE",
        "VDI_CREATE",
        "VDI_DESTROY",
        "VDI_UPDATE",
        "VDI_SNAPSHOT",
        "VDI_CLONE",
        "VDI_RESIZE",
        "THIN_PROVISIONING",
    ];
    query(
        PLUGIN,
        "rustbk SR",
        "Volumes as qcow2 files in a folder or as thin volumes of a pool, served by rustbk",
        &features,
        &[
            (
                "uri",
                "file:///FOLDER (qcow2 files) or thin:///POOL (a rustbk thin pool)",
            ),
            (
                "size",
                "thin:// only: data bytes of a new pool, when POOL has none yet",
            ),
        ],
    )
}

fn diagnostics() -> String {
    format!(
        "{PLUGIN} volume plugin of rustbk {}",
        env!("CARGO_PKG_VERSION")
    )
}

fn sr_call(method: &str, input: Value) -> Result<Value> {
    match method {
        "create" => {
            let a: SrCreate = args(input)?;
            let m = SrMeta {
                uuid: Some(a.uuid),
                name: a.name,
                description: a.description,
            };
            sr::create(
                config_uri(&a.configuration)?,
                m,
                config_size(&a.configuration)?,
            )?;
            Ok(serde_json::to_value(a.configuration)?)
        }
        "attach" => {
            let a: Configuration = args(input)?;
            let uri = config_uri(&a.configuration)?;
            sr::open(uri)?;
            Ok(json!(uri))
        }
        "detach" => unit(sr::open(&args::<Sr>(input)?.sr).map(drop)),
        "destroy" => unit(sr::open(&args::<Sr>(input)?.sr)?.destroy()),
        "stat" => Ok(serde_json::to_value(
            sr::open(&args::<Sr>(input)?.sr)?.stat()?,
        )?),
        "ls" => Ok(serde_json::to_value(
            sr::open(&args::<Sr>(input)?.sr)?.volumes()?,
        )?),
        "set_name" => {
            let a: SrRename = args(input)?;
            unit(sr::open(&a.sr)?.update(&mut |m| m.name.clone_from(&a.new_name)))
        }
        "set_description" => {
            let a: SrRename = args(input)?;
            unit(sr::open(&a.sr)?.update(&mut |m| m.description.clone_from(&a.new_name)))
        }
        other => Err(SmapiError::Unimplemented(format!("SR.{other}"))),
    }
}

fn config_uri(configuration: &BTreeMap<String, String>) -> Result<&str> {
    configuration
        .get("uri")
        .map(String::as_str)
        .ok_or_else(|| SmapiError::Internal("the configuration has no uri".into()))
}

fn config_size(configuration: &BTreeMap<String, String>) -> Result<Option<u64>> {
    let Some(text) = configuration.get("size") else {
        return Ok(None);
    };
    crate::cli::parse_size(text)
        .map(Some)
        .map_err(|e| SmapiError::Internal(format!("bad size {text:?}: {e}")))
}

fn unit(r: Result<()>) -> Result<Value> {
    r.map(|()| Value::Null)
}

fn volume_call(method: &str, input: Value) -> Result<Value> {
    match method {
        "create" => {
            let a: VolumeCreate = args(input)?;
            let m = VolumeMeta {
                name: a.name,
                description: a.description,
                read_write: true,
                sharable: a.sharable,
                keys: BTreeMap::new(),
            };
            Ok(serde_json::to_value(
                sr::open(&a.sr)?.create_volume(m, a.size)?,
            )?)
        }
        "stat" | "destroy" | "snapshot" | "clone" => {
            let a: Key = args(input)?;
            let sr = sr::open(&a.sr)?;
            match method {
                "stat" => Ok(serde_json::to_value(sr.volume(&a.key)?)?),
                "destroy" => unit(sr.destroy_volume(&a.key)),
                other => Ok(serde_json::to_value(
                    sr.snapshot(&a.key, other == "clone")?,
                )?),
            }
        }
        "set_name" | "set_description" => {
            let a: KeyText = args(input)?;
            let name = method == "set_name";
            unit(sr::open(&a.sr)?.update_volume(&a.key, &mut |m| match name {
                true => m.name.clone_from(&a.new_name),
                false => m.description.clone_from(&a.new_name),
            }))
        }
        "set" | "unset" => {
            let a: KeyValue = args(input)?;
            if method == "set" && a.v.is_none() {
                return Err(SmapiError::Internal("Volume.set needs v".into()));
            }
            unit(sr::open(&a.sr)?.update_volume(&a.key, &mut |m| match &a.v {
                Some(v) => drop(m.keys.insert(a.k.clone(), v.clone())),
                None => drop(m.keys.remove(&a.k)),
            }))
        }
        "resize" => {
            let a: Resize = args(input)?;
            unit(sr::open(&a.sr)?.resize(&a.key, a.new_size))
        }
        other => Err(SmapiError::Unimplemented(format!("Volume.{other}"))),
    }
}
