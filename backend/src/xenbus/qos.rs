//! A disk's I/O limits in xenstore: the `qos/` keys of its backend directory.
//!
//! `<backend>/qos/<name>` holds one limit by QEMU's throttle option name (`iops-total`,
//! `bps-read-max`, `iops-write-max-length`, `iops-size`, ...; see [`crate::qos`]), a whole
//! number. A disk with no `qos/` key gets the daemon's defaults (`--qos`); a disk with any
//! `qos/` key gets exactly its own keys (the defaults do not mix in). The keys are read when
//! the device starts (a bad one refuses the disk, as any bad key does) and watched while it
//! is served: a change applies to the running rings at once, and a bad change is reported in
//! the `error` node and logged while the disk keeps its previous limits. Toolstacks change
//! several keys in one transaction so that no half-changed set is seen.

use super::{Store, fatal};
use crate::Error;
use crate::qos::{DiskQos, QosLimits};

fn bad(path: String, value: &str, why: String) -> Error {
    Error::BadNode {
        path,
        value: value.into(),
        why,
    }
}

/// The limits the `qos/` keys under `be` give, or `defaults` when there is none.
pub(super) async fn read_qos(
    store: &Store,
    be: &str,
    defaults: &QosLimits,
) -> Result<QosLimits, Error> {
    let dir = format!("{be}/qos");
    let mut names = store.directory(&dir).await?;
    if names.is_empty() {
        return Ok(*defaults);
    }
    names.sort();
    let mut limits = QosLimits::default();
    for name in names {
        let path = format!("{dir}/{name}");
        // Removed between the listing and the read: as if it were never there.
        let Some(value) = store.read(&path).await? else {
            continue;
        };
        limits
            .set(&name, &value)
            .map_err(|why| bad(path, &value, why))?;
    }
    limits
        .validate()
        .map_err(|why| bad(dir, &limits.to_string(), why))?;
    Ok(limits)
}

/// Reads the `qos/` keys again after a change and applies them to the running disk. A bad
/// change is logged and written to the `error` node, and the disk keeps its limits;
/// `reported` remembers that, so the node is removed once the keys are good again.
pub(super) async fn apply_qos_change(
    store: &Store,
    be: &str,
    defaults: &QosLimits,
    qos: &DiskQos,
    reported: &mut bool,
) -> Result<(), Error> {
    let limits = match read_qos(store, be, defaults).await {
        Ok(limits) => limits,
        Err(e @ Error::BadNode { .. }) => {
            let why = format!("QoS limits not changed: {e}");
            tracing::error!(error = %why, "bad QoS keys; the disk keeps its limits");
            fatal::report_error(store, be, e.errno(), &why).await;
            *reported = true;
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    if limits != qos.limits() {
        qos.set_limits(limits)
            .map_err(|why| bad(format!("{be}/qos"), &limits.to_string(), why))?;
        tracing::info!(%limits, "QoS limits changed");
    }
    // Cleared once the good limits are in force: a toolstack that sees the error go may
    // count on them.
    if std::mem::take(reported) {
        fatal::clear_error(store, be).await?;
    }
    Ok(())
}
