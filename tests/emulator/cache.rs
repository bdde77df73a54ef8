//! Cache modes per disk: the backend directory's `cache-mode` key, else `--cache`, decides how
//! the backend opens the image, seen from outside in `/proc/<pid>/fdinfo` (O_DIRECT, O_DSYNC on
//! its writable descriptors of the image), and the guest's data is served in every mode.

use std::collections::BTreeSet;
use std::path::Path;

use rustbk_blkfront::toolstack::VbdSpec;
use rustbk_formats::{CacheMode, Format, IoOp, OpenOptions, SharedBuf};
use rustbk_ring::{RwOp, status};

use crate::harness::{GUEST, Host, Setup, XVDA, pattern};
use crate::qcow2::qcow2;

/// `(O_DIRECT, O_DSYNC)` of each writable descriptor of a file.
pub type Flags = BTreeSet<(bool, bool)>;

/// Data written at a sector.
type Written = Vec<(u64, Vec<u8>)>;

/// `(O_DIRECT, O_DSYNC)` of every writable descriptor process `pid` holds on `image`.
pub fn open_flags(pid: u32, image: &Path) -> Flags {
    let image = image.canonicalize().expect("image path");
    let mut found = BTreeSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("/proc fd") {
        let entry = entry.expect("fd entry");
        if std::fs::read_link(entry.path()).ok().as_deref() != Some(image.as_path()) {
            continue;
        }
        let fd = entry.file_name().into_string().expect("fd number");
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).expect("fdinfo");
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| i32::from_str_radix(f.trim(), 8).ok())
            .expect("flags in fdinfo");
        if flags & nix::libc::O_ACCMODE == nix::libc::O_RDWR {
            let has = |bit: i32| flags & bit == bit;
            found.insert((has(nix::libc::O_DIRECT), has(nix::libc::O_DSYNC)));
        }
    }
    found
}

/// The writable descriptors a backend in `mode` holds on an image of this ext4 host: the
/// page-cached one, and an O_DIRECT one where the mode asks for it.
pub fn expected_flags(mode: CacheMode) -> Flags {
    let mut fds = BTreeSet::from([(false, mode.dsync())]);
    if mode.direct() {
        fds.insert((true, mode.dsync()));
    }
    fds
}

fn setup(format: Option<&'static str>, key: Option<&str>, args: &[&str]) -> Setup {
    Setup {
        format,
        cache_mode: key.map(str::to_owned),
        backend_args: args.iter().map(|a| (*a).to_owned()).collect(),
        ..Setup::default()
    }
}

fn host(setup: Setup) -> Host {
    match setup.format {
        Some("qcow2") => Host::serving(setup, |dir| {
            qcow2(dir, "disk.qcow2", "cluster_size=65536", None)
        }),
        Some("vmdk") => Host::serving(setup, |dir| {
            let image = dir.join("disk.vmdk");
            let sub = rustbk_formats::vmdk::create::Subformat::MonolithicSparse;
            rustbk_formats::vmdk::create::create(&image, 64 << 20, sub, None).expect("vmdk");
            image
        }),
        _ => Host::new(setup),
    }
}

fn backend_flags(host: &Host) -> Flags {
    let pid = host.cluster.backend_pid(&host.spec).expect("backend pid");
    open_flags(pid, &host.image)
}

/// Connects a guest, which writes at three places, flushes and reads back. Returns the
/// flags of the backend's descriptors once the guest connected, and what was written where.
fn guest_io(host: &Host, seed: u8) -> (Flags, Written) {
    let mut g = host.guest();
    let flags = backend_flags(host);
    let writes: Written = [8u64, 2048, 65536]
        .iter()
        .enumerate()
        .map(|(i, &sector)| (sector, pattern(16 << 10, seed.wrapping_add(i as u8))))
        .collect();
    for (sector, data) in &writes {
        assert_eq!(
            g.write(*sector, data),
            status::OKAY,
            "{}",
            host.backend_log()
        );
    }
    let flush = g.no_data(RwOp::Flush);
    g.send(&flush);
    assert_eq!(g.wait(flush.id()).status, status::OKAY);
    for (sector, data) in &writes {
        assert_eq!(g.read(*sector, 4), (status::OKAY, data.clone()));
    }
    g.front.close().expect("close");
    (flags, writes)
}

/// The image as rustbk's own reader sees it once the backend is gone.
fn read_back(image: &Path, format: Format, writes: &[(u64, Vec<u8>)]) {
    let opts = OpenOptions {
        read_only: true,
        cache: CacheMode::Writeback,
        ..OpenOptions::default()
    };
    let img = rustbk_formats::open_image(image, format, &opts).expect("reopen");
    let mut q = img.open_queue(1).expect("queue");
    for (sector, data) in writes {
        let buf = SharedBuf::new(data.len());
        let op = IoOp::Read {
            offset: sector * 512,
            bufs: Box::new(buf.clone()),
        };
        rustbk_formats::suite::run(&mut *q, op).expect("read");
        assert_eq!(
            &buf.copy_out(),
            data,
            "{} at sector {sector}",
            image.display()
        );
    }
}

#[test]
fn every_cache_mode_of_the_backend_key_opens_the_image_so_and_serves_the_data() {
    let formats = [
        (Format::Raw, None),
        (Format::Qcow2, Some("qcow2")),
        (Format::Vmdk, Some("vmdk")),
    ];
    for (format, prefix) in formats {
        for (i, mode) in CacheMode::ALL.into_iter().enumerate() {
            let name = mode.to_string();
            // The key wins over the command line's default.
            let mut host = host(setup(prefix, Some(&name), &["--cache", "writeback"]));
            let context = format!("{format:?} in {mode}");
            let (flags, writes) = guest_io(&host, i as u8);
            assert_eq!(flags, expected_flags(mode), "{context}");
            host.cluster.remove_disk(&host.spec).expect("remove disk");
            read_back(&host.image, format, &writes);
            assert!(
                host.backend_log().contains(&format!("cache={name}")),
                "{context}"
            );
        }
    }
}

#[test]
fn without_the_key_the_command_line_chooses_and_buffered_is_writeback() {
    let cases: [(&[&str], CacheMode); 4] = [
        (&[], CacheMode::None),
        (&["--cache", "writethrough"], CacheMode::Writethrough),
        (&["--cache=directsync"], CacheMode::DirectSync),
        (&["--buffered"], CacheMode::Writeback),
    ];
    for (args, mode) in cases {
        let mut host = host(setup(None, None, args));
        let (flags, writes) = guest_io(&host, 9);
        assert_eq!(flags, expected_flags(mode), "{args:?}");
        host.cluster.remove_disk(&host.spec).expect("remove disk");
        read_back(&host.image, Format::Raw, &writes);
    }
}

#[test]
fn an_unknown_cache_mode_fails_the_device_with_an_error_node_naming_it() {
    let error = crate::harness::refused_error(1 << 20, |image| VbdSpec {
        cache_mode: Some("fast".into()),
        ..VbdSpec::rustbk(GUEST, XVDA, image.display().to_string())
    });
    assert!(
        error.starts_with("22 ") && error.contains("cache-mode") && error.contains("\"fast\""),
        "error node: {error:?}"
    );
    assert!(
        error.contains("writethrough"),
        "the modes are listed: {error:?}"
    );
}
