//! Error paths of the Xen platform that run without Xen: missing devices, and device nodes that
//! answer every ioctl with ENOTTY (`/dev/null`).

use std::path::Path;

use nix::errno::Errno;
use rustbk_ring::PAGE_SIZE;

use super::{CopyBuf, CopySegment, XenPlatform};
use crate::{Access, DomId, Error, GrantRef, Platform, Port};

fn null_platform() -> XenPlatform {
    let null = Path::new("/dev/null");
    XenPlatform::with_devices(DomId(0), null, null).expect("open /dev/null")
}

fn is_enotty(e: &Error) -> bool {
    matches!(
        e,
        Error::Sys {
            source: Errno::ENOTTY,
            ..
        }
    )
}

#[test]
fn missing_gntdev_is_a_clear_error() {
    let e = XenPlatform::with_devices(
        DomId(0),
        Path::new("/nonexistent/gntdev"),
        Path::new("/dev/null"),
    )
    .unwrap_err();
    assert!(
        matches!(&e, Error::DeviceMissing { path, driver: "xen-gntdev" } if path == "/nonexistent/gntdev")
    );
    assert!(
        e.to_string().contains("/nonexistent/gntdev is missing"),
        "{e}"
    );
}

#[test]
fn missing_evtchn_is_a_clear_error() {
    let e = XenPlatform::with_devices(
        DomId(0),
        Path::new("/dev/null"),
        Path::new("/nonexistent/evtchn"),
    )
    .unwrap_err();
    assert!(matches!(
        e,
        Error::DeviceMissing {
            driver: "xen-evtchn",
            ..
        }
    ));
}

#[test]
fn map_of_no_pages_or_too_many_pages_is_refused() {
    let guest = null_platform().attach(DomId(3)).unwrap();
    assert!(matches!(
        guest.map_grants(&[], Access::ReadOnly),
        Err(Error::BadMapSize(0))
    ));
    let many = vec![GrantRef(8); super::MAX_MAP_PAGES + 1];
    assert!(matches!(
        guest.map_grants(&many, Access::ReadWrite),
        Err(Error::BadMapSize(_))
    ));
}

#[test]
fn ioctl_failures_become_errors_not_panics() {
    let platform = null_platform();
    let guest = platform.attach(DomId(3)).unwrap();
    assert_eq!(guest.domid(), DomId(3));
    assert!(is_enotty(
        &guest
            .map_grants(&[GrantRef(8), GrantRef(9)], Access::ReadWrite)
            .unwrap_err()
    ));
    let bind = guest.bind_event_channel(Port(5));
    assert!(is_enotty(&bind.err().expect("bind must fail")));
    let mut buf = [0u8; 512];
    let mut segs = [CopySegment {
        gref: GrantRef(8),
        offset: 0,
        buf: CopyBuf::FromGuest(&mut buf),
    }];
    assert!(is_enotty(
        &platform.grant_copy(DomId(3), &mut segs).unwrap_err()
    ));
}

#[test]
fn grant_copy_segment_crossing_its_page_is_refused_before_any_ioctl() {
    let platform = null_platform();
    let data = [7u8; 16];
    let mut segs = [CopySegment {
        gref: GrantRef(8),
        offset: u16::try_from(PAGE_SIZE - 8).unwrap(),
        buf: CopyBuf::ToGuest(&data),
    }];
    let e = platform.grant_copy(DomId(3), &mut segs).unwrap_err();
    assert!(
        matches!(
            e,
            Error::OutOfBounds {
                offset: 4088,
                len: 16,
                ..
            }
        ),
        "{e:?}"
    );
    let mut empty = [CopySegment {
        gref: GrantRef(8),
        offset: 0,
        buf: CopyBuf::ToGuest(&[]),
    }];
    assert!(matches!(
        platform.grant_copy(DomId(3), &mut empty),
        Err(Error::OutOfBounds { .. })
    ));
}
