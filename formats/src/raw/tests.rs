//! Raw images on files and loop devices, through both engines, with and without O_DIRECT.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use crate::image::{BlockImage, EngineKind, Format, ImageQueue, IoOp, OpenOptions};
use crate::suite::{self, DEPTH, MIN_SIZE, read_at, run, write_at};
use crate::{CacheMode, Error, SharedBuf, create_raw, open_image};

use super::RawImage;

const ENGINES: [EngineKind; 2] = [EngineKind::IoUring, EngineKind::Sync];

fn opts(engine: EngineKind, cache: CacheMode) -> OpenOptions {
    OpenOptions {
        engine,
        cache,
        ..OpenOptions::default()
    }
}

fn new_image(dir: &tempfile::TempDir, size: u64) -> PathBuf {
    let path = dir.path().join("disk.img");
    create_raw(&path, size).expect("create");
    path
}

fn allocated_bytes(path: &Path) -> u64 {
    std::fs::metadata(path).expect("stat").blocks() * 512
}

fn suite_on_file(engine: EngineKind, cache: CacheMode) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = new_image(&dir, MIN_SIZE);
    let image = open_image(&path, Format::Raw, &opts(engine, cache)).expect("open");
    let mut q = image.open_queue(DEPTH).expect("queue");
    suite::run_writable(&mut *q, MIN_SIZE);
    assert_eq!(
        std::fs::metadata(&path).expect("stat").len(),
        MIN_SIZE,
        "file size changed"
    );
}

#[test]
fn shared_suite_passes_in_every_cache_mode_on_both_engines() {
    for cache in [
        CacheMode::Writethrough,
        CacheMode::DirectSync,
        CacheMode::Unsafe,
    ] {
        for engine in ENGINES {
            suite_on_file(engine, cache);
        }
    }
}

#[test]
fn shared_suite_passes_on_io_uring_with_o_direct() {
    suite_on_file(EngineKind::IoUring, CacheMode::None);
}

#[test]
fn shared_suite_passes_on_io_uring_buffered() {
    suite_on_file(EngineKind::IoUring, CacheMode::Writeback);
}

#[test]
fn shared_suite_passes_on_sync_engine_with_o_direct() {
    suite_on_file(EngineKind::Sync, CacheMode::None);
}

#[test]
fn shared_suite_passes_on_sync_engine_buffered() {
    suite_on_file(EngineKind::Sync, CacheMode::Writeback);
}

#[test]
fn discard_gives_space_back_to_the_file_system() {
    for engine in ENGINES {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = new_image(&dir, MIN_SIZE);
        let image = open_image(&path, Format::Raw, &opts(engine, CacheMode::None)).expect("open");
        let mut q = image.open_queue(8).expect("queue");
        write_at(&mut *q, 1 << 20, &suite::pattern(1, 4 << 20)).expect("write");
        run(&mut *q, IoOp::Flush).expect("flush");
        let before = allocated_bytes(&path);
        assert!(
            before >= 4 << 20,
            "{engine:?}: write allocated only {before}"
        );
        run(
            &mut *q,
            IoOp::Discard {
                offset: 1 << 20,
                len: 4 << 20,
            },
        )
        .expect("discard");
        let after = allocated_bytes(&path);
        assert!(
            after + (4 << 20) <= before,
            "{engine:?}: {before} -> {after}"
        );
    }
}

#[test]
fn write_zeroes_keeps_the_file_size() {
    for engine in ENGINES {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = new_image(&dir, MIN_SIZE);
        let image = open_image(&path, Format::Raw, &opts(engine, CacheMode::None)).expect("open");
        let mut q = image.open_queue(8).expect("queue");
        write_at(&mut *q, MIN_SIZE - 4096, &[7; 4096]).expect("write");
        run(
            &mut *q,
            IoOp::WriteZeroes {
                offset: MIN_SIZE - 8192,
                len: 8192,
            },
        )
        .expect("zeroes");
        assert_eq!(
            read_at(&mut *q, MIN_SIZE - 4096, 4096).expect("read"),
            vec![0; 4096]
        );
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), MIN_SIZE);
    }
}

