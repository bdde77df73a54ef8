//! `rustbk img rebase`: `-u` onto a copy of the parent reads the same (with the original
//! parent gone), a safe rebase of C onto A in a chain A <- B <- C keeps C's content (checked
//! against a raw copy taken before, with B gone), and refused rebases leave the image's bytes
//! as they were. qemu-img reads the qcow2 and VMDK results, libvhdi the VHD ones.

use std::path::{Path, PathBuf};

use rustbk_formats::Format;
use rustbk_formats::suite::pattern;

use crate::commit::{libvhdi_read, qemu_equal, qemu_flat, rustbk_writes};
use crate::common::{at, qemu_io, qemu_ok, qemu_overlay, rustbk, rustbk_ok, tmp, vhd_child};

/// Whether rustbk finds `image` (format `format`) equal to the raw file `raw`.
fn rustbk_equal(raw: &Path, image: &Path, format: &str) -> bool {
    let r = rustbk(&[&"compare", &"-f", &format, &"-F", &"raw", &image, &raw]);
    assert!(r.code == 0 || r.code == 1, "rustbk img compare: {r:?}");
    r.code == 0
}

fn rebase_ok(args: &[&dyn AsRef<std::ffi::OsStr>]) {
    let mut all: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"rebase"];
    all.extend_from_slice(args);
    let out = rustbk_ok(&all);
    assert_eq!(out, "", "rebase prints nothing on stdout");
}

/// A qcow2 chain a <- b <- c made and written by qemu; returns the three paths.
fn qcow2_chain(dir: &tempfile::TempDir) -> [PathBuf; 3] {
    let [a, b, c] = ["a.qcow2", "b.qcow2", "c.qcow2"].map(|n| at(dir, n));
    crate::common::qemu_qcow2(&a, "4M", &["write -P 1 0 4M"]);
    qemu_overlay(&b, "a.qcow2", "qcow2", None);
    qemu_io(&b, "qcow2", &["write -P 2 1M 1M", "write -z 3M 64k"]);
    qemu_overlay(&c, "b.qcow2", "qcow2", None);
    qemu_io(
        &c,
        "qcow2",
        &["write -P 3 1536k 64k", "write -P 4 3968k 4k"],
    );
    [a, b, c]
}

/// A VMDK chain a <- b <- c (monolithicSparse) made and written by qemu.
fn vmdk_chain(dir: &tempfile::TempDir) -> [PathBuf; 3] {
    let [a, b, c] = ["a.vmdk", "b.vmdk", "c.vmdk"].map(|n| at(dir, n));
    qemu_ok(&[&"create", &"-q", &"-f", &"vmdk", &a, &"4M"]);
    qemu_io(&a, "vmdk", &["write -P 1 0 4M"]);
    // Each child is made after its parent's last write: a write changes the parent's CID.
    let writes: [&[&str]; 2] = [
        &["write -P 2 1M 1M", "write -z 3M 64k"],
        &["write -P 3 1536k 64k", "write -P 4 3968k 4k"],
    ];
    for ((child, parent), cmds) in [(&b, "a.vmdk"), (&c, "b.vmdk")].into_iter().zip(writes) {
        qemu_ok(&[
            &"create", &"-q", &"-f", &"vmdk", &"-b", &parent, &"-F", &"vmdk", child,
        ]);
        qemu_io(child, "vmdk", cmds);
    }
    [a, b, c]
}

/// A pattern write: offset, length, seed.
type Write = (u64, usize, u64);

/// A VHD chain a <- b <- c made and written by rustbk (qemu writes no differencing disks),
/// and the bytes c reads.
fn vhd_chain(dir: &tempfile::TempDir) -> ([PathBuf; 3], Vec<u8>) {
    let [a, b, c] = ["a.vhd", "b.vhd", "c.vhd"].map(|n| at(dir, n));
    rustbk_ok(&[&"create", &"-f", &"vpc", &a, &"4M"]);
    vhd_child(&a, &b);
    vhd_child(&b, &c);
    // 4 KiB units: what libvhdi reads right.
    let levels: [(&Path, &[Write]); 3] = [
        (&a, &[(0, 4 << 20, 1)]),
        (&b, &[(1 << 20, 1 << 20, 2), (3 << 20, 65536, 0)]),
        (&c, &[(1536 << 10, 65536, 3), (3968 << 10, 4096, 4)]),
    ];
    let mut model = vec![0u8; 4 << 20];
    for (image, writes) in levels {
        rustbk_writes(image, Format::Vpc, writes, &[]);
        for &(offset, len, seed) in writes {
            let at = usize::try_from(offset).expect("offset");
            model[at..at + len].copy_from_slice(&pattern(seed, len));
        }
    }
    ([a, b, c], model)
}

