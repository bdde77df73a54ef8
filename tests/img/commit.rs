//! `rustbk img commit`: after a commit the base reads exactly what the chain read before it
//! (checked by qemu-img, which reads qcow2, dynamic VHD and VMDK bases on its own), the base
//! passes its checker, and chains that cannot be committed are refused with exit status 1.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustbk_formats::suite::{pattern, run, write_at};
use rustbk_formats::{Format, IoOp, OpenOptions};

use crate::common::{
    at, qemu_img, qemu_io, qemu_ok, qemu_overlay, rustbk, rustbk_ok, tmp, vhd_child,
};

/// The guest-visible bytes of `image` (format `format`) as a raw file at `to`, by qemu-img.
pub(crate) fn qemu_flat(image: &Path, format: &str, to: &Path) {
    qemu_ok(&[&"convert", &"-f", &format, &"-O", &"raw", &image, &to]);
}

/// Whether qemu-img finds `raw` and `image` (format `format`) equal.
pub(crate) fn qemu_equal(raw: &Path, image: &Path, format: &str) -> bool {
    let r = qemu_img(&[&"compare", &"-f", &"raw", &"-F", &format, &raw, &image]);
    assert!(r.code == 0 || r.code == 1, "qemu-img compare: {r:?}");
    r.code == 0
}

fn commit_ok(args: &[&dyn AsRef<std::ffi::OsStr>]) -> String {
    let mut all: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"commit"];
    all.extend_from_slice(args);
    let out = rustbk_ok(&all);
    assert!(out.contains("Image committed."), "{out}");
    out
}

#[test]
fn commit_of_a_qcow2_child_makes_the_base_equal_to_the_chain_and_zero_writes_hide_base_data() {
    let dir = tmp();
    let base = at(&dir, "base.qcow2");
    crate::common::qemu_qcow2(
        &base,
        "8M",
        &["write -P 1 0 4M", "write -P 5 6M 1M", "write -P 6 7M 4k"],
    );
    let top = at(&dir, "top.qcow2");
    qemu_overlay(&top, "base.qcow2", "qcow2", None);
    qemu_io(
        &top,
        "qcow2",
        &[
            "write -P 2 1M 1M",
            "write -z 2M 512k",
            "write -P 3 3900k 200k",
            "write -z 6M 64k",
            "write -P 4 7M 512",
        ],
    );
    let reference = at(&dir, "ref.raw");
    qemu_flat(&top, "qcow2", &reference);
    assert!(
        !qemu_equal(&reference, &base, "qcow2"),
        "the child changes the disk"
    );
    assert!(own_ranges(&top) > 0, "the child holds data before");
    let used = |p: &Path| std::fs::metadata(p).expect("stat").blocks() * 512;
    let before = used(&top);
    commit_ok(&[&"-p", &top]);
    assert!(
        used(&top) + (1 << 20) <= before,
        "the freed clusters go back to the file system: {before} then {} bytes",
        used(&top)
    );
    assert!(
        qemu_equal(&reference, &base, "qcow2"),
        "the base is the chain"
    );
    assert!(
        qemu_equal(&reference, &top, "qcow2"),
        "the child reads as before"
    );
    assert_eq!(own_ranges(&top), 0, "the child is emptied");
    qemu_ok(&[&"check", &"-f", &"qcow2", &base]);
    qemu_ok(&[&"check", &"-f", &"qcow2", &top]);
}

/// How many ranges of `image`'s map (by qemu-img) the image answers itself (depth 0).
fn own_ranges(image: &Path) -> usize {
    let map = crate::common::json(&qemu_ok(&[&"map", &"--output=json", &image]));
    let entries = map.as_array().expect("map array");
    entries.iter().filter(|e| e["depth"] == 0).count()
}