#[test]
fn misaligned_memory_goes_through_a_bounce_buffer_under_o_direct() {
    for engine in ENGINES {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = new_image(&dir, MIN_SIZE);
        let image = RawImage::new(
            Arc::new(
                crate::EngineFile::open(
                    &path,
                    crate::engine::Access::ReadWrite,
                    crate::CacheMode::None,
                )
                .expect("open"),
            ),
            &opts(engine, CacheMode::None),
        )
        .expect("image");
        assert!(
            image.file().dio_align().is_some(),
            "no O_DIRECT on this file system"
        );
        let mut q = image.open_queue(8).expect("queue");
        write_at(&mut *q, 0, &[1; 4096]).expect("aligned write");
        assert_eq!(
            image.file().stats().bounced,
            0,
            "aligned memory was bounced"
        );
        suite::misaligned_memory_is_read_and_written_correctly(&mut *q);
        assert_eq!(
            image.file().stats().bounced,
            2,
            "{engine:?}: one write and one read bounced"
        );
        suite::misaligned_offsets_are_read_and_written_correctly(&mut *q);
        assert!(image.file().stats().buffered_fallbacks >= 2);
    }
}

#[test]
fn read_only_image_refuses_modifying_ops_with_erofs() {
    for engine in ENGINES {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = new_image(&dir, MIN_SIZE);
        let ro = OpenOptions {
            read_only: true,
            ..opts(engine, CacheMode::None)
        };
        let image = open_image(&path, Format::Raw, &ro).expect("open");
        assert!(image.features().read_only);
        assert!(!image.features().discard);
        let mut q = image.open_queue(8).expect("queue");
        suite::read_only_refuses_modifying_ops(&mut *q);
    }
}

#[test]
fn geometry_reports_size_and_sector_sizes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = new_image(&dir, 3 << 20);
    let image = open_image(
        &path,
        Format::Raw,
        &OpenOptions {
            sector_size: 4096,
            ..OpenOptions::default()
        },
    )
    .expect("open");
    let g = image.geometry();
    assert_eq!(
        (g.size, g.logical_sector_size, g.physical_sector_size),
        (3 << 20, 4096, 4096)
    );
    assert_eq!(image.format(), Format::Raw);
    image.sync_metadata().expect("sync");
    drop(image);
    let bad = open_image(
        &path,
        Format::Raw,
        &OpenOptions {
            sector_size: 1000,
            ..OpenOptions::default()
        },
    );
    assert!(matches!(bad, Err(Error::InvalidArgument(_))));
}

#[test]
fn empty_or_partial_sector_images_are_refused_as_disks_but_open_for_tools() {
    let dir = tempfile::tempdir().expect("tempdir");
    let open = |size: u64, sector_size: u32, require_whole_sectors: bool| {
        let path = dir.path().join(format!("{size}-{sector_size}.img"));
        create_raw(&path, size).expect("create");
        let o = OpenOptions {
            sector_size,
            require_whole_sectors,
            ..OpenOptions::default()
        };
        open_image(&path, Format::Raw, &o).map(|image| image.geometry().size)
    };
    for (size, sector) in [(0, 512), (1000, 512), (1 << 20 | 512, 4096)] {
        let err = open(size, sector, true).expect_err("refused as a disk");
        assert!(
            matches!(&err, Error::InvalidArgument(m) if m.contains(&format!("{size}-{sector}.img"))),
            "{err}"
        );
        let tool = dir.path().join(format!("{size}-{sector}.img"));
        std::fs::remove_file(&tool).expect("rm");
        assert_eq!(open(size, sector, false).expect("open for tools"), size);
    }
    assert_eq!(open(1 << 20, 4096, true).expect("whole sectors"), 1 << 20);
}

#[test]
fn auto_engine_picks_io_uring_here() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = new_image(&dir, 1 << 20);
    let image = RawImage::new(
        Arc::new(
            crate::EngineFile::open(
                &path,
                crate::engine::Access::ReadWrite,
                crate::CacheMode::None,
            )
            .expect("open"),
        ),
        &OpenOptions::default(),
    )
    .expect("image");
    assert_eq!(image.engine_kind(), EngineKind::IoUring);
}

#[test]
fn open_queue_rejects_zero_depth() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = new_image(&dir, 1 << 20);
    let image = open_image(&path, Format::Raw, &OpenOptions::default()).expect("open");
    assert!(matches!(
        image.open_queue(0),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn create_raw_makes_a_sparse_file_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = new_image(&dir, 1 << 30);
    let meta = std::fs::metadata(&path).expect("stat");
    assert_eq!(meta.len(), 1 << 30);
    assert!(meta.blocks() * 512 < 1 << 20, "not sparse");
    assert!(matches!(create_raw(&path, 4096), Err(Error::Open { .. })));
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), 1 << 30);
}

