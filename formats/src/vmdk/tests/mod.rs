//! VMDK tests: images made by [`create`](super::create) served through the shared queue suite,
//! extents of every kind in one image, parent chains, the CID rule, the crash order of a grain
//! allocation, and hostile images (`hostile`). Interop with qemu-img lives in `tests/img`.

// Test sizes are small: casts to usize do not truncate.
#![allow(clippy::cast_possible_truncation)]

mod direct;
mod discard;
mod grow;
mod hostile;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use crate::engine::record::tests::{Event, Log};
use crate::error::Error;
use crate::image::{BlockImage, Format, ImageQueue, IoOp, OpenOptions};
use crate::open_image;
use crate::suite::{self, assert_bytes, pattern, read_at, run, write_at};

use super::create::{self, Parent, Subformat};

pub(super) const MIB: u64 = 1 << 20;

pub(super) fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("rustbk-vmdk-")
        .tempdir()
        .expect("tempdir")
}

pub(super) fn open(path: &Path) -> Result<Arc<dyn BlockImage>, Error> {
    open_image(path, Format::Vmdk, &OpenOptions::default())
}

/// The error of opening `path` (which must fail).
pub(super) fn open_err(path: &Path, what: &str) -> Error {
    match open(path) {
        Ok(_) => panic!("{what}: the image opened"),
        Err(e) => e,
    }
}

pub(super) fn made(dir: &tempfile::TempDir, name: &str, size: u64, sub: Subformat) -> PathBuf {
    let path = dir.path().join(name);
    create::create(&path, size, sub, None).expect("create");
    path
}

pub(super) fn queue(image: &Arc<dyn BlockImage>) -> Box<dyn ImageQueue> {
    image.open_queue(64).expect("queue")
}

/// The guest bytes of `path` as `qemu-img convert -O raw` reads them.
pub(super) fn qemu_raw(path: &Path) -> Vec<u8> {
    let out = path.with_extension("raw");
    let status = Command::new("qemu-img")
        .args(["convert", "-f", "vmdk", "-O", "raw"])
        .arg(path)
        .arg(&out)
        .status()
        .expect("qemu-img (qemu-utils) is required");
    assert!(status.success(), "qemu-img convert");
    std::fs::read(&out).expect("raw")
}

#[test]
fn shared_queue_suite_passes_on_every_writable_subformat() {
    let dir = tmp();
    let subs = [
        Subformat::MonolithicSparse,
        Subformat::MonolithicFlat,
        Subformat::TwoGbMaxExtentSparse,
        Subformat::TwoGbMaxExtentFlat,
    ];
    for (i, sub) in subs.into_iter().enumerate() {
        let path = made(&dir, &format!("s{i}.vmdk"), 64 * MIB, sub);
        let image = open(&path).expect("open");
        assert_eq!(image.geometry().size, 64 * MIB);
        let mut q = queue(&image);
        suite::run_writable_without_discard(&mut *q, 64 * MIB);
        suite::discarded_range_reads_as_zeros(&mut *q);
    }
}

#[test]
fn data_written_survives_reopen_and_unwritten_grains_read_as_zeros() {
    let dir = tmp();
    let path = made(&dir, "a.vmdk", 8 * MIB, Subformat::MonolithicSparse);
    let data = pattern(7, 100_000);
    {
        let image = open(&path).expect("open");
        let mut q = queue(&image);
        write_at(&mut *q, 3 * MIB + 1000, &data).expect("write");
        run(&mut *q, IoOp::Flush).expect("flush");
    }
    let image = open(&path).expect("reopen");
    let mut q = queue(&image);
    assert_bytes(
        &read_at(&mut *q, 3 * MIB + 1000, data.len()).expect("read"),
        &data,
        "data",
    );
    let zeros = read_at(&mut *q, 3 * MIB, 1000).expect("read head");
    assert!(
        zeros.iter().all(|&b| b == 0),
        "the new grain's head is zeros"
    );
    assert!(
        read_at(&mut *q, 0, 65536)
            .expect("read")
            .iter()
            .all(|&b| b == 0)
    );
}

/// A descriptor of its own naming a SPARSE, a FLAT (at an offset) and a ZERO extent.
pub(super) fn mixed(dir: &tempfile::TempDir) -> PathBuf {
    create::create(
        &dir.path().join("m.vmdk"),
        2 * MIB,
        Subformat::TwoGbMaxExtentSparse,
        None,
    )
    .expect("sparse part");
    std::fs::write(
        dir.path().join("flat.bin"),
        vec![0xabu8; (3 * MIB) as usize],
    )
    .expect("flat");
    let text = "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n\
        createType=\"twoGbMaxExtentSparse\"\n\
        RW 4096 SPARSE \"m-s001.vmdk\"\nRW 2048 ZERO\nRW 4096 FLAT \"flat.bin\" 2048\n";
    let path = dir.path().join("mixed.vmdk");
    std::fs::write(&path, text).expect("descriptor");
    path
}

