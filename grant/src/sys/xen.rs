//! Raw ioctls of Linux's Xen devices, from the kernel uapi headers `<xen/gntdev.h>` and
//! `<xen/evtchn.h>`: structures, request numbers and thin wrappers that own the `unsafe`.
//!
//! Every request here is `_IOC(_IOC_NONE, type, nr, sizeof(struct))`; nix's `*_bad!` macros take
//! the number as computed below. `tests/xen_abi.rs` compares all of it with the C headers.

use std::ffi::{c_uint, c_void};
use std::mem::{offset_of, size_of};
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;
use nix::sys::ioctl::{NONE, ioctl_num_type};

/// `struct ioctl_gntdev_grant_ref`.
#[repr(C)]
struct GntdevGrantRef {
    domid: u32,
    gref: u32,
}

/// The fixed head of `struct ioctl_gntdev_map_grant_ref`; `refs[count]` follows it.
#[repr(C)]
struct MapGrantRefHead {
    count: u32,
    pad: u32,
    index: u64,
}

/// `sizeof(struct ioctl_gntdev_map_grant_ref)`: the head plus the declared `refs[1]`.
const MAP_GRANT_REF_SIZE: usize = size_of::<MapGrantRefHead>() + size_of::<GntdevGrantRef>();

const _: () = assert!(size_of::<MapGrantRefHead>() == 16 && size_of::<GntdevGrantRef>() == 8);

/// `struct ioctl_gntdev_unmap_grant_ref`.
#[repr(C)]
struct UnmapGrantRef {
    index: u64,
    count: u32,
    pad: u32,
}

/// `struct ioctl_gntdev_get_offset_for_vaddr`.
#[repr(C)]
struct OffsetForVaddr {
    vaddr: u64,
    offset: u64,
    count: u32,
    pad: u32,
}

/// `struct ioctl_gntdev_unmap_notify`.
#[repr(C)]
struct UnmapNotify {
    index: u64,
    action: u32,
    event_channel_port: u32,
}

/// The `foreign` member of a grant-copy endpoint.
#[repr(C)]
#[derive(Clone, Copy)]
struct CopyForeign {
    gref: u32,
    offset: u16,
    domid: u16,
}

/// One end of a grant copy: local memory or a foreign grant.
#[repr(C)]
#[derive(Clone, Copy)]
union CopyPtr {
    virt: *mut c_void,
    foreign: CopyForeign,
}

/// `struct gntdev_grant_copy_segment`.
#[repr(C)]
struct CopySegmentRaw {
    source: CopyPtr,
    dest: CopyPtr,
    len: u16,
    flags: u16,
    status: i16,
}

/// `struct ioctl_gntdev_grant_copy`.
#[repr(C)]
struct GrantCopyArg {
    count: c_uint,
    segments: *mut CopySegmentRaw,
}

/// `struct ioctl_evtchn_bind_interdomain`.
#[repr(C)]
struct BindInterdomain {
    remote_domain: c_uint,
    remote_port: c_uint,
}

/// `struct ioctl_evtchn_unbind` and `struct ioctl_evtchn_notify` (both just a port).
#[repr(C)]
struct PortArg {
    port: c_uint,
}

const GNTDEV: u8 = b'G';
const EVTCHN: u8 = b'E';

const IOCTL_GNTDEV_MAP_GRANT_REF: ioctl_num_type = nix::ioc!(NONE, GNTDEV, 0, MAP_GRANT_REF_SIZE);
const IOCTL_GNTDEV_UNMAP_GRANT_REF: ioctl_num_type =
    nix::ioc!(NONE, GNTDEV, 1, size_of::<UnmapGrantRef>());
const IOCTL_GNTDEV_GET_OFFSET_FOR_VADDR: ioctl_num_type =
    nix::ioc!(NONE, GNTDEV, 2, size_of::<OffsetForVaddr>());
const IOCTL_GNTDEV_SET_UNMAP_NOTIFY: ioctl_num_type =
    nix::ioc!(NONE, GNTDEV, 7, size_of::<UnmapNotify>());
