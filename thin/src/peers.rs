//! The peer tools: thin-provisioning-tools 0.9 (bookworm's C++ package, in /usr/sbin) and 1.1
//! (trixie's Rust rewrite, unpacked by scripts/setup.sh under
//! `${RUSTBK_CACHE:-/var/cache/rustbk}/thin-tools/current`).
//!
//! A missing or wrong tool fails the test that asked for it, with a message that says to run
//! scripts/setup.sh: interop tests never skip. Test support: built for this crate's tests and,
//! with the `peers` feature, for the tests of other crates.

#![allow(dead_code)] // Each test binary uses its own part of this module.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// Size of the metadata files [`new_metadata_file`] makes by default.
pub const DEFAULT_METADATA_BYTES: u64 = 16 << 20;

/// One of the two peer versions of thin-provisioning-tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// 0.9, the C++ tools of Debian bookworm.
    V0_9,
    /// 1.1, the Rust tools of Debian trixie.
    V1_1,
}

impl Peer {
    /// Both versions, oldest first.
    pub const ALL: [Peer; 2] = [Peer::V0_9, Peer::V1_1];

    /// The version prefix `thin_check -V` prints.
    pub fn version_prefix(self) -> &'static str {
        match self {
            Peer::V0_9 => "0.9.",
            Peer::V1_1 => "1.1.",
        }
    }

    /// The directory holding this version's tools.
    pub fn dir(self) -> PathBuf {
        match self {
            Peer::V0_9 => PathBuf::from("/usr/sbin"),
            Peer::V1_1 => {
                let cache =
                    std::env::var_os("RUSTBK_CACHE").unwrap_or_else(|| "/var/cache/rustbk".into());
                Path::new(&cache).join("thin-tools/current")
            }
        }
    }

    /// The version `thin_check -V` reports, checked once per test binary against the expected
    /// prefix. Panics if the tools are missing or of another version.
    pub fn version(self) -> &'static str {
        static VERSIONS: [OnceLock<String>; 2] = [OnceLock::new(), OnceLock::new()];
        VERSIONS[self as usize].get_or_init(|| {
            let check = existing_tool(self, "thin_check");
            let output = Command::new(&check).arg("-V").output().unwrap_or_else(|e| {
                panic!("cannot run {}: {e}; run scripts/setup.sh", check.display())
            });
            let version = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            assert!(
                output.status.success() && version.starts_with(self.version_prefix()),
                "{} -V says {version:?} ({}), not {}x: run scripts/setup.sh",
                check.display(),
                output.status,
                self.version_prefix()
            );
            version
        })
    }
}

fn existing_tool(peer: Peer, name: &str) -> PathBuf {
    let path = peer.dir().join(name);
    assert!(
        path.is_file(),
        "{name} of thin-provisioning-tools {peer:?} is missing at {}: run scripts/setup.sh",
        path.display()
    );
    path
}

/// The path of tool `name` (e.g. "thin_check") of `peer`. Panics with a clear message when the
/// tool is missing or is not of the expected version.
pub fn tool(peer: Peer, name: &str) -> PathBuf {
    peer.version();
    existing_tool(peer, name)
}

/// Runs tool `name` of `peer` with `args`.
pub fn run(peer: Peer, name: &str, args: &[&Path]) -> Output {
    let path = tool(peer, name);
    Command::new(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()))
}

/// What a failed run printed, for the `Err` side of the helpers.
fn failure(name: &str, output: &Output) -> String {
    format!(
        "{name} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    )
}

/// Creates (or truncates) `path` as a zeroed metadata file of `bytes` bytes, as thin_restore
/// needs its output to exist with room for the metadata.
pub fn new_metadata_file(path: &Path, bytes: u64) {
    let file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    file.set_len(bytes)
        .unwrap_or_else(|e| panic!("cannot size {}: {e}", path.display()));
}

/// `thin_check metadata`: its standard output on success, what it printed on failure.
pub fn thin_check(peer: Peer, metadata: &Path) -> Result<String, String> {
    let output = run(peer, "thin_check", &[metadata]);
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(failure("thin_check", &output))
    }
}

/// `thin_dump metadata`: the XML on success, what it printed on failure.
pub fn thin_dump(peer: Peer, metadata: &Path) -> Result<String, String> {
    let output = run(peer, "thin_dump", &[metadata]);
    if output.status.success() {
        String::from_utf8(output.stdout).map_err(|e| format!("thin_dump printed non-UTF-8: {e}"))
    } else {
        Err(failure("thin_dump", &output))
    }
}

/// `thin_restore -i xml -o metadata`; `metadata` must exist and be large enough (see
/// [`new_metadata_file`]). What it printed on failure.
pub fn thin_restore(peer: Peer, xml: &Path, metadata: &Path) -> Result<(), String> {
    let output = run(
        peer,
        "thin_restore",
        &[Path::new("-i"), xml, Path::new("-o"), metadata],
    );
    if output.status.success() {
        Ok(())
    } else {
        Err(failure("thin_restore", &output))
    }
}

/// Writes `xml` to `dir/name.xml`, makes `dir/name.meta` of [`DEFAULT_METADATA_BYTES`] and
/// restores the XML into it with `peer`; returns the metadata file's path.
pub fn restore_str(peer: Peer, dir: &Path, name: &str, xml: &str) -> Result<PathBuf, String> {
    let xml_path = dir.join(format!("{name}.xml"));
    std::fs::write(&xml_path, xml)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", xml_path.display()));
    let metadata = dir.join(format!("{name}.meta"));
    new_metadata_file(&metadata, DEFAULT_METADATA_BYTES);
    thin_restore(peer, &xml_path, &metadata)?;
    Ok(metadata)
}
