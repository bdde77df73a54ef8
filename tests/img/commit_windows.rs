//! The crash windows of `rustbk img commit`: a VMDK child left with its base's old CID (the
//! state a crash between the base's first write and the child's relink leaves) is refused
//! with both CIDs and the relink command, and that command makes it read as before; a qcow2
//! child emptied by commit is cut down to its metadata.

use std::path::Path;

use crate::commit::{qemu_equal, qemu_flat, qemu_vmdk_child};
use crate::common::{at, qemu_img, qemu_io, qemu_ok, rustbk, rustbk_ok, tmp};

/// The `CID` or `parentCID` (`key`) of a monolithicSparse VMDK, read from its embedded
/// descriptor's text.
fn cid(image: &Path, key: &str) -> String {
    let bytes = std::fs::read(image).expect("read");
    let text = String::from_utf8_lossy(&bytes);
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {}", image.display()));
    line[key.len() + 1..].to_owned()
}

#[test]
fn a_vmdk_child_left_with_the_old_parent_cid_by_an_interrupted_commit_is_relinked_by_rebase_u() {
    let dir = tmp();
    let base = at(&dir, "base.vmdk");
    qemu_ok(&[&"create", &"-q", &"-f", &"vmdk", &base, &"4M"]);
    qemu_io(&base, "vmdk", &["write -P 1 0 4M"]);
    let child = qemu_vmdk_child(&dir, "child.vmdk", "base.vmdk");
    qemu_io(&child, "vmdk", &["write -P 2 1M 64k", "write -P 3 3M 4k"]);
    let reference = at(&dir, "ref.raw");
    qemu_flat(&child, "vmdk", &reference);
    let old_cid = cid(&base, "CID");
    let unlinked = std::fs::read(&child).expect("child");
    rustbk_ok(&[&"commit", &"-f", &"vmdk", &child]);
    let new_cid = cid(&base, "CID");
    assert_ne!(
        old_cid, new_cid,
        "the base took a new CID with its first write"
    );
    // The state a crash leaves after the base is durable and before the child's relink: the
    // child as it was (its data is not changed by commit), naming the old CID.
    std::fs::write(&child, &unlinked).expect("restore the child");
    assert_eq!(cid(&child, "parentCID"), old_cid);
    let r = rustbk(&[
        &"compare", &"-f", &"vmdk", &"-F", &"raw", &child, &reference,
    ]);
    assert_ne!(r.code, 0, "the unlinked child is refused: {r:?}");
    for wanted in [
        old_cid.as_str(),
        new_cid.as_str(),
        "rustbk img rebase -u -b base.vmdk",
    ] {
        assert!(r.stderr.contains(wanted), "{wanted:?} missing: {r:?}");
    }
    let q = qemu_img(&[
        &"compare", &"-f", &"raw", &"-F", &"vmdk", &reference, &child,
    ]);
    assert_ne!(
        q.code, 0,
        "qemu refuses the unlinked child's reads too: {q:?}"
    );
    // The command the message gives, as given.
    let command = r.stderr.split('`').nth(1).expect("a quoted command");
    let words: Vec<&str> = command.split_whitespace().collect();
    assert_eq!(words[..3], ["rustbk", "img", "rebase"], "{command}");
    let args: Vec<&dyn AsRef<std::ffi::OsStr>> = words[2..]
        .iter()
        .map(|w| w as &dyn AsRef<std::ffi::OsStr>)
        .collect();
    rustbk_ok(&args);
    assert_eq!(cid(&child, "parentCID"), new_cid, "relinked");
    assert!(
        qemu_equal(&reference, &child, "vmdk"),
        "qemu reads the child as before"
    );
    let r = rustbk(&[
        &"compare", &"-f", &"vmdk", &"-F", &"raw", &child, &reference,
    ]);
    assert_eq!(r.code, 0, "rustbk reads the child as before: {r:?}");
    assert!(
        qemu_equal(&reference, &base, "vmdk"),
        "the base holds the commit"
    );
}

