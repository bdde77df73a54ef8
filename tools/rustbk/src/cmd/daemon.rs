//! `rustbk daemon`: serve every claimed disk, one worker process per guest.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use rustbk_backend::daemon::{DaemonConfig, run_daemon};
use rustbk_backend::xenbus::Store;
use rustbk_ring::DomId;
use tokio::signal::unix::{SignalKind, signal};

use super::platform::{backing_dirs, canonical_dirs, claim_rules, kinds, lock_dir, to_args};
use crate::cli::DaemonArgs;

/// Runs the watcher until xenstore goes away or the process is signalled. Workers keep
/// running when the daemon stops; a new daemon finds them through their lock files.
pub fn run(args: DaemonArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(daemon(args))?;
    Ok(ExitCode::SUCCESS)
}

async fn daemon(args: DaemonArgs) -> anyhow::Result<()> {
    backing_dirs(&args.backend)?;
    canonical_dirs(&args.backend.image_dirs, "--image-dir")?;
    let store = Store::connect().await.context("cannot reach xenstore")?;
    let exe = std::env::current_exe().context("cannot find the rustbk executable")?;
    let lock_dir = lock_dir(&args.platform);
    let worker_args = to_args(&args.platform, &args.backend);
    let worker = Arc::new(move |domid: DomId| {
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.args(["serve", "--domid", &domid.0.to_string()])
            .args(&worker_args);
        cmd
    });
    let cfg = DaemonConfig {
        backend: DomId(args.platform.backend_domid),
        kinds: kinds(&args.platform),
        lock_dir,
        worker,
        claim: claim_rules(&args.platform),
    };
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = run_daemon(store, cfg) => r.map_err(|e| anyhow::anyhow!(rustbk_backend::xenbus::error_chain(&e)))?,
        _ = term.recv() => tracing::info!("terminated; workers keep serving"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; workers keep serving"),
    }
    Ok(())
}