#[test]
fn a_qcow2_file_is_probed_as_qcow2_but_opened_as_the_format_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("disk.qcow2");
    let status = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&path)
        .arg("16M")
        .status();
    assert!(status.expect("qemu-img is required").success());
    assert_eq!(crate::probe_format(&path).expect("probe"), Format::Qcow2);
    let forced = OpenOptions {
        // The container's length (196624 bytes) is no whole number of sectors.
        require_whole_sectors: false,
        ..OpenOptions::default()
    };
    let raw = open_image(&path, Format::Raw, &forced).expect("raw");
    assert_eq!(raw.format(), Format::Raw);
    assert!(raw.geometry().size < 1 << 20, "the container, not the disk");
    drop(raw);
    let qcow2 = open_image(&path, Format::Qcow2, &OpenOptions::default()).expect("qcow2");
    assert_eq!(qcow2.geometry().size, 16 << 20);
}

#[test]
fn probing_names_vpc_and_vmdk_by_their_magic_and_anything_else_raw() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: [(&[u8], Format); 4] = [
        (b"conectix", Format::Vpc),
        (b"KDMV", Format::Vmdk),
        (b"# Disk DescriptorFile\n", Format::Vmdk),
        (b"conectiX", Format::Raw),
    ];
    for (i, (magic, format)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("{i}.img"));
        let mut data = magic.to_vec();
        data.resize(4096, 0);
        std::fs::write(&path, &data).expect("write");
        assert_eq!(
            crate::probe_format(&path).expect("probe"),
            format,
            "{magic:?}"
        );
    }
}

#[test]
fn opening_a_directory_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(matches!(
        open_image(dir.path(), Format::Raw, &OpenOptions::default()),
        Err(Error::NotAnImage(_))
    ));
}

#[test]
fn io_uring_wait_times_out_while_a_completion_is_withheld() {
    // A read of a FIFO blocks in the kernel until data arrives: a completion we control.
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let writer = std::thread::spawn({
        let fifo = fifo.clone();
        move || {
            std::fs::OpenOptions::new()
                .write(true)
                .open(fifo)
                .expect("open fifo")
        }
    });
    let file = std::fs::File::open(&fifo).expect("open fifo for reading");
    let mut writer = writer.join().expect("writer");
    let engine_file = crate::engine::tests_support::fifo_engine_file(file, &fifo);
    let mut q = crate::Engine::new(Arc::new(engine_file), EngineKind::IoUring, 4).expect("engine");
    let buf = SharedBuf::new(4);
    q.submit(
        IoOp::Read {
            offset: 0,
            bufs: Box::new(buf.clone()),
        },
        42,
    )
    .expect("submit");
    q.commit().expect("commit");
    let start = std::time::Instant::now();
    q.wait(Some(std::time::Duration::from_millis(200)))
        .expect("wait");
    let waited = start.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(150),
        "wait returned after {waited:?}"
    );
    let mut out = Vec::new();
    assert_eq!(q.reap(&mut out), 0, "completion without data");
    std::io::Write::write_all(&mut writer, b"abcd").expect("feed fifo");
    q.wait(Some(std::time::Duration::from_secs(5)))
        .expect("wait");
    assert_eq!(q.reap(&mut out), 1);
    assert_eq!((out[0].tag, out[0].result.is_ok()), (42, true));
    assert_eq!(buf.copy_out(), b"abcd");
}

/// A loop device bound to a file, detached on drop.
struct Loop {
    dev: PathBuf,
}

impl Loop {
    fn attach(file: &Path, read_only: bool) -> Loop {
        let mut cmd = Command::new("losetup");
        if read_only {
            cmd.arg("-r");
        }
        let out = cmd
            .args(["-f", "--show"])
            .arg(file)
            .output()
            .expect("losetup is required");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Loop { dev }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

#[test]
fn raw_image_on_a_loop_device_passes_the_shared_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = new_image(&dir, MIN_SIZE);
    let dev = Loop::attach(&path, false);
    for engine in ENGINES {
        let image = open_image(&dev.dev, Format::Raw, &opts(engine, CacheMode::None))
            .expect("open loop device");
        assert_eq!(image.geometry().size, MIN_SIZE);
        assert!(!image.features().read_only);
        let mut q = image.open_queue(DEPTH).expect("queue");
        suite::run_writable(&mut *q, MIN_SIZE);
    }
    drop(dev);
    let mut backing = std::fs::read(&path).expect("backing file");
    assert_eq!(
        backing.len() as u64,
        MIN_SIZE,
        "device grew its backing file"
    );
    // The loop device wrote through to the file: the suite's second pattern is at offset 16384.
    backing.truncate(16384 + 8192);
    suite::assert_bytes(&backing[16384..], &suite::pattern(1, 8192), "backing file");
}

#[test]
fn read_only_loop_device_is_detected_and_refuses_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = new_image(&dir, MIN_SIZE);
    let dev = Loop::attach(&path, true);
    let image = open_image(&dev.dev, Format::Raw, &OpenOptions::default())
        .expect("open read-only loop device");
    assert!(image.features().read_only);
    let mut q = image.open_queue(8).expect("queue");
    suite::read_only_refuses_modifying_ops(&mut *q);
}

