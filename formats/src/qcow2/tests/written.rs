//! Images written by our driver: the shared suite, random ops against an in-memory reference,
//! writes through backing chains; `qemu-img check` must find no error and no leak, and
//! `qemu-img convert` must see what we wrote.

use std::path::Path;

use crate::image::{EngineKind, Format, ImageQueue, IoOp};
use crate::open_image;
use crate::qcow2::layout::small;
use crate::qcow2::{Compat, CreateOptions, create, resize};
use crate::suite::{self, DEPTH, MIN_SIZE, assert_bytes, pattern, read_at, run, write_at};

use super::model::Model;
use super::{check_clean, opts, qemu_img, qemu_io, qemu_raw, read_all, s, temp};

fn suite_on(path: &Path, engine: EngineKind) {
    let image = open_image(path, Format::Qcow2, &opts(false, engine)).expect("open");
    let mut q = image.open_queue(DEPTH).expect("queue");
    suite::run_writable(&mut *q, MIN_SIZE);
    drop(q);
    drop(image);
    check_clean(path);
}

#[test]
fn shared_suite_passes_on_a_created_qcow2_with_io_uring() {
    let (_dir, path) = temp("suite.qcow2");
    create(&path, MIN_SIZE, &CreateOptions::default()).expect("create");
    suite_on(&path, EngineKind::IoUring);
}

#[test]
fn shared_suite_passes_on_a_qemu_made_v2_qcow2_with_the_sync_engine() {
    let (_dir, path) = temp("suite.qcow2");
    let size = MIN_SIZE.to_string();
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "compat=0.10",
        s(&path),
        &size,
    ]);
    suite_on(&path, EngineKind::Sync);
}

#[test]
fn read_only_qcow2_refuses_modifying_ops() {
    let (_dir, path) = temp("ro.qcow2");
    create(&path, 1 << 20, &CreateOptions::default()).expect("create");
    let image = open_image(&path, Format::Qcow2, &opts(true, EngineKind::Auto)).expect("open");
    assert!(image.features().read_only);
    let mut q = image.open_queue(4).expect("queue");
    suite::read_only_refuses_modifying_ops(&mut *q);
}

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Random writes (partial clusters, overwrites), discards and write-zeroes, mirrored in `model`.
fn random_ops(q: &mut dyn ImageQueue, model: &mut Model, seed: u64, count: usize) {
    let size = model.size();
    let mut rng = Rng(seed);
    for i in 0..count {
        let offset = rng.below(size / 512) * 512;
        let len = ((rng.below(64) + 1) * 512 + rng.below(2) * 65536).min(size - offset);
        match rng.below(10) {
            0 => {
                run(q, IoOp::Discard { offset, len }).expect("discard");
                model.discard(offset, len);
            }
            1 => {
                run(q, IoOp::WriteZeroes { offset, len }).expect("write zeroes");
                model.write_zeroes(offset, len);
            }
            _ => {
                let data = pattern(seed + i as u64, small(len));
                write_at(q, offset, &data).expect("write");
                model.write(offset, &data);
            }
        }
    }
    run(q, IoOp::Flush).expect("flush");
}

/// Runs random ops on the image at `path` whose current contents are `model`, then checks the
/// result with our reads, `qemu-img check` and `qemu-img convert`.
fn random_ops_verified(path: &Path, model: &mut Model, seed: u64) {
    let image = open_image(path, Format::Qcow2, &opts(false, EngineKind::Auto)).expect("open");
    let mut q = image.open_queue(16).expect("queue");
    random_ops(&mut *q, model, seed, 120);
    let got = read_all(&mut *q, model.size(), 1 << 20);
    assert_bytes(&got, &model.bytes, "our reads after random ops");
    drop(q);
    drop(image);
    check_clean(path);
    assert_bytes(
        &qemu_raw(path),
        &model.bytes,
        "qemu-img convert after random ops",
    );
}

fn created(cluster_size: u32, compat: Compat, refcount_bits: u32, size: u64, seed: u64) {
    created_at(cluster_size, compat, refcount_bits, size, seed);
}

