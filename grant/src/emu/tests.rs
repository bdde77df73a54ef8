use std::sync::Arc;

use rustbk_formats::IoBuffers;
use rustbk_ring::PAGE_SIZE;

use super::*;
use crate::{
    Access, CopyBuf, CopySegment, Direction, DomId, Error, GrantRef, GuestBuf, GuestHandle,
    PageSpan, Platform, Port,
};

const GUEST: DomId = DomId(7);
const BACKEND: DomId = DomId(0);

fn setup() -> (tempfile::TempDir, EmuDomain, Arc<dyn GuestHandle>) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = DomainConfig {
        domid: GUEST,
        ram_pages: 64,
        grant_entries: 128,
    };
    let dom = EmuDomain::create(dir.path(), cfg).unwrap();
    let guest = EmuPlatform::new(dir.path(), BACKEND).attach(GUEST).unwrap();
    (dir, dom, guest)
}

#[test]
fn mapped_grant_shows_guest_memory_both_ways() {
    let (_d, dom, guest) = setup();
    dom.ram()
        .write(5 * PAGE_SIZE as u64 + 100, b"hello")
        .unwrap();
    let gref = dom.grant(BACKEND, 5, false).unwrap();
    let map = guest.map_grants(&[gref], Access::ReadWrite).unwrap();
    let mut got = [0u8; 5];
    map.read(100, &mut got).unwrap();
    assert_eq!(&got, b"hello");
    map.write(200, b"world").unwrap();
    let mut back = [0u8; 5];
    dom.ram()
        .read(5 * PAGE_SIZE as u64 + 200, &mut back)
        .unwrap();
    assert_eq!(&back, b"world");
}

#[test]
fn multi_page_map_is_contiguous_in_grant_order() {
    let (_d, dom, guest) = setup();
    let frames = [9u32, 3, 30];
    let refs: Vec<GrantRef> = frames
        .iter()
        .map(|f| dom.grant(BACKEND, *f, true).unwrap())
        .collect();
    for f in frames {
        dom.ram()
            .write(u64::from(f) * PAGE_SIZE as u64, &f.to_le_bytes())
            .unwrap();
    }
    let map = guest.map_grants(&refs, Access::ReadOnly).unwrap();
    for (i, f) in frames.iter().enumerate() {
        let mut b = [0u8; 4];
        map.read(i * PAGE_SIZE, &mut b).unwrap();
        assert_eq!(u32::from_le_bytes(b), *f);
    }
}

#[test]
fn invalid_foreign_and_readonly_grants_are_refused() {
    let (_d, dom, guest) = setup();
    assert!(matches!(
        guest.map_grants(&[GrantRef(20)], Access::ReadOnly),
        Err(Error::GrantInvalid(_))
    ));
    dom.grant_at(GrantRef(21), DomId(3), 1, false).unwrap();
    assert!(matches!(
        guest.map_grants(&[GrantRef(21)], Access::ReadOnly),
        Err(Error::GrantWrongDomain {
            granted_to: DomId(3),
            ..
        })
    ));
    let ro = dom.grant(BACKEND, 2, true).unwrap();
    assert!(matches!(
        guest.map_grants(&[ro], Access::ReadWrite),
        Err(Error::GrantReadOnly(_))
    ));
    assert!(guest.map_grants(&[ro], Access::ReadOnly).is_ok());
    assert!(matches!(
        guest.map_grants(&[GrantRef(5000)], Access::ReadOnly),
        Err(Error::GrantOutOfRange(_))
    ));
    dom.grant_at(GrantRef(22), BACKEND, 64, false).unwrap();
    assert!(matches!(
        guest.map_grants(&[GrantRef(22)], Access::ReadOnly),
        Err(Error::FrameOutOfRange { .. })
    ));
    assert!(matches!(
        guest.map_grants(&[], Access::ReadOnly),
        Err(Error::BadMapSize(0))
    ));
}

#[test]
fn revoked_grant_cannot_be_mapped() {
    let (_d, dom, guest) = setup();
    let gref = dom.grant(BACKEND, 4, false).unwrap();
    dom.end_grant(gref).unwrap();
    assert!(matches!(
        guest.map_grants(&[gref], Access::ReadOnly),
        Err(Error::GrantInvalid(_))
    ));
}

#[test]
fn event_channel_signals_both_ways() {
    let (_d, dom, guest) = setup();
    let gp = dom.alloc_unbound().unwrap();
    let ch = guest.bind_event_channel(gp.port()).unwrap();
    assert!(!ch.ack().unwrap());
    gp.notify().unwrap();
    assert!(ch.ack().unwrap());
    assert!(!ch.ack().unwrap());
    ch.notify().unwrap();
    assert!(gp.ack().unwrap());
    assert!(matches!(
        guest.bind_event_channel(Port(999)),
        Err(Error::UnknownPort(Port(999)))
    ));
}

