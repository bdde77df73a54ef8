//! `rustbk img map` and `check` on VHD (qemu's `vpc`) against images the real qemu-img made
//! and qemu-io wrote: the maps equal qemu-img's, the checks pass, and a leaked image is
//! found, repaired and still holds what qemu wrote.

use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::common::{at, json, qemu_io, qemu_ok, rustbk, rustbk_ok, tmp, vhd_child};
use crate::tools::as_printed_by;

/// Writes at scattered offsets: unaligned sectors, across block boundaries, near the end.
const WRITES: &[&str] = &[
    "write -P 1 0 4k",
    "write -P 2 512 512",
    "write -P 3 3M 64k",
    "write -P 4 6143k 2M",
    "write -P 5 20M 512",
    "write -P 6 33M 1M",
    "write -P 7 62M 1M",
];

/// A 64 MiB vpc image of `subformat` made by qemu-img and written by qemu-io.
fn qemu_vpc(dir: &tempfile::TempDir, subformat: &str) -> std::path::PathBuf {
    let path = at(dir, &format!("{subformat}.vhd"));
    let o = format!("subformat={subformat}");
    qemu_ok(&[&"create", &"-q", &"-f", &"vpc", &"-o", &o, &path, &"64M"]);
    qemu_io(&path, "vpc", WRITES);
    path
}

/// A 64 MiB vpc image made by rustbk with `-o OPTS` and written by qemu-io.
fn rustbk_vpc(dir: &tempfile::TempDir, name: &str, opts: &str) -> std::path::PathBuf {
    let path = at(dir, name);
    rustbk_ok(&[&"create", &"-f", &"vpc", &"-o", &opts, &path, &"64M"]);
    qemu_io(&path, "vpc", WRITES);
    path
}

/// Dynamic and fixed images made by qemu-img and by rustbk (512 KiB blocks), all written by
/// qemu-io, with their subformats.
fn images(dir: &tempfile::TempDir) -> [(&'static str, std::path::PathBuf); 4] {
    [
        ("dynamic", qemu_vpc(dir, "dynamic")),
        ("fixed", qemu_vpc(dir, "fixed")),
        (
            "dynamic",
            rustbk_vpc(dir, "r512k.vhd", "subformat=dynamic,block_size=512k"),
        ),
        ("fixed", rustbk_vpc(dir, "rfixed.vhd", "subformat=fixed")),
    ]
}

#[test]
fn vpc_map_json_equals_qemu_img_map_on_dynamic_and_fixed_images_qemu_wrote() {
    let dir = tmp();
    for (sub, path) in images(&dir) {
        let args: [&dyn AsRef<std::ffi::OsStr>; 5] =
            [&"map", &"--output=json", &"-f", &"vpc", &path];
        let theirs = json(&qemu_ok(&args));
        let ours = as_printed_by(json(&rustbk_ok(&args)), &theirs);
        assert!(
            theirs.as_array().is_some_and(|a| a.len() > 6),
            "{sub}: {theirs}"
        );
        assert_eq!(ours, theirs, "map of {} ({sub})", path.display());
    }
}

#[test]
fn vpc_check_passes_dynamic_and_fixed_images_qemu_io_wrote() {
    let dir = tmp();
    for (sub, path) in images(&dir) {
        let r = rustbk(&[&"check", &"-f", &"vpc", &"--output=json", &path]);
        assert_eq!(r.code, 0, "{sub}: {r:?}");
        let report = json(&r.stdout);
        assert_eq!(report["format"], "vpc");
        assert_eq!(report["subformat"], sub);
        assert_eq!(report["check-errors"], 0);
        assert!(report.get("problems").is_none(), "{sub}: {report}");
        let size = std::fs::metadata(&path).expect("stat").len();
        assert_eq!(report["image-end-offset"], size);
    }
}

/// Appends `blocks` garbage blocks (bitmap sector and 2 MiB) where the footer was and
/// moves the footer after them.
fn leak_blocks(path: &Path, blocks: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open");
    let end = f.metadata().expect("stat").len();
    let mut footer = [0u8; 512];
    f.read_exact_at(&mut footer, end - 512).expect("footer");
    let garbage: Vec<u8> = (0..blocks * ((2 << 20) + 512))
        .map(|i| (i * 7 + 3) as u8)
        .collect();
    f.write_all_at(&garbage, end - 512).expect("garbage");
    f.write_all_at(&footer, end - 512 + garbage.len() as u64)
        .expect("footer");
}

#[test]
fn a_leaked_vpc_image_exits_3_and_r_leaks_gives_the_space_back_keeping_the_data() {
    let dir = tmp();
    let path = qemu_vpc(&dir, "dynamic");
    let original = at(&dir, "original.vhd");
    std::fs::copy(&path, &original).expect("copy");
    let size = std::fs::metadata(&path).expect("stat").len();
    leak_blocks(&path, 2);
    let r = rustbk(&[&"check", &"-f", &"vpc", &"--output=json", &path]);
    assert_eq!(r.code, 3, "{r:?}");
    let report = json(&r.stdout);
    assert_eq!(report["leaks"], 1);
    assert_eq!(report["leaked-bytes"], 2 * ((2 << 20) + 512));
    assert_eq!(report["image-end-offset"], size);
    let r = rustbk(&[&"check", &"-f", &"vpc", &"-r", &"leaks", &path]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("1 leaked ranges"), "{r:?}");
    let r = rustbk(&[&"check", &"-f", &"vpc", &path]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), size);
    qemu_ok(&[&"compare", &"-f", &"vpc", &"-F", &"vpc", &original, &path]);
}

#[test]
fn a_damaged_vpc_footer_copy_exits_2_and_r_all_restores_it() {
    let dir = tmp();
    let path = qemu_vpc(&dir, "dynamic");
    let original = at(&dir, "original.vhd");
    std::fs::copy(&path, &original).expect("copy");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    f.write_all_at(b"not-a-footer", 0).expect("damage");
    let r = rustbk(&[&"check", &"-f", &"vpc", &path]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("ERROR: VHD footer copy at offset 0"),
        "{r:?}"
    );
    let r = rustbk(&[&"check", &"-f", &"vpc", &"-r", &"all", &path]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        std::fs::read(&path).expect("read"),
        std::fs::read(&original).expect("read"),
        "the image is back to what qemu wrote"
    );
}

/// `rustbk img ARGS` run in `dir`.
fn rustbk_in(dir: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_rustbk"))
        .current_dir(dir)
        .arg("img")
        .args(args)
        .output()
        .expect("run rustbk")
}

#[test]
fn vpc_check_of_a_differencing_disk_named_relatively_finds_its_parent_or_warns() {
    let dir = tmp();
    rustbk_ok(&[&"create", &"-f", &"vpc", &at(&dir, "base.vhd"), &"8M"]);
    let child = at(&dir, "child.vhd");
    vhd_child(&at(&dir, "base.vhd"), &child);
    let args = ["check", "--output=json", "child.vhd"];
    let out = rustbk_in(dir.path(), &args);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let report = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(report["subformat"], "differencing");
    assert_eq!(report["backing-filename"], "./base.vhd");
    assert!(report.get("problems").is_none(), "{report}");
    std::fs::rename(at(&dir, "base.vhd"), at(&dir, "gone.vhd")).expect("rename");
    let out = rustbk_in(dir.path(), &args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "a missing parent is no corruption"
    );
    let report = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(report["problems"][0]["kind"], "warning", "{report}");
    let message = report["problems"][0]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("parent not found"), "{message}");
}
