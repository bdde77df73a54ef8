//! Waiting for xenstore nodes to reach a value.

use std::time::{Duration, Instant};

use rustbk_xenstored::XsClient;

use crate::Error;

/// Waits until `pred` holds for the value of `path` (None if missing), using a watch.
pub(crate) fn wait_for(
    xs: &XsClient,
    path: &str,
    timeout: Duration,
    mut pred: impl FnMut(Option<&str>) -> bool,
) -> Result<Option<String>, Error> {
    let token = format!("wait:{path}");
    xs.watch(path, &token)?;
    let deadline = Instant::now() + timeout;
    let result = loop {
        let v = xs.try_read(path)?;
        if pred(v.as_deref()) {
            break Ok(v);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Err(Error::Timeout(format!("{path} (last value {v:?})")));
        }
        xs.next_event(left.min(Duration::from_millis(200)))?;
    };
    let _ = xs.unwatch(path, &token);
    result
}