#[test]
fn guest_buf_merges_adjacent_segments_and_checks_bounds() {
    let (_d, dom, guest) = setup();
    let refs: Vec<GrantRef> = (10..13)
        .map(|f| dom.grant(BACKEND, f, false).unwrap())
        .collect();
    let map = guest.map_grants(&refs, Access::ReadWrite).unwrap();
    let spans = [
        PageSpan {
            page: 0,
            offset: 3584,
            len: 512,
        },
        PageSpan {
            page: 1,
            offset: 0,
            len: 4096,
        },
        PageSpan {
            page: 2,
            offset: 512,
            len: 1024,
        },
    ];
    let buf = GuestBuf::new(map, &spans, Direction::ToGuest).unwrap();
    assert_eq!(buf.iovecs().len(), 2);
    assert_eq!(buf.len(), 512 + 4096 + 1024);
    let map = guest.map_grants(&refs[..1], Access::ReadWrite).unwrap();
    let bad = [PageSpan {
        page: 1,
        offset: 0,
        len: 512,
    }];
    assert!(GuestBuf::new(map, &bad, Direction::FromGuest).is_err());
    let ro = guest.map_grants(&refs[..1], Access::ReadOnly).unwrap();
    let ok = [PageSpan {
        page: 0,
        offset: 0,
        len: 512,
    }];
    assert!(GuestBuf::new(ro, &ok, Direction::ToGuest).is_err());
}

#[test]
fn two_guests_do_not_share_memory() {
    let dir = tempfile::tempdir().unwrap();
    let a = EmuDomain::create(
        dir.path(),
        DomainConfig {
            domid: DomId(1),
            ram_pages: 8,
            grant_entries: 32,
        },
    )
    .unwrap();
    let b = EmuDomain::create(
        dir.path(),
        DomainConfig {
            domid: DomId(2),
            ram_pages: 8,
            grant_entries: 32,
        },
    )
    .unwrap();
    a.ram().write(0, b"AAAA").unwrap();
    b.ram().write(0, b"BBBB").unwrap();
    let ga = a.grant(BACKEND, 0, true).unwrap();
    let platform = EmuPlatform::new(dir.path(), BACKEND);
    let hb = platform.attach(DomId(2)).unwrap();
    // Guest 1's reference means nothing in guest 2's table.
    assert!(hb.map_grants(&[ga], Access::ReadOnly).is_err());
    let ha = platform.attach(DomId(1)).unwrap();
    let mut got = [0u8; 4];
    ha.map_grants(&[ga], Access::ReadOnly)
        .unwrap()
        .read(0, &mut got)
        .unwrap();
    assert_eq!(&got, b"AAAA");
}

#[test]
fn mapped_grant_cannot_be_revoked_until_unmapped() {
    let (_d, dom, guest) = setup();
    let gref = dom.grant(BACKEND, 6, false).unwrap();
    let a = guest.map_grants(&[gref], Access::ReadWrite).unwrap();
    let b = guest.map_grants(&[gref], Access::ReadOnly).unwrap();
    assert!(matches!(dom.end_grant(gref), Err(Error::GrantInUse(_))));
    drop(a);
    assert!(
        matches!(dom.end_grant(gref), Err(Error::GrantInUse(_))),
        "still mapped read-only"
    );
    drop(b);
    dom.end_grant(gref).unwrap();
    assert!(guest.map_grants(&[gref], Access::ReadOnly).is_err());
}

#[test]
fn a_grant_revoked_under_a_mapping_stays_mapped_until_unmapped_as_under_xen() {
    let (_d, dom, guest) = setup();
    let gref = dom.grant(BACKEND, 4, false).unwrap();
    let map = guest.map_grants(&[gref], Access::ReadWrite).unwrap();
    // The proper way fails while the backend has the page mapped ...
    assert!(matches!(dom.end_grant(gref), Err(Error::GrantInUse(_))));
    // ... and scribbling over the entry takes nothing away from the mapping.
    dom.revoke_forcibly(gref).unwrap();
    map.write(8, b"still mine").unwrap();
    let mut back = [0u8; 10];
    dom.ram().read(4 * PAGE_SIZE as u64 + 8, &mut back).unwrap();
    assert_eq!(&back, b"still mine");
    // New maps fail; once unmapped, the entry is left cleared.
    assert!(matches!(
        guest.map_grants(&[gref], Access::ReadOnly),
        Err(Error::GrantInvalid(_))
    ));
    drop(map);
    assert!(!dom.grant_in_use(gref).unwrap());
    assert!(matches!(
        guest.map_grants(&[gref], Access::ReadWrite),
        Err(Error::GrantInvalid(_))
    ));
}