#[test]
fn loop_device_discard_deallocates_the_backing_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = new_image(&dir, MIN_SIZE);
    let dev = Loop::attach(&path, false);
    let image = open_image(
        &dev.dev,
        Format::Raw,
        &opts(EngineKind::IoUring, CacheMode::None),
    )
    .expect("open");
    let mut q: Box<dyn ImageQueue> = image.open_queue(8).expect("queue");
    write_at(&mut *q, 0, &suite::pattern(3, 4 << 20)).expect("write");
    run(&mut *q, IoOp::Flush).expect("flush");
    let before = allocated_bytes(&path);
    run(
        &mut *q,
        IoOp::Discard {
            offset: 0,
            len: 4 << 20,
        },
    )
    .expect("BLKDISCARD");
    assert!(
        read_at(&mut *q, 0, 4 << 20)
            .expect("read")
            .iter()
            .all(|&b| b == 0)
    );
    let after = allocated_bytes(&path);
    assert!(after + (4 << 20) <= before, "{before} -> {after}");
}

/// `wait_any` wakes for a readable descriptor, for a completion, and after a timeout, on both
/// engines, and re-arms its watch on every call.
#[test]
fn wait_any_wakes_for_descriptors_completions_and_timeouts() {
    use std::os::fd::AsFd;
    use std::time::{Duration, Instant};

    use nix::sys::eventfd::{EfdFlags, EventFd};

    for engine in ENGINES {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = new_image(&dir, MIN_SIZE);
        let image =
            open_image(&path, Format::Raw, &opts(engine, CacheMode::Writeback)).expect("open");
        let mut q = image.open_queue(4).expect("queue");
        let ev = EventFd::from_flags(EfdFlags::EFD_NONBLOCK).expect("eventfd");
        let start = Instant::now();
        let fired = q
            .wait_any(&[ev.as_fd()], Some(Duration::from_millis(100)))
            .expect("wait");
        assert_eq!(fired, vec![false], "{engine:?}: nothing happened");
        assert!(
            start.elapsed() >= Duration::from_millis(90),
            "{engine:?}: timeout honoured"
        );
        for round in 0..3 {
            ev.write(1).expect("signal");
            let fired = q
                .wait_any(&[ev.as_fd()], Some(Duration::from_secs(5)))
                .expect("wait");
            assert_eq!(
                fired,
                vec![true],
                "{engine:?} round {round}: descriptor fired"
            );
            ev.read().expect("drain");
        }
        let buf = SharedBuf::new(4096);
        q.submit(
            IoOp::Read {
                offset: 0,
                bufs: Box::new(buf.clone()),
            },
            9,
        )
        .expect("submit");
        let start = Instant::now();
        let mut done = Vec::new();
        while done.is_empty() {
            q.wait_any(&[ev.as_fd()], Some(Duration::from_secs(5)))
                .expect("wait");
            q.reap(&mut done);
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{engine:?}: completion never woke us"
            );
        }
        assert_eq!(done[0].tag, 9);
    }
}

/// A raw image on the io_uring engine, O_DIRECT, and its queue.
fn uring_direct_queue(dir: &tempfile::TempDir) -> (RawImage, Box<dyn ImageQueue>) {
    let path = new_image(dir, MIN_SIZE);
    let file = crate::EngineFile::open(&path, crate::engine::Access::ReadWrite, CacheMode::None)
        .expect("open");
    let image =
        RawImage::new(Arc::new(file), &opts(EngineKind::IoUring, CacheMode::None)).expect("image");
    let q = image.open_queue(8).expect("queue");
    (image, q)
}

fn fixed_op(buf: &SharedBuf, slot: u32, write: bool) -> IoOp {
    let bufs = Box::new(crate::InFixedSlot::new(buf.clone(), slot));
    match write {
        true => IoOp::Write { offset: 8192, bufs },
        false => IoOp::Read { offset: 8192, bufs },
    }
}