const IOCTL_GNTDEV_GRANT_COPY: ioctl_num_type =
    nix::ioc!(NONE, GNTDEV, 8, size_of::<GrantCopyArg>());
const IOCTL_EVTCHN_BIND_INTERDOMAIN: ioctl_num_type =
    nix::ioc!(NONE, EVTCHN, 1, size_of::<BindInterdomain>());
const IOCTL_EVTCHN_UNBIND: ioctl_num_type = nix::ioc!(NONE, EVTCHN, 3, size_of::<PortArg>());
const IOCTL_EVTCHN_NOTIFY: ioctl_num_type = nix::ioc!(NONE, EVTCHN, 4, size_of::<PortArg>());

/// `UNMAP_NOTIFY_CLEAR_BYTE`: zero one byte of the page when it is unmapped.
pub(crate) const UNMAP_NOTIFY_CLEAR_BYTE: u32 = 0x1;
/// `UNMAP_NOTIFY_SEND_EVENT`: signal an event channel when the page is unmapped.
pub(crate) const UNMAP_NOTIFY_SEND_EVENT: u32 = 0x2;
/// `GNTCOPY_source_gref` (Xen's `grant_table.h`): the source is a grant.
const GNTCOPY_SOURCE_GREF: u16 = 1 << 0;
/// `GNTCOPY_dest_gref`: the destination is a grant.
const GNTCOPY_DEST_GREF: u16 = 1 << 1;

nix::ioctl_readwrite_bad!(map_grant_ref, IOCTL_GNTDEV_MAP_GRANT_REF, MapGrantRefHead);
nix::ioctl_write_ptr_bad!(unmap_grant_ref, IOCTL_GNTDEV_UNMAP_GRANT_REF, UnmapGrantRef);
nix::ioctl_readwrite_bad!(
    get_offset_for_vaddr,
    IOCTL_GNTDEV_GET_OFFSET_FOR_VADDR,
    OffsetForVaddr
);
nix::ioctl_write_ptr_bad!(set_unmap_notify, IOCTL_GNTDEV_SET_UNMAP_NOTIFY, UnmapNotify);
nix::ioctl_write_ptr_bad!(grant_copy, IOCTL_GNTDEV_GRANT_COPY, GrantCopyArg);
nix::ioctl_write_ptr_bad!(
    bind_interdomain,
    IOCTL_EVTCHN_BIND_INTERDOMAIN,
    BindInterdomain
);
nix::ioctl_write_ptr_bad!(unbind, IOCTL_EVTCHN_UNBIND, PortArg);
nix::ioctl_write_ptr_bad!(notify, IOCTL_EVTCHN_NOTIFY, PortArg);

/// Maps `refs` of domain `domid` in the gntdev file; returns the mmap offset of the new range.
pub(crate) fn gntdev_map(fd: BorrowedFd<'_>, domid: u16, refs: &[u32]) -> nix::Result<u64> {
    let count = u32::try_from(refs.len()).map_err(|_| Errno::EINVAL)?;
    // 8-byte words: two for the head, one per `ioctl_gntdev_grant_ref`.
    let mut buf = vec![0u64; 2 + refs.len()];
    let head = buf.as_mut_ptr().cast::<MapGrantRefHead>();
    let entries = buf.as_mut_ptr().wrapping_add(2).cast::<GntdevGrantRef>();
    // SAFETY: `buf` is 8-aligned and holds exactly the 16-byte head followed by one 8-byte
    // entry per ref (sizes asserted above), so every write is in bounds and aligned; the kernel
    // reads `count` entries after the head and writes only `index`, all inside `buf`.
    unsafe {
        head.write(MapGrantRefHead {
            count,
            pad: 0,
            index: 0,
        });
        for (i, gref) in refs.iter().enumerate() {
            entries.add(i).write(GntdevGrantRef {
                domid: u32::from(domid),
                gref: *gref,
            });
        }
        map_grant_ref(fd.as_raw_fd(), head)?;
        Ok((*head).index)
    }
}

