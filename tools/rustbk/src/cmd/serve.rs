//! `rustbk serve`: the backend process of one vbd.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use rustbk_backend::Stats;
use rustbk_backend::xenbus::{BackendOptions, DeviceSpec, Store, run_device};
use rustbk_formats::EngineKind;
use rustbk_grant::emu::EmuPlatform;
use rustbk_ring::DomId;
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::{EngineArg, ServeArgs};

/// Serves the device until the toolstack removes it or the process is signalled.
pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(serve(args))?;
    Ok(ExitCode::SUCCESS)
}

/// `rustbk_ring::MAX_INDIRECT_SEGMENTS` (4096), as the u32 xenstore carries.
const MAX_INDIRECT: u32 = 4096;

fn options(args: &ServeArgs) -> BackendOptions {
    BackendOptions {
        max_ring_order: args.max_ring_order.min(rustbk_ring::MAX_RING_PAGE_ORDER),
        max_indirect_segments: args.max_indirect_segments.min(MAX_INDIRECT),
        engine: match args.engine {
            EngineArg::Auto => EngineKind::Auto,
            EngineArg::IoUring => EngineKind::IoUring,
            EngineArg::Sync => EngineKind::Sync,
        },
        direct: !args.buffered,
        persistent: !args.no_persistent,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let spec = DeviceSpec {
        backend_path: args.backend_path.clone().unwrap_or_else(|| {
            format!(
                "/local/domain/{}/backend/vbd/{}/{}",
                args.backend_domid, args.domid, args.devid
            )
        }),
        domid: DomId(args.domid),
        devid: args.devid,
    };
    let store = Store::connect()
        .await
        .context("cannot reach xenstore (XENSTORED_PATH)")?;
    let platform = Arc::new(EmuPlatform::new(&args.emu_dir, DomId(args.backend_domid)));
    let stats = Arc::new(Stats::default());
    let mut term = signal(SignalKind::terminate())?;
    let device = run_device(store, platform, spec, options(&args), Arc::clone(&stats));
    tokio::select! {
        r = device => r.map_err(|e| anyhow::anyhow!(rustbk_backend::xenbus::error_chain(&e)))?,
        _ = term.recv() => tracing::info!("terminated"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
    }
    tracing::info!(stats = ?stats.snapshot(), "backend exiting");
    Ok(())
}
