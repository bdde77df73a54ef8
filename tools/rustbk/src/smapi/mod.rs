//! XAPI SMAPIv3 plugins (xapi-project/xapi-storage): `rustbk smapi volume METHOD` and
//! `rustbk smapi datapath METHOD`, run by xapi-storage-script through the small scripts
//! installed under `/usr/libexec/xapi-storage-script/`. The call's named arguments come as
//! one JSON object on stdin; the result is printed as JSON on stdout with exit code 0, an
//! error as xapi-storage-script's error object with exit code 1. See `tools/smapi/README.md`.

mod datapath;
mod error;
mod folder;
pub mod idl;
mod meta;
mod sr;
mod thin;
pub mod uri;
mod volume;

use std::collections::BTreeMap;
use std::io::Read;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use serde::de::DeserializeOwned;
use serde_json::Value;

use error::Result;
pub use error::SmapiError;
use idl::QueryResult;

/// Which plugin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PluginKind {
    /// SR.*, Volume.*, Plugin.* over a folder of qcow2 files or a thin pool.
    Volume,
    /// Datapath.*, Plugin.* for `rustbk:` volume URIs.
    Datapath,
}

/// `rustbk smapi PLUGIN METHOD [--json]`.
#[derive(Debug, Args)]
pub struct SmapiArgs {
    /// The plugin.
    #[arg(value_enum)]
    pub plugin: PluginKind,
    /// The call, as the script is named: `SR.create`, `Volume.snapshot`, `Datapath.attach`.
    pub method: String,
    /// Arguments as a JSON object on stdin (xapi-storage-script always passes it; it is the
    /// only mode).
    #[arg(long)]
    pub json: bool,
}

/// Runs one call and prints its result or error.
pub fn run(args: SmapiArgs) -> anyhow::Result<ExitCode> {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input)?;
    match call(args.plugin, &args.method, &input) {
        Ok(value) => {
            println!("{value}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("{}", e.to_json());
            eprintln!("rustbk smapi {}: {e}", args.method);
            Ok(ExitCode::from(1))
        }
    }
}

/// Runs one call on the JSON text of its arguments.
pub fn call(plugin: PluginKind, method: &str, input: &str) -> Result<Value> {
    let input: Value = match input.trim() {
        "" => Value::Object(Default::default()),
        text => serde_json::from_str(text)?,
    };
    match plugin {
        PluginKind::Volume => volume::call(method, input),
        PluginKind::Datapath => datapath::call(method, input),
    }
}

/// The arguments of a call.
fn args<T: DeserializeOwned>(input: Value) -> Result<T> {
    serde_json::from_value(input).map_err(|e| SmapiError::Internal(format!("bad arguments: {e}")))
}

fn query(
    plugin: &str,
    name: &str,
    description: &str,
    features: &[&str],
    configuration: &[(&str, &str)],
) -> QueryResult {
    QueryResult {
        plugin: plugin.to_owned(),
        name: name.to_owned(),
        description: description.to_owned(),
        vendor: "rustbk developers".to_owned(),
        copyright: "rustbk developers, GPL-3.0-only".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        required_api_version: "5.0".to_owned(),
        features: features.iter().map(|f| (*f).to_owned()).collect(),
        configuration: configuration
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
        required_cluster_stack: Vec::new(),
    }
}