#[test]
fn rebase_u_of_a_qcow2_child_onto_a_copy_of_its_parent_reads_the_same_without_the_original() {
    let dir = tmp();
    let [a, b, c] = qcow2_chain(&dir);
    let reference = at(&dir, "ref.raw");
    qemu_flat(&b, "qcow2", &reference);
    let copy = at(&dir, "copy of a.qcow2");
    std::fs::copy(&a, &copy).expect("copy");
    std::fs::remove_file(&c).expect("c is not needed");
    rebase_ok(&[&"-u", &"-b", &"copy of a.qcow2", &"-F", &"qcow2", &b]);
    std::fs::remove_file(&a).expect("remove the original parent");
    let info = crate::common::json(&qemu_ok(&[&"info", &"--output=json", &b]));
    assert_eq!(info["backing-filename"], "copy of a.qcow2", "{info}");
    assert_eq!(info["backing-filename-format"], "qcow2", "{info}");
    assert!(qemu_equal(&reference, &b, "qcow2"), "qemu reads the same");
    assert!(
        rustbk_equal(&reference, &b, "qcow2"),
        "rustbk reads the same"
    );
    qemu_ok(&[&"check", &"-f", &"qcow2", &b]);
}

#[test]
fn rebase_u_of_a_vmdk_child_onto_a_converted_copy_takes_its_cid_and_reads_the_same() {
    let dir = tmp();
    let [a, b, c] = vmdk_chain(&dir);
    let reference = at(&dir, "ref.raw");
    qemu_flat(&b, "vmdk", &reference);
    std::fs::remove_file(&c).expect("c is not needed");
    let copy = at(&dir, "copy.vmdk");
    rustbk_ok(&[&"convert", &"-f", &"vmdk", &"-O", &"vmdk", &a, &copy]);
    rebase_ok(&[&"-u", &"-b", &"copy.vmdk", &b]);
    std::fs::remove_file(&a).expect("remove the original parent");
    assert!(qemu_equal(&reference, &b, "vmdk"), "qemu reads the same");
    assert!(
        rustbk_equal(&reference, &b, "vmdk"),
        "rustbk reads the same"
    );
    let info = crate::common::json(&qemu_ok(&[&"info", &"--output=json", &b]));
    assert_eq!(info["backing-filename"], "copy.vmdk", "{info}");
}

#[test]
fn rebase_u_of_a_differencing_vhd_onto_a_converted_copy_takes_its_id_and_reads_the_same() {
    let dir = tmp();
    let ([a, b, c], _) = vhd_chain(&dir);
    std::fs::remove_file(&c).expect("c is not needed");
    let reference = at(&dir, "ref.raw");
    rustbk_ok(&[&"convert", &"-f", &"vpc", &"-O", &"raw", &b, &reference]);
    let expected = std::fs::read(&reference).expect("reference");
    let copy = at(&dir, "copy.vhd");
    rustbk_ok(&[&"convert", &"-f", &"vpc", &"-O", &"vpc", &a, &copy]);
    rebase_ok(&[&"-u", &"-b", &"copy.vhd", &"-F", &"vpc", &b]);
    std::fs::remove_file(&a).expect("remove the original parent");
    assert!(rustbk_equal(&reference, &b, "vpc"), "rustbk reads the same");
    assert!(
        libvhdi_read(&[&b, &copy]) == expected,
        "libvhdi reads the same"
    );
    let info = crate::common::json(&rustbk_ok(&[&"info", &"--output=json", &b]));
    let backing = info["full-backing-filename"].as_str().unwrap_or_default();
    assert!(backing.ends_with("copy.vhd"), "{info}");
    rustbk_ok(&[&"check", &"-f", &"vpc", &b]);
}

