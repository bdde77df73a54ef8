//! The SMAPIv3 plugins (`rustbk smapi`), driven as xapi-storage-script drives them: JSON built
//! from the IDL's types on stdin, answers checked against those types, and the qcow2 files
//! they make checked with qemu-img.

mod client;

use std::path::Path;
use std::process::Command;

use client::*;
use serde_json::json;

fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img");
    assert!(out.status.success(), "qemu-img {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn image_path(v: &serde_json::Value) -> String {
    let uri = v["uri"][0].as_str().unwrap();
    uri.strip_prefix("rustbk:qcow2:").unwrap().to_owned()
}

fn files(folder: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn plugin_query_of_both_plugins_answers_a_query_result_for_api_5() {
    for plugin in ["volume", "datapath"] {
        let q = ok(plugin, "Plugin.Query", json!({"dbg": "t"}));
        check_query(&q);
        assert_eq!(q["required_api_version"], "5.0");
        let d = ok(plugin, "Plugin.diagnostics", json!({"dbg": "t"}));
        assert!(d.is_string());
    }
    let q = ok("volume", "Plugin.Query", json!({"dbg": "t"}));
    assert_eq!(q["plugin"], "rustbk");
    assert!(q["configuration"]["uri"].is_string());
    let q = ok("datapath", "Plugin.Query", json!({"dbg": "t"}));
    assert_eq!(
        q["plugin"], "rustbk",
        "the datapath plugin is named after the URI scheme"
    );
}

#[test]
fn sr_stat_ls_and_renames_follow_the_calls() {
    let tmp = tempfile::tempdir().unwrap();
    let sr = new_sr(&tmp.path().join("sr"));
    let args = json!({"dbg": "t", "sr": sr});
    let stat = ok("volume", "SR.stat", args.clone());
    check_sr_stat(&stat);
    assert_eq!(stat["uuid"], "0f0e8e1c-0000-4000-8000-000000000001");
    assert_eq!(
        (&stat["name"], &stat["description"]),
        (&json!("sr"), &json!("test SR"))
    );
    assert!(stat["total_space"].as_i64().unwrap() >= stat["free_space"].as_i64().unwrap());
    ok(
        "volume",
        "SR.set_name",
        json!({"dbg": "t", "sr": sr, "new_name": "renamed"}),
    );
    ok(
        "volume",
        "SR.set_description",
        json!({"dbg": "t", "sr": sr, "new_description": "described"}),
    );
    let stat = ok("volume", "SR.stat", args.clone());
    assert_eq!(
        (&stat["name"], &stat["description"]),
        (&json!("renamed"), &json!("described"))
    );
    assert_eq!(ok("volume", "SR.ls", args.clone()), json!([]));
    let v = new_volume(&sr, 1 << 20);
    let ls = ok("volume", "SR.ls", args.clone());
    assert_eq!(ls.as_array().unwrap().len(), 1);
    check_volume(&ls[0]);
    assert_eq!(ls[0]["key"], v["key"]);
    ok("volume", "SR.detach", args.clone());
    ok("volume", "SR.destroy", args);
    assert!(
        !tmp.path().join("sr").exists(),
        "SR.destroy removes the folder"
    );
}

#[test]
fn volume_metadata_calls_change_what_stat_returns() {
    let tmp = tempfile::tempdir().unwrap();
    let sr = new_sr(tmp.path());
    let v = new_volume(&sr, 1_000_000);
    assert_eq!(v["virtual_size"], 1_000_448, "rounded up to whole sectors");
    assert_eq!(
        (&v["read_write"], &v["sharable"]),
        (&json!(true), &json!(false))
    );
    let key = &v["key"];
    let call = |m: &str, extra: serde_json::Value| {
        let mut a = key_args(&sr, &v);
        a.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        ok("volume", m, a)
    };
    call("Volume.set_name", json!({"new_name": "boot"}));
    call(
        "Volume.set_description",
        json!({"new_description": "the boot disk"}),
    );
    call("Volume.set", json!({"k": "vdi-type", "v": "user"}));
    call("Volume.set", json!({"k": "gone", "v": "soon"}));
    call("Volume.unset", json!({"k": "gone"}));
    call("Volume.resize", json!({"new_size": 4 << 20}));
    let s = call("Volume.stat", json!({}));
    check_volume(&s);
    assert_eq!(&s["key"], key);
    assert_eq!(
        (&s["name"], &s["description"]),
        (&json!("boot"), &json!("the boot disk"))
    );
    assert_eq!(s["keys"], json!({"vdi-type": "user"}));
    assert_eq!(s["virtual_size"], 4 << 20);
    let info = qemu_img(&["info", "--output=json", &image_path(&s)]);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["virtual-size"], 4 << 20, "qemu-img sees the resize");
    call("Volume.resize", json!({"new_size": 1 << 20}));
    assert_eq!(
        call("Volume.stat", json!({}))["virtual_size"],
        4 << 20,
        "never shrinks"
    );
}