/// Releases the gntdev range at `index` (after its pages were munmap'ed).
pub(crate) fn gntdev_unmap(fd: BorrowedFd<'_>, index: u64, count: u32) -> nix::Result<()> {
    let arg = UnmapGrantRef {
        index,
        count,
        pad: 0,
    };
    // SAFETY: the argument is a valid structure the kernel only reads.
    unsafe { unmap_grant_ref(fd.as_raw_fd(), &arg) }.map(drop)
}

/// The gntdev offset and page count of the mapping starting at address `vaddr`.
pub(crate) fn gntdev_offset_for_vaddr(fd: BorrowedFd<'_>, vaddr: u64) -> nix::Result<(u64, u32)> {
    let mut arg = OffsetForVaddr {
        vaddr,
        offset: 0,
        count: 0,
        pad: 0,
    };
    // SAFETY: the argument is a valid structure the kernel reads and fills in; the kernel only
    // looks up `vaddr` in our address space, it does not access memory there.
    unsafe { get_offset_for_vaddr(fd.as_raw_fd(), &mut arg) }?;
    Ok((arg.offset, arg.count))
}

/// Asks gntdev to clear the byte at file offset `index` and/or signal `port` on unmap.
pub(crate) fn gntdev_set_unmap_notify(
    fd: BorrowedFd<'_>,
    index: u64,
    action: u32,
    port: u32,
) -> nix::Result<()> {
    let arg = UnmapNotify {
        index,
        action,
        event_channel_port: port,
    };
    // SAFETY: the argument is a valid structure the kernel only reads.
    unsafe { set_unmap_notify(fd.as_raw_fd(), &arg) }.map(drop)
}

/// Private memory at one end of a grant copy.
pub(crate) enum LocalBytes<'a> {
    /// Filled from the grant (the grant is the source).
    Into(&'a mut [u8]),
    /// Copied into the grant (the grant is the destination).
    From(&'a [u8]),
}

/// One segment of a grant copy: bytes of grant `gref` at `offset` against private memory.
pub(crate) struct CopyOp<'a> {
    pub(crate) domid: u16,
    pub(crate) gref: u32,
    pub(crate) offset: u16,
    pub(crate) local: LocalBytes<'a>,
}

impl CopyOp<'_> {
    fn raw(&mut self) -> nix::Result<CopySegmentRaw> {
        let foreign = CopyPtr {
            foreign: CopyForeign {
                gref: self.gref,
                offset: self.offset,
                domid: self.domid,
            },
        };
        let (virt, len) = match &mut self.local {
            LocalBytes::Into(b) => (b.as_mut_ptr().cast::<c_void>(), b.len()),
            LocalBytes::From(b) => (b.as_ptr().cast_mut().cast::<c_void>(), b.len()),
        };
        let len = u16::try_from(len).map_err(|_| Errno::EINVAL)?;
        let local = CopyPtr { virt };
        let (source, dest, flags) = match self.local {
            LocalBytes::Into(_) => (foreign, local, GNTCOPY_SOURCE_GREF),
            LocalBytes::From(_) => (local, foreign, GNTCOPY_DEST_GREF),
        };
        Ok(CopySegmentRaw {
            source,
            dest,
            len,
            flags,
            status: 0,
        })
    }
}

