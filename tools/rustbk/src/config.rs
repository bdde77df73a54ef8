//! The daemon's configuration file, `/etc/rustbk/rustbk.toml` by default.
//!
//! Every setting is a flag of `rustbk daemon`: the file is turned into those flags, placed
//! before the ones given on the command line, so a flag given there wins and the values are
//! checked exactly as flags are. The daemon hands them on to its workers.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

/// Where the daemon looks when `--config` is not given (a missing file there is no error).
pub const DEFAULT_PATH: &str = "/etc/rustbk/rustbk.toml";

/// The whole file.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Which disks are rustbk's.
    #[serde(default)]
    pub claim: Claim,
    /// Folders.
    #[serde(default)]
    pub paths: Paths,
    /// Defaults of every disk.
    #[serde(default)]
    pub disks: Disks,
}

/// `[claim]`: `--kind`, `--claim-script`, `--claim-type`.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Claim {
    /// Backend kinds watched (`vbd`, `vbd3`); empty: the daemon's default, both.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Backend `script` names.
    #[serde(default)]
    pub scripts: Vec<String>,
    /// Backend `type` values.
    #[serde(default)]
    pub types: Vec<String>,
}

/// `[paths]`: `--lock-dir`, `--image-dir`, `--backing-dir`.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Paths {
    /// Lock files, control sockets, request journals.
    pub lock_dir: Option<PathBuf>,
    /// Folders images and pools must lie in.
    #[serde(default)]
    pub image_dirs: Vec<PathBuf>,
    /// Folders backing files may lie in.
    #[serde(default)]
    pub backing_dirs: Vec<PathBuf>,
}

/// `[disks]`: the backend tunables, by their flag names with `_` for `-`.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Disks {
    /// `--cache`.
    pub cache: Option<String>,
    /// `--engine`.
    pub engine: Option<String>,
    /// `--sector-size`.
    pub sector_size: Option<u32>,
    /// `--max-queues`.
    pub max_queues: Option<u32>,
    /// `--max-ring-order`.
    pub max_ring_order: Option<u32>,
    /// `--max-indirect-segments`.
    pub max_indirect_segments: Option<u32>,
    /// `--no-persistent` when false.
    pub persistent_grants: Option<bool>,
    /// `--max-persistent-grants`.
    pub max_persistent_grants: Option<u32>,
    /// `--persistent-grant-unused-secs`.
    pub persistent_grant_unused_secs: Option<u32>,
    /// `--poll-us`.
    pub poll_us: Option<u32>,
    /// `--poll-shared-cores` when true.
    pub poll_shared_cores: Option<bool>,
    /// `--no-thin-service` when false.
    pub thin_service: Option<bool>,
    /// `--data-path`: `map` or `copy`.
    pub data_path: Option<String>,
    /// `--fixed-buffers on|off`.
    pub fixed_buffers: Option<bool>,
    /// `--qos`: the I/O limits of disks without `qos/` keys (`iops-total=500,...`).
    pub qos: Option<String>,
}

impl Config {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the configuration {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("in the configuration {}", path.display()))
    }

    /// The settings as `rustbk daemon` flags.
    pub fn to_args(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut many = |flag: &str, values: Vec<String>| {
            for v in values {
                out.extend([flag.to_owned(), v]);
            }
        };
        many("--kind", self.claim.kinds.clone());
        many("--claim-script", self.claim.scripts.clone());
        many("--claim-type", self.claim.types.clone());
        let paths = |dirs: &[PathBuf]| dirs.iter().map(|d| d.display().to_string()).collect();
        many("--image-dir", paths(&self.paths.image_dirs));
        many("--backing-dir", paths(&self.paths.backing_dirs));
        if let Some(dir) = &self.paths.lock_dir {
            many("--lock-dir", vec![dir.display().to_string()]);
        }
        let d = &self.disks;
        let one = |v: Option<String>| v.into_iter().collect::<Vec<_>>();
        let num = |v: Option<u32>| one(v.map(|n| n.to_string()));
        many("--cache", one(d.cache.clone()));
        many("--engine", one(d.engine.clone()));
        many("--sector-size", num(d.sector_size));
        many("--max-queues", num(d.max_queues));
        many("--max-ring-order", num(d.max_ring_order));
        many("--max-indirect-segments", num(d.max_indirect_segments));
        many("--max-persistent-grants", num(d.max_persistent_grants));
        many(
            "--persistent-grant-unused-secs",
            num(d.persistent_grant_unused_secs),
        );
        many("--poll-us", num(d.poll_us));
        many("--qos", one(d.qos.clone()));
        many("--data-path", one(d.data_path.clone()));
        let on_off = |v: Option<bool>| one(v.map(|b| crate::cli::on_off(b).to_owned()));
        many("--fixed-buffers", on_off(d.fixed_buffers));
        if d.persistent_grants == Some(false) {
            out.push("--no-persistent".into());
        }
        if d.poll_shared_cores == Some(true) {
            out.push("--poll-shared-cores".into());
        }
        if d.thin_service == Some(false) {
            out.push("--no-thin-service".into());
        }
        out
    }
}

