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
    /// Which toolstack writes the vbd, and so its backend kind and keys.
    pub toolstack: Toolstack,
}

/// The toolstacks whose vbds the emulator writes, each as its source does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Toolstack {
    /// libxl with `backendtype=phy` (`script=rustbk`): `backend/vbd`, `params` as given.
    #[default]
    Libxl,
    /// libxl 4.19+ with `backendtype=tap` (Xen 4.20's `tools/libs/light/libxl_disk.c`,
    /// `device_disk_add`, case `LIBXL_DISK_BACKEND_TAP`): `backend/vbd3`, `params` as given
    /// (libxl writes `<tapdisk format>:<target>`, `aio:` for raw, see [`tap_params`]),
    /// `type=vbd3`, `bootable=1`, `specification=xen`, `discard-enable` always, and `script`.
    LibxlTap,
    /// xenopsd plugging a SMAPIv3 XenDisk (xen-api's `xenops_server_xen.ml`
    /// `params_of_backend`, `device.ml` `Vbd.add_async`): `backend/vbd3` (the XenDisk's
    /// `backend_type`), an empty `params`, the XenDisk's params as `qemu-params`, `type=phy`,
    /// `sm-data/backend-kind=vbd3` and `sm-data/<key>` for each of the XenDisk's `extra`, no
    /// `script`. Then, as xenopsd's own hotplug script (`ocaml/xenopsd/scripts/block add`,
    /// which it runs itself), `physical-device` (empty: `stat` of an empty `params` fails)
    /// and `hotplug-status=connected`.
    Xenopsd {
        /// The XenDisk's `extra` map.
        extra: Vec<(String, String)>,
    },
}

impl Toolstack {
    /// The backend kind under `backend/`.
    pub fn kind(&self) -> &'static str {
        match self {
            Toolstack::Libxl => "vbd",
            Toolstack::LibxlTap | Toolstack::Xenopsd { .. } => "vbd3",
        }
    }
}

/// What libxl 4.20 writes as `params` of a `backendtype=tap` disk: tapdisk's name of the
/// format (`libxl__device_disk_string_of_format`: raw is `aio`, then `qcow`, `qcow2`, `vhd`,
/// `qed`), a colon and the disk line's `target=` as it is.
pub fn tap_params(format: &str, target: &str) -> String {
    let name = if format == "raw" { "aio" } else { format };
    format!("{name}:{target}")
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
            toolstack: Toolstack::Libxl,
        }
    }

    /// `/local/domain/<backend>/backend/<kind>/<domid>/<devid>`.
    pub fn backend_path(&self) -> String {
        format!(
            "/local/domain/{}/backend/{}/{}/{}",
            self.backend_domid.0,
            self.toolstack.kind(),
            self.domid.0,
            self.devid
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
    if let Toolstack::Xenopsd { .. } = spec.toolstack {
        xs.write(&format!("{be}/physical-device"), "")?;
        xs.write(&format!("{be}/hotplug-status"), "connected")?;
    }
    Ok(())
}

fn backend_keys(spec: &VbdSpec) -> Vec<(String, String)> {
    let mode = if spec.read_only { "r" } else { "w" };
    let mut keys = vec![
        ("frontend", spec.frontend_path()),
        ("frontend-id", spec.domid.0.to_string()),
        ("online", "1".into()),
        ("state", "1".into()),
        ("mode", mode.into()),
        ("removable", "0".into()),
        ("dev", "xvda".into()),
    ];
    match &spec.toolstack {
        Toolstack::Libxl => keys.extend([
            ("params", spec.params.clone()),
            ("type", "phy".into()),
            ("device-type", "disk".into()),
        ]),
        Toolstack::LibxlTap => keys.extend([
            ("params", spec.params.clone()),
            ("type", "vbd3".into()),
            ("device-type", "disk".into()),
            ("bootable", "1".into()),
            ("specification", "xen".into()),
        ]),
        Toolstack::Xenopsd { .. } => keys.extend([
            ("params", String::new()),
            ("qemu-params", spec.params.clone()),
            ("type", "phy".into()),
            ("sm-data/backend-kind", "vbd3".into()),
        ]),
    }
    match (&spec.toolstack, spec.discard) {
        (Toolstack::LibxlTap, discard) => {
            keys.push(("discard-enable", if discard { "1" } else { "0" }.into()));
        }
        (Toolstack::Libxl, false) => keys.push(("discard-enable", "0".into())),
        _ => {}
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
    if let Toolstack::Xenopsd { extra } = &spec.toolstack {
        keys.extend(
            extra
                .iter()
                .map(|(k, v)| (format!("sm-data/{k}"), v.clone())),
        );
    }
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