/// Rebases c of `chain` onto a (safe mode) and checks it reads `reference` with b gone.
fn rebase_c_onto_a(chain: &[PathBuf; 3], format: &str, reference: &Path) {
    let [a, b, c] = chain;
    let name = a.file_name().expect("name");
    rebase_ok(&[&"-p", &"-f", &format, &"-b", &name, &"-F", &format, c]);
    std::fs::remove_file(b).expect("b is not needed any more");
    assert!(
        rustbk_equal(reference, c, format),
        "rustbk reads C as before"
    );
}

#[test]
fn safe_rebase_of_c_onto_a_keeps_the_content_of_a_qcow2_c() {
    let dir = tmp();
    let chain = qcow2_chain(&dir);
    let reference = at(&dir, "ref.raw");
    qemu_flat(&chain[2], "qcow2", &reference);
    rebase_c_onto_a(&chain, "qcow2", &reference);
    assert!(
        qemu_equal(&reference, &chain[2], "qcow2"),
        "qemu reads C as before"
    );
    qemu_ok(&[&"check", &"-f", &"qcow2", &chain[2]]);
}

#[test]
fn safe_rebase_of_c_onto_a_keeps_the_content_of_a_vmdk_c() {
    let dir = tmp();
    let chain = vmdk_chain(&dir);
    let reference = at(&dir, "ref.raw");
    qemu_flat(&chain[2], "vmdk", &reference);
    rebase_c_onto_a(&chain, "vmdk", &reference);
    assert!(
        qemu_equal(&reference, &chain[2], "vmdk"),
        "qemu reads C as before"
    );
    qemu_ok(&[&"check", &"-f", &"vmdk", &chain[2]]);
}

#[test]
fn safe_rebase_of_c_onto_a_keeps_the_content_of_a_vhd_c() {
    let dir = tmp();
    let (chain, model) = vhd_chain(&dir);
    let reference = at(&dir, "ref.raw");
    std::fs::write(&reference, &model).expect("reference");
    assert!(
        rustbk_equal(&reference, &chain[2], "vpc"),
        "the chain reads the model"
    );
    rebase_c_onto_a(&chain, "vpc", &reference);
    assert!(
        libvhdi_read(&[&chain[2], &chain[0]]) == model,
        "libvhdi reads C over A as before"
    );
    rustbk_ok(&[&"check", &"-f", &"vpc", &chain[2]]);
}

#[test]
fn rebase_onto_nothing_makes_qcow2_and_vmdk_images_standalone_with_their_content() {
    let dir = tmp();
    for (format, chain) in [("qcow2", qcow2_chain(&dir)), ("vmdk", vmdk_chain(&dir))] {
        let reference = at(&dir, &format!("{format}.raw"));
        qemu_flat(&chain[2], format, &reference);
        rebase_ok(&[&"-b", &"", &chain[2]]);
        std::fs::remove_file(&chain[0]).expect("remove a");
        std::fs::remove_file(&chain[1]).expect("remove b");
        let info = crate::common::json(&qemu_ok(&[&"info", &"--output=json", &chain[2]]));
        assert!(info.get("backing-filename").is_none(), "{format}: {info}");
        assert!(
            qemu_equal(&reference, &chain[2], format),
            "{format}: qemu reads the same"
        );
        assert!(
            rustbk_equal(&reference, &chain[2], format),
            "{format}: rustbk reads the same"
        );
    }
}

