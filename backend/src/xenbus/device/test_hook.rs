//! Test-only: lets an integration test reach [`DeviceControl::resize`] in a backend process
//! before `rustbk ctl` exists.
//!
//! Only debug builds (the ones the test suite runs) look at `RUSTBK_TEST_CONTROL_DIR`. Once a
//! second, a device looks there for `resize-<domid>-<devid>` holding a size in bytes; it
//! removes the file, resizes itself through its [`DeviceControl`] and writes the outcome to
//! `resized-<domid>-<devid>`: `ok OLD NEW` or `error MESSAGE`. Release builds never read the
//! variable.

use std::path::{Path, PathBuf};

use crate::xenbus::DeviceSpec;
use crate::xenbus::control::DeviceControl;

/// The environment variable debug builds read.
pub const CONTROL_DIR_ENV: &str = "RUSTBK_TEST_CONTROL_DIR";

/// The folder of the test's requests (debug builds only).
pub(super) fn control_dir() -> Option<PathBuf> {
    if !cfg!(debug_assertions) {
        return None;
    }
    std::env::var_os(CONTROL_DIR_ENV).map(PathBuf::from)
}

/// Starts the resize a test asked for, if any.
pub(super) fn poll(dir: &Path, spec: &DeviceSpec, control: &DeviceControl) {
    let name = format!("{}-{}", spec.domid.0, spec.devid);
    let request = dir.join(format!("resize-{name}"));
    let Ok(text) = std::fs::read_to_string(&request) else {
        return;
    };
    let _ = std::fs::remove_file(&request);
    let result = dir.join(format!("resized-{name}"));
    let control = control.clone();
    tokio::spawn(async move {
        let outcome = match text.trim().parse::<u64>() {
            Err(_) => format!("error not a size: {text:?}"),
            Ok(size) => match control.resize(size).await {
                Ok(r) => format!("ok {} {}", r.old, r.new),
                Err(e) => format!("error {}", crate::xenbus::error_chain(&e)),
            },
        };
        let tmp = result.with_extension("tmp");
        if std::fs::write(&tmp, outcome)
            .and_then(|()| std::fs::rename(&tmp, &result))
            .is_err()
        {
            tracing::error!(path = %result.display(), "cannot write the test's resize outcome");
        }
    });
}