/// Runs one batch of grant copies; returns each segment's `GNTST_*` status (0 = okay).
pub(crate) fn gntdev_grant_copy(
    fd: BorrowedFd<'_>,
    ops: &mut [CopyOp<'_>],
) -> nix::Result<Vec<i16>> {
    let mut segs = ops
        .iter_mut()
        .map(CopyOp::raw)
        .collect::<nix::Result<Vec<_>>>()?;
    let arg = GrantCopyArg {
        count: c_uint::try_from(segs.len()).map_err(|_| Errno::EINVAL)?,
        segments: segs.as_mut_ptr(),
    };
    // SAFETY: `segs` lives across the call; each local pointer covers exactly `len` bytes of a
    // slice borrowed from `ops` for this call: the kernel writes only into `Into` slices
    // (exclusively borrowed) and only reads `From` slices; it writes back each `status`.
    unsafe { grant_copy(fd.as_raw_fd(), &arg) }?;
    Ok(segs.iter().map(|s| s.status).collect())
}

/// Binds the remote domain's unbound `remote_port`; returns our local port.
pub(crate) fn evtchn_bind_interdomain(
    fd: BorrowedFd<'_>,
    remote_domain: u16,
    remote_port: u32,
) -> nix::Result<u32> {
    let arg = BindInterdomain {
        remote_domain: c_uint::from(remote_domain),
        remote_port,
    };
    // SAFETY: the argument is a valid structure the kernel only reads; the port comes back as
    // the return value.
    let port = unsafe { bind_interdomain(fd.as_raw_fd(), &arg) }?;
    u32::try_from(port).map_err(|_| Errno::EINVAL)
}

/// Signals the remote end of our `port`.
pub(crate) fn evtchn_notify(fd: BorrowedFd<'_>, port: u32) -> nix::Result<()> {
    // SAFETY: the argument is a valid structure the kernel only reads.
    unsafe { notify(fd.as_raw_fd(), &PortArg { port }) }.map(drop)
}

/// Unbinds our `port`.
pub(crate) fn evtchn_unbind(fd: BorrowedFd<'_>, port: u32) -> nix::Result<()> {
    // SAFETY: the argument is a valid structure the kernel only reads.
    unsafe { unbind(fd.as_raw_fd(), &PortArg { port }) }.map(drop)
}

/// Every structure size, field offset and request number above, named by the C expression that
/// must have the same value (checked against the headers by a test that runs gcc).
#[rustfmt::skip]
pub(crate) fn abi_facts() -> Vec<(&'static str, u64)> {
    let n = |v: usize| v as u64;
    let seg = |at: usize| n(offset_of!(CopySegmentRaw, source) + at);
    let dst = |at: usize| n(offset_of!(CopySegmentRaw, dest) + at);
    vec![
        ("sizeof(struct ioctl_gntdev_grant_ref)", n(size_of::<GntdevGrantRef>())),
        ("offsetof(struct ioctl_gntdev_grant_ref, domid)", n(offset_of!(GntdevGrantRef, domid))),
        ("offsetof(struct ioctl_gntdev_grant_ref, ref)", n(offset_of!(GntdevGrantRef, gref))),
        ("sizeof(struct ioctl_gntdev_map_grant_ref)", n(MAP_GRANT_REF_SIZE)),
        ("offsetof(struct ioctl_gntdev_map_grant_ref, count)", n(offset_of!(MapGrantRefHead, count))),
        ("offsetof(struct ioctl_gntdev_map_grant_ref, index)", n(offset_of!(MapGrantRefHead, index))),
        ("offsetof(struct ioctl_gntdev_map_grant_ref, refs)", n(size_of::<MapGrantRefHead>())),
        ("sizeof(struct ioctl_gntdev_unmap_grant_ref)", n(size_of::<UnmapGrantRef>())),
        ("offsetof(struct ioctl_gntdev_unmap_grant_ref, index)", n(offset_of!(UnmapGrantRef, index))),
        ("offsetof(struct ioctl_gntdev_unmap_grant_ref, count)", n(offset_of!(UnmapGrantRef, count))),
        ("sizeof(struct ioctl_gntdev_get_offset_for_vaddr)", n(size_of::<OffsetForVaddr>())),
        ("offsetof(struct ioctl_gntdev_get_offset_for_vaddr, vaddr)", n(offset_of!(OffsetForVaddr, vaddr))),
        ("offsetof(struct ioctl_gntdev_get_offset_for_vaddr, offset)", n(offset_of!(OffsetForVaddr, offset))),
        ("offsetof(struct ioctl_gntdev_get_offset_for_vaddr, count)", n(offset_of!(OffsetForVaddr, count))),
        ("sizeof(struct ioctl_gntdev_unmap_notify)", n(size_of::<UnmapNotify>())),
        ("offsetof(struct ioctl_gntdev_unmap_notify, index)", n(offset_of!(UnmapNotify, index))),
        ("offsetof(struct ioctl_gntdev_unmap_notify, action)", n(offset_of!(UnmapNotify, action))),
        ("offsetof(struct ioctl_gntdev_unmap_notify, event_channel_port)", n(offset_of!(UnmapNotify, event_channel_port))),
        ("sizeof(struct gntdev_grant_copy_segment)", n(size_of::<CopySegmentRaw>())),
        ("offsetof(struct gntdev_grant_copy_segment, source.virt)", seg(0)),
        ("offsetof(struct gntdev_grant_copy_segment, source.foreign.ref)", seg(offset_of!(CopyForeign, gref))),
        ("offsetof(struct gntdev_grant_copy_segment, source.foreign.offset)", seg(offset_of!(CopyForeign, offset))),
        ("offsetof(struct gntdev_grant_copy_segment, source.foreign.domid)", seg(offset_of!(CopyForeign, domid))),
        ("offsetof(struct gntdev_grant_copy_segment, dest.virt)", dst(0)),
        ("offsetof(struct gntdev_grant_copy_segment, dest.foreign.ref)", dst(offset_of!(CopyForeign, gref))),
        ("offsetof(struct gntdev_grant_copy_segment, dest.foreign.offset)", dst(offset_of!(CopyForeign, offset))),
        ("offsetof(struct gntdev_grant_copy_segment, dest.foreign.domid)", dst(offset_of!(CopyForeign, domid))),
        ("offsetof(struct gntdev_grant_copy_segment, len)", n(offset_of!(CopySegmentRaw, len))),
        ("offsetof(struct gntdev_grant_copy_segment, flags)", n(offset_of!(CopySegmentRaw, flags))),
        ("offsetof(struct gntdev_grant_copy_segment, status)", n(offset_of!(CopySegmentRaw, status))),
        ("sizeof(struct ioctl_gntdev_grant_copy)", n(size_of::<GrantCopyArg>())),
        ("offsetof(struct ioctl_gntdev_grant_copy, count)", n(offset_of!(GrantCopyArg, count))),
        ("offsetof(struct ioctl_gntdev_grant_copy, segments)", n(offset_of!(GrantCopyArg, segments))),
        ("sizeof(struct ioctl_evtchn_bind_interdomain)", n(size_of::<BindInterdomain>())),
        ("offsetof(struct ioctl_evtchn_bind_interdomain, remote_domain)", n(offset_of!(BindInterdomain, remote_domain))),
        ("offsetof(struct ioctl_evtchn_bind_interdomain, remote_port)", n(offset_of!(BindInterdomain, remote_port))),
        ("sizeof(struct ioctl_evtchn_unbind)", n(size_of::<PortArg>())),
        ("sizeof(struct ioctl_evtchn_notify)", n(size_of::<PortArg>())),
        ("UNMAP_NOTIFY_CLEAR_BYTE", u64::from(UNMAP_NOTIFY_CLEAR_BYTE)),
        ("UNMAP_NOTIFY_SEND_EVENT", u64::from(UNMAP_NOTIFY_SEND_EVENT)),
        ("GNTCOPY_source_gref", u64::from(GNTCOPY_SOURCE_GREF)),
        ("GNTCOPY_dest_gref", u64::from(GNTCOPY_DEST_GREF)),
        ("IOCTL_GNTDEV_MAP_GRANT_REF", IOCTL_GNTDEV_MAP_GRANT_REF),
        ("IOCTL_GNTDEV_UNMAP_GRANT_REF", IOCTL_GNTDEV_UNMAP_GRANT_REF),
        ("IOCTL_GNTDEV_GET_OFFSET_FOR_VADDR", IOCTL_GNTDEV_GET_OFFSET_FOR_VADDR),
        ("IOCTL_GNTDEV_SET_UNMAP_NOTIFY", IOCTL_GNTDEV_SET_UNMAP_NOTIFY),
        ("IOCTL_GNTDEV_GRANT_COPY", IOCTL_GNTDEV_GRANT_COPY),
        ("IOCTL_EVTCHN_BIND_INTERDOMAIN", IOCTL_EVTCHN_BIND_INTERDOMAIN),
        ("IOCTL_EVTCHN_UNBIND", IOCTL_EVTCHN_UNBIND),
        ("IOCTL_EVTCHN_NOTIFY", IOCTL_EVTCHN_NOTIFY),
    ]
}
