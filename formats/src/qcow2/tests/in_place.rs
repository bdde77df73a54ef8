//! Writes into clusters the image owns alone: one engine write straight from the guest's
//! buffers where the host clusters continue each other, a planned write where they do not.

use crate::image::{EngineKind, Format};
use crate::open_image;
use crate::suite::{pattern, run, write_at};

use super::{check_clean, opts, qemu_img, qemu_io, qemu_raw, s, temp};
use crate::qcow2::layout::small;

/// Guest clusters 1, 0, 2 and 3 stored at host clusters in that order: writes across 0|1 and
/// 1|2 meet host runs that do not continue each other, one across 2|3 a run that does, and
/// one across 3|4 an unallocated cluster. Each lands where `qemu-img convert` reads it.
#[test]
fn writes_across_clusters_stored_out_of_guest_order_land_where_qemu_reads_them() {
    let (_dir, path) = temp("shuffled.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&path), "1M"]);
    let stored = [(1u64, 0x21u8), (0, 0x20), (2, 0x22), (3, 0x23)];
    let cmds: Vec<String> = (stored.iter())
        .map(|(gc, byte)| format!("write -P {byte:#x} {}k 64k", gc * 64))
        .collect();
    qemu_io(
        &path,
        "qcow2",
        &cmds.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let mut expected = vec![0u8; 1 << 20];
    for (gc, byte) in stored {
        let at = small(gc << 16);
        expected[at..at + (1 << 16)].fill(byte);
    }
    let image = open_image(&path, Format::Qcow2, &opts(false, EngineKind::IoUring)).expect("open");
    let mut q = image.open_queue(8).expect("queue");
    for (seed, boundary) in [(1u64, 1u64), (2, 2), (3, 3), (4, 4)] {
        let at = (boundary << 16) - 6144;
        let data = pattern(seed, 12288);
        write_at(&mut *q, at, &data).expect("write");
        let start = small(at);
        expected[start..start + data.len()].copy_from_slice(&data);
    }
    run(&mut *q, crate::IoOp::Flush).expect("flush");
    drop(q);
    drop(image);
    check_clean(&path);
    crate::suite::assert_bytes(&qemu_raw(&path), &expected, "after the writes");
}
