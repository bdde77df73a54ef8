//! Checks of images made by qemu-img (internal snapshots, every refcount width, compressed
//! clusters) and of the reference counting itself.

use std::path::Path;

use super::refs::Refs;
use super::{CheckReport, Repair, check};
use crate::qcow2::tests::{qemu_img, qemu_io};

fn image(dir: &tempfile::TempDir, opts: &str, cmds: &[&str]) -> std::path::PathBuf {
    let path = dir.path().join("t.qcow2");
    let p = path.to_str().expect("utf-8");
    qemu_img(&["create", "-q", "-f", "qcow2", "-o", opts, p, "32M"]);
    qemu_io(&path, "qcow2", cmds);
    path
}

fn assert_clean(path: &Path) -> CheckReport {
    let r = check(path, Repair::None).expect("check");
    assert!(r.is_clean(), "{r:?}");
    r
}

#[test]
fn every_refcount_width_and_cluster_size_made_by_qemu_checks_clean() {
    for opts in [
        "refcount_bits=1,cluster_size=512",
        "refcount_bits=4",
        "refcount_bits=64,cluster_size=4k",
        "compat=0.10",
        "cluster_size=2M",
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = image(&dir, opts, &["write -P 1 0 300k", "write -P 2 5M 4k"]);
        let r = assert_clean(&path);
        assert!(
            r.allocated_clusters > 0 && r.image_end_offset > 0,
            "{opts}: {r:?}"
        );
    }
}

#[test]
fn internal_snapshots_share_clusters_without_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = image(&dir, "cluster_size=64k", &["write -P 1 0 256k"]);
    let p = path.to_str().expect("utf-8");
    qemu_img(&["snapshot", "-c", "one", p]);
    qemu_io(&path, "qcow2", &["write -P 2 64k 64k"]);
    qemu_img(&["snapshot", "-c", "two", p]);
    let r = assert_clean(&path);
    // Four guest clusters in the active table (cluster 1 was copied on write).
    assert_eq!(r.allocated_clusters, 4, "{r:?}");
}

#[test]
fn compressed_clusters_are_counted_as_allocated_compressed_and_fragmented() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = image(
        &dir,
        "cluster_size=64k",
        &["write -c -P 3 0 64k", "write -c -P 4 64k 64k"],
    );
    let r = assert_clean(&path);
    assert_eq!(
        (
            r.allocated_clusters,
            r.compressed_clusters,
            r.fragmented_clusters
        ),
        (2, 2, 2)
    );
}

#[test]
fn a_repair_of_a_sound_image_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = image(&dir, "cluster_size=64k", &["write -P 1 0 64k"]);
    let before = std::fs::read(&path).expect("read");
    let r = check(&path, Repair::All).expect("check");
    assert!(r.is_clean() && !r.marked_clean, "{r:?}");
    assert_eq!(std::fs::read(&path).expect("read"), before);
}

#[test]
fn references_past_the_end_of_the_file_are_corruptions_not_counts() {
    let mut refs = Refs::new(3 * 65536 + 100, 16).expect("refs");
    let mut report = CheckReport::default();
    refs.inc(&mut report, 3 * 65536, 65536);
    assert_eq!(
        (refs.get(3), report.corruptions),
        (1, 0),
        "the partial last cluster counts"
    );
    refs.inc(&mut report, 5 * 65536, 65536);
    refs.inc(&mut report, u64::MAX - 10, 100);
    assert_eq!(report.corruptions, 2);
    assert_eq!(refs.len(), 4);
}

#[test]
fn absurd_file_sizes_are_refused_before_allocating() {
    let e = Refs::new(u64::MAX, 9).err().expect("refused");
    assert!(e.to_string().contains("clusters"), "{e}");
}
