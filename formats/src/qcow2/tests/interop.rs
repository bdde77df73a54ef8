//! Images made by `qemu-img` and `qemu-io`, read through our driver and compared byte for byte
//! with `qemu-img convert -O raw`.

use super::{assert_opened_reads_like_qemu, assert_reads_like_qemu, qemu_img, qemu_io, s, temp};

/// Data, zero and partially written clusters, spread so that several L2 tables are used.
const QEMU_IO_WRITES: [&str; 6] = [
    "write -P 0xab 0 64k",
    "write -z 1M 64k",
    "write -P 0x12 100k 7k",
    "write -P 0x34 3M 1536k",
    "write -P 0x56 5000k 1k",
    "write -z -u 3200k 128k",
];

fn made_by_qemu(compat: &str, cluster: &str, refbits: &str) {
    let (_dir, path) = temp("q.qcow2");
    let o = format!("compat={compat},cluster_size={cluster},refcount_bits={refbits}");
    qemu_img(&["create", "-q", "-f", "qcow2", "-o", &o, s(&path), "8M"]);
    qemu_io(&path, "qcow2", &QEMU_IO_WRITES);
    assert_reads_like_qemu(&path);
}

/// Guest clusters stored out of order: 1, 0, 2, 3 and 5 at host clusters in that order, so
/// reads across 0|1 and 1|2 meet host runs that do not continue each other (the read is
/// planned piece by piece), 2|3 one that does (one engine read), 3|4 and 5|6 unallocated ones.
#[test]
fn clusters_stored_out_of_guest_order_read_like_qemu() {
    let (_dir, path) = temp("shuffled.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&path), "1M"]);
    let writes = [
        "write -P 0x21 64k 64k",
        "write -P 0x20 0 64k",
        "write -P 0x22 128k 64k",
        "write -P 0x23 192k 64k",
        "write -P 0x25 320k 64k",
    ];
    qemu_io(&path, "qcow2", &writes);
    assert_reads_like_qemu(&path);
}

#[test]
fn compat_0_10_with_64k_clusters_reads_like_qemu() {
    made_by_qemu("0.10", "64k", "16");
}

#[test]
fn compat_0_10_with_512_byte_clusters_reads_like_qemu() {
    made_by_qemu("0.10", "512", "16");
}

#[test]
fn compat_1_1_with_512_byte_clusters_reads_like_qemu() {
    made_by_qemu("1.1", "512", "16");
}

#[test]
fn compat_1_1_with_2m_clusters_reads_like_qemu() {
    made_by_qemu("1.1", "2M", "16");
}

#[test]
fn one_bit_refcounts_read_like_qemu() {
    made_by_qemu("1.1", "64k", "1");
}

#[test]
fn sixty_four_bit_refcounts_read_like_qemu() {
    made_by_qemu("1.1", "64k", "64");
}

fn compressed(compression: &str) {
    let (dir, raw) = temp("src.raw");
    qemu_img(&["create", "-q", "-f", "raw", s(&raw), "6M"]);
    qemu_io(
        &raw,
        "raw",
        &[
            "write -P 0x11 0 1M",
            "write -P 0x22 1536k 100k",
            "write -P 0x33 4M 64k",
        ],
    );
    let path = dir.path().join("c.qcow2");
    let o = format!("compression_type={compression}");
    qemu_img(&[
        "convert",
        "-q",
        "-c",
        "-O",
        "qcow2",
        "-o",
        &o,
        s(&raw),
        s(&path),
    ]);
    let info = qemu_img(&["info", s(&path)]);
    assert!(
        info.contains(&format!("compression type: {compression}")),
        "{info}"
    );
    // Overwrite part of a compressed cluster so the image mixes both kinds.
    qemu_io(&path, "qcow2", &["write -P 0x44 8k 4k"]);
    assert_reads_like_qemu(&path);
}

#[test]
fn deflate_compressed_image_reads_like_qemu() {
    compressed("zlib");
}

#[test]
fn zstd_compressed_image_reads_like_qemu() {
    compressed("zstd");
}

#[test]
fn backing_chain_of_depth_three_reads_like_qemu() {
    let (dir, base) = temp("base.raw");
    qemu_img(&["create", "-q", "-f", "raw", s(&base), "3M"]);
    qemu_io(&base, "raw", &["write -P 0x01 0 3M"]);
    let mid = dir.path().join("mid.qcow2");
    let top = dir.path().join("top.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        s(&mid),
        "6M",
    ]);
    qemu_io(
        &mid,
        "qcow2",
        &[
            "write -P 0x02 64k 64k",
            "write -z 1M 4k",
            "write -P 0x03 2900k 300k",
        ],
    );
    let o = "compat=0.10";
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        o,
        "-b",
        "mid.qcow2",
        "-F",
        "qcow2",
        s(&top),
        "8M",
    ]);
    qemu_io(
        &top,
        "qcow2",
        &[
            "write -P 0x04 0 4k",
            "write -P 0x05 1020k 8k",
            "write -P 0x06 7M 8k",
        ],
    );
    assert_reads_like_qemu(&top);
}