/// Creates an image, runs the verified random ops; returns the header before and after.
fn created_at(
    cluster_size: u32,
    compat: Compat,
    refcount_bits: u32,
    size: u64,
    seed: u64,
) -> (Vec<u8>, Vec<u8>) {
    let (_dir, path) = temp("w.qcow2");
    let o = CreateOptions {
        cluster_size,
        compat,
        refcount_bits,
        ..CreateOptions::default()
    };
    create(&path, size, &o).expect("create");
    check_clean(&path);
    let before = std::fs::read(&path).expect("read")[..104].to_vec();
    let v2 = compat == Compat::V0_10;
    let mut model = Model::new(vec![0u8; small(size)], u64::from(cluster_size), v2, false);
    random_ops_verified(&path, &mut model, seed);
    (before, std::fs::read(&path).expect("read")[..104].to_vec())
}

#[test]
fn random_ops_on_a_v3_64k_image_pass_qemu_check() {
    created(65536, Compat::V1_1, 16, 8 << 20, 1);
}

#[test]
fn random_ops_on_a_v2_image_pass_qemu_check() {
    created(65536, Compat::V0_10, 16, 8 << 20, 2);
}

#[test]
fn random_ops_with_512_byte_clusters_and_64_bit_refcounts_grow_the_refcount_table() {
    // 64 refcounts per block and 64 blocks per table cluster: 4 MiB of data forces new refcount
    // blocks and a larger refcount table.
    let (before, after) = created_at(512, Compat::V1_1, 64, 6 << 20, 3);
    assert_ne!(
        before[48..60],
        after[48..60],
        "refcount table moved and grew"
    );
}

#[test]
fn random_ops_with_one_bit_refcounts_pass_qemu_check() {
    created(4096, Compat::V1_1, 1, 4 << 20, 4);
}

#[test]
fn random_ops_with_2m_clusters_pass_qemu_check() {
    created(2 << 20, Compat::V1_1, 16, 12 << 20, 5);
}

#[test]
fn writes_through_a_backing_chain_copy_on_write_and_pass_qemu_check() {
    let (dir, base) = temp("base.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&base), "3M"]);
    qemu_io(&base, "qcow2", &["write -P 0x61 0 3M"]);
    let mid = dir.path().join("mid.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        s(&mid),
        "4M",
    ]);
    qemu_io(&mid, "qcow2", &["write -P 0x62 1M 100k"]);
    for (name, compat) in [("top3.qcow2", Compat::V1_1), ("top2.qcow2", Compat::V0_10)] {
        let top = dir.path().join(name);
        let o = CreateOptions {
            compat,
            backing_file: Some("mid.qcow2".into()),
            backing_format: Some(crate::Format::Qcow2),
            ..CreateOptions::default()
        };
        create(&top, 5 << 20, &o).expect("create");
        let below = qemu_raw(&top);
        assert_eq!(below.len(), 5 << 20);
        let mut model = Model::new(below, 65536, compat == Compat::V0_10, true);
        random_ops_verified(&top, &mut model, 6);
    }
    check_clean(&base);
}

#[test]
fn images_created_here_match_the_requested_options() {
    let (dir, _) = temp("x");
    for (i, (cs, compat, bits, size)) in [
        (512u32, Compat::V0_10, 16u32, 1u64 << 30),
        (65536, Compat::V1_1, 1, 100 << 30),
        (2 << 20, Compat::V1_1, 64, 1 << 40),
        (4096, Compat::V1_1, 8, 0x1000_0200),
    ]
    .into_iter()
    .enumerate()
    {
        let path = dir.path().join(format!("{i}.qcow2"));
        let o = CreateOptions {
            cluster_size: cs,
            compat,
            refcount_bits: bits,
            ..CreateOptions::default()
        };
        create(&path, size, &o).expect("create");
        check_clean(&path);
        let info = qemu_img(&["info", "--output=json", s(&path)]);
        let compat_name = if compat == Compat::V0_10 {
            "0.10"
        } else {
            "1.1"
        };
        for want in [
            format!("\"cluster-size\": {cs}"),
            format!("\"virtual-size\": {size}"),
            format!("\"compat\": \"{compat_name}\""),
        ] {
            assert!(info.contains(&want), "{want} missing in {info}");
        }
        if compat == Compat::V1_1 {
            assert!(
                info.contains(&format!("\"refcount-bits\": {bits}")),
                "{info}"
            );
        }
    }
}

