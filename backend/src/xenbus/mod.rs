//! The xenbus side of a block device: the backend's state machine in xenstore.
//!
//! Follows Linux `xen-blkback`: publish features and go to InitWait; when the frontend is
//! Initialised (or Connected), map its rings (one, or `multi-queue-num-queues` of them under
//! `queue-N/`), bind their event channels, start one ring worker per ring, publish the disk's
//! size and go to Connected; follow the frontend to Closing and Closed (draining in-flight I/O
//! first); and when a frontend starts again after Closed (guest reboot, kexec), go back to
//! InitWait. A frontend whose ring keys are wrong gets an `error` node and Closing. The disk's
//! I/O limits (`qos/` keys) are read at start and at connect and watched while it is served.
//!
//! Online resize, as blkback's `xen_vbd_resize`: when the image grows (its owner extended the
//! file, checked once a second, or `rustbk ctl resize`), the ring workers' size is raised,
//! then `sectors` is written and `state` rewritten as Connected in one transaction, so that
//! blkfront re-reads `sectors`. Shrinking is refused.

mod allowed;
mod connect;
mod device;
mod fatal;
mod guest;
mod journal;
mod keys;
mod params;
mod qos;
mod state;
mod store;
mod thin;
mod txn;

pub use device::{
    BackendOptions, DEFAULT_FIXED_BUFFERS, DEFAULT_PERSISTENT_GRANT_UNUSED, DEFAULT_POLL_US,
    DeviceSpec, default_max_queues, error_chain, run_device,
};
pub use guest::{
    ClaimRules, ClaimedDisk, DEFAULT_KINDS, GuestSpec, backend_root, claimed, claimed_devices,
    claimed_disks, serve_guest,
};
pub use state::XenbusState;
pub use store::{Store, Watch};
