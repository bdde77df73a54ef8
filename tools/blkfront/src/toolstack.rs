//! The emulated toolstack: what libxl writes to xenstore to give a guest a disk.

use std::time::Duration;

use rustbk_ring::DomId;
use rustbk_xenstored::{Access, Perm, XsClient};

use crate::Error;
use crate::wait::wait_for;

/// One virtual block device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VbdSpec {
    /// The guest.
    pub domid: DomId,
    /// Virtual device number (51712 is xvda).
    pub devid: u32,
    /// The backend's domain.
    pub backend_domid: DomId,
    /// The backend's `params`: the image path, optionally with a format prefix.
    pub params: String,
    /// True for `mode=r`.
    pub read_only: bool,
    /// False writes `discard-enable=0`.
    pub discard: bool,
    /// `cache-mode`, written beside `params` when given (else the backend's default).
    pub cache_mode: Option<String>,
    /// `data-path` (`map` or `copy`), written beside `params` when given (else the backend's
    /// `--data-path`).
    pub data_path: Option<String>,
    /// The hotplug script libxl records (`script`): `/etc/xen/scripts/rustbk` makes the disk
    /// rustbk's; `None` leaves the key out (a disk for another backend).
    pub script: Option<String>,
    /// I/O limits written as `qos/<name>` beside `params` (QEMU's throttle names, e.g.
    /// `iops-total`); none by default.
    pub qos: Vec<(String, String)>,
}

/// The script path xl records for `script=rustbk`.
pub const RUSTBK_SCRIPT: &str = "/etc/xen/scripts/rustbk";

impl VbdSpec {
    /// A writable, discard-enabled rustbk disk of guest `domid` served by dom0.
    pub fn rustbk(domid: DomId, devid: u32, params: impl Into<String>) -> Self {
        VbdSpec {
            domid,
            devid,
            backend_domid: DomId(0),
            params: params.into(),
            read_only: false,
            discard: true,
            cache_mode: None,
            data_path: None,
            script: Some(RUSTBK_SCRIPT.into()),
            qos: Vec::new(),
        }
    }

    /// `/local/domain/<backend>/backend/vbd/<domid>/<devid>`.
    pub fn backend_path(&self) -> String {
        format!(
            "/local/domain/{}/backend/vbd/{}/{}",
            self.backend_domid.0, self.domid.0, self.devid
        )
    }

    /// `/local/domain/<domid>/device/vbd/<devid>`.
    pub fn frontend_path(&self) -> String {
        format!("/local/domain/{}/device/vbd/{}", self.domid.0, self.devid)
    }
}

/// Introduces a guest domain to xenstore (so it can connect as itself) and creates its home.
pub fn introduce_domain(xs: &XsClient, domid: DomId) -> Result<(), Error> {
    let home = format!("/local/domain/{}", domid.0);
    xs.mkdir(&home)?;
    xs.set_perms(&home, &[Perm::new(Access::None, domid.0)])?;
    xs.write(&format!("{home}/domid"), &domid.0.to_string())?;
    // The emulator ignores the store page and port, but like xenstored it wants a valid port.
    xs.introduce(domid.0, 0, 1)?;
    Ok(())
}

/// Writes the backend and frontend directories of `spec`, as libxl does, in one transaction.
pub fn add_vbd(xs: &XsClient, spec: &VbdSpec) -> Result<(), Error> {
    let (be, fe) = (spec.backend_path(), spec.frontend_path());
    let (guest, backend) = (spec.domid.0, spec.backend_domid.0);
    xs.transaction(8, |tx| {
        xs.mkdir_tx(tx, &fe)?;
        xs.set_perms_tx(
            tx,
            &fe,
            &[
                Perm::new(Access::None, guest),
                Perm::new(Access::Read, backend),
            ],
        )?;
        xs.mkdir_tx(tx, &be)?;
        xs.set_perms_tx(
            tx,
            &be,
            &[
                Perm::new(Access::None, backend),
                Perm::new(Access::Read, guest),
            ],
        )?;
        for (k, v) in backend_keys(spec) {
            xs.write_tx(tx, &format!("{be}/{k}"), &v)?;
        }
        for (k, v) in frontend_keys(spec) {
            xs.write_tx(tx, &format!("{fe}/{k}"), &v)?;
        }
        Ok(())
    })?;
    Ok(())
}

fn backend_keys(spec: &VbdSpec) -> Vec<(String, String)> {
    let mut keys = vec![
        ("frontend", spec.frontend_path()),
        ("frontend-id", spec.domid.0.to_string()),
        ("online", "1".into()),
        ("state", "1".into()),
        ("params", spec.params.clone()),
        ("mode", if spec.read_only { "r" } else { "w" }.into()),
        ("type", "phy".into()),
        ("device-type", "disk".into()),
        ("removable", "0".into()),
        ("dev", "xvda".into()),
    ];
    if !spec.discard {
        keys.push(("discard-enable", "0".into()));
    }
    if let Some(mode) = &spec.cache_mode {
        keys.push(("cache-mode", mode.clone()));
    }
    if let Some(path) = &spec.data_path {
        keys.push(("data-path", path.clone()));
    }
    if let Some(script) = &spec.script {
        keys.push(("script", script.clone()));
    }
    let mut keys: Vec<(String, String)> = keys.into_iter().map(|(k, v)| (k.into(), v)).collect();
    keys.extend(
        spec.qos
            .iter()
            .map(|(k, v)| (format!("qos/{k}"), v.clone())),
    );
    keys
}

fn frontend_keys(spec: &VbdSpec) -> Vec<(&'static str, String)> {
    vec![
        ("backend", spec.backend_path()),
        ("backend-id", spec.backend_domid.0.to_string()),
        ("state", "1".into()),
        ("virtual-device", spec.devid.to_string()),
        ("device-type", "disk".into()),
    ]
}

/// Takes the device away as libxl does: `online=0`, backend to Closing, wait for Closed,
/// then removes both directories.
pub fn remove_vbd(xs: &XsClient, spec: &VbdSpec, timeout: Duration) -> Result<(), Error> {
    let be = spec.backend_path();
    // One transaction, as libxl does: the backend must never see one without the other.
    xs.transaction(8, |tx| {
        xs.write_tx(tx, &format!("{be}/online"), "0")?;
        xs.write_tx(tx, &format!("{be}/state"), "5")
    })?;
    let closed = wait_for(xs, &format!("{be}/state"), timeout, |v| v == Some("6"));
    xs.rm(&be)?;
    xs.rm(&spec.frontend_path())?;
    closed.map(drop)
}
