//! Image locking: `rustbk img` never writes an image another process uses, `convert` never
//! writes over its own source or backing files, whatever the names, and the read-only commands
//! take `-U` as qemu-img does.

use std::path::Path;

use crate::common::{Ran, at, qemu_io, qemu_ok, qemu_overlay, qemu_qcow2, rustbk, rustbk_ok, tmp};
use crate::holder::QemuWriter;

/// A 1 MiB raw image with data in it; returns its bytes.
fn raw_with_data(path: &Path) -> Vec<u8> {
    qemu_ok(&[&"create", &"-q", &"-f", &"raw", &path, &"1M"]);
    qemu_io(path, "raw", &["write -P 7 0 64k", "write -P 9 512k 4k"]);
    std::fs::read(path).expect("read image")
}

fn assert_refused(r: &Ran, what: &str, needle: &str) {
    assert_ne!(r.code, 0, "{what} succeeded: {r:?}");
    assert!(r.stderr.contains(needle), "{what}: {r:?}");
}

#[test]
fn convert_onto_its_own_source_by_any_name_is_refused_and_leaves_it_intact() {
    let dir = tmp();
    let src = at(&dir, "x.raw");
    let bytes = raw_with_data(&src);
    std::os::unix::fs::symlink("x.raw", at(&dir, "link")).expect("symlink");
    std::fs::hard_link(&src, at(&dir, "hard")).expect("hard link");
    let dotted = dir.path().join(".").join("x.raw");
    for dst in [src.clone(), dotted, at(&dir, "link"), at(&dir, "hard")] {
        for format in ["raw", "qcow2"] {
            let r = rustbk(&[&"convert", &"-O", &format, &src, &dst]);
            let what = format!("convert x.raw {} -O {format}", dst.display());
            assert_refused(&r, &what, "is the source image");
            assert!(
                std::fs::read(&src).expect("read") == bytes,
                "{what} changed x.raw"
            );
        }
    }
}

#[test]
fn convert_onto_a_backing_file_of_its_source_is_refused_and_leaves_it_intact() {
    let dir = tmp();
    let base = at(&dir, "base.raw");
    let bytes = raw_with_data(&base);
    let mid = at(&dir, "mid.qcow2");
    qemu_overlay(&mid, "base.raw", "raw", None);
    let top = at(&dir, "top.qcow2");
    qemu_overlay(&top, "mid.qcow2", "qcow2", None);
    let mid_bytes = std::fs::read(&mid).expect("read mid");
    for dst in [base.clone(), dir.path().join("./base.raw"), mid.clone()] {
        let r = rustbk(&[&"convert", &"-O", &"raw", &top, &dst]);
        assert_refused(
            &r,
            "convert onto a backing file",
            "a backing file of the source",
        );
    }
    assert!(
        std::fs::read(&base).expect("read") == bytes,
        "base.raw changed"
    );
    assert!(
        std::fs::read(&mid).expect("read") == mid_bytes,
        "mid.qcow2 changed"
    );
    rustbk_ok(&[&"convert", &"-O", &"raw", &top, &at(&dir, "copy.raw")]);
}

#[test]
fn convert_into_a_directory_says_it_is_a_directory() {
    let dir = tmp();
    let src = at(&dir, "x.raw");
    raw_with_data(&src);
    let folder = at(&dir, "folder");
    std::fs::create_dir(&folder).expect("mkdir");
    for format in ["raw", "qcow2"] {
        let r = rustbk(&[&"convert", &"-O", &format, &src, &folder]);
        assert_refused(&r, "convert into a directory", "Is a directory");
        assert!(!r.stderr.contains("File exists"), "{r:?}");
        let r = rustbk(&[&"create", &"-f", &format, &folder, &"1M"]);
        assert_refused(&r, "create a directory", "Is a directory");
    }
}

#[test]
fn commands_that_write_refuse_an_image_qemu_io_holds_for_writing() {
    let dir = tmp();
    let raw = at(&dir, "held.raw");
    let raw_bytes = raw_with_data(&raw);
    let qcow2 = at(&dir, "held.qcow2");
    qemu_qcow2(&qcow2, "1M", &["write -P 5 0 64k"]);
    let qcow2_bytes = std::fs::read(&qcow2).expect("read");
    let src = at(&dir, "other.raw");
    raw_with_data(&src);
    let _raw_writer = QemuWriter::hold(&raw, "raw");
    let _qcow2_writer = QemuWriter::hold(&qcow2, "qcow2");
    for (image, format) in [(&raw, "raw"), (&qcow2, "qcow2")] {
        let r = rustbk(&[&"resize", image, &"2M"]);
        assert_refused(&r, &format!("resize {format}"), "\"write\" lock");
        let r = rustbk(&[&"convert", &"-O", &format, &src, image]);
        assert_refused(&r, &format!("convert onto {format}"), "\"write\" lock");
        let r = rustbk(&[&"create", &"-f", &format, image, &"1M"]);
        assert_ne!(r.code, 0, "create over {format}: {r:?}");
    }
    let r = rustbk(&[&"check", &"-r", &"all", &qcow2]);
    assert_refused(&r, "check -r all", "\"write\" lock");
    assert!(
        std::fs::read(&raw).expect("read") == raw_bytes,
        "held.raw changed"
    );
    assert!(
        std::fs::read(&qcow2).expect("read") == qcow2_bytes,
        "held.qcow2 changed"
    );
}

#[test]
fn read_only_commands_refuse_an_image_being_written_unless_force_shared() {
    let dir = tmp();
    let image = at(&dir, "held.qcow2");
    qemu_qcow2(&image, "1M", &["write -P 5 0 64k"]);
    let copy = at(&dir, "copy.qcow2");
    std::fs::copy(&image, &copy).expect("copy");
    let _writer = QemuWriter::hold(&image, "qcow2");
    let out = at(&dir, "out.raw");
    let commands: [Vec<&dyn AsRef<std::ffi::OsStr>>; 5] = [
        vec![&"info", &image],
        vec![&"map", &image],
        vec![&"check", &image],
        vec![&"compare", &image, &copy],
        vec![&"convert", &"-O", &"raw", &image, &out],
    ];
    for args in commands {
        let r = rustbk(&args);
        assert_refused(
            &r,
            &format!("{:?}", args[0].as_ref()),
            "shared \"write\" lock",
        );
        let mut forced = args.clone();
        forced.insert(1, &"-U");
        let r = rustbk(&forced);
        assert_eq!(r.code, 0, "{:?} -U: {r:?}", args[0].as_ref());
    }
    let r = rustbk(&[&"check", &"-U", &"-r", &"leaks", &image]);
    assert_ne!(r.code, 0, "check -U -r must be refused: {r:?}");
}