#[test]
fn one_image_spans_sparse_zero_and_flat_extents() {
    let dir = tmp();
    let path = mixed(&dir);
    let image = open(&path).expect("open");
    assert_eq!(image.geometry().size, 5 * MIB);
    let mut q = queue(&image);
    let all = read_at(&mut *q, 0, (5 * MIB) as usize).expect("read");
    assert!(all[..(3 * MIB) as usize].iter().all(|&b| b == 0));
    assert!(
        all[(3 * MIB) as usize..].iter().all(|&b| b == 0xab),
        "flat data from its offset"
    );
    let data = pattern(3, (MIB + 8192) as usize);
    write_at(&mut *q, MIB + MIB / 2 - 4096, &data).expect_err("a write into the ZERO extent fails");
    write_at(&mut *q, 2 * MIB - 4096, &data[..8192])
        .expect_err("a write reaching the ZERO extent fails");
    write_at(&mut *q, 2 * MIB - 8192, &data[..8192]).expect("sparse write");
    write_at(&mut *q, 3 * MIB + 512, &data).expect("flat write");
    assert_bytes(
        &read_at(&mut *q, 3 * MIB + 512, data.len()).expect("read"),
        &data,
        "flat",
    );
    assert_bytes(
        &read_at(&mut *q, 2 * MIB - 8192, 8192).expect("read"),
        &data[..8192],
        "sparse",
    );
    let flat = std::fs::read(dir.path().join("flat.bin")).expect("flat file");
    assert_bytes(
        &flat[(MIB + 512) as usize..][..data.len()],
        &data,
        "bytes in the flat file",
    );
}

pub(super) fn child_of(dir: &tempfile::TempDir, parent: &str, name: &str) -> PathBuf {
    let cid = create::describe(&dir.path().join(parent))
        .expect("parent")
        .cid;
    let p = Parent {
        hint: parent.to_owned(),
        cid,
    };
    let path = dir.path().join(name);
    create::create(&path, 4 * MIB, Subformat::MonolithicSparse, Some(&p)).expect("child");
    path
}

#[test]
fn a_chain_of_three_reads_each_grain_from_the_nearest_image_holding_it() {
    let dir = tmp();
    let base = made(&dir, "base.vmdk", 4 * MIB, Subformat::MonolithicFlat);
    let (a, b, c) = (pattern(1, 65536), pattern(2, 4096), pattern(3, 512));
    {
        let image = open(&base).expect("base");
        let mut q = queue(&image);
        write_at(&mut *q, 0, &a).expect("base write");
        write_at(&mut *q, MIB, &a).expect("base write");
    }
    let mid = child_of(&dir, "base.vmdk", "mid.vmdk");
    {
        let image = open(&mid).expect("mid");
        write_at(&mut *queue(&image), 4096, &b).expect("mid write");
    }
    let top = child_of(&dir, "mid.vmdk", "top.vmdk");
    let image = open(&top).expect("top");
    let mut q = queue(&image);
    write_at(&mut *q, 8192 + 100, &c).expect("top write");
    let got = read_at(&mut *q, 0, 65536).expect("read");
    let mut want = a.clone();
    want[4096..8192].copy_from_slice(&b);
    want[8192 + 100..8192 + 612].copy_from_slice(&c);
    assert_bytes(&got, &want, "grain 0 through three images");
    assert_bytes(
        &read_at(&mut *q, MIB, 65536).expect("read"),
        &a,
        "base only",
    );
}

#[test]
fn the_first_write_changes_the_cid_and_a_child_of_the_old_content_is_refused() {
    let dir = tmp();
    made(&dir, "base.vmdk", 4 * MIB, Subformat::MonolithicSparse);
    let before = create::describe(&dir.path().join("base.vmdk"))
        .expect("base")
        .cid;
    let child = child_of(&dir, "base.vmdk", "child.vmdk");
    open(&child).expect("a child of the unchanged parent opens");
    {
        let image = open(&dir.path().join("base.vmdk")).expect("base");
        let mut q = queue(&image);
        read_at(&mut *q, 0, 4096).expect("read");
        assert_eq!(
            create::describe(&dir.path().join("base.vmdk"))
                .expect("base")
                .cid,
            before,
            "reads keep the CID"
        );
        write_at(&mut *q, 0, &[1u8; 4096]).expect("write");
    }
    let after = create::describe(&dir.path().join("base.vmdk"))
        .expect("base")
        .cid;
    assert_ne!(after, before);
    let err = open_err(&child, "the parent changed");
    assert!(matches!(err, Error::BackingChain(_)), "{err}");
    assert!(err.to_string().contains("parentCID"), "{err}");
}

fn position(log: &[Event], what: impl Fn(&Event) -> bool) -> usize {
    log.iter().position(what).expect("event in the log")
}

