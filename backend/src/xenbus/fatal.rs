//! Telling the toolstack why a device failed, as Linux's `xenbus_dev_fatal` does.
//!
//! Linux writes "<errno> <message>" to `error/<nodename>/error` under the backend domain's home
//! (`/local/domain/0/error/backend/vbd/<domid>/<devid>/error`), which outlives the device, and
//! switches the device to Closing. rustbk writes the same text there and, for the toolstack
//! that reads the device's own directory, to `<backend>/error` as well.
//!
//! libxl waits for InitWait before it runs the hotplug script and treats any other state as
//! "still waiting" until its 10-second timeout. A device that fails before it ever served is
//! therefore shown in InitWait with its `error` node already written, so the toolstack goes on
//! to the hotplug script, which reports the message (`hotplug-error`) and makes `xl` fail at
//! once; only then does the device move to Closing and Closed.

use std::time::Duration;

use super::{Store, XenbusState};
use crate::Error;

/// How long a failed device stays in InitWait waiting for the hotplug script's verdict: libxl's
/// own window for reaching InitWait.
pub const HOTPLUG_WAIT: Duration = Duration::from_secs(10);

/// Linux's node for errors of the device at `be`: `<home>/error/backend/.../error`.
pub fn linux_error_path(be: &str) -> Option<String> {
    let (home, rest) = be.split_once("/backend/")?;
    Some(format!("{home}/error/backend/{rest}/error"))
}

/// Writes "<errno> <message>" to the device's `error` nodes; failures are only logged.
pub async fn write_error(store: &Store, be: &str, errno: i32, message: &str) {
    tracing::error!(error = %format!("{errno} {message}"), "device failed; reported to the toolstack");
    report_error(store, be, errno, message).await;
}

/// Writes "<errno> <message>" to the device's `error` nodes without logging it (the caller
/// has); failures are only logged.
pub async fn report_error(store: &Store, be: &str, errno: i32, message: &str) {
    let text = format!("{errno} {message}");
    let paths = std::iter::once(format!("{be}/error")).chain(linux_error_path(be));
    for path in paths {
        if let Err(e) = store.write(&path, &text).await {
            tracing::warn!(path, error = %e, "cannot write the error node");
        }
    }
}

/// Removes both `error` nodes (a device that serves again has no error to report).
pub async fn clear_error(store: &Store, be: &str) -> Result<(), Error> {
    let paths = std::iter::once(format!("{be}/error")).chain(linux_error_path(be));
    for path in paths {
        if store.read(&path).await?.is_some() {
            store.rm(&path).await?;
        }
    }
    Ok(())
}

/// A device that failed before it served: reports `error`, lets a hotplug script see it (see
/// the module documentation), then moves the device to Closing and Closed.
pub async fn fail_unserved(store: &Store, be: &str, error: &Error) -> Result<(), Error> {
    write_error(store, be, error.errno(), &super::error_chain(error)).await;
    if store.read(&format!("{be}/script")).await?.is_some() {
        set_state(store, be, XenbusState::InitWait).await?;
        if !wait_for_hotplug(store, be).await? {
            // Removed by the toolstack: writing a state would recreate the directory.
            return Ok(());
        }
    }
    set_state(store, be, XenbusState::Closing).await?;
    set_state(store, be, XenbusState::Closed).await
}

/// Writes the state unless the toolstack removed the node (as Linux's `xenbus_switch_state`
/// does): writing would recreate a directory the toolstack has just cleaned up.
async fn set_state(store: &Store, be: &str, state: XenbusState) -> Result<(), Error> {
    let path = format!("{be}/state");
    if store.read(&path).await?.is_none() {
        return Ok(());
    }
    store.write(&path, &state.number().to_string()).await?;
    tracing::info!(?state, "backend state");
    Ok(())
}

/// Waits until the hotplug script has reported (`hotplug-status`), the toolstack takes the
/// device away (`online` 0 or the directory gone), or [`HOTPLUG_WAIT`] passes. False if the
/// directory is gone.
async fn wait_for_hotplug(store: &Store, be: &str) -> Result<bool, Error> {
    let mut watch = store.watch(be).await?;
    let settled = async {
        loop {
            if store.read(&format!("{be}/state")).await?.is_none() {
                return Ok::<bool, Error>(false);
            }
            let status = store.read(&format!("{be}/hotplug-status")).await?;
            let online = store.read(&format!("{be}/online")).await?;
            if status.is_some() || online.is_some_and(|v| v.trim() == "0") {
                return Ok(true);
            }
            if watch.next().await.is_none() {
                return Ok(true);
            }
        }
    };
    match tokio::time::timeout(HOTPLUG_WAIT, settled).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!("no hotplug script reported within the toolstack's window");
            Ok(true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::linux_error_path;

    #[test]
    fn linux_error_path_is_under_the_backend_domains_error_directory() {
        assert_eq!(
            linux_error_path("/local/domain/0/backend/vbd/3/51712").as_deref(),
            Some("/local/domain/0/error/backend/vbd/3/51712/error")
        );
        assert_eq!(linux_error_path("/somewhere/else"), None);
    }
}
