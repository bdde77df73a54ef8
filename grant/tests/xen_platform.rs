//! The real Xen platform on a machine without Xen: a clear error, not a panic.

use std::path::Path;

use rustbk_grant::xen::{GNTDEV_PATH, XenPlatform};
use rustbk_grant::{DomId, Error};

#[test]
fn xen_platform_without_xen_devices_fails_with_a_clear_error() {
    assert!(
        !Path::new(GNTDEV_PATH).exists(),
        "this test expects a machine without Xen (found {GNTDEV_PATH})"
    );
    let err = XenPlatform::new(DomId(0)).unwrap_err();
    assert!(
        matches!(&err, Error::DeviceMissing { path, .. } if path == GNTDEV_PATH),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("/dev/xen/gntdev is missing"), "{msg}");
    assert!(msg.contains("xen-gntdev"), "{msg}");
}