#[test]
fn backing_file_without_format_is_probed_by_the_image_tool_only() {
    let (dir, base) = temp("base.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&base), "1M"]);
    qemu_io(&base, "qcow2", &["write -P 0x77 0 1M"]);
    let top = dir.path().join("top.qcow2");
    let opts = crate::qcow2::CreateOptions {
        backing_file: Some("base.qcow2".into()),
        backing_format: None,
        ..Default::default()
    };
    crate::qcow2::create(&top, 0, &opts).expect("create");
    let info = qemu_img(&["info", s(&top)]);
    assert!(!info.contains("backing file format"), "{info}");
    qemu_io(&top, "qcow2", &["write -P 0x78 4k 4k"]);
    let tool = crate::OpenOptions {
        read_only: true,
        backing: crate::BackingPolicy::Follow,
        ..crate::OpenOptions::default()
    };
    let image = crate::open_image(&top, crate::Format::Qcow2, &tool).expect("image tool open");
    assert_opened_reads_like_qemu(&*image, &top);
    let serving = super::opts(true, crate::EngineKind::Auto);
    let Err(e) = crate::open_image(&top, crate::Format::Qcow2, &serving) else {
        panic!("a backing file without a format was probed when serving");
    };
    assert!(
        matches!(&e, crate::Error::BackingRefused { why, .. } if why.contains("no backing format")),
        "{e}"
    );
}

#[test]
fn qcow2_disk_of_zero_or_partial_sector_size_is_refused_but_any_backing_size_is_served() {
    let (dir, empty) = temp("empty.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&empty), "0"]);
    let disk = super::opts(false, crate::EngineKind::Auto);
    let Err(err) = crate::open_image(&empty, crate::Format::Qcow2, &disk) else {
        panic!("an empty qcow2 opened as a disk");
    };
    assert!(err.to_string().contains("empty"), "{err}");
    // qemu-img rounds sizes up to 512; a header saying 1000 bytes is hand-made (or hostile).
    let odd = dir.path().join("odd.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&odd), "1k"]);
    let mut bytes = std::fs::read(&odd).expect("read");
    bytes[24..32].copy_from_slice(&1000u64.to_be_bytes());
    std::fs::write(&odd, &bytes).expect("write");
    let Err(err) = crate::open_image(&odd, crate::Format::Qcow2, &disk) else {
        panic!("a qcow2 of 1000 bytes opened as a disk");
    };
    assert!(err.to_string().contains("1000 bytes"), "{err}");
    // A raw backing file of 1000 bytes under a 1 MiB qcow2: the guest sees the qcow2's size.
    let base = dir.path().join("base.raw");
    std::fs::write(&base, vec![0x5a; 1000]).expect("base");
    let top = dir.path().join("top.qcow2");
    let b = format!("-b{}", s(&base));
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        &b,
        "-F",
        "raw",
        s(&top),
        "1M",
    ]);
    let image =
        crate::open_image(&top, crate::Format::Qcow2, &disk).expect("open with odd backing");
    assert_eq!(image.geometry().size, 1 << 20);
}
