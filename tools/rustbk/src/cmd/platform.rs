//! Choosing the platform and backend options from the command line.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use rustbk_backend::xenbus::{BackendOptions, ClaimRules, default_max_queues};
use rustbk_formats::EngineKind;
use rustbk_grant::Platform;
use rustbk_grant::emu::EmuPlatform;
use rustbk_ring::DomId;

use crate::cli::{BackendArgs, EngineArg, PlatformArgs};

/// `rustbk_ring::MAX_INDIRECT_SEGMENTS` (4096), as the u32 xenstore carries.
const MAX_INDIRECT: u32 = 4096;

/// The emulated platform if `--emu-dir` was given, else real Xen.
pub fn platform(args: &PlatformArgs) -> anyhow::Result<Arc<dyn Platform>> {
    let local = DomId(args.backend_domid);
    Ok(match &args.emu_dir {
        Some(dir) => Arc::new(EmuPlatform::new(dir, local)),
        None => Arc::new(rustbk_grant::xen::XenPlatform::new(local)?),
    })
}

/// Which vbds are rustbk's: the `--claim-*` flags, or rustbk's defaults without any.
pub fn claim_rules(platform: &PlatformArgs) -> ClaimRules {
    if platform.claim_scripts.is_empty() && platform.claim_types.is_empty() {
        return ClaimRules::default();
    }
    ClaimRules {
        scripts: platform.claim_scripts.clone(),
        types: platform.claim_types.clone(),
    }
}

/// The `--kind` list, each kind once, in the order given (the configuration file's kinds and
/// the command line's add up).
pub fn kinds(platform: &PlatformArgs) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for kind in &platform.kinds {
        if !out.contains(kind) {
            out.push(kind.clone());
        }
    }
    out
}

/// Where per-guest lock files go.
pub fn lock_dir(platform: &PlatformArgs) -> PathBuf {
    match (&platform.lock_dir, &platform.emu_dir) {
        (Some(dir), _) => dir.clone(),
        (None, Some(emu)) => emu.clone(),
        (None, None) => PathBuf::from("/run/rustbk"),
    }
}

/// Backend options from the flags; the request journals go to the lock folder.
pub fn options(args: &BackendArgs, platform: &PlatformArgs) -> anyhow::Result<BackendOptions> {
    Ok(BackendOptions {
        max_ring_order: args.max_ring_order.min(rustbk_ring::MAX_RING_PAGE_ORDER),
        max_queues: args.max_queues.unwrap_or_else(default_max_queues),
        max_indirect_segments: args.max_indirect_segments.min(MAX_INDIRECT),
        engine: match args.engine {
            EngineArg::Auto => EngineKind::Auto,
            EngineArg::IoUring => EngineKind::IoUring,
            EngineArg::Sync => EngineKind::Sync,
        },
        cache: args.cache_mode(),
        persistent: !args.no_persistent,
        max_persistent_grants: args.max_persistent_grants.map(|n| n as usize),
        persistent_grant_unused: (args.persistent_grant_unused_secs > 0)
            .then(|| Duration::from_secs(args.persistent_grant_unused_secs.into())),
        sector_size: args.sector_size,
        poll_us: args.poll_us,
        poll_shared_cores: args.poll_shared_cores,
        data_path: args.data_path,
        fixed_buffers: args.fixed_buffers,
        backing_dirs: backing_dirs(args)?,
        image_dirs: canonical_dirs(&args.image_dirs, "--image-dir")?,
        journal_dir: lock_dir(platform),
        thin_service: match args.no_thin_service {
            true => None,
            false => Some(std::env::current_exe().context("the rustbk executable")?),
        },
        qos: args.qos.unwrap_or_default(),
    })
}

/// The `--backing-dir` folders, symlinks resolved; each must exist.
pub fn backing_dirs(args: &BackendArgs) -> anyhow::Result<Vec<PathBuf>> {
    canonical_dirs(&args.backing_dirs, "--backing-dir")
}

/// Folders given with `flag`, symlinks resolved; each must exist.
pub fn canonical_dirs(dirs: &[PathBuf], flag: &str) -> anyhow::Result<Vec<PathBuf>> {
    let canonical = |dir: &PathBuf| {
        std::fs::canonicalize(dir)
            .with_context(|| format!("{flag} {}", dir.display()))
            .and_then(|real| {
                anyhow::ensure!(real.is_dir(), "{flag} {}: not a folder", dir.display());
                Ok(real)
            })
    };
    dirs.iter().map(canonical).collect()
}

