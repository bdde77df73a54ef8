//! `rustbk serve`: the worker process of one guest (or one disk).

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use rustbk_backend::Stats;
use rustbk_backend::lock::GuestLock;
use rustbk_backend::xenbus::{
    DeviceSpec, GuestSpec, Store, backend_root, error_chain, run_device, serve_guest,
};
use rustbk_ring::DomId;
use tokio::signal::unix::{SignalKind, signal};

use super::platform::{lock_dir, options, platform};
use crate::cli::ServeArgs;

/// Serves until the toolstack removes the disks or the process is signalled.
pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(serve(args))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let platform = platform(&args.platform)?;
    let store = Store::connect().await.context("cannot reach xenstore")?;
    let opts = options(&args.backend, &args.platform)?;
    let backend = DomId(args.platform.backend_domid);
    let domid = DomId(args.domid);
    let mut term = signal(SignalKind::terminate())?;
    let work = async {
        match args.devid {
            Some(devid) => {
                let root = backend_root(backend, &args.platform.kind);
                let backend_path = args
                    .backend_path
                    .clone()
                    .unwrap_or_else(|| format!("{root}/{}/{devid}", domid.0));
                let spec = DeviceSpec {
                    backend_path,
                    domid,
                    devid,
                };
                let stats = Arc::new(Stats::default());
                let r = run_device(store, platform, spec, opts, Arc::clone(&stats)).await;
                tracing::info!(stats = ?stats.snapshot(), "backend exiting");
                r.map_err(|e| anyhow::anyhow!(error_chain(&e)))
            }
            None => {
                let dir = lock_dir(&args.platform);
                let Some(_lock) = GuestLock::acquire(&dir, domid)? else {
                    bail!(
                        "guest {} is already served by another rustbk worker",
                        domid.0
                    );
                };
                let spec = GuestSpec {
                    backend,
                    domid,
                    kind: args.platform.kind.clone(),
                };
                serve_guest(store, platform, spec, opts)
                    .await
                    .map_err(|e| anyhow::anyhow!(error_chain(&e)))
            }
        }
    };
    tokio::select! {
        r = work => r?,
        _ = term.recv() => tracing::info!("terminated"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
    }
    Ok(())
}
