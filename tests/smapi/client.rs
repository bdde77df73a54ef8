//! Runs the real `rustbk smapi` plugins as xapi-storage-script runs them (`--json`, arguments
//! on stdin) and checks their answers against the xapi-storage IDL's types, written here from
//! the IDL (control.ml, data.ml, plugin.ml) independently of rustbk's own serde types.

#![allow(dead_code)]

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

/// Runs `rustbk smapi PLUGIN METHOD --json` with `args` on stdin: `Ok(result)` on exit 0,
/// `Err(error object)` on exit 1 (after checking the error's shape).
pub fn call(plugin: &str, method: &str, args: &Value) -> Result<Value, Value> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rustbk"))
        .args(["smapi", plugin, method, "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(args.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let value: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{method}: stdout is not JSON ({e}): {stdout:?}"));
    match out.status.code() {
        Some(0) => Ok(value),
        Some(1) => {
            check_error(&value);
            Err(value)
        }
        other => panic!("{method}: exit {other:?}"),
    }
}

/// A call that must succeed.
pub fn ok(plugin: &str, method: &str, args: Value) -> Value {
    call(plugin, method, &args).unwrap_or_else(|e| panic!("{method} failed: {e}"))
}

/// A call that must fail; returns the IDL exception name (`params[0]`).
pub fn fails(plugin: &str, method: &str, args: Value) -> String {
    match call(plugin, method, &args) {
        Ok(v) => panic!("{method} succeeded: {v}"),
        Err(e) => e["params"][0].as_str().unwrap().to_owned(),
    }
}

/// xapi-storage-script's `Types.error`: `{code, params: [string], backtrace: {error, files,
/// lines}}`.
pub fn check_error(e: &Value) {
    assert!(e["code"].is_string(), "{e}");
    let params = e["params"].as_array().unwrap();
    assert!(params.iter().all(Value::is_string), "{e}");
    assert!(e["backtrace"]["error"].is_string(), "{e}");
    assert!(e["backtrace"]["files"].is_array(), "{e}");
    assert!(e["backtrace"]["lines"].is_array(), "{e}");
}

fn string_list(v: &Value) -> bool {
    v.as_array().is_some_and(|a| a.iter().all(Value::is_string))
}

fn string_map(v: &Value) -> bool {
    v.as_object()
        .is_some_and(|o| o.values().all(Value::is_string))
}

/// A record field's name and its JSON type check.
type Field<'a> = (&'a str, fn(&Value) -> bool);

fn record(v: &Value, fields: &[Field], optional: &[&str]) {
    let o = v.as_object().unwrap_or_else(|| panic!("not a record: {v}"));
    for (name, check) in fields {
        let f = o.get(*name).unwrap_or_else(|| panic!("no {name} in {v}"));
        assert!(check(f), "{name} has the wrong type in {v}");
    }
    for name in optional {
        // rpclib leaves out a `None` option and writes `Some x` as x.
        assert!(o.get(*name).is_none_or(Value::is_string), "{name} in {v}");
    }
    for key in o.keys() {
        let known = fields.iter().any(|(n, _)| n == key) || optional.contains(&key.as_str());
        assert!(known, "unknown field {key} in {v}");
    }
}

/// `Plugin.query_result`.
pub fn check_query(v: &Value) {
    record(
        v,
        &[
            ("plugin", Value::is_string),
            ("name", Value::is_string),
            ("description", Value::is_string),
            ("vendor", Value::is_string),
            ("copyright", Value::is_string),
            ("version", Value::is_string),
            ("required_api_version", Value::is_string),
            ("features", string_list),
            ("configuration", string_map),
            ("required_cluster_stack", string_list),
        ],
        &[],
    );
}

fn health(v: &Value) -> bool {
    // A variant with an argument: ["Healthy", "message"].
    v.as_array().is_some_and(|a| {
        a.len() == 2
            && ["Healthy", "Recovering", "Unreachable", "Unavailable"]
                .contains(&a[0].as_str().unwrap_or_default())
            && a[1].is_string()
    })
}

/// `Control.sr_stat`.
pub fn check_sr_stat(v: &Value) {
    record(
        v,
        &[
            ("sr", Value::is_string),
            ("name", Value::is_string),
            ("description", Value::is_string),
            ("free_space", Value::is_i64),
            ("total_space", Value::is_i64),
            ("datasources", string_list),
            ("clustered", Value::is_boolean),
            ("health", health),
        ],
        &["uuid"],
    );
}

/// `Control.volume`.
pub fn check_volume(v: &Value) {
    record(
        v,
        &[
            ("key", Value::is_string),
            ("name", Value::is_string),
            ("description", Value::is_string),
            ("read_write", Value::is_boolean),
            ("sharable", Value::is_boolean),
            ("virtual_size", Value::is_i64),
            ("physical_utilisation", Value::is_i64),
            ("uri", string_list),
            ("keys", string_map),
        ],
        &["uuid"],
    );
}

/// `Data.backend` with XenDisk implementations; returns the first XenDisk.
pub fn check_backend(v: &Value) -> Value {
    record(v, &[("implementations", Value::is_array)], &[]);
    let first = &v["implementations"][0];
    assert_eq!(first[0], "XenDisk", "{v}");
    record(
        &first[1],
        &[
            ("params", Value::is_string),
            ("extra", string_map),
            ("backend_type", Value::is_string),
        ],
        &[],
    );
    first[1].clone()
}

/// SR.create + SR.attach of a folder SR; returns the SR key.
pub fn new_sr(folder: &std::path::Path) -> String {
    let uri = format!("file://{}", folder.display());
    let config = json!({"uri": uri});
    let created = ok(
        "volume",
        "SR.create",
        json!({"dbg": "t", "uuid": "0f0e8e1c-0000-4000-8000-000000000001",
               "configuration": config, "name": "sr", "description": "test SR"}),
    );
    assert!(string_map(&created), "{created}");
    let sr = ok(
        "volume",
        "SR.attach",
        json!({"dbg": "t", "configuration": config}),
    );
    sr.as_str().unwrap().to_owned()
}

/// Volume.create; returns the checked volume.
pub fn new_volume(sr: &str, size: i64) -> Value {
    let v = ok(
        "volume",
        "Volume.create",
        json!({"dbg": "t", "sr": sr, "name": "disk", "description": "a disk",
               "size": size, "sharable": false}),
    );
    check_volume(&v);
    v
}

/// The `(sr, key)` arguments.
pub fn key_args(sr: &str, v: &Value) -> Value {
    json!({"dbg": "t", "sr": sr, "key": v["key"]})
}

/// The `(uri, domain)` arguments of Datapath calls.
pub fn dp_args(v: &Value) -> Value {
    json!({"dbg": "t", "uri": v["uri"][0], "domain": "1"})
}