#[test]
fn creating_over_an_existing_file_or_with_bad_options_fails() {
    let (_dir, path) = temp("e.qcow2");
    create(&path, 1 << 20, &CreateOptions::default()).expect("create");
    assert!(create(&path, 1 << 20, &CreateOptions::default()).is_err());
    let other = path.with_extension("2");
    for o in [
        CreateOptions {
            cluster_size: 1000,
            ..CreateOptions::default()
        },
        CreateOptions {
            cluster_size: 4 << 20,
            ..CreateOptions::default()
        },
        CreateOptions {
            refcount_bits: 3,
            ..CreateOptions::default()
        },
        CreateOptions {
            compat: Compat::V0_10,
            refcount_bits: 8,
            ..CreateOptions::default()
        },
    ] {
        assert!(
            matches!(
                create(&other, 1 << 20, &o),
                Err(crate::Error::InvalidArgument(_))
            ),
            "{o:?}"
        );
    }
    assert!(create(&other, 1000, &CreateOptions::default()).is_err());
}

#[test]
fn resize_grows_the_image_and_the_l1_table_keeping_data() {
    let (_dir, path) = temp("r.qcow2");
    let o = CreateOptions {
        cluster_size: 4096,
        ..CreateOptions::default()
    };
    // 4 KiB clusters: one L1 entry maps 2 MiB, so growing 3 MiB -> 40 MiB needs a larger L1.
    create(&path, 3 << 20, &o).expect("create");
    {
        let image = open_image(&path, Format::Qcow2, &opts(false, EngineKind::Auto)).expect("open");
        let mut q = image.open_queue(4).expect("queue");
        write_at(&mut *q, (3 << 20) - 8192, &pattern(7, 8192)).expect("write");
    }
    resize(&path, 40 << 20).expect("resize");
    check_clean(&path);
    let image = open_image(&path, Format::Qcow2, &opts(false, EngineKind::Auto)).expect("open");
    assert_eq!(image.geometry().size, 40 << 20);
    let mut q = image.open_queue(4).expect("queue");
    assert_bytes(
        &read_at(&mut *q, (3 << 20) - 8192, 8192).expect("read"),
        &pattern(7, 8192),
        "kept",
    );
    write_at(&mut *q, (40 << 20) - 4096, &pattern(8, 4096)).expect("write at new end");
    drop(q);
    drop(image);
    check_clean(&path);
    let raw = qemu_raw(&path);
    assert_bytes(&raw[(40 << 20) - 4096..], &pattern(8, 4096), "new end");
    assert!(resize(&path, 1 << 20).is_err(), "shrinking refused");
}

#[test]
fn two_queues_writing_the_same_new_cluster_both_land() {
    let (_dir, path) = temp("mq.qcow2");
    create(&path, 4 << 20, &CreateOptions::default()).expect("create");
    let image = open_image(&path, Format::Qcow2, &opts(false, EngineKind::Auto)).expect("open");
    let mut a = image.open_queue(8).expect("queue a");
    let mut b = image.open_queue(8).expect("queue b");
    let (da, db) = (pattern(1, 4096), pattern(2, 4096));
    for (q, offset, data, tag) in [(&mut a, 0u64, &da, 1u64), (&mut b, 8192, &db, 2)] {
        let buf = crate::SharedBuf::new(4096);
        assert!(buf.copy_in(0, data));
        q.submit(
            IoOp::Write {
                offset,
                bufs: Box::new(buf),
            },
            tag,
        )
        .expect("submit");
        q.commit().expect("commit");
    }
    // Queue b's write waits for queue a's allocation of the same cluster (one thread per
    // queue in the backend; here a is driven first).
    assert!(suite::reap_n(&mut *a, 1)[0].result.is_ok());
    assert!(suite::reap_n(&mut *b, 1)[0].result.is_ok());
    assert_bytes(
        &read_at(&mut *a, 0, 4096).expect("read"),
        &da,
        "queue a's data",
    );
    assert_bytes(
        &read_at(&mut *b, 8192, 4096).expect("read"),
        &db,
        "queue b's data",
    );
    drop((a, b));
    drop(image);
    check_clean(&path);
}