#[test]
fn a_guest_cannot_shrink_the_memory_a_backend_maps() {
    let (_d, dom, guest) = setup();
    let gref = dom.grant(BACKEND, 63, false).unwrap();
    let map = guest.map_grants(&[gref], Access::ReadWrite).unwrap();
    // Under Xen a mapped frame stays; here the RAM memfd is sealed at its size.
    let shrunk = nix::unistd::ftruncate(dom.ram().fd(), 0);
    assert_eq!(shrunk, Err(nix::errno::Errno::EPERM));
    map.write(0, b"last page").unwrap();
    let sealed = super::ram::new_memfd(c"test", 1).unwrap();
    assert!(super::ram::check_sealed(&sealed, "RAM").is_ok());
    let plain =
        nix::sys::memfd::memfd_create(c"plain", nix::sys::memfd::MemFdCreateFlag::empty()).unwrap();
    assert!(matches!(
        super::ram::check_sealed(&plain, "RAM"),
        Err(Error::Protocol(_))
    ));
}

#[test]
fn grant_copy_moves_bytes_both_ways_without_mapping() {
    let (_d, dom, guest) = setup();
    let base = 6 * PAGE_SIZE as u64;
    dom.ram().write(base + 512, b"from the guest").unwrap();
    let gref = dom.grant(BACKEND, 6, false).unwrap();
    let mut got = [0u8; 14];
    let back = *b"to the guest";
    let mut segs = [
        CopySegment {
            gref,
            offset: 512,
            buf: CopyBuf::FromGuest(&mut got),
        },
        CopySegment {
            gref,
            offset: 4000,
            buf: CopyBuf::ToGuest(&back),
        },
    ];
    guest.copy_grants(&mut segs).unwrap();
    assert_eq!(&got, b"from the guest");
    let mut seen = [0u8; 12];
    dom.ram().read(base + 4000, &mut seen).unwrap();
    assert_eq!(&seen, b"to the guest");
    // The copy held the grant only while it ran: the guest can end it now.
    assert!(!dom.grant_in_use(gref).unwrap());
    dom.end_grant(gref).unwrap();
}

#[test]
fn grant_copy_into_a_readonly_grant_is_refused_and_leaves_the_page_alone() {
    let (_d, dom, guest) = setup();
    let base = 8 * PAGE_SIZE as u64;
    dom.ram().write(base, &[7u8; 64]).unwrap();
    let gref = dom.grant(BACKEND, 8, true).unwrap();
    let mut segs = [CopySegment {
        gref,
        offset: 0,
        buf: CopyBuf::ToGuest(&[1u8; 64]),
    }];
    assert!(matches!(
        guest.copy_grants(&mut segs),
        Err(Error::GrantReadOnly(g)) if g == gref
    ));
    let mut seen = [0u8; 64];
    dom.ram().read(base, &mut seen).unwrap();
    assert_eq!(seen, [7u8; 64]);
    // Copying from it is what a read-only grant allows.
    let mut out = [0u8; 64];
    let mut segs = [CopySegment {
        gref,
        offset: 0,
        buf: CopyBuf::FromGuest(&mut out),
    }];
    guest.copy_grants(&mut segs).unwrap();
    assert_eq!(out, [7u8; 64]);
}

#[test]
fn grant_copy_refuses_bad_segments_one_by_one() {
    let (_d, dom, guest) = setup();
    let good = dom.grant(BACKEND, 9, false).unwrap();
    let revoked = dom.grant(BACKEND, 10, false).unwrap();
    let foreign = dom.grant(DomId(3), 11, false).unwrap();
    // Ended last, so no later grant takes its reference again.
    dom.end_grant(revoked).unwrap();
    let mut buf = [0u8; 16];
    let cases: [(GrantRef, u16, usize); 5] = [
        (revoked, 0, 16),
        (foreign, 0, 16),
        (GrantRef(100_000), 0, 16),
        (good, 4090, 16),
        (good, 0, 0),
    ];
    for (gref, offset, len) in cases {
        let mut segs = [CopySegment {
            gref,
            offset,
            buf: CopyBuf::FromGuest(&mut buf[..len]),
        }];
        assert!(
            guest.copy_grants(&mut segs).is_err(),
            "{gref:?}+{offset} len {len}"
        );
    }
    // A batch stops at its first bad segment, after copying the ones before it.
    dom.ram().write(9 * PAGE_SIZE as u64, &[3u8; 16]).unwrap();
    let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
    let mut segs = [
        CopySegment {
            gref: good,
            offset: 0,
            buf: CopyBuf::FromGuest(&mut a),
        },
        CopySegment {
            gref: revoked,
            offset: 0,
            buf: CopyBuf::FromGuest(&mut b),
        },
    ];
    assert!(matches!(
        guest.copy_grants(&mut segs),
        Err(Error::GrantInvalid(g)) if g == revoked
    ));
    assert_eq!(a, [3u8; 16]);
}