#[test]
fn snapshot_and_clone_share_a_frozen_base_that_goes_with_the_last_volume() {
    let tmp = tempfile::tempdir().unwrap();
    let sr = new_sr(tmp.path());
    let v = new_volume(&sr, 8 << 20);
    let before = files(tmp.path());
    let snap = ok("volume", "Volume.snapshot", key_args(&sr, &v));
    check_volume(&snap);
    assert_eq!(snap["read_write"], false);
    assert_eq!(snap["name"], v["name"], "the name is copied");
    assert_ne!(snap["key"], v["key"]);
    let clone = ok("volume", "Volume.clone", key_args(&sr, &snap));
    check_volume(&clone);
    assert_eq!(clone["read_write"], true);
    for vol in [&v, &snap, &clone] {
        let path = image_path(vol);
        qemu_img(&["check", &path]);
        let chain = qemu_img(&["info", "--backing-chain", "--output=json", &path]);
        let chain: serde_json::Value = serde_json::from_str(&chain).unwrap();
        assert!(chain.as_array().unwrap().len() >= 2, "an overlay: {chain}");
        assert_eq!(chain[0]["virtual-size"], 8 << 20);
    }
    for vol in [&snap, &v, &clone] {
        ok("volume", "Volume.destroy", key_args(&sr, vol));
    }
    let after = files(tmp.path());
    assert_eq!(
        after,
        [".rustbk-sr.json", ".rustbk-sr.lock"],
        "no base left behind"
    );
    assert!(before.len() > after.len());
    assert_eq!(
        ok("volume", "SR.ls", json!({"dbg": "t", "sr": sr})),
        json!([])
    );
}

#[test]
fn datapath_attach_returns_a_xendisk_with_the_params_rustbk_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let sr = new_sr(tmp.path());
    let v = new_volume(&sr, 1 << 20);
    let a = dp_args(&v);
    ok(
        "datapath",
        "Datapath.open",
        json!({"dbg": "t", "uri": a["uri"], "persistent": true}),
    );
    let disk = check_backend(&ok("datapath", "Datapath.attach", a.clone()));
    assert_eq!(disk["params"], format!("qcow2:{}", image_path(&v)));
    assert_eq!(disk["backend_type"], "vbd3");
    assert_eq!(disk["extra"], json!({"type": "rustbk"}));
    for m in [
        "Datapath.activate",
        "Datapath.deactivate",
        "Datapath.detach",
    ] {
        assert_eq!(ok("datapath", m, a.clone()), serde_json::Value::Null, "{m}");
    }
    ok(
        "datapath",
        "Datapath.close",
        json!({"dbg": "t", "uri": a["uri"]}),
    );
}