/// The same flags as arguments, to pass on to a worker process.
pub fn to_args(platform: &PlatformArgs, backend: &BackendArgs) -> Vec<String> {
    let mut out = vec!["--backend-domid".into(), platform.backend_domid.to_string()];
    if let Some(dir) = &platform.emu_dir {
        out.extend(["--emu-dir".into(), dir.display().to_string()]);
    }
    for kind in kinds(platform) {
        out.extend(["--kind".into(), kind]);
    }
    for name in &platform.claim_scripts {
        out.extend(["--claim-script".into(), name.clone()]);
    }
    for name in &platform.claim_types {
        out.extend(["--claim-type".into(), name.clone()]);
    }
    out.extend([
        "--lock-dir".into(),
        lock_dir(platform).display().to_string(),
    ]);
    out.extend(backend_args(backend));
    out
}

/// The backend tunables as arguments of `rustbk serve`.
pub fn backend_args(backend: &BackendArgs) -> Vec<String> {
    let mut out = Vec::new();
    let engine = match backend.engine {
        EngineArg::Auto => "auto",
        EngineArg::IoUring => "io-uring",
        EngineArg::Sync => "sync",
    };
    out.extend(["--engine".into(), engine.into()]);
    out.extend([
        "--max-ring-order".into(),
        backend.max_ring_order.to_string(),
    ]);
    out.extend([
        "--max-indirect-segments".into(),
        backend.max_indirect_segments.to_string(),
    ]);
    if let Some(n) = backend.max_queues {
        out.extend(["--max-queues".into(), n.to_string()]);
    }
    out.extend(["--sector-size".into(), backend.sector_size.to_string()]);
    out.extend(["--poll-us".into(), backend.poll_us.to_string()]);
    if backend.poll_shared_cores {
        out.push("--poll-shared-cores".into());
    }
    out.extend(["--cache".into(), backend.cache_mode().to_string()]);
    if backend.no_persistent {
        out.push("--no-persistent".into());
    }
    out.extend(["--data-path".into(), backend.data_path.to_string()]);
    out.extend([
        "--fixed-buffers".into(),
        crate::cli::on_off(backend.fixed_buffers).into(),
    ]);
    if backend.no_thin_service {
        out.push("--no-thin-service".into());
    }
    if let Some(n) = backend.max_persistent_grants {
        out.extend(["--max-persistent-grants".into(), n.to_string()]);
    }
    out.extend([
        "--persistent-grant-unused-secs".into(),
        backend.persistent_grant_unused_secs.to_string(),
    ]);
    for dir in &backend.backing_dirs {
        out.extend(["--backing-dir".into(), dir.display().to_string()]);
    }
    for dir in &backend.image_dirs {
        out.extend(["--image-dir".into(), dir.display().to_string()]);
    }
    if let Some(qos) = &backend.qos {
        out.extend(["--qos".into(), qos.to_string()]);
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use rustbk_formats::CacheMode;

    use crate::cli::BackendArgs;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        backend: BackendArgs,
    }

    fn parse(args: &[&str]) -> Result<BackendArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("serve").chain(args.iter().copied())).map(|c| c.backend)
    }

    #[test]
    fn the_cache_mode_reaches_the_worker_command_line() {
        let cases: [(&[&str], CacheMode); 4] = [
            (&[], CacheMode::None),
            (&["--cache", "unsafe"], CacheMode::Unsafe),
            (&["--cache=directsync"], CacheMode::DirectSync),
            (&["--buffered"], CacheMode::Writeback),
        ];
        for (args, mode) in cases {
            let parsed = parse(args).expect("parse");
            assert_eq!(parsed.cache_mode(), mode, "{args:?}");
            let passed = super::backend_args(&parsed);
            let passed: Vec<&str> = passed.iter().map(String::as_str).collect();
            assert_eq!(
                parse(&passed).expect("reparse").cache_mode(),
                mode,
                "{passed:?}"
            );
        }
    }

    #[test]
    fn max_queues_reaches_the_worker_command_line_and_defaults_to_the_cores() {
        let parsed = parse(&["--max-queues", "3"]).expect("parse");
        let passed = super::backend_args(&parsed);
        let passed: Vec<&str> = passed.iter().map(String::as_str).collect();
        assert_eq!(parse(&passed).expect("reparse").max_queues, Some(3));
        let platform = crate::cli::PlatformArgs {
            emu_dir: None,
            backend_domid: 0,
            kinds: vec!["vbd".into()],
            lock_dir: None,
            claim_scripts: Vec::new(),
            claim_types: Vec::new(),
        };
        let opts = super::options(&parse(&[]).expect("parse"), &platform).expect("options");
        assert_eq!(
            opts.max_queues,
            rustbk_backend::xenbus::default_max_queues()
        );
        assert!(parse(&["--max-queues", "0"]).is_err());
    }

    #[test]
    fn the_data_path_and_fixed_buffers_reach_the_worker_command_line() {
        use rustbk_backend::worker::DataPath;
        let defaults = parse(&[]).expect("parse");
        assert_eq!(defaults.data_path, DataPath::Map);
        assert_eq!(
            defaults.fixed_buffers,
            rustbk_backend::xenbus::DEFAULT_FIXED_BUFFERS
        );
        for (path, fixed) in [("copy", "on"), ("map", "off"), ("map", "on")] {
            let parsed = parse(&["--data-path", path, "--fixed-buffers", fixed]).expect("parse");
            let passed = super::backend_args(&parsed);
            let passed: Vec<&str> = passed.iter().map(String::as_str).collect();
            let again = parse(&passed).expect("reparse");
            assert_eq!(again.data_path.name(), path);
            assert_eq!(again.fixed_buffers, fixed == "on");
        }
        assert!(parse(&["--data-path", "mmap"]).is_err());
        assert!(parse(&["--fixed-buffers", "yes"]).is_err());
    }

    #[test]
    fn qos_defaults_reach_the_worker_command_line_and_bad_ones_are_refused() {
        let list = "bps-read=1048576,iops-total=500,iops-total-max=1000";
        let parsed = parse(&["--qos", list]).expect("parse");
        let passed = super::backend_args(&parsed);
        let passed: Vec<&str> = passed.iter().map(String::as_str).collect();
        let again = parse(&passed).expect("reparse").qos.expect("qos passed on");
        assert_eq!(again.to_string(), list);
        let platform = crate::cli::PlatformArgs {
            emu_dir: None,
            backend_domid: 0,
            kinds: vec!["vbd".into()],
            lock_dir: None,
            claim_scripts: Vec::new(),
            claim_types: Vec::new(),
        };
        let opts = super::options(&parsed, &platform).expect("options");
        assert_eq!(opts.qos, again);
        assert!(
            super::options(&parse(&[]).unwrap(), &platform)
                .unwrap()
                .qos
                .is_unlimited()
        );
        for bad in [
            "iops-total=1,iops-read=1",
            "iops_total=5",
            "bps-total=-1",
            "iops-total",
        ] {
            let err = parse(&["--qos", bad]).expect_err(bad).to_string();
            assert!(err.contains("--qos"), "{bad}: {err}");
        }
    }

    #[test]
    fn kinds_from_the_file_and_the_command_line_reach_the_worker_once_each() {
        let platform = crate::cli::PlatformArgs {
            emu_dir: None,
            backend_domid: 0,
            kinds: ["vbd", "vbd3", "vbd"].map(String::from).to_vec(),
            lock_dir: None,
            claim_scripts: Vec::new(),
            claim_types: Vec::new(),
        };
        assert_eq!(super::kinds(&platform), ["vbd", "vbd3"]);
        let args = super::to_args(&platform, &parse(&[]).expect("parse"));
        let kinds: Vec<&str> = args
            .windows(2)
            .filter(|w| w[0] == "--kind")
            .map(|w| w[1].as_str())
            .collect();
        assert_eq!(kinds, ["vbd", "vbd3"]);
    }

    #[test]
    fn unknown_cache_modes_and_buffered_with_cache_are_refused() {
        let err = parse(&["--cache", "fast"]).expect_err("fast");
        assert!(err.to_string().contains("writethrough"), "{err}");
        assert!(parse(&["--buffered", "--cache", "none"]).is_err());
    }
}
