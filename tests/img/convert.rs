//! `rustbk img convert`: contents equal per `qemu-img compare`, outputs sparse.

use crate::common::{at, json, qemu_ok, qemu_overlay, qemu_qcow2, rustbk_ok, tmp};

#[test]
fn qcow2_with_data_zeros_compressed_clusters_and_backing_converts_to_raw() {
    let dir = tmp();
    let base = at(&dir, "base.qcow2");
    qemu_qcow2(&base, "8M", &["write -P 1 0 1M", "write -P 2 4M 64k"]);
    let top = at(&dir, "top.qcow2");
    qemu_overlay(&top, "base.qcow2", "qcow2", None);
    crate::common::qemu_io(
        &top,
        "qcow2",
        &[
            "write -P 3 64k 64k",
            "write -z 128k 128k",
            "write -c -P 4 2M 64k",
            "write -P 5 7M 4k",
        ],
    );
    let out = at(&dir, "out.raw");
    rustbk_ok(&[&"convert", &"-O", &"raw", &top, &out]);
    qemu_ok(&[&"compare", &top, &out]);
    let back = at(&dir, "back.qcow2");
    rustbk_ok(&[
        &"convert", &"-p", &"-f", &"raw", &"-O", &"qcow2", &out, &back,
    ]);
    qemu_ok(&[&"compare", &top, &back]);
    qemu_ok(&[&"check", &back]);
}

#[test]
fn raw_to_qcow2_of_a_half_empty_image_allocates_only_the_data() {
    let dir = tmp();
    let raw = at(&dir, "half.raw");
    qemu_ok(&[&"create", &"-q", &"-f", &"raw", &raw, &"64M"]);
    crate::common::qemu_io(
        &raw,
        "raw",
        &["write -P 9 0 8M", "write -P 8 32M 8M", "write -z 48M 1M"],
    );
    // Page cache on both sides (the default), then O_DIRECT on both sides.
    for caches in [
        ["-t", "unsafe", "-T", "writeback"],
        ["-t", "none", "-T", "none"],
    ] {
        let out = at(&dir, "half.qcow2");
        let [t, tv, s, sv] = &caches;
        rustbk_ok(&[
            &"convert",
            t,
            tv,
            s,
            sv,
            &"-O",
            &"qcow2",
            &"-o",
            &"cluster_size=64k",
            &raw,
            &out,
        ]);
        qemu_ok(&[&"compare", &"-f", &"raw", &"-F", &"qcow2", &raw, &out]);
        let check = json(&qemu_ok(&[&"check", &"--output=json", &out]));
        assert_eq!(
            check["allocated-clusters"], 256,
            "16 MiB of data in 64 KiB clusters ({caches:?}): {check}"
        );
        let size = std::fs::metadata(&out).expect("stat").len();
        assert!(
            size < 17 << 20,
            "qcow2 output of {size} bytes is not sparse ({caches:?})"
        );
    }
}

#[test]
fn qcow2_to_raw_output_is_sparse() {
    let dir = tmp();
    let src = at(&dir, "s.qcow2");
    qemu_qcow2(&src, "256M", &["write -P 7 0 4M", "write -P 0 8M 4M"]);
    let out = at(&dir, "s.raw");
    rustbk_ok(&[&"convert", &"-t", &"writeback", &"-O", &"raw", &src, &out]);
    qemu_ok(&[&"compare", &src, &out]);
    let used =
        std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&out).expect("stat")) * 512;
    assert!(
        used <= 5 << 20,
        "raw output uses {used} bytes for 4 MiB of data"
    );
}