#[test]
fn commit_with_d_keeps_the_qcow2_child_data() {
    let dir = tmp();
    let base = at(&dir, "base.qcow2");
    crate::common::qemu_qcow2(&base, "2M", &["write -P 1 0 2M"]);
    let top = at(&dir, "top.qcow2");
    qemu_overlay(&top, "base.qcow2", "qcow2", None);
    qemu_io(&top, "qcow2", &["write -P 2 64k 64k", "write -z 1M 64k"]);
    let reference = at(&dir, "ref.raw");
    qemu_flat(&top, "qcow2", &reference);
    let before = own_ranges(&top);
    commit_ok(&[&"-d", &top]);
    assert!(
        qemu_equal(&reference, &base, "qcow2"),
        "the base is the chain"
    );
    assert_eq!(own_ranges(&top), before, "-d keeps the child's clusters");
    qemu_ok(&[&"check", &"-f", &"qcow2", &top]);
}

#[test]
fn commit_with_b_copies_every_level_above_the_base_in_a_chain_of_depth_three() {
    let dir = tmp();
    let base = at(&dir, "base.qcow2");
    crate::common::qemu_qcow2(&base, "8M", &["write -P 1 0 8M"]);
    let mid = at(&dir, "mid.qcow2");
    qemu_overlay(&mid, "base.qcow2", "qcow2", None);
    qemu_io(
        &mid,
        "qcow2",
        &["write -P 2 1M 2M", "write -z 5M 1M", "write -P 7 7M 64k"],
    );
    let top = at(&dir, "top.qcow2");
    qemu_overlay(&top, "mid.qcow2", "qcow2", None);
    qemu_io(
        &top,
        "qcow2",
        &["write -P 3 2M 64k", "write -z 1M 128k", "write -P 4 5M 4k"],
    );
    let reference = at(&dir, "ref.raw");
    qemu_flat(&top, "qcow2", &reference);
    assert!(
        !qemu_equal(&reference, &base, "qcow2"),
        "the overlays change the disk"
    );
    let kept = own_ranges(&top);
    commit_ok(&[&"-b", &base, &top]);
    assert_eq!(own_ranges(&top), kept, "-b implies -d");
    assert!(
        qemu_equal(&reference, &base, "qcow2"),
        "the base is the chain"
    );
    assert!(
        qemu_equal(&reference, &top, "qcow2"),
        "the top reads as before"
    );
    qemu_ok(&[&"check", &"-f", &"qcow2", &base]);
}

#[test]
fn commit_grows_a_smaller_raw_base_to_the_child_size() {
    let dir = tmp();
    let base = at(&dir, "base.raw");
    qemu_ok(&[&"create", &"-q", &"-f", &"raw", &base, &"4M"]);
    qemu_io(&base, "raw", &["write -P 1 0 4M"]);
    let top = at(&dir, "top.qcow2");
    qemu_overlay(&top, "base.raw", "raw", Some("6M"));
    qemu_io(&top, "qcow2", &["write -P 2 3M 2M", "write -z 1M 64k"]);
    let reference = at(&dir, "ref.raw");
    qemu_flat(&top, "qcow2", &reference);
    let out = rustbk_ok(&[&"commit", &"-q", &top]);
    assert_eq!(out, "", "-q prints nothing");
    assert_eq!(std::fs::metadata(&base).expect("base").len(), 6 << 20);
    assert!(
        qemu_equal(&reference, &base, "raw"),
        "the base is the chain"
    );
}

/// Writes patterns (`(offset, len, seed)`) and zeros (`(offset, len)`, as data: VHD takes no
/// write-zeroes) through rustbk's own write path into an image (its parent in its folder).
/// A VMDK child `name` that qemu-img makes in `dir` over `base` (a name in `dir`).
pub(crate) fn qemu_vmdk_child(dir: &tempfile::TempDir, name: &str, base: &str) -> PathBuf {
    let child = at(dir, name);
    qemu_ok(&[
        &"create", &"-q", &"-f", &"vmdk", &"-b", &base, &"-F", &"vmdk", &child,
    ]);
    child
}

