//! qemu-img: creating images and checking them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs qemu-img (which must be installed) and returns its output, whatever its exit code.
pub fn run(args: &[&str]) -> Output {
    Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img (package qemu-utils) must be installed")
}

/// Runs qemu-img and asserts success.
pub fn ok(args: &[&str]) -> Output {
    let out = run(args);
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// What to create.
#[derive(Clone, Debug)]
pub struct Spec {
    pub cluster_size: u64,
    /// "0.10" or "1.1".
    pub compat: &'static str,
    /// Refcount width (16 unless set; version 3 only).
    pub refcount_bits: u32,
    pub size: u64,
    /// A backing file and its format.
    pub backing: Option<(PathBuf, &'static str)>,
}

/// Creates a qcow2 image with `qemu-img create -f qcow2`.
pub fn create(path: &Path, spec: &Spec) -> PathBuf {
    let opts = format!(
        "cluster_size={},compat={},refcount_bits={}",
        spec.cluster_size, spec.compat, spec.refcount_bits
    );
    let mut args: Vec<String> = ["create", "-q", "-f", "qcow2", "-o", &opts]
        .map(String::from)
        .to_vec();
    if let Some((backing, format)) = &spec.backing {
        args.extend(["-b".into(), backing.display().to_string()]);
        args.extend(["-F".into(), (*format).to_owned()]);
    }
    args.extend([path.display().to_string(), spec.size.to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&args);
    path.to_owned()
}

/// The counts `qemu-img check --output=json` reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Check {
    pub corruptions: u64,
    pub leaks: u64,
    pub check_errors: u64,
}

/// `qemu-img check` (or `check -r leaks` with `repair_leaks`) of `path`.
pub fn check(path: &Path, repair_leaks: bool) -> Result<Check, String> {
    let p = path.display().to_string();
    let mut args = vec!["check", "--output=json"];
    if repair_leaks {
        args.extend(["-r", "leaks"]);
    }
    args.push(&p);
    let out = run(&args);
    let text = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        format!(
            "qemu-img check {p}: exit {:?}, unreadable output ({e}): {text}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let count = |key: &str| {
        json.get(key)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    };
    let c = Check {
        corruptions: count("corruptions"),
        leaks: count("leaks"),
        check_errors: count("check-errors"),
    };
    if repair_leaks {
        // After a repair the remaining counts are the ones that matter.
        return Ok(Check {
            leaks: count("leaks").saturating_sub(count("leaks-fixed")),
            ..c
        });
    }
    Ok(c)
}

/// Asserts the crash-safety contract: no corruption (leaks allowed), and `check -r leaks`
/// leaves the image clean. Returns the leaks found.
pub fn check_crash_safe(path: &Path, context: &str) -> u64 {
    let first = check(path, false).unwrap_or_else(|e| panic!("{context}: {e}"));
    assert_eq!(
        (first.corruptions, first.check_errors),
        (0, 0),
        "{context}: qemu-img check found corruption: {first:?}\n{}",
        String::from_utf8_lossy(&run(&["check", &path.display().to_string()]).stdout)
    );
    if first.leaks > 0 {
        check(path, true).unwrap_or_else(|e| panic!("{context}: {e}"));
        let after = check(path, false).unwrap_or_else(|e| panic!("{context}: {e}"));
        assert_eq!(
            after,
            Check::default(),
            "{context}: not clean after -r leaks"
        );
    }
    first.leaks
}

/// The guest-visible bytes of `image`, through `qemu-img convert -O raw`.
pub fn read_raw(image: &Path, scratch: &Path) -> Vec<u8> {
    let (i, s) = (image.display().to_string(), scratch.display().to_string());
    ok(&["convert", "-O", "raw", &i, &s]);
    let data = std::fs::read(scratch).expect("read converted image");
    std::fs::remove_file(scratch).expect("remove converted image");
    data
}
