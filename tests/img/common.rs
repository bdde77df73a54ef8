//! Running `rustbk img` and the QEMU tools.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Output of a command: exit code, stdout, stderr.
#[derive(Debug)]
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

fn ran(out: Output) -> Ran {
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn args_of(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<std::ffi::OsString> {
    args.iter().map(|a| a.as_ref().to_owned()).collect()
}

/// Runs `rustbk img ARGS`.
pub fn rustbk(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Ran {
    let out = Command::new(env!("CARGO_BIN_EXE_rustbk"))
        .arg("img")
        .args(args_of(args))
        .output()
        .expect("run rustbk");
    ran(out)
}

/// Runs `qemu-img ARGS`.
pub fn qemu_img(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Ran {
    let out = Command::new("qemu-img")
        .args(args_of(args))
        .output()
        .expect("qemu-img is required (Debian package qemu-utils)");
    ran(out)
}

/// Runs `rustbk img ARGS`, asserting exit status 0; returns stdout.
pub fn rustbk_ok(args: &[&dyn AsRef<std::ffi::OsStr>]) -> String {
    let r = rustbk(args);
    assert_eq!(r.code, 0, "rustbk img {:?}: {r:?}", args_of(args));
    r.stdout
}

/// Runs `qemu-img ARGS`, asserting exit status 0; returns stdout.
pub fn qemu_ok(args: &[&dyn AsRef<std::ffi::OsStr>]) -> String {
    let r = qemu_img(args);
    assert_eq!(r.code, 0, "qemu-img {:?}: {r:?}", args_of(args));
    r.stdout
}

/// Runs qemu-io commands on an image (format given), asserting success.
pub fn qemu_io(image: &Path, format: &str, cmds: &[&str]) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", format]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    let out = c
        .arg(image)
        .output()
        .expect("qemu-io is required (Debian package qemu-utils)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !text.contains("failed"),
        "qemu-io {cmds:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fresh temporary folder.
pub fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("rustbk-img-")
        .tempdir()
        .expect("tempdir")
}

/// `dir/name`.
pub fn at(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

/// Makes `child` (in `base`'s folder) a differencing VHD over `base`, named relatively, with
/// `rustbk img create -f vpc -b NAME -F vpc`.
pub fn vhd_child(base: &Path, child: &Path) {
    let name = base.file_name().expect("base file name");
    rustbk_ok(&[
        &"create", &"-f", &"vpc", &"-b", &name, &"-F", &"vpc", &child,
    ]);
}

/// Parses JSON output.
pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("bad JSON ({e}): {text}"))
}

/// A qcow2 overlay made by qemu-img over `backing` (named as the image will store it) of format
/// `backing_format`; its size is the backing file's unless `size` is given.
pub fn qemu_overlay(top: &Path, backing: &str, backing_format: &str, size: Option<&str>) {
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"create", &"-q", &"-f", &"qcow2"];
    args.extend([
        &"-b" as &dyn AsRef<std::ffi::OsStr>,
        &backing,
        &"-F",
        &backing_format,
        &top,
    ]);
    if let Some(size) = &size {
        args.push(size);
    }
    qemu_ok(&args);
}

/// A qcow2 image (64 KiB clusters) of `size` made by qemu-img, with qemu-io commands run on it.
pub fn qemu_qcow2(path: &Path, size: &str, cmds: &[&str]) {
    qemu_ok(&[&"create", &"-q", &"-f", &"qcow2", &path, &size]);
    if !cmds.is_empty() {
        qemu_io(path, "qcow2", cmds);
    }
}
