//! VMDK against qemu-img and libyal's libvmdk (`pyvmdk`, Debian python3-libvmdk): images of
//! every subformat made by qemu-img read equal to qemu's raw conversion; images rustbk writes
//! (random writes through the queue, `convert`, `create -b`) are equal to a reference under
//! `qemu-img compare`, pass `qemu-img check`, and read back identical through libvmdk. Images
//! without grain tables (directories of zeros) get their tables from rustbk's writes and pass
//! the same checks.

use std::path::{Path, PathBuf};
use std::process::Command;

use rustbk_formats::suite::{pattern, write_at};
use rustbk_formats::{Format, OpenOptions};

use crate::common::{at, qemu_io, qemu_ok, rustbk, rustbk_ok, tmp};

const SUBFORMATS: [&str; 5] = [
    "monolithicSparse",
    "monolithicFlat",
    "twoGbMaxExtentSparse",
    "twoGbMaxExtentFlat",
    "streamOptimized",
];
const MIB: usize = 1 << 20;

/// A 6 MiB raw image: patterns at scattered offsets, zeros elsewhere.
fn patterned(path: &Path) -> Vec<u8> {
    let mut data = vec![0u8; 6 * MIB];
    for (i, &(off, len)) in [
        (0, 4096),
        (70_000, 200_000),
        (2 * MIB + 512, 512),
        (5 * MIB, MIB),
    ]
    .iter()
    .enumerate()
    {
        data[off..off + len].copy_from_slice(&pattern(i as u64 + 1, len));
    }
    std::fs::write(path, &data).expect("raw");
    data
}

fn identical(a: &Path, b: &Path) {
    let out = rustbk_ok(&[&"compare", &a, &b]);
    assert!(out.contains("identical"), "{out}");
}