#[test]
fn registered_fixed_buffers_carry_reads_and_writes_and_stale_hints_are_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (image, mut q) = uring_direct_queue(&dir);
    assert!(
        q.enable_fixed_buffers(4).expect("table"),
        "no fixed buffer table"
    );
    let (src, dst) = (SharedBuf::new(4096), SharedBuf::new(4096));
    assert!(src.copy_in(0, &[0x3c; 4096]));
    assert!(
        q.register_fixed(1, Box::new(src.clone()))
            .expect("register")
    );
    assert!(
        q.register_fixed(2, Box::new(dst.clone()))
            .expect("register")
    );
    assert!(
        !q.register_fixed(9, Box::new(SharedBuf::new(4096)))
            .expect("outside")
    );
    run(&mut *q, fixed_op(&src, 1, true)).expect("write fixed");
    run(&mut *q, fixed_op(&dst, 2, false)).expect("read fixed");
    assert_eq!(dst.copy_out(), vec![0x3c; 4096]);
    assert_eq!(image.file().stats().fixed, 2);
    // A hint naming a slot that holds other memory, or an empty slot, is not used.
    run(&mut *q, fixed_op(&dst, 1, false)).expect("read, wrong slot");
    q.unregister_fixed(2).expect("unregister");
    run(&mut *q, fixed_op(&dst, 2, false)).expect("read, emptied slot");
    assert_eq!(image.file().stats().fixed, 2);
    assert_eq!(dst.copy_out(), vec![0x3c; 4096]);
}

#[test]
fn the_sync_engine_has_no_fixed_buffers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = new_image(&dir, MIN_SIZE);
    let image =
        open_image(&path, Format::Raw, &opts(EngineKind::Sync, CacheMode::None)).expect("open");
    let mut q = image.open_queue(4).expect("queue");
    assert!(!q.enable_fixed_buffers(4).expect("table"));
    assert!(
        !q.register_fixed(0, Box::new(SharedBuf::new(4096)))
            .expect("register")
    );
}

#[test]
fn a_served_raw_image_grows_its_file_or_takes_up_a_file_grown_by_its_owner() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = new_image(&dir, 1 << 20);
    let image = open_image(&path, Format::Raw, &OpenOptions::default()).expect("open");
    let mut q = image.open_queue(DEPTH).expect("queue");
    let page = vec![0x5a; 4096];
    assert!(write_at(&mut *q, 1 << 20, &page).is_err(), "past the end");
    // The owner extends the file: the storage shows it, the served size waits for `grow`.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_len(2 << 20))
        .expect("extend");
    assert_eq!(image.storage_size().expect("size"), Some(2 << 20));
    assert_eq!(image.geometry().size, 1 << 20);
    image.grow(2 << 20).expect("take up");
    write_at(&mut *q, 1 << 20, &page).expect("write past the old end");
    // Growing past the file extends it.
    image.grow(3 << 20).expect("grow");
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), 3 << 20);
    write_at(&mut *q, (3 << 20) - 4096, &page).expect("write at the new end");
    assert_eq!(
        read_at(&mut *q, (3 << 20) - 4096, 4096).expect("read"),
        page
    );
    assert!(read_at(&mut *q, 3 << 20, 4096).is_err(), "past the new end");
    assert!(matches!(image.grow(1 << 20), Err(Error::Shrink { .. })));
    assert!(image.grow((3 << 20) + 100).is_err(), "not whole sectors");
    assert_eq!(image.geometry().size, 3 << 20);
}

#[test]
fn the_fixed_buffer_probe_maps_a_page_of_the_image_itself() {
    // An image file cut to nothing under its image has no page to pin: the table is refused
    // with the probe's reason (a probe of any other memory would set one up).
    let dir = tempfile::tempdir().expect("tempdir");
    let (image, mut q) = uring_direct_queue(&dir);
    std::fs::File::options()
        .write(true)
        .open(dir.path().join("disk.img"))
        .and_then(|f| f.set_len(0))
        .expect("truncate");
    let e = q
        .enable_fixed_buffers(4)
        .expect_err("a table without a probe page");
    let source = std::error::Error::source(&e).map(ToString::to_string);
    assert!(
        source
            .as_deref()
            .is_some_and(|s| s.contains("file-backed memory")),
        "{e}: {source:?}"
    );
    drop((q, image));
    let sized = tempfile::tempdir().expect("tempdir");
    let (_image, mut q) = uring_direct_queue(&sized);
    assert!(q.enable_fixed_buffers(4).expect("table on a sized image"));
}