#[test]
fn refused_rebases_exit_1_with_clear_messages_and_leave_the_image_untouched() {
    let dir = tmp();
    let qcow2 = qcow2_chain(&dir);
    let vmdk = vmdk_chain(&dir);
    let (vhd, _) = vhd_chain(&dir);
    let refused: [(&Path, &[&str], &str); 9] = [
        (
            &qcow2[2],
            &["-b", "nbd:localhost:10809", "-F", "raw"],
            "protocol 'nbd' is not supported",
        ),
        (
            &vmdk[2],
            &["-u", "-b", "json:{}"],
            "protocol 'json' is not supported",
        ),
        (
            &vhd[2],
            &["-b", "nbd:localhost:10809"],
            "protocol 'nbd' is not supported",
        ),
        (
            &vhd[2],
            &["-b", ""],
            "a differencing VHD cannot lose its parent",
        ),
        (
            &vhd[2],
            &["-u", "-b", ""],
            "a differencing VHD cannot lose its parent",
        ),
        (
            &qcow2[2],
            &["-b", "missing.qcow2"],
            "Could not open new backing file",
        ),
        (
            &vmdk[2],
            &["-u", "-b", "missing.vmdk"],
            "Could not open new backing file",
        ),
        (
            &vhd[2],
            &["-u", "-b", "missing.vhd"],
            "Could not open new backing file",
        ),
        (
            &qcow2[2],
            &["-b", "c.qcow2"],
            "the backing chain would loop",
        ),
    ];
    for (image, args, wanted) in refused {
        let before = std::fs::read(image).expect("read");
        let mut all: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"rebase"];
        all.extend(args.iter().map(|a| a as &dyn AsRef<std::ffi::OsStr>));
        all.push(&image);
        let r = rustbk(&all);
        assert_eq!(r.code, 1, "{args:?}: {r:?}");
        assert!(r.stderr.contains(wanted), "{args:?}: {r:?}");
        assert!(
            std::fs::read(image).expect("read") == before,
            "{args:?}: image changed"
        );
    }
}

#[test]
fn a_qcow2_backing_name_that_does_not_fit_the_header_cluster_is_refused() {
    let dir = tmp();
    let base = at(&dir, "base.raw");
    std::fs::write(&base, vec![7u8; 1 << 20]).expect("base");
    let top = at(&dir, "top.qcow2");
    let o = "cluster_size=512";
    qemu_ok(&[
        &"create",
        &"-q",
        &"-f",
        &"qcow2",
        &"-o",
        &o,
        &"-b",
        &"base.raw",
        &"-F",
        &"raw",
        &top,
    ]);
    let before = std::fs::read(&top).expect("read");
    let long = "x".repeat(400);
    let r = rustbk(&[&"rebase", &"-u", &"-b", &long, &"-F", &"raw", &top]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("does not fit"), "{r:?}");
    assert!(
        std::fs::read(&top).expect("read") == before,
        "image changed"
    );
}

#[test]
fn a_vhd_parent_whose_absolute_name_does_not_fit_the_locator_space_is_refused() {
    let dir = tmp();
    let ([a, b, _], _) = vhd_chain(&dir);
    let far = dir.path().join("d".repeat(200));
    std::fs::create_dir(&far).expect("folder");
    let copy = far.join(format!("{}.vhd", "p".repeat(100)));
    std::fs::copy(&a, &copy).expect("copy");
    let before = std::fs::read(&b).expect("read");
    let r = rustbk(&[&"rebase", &"-u", &"-b", &copy, &"-F", &"vpc", &b]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("parent locator, which has room for 512"),
        "{r:?}"
    );
    assert!(std::fs::read(&b).expect("read") == before, "image changed");
}

#[test]
fn safe_rebase_keeps_the_zeros_a_shorter_old_backing_file_gave_past_its_end() {
    let dir = tmp();
    let [a, b, c] = ["a.qcow2", "b.qcow2", "c.qcow2"].map(|n| at(&dir, n));
    crate::common::qemu_qcow2(&a, "4M", &["write -P 1 0 4M"]);
    qemu_overlay(&b, "a.qcow2", "qcow2", Some("2M"));
    qemu_io(&b, "qcow2", &["write -P 2 1M 64k"]);
    qemu_overlay(&c, "b.qcow2", "qcow2", Some("4M"));
    let reference = at(&dir, "ref.raw");
    qemu_flat(&c, "qcow2", &reference);
    rebase_c_onto_a(&[a, b, c.clone()], "qcow2", &reference);
    assert!(
        qemu_equal(&reference, &c, "qcow2"),
        "qemu reads C as before"
    );
}