/// `argv` with the configuration's flags inserted right after the `daemon` subcommand, so
/// the command line's own flags come later and win.
pub fn daemon_argv(argv: &[OsString], config: &Config) -> Vec<OsString> {
    let at = argv
        .iter()
        .skip(1)
        .position(|a| a == "daemon")
        .map_or(argv.len(), |i| i + 2);
    let mut out: Vec<OsString> = argv[..at].to_vec();
    out.extend(config.to_args().into_iter().map(OsString::from));
    out.extend_from_slice(&argv[at..]);
    out
}

/// The configuration file the daemon reads: `--config`, or the default path if it exists;
/// none with `--no-config`.
pub fn daemon_config_path(explicit: Option<&Path>, disabled: bool) -> Option<PathBuf> {
    if disabled {
        return None;
    }
    match explicit {
        Some(p) => Some(p.to_owned()),
        None => Some(PathBuf::from(DEFAULT_PATH)).filter(|p| p.exists()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file the package installs.
    const SHIPPED: &str = include_str!("../../../packaging/rustbk.toml");

    #[test]
    fn the_shipped_configuration_parses_and_names_only_defaults() {
        let c: Config = toml::from_str(SHIPPED).unwrap();
        assert_eq!(c.claim.kinds, ["vbd", "vbd3"]);
        assert_eq!(c.claim.scripts, ["rustbk"]);
        assert_eq!(c.claim.types, ["rustbk"]);
        assert_eq!(c.disks.cache.as_deref(), Some("none"));
    }

    #[test]
    fn settings_become_flags_and_unknown_keys_are_refused() {
        let c: Config = toml::from_str(
            "[claim]\nkinds = [\"vbd3\"]\nscripts = [\"a\", \"b\"]\n[paths]\nimage_dirs = [\"/srv/img\"]\n\
             [disks]\ncache = \"writeback\"\nmax_queues = 2\npersistent_grants = false\n\
             qos = \"iops-total=500\"\ndata_path = \"copy\"\nfixed_buffers = true\n",
        )
        .unwrap();
        let args = c.to_args().join(" ");
        assert_eq!(
            args,
            "--kind vbd3 --claim-script a --claim-script b --image-dir /srv/img --cache writeback \
             --max-queues 2 --qos iops-total=500 --data-path copy --fixed-buffers on \
             --no-persistent"
        );
        let err = toml::from_str::<Config>("[disks]\ncahce = \"none\"\n").unwrap_err();
        assert!(err.to_string().contains("cahce"), "{err}");
    }

    #[test]
    fn the_configuration_goes_before_the_command_lines_own_flags() {
        let c = Config {
            disks: Disks {
                cache: Some("writeback".into()),
                ..Disks::default()
            },
            ..Config::default()
        };
        let argv: Vec<OsString> = ["rustbk", "-v", "daemon", "--cache", "none"]
            .iter()
            .map(OsString::from)
            .collect();
        let out = daemon_argv(&argv, &c);
        let text: Vec<&str> = out.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            text,
            [
                "rustbk",
                "-v",
                "daemon",
                "--cache",
                "writeback",
                "--cache",
                "none"
            ]
        );
    }
}