/// Writes `blocks` 4 KiB blocks at `offsets` with up to `depth` in flight; block `i` holds
/// `pattern(seed + i)`. Returns how many completions came back.
fn write_in_flight(q: &mut dyn ImageQueue, offsets: &[u64], seed: u64, depth: usize) -> usize {
    let mut next = 0;
    let mut in_flight = 0;
    let mut done = Vec::new();
    while next < offsets.len() || in_flight > 0 {
        while next < offsets.len() && in_flight < depth {
            let buf = crate::SharedBuf::new(4096);
            assert!(buf.copy_in(0, &pattern(seed + next as u64, 4096)));
            let op = IoOp::Write {
                offset: offsets[next],
                bufs: Box::new(buf),
            };
            q.submit(op, next as u64).expect("submit");
            next += 1;
            in_flight += 1;
        }
        q.commit().expect("commit");
        q.wait(None).expect("wait");
        let before = done.len();
        q.reap(&mut done);
        in_flight -= done.len() - before;
    }
    for c in &done {
        assert!(c.result.is_ok(), "write {} failed: {:?}", c.tag, c.result);
    }
    done.len()
}

#[test]
fn writes_racing_into_clusters_being_allocated_all_land() {
    for cluster_size in [4096u32, 65536] {
        let (_dir, path) = temp("race.qcow2");
        let size = 8u64 << 20;
        let o = CreateOptions {
            cluster_size,
            ..CreateOptions::default()
        };
        create(&path, size, &o).expect("create");
        let image =
            open_image(&path, Format::Qcow2, &opts(false, EngineKind::IoUring)).expect("open");
        let mut q = image.open_queue(32).expect("queue");
        // Sequential blocks (many join an allocation in flight), then a shuffled pass over
        // other blocks, then overwrites of some of the first ones.
        let mut offsets: Vec<u64> = (0..512u64).map(|b| b * 4096).collect();
        let mut rng = Rng(7);
        let mut shuffled: Vec<u64> = (512..1536u64).map(|b| b * 4096).collect();
        for i in (1..shuffled.len()).rev() {
            shuffled.swap(i, small(rng.below(i as u64 + 1)));
        }
        offsets.extend(shuffled);
        offsets.extend((0..256u64).map(|b| b * 8192));
        assert_eq!(write_in_flight(&mut *q, &offsets, 100, 32), offsets.len());
        run(&mut *q, IoOp::Flush).expect("flush");
        let mut model = vec![0u8; small(size)];
        for (i, &at) in offsets.iter().enumerate() {
            model[small(at)..small(at) + 4096].copy_from_slice(&pattern(100 + i as u64, 4096));
        }
        let got = read_all(&mut *q, size, 1 << 20);
        assert_bytes(&got, &model, "our reads after racing writes");
        drop(q);
        drop(image);
        check_clean(&path);
        assert_bytes(
            &qemu_raw(&path),
            &model,
            "qemu-img convert after racing writes",
        );
    }
}

#[test]
fn a_served_image_grows_and_its_open_queues_reach_the_new_end() {
    let (_dir, path) = temp("live.qcow2");
    let o = CreateOptions {
        cluster_size: 4096,
        ..CreateOptions::default()
    };
    // 4 KiB clusters: one L1 entry maps 2 MiB, so 3 MiB -> 40 MiB needs a larger L1 table.
    create(&path, 3 << 20, &o).expect("create");
    let image = open_image(&path, Format::Qcow2, &opts(false, EngineKind::Auto)).expect("open");
    let mut q = image.open_queue(4).expect("queue");
    write_at(&mut *q, (3 << 20) - 8192, &pattern(7, 8192)).expect("write");
    assert!(
        write_at(&mut *q, 3 << 20, &pattern(9, 4096)).is_err(),
        "past the old end"
    );
    assert!(matches!(
        image.grow(1 << 20),
        Err(crate::Error::Shrink { .. })
    ));
    image.grow(40 << 20).expect("grow");
    assert_eq!(image.geometry().size, 40 << 20);
    write_at(&mut *q, 3 << 20, &pattern(9, 4096)).expect("write past the old end");
    write_at(&mut *q, (40 << 20) - 4096, &pattern(8, 4096)).expect("write at the new end");
    assert!(
        write_at(&mut *q, 40 << 20, &pattern(8, 4096)).is_err(),
        "past the new end"
    );
    assert_bytes(
        &read_at(&mut *q, (3 << 20) - 8192, 8192).expect("read"),
        &pattern(7, 8192),
        "kept",
    );
    drop(q);
    drop(image);
    check_clean(&path);
    let raw = qemu_raw(&path);
    assert_eq!(raw.len(), 40 << 20);
    assert_bytes(
        &raw[3 << 20..(3 << 20) + 4096],
        &pattern(9, 4096),
        "old end",
    );
    assert_bytes(&raw[(40 << 20) - 4096..], &pattern(8, 4096), "new end");
}