/// A qcow2 chain base <- top (8 MiB, 64 KiB clusters) made and written by qemu, named with
/// `tag`; returns (base, top, what top reads as raw).
fn qcow2_pair(dir: &tempfile::TempDir, tag: &str) -> [std::path::PathBuf; 3] {
    let base = at(dir, &format!("base{tag}.qcow2"));
    let top = at(dir, &format!("top{tag}.qcow2"));
    crate::common::qemu_qcow2(&base, "8M", &["write -P 1 0 8M"]);
    let name = format!("base{tag}.qcow2");
    crate::common::qemu_overlay(&top, &name, "qcow2", None);
    qemu_io(
        &top,
        "qcow2",
        &["write -P 2 1M 3M", "write -z 5M 64k", "write -P 3 7M 4k"],
    );
    let reference = at(dir, &format!("ref{tag}.raw"));
    qemu_flat(&top, "qcow2", &reference);
    [base, top, reference]
}

/// `qemu-img check` of a qcow2 image: (exit code, leaked clusters); fails on any corruption
/// or check error.
fn qemu_check(image: &Path) -> (i32, u64) {
    let r = qemu_img(&[&"check", &"--output=json", &"-f", &"qcow2", &image]);
    assert!(r.code == 0 || r.code == 3, "qemu-img check: {r:?}");
    let report = crate::common::json(&r.stdout);
    assert_eq!(report["corruptions"].as_u64().unwrap_or(0), 0, "{report}");
    assert_eq!(report["check-errors"].as_u64().unwrap_or(0), 0, "{report}");
    (r.code, report["leaks"].as_u64().unwrap_or(0))
}

#[test]
fn a_qcow2_child_emptied_by_commit_is_cut_to_its_metadata_like_qemu_img_commit_leaves_it() {
    let dir = tmp();
    let [_, by_qemu, _] = qcow2_pair(&dir, "q");
    let [base, top, reference] = qcow2_pair(&dir, "r");
    let before = std::fs::metadata(&top).expect("top").len();
    qemu_ok(&[&"commit", &"-q", &by_qemu]);
    rustbk_ok(&[&"commit", &top]);
    let len = |p: &Path| std::fs::metadata(p).expect("stat").len();
    // Header, refcount table, one refcount block, L1 table: four 64 KiB clusters.
    assert_eq!(
        len(&top),
        4 << 16,
        "cut to its metadata (it was {before} bytes)"
    );
    assert_eq!(len(&top), len(&by_qemu), "the size qemu-img commit leaves");
    assert_eq!(qemu_check(&top), (0, 0), "no leaks");
    assert!(
        qemu_equal(&reference, &top, "qcow2"),
        "the child reads the chain"
    );
    assert!(
        qemu_equal(&reference, &base, "qcow2"),
        "the base is the chain"
    );
}

#[test]
fn every_interrupted_emptying_of_a_qcow2_child_checks_and_reads_as_its_base() {
    let dir = tmp();
    for steps in 0..=5 {
        let tag = format!("{steps}");
        let [base, top, reference] = qcow2_pair(&dir, &tag);
        rustbk_ok(&[&"commit", &"-d", &top]);
        rustbk_formats::qcow2::empty::make_empty_steps(&top, steps).expect("empty");
        let (code, leaks) = qemu_check(&top);
        assert!(
            qemu_equal(&reference, &top, "qcow2"),
            "after {steps} steps the child reads its base"
        );
        assert!(
            qemu_equal(&reference, &base, "qcow2"),
            "base after {steps} steps"
        );
        match steps {
            2 => assert!(
                leaks > 0,
                "the unlinked L2 tables leak until they are freed"
            ),
            _ => assert_eq!((code, leaks), (0, 0), "after {steps} steps"),
        }
        if steps == 5 {
            assert_eq!(std::fs::metadata(&top).expect("stat").len(), 4 << 16);
        }
    }
}