pub(crate) fn rustbk_writes(
    image: &Path,
    format: Format,
    writes: &[(u64, usize, u64)],
    zeros: &[(u64, usize)],
) {
    let opened = rustbk_formats::open_image(image, format, &OpenOptions::default()).expect("open");
    let mut q = opened.open_queue(8).expect("queue");
    for &(offset, len, seed) in writes {
        write_at(&mut *q, offset, &pattern(seed, len)).expect("write");
    }
    for &(offset, len) in zeros {
        write_at(&mut *q, offset, &vec![0u8; len]).expect("write zeros");
    }
    run(&mut *q, IoOp::Flush).expect("flush");
    drop(q);
    opened.sync_metadata().expect("sync");
}

/// Reads the VHD chain `paths` (top first) through libyal's libvhdi, 4 KiB at a time (its
/// Debian version misreads sector bitmaps below 4 KiB units and reads spanning blocks).
pub(crate) fn libvhdi_read(paths: &[&Path]) -> Vec<u8> {
    let script = "import sys, pyvhdi\n\
        fs = []\n\
        for p in sys.argv[1:]:\n    f = pyvhdi.file(); f.open(p); fs.append(f)\n\
        for i in range(len(fs) - 2, -1, -1): fs[i].set_parent(fs[i + 1])\n\
        n = fs[0].get_media_size()\n\
        sys.stdout.buffer.write(b''.join(fs[0].read_buffer_at_offset(4096, o) for o in range(0, n, 4096)))\n";
    let out = std::process::Command::new("/usr/bin/python3")
        .args(["-c", script])
        .args(paths)
        .output()
        .expect("python3 with pyvhdi (python3-libvhdi) is required");
    assert!(
        out.status.success(),
        "pyvhdi: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Applies pattern writes and zero writes to a model of the disk.
fn apply(model: &mut [u8], writes: &[(u64, usize, u64)], zeros: &[(u64, usize)]) {
    for &(offset, len, seed) in writes {
        let at = usize::try_from(offset).expect("offset");
        model[at..at + len].copy_from_slice(&pattern(seed, len));
    }
    for &(offset, len) in zeros {
        let at = usize::try_from(offset).expect("offset");
        model[at..at + len].fill(0);
    }
}

#[test]
fn commit_of_a_differencing_vhd_makes_its_dynamic_parent_equal_to_the_chain() {
    let dir = tmp();
    let base = at(&dir, "base.vhd");
    rustbk_ok(&[&"create", &"-f", &"vpc", &base, &"8M"]);
    let mut model = vec![0u8; 8 << 20];
    let base_writes = [(0, 3 << 20, 1), (6 << 20, 4096, 2)];
    rustbk_writes(&base, Format::Vpc, &base_writes, &[]);
    apply(&mut model, &base_writes, &[]);
    let child = at(&dir, "child.vhd");
    vhd_child(&base, &child);
    // 4 KiB units: what libvhdi reads right.
    let writes = [
        (1 << 20, 1 << 20, 3),
        (3_141_632, 8192, 4),
        (5 << 20, 4096, 5),
    ];
    let zeros = [(512 << 10, 64 << 10), (6 << 20, 4096)];
    rustbk_writes(&child, Format::Vpc, &writes, &zeros);
    apply(&mut model, &writes, &zeros);
    assert!(
        libvhdi_read(&[&child, &base]) == model,
        "libvhdi reads the chain as written"
    );
    let reference = at(&dir, "ref.raw");
    std::fs::write(&reference, &model).expect("reference");
    assert!(
        !qemu_equal(&reference, &base, "vpc"),
        "the child changes the disk"
    );
    let out = commit_ok(&[&child]);
    assert!(out.contains("vhd-util coalesce"), "{out}");
    assert!(
        qemu_equal(&reference, &base, "vpc"),
        "qemu reads the chain in the parent"
    );
    assert!(
        libvhdi_read(&[&base]) == model,
        "libvhdi reads the chain in the parent"
    );
    assert!(
        libvhdi_read(&[&child, &base]) == model,
        "the child reads as before"
    );
    let r = rustbk(&[&"compare", &"-f", &"vpc", &"-F", &"raw", &child, &reference]);
    assert_eq!(r.code, 0, "the child reads as before in rustbk: {r:?}");
    rustbk_ok(&[&"check", &"-f", &"vpc", &base]);
}

#[test]
fn commit_of_a_vmdk_child_makes_its_monolithic_sparse_parent_equal_to_the_chain() {
    let dir = tmp();
    let base = at(&dir, "base.vmdk");
    rustbk_ok(&[
        &"create",
        &"-f",
        &"vmdk",
        &"-o",
        &"subformat=monolithicSparse",
        &base,
        &"8M",
    ]);
    rustbk_writes(
        &base,
        Format::Vmdk,
        &[(0, 4 << 20, 1), (7 << 20, 65536, 2)],
        &[],
    );
    let child = qemu_vmdk_child(&dir, "child.vmdk", "base.vmdk");
    qemu_io(
        &child,
        "vmdk",
        &["write -P 3 1M 1M", "write -z 3M 128k", "write -P 4 7M 4k"],
    );
    let reference = at(&dir, "ref.raw");
    qemu_flat(&child, "vmdk", &reference);
    assert!(
        !qemu_equal(&reference, &base, "vmdk"),
        "the child changes the disk"
    );
    commit_ok(&[&"-f", &"vmdk", &child]);
    assert!(
        qemu_equal(&reference, &base, "vmdk"),
        "qemu reads the chain in the parent"
    );
    assert!(
        qemu_equal(&reference, &child, "vmdk"),
        "the child reads as before"
    );
    let r = rustbk(&[
        &"compare", &"-f", &"vmdk", &"-F", &"raw", &child, &reference,
    ]);
    assert_eq!(
        r.code, 0,
        "the child, given the base's new CID, reads in rustbk: {r:?}"
    );
    qemu_ok(&[&"check", &"-f", &"vmdk", &base]);
}

#[test]
fn commit_of_an_image_without_backing_file_exits_1_with_a_clear_message() {
    let dir = tmp();
    let lone = at(&dir, "lone.qcow2");
    crate::common::qemu_qcow2(&lone, "1M", &["write -P 1 0 4k"]);
    let r = rustbk(&[&"commit", &lone]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("has no backing file"), "{r:?}");
}

#[test]
fn commit_into_a_base_outside_the_chain_is_refused_and_changes_nothing() {
    let dir = tmp();
    let base = at(&dir, "base.qcow2");
    crate::common::qemu_qcow2(&base, "1M", &["write -P 1 0 64k"]);
    let other = at(&dir, "other.qcow2");
    crate::common::qemu_qcow2(&other, "1M", &[]);
    let top = at(&dir, "top.qcow2");
    qemu_overlay(&top, "base.qcow2", "qcow2", None);
    qemu_io(&top, "qcow2", &["write -P 2 0 64k"]);
    let empty = at(&dir, "empty.raw");
    qemu_flat(&other, "qcow2", &empty);
    for (name, wanted) in [
        (&other, "is not in the backing chain"),
        (&top, "into itself"),
    ] {
        let r = rustbk(&[&"commit", &"-b", name, &top]);
        assert_eq!(r.code, 1, "{r:?}");
        assert!(r.stderr.contains(wanted), "{r:?}");
    }
    assert!(
        qemu_equal(&empty, &other, "qcow2"),
        "the other image is untouched"
    );
    let mut base_data = vec![0u8; 1 << 20];
    base_data[..65536].fill(1);
    let flat_base = at(&dir, "base.raw");
    std::fs::write(&flat_base, &base_data).expect("base data");
    assert!(
        qemu_equal(&flat_base, &base, "qcow2"),
        "the base is untouched"
    );
}