#[test]
fn failures_print_the_error_object_with_the_idl_exception_name() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = format!("file://{}/none", tmp.path().display());
    let sr_args = |sr: &str| json!({"dbg": "t", "sr": sr});
    assert_eq!(
        fails("volume", "SR.stat", sr_args(&missing)),
        "SR_does_not_exist"
    );
    assert_eq!(
        fails("volume", "SR.ls", sr_args("nfs://host/x")),
        "SR_does_not_exist"
    );
    let attach = json!({"dbg": "t", "configuration": {"uri": missing}});
    assert_eq!(fails("volume", "SR.attach", attach), "SR_does_not_exist");
    let sr = new_sr(tmp.path());
    let gone = json!({"dbg": "t", "sr": sr, "key": "0123-abcd"});
    for m in [
        "Volume.stat",
        "Volume.destroy",
        "Volume.snapshot",
        "Volume.clone",
    ] {
        assert_eq!(
            fails("volume", m, gone.clone()),
            "Volume_does_not_exist",
            "{m}"
        );
    }
    let escape = json!({"dbg": "t", "sr": sr, "key": "../etc/passwd"});
    assert_eq!(
        fails("volume", "Volume.stat", escape),
        "Volume_does_not_exist"
    );
    let no_size = json!({"dbg": "t", "sr": sr, "name": "n", "description": "d"});
    assert_eq!(fails("volume", "Volume.create", no_size), "Internal_error");
    assert_eq!(fails("volume", "Volume.compare", gone), "Unimplemented");
    let set_no_v = json!({"dbg": "t", "sr": sr, "key": "0123-abcd", "k": "x"});
    assert_eq!(fails("volume", "Volume.set", set_no_v), "Internal_error");
    let v = new_volume(&sr, 1 << 20);
    let open = json!({"dbg": "t", "uri": v["uri"][0], "persistent": false});
    assert_eq!(fails("datapath", "Datapath.open", open), "Unimplemented");
    let again = json!({"dbg": "t", "uuid": "u", "configuration": {"uri": sr},
                       "name": "n", "description": "d"});
    assert_eq!(fails("volume", "SR.create", again), "Internal_error");
    let bad_uri = json!({"dbg": "t", "uri": "nbd://host/x", "domain": "1"});
    assert_eq!(
        fails("datapath", "Datapath.attach", bad_uri),
        "Internal_error"
    );
    let absent = json!({"dbg": "t", "uri": "rustbk:qcow2:/nonexistent.qcow2", "domain": "1"});
    assert_eq!(
        fails("datapath", "Datapath.attach", absent),
        "Volume_does_not_exist"
    );
    let e = call("volume", "SR.stat", &sr_args(&missing)).unwrap_err();
    assert_eq!(e["code"], "SR_BACKEND_FAILURE");
    assert_eq!(e["params"][1], missing);
}

