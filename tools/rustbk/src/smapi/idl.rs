//! The SMAPIv3 types, as xapi-project/xapi-storage's IDL (`generator/lib/*.ml`) defines them
//! and rpclib encodes them in JSON: records are objects, `option` fields are left out when
//! `None`, `(string * string) list` is an object, variants are `["Tag", value]`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `Plugin.query_result` (plugin.ml).
#[derive(Debug, Serialize, Deserialize)]
pub struct QueryResult {
    /// Plugin name, the SR type in the XenAPI.
    pub plugin: String,
    /// Short name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Who made it.
    pub vendor: String,
    /// Copyright.
    pub copyright: String,
    /// Version.
    pub version: String,
    /// Minimum API version ("5.0").
    pub required_api_version: String,
    /// Feature names (`SR_CREATE`, `VDI_SNAPSHOT`, ...).
    pub features: Vec<String>,
    /// `device_config` keys and their descriptions.
    pub configuration: BTreeMap<String, String>,
    /// Cluster stacks, one of which must be active.
    pub required_cluster_stack: Vec<String>,
}

/// `Control.health`: a variant with a message, `["Healthy", ""]` in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "(String, String)", try_from = "(String, String)")]
pub enum Health {
    /// Fully available.
    Healthy(String),
    /// Busy recovering.
    Recovering(String),
}

/// `Control.sr_stat` (control.ml).
#[derive(Debug, Serialize, Deserialize)]
pub struct SrStat {
    /// The SR's key as SR.attach returned it.
    pub sr: String,
    /// Short name.
    pub name: String,
    /// The uuid SR.create was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Description.
    pub description: String,
    /// Free bytes.
    pub free_space: i64,
    /// Total bytes.
    pub total_space: i64,
    /// Datasource URIs.
    pub datasources: Vec<String>,
    /// Clustered local storage.
    pub clustered: bool,
    /// Health.
    pub health: Health,
}

/// `Control.volume` (control.ml).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Volume {
    /// Unique key within the SR.
    pub key: String,
    /// A uuid, if one is available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Short name.
    pub name: String,
    /// Description.
    pub description: String,
    /// False for snapshots.
    pub read_write: bool,
    /// Attachable by several hosts at once.
    pub sharable: bool,
    /// Size seen by the VM in bytes.
    pub virtual_size: i64,
    /// Bytes used on the backing storage.
    pub physical_utilisation: i64,
    /// URIs a datapath plugin opens, most desirable first.
    pub uri: Vec<String>,
    /// Key/value metadata stored for the caller.
    pub keys: BTreeMap<String, String>,
}

/// `Data.xendisk` (data.ml).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct XenDisk {
    /// The `params` key of the backend.
    pub params: String,
    /// Keys for the backend's `sm-data` folder.
    pub extra: BTreeMap<String, String>,
    /// The backend's xenstore folder name (`vbd`, `vbd3`, `qdisk`).
    pub backend_type: String,
}

/// `Data.implementation`: the ways to reach a volume's data, `["XenDisk", {...}]` in JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(into = "(String, XenDisk)", try_from = "(String, XenDisk)")]
pub enum Implementation {
    /// A blkif ring connection.
    XenDisk(XenDisk),
}

/// `Data.backend`: what `Datapath.attach` returns.
#[derive(Debug, Serialize, Deserialize)]
pub struct Backend {
    /// Choices, best first.
    pub implementations: Vec<Implementation>,
}

impl From<Health> for (String, String) {
    fn from(h: Health) -> Self {
        match h {
            Health::Healthy(m) => ("Healthy".into(), m),
            Health::Recovering(m) => ("Recovering".into(), m),
        }
    }
}

impl TryFrom<(String, String)> for Health {
    type Error = String;

    fn try_from((tag, m): (String, String)) -> Result<Self, String> {
        match tag.as_str() {
            "Healthy" => Ok(Health::Healthy(m)),
            "Recovering" => Ok(Health::Recovering(m)),
            other => Err(format!("unknown health {other:?}")),
        }
    }
}

impl From<Implementation> for (String, XenDisk) {
    fn from(i: Implementation) -> Self {
        match i {
            Implementation::XenDisk(d) => ("XenDisk".into(), d),
        }
    }
}

impl TryFrom<(String, XenDisk)> for Implementation {
    type Error = String;

    fn try_from((tag, d): (String, XenDisk)) -> Result<Self, String> {
        match tag.as_str() {
            "XenDisk" => Ok(Implementation::XenDisk(d)),
            other => Err(format!("unknown implementation {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn variants_are_tag_and_value_arrays_as_rpclib_writes_them() {
        let h = serde_json::to_value(Health::Recovering("mirror".into())).unwrap();
        assert_eq!(h, json!(["Recovering", "mirror"]));
        let back: Health = serde_json::from_value(json!(["Healthy", ""])).unwrap();
        assert_eq!(back, Health::Healthy(String::new()));
        assert!(serde_json::from_value::<Health>(json!({"Healthy": ""})).is_err());
        let disk = XenDisk {
            params: "qcow2:/a".into(),
            extra: BTreeMap::new(),
            backend_type: "vbd3".into(),
        };
        let b = Backend {
            implementations: vec![Implementation::XenDisk(disk)],
        };
        let v = serde_json::to_value(b).unwrap();
        assert_eq!(
            v,
            json!({"implementations": [["XenDisk",
                {"params": "qcow2:/a", "extra": {}, "backend_type": "vbd3"}]]})
        );
    }

    #[test]
    fn a_none_option_field_is_left_out_and_some_is_the_bare_value() {
        let mut v = Volume {
            key: "k".into(),
            uuid: None,
            name: String::new(),
            description: String::new(),
            read_write: true,
            sharable: false,
            virtual_size: 512,
            physical_utilisation: 0,
            uri: Vec::new(),
            keys: BTreeMap::from([("a".into(), "b".into())]),
        };
        let j = serde_json::to_value(&v).unwrap();
        assert!(j.get("uuid").is_none());
        assert_eq!(j["keys"], json!({"a": "b"}));
        v.uuid = Some("u".into());
        assert_eq!(serde_json::to_value(&v).unwrap()["uuid"], "u");
    }
}
