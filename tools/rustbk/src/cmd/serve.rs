//! `rustbk serve`: the worker process of one guest (or one disk).

use std::process::ExitCode;

use anyhow::{Context, bail};
use rustbk_backend::control::{self, ControlSocket, Registry};
use rustbk_backend::lock::GuestLock;
use rustbk_backend::xenbus::{
    DeviceSpec, GuestSpec, Store, backend_root, error_chain, run_device, serve_guest,
};
use rustbk_ring::DomId;
use tokio::signal::unix::{SignalKind, signal};

use super::platform::{claim_rules, kinds, lock_dir, options, platform};
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
    let dir = lock_dir(&args.platform);
    let registry = Registry::default();
    let work = async {
        match args.devid {
            Some(devid) => {
                let kind = args.platform.kinds.first().map_or("vbd", String::as_str);
                let root = backend_root(backend, kind);
                let backend_path = args
                    .backend_path
                    .clone()
                    .unwrap_or_else(|| format!("{root}/{}/{devid}", domid.0));
                let spec = DeviceSpec {
                    backend_path,
                    domid,
                    devid,
                };
                let socket = control_socket(&control::disk_socket(&dir, domid, devid));
                let device = registry.register(domid, devid);
                let stats = std::sync::Arc::clone(device.stats());
                let run = run_device(store, platform, spec, opts, device);
                let r = with_control(socket, registry.clone(), run).await;
                tracing::info!(stats = ?stats.snapshot(), "backend exiting");
                r.map_err(|e| anyhow::anyhow!(error_chain(&e)))
            }
            None => {
                let Some(_lock) = GuestLock::acquire(&dir, domid)? else {
                    bail!(
                        "guest {} is already served by another rustbk worker",
                        domid.0
                    );
                };
                let spec = GuestSpec {
                    backend,
                    domid,
                    kinds: kinds(&args.platform),
                    claim: claim_rules(&args.platform),
                };
                // Bound only while the guest's lock is held: the socket is this worker's.
                let socket = control_socket(&control::guest_socket(&dir, domid));
                let run = serve_guest(store, platform, spec, opts, registry.clone());
                with_control(socket, registry.clone(), run)
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

/// Binds the worker's control socket; a worker that cannot still serves its guest.
fn control_socket(path: &std::path::Path) -> Option<ControlSocket> {
    match ControlSocket::bind(path) {
        Ok(socket) => Some(socket),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "no control socket; serving without one");
            None
        }
    }
}

/// Runs `work` while answering the control socket's clients.
async fn with_control<T>(
    socket: Option<ControlSocket>,
    registry: Registry,
    work: impl std::future::Future<Output = T>,
) -> T {
    let Some(mut socket) = socket else {
        return work.await;
    };
    tokio::pin!(work);
    tokio::select! {
        r = &mut work => return r,
        () = control::serve(&mut socket, registry) => {}
    }
    // The socket stopped answering; the guest is still served.
    work.await
}