/// Reads the whole guest disk of `image` through libvmdk (`parent` set for a child).
fn libvmdk_read(image: &Path, parent: Option<&Path>) -> Vec<u8> {
    let script = "import sys, pyvmdk\n\
        def op(p):\n    h = pyvmdk.handle(); h.open(p); h.open_extent_data_files(); return h\n\
        h = op(sys.argv[1])\n\
        if len(sys.argv) > 2: h.set_parent(op(sys.argv[2]))\n\
        sys.stdout.buffer.write(h.read_buffer_at_offset(h.get_media_size(), 0))\n";
    let mut c = Command::new("/usr/bin/python3");
    c.args(["-c", script]).arg(image);
    if let Some(p) = parent {
        c.arg(p);
    }
    let out = c
        .output()
        .expect("python3 with pyvmdk is required (Debian python3-libvmdk)");
    assert!(
        out.status.success(),
        "pyvmdk on {}: {}",
        image.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn qemu_check(image: &Path) {
    let out = qemu_ok(&[&"check", &"-f", &"vmdk", &image]);
    assert!(out.contains("No errors"), "{out}");
}

#[test]
fn qemu_made_vmdk_of_every_subformat_equals_qemus_raw_conversion() {
    let dir = tmp();
    let src = at(&dir, "src.raw");
    patterned(&src);
    for sub in SUBFORMATS {
        let img = at(&dir, &format!("{sub}.vmdk"));
        qemu_ok(&[
            &"convert",
            &"-f",
            &"raw",
            &"-O",
            &"vmdk",
            &"-o",
            &format!("subformat={sub}"),
            &src,
            &img,
        ]);
        let back = at(&dir, &format!("{sub}.raw"));
        qemu_ok(&[&"convert", &"-f", &"vmdk", &"-O", &"raw", &img, &back]);
        identical(&back, &img);
        let info = rustbk_ok(&[&"info", &"--output=json", &img]);
        assert!(info.contains("\"format\": \"vmdk\""), "{info}");
    }
    let mut other = std::fs::read(&src).expect("src");
    other[3 * MIB] ^= 1;
    std::fs::write(&src, &other).expect("write");
    let r = rustbk(&[&"compare", &src, &at(&dir, "monolithicSparse.vmdk")]);
    assert_eq!(r.code, 1, "a one-byte difference is found: {r:?}");
}

#[test]
fn empty_images_qemu_created_and_qemu_io_wrote_read_equal_in_rustbk() {
    let dir = tmp();
    for sub in &SUBFORMATS[..4] {
        let img = at(&dir, &format!("{sub}.vmdk"));
        qemu_ok(&[
            &"create",
            &"-q",
            &"-f",
            &"vmdk",
            &"-o",
            &format!("subformat={sub}"),
            &img,
            &"8M",
        ]);
        qemu_io(
            &img,
            "vmdk",
            &[
                "write -P 0x11 0 4k",
                "write -P 0x22 1M 300k",
                "write -P 0x33 7M 1M",
            ],
        );
        let back = at(&dir, &format!("{sub}.raw"));
        qemu_ok(&[&"convert", &"-f", &"vmdk", &"-O", &"raw", &img, &back]);
        identical(&back, &img);
    }
}

/// Random writes through rustbk's queue, mirrored in `model`.
fn random_writes(img: &Path, model: &mut [u8], seed: u64) {
    let image =
        rustbk_formats::open_image(img, Format::Vmdk, &OpenOptions::default()).expect("open");
    let mut q = image.open_queue(32).expect("queue");
    let mut x = seed;
    for i in 0..60 {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let len = 512 * (1 + (x >> 33) as usize % 300);
        let off = 512 * ((x >> 13) as usize % ((model.len() - len) / 512));
        let data = pattern(seed * 1000 + i, len);
        write_at(&mut *q, off as u64, &data).expect("write");
        model[off..off + len].copy_from_slice(&data);
    }
    rustbk_formats::suite::run(&mut *q, rustbk_formats::IoOp::Flush).expect("flush");
}

#[test]
fn random_writes_by_rustbk_equal_the_reference_under_qemu_and_libvmdk() {
    let dir = tmp();
    for (i, sub) in SUBFORMATS[..4].iter().enumerate() {
        let img = at(&dir, &format!("{sub}.vmdk"));
        rustbk_ok(&[
            &"create",
            &"-f",
            &"vmdk",
            &"-o",
            &format!("subformat={sub}"),
            &img,
            &"8M",
        ]);
        let mut model = vec![0u8; 8 * MIB];
        random_writes(&img, &mut model, i as u64 + 1);
        let reference = at(&dir, &format!("{sub}.ref"));
        std::fs::write(&reference, &model).expect("reference");
        qemu_ok(&[&"compare", &"-f", &"raw", &"-F", &"vmdk", &reference, &img]);
        qemu_check(&img);
        assert!(
            libvmdk_read(&img, None) == model,
            "{sub}: libvmdk reads what was written"
        );
    }
}

#[test]
fn images_without_grain_tables_get_them_from_rustbk_writes_and_agree_with_qemu_and_libvmdk() {
    use rustbk_formats::vmdk::create::{SparseLayout, Subformat, create_with};
    let dir = tmp();
    let subs = [Subformat::MonolithicSparse, Subformat::TwoGbMaxExtentSparse];
    for (i, (sub, redundant)) in subs
        .iter()
        .flat_map(|&s| [(s, true), (s, false)])
        .enumerate()
    {
        let img = at(&dir, &format!("bare{i}.vmdk"));
        let layout = SparseLayout {
            gtes_per_gt: 32,
            redundant,
            preallocate_tables: false,
            ..SparseLayout::default()
        };
        create_with(&img, 8 * MIB as u64, sub, None, &layout).expect("create");
        let mut model = vec![0u8; 8 * MIB];
        random_writes(&img, &mut model, i as u64 + 11);
        let reference = at(&dir, &format!("bare{i}.ref"));
        std::fs::write(&reference, &model).expect("reference");
        qemu_ok(&[&"compare", &"-f", &"raw", &"-F", &"vmdk", &reference, &img]);
        qemu_check(&img);
        let out = rustbk_ok(&[&"check", &img]);
        assert!(out.contains("No errors"), "{out}");
        assert!(
            libvmdk_read(&img, None) == model,
            "{sub:?} (redundant {redundant}): libvmdk reads what was written"
        );
    }
}

#[test]
fn rustbk_convert_to_every_subformat_passes_qemu_compare_check_and_libvmdk() {
    let dir = tmp();
    let src = at(&dir, "src.raw");
    let data = patterned(&src);
    for sub in SUBFORMATS {
        let img = at(&dir, &format!("{sub}.vmdk"));
        rustbk_ok(&[
            &"convert",
            &"-f",
            &"raw",
            &"-O",
            &"vmdk",
            &"-o",
            &format!("subformat={sub}"),
            &src,
            &img,
        ]);
        qemu_ok(&[&"compare", &"-f", &"raw", &"-F", &"vmdk", &src, &img]);
        qemu_check(&img);
        assert!(
            libvmdk_read(&img, None) == data,
            "{sub}: libvmdk reads the source"
        );
        let back = at(&dir, &format!("{sub}.back"));
        rustbk_ok(&[&"convert", &"-f", &"vmdk", &"-O", &"raw", &img, &back]);
        assert!(
            std::fs::read(&back).expect("back") == data,
            "{sub}: converted back"
        );
    }
}

fn qemu_child(dir: &tempfile::TempDir, parent: &str, name: &str) -> PathBuf {
    let img = at(dir, name);
    qemu_ok(&[
        &"create", &"-q", &"-f", &"vmdk", &"-b", &parent, &"-F", &"vmdk", &img,
    ]);
    img
}

#[test]
fn a_chain_of_depth_three_reads_in_rustbk_and_rustbk_writes_on_top_agree_with_qemu() {
    let dir = tmp();
    let src = at(&dir, "src.raw");
    patterned(&src);
    qemu_ok(&[
        &"convert",
        &"-f",
        &"raw",
        &"-O",
        &"vmdk",
        &src,
        &at(&dir, "base.vmdk"),
    ]);
    let mid = qemu_child(&dir, "base.vmdk", "mid.vmdk");
    qemu_io(
        &mid,
        "vmdk",
        &["write -P 0x44 64k 64k", "write -P 0x45 2M 12k"],
    );
    let top = qemu_child(&dir, "mid.vmdk", "top.vmdk");
    qemu_io(&top, "vmdk", &["write -P 0x46 100k 8k"]);
    let flat = at(&dir, "top.raw");
    qemu_ok(&[&"convert", &"-f", &"vmdk", &"-O", &"raw", &top, &flat]);
    identical(&flat, &top);
    let mut model = std::fs::read(&flat).expect("flat");
    random_writes(&top, &mut model, 9);
    std::fs::write(&flat, &model).expect("model");
    qemu_ok(&[&"compare", &"-f", &"raw", &"-F", &"vmdk", &flat, &top]);
    qemu_check(&top);
    let child = at(&dir, "rustbk-child.vmdk");
    rustbk_ok(&[&"create", &"-f", &"vmdk", &"-b", &"top.vmdk", &child]);
    qemu_ok(&[&"compare", &"-f", &"raw", &"-F", &"vmdk", &flat, &child]);
    let map = rustbk_ok(&[&"map", &"--output=json", &top]);
    let qemu_map = qemu_ok(&[&"map", &"--output=json", &top]);
    let strip = |s: &str| {
        s.replace(" \"compressed\": false,", "")
            .replace(" \"compressed\": true,", "")
    };
    assert_eq!(
        strip(&map),
        strip(&qemu_map),
        "rustbk and qemu-img map the chain alike"
    );
}

#[test]
fn check_passes_sound_images_and_reports_a_table_entry_into_metadata() {
    let dir = tmp();
    let img = at(&dir, "c.vmdk");
    rustbk_ok(&[&"create", &"-f", &"vmdk", &img, &"4M"]);
    qemu_io(&img, "vmdk", &["write -P 0x5 0 128k"]);
    let out = rustbk_ok(&[&"check", &img]);
    assert!(out.contains("No errors"), "{out}");
    let raw = std::fs::read(&img).expect("image");
    let word = |at: usize| u32::from_le_bytes(raw[at..at + 4].try_into().expect("4 bytes"));
    let gd = word(56) as usize * 512;
    let gt = word(gd) as usize * 512;
    let mut damaged = raw.clone();
    damaged[gt + 4..gt + 8].copy_from_slice(&(gd as u32 / 512).to_le_bytes());
    std::fs::write(&img, &damaged).expect("damage");
    let r = rustbk(&[&"check", &img]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("points into metadata"), "{r:?}");
}