#[test]
fn a_grain_allocation_writes_data_then_syncs_then_both_table_entries() {
    let dir = tmp();
    let path = made(&dir, "o.vmdk", 4 * MIB, Subformat::MonolithicSparse);
    let header = super::open::read_sparse_header(&super::metaio::FileIo(Arc::new(
        crate::EngineFile::open(
            &path,
            crate::engine::Access::ReadOnly,
            crate::CacheMode::Writeback,
        )
        .expect("file"),
    )))
    .expect("header");
    let gt = |dir_sector: u64| -> u64 {
        let raw = std::fs::read(&path).expect("read");
        let at = (dir_sector * 512) as usize;
        u64::from(u32::from_le_bytes(raw[at..at + 4].try_into().expect("4"))) * 512
    };
    let (primary, backup) = (gt(header.gd_offset), gt(header.rgd_offset));
    let log = Arc::new(Log::default());
    let opts = OpenOptions {
        recorder: Some(log.clone()),
        ..OpenOptions::default()
    };
    let image = open_image(&path, Format::Vmdk, &opts).expect("open");
    let mut q = queue(&image);
    write_at(&mut *q, 65536 * 2 + 512, &[9u8; 512]).expect("write");
    let events = log.take();
    let data = position(
        &events,
        |e| matches!(e, Event::Write(at, d) if *at >= header.overhead * 512 && d.len() == 65536),
    );
    let entry = position(
        &events,
        |e| matches!(e, Event::Write(at, _) if *at == primary + 8),
    );
    let copy = position(
        &events,
        |e| matches!(e, Event::Write(at, _) if *at == backup + 8),
    );
    let sync = position(&events, |e| matches!(e, Event::Synced(_)));
    let sync_after_data = events[data..]
        .iter()
        .position(|e| matches!(e, Event::Synced(_)))
        .map(|i| i + data);
    assert!(
        sync_after_data.is_some_and(|s| s < entry),
        "data {data}, sync {sync}, entry {entry}: {events:?}"
    );
    assert!(entry < copy, "the primary table first");
}

#[test]
fn the_image_tool_probes_sparse_extents_and_descriptor_files_as_vmdk() {
    let dir = tmp();
    let sparse = made(&dir, "p.vmdk", MIB, Subformat::MonolithicSparse);
    let flat = made(&dir, "f.vmdk", MIB, Subformat::MonolithicFlat);
    assert_eq!(crate::probe_format(&sparse).expect("probe"), Format::Vmdk);
    assert_eq!(crate::probe_format(&flat).expect("probe"), Format::Vmdk);
    let raw = dir.path().join("f-flat.vmdk");
    assert_eq!(crate::probe_format(&raw).expect("probe"), Format::Raw);
}

#[test]
fn two_queues_writing_one_unallocated_grain_both_land() {
    let dir = tmp();
    let path = made(&dir, "q.vmdk", 4 * MIB, Subformat::MonolithicSparse);
    let image = open(&path).expect("open");
    let (mut q1, mut q2) = (queue(&image), queue(&image));
    let (a, b) = (pattern(1, 4096), pattern(2, 4096));
    let op = |offset: u64, data: &[u8]| {
        let buf = crate::SharedBuf::new(data.len());
        assert!(buf.copy_in(0, data));
        IoOp::Write {
            offset,
            bufs: Box::new(buf),
        }
    };
    q1.submit(op(MIB, &a), 1).expect("submit");
    q2.submit(op(MIB + 8192, &b), 2).expect("submit");
    q1.commit().expect("commit");
    q2.commit().expect("commit");
    let done1 = suite::reap_n(&mut *q1, 1);
    let done2 = suite::reap_n(&mut *q2, 1);
    assert!(
        done1[0].result.is_ok() && done2[0].result.is_ok(),
        "{done1:?} {done2:?}"
    );
    let got = read_at(&mut *q1, MIB, 12288).expect("read");
    assert_bytes(&got[..4096], &a, "first queue's write");
    assert!(got[4096..8192].iter().all(|&x| x == 0));
    assert_bytes(&got[8192..], &b, "second queue's write");
    let len = std::fs::metadata(&path).expect("stat").len();
    let raw = std::fs::read(&path).expect("image");
    let overhead = u64::from_le_bytes(raw[64..72].try_into().expect("8 bytes")) * 512;
    assert_eq!(len, overhead + 65536, "one grain allocated, not two");
}

#[test]
fn a_copied_monolithic_sparse_image_reads_and_writes_itself_not_the_file_it_names() {
    let dir = tmp();
    let original = made(&dir, "orig.vmdk", 4 * MIB, Subformat::MonolithicSparse);
    let copy = dir.path().join("copy.vmdk");
    std::fs::copy(&original, &copy).expect("copy");
    let data = pattern(5, 8192);
    {
        let image = open(&copy).expect("open the copy");
        write_at(&mut *queue(&image), MIB, &data).expect("write");
    }
    let image = open(&original).expect("open the original");
    let got = read_at(&mut *queue(&image), MIB, 8192).expect("read");
    assert!(got.iter().all(|&b| b == 0), "the original is untouched");
    drop(image);
    std::fs::remove_file(&original).expect("remove the original");
    let image = open(&copy).expect("the copy opens alone");
    let got = read_at(&mut *queue(&image), MIB, 8192).expect("read");
    assert_bytes(&got, &data, "the copy holds the write");
}