#[test]
fn the_file_grows_ahead_of_new_clusters_and_is_cut_back_when_the_image_closes() {
    let (dir, path) = temp("grow.qcow2");
    create(&path, 1 << 30, &CreateOptions::default()).expect("create");
    let len = |p: &Path| std::fs::metadata(p).expect("stat").len();
    let created = len(&path);
    let image = open_image(&path, Format::Qcow2, &opts(false, EngineKind::IoUring)).expect("open");
    let mut q = image.open_queue(DEPTH).expect("queue");
    let data = pattern(7, 4096);
    write_at(&mut *q, 300 << 20, &data).expect("write");
    run(&mut *q, IoOp::Flush).expect("flush");
    let grown = len(&path);
    assert!(
        grown >= created + (64 << 20),
        "one allocation grew the file a chunk ahead: {created} -> {grown}"
    );
    // What a crash now would leave: the tail stays, unused, and the image is clean.
    let crashed = dir.path().join("crashed.qcow2");
    std::fs::copy(&path, &crashed).expect("copy");
    check_clean(&crashed);
    drop(q);
    drop(image);
    let closed = len(&path);
    let cluster = 64 << 10;
    assert!(
        closed <= created + 2 * cluster,
        "the unused tail was cut off: {created} -> {grown} -> {closed}"
    );
    check_clean(&path);
    let image = open_image(&path, Format::Qcow2, &opts(true, EngineKind::IoUring)).expect("open");
    let mut q = image.open_queue(DEPTH).expect("queue");
    let back = read_at(&mut *q, 300 << 20, 4096).expect("read");
    assert_bytes(&back, &data, "the write after reopening");
}

#[test]
fn a_tail_a_crashed_session_left_is_cut_at_the_next_read_write_open() {
    let (dir, path) = temp("tail.qcow2");
    create(&path, 1 << 30, &CreateOptions::default()).expect("create");
    let len = |p: &Path| std::fs::metadata(p).expect("stat").len();
    let image = open_image(&path, Format::Qcow2, &opts(false, EngineKind::IoUring)).expect("open");
    let mut q = image.open_queue(DEPTH).expect("queue");
    let data = pattern(9, 4096);
    write_at(&mut *q, 300 << 20, &data).expect("write");
    run(&mut *q, IoOp::Flush).expect("flush");
    // A crash now: the file keeps its grown tail, and a write into a cluster whose mapping
    // never became durable left bytes there.
    let crashed = dir.path().join("crashed.qcow2");
    std::fs::copy(&path, &crashed).expect("copy");
    drop(q);
    drop(image);
    let clean_len = len(&path);
    let crashed_len = len(&crashed);
    assert!(
        crashed_len >= clean_len + (64 << 20),
        "{crashed_len} vs {clean_len}"
    );
    let stale = std::fs::OpenOptions::new().write(true).open(&crashed);
    std::os::unix::fs::FileExt::write_all_at(&stale.expect("open"), &[0xee; 65536], clean_len)
        .expect("stale bytes");

    let ro = open_image(&crashed, Format::Qcow2, &opts(true, EngineKind::IoUring)).expect("ro");
    drop(ro);
    assert_eq!(
        len(&crashed),
        crashed_len,
        "a read-only open changes nothing"
    );
    let image = open_image(&crashed, Format::Qcow2, &opts(false, EngineKind::IoUring));
    let image = image.expect("open read-write");
    assert_eq!(
        len(&crashed),
        clean_len,
        "the read-write open cut the unused tail"
    );
    let mut q = image.open_queue(DEPTH).expect("queue");
    let back = read_at(&mut *q, 300 << 20, 4096).expect("read");
    assert_bytes(&back, &data, "data written before the crash");
    // The next new cluster lies where the stale bytes were: its unwritten part reads zeros.
    write_at(&mut *q, 500 << 20, &data).expect("write a new cluster");
    let around = read_at(&mut *q, (500 << 20) - 4096, 3 * 4096).expect("read around");
    let mut want = vec![0; 3 * 4096];
    want[4096..8192].copy_from_slice(&data);
    assert_bytes(&around, &want, "a new cluster where the tail was");
    run(&mut *q, IoOp::Flush).expect("flush");
    drop(q);
    drop(image);
    check_clean(&crashed);
}
