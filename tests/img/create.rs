//! `rustbk img create` and `info` against qemu-img.

use std::ffi::OsStr;

use crate::common::{
    Ran, at, json, qemu_img, qemu_ok, qemu_overlay, qemu_qcow2, rustbk, rustbk_ok, tmp,
};

#[test]
fn qemu_img_accepts_every_image_create_makes() {
    let dir = tmp();
    let raw = at(&dir, "a.raw");
    rustbk_ok(&[&"create", &"-f", &"raw", &raw, &"3M"]);
    let info = json(&qemu_ok(&[&"info", &"--output=json", &raw]));
    assert_eq!(
        (info["format"].clone(), info["virtual-size"].clone()),
        ("raw".into(), (3u64 << 20).into())
    );
    let cases = [
        (
            "b.qcow2",
            "cluster_size=4k,compat=1.1,refcount_bits=8",
            4096,
            "1.1",
            8,
        ),
        ("c.qcow2", "compat=0.10", 65536, "0.10", 16),
        (
            "d.qcow2",
            "cluster_size=2M,refcount_bits=64",
            2 << 20,
            "1.1",
            64,
        ),
    ];
    for (name, opts, cluster, compat, bits) in cases {
        let path = at(&dir, name);
        rustbk_ok(&[&"create", &"-f", &"qcow2", &"-o", &opts, &path, &"1G"]);
        qemu_ok(&[&"check", &path]);
        let info = json(&qemu_ok(&[&"info", &"--output=json", &path]));
        assert_eq!(info["cluster-size"], cluster, "{name}");
        assert_eq!(info["virtual-size"], 1u64 << 30, "{name}");
        let data = &info["format-specific"]["data"];
        assert_eq!(
            (data["compat"].as_str(), data["refcount-bits"].as_u64()),
            (Some(compat), Some(bits)),
            "{name}"
        );
    }
}

#[test]
fn backing_files_made_by_create_are_followed_by_qemu() {
    let dir = tmp();
    let base = at(&dir, "base.qcow2");
    qemu_qcow2(&base, "8M", &["write -P 5 0 64k"]);
    let top = at(&dir, "top.qcow2");
    rustbk_ok(&[
        &"create",
        &"-f",
        &"qcow2",
        &"-b",
        &"base.qcow2",
        &"-F",
        &"qcow2",
        &top,
    ]);
    qemu_ok(&[&"check", &top]);
    let info = json(&qemu_ok(&[&"info", &"--output=json", &top]));
    assert_eq!(info["backing-filename"], "base.qcow2");
    assert_eq!(info["backing-filename-format"], "qcow2");
    assert_eq!(info["virtual-size"], 8u64 << 20);
    crate::common::qemu_io(&top, "qcow2", &["read -P 5 0 64k", "read -P 0 64k 64k"]);
}

#[test]
fn info_json_matches_qemu_img_on_the_common_fields() {
    let dir = tmp();
    let base = at(&dir, "base.raw");
    qemu_ok(&[&"create", &"-q", &"-f", &"raw", &base, &"4M"]);
    let mid = at(&dir, "mid.qcow2");
    qemu_overlay(&mid, "base.raw", "raw", None);
    let top = at(&dir, "top.qcow2");
    qemu_ok(&[
        &"create",
        &"-q",
        &"-f",
        &"qcow2",
        &"-o",
        &"compat=0.10,cluster_size=512",
        &"-b",
        &mid,
        &"-F",
        &"qcow2",
        &top,
    ]);
    crate::common::qemu_io(&top, "qcow2", &["write -P 1 0 100k"]);
    for image in [&base, &mid, &top] {
        let ours = json(&rustbk_ok(&[&"info", &"--output=json", image]));
        let theirs = json(&qemu_ok(&[&"info", &"--output=json", image]));
        for key in [
            "virtual-size",
            "filename",
            "format",
            "actual-size",
            "cluster-size",
            "backing-filename",
            "full-backing-filename",
            "backing-filename-format",
            "dirty-flag",
            "format-specific",
        ] {
            assert_eq!(
                ours.get(key),
                theirs.get(key),
                "{key} of {}",
                image.display()
            );
        }
    }
    let ours = json(&rustbk_ok(&[
        &"info",
        &"--output=json",
        &"--backing-chain",
        &top,
    ]));
    let theirs = json(&qemu_ok(&[
        &"info",
        &"--output=json",
        &"--backing-chain",
        &top,
    ]));
    let names = |v: &serde_json::Value| -> Vec<serde_json::Value> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|i| i["filename"].clone())
            .collect()
    };
    assert_eq!(names(&ours), names(&theirs));
}

#[test]
fn create_refuses_a_backing_file_it_cannot_open_unless_told_not_to_open_it_like_qemu_img() {
    let dir = tmp();
    std::fs::write(at(&dir, "base.raw"), [0u8; 4096]).expect("write base");
    let missing = format!("Could not open '{}'", at(&dir, "missing").display());
    type Tool = fn(&[&dyn AsRef<OsStr>]) -> Ran;
    let tools: [(&str, Tool); 2] = [("qemu-img", qemu_img), ("rustbk", rustbk)];
    for (tool, run) in tools {
        let new = at(&dir, &format!("{tool}.qcow2"));
        let create = |more: &[&str]| {
            let mut args: Vec<&dyn AsRef<OsStr>> = vec![&"create", &"-f", &"qcow2"];
            args.extend(more.iter().map(|a| a as &dyn AsRef<OsStr>));
            args.extend([&new as &dyn AsRef<OsStr>, &"1M"]);
            run(&args)
        };
        let r = create(&["-b", "missing", "-F", "raw"]);
        assert_eq!(r.code, 1, "{tool}: {r:?}");
        for words in [missing.as_str(), "Could not open backing image"] {
            assert!(r.stderr.contains(words), "{tool}: {r:?}");
        }
        assert!(!new.exists(), "{tool} left {}", new.display());
        let r = create(&["-b", "base.raw"]);
        assert_eq!(r.code, 1, "{tool}: {r:?}");
        for words in [
            "Backing file specified without backing format",
            "Detected format of raw.",
        ] {
            assert!(r.stderr.contains(words), "{tool}: {r:?}");
        }
        let r = create(&["-u", "-b", "missing", "-F", "raw"]);
        assert_eq!(r.code, 0, "{tool} -u: {r:?}");
        let info = json(&qemu_ok(&[&"info", &"--output=json", &new]));
        assert_eq!(info["backing-filename"], "missing", "{tool}");
    }
}
