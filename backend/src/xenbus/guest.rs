//! Serving every rustbk disk of one guest in one process: the unit the daemon runs and restarts.

use std::collections::HashSet;
use std::sync::Arc;

use rustbk_grant::Platform;
use rustbk_ring::DomId;
use tokio::task::JoinSet;

use super::Store;
use super::device::{BackendOptions, DeviceSpec, error_chain, run_device};
use crate::Error;
use crate::control::Registry;

/// `/local/domain/<backend>/backend/<kind>`.
pub fn backend_root(backend: DomId, kind: &str) -> String {
    format!("/local/domain/{}/backend/{kind}", backend.0)
}

/// The backend kinds rustbk watches by default: `vbd` (xl's `phy` and `rustbk` disks, where
/// Linux blkback also looks) and `vbd3` (libxl 4.19+'s `backendtype=tap` and XAPI's
/// `backend_type: vbd3` XenDisks, where tapback looks).
pub const DEFAULT_KINDS: [&str; 2] = ["vbd", "vbd3"];

/// Which vbds are rustbk's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimRules {
    /// A vbd whose `script` is one of these names, or a path ending in `/NAME`, is claimed
    /// (xl's `script=rustbk`, with `backendtype=phy` or `backendtype=tap`).
    pub scripts: Vec<String>,
    /// A vbd whose `type` or `sm-data/type` is one of these is claimed (a libxl that knows
    /// `backendtype=rustbk` writes `type`; xenopsd writes a XenDisk's `extra` map under
    /// `sm-data/`, and rustbk's datapath plugin puts `type: rustbk` there).
    pub types: Vec<String>,
}

impl Default for ClaimRules {
    fn default() -> Self {
        ClaimRules {
            scripts: vec!["rustbk".into()],
            types: vec!["rustbk".into()],
        }
    }
}

impl ClaimRules {
    fn script_matches(&self, script: &str) -> bool {
        let s = script.trim();
        let base = s.rsplit('/').next().unwrap_or(s);
        self.scripts.iter().any(|name| name == s || name == base)
    }

    fn type_matches(&self, kind: &str) -> bool {
        self.types.iter().any(|t| t == kind.trim())
    }
}

/// Whether the vbd at `be` is rustbk's by `rules`.
pub async fn claimed(store: &Store, be: &str, rules: &ClaimRules) -> Result<bool, Error> {
    let script = store.read(&format!("{be}/script")).await?;
    if script.as_deref().is_some_and(|s| rules.script_matches(s)) {
        return Ok(true);
    }
    for key in ["type", "sm-data/type"] {
        let value = store.read(&format!("{be}/{key}")).await?;
        if value.is_some_and(|t| rules.type_matches(&t)) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The claimed device numbers of guest `domid` under `root` that the toolstack has not taken
/// offline (`online` 0 means the device is being removed).
pub async fn claimed_devices(
    store: &Store,
    root: &str,
    domid: DomId,
    rules: &ClaimRules,
) -> Result<Vec<u32>, Error> {
    let dir = format!("{root}/{}", domid.0);
    let mut out = Vec::new();
    for name in store.directory(&dir).await? {
        let Ok(devid) = name.parse::<u32>() else {
            continue;
        };
        let be = format!("{dir}/{devid}");
        let online = store.read(&format!("{be}/online")).await?;
        if online.as_deref().is_none_or(|v| v.trim() != "0") && claimed(store, &be, rules).await? {
            out.push(devid);
        }
    }
    Ok(out)
}

/// One claimed disk of a guest: its backend directory and device number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimedDisk {
    /// `/local/domain/<backend>/backend/<kind>/<domid>/<devid>`.
    pub backend_path: String,
    /// The virtual device number.
    pub devid: u32,
}

/// The claimed disks of guest `domid` under every kind in `kinds`. A device number appears
/// once: the frontend of every kind is `device/vbd/<devid>`, so a toolstack never gives one
/// guest the same number under two kinds; if one did, the first kind listed wins.
pub async fn claimed_disks(
    store: &Store,
    backend: DomId,
    kinds: &[String],
    domid: DomId,
    rules: &ClaimRules,
) -> Result<Vec<ClaimedDisk>, Error> {
    let mut out: Vec<ClaimedDisk> = Vec::new();
    for kind in kinds {
        let root = backend_root(backend, kind);
        for devid in claimed_devices(store, &root, domid, rules).await? {
            if out.iter().any(|d| d.devid == devid) {
                tracing::warn!(
                    domid = domid.0,
                    devid,
                    kind,
                    "device number already served under another kind"
                );
                continue;
            }
            let backend_path = format!("{root}/{}/{devid}", domid.0);
            out.push(ClaimedDisk {
                backend_path,
                devid,
            });
        }
    }
    Ok(out)
}

/// Where and what to serve.
#[derive(Clone, Debug)]
pub struct GuestSpec {
    /// The backend's own domain.
    pub backend: DomId,
    /// The guest.
    pub domid: DomId,
    /// Backend kinds under `backend/` (see [`DEFAULT_KINDS`]).
    pub kinds: Vec<String>,
    /// Which disks are ours.
    pub claim: ClaimRules,
}

/// Serves every claimed disk of the guest, picking up disks attached later, until the guest
/// has no claimed disk left (after having had one). Each disk registers in `registry` while
/// it is served.
pub async fn serve_guest(
    store: Store,
    platform: Arc<dyn Platform>,
    spec: GuestSpec,
    opts: BackendOptions,
    registry: Registry,
) -> Result<(), Error> {
    let dirs: Vec<String> = spec
        .kinds
        .iter()
        .map(|kind| format!("{}/{}", backend_root(spec.backend, kind), spec.domid.0))
        .collect();
    let mut watch = store.watch_all(&dirs).await?;
    let mut tasks: JoinSet<(u32, Result<(), Error>)> = JoinSet::new();
    let (mut running, mut finished) = (HashSet::new(), HashSet::new());
    let mut served_any = false;
    loop {
        let present =
            claimed_disks(&store, spec.backend, &spec.kinds, spec.domid, &spec.claim).await?;
        finished.retain(|d| present.iter().any(|p| p.devid == *d));
        let new: Vec<ClaimedDisk> = present
            .iter()
            .filter(|d| !running.contains(&d.devid) && !finished.contains(&d.devid))
            .cloned()
            .collect();
        for disk in new {
            let devid = disk.devid;
            let dev = DeviceSpec {
                backend_path: disk.backend_path,
                domid: spec.domid,
                devid,
            };
            let (store, platform, opts) = (store.clone(), Arc::clone(&platform), opts.clone());
            let control = registry.register(spec.domid, devid);
            tasks.spawn(
                async move { (devid, run_device(store, platform, dev, opts, control).await) },
            );
            running.insert(devid);
            served_any = true;
        }
        if served_any && tasks.is_empty() && present.is_empty() {
            tracing::info!(domid = spec.domid.0, "no disks left; guest released");
            return Ok(());
        }
        tokio::select! {
            ev = watch.next() => if ev.is_none() { return Ok(()) },
            Some(done) = tasks.join_next() => {
                let (devid, result) = done.map_err(|e| Error::Spawn(std::io::Error::other(e)))?;
                if let Err(e) = result {
                    tracing::error!(domid = spec.domid.0, devid, error = %error_chain(&e), "device failed");
                }
                running.remove(&devid);
                finished.insert(devid);
            }
        }
    }
}