#[test]
fn a_thin_pool_sr_makes_its_pool_and_keys_volumes_by_thin_id() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = tmp.path().join("pool");
    let config = json!({"uri": format!("thin://{}", pool.display()), "size": "64M"});
    let no_size = json!({"uri": format!("thin://{}", pool.display())});
    let create = |config: &serde_json::Value| json!({"dbg": "t", "uuid": "u", "configuration": config, "name": "thin", "description": ""});
    assert_eq!(
        fails("volume", "SR.create", create(&no_size)),
        "Internal_error"
    );
    ok("volume", "SR.create", create(&config));
    let sr = ok(
        "volume",
        "SR.attach",
        json!({"dbg": "t", "configuration": config}),
    );
    let sr = sr.as_str().unwrap().to_owned();
    let stat = ok("volume", "SR.stat", json!({"dbg": "t", "sr": sr}));
    check_sr_stat(&stat);
    assert_eq!(stat["total_space"], 64 << 20);
    let v = new_volume(&sr, 8 << 20);
    assert_eq!(v["key"], "0");
    assert_eq!(v["uri"][0], format!("rustbk:thin:{}:0", pool.display()));
    let disk = check_backend(&ok("datapath", "Datapath.attach", dp_args(&v)));
    assert_eq!(disk["params"], format!("thin:{}:0", pool.display()));
    let snap = ok("volume", "Volume.snapshot", key_args(&sr, &v));
    check_volume(&snap);
    assert_eq!(
        (&snap["key"], &snap["read_write"]),
        (&json!("1"), &json!(false))
    );
    let clone = ok("volume", "Volume.clone", key_args(&sr, &snap));
    assert_eq!(
        (&clone["key"], &clone["read_write"]),
        (&json!("2"), &json!(true))
    );
    let mut resize = key_args(&sr, &v);
    resize["new_size"] = json!(16 << 20);
    ok("volume", "Volume.resize", resize);
    assert_eq!(
        ok("volume", "Volume.stat", key_args(&sr, &v))["virtual_size"],
        16 << 20
    );
    assert_eq!(
        ok("volume", "Volume.stat", key_args(&sr, &snap))["virtual_size"],
        8 << 20
    );
    let ls = ok("volume", "SR.ls", json!({"dbg": "t", "sr": sr}));
    assert_eq!(ls.as_array().unwrap().len(), 3);
    ls.as_array().unwrap().iter().for_each(check_volume);
    ok("volume", "Volume.destroy", key_args(&sr, &snap));
    let gone = fails("volume", "Volume.stat", key_args(&sr, &snap));
    assert_eq!(gone, "Volume_does_not_exist");
    ok("volume", "SR.destroy", json!({"dbg": "t", "sr": sr}));
    let gone = fails("volume", "SR.stat", json!({"dbg": "t", "sr": sr}));
    assert_eq!(gone, "SR_does_not_exist");
}

/// The packaged scripts, installed under call names as xapi-storage-script finds them, run
/// the binary `RUSTBK` names.
#[test]
fn packaged_scripts_dispatch_on_the_name_they_are_installed_under() {
    let tmp = tempfile::tempdir().unwrap();
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/xapi-storage-script");
    for (plugin, folder, call, plugin_name) in [
        (
            "volume",
            "volume/org.xen.xapi.storage.rustbk",
            "Plugin.Query",
            "rustbk",
        ),
        ("datapath", "datapath/rustbk", "Plugin.Query", "rustbk"),
    ] {
        let dir = tmp.path().join(folder);
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join(call);
        std::fs::copy(scripts.join(plugin), &script).unwrap();
        let mut child = spawn_script(&script);
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"{\"dbg\": \"t\"}")
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{plugin}: {out:?}");
        let q: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        check_query(&q);
        assert_eq!(q["plugin"], plugin_name);
    }
}

/// Runs a script just written; retries while another test thread's fork still holds it open
/// for writing (ETXTBSY).
fn spawn_script(script: &Path) -> std::process::Child {
    for _ in 0..100 {
        let spawned = Command::new(script)
            .arg("--json")
            .env("RUSTBK", env!("CARGO_BIN_EXE_rustbk"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn();
        match spawned {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other.unwrap(),
        }
    }
    panic!("{} stays busy", script.display());
}

/// xapi-storage-script may run calls at once: snapshots, stats and destroys of one folder SR
/// in parallel processes all succeed and leave every chain whole and no base behind.
#[test]
fn concurrent_snapshots_and_destroys_keep_every_chain_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let sr = new_sr(tmp.path());
    let v = new_volume(&sr, 4 << 20);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..3 {
                    let snap = ok("volume", "Volume.snapshot", key_args(&sr, &v));
                    ok("volume", "Volume.stat", key_args(&sr, &v));
                    qemu_img(&["check", &image_path(&snap)]);
                    ok("volume", "Volume.destroy", key_args(&sr, &snap));
                }
            });
        }
    });
    qemu_img(&["check", &image_path(&v)]);
    ok("volume", "Volume.destroy", key_args(&sr, &v));
    assert_eq!(files(tmp.path()), [".rustbk-sr.json", ".rustbk-sr.lock"]);
}
