//! `rustbk img` on VHD (qemu's `vpc`): images rustbk creates and converts are read by
//! qemu-img as rustbk wrote them, and images qemu-img makes convert back unchanged.

use crate::common::{at, json, qemu_io, qemu_ok, rustbk, rustbk_ok, tmp, vhd_child};

#[test]
fn vpc_images_rustbk_creates_are_read_by_qemu_img_with_their_size() {
    let dir = tmp();
    for (name, opts) in [
        ("dyn.vhd", "subformat=dynamic"),
        ("small.vhd", "subformat=dynamic,block_size=64k"),
        ("fixed.vhd", "subformat=fixed"),
    ] {
        let path = at(&dir, name);
        rustbk_ok(&[&"create", &"-f", &"vpc", &"-o", &opts, &path, &"24M"]);
        let info = json(&qemu_ok(&[&"info", &"--output=json", &"-f", &"vpc", &path]));
        assert_eq!(info["virtual-size"], 24 << 20, "{name}: {info}");
        let ours = json(&rustbk_ok(&[
            &"info",
            &"--output=json",
            &"-f",
            &"vpc",
            &path,
        ]));
        assert_eq!(ours["format"], "vpc");
        assert_eq!(ours["virtual-size"], 24 << 20);
    }
}

#[test]
fn raw_converted_to_vpc_by_rustbk_equals_the_source_under_qemu_img_compare() {
    let dir = tmp();
    let raw = at(&dir, "src.raw");
    qemu_ok(&[&"create", &"-q", &"-f", &"raw", &raw, &"20M"]);
    qemu_io(
        &raw,
        "raw",
        &["write -P 7 0 1M", "write -P 9 5M 3M", "write -P 1 19M 4k"],
    );
    for sub in ["dynamic", "fixed"] {
        let out = at(&dir, &format!("{sub}.vhd"));
        let o = format!("subformat={sub}");
        rustbk_ok(&[
            &"convert", &"-f", &"raw", &"-O", &"vpc", &"-o", &o, &raw, &out,
        ]);
        qemu_ok(&[&"compare", &"-f", &"raw", &"-F", &"vpc", &raw, &out]);
        let back = at(&dir, &format!("{sub}.raw"));
        rustbk_ok(&[&"convert", &"-f", &"vpc", &"-O", &"raw", &out, &back]);
        qemu_ok(&[&"compare", &"-f", &"raw", &"-F", &"raw", &raw, &back]);
    }
}

#[test]
fn vpc_images_qemu_img_makes_compare_equal_to_their_qemu_conversion() {
    let dir = tmp();
    let raw = at(&dir, "src.raw");
    qemu_ok(&[&"create", &"-q", &"-f", &"raw", &raw, &"16M"]);
    qemu_io(&raw, "raw", &["write -P 3 1M 2M", "write -P 4 12M 64k"]);
    for sub in ["dynamic", "fixed"] {
        let vhd = at(&dir, &format!("q-{sub}.vhd"));
        let o = format!("subformat={sub}");
        qemu_ok(&[
            &"convert", &"-f", &"raw", &"-O", &"vpc", &"-o", &o, &raw, &vhd,
        ]);
        let qraw = at(&dir, &format!("q-{sub}.raw"));
        qemu_ok(&[&"convert", &"-f", &"vpc", &"-O", &"raw", &vhd, &qraw]);
        let r = rustbk(&[&"compare", &"-f", &"vpc", &"-F", &"raw", &vhd, &qraw]);
        assert_eq!(r.code, 0, "{r:?}");
    }
}

#[test]
fn a_differencing_vhd_created_by_rustbk_names_its_parent_in_info() {
    let dir = tmp();
    let base = at(&dir, "base.vhd");
    rustbk_ok(&[&"create", &"-f", &"vpc", &base, &"8M"]);
    let child = at(&dir, "child.vhd");
    let refused = rustbk(&[&"create", &"-f", &"vpc", &"-b", &"base.vhd", &child]);
    assert_ne!(refused.code, 0, "a parent without -F vpc must be refused");
    vhd_child(&base, &child);
    let info = json(&rustbk_ok(&[&"info", &"--output=json", &child]));
    assert_eq!(info["format"], "vpc");
    assert_eq!(info["virtual-size"], 8 << 20);
    assert_eq!(info["backing-filename"], "./base.vhd");
    assert_eq!(info["backing-filename-format"], "vpc");
}
