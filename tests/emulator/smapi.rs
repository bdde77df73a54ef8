//! XAPI's call sequence through rustbk's SMAPIv3 plugins, with the toolstack's part played by
//! the emulator: SR.create → Volume.create → Datapath.open/attach/activate → the returned
//! XenDisk written as xenopsd writes it (under `backend/<backend_type>`, an empty `params`,
//! the XenDisk's params as `qemu-params`, its `extra` under `sm-data/`) and served by
//! `rustbk daemon` to an emulated guest → verified writes and reads → Volume.snapshot →
//! Datapath.deactivate/detach/close → the snapshot served read-only → Volume.destroy →
//! SR.destroy.

use std::path::PathBuf;

use rustbk_blkfront::toolstack::Toolstack;
use rustbk_ring::status;
use serde_json::{Value, json};

use crate::harness::{Host, Setup, pattern};
use crate::smapi_client::*;

const SIZE: i64 = 16 << 20;

/// Datapath.open + attach + activate; returns the XenDisk.
fn plug(v: &Value) -> Value {
    let a = dp_args(v);
    ok(
        "datapath",
        "Datapath.open",
        json!({"dbg": "t", "uri": a["uri"], "persistent": true}),
    );
    let disk = check_backend(&ok("datapath", "Datapath.attach", a.clone()));
    ok("datapath", "Datapath.activate", a);
    disk
}

/// Datapath.deactivate + detach + close.
fn unplug(v: &Value) {
    let a = dp_args(v);
    ok("datapath", "Datapath.deactivate", a.clone());
    ok("datapath", "Datapath.detach", a.clone());
    ok(
        "datapath",
        "Datapath.close",
        json!({"dbg": "t", "uri": a["uri"]}),
    );
}

/// The XenDisk plugged as xenopsd plugs it, served by the daemon (which claims it by the
/// `sm-data/type` the XenDisk's `extra` carries).
fn serve(disk: &Value, read_only: bool) -> Host {
    assert_eq!(disk["backend_type"], "vbd3", "{disk}");
    let params = disk["params"].as_str().unwrap();
    let image = PathBuf::from(params.split_once(':').unwrap().1);
    let extra = disk["extra"].as_object().unwrap();
    let extra = extra
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    let setup = Setup {
        params: Some(params.to_owned()),
        read_only,
        toolstack: Toolstack::Xenopsd { extra },
        script: None,
        ..Setup::default()
    };
    let host = Host::daemon_serving(setup, |_| image);
    assert!(host.spec.backend_path().contains("/backend/vbd3/"));
    host
}

#[test]
fn xapi_sequence_serves_a_guest_and_the_snapshot_keeps_what_it_wrote() {
    let tmp = tempfile::tempdir().unwrap();
    let sr = new_sr(&tmp.path().join("sr"));
    let v = new_volume(&sr, SIZE);
    let host = serve(&plug(&v), false);
    let mut g = host.guest();
    assert_eq!(g.front.disk().sectors, (SIZE / 512) as u64);
    let data = pattern(3 * 4096, 17);
    assert_eq!(g.write(4096, &data), status::OKAY);
    let (st, back) = g.read(4096, 3);
    assert_eq!((st, back == data), (status::OKAY, true));
    let (st, zeros) = g.read(0, 1);
    assert_eq!((st, zeros.iter().all(|&b| b == 0)), (status::OKAY, true));
    // While rustbk holds the qcow2 file, the volume plugin refuses to move it under it.
    let live = call("volume", "Volume.snapshot", &key_args(&sr, &v)).unwrap_err();
    assert_eq!(live["params"][0], "Internal_error");
    assert!(
        live["params"][1].as_str().unwrap().ends_with("is in use"),
        "{live}"
    );
    g.front.close().unwrap();
    drop(host);
    unplug(&v);
    let snap = ok("volume", "Volume.snapshot", key_args(&sr, &v));
    check_volume(&snap);
    assert_eq!(snap["read_write"], false);

    let host = serve(&plug(&snap), true);
    let mut g = host.guest();
    let (st, back) = g.read(4096, 3);
    assert_eq!(
        (st, back == data),
        (status::OKAY, true),
        "the snapshot has the guest's data"
    );
    g.front.close().unwrap();
    drop(host);
    unplug(&snap);

    for vol in [&v, &snap] {
        ok("volume", "Volume.destroy", key_args(&sr, vol));
    }
    ok("volume", "SR.destroy", json!({"dbg": "t", "sr": sr}));
    assert!(!tmp.path().join("sr").exists());
}

#[test]
fn a_thin_sr_snapshots_a_volume_while_rustbk_serves_it() {
    let tmp = tempfile::tempdir().unwrap();
    let config = json!({"uri": format!("thin://{}/pool", tmp.path().display()), "size": "64M"});
    let create = json!({"dbg": "t", "uuid": "u", "configuration": config,
                        "name": "thin", "description": ""});
    ok("volume", "SR.create", create);
    let sr = ok(
        "volume",
        "SR.attach",
        json!({"dbg": "t", "configuration": config}),
    );
    let sr = sr.as_str().unwrap().to_owned();
    let v = new_volume(&sr, SIZE);
    let host = serve(&plug(&v), false);
    let mut g = host.guest();
    let old = pattern(2 * 4096, 3);
    assert_eq!(g.write(0, &old), status::OKAY);
    // The worker serves the pool through a pool service: the snapshot goes through it live.
    let snap = ok("volume", "Volume.snapshot", key_args(&sr, &v));
    let new = pattern(2 * 4096, 4);
    assert_eq!(g.write(0, &new), status::OKAY);
    let (st, back) = g.read(0, 2);
    assert_eq!((st, back == new), (status::OKAY, true));
    g.front.close().unwrap();
    drop(host);
    unplug(&v);

    let host = serve(&plug(&snap), true);
    let mut g = host.guest();
    let (st, back) = g.read(0, 2);
    assert_eq!(
        (st, back == old),
        (status::OKAY, true),
        "the snapshot keeps the old data"
    );
    g.front.close().unwrap();
    drop(host);
    unplug(&snap);
    ok("volume", "SR.destroy", json!({"dbg": "t", "sr": sr}));
}
