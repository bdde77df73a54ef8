//! The emulated platform: lets every test run without Xen.
//!
//! A guest (the emulated frontend) owns its RAM as a memfd and its grant table as a second
//! memfd holding Xen v1 grant entries. It serves an endpoint socket `dom<ID>.sock` in a shared
//! folder, standing in for the hypervisor: a backend connects, says which domain it is, and gets
//! both memfds over SCM_RIGHTS. Mapping a grant checks the entry exactly as Xen does (in use,
//! made out to the backend's domain, writable if write access is wanted, frame inside RAM) and
//! maps just that frame of the RAM memfd, so I/O lands in guest memory with no copy, as with
//! gntdev. A grant copy goes through the same checks (and marks the entry in use while it
//! copies, as Xen does), then moves the bytes with `pread`/`pwrite` on the RAM memfd, mapping
//! nothing. Event channels are a pair of eventfds per port, handed over on bind.
//!
//! As under Xen, a guest cannot take back what the backend has mapped: ending a grant fails
//! while the entry shows it mapped (`GTF_reading`/`GTF_writing`), a guest that overwrites the
//! entry anyway ([`EmuDomain::revoke_forcibly`]) only stops later maps, and both memfds are
//! sealed at their size (the backend refuses unsealed ones), so a mapping never faults.

mod copy;
mod guest;
mod in_use;
mod platform;
mod ram;
pub mod table;
mod wire;

pub use guest::{DomainConfig, EmuDomain, GuestPort, endpoint_path};
pub use platform::{EmuPlatform, MAX_MAP_PAGES};
pub use ram::{GUEST_RAM_MEMFD, GuestRam, RamView};

#[cfg(test)]
mod tests;
