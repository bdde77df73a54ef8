//! `rustbk img compare`, `map` and `resize` agree with qemu-img.

use std::path::Path;

use crate::common::{
    at, json, qemu_img, qemu_io, qemu_ok, qemu_overlay, qemu_qcow2, rustbk, rustbk_ok, tmp,
};

fn compare_both(a: &Path, b: &Path) -> ((i32, String), (i32, String)) {
    let ours = rustbk(&[&"compare", &a, &b]);
    let theirs = qemu_img(&[&"compare", &a, &b]);
    ((ours.code, ours.stdout), (theirs.code, theirs.stdout))
}

#[test]
fn compare_agrees_with_qemu_on_equal_different_and_differently_sized_images() {
    let dir = tmp();
    let a = at(&dir, "a.qcow2");
    qemu_qcow2(&a, "8M", &["write -P 1 0 1M"]);
    let b = at(&dir, "b.raw");
    qemu_ok(&[&"convert", &"-O", &"raw", &a, &b]);
    let (ours, theirs) = compare_both(&a, &b);
    assert_eq!((ours.0, theirs.0), (0, 0));
    qemu_io(&b, "raw", &["write -P 2 700k 512"]);
    let (ours, theirs) = compare_both(&a, &b);
    assert_eq!((ours.0, theirs.0), (1, 1));
    assert_eq!(ours.1.trim(), "Content mismatch at offset 716800!");
    assert!(
        theirs.1.contains("Content mismatch at offset 716800!"),
        "{}",
        theirs.1
    );
    let c = at(&dir, "c.qcow2");
    qemu_qcow2(&c, "12M", &["write -P 1 0 1M"]);
    let (ours, theirs) = compare_both(&a, &c);
    assert_eq!((ours.0, theirs.0), (0, 0), "{ours:?} {theirs:?}");
    qemu_io(&c, "qcow2", &["write -P 3 10M 4k"]);
    let (ours, theirs) = compare_both(&a, &c);
    assert_eq!((ours.0, theirs.0), (1, 1));
    assert!(
        ours.1.contains("Content mismatch at offset 10485760!"),
        "{}",
        ours.1
    );
    assert!(
        theirs.1.contains("Content mismatch at offset 10485760!"),
        "{}",
        theirs.1
    );
    assert_eq!(rustbk(&[&"compare", &a, &at(&dir, "missing")]).code, 2);
}

#[test]
fn map_json_equals_qemu_img_map_on_chains_and_raw_images() {
    let dir = tmp();
    let raw = at(&dir, "base.raw");
    qemu_ok(&[&"create", &"-q", &"-f", &"raw", &raw, &"4M"]);
    qemu_io(&raw, "raw", &["write -P 1 1M 64k"]);
    let mid = at(&dir, "mid.qcow2");
    qemu_overlay(&mid, "base.raw", "raw", Some("6M"));
    qemu_io(
        &mid,
        "qcow2",
        &[
            "write -P 2 0 128k",
            "write -z 256k 64k",
            "write -c -P 3 2M 64k",
        ],
    );
    let top = at(&dir, "top.qcow2");
    qemu_overlay(&top, "mid.qcow2", "qcow2", None);
    qemu_io(
        &top,
        "qcow2",
        &[
            "write -P 4 64k 64k",
            "write -z 128k 64k",
            "write -z -u 3M 64k",
            "write -P 5 5M 64k",
        ],
    );
    for image in [&raw, &mid, &top] {
        let ours = json(&rustbk_ok(&[&"map", &"--output=json", image]));
        let theirs = json(&qemu_ok(&[&"map", &"--output=json", image]));
        assert_eq!(
            as_printed_by(ours, &theirs),
            theirs,
            "map of {}",
            image.display()
        );
    }
    let compressed: Vec<(u64, u64)> = json(&rustbk_ok(&[&"map", &"--output=json", &mid]))
        .as_array()
        .expect("map is an array")
        .iter()
        .filter(|e| e["compressed"] == serde_json::Value::Bool(true))
        .map(|e| (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap()))
        .collect();
    assert_eq!(compressed, [(2 << 20, 64 << 10)]);
}

/// `ours` as the installed qemu-img prints a map: qemu-img before 8.2 has no `compressed`.
pub fn as_printed_by(mut ours: serde_json::Value, theirs: &serde_json::Value) -> serde_json::Value {
    let has_compressed = theirs
        .as_array()
        .and_then(|a| a.first())
        .is_some_and(|e| e.get("compressed").is_some());
    if !has_compressed {
        for entry in ours.as_array_mut().into_iter().flatten() {
            entry.as_object_mut().map(|o| o.remove("compressed"));
        }
    }
    ours
}

#[test]
fn resize_grows_like_qemu_img_resize() {
    let dir = tmp();
    let q = at(&dir, "q.qcow2");
    qemu_qcow2(&q, "8M", &["write -P 1 0 64k"]);
    rustbk_ok(&[&"resize", &q, &"+1G"]);
    rustbk_ok(&[&"resize", &q, &"2G"]);
    let info = json(&qemu_ok(&[&"info", &"--output=json", &q]));
    assert_eq!(info["virtual-size"], 2u64 << 30);
    qemu_ok(&[&"check", &q]);
    qemu_io(
        &q,
        "qcow2",
        &[
            "read -P 1 0 64k",
            "write -P 2 1536M 64k",
            "read -P 2 1536M 64k",
        ],
    );
    let r = at(&dir, "r.raw");
    qemu_ok(&[&"create", &"-q", &"-f", &"raw", &r, &"1M"]);
    rustbk_ok(&[&"resize", &"-f", &"raw", &r, &"+3M"]);
    let info = json(&qemu_ok(&[&"info", &"--output=json", &r]));
    assert_eq!(info["virtual-size"], 4u64 << 20);
    assert_ne!(
        rustbk(&[&"resize", &r, &"1M"]).code,
        0,
        "shrinking must be refused"
    );
}

#[test]
fn argument_errors_exit_like_qemu_img() {
    let dir = tmp();
    let x = dir.path().join("x.img");
    let cases: [&[&dyn AsRef<std::ffi::OsStr>]; 6] = [
        &[&"create"],
        &[&"info", &"--bogus", &x],
        &[&"check", &"--bogus", &x],
        &[&"compare", &x],
        &[&"convert", &"-O", &"bogus", &x, &x],
        &[&"map"],
    ];
    for args in cases {
        let (ours, theirs) = (rustbk(args), qemu_img(args));
        assert_eq!(theirs.code, 1, "qemu-img {theirs:?}");
        assert_eq!(ours.code, theirs.code, "rustbk img: {ours:?}");
    }
    for args in [
        &[&"--help" as &dyn AsRef<std::ffi::OsStr>][..],
        &[&"create", &"--help"],
    ] {
        assert_eq!((rustbk(args).code, qemu_img(args).code), (0, 0));
    }
}
